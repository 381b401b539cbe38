"""The seq2seq task (`task: seq2seq`): an encoder-decoder model that writes an output text for an input text.

Everything of this task lives in this folder: its recipe (`config`), pairs (`data`), model loading, students
and scores (`model`), training (`training`), stages (`export`, `quantize`, run by `task`), the ONNX loop
(`bundle_template/translate.py`, also what the gates and the benchmark run through `runtime`), the benchmark
(`suite`, run in `worker` processes), the report sections (`report`) and the bundle (`bundle`).
"""


def __getattr__(name: str):
    """`TASK`, made on first use: importing a module of this folder that needs no torch (the bundle template, the
    memory probe's runtimes) must not import the stages, and with them torch."""
    if name == "TASK":
        from compress.tasks.seq2seq.task import Seq2SeqTask

        globals()["TASK"] = task = Seq2SeqTask()
        return task
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The causal-LM task (`task: causal-lm`): a decoder-only model that continues a text.

Everything of this task lives in this folder: its recipe (`config`), corpus (`data`), model loading and
evaluation (`model`), stages (`teacher`, `distill`, `prune`, `export` with `genai`, `quantize`), the benchmark
(`suite`, run in `worker` processes, with the `anchors` a user would pick instead), the report sections
(`report`), the bundle (`bundle`, shipping `bundle_template/generate.py`), tied together by `task`.
"""


def __getattr__(name: str):
    """`TASK`, made on first use: importing a module of this folder that needs no torch (the bundle template, the
    memory probe's runtimes) must not import the stages, and with them torch."""
    if name == "TASK":
        from compress.tasks.causal_lm.task import CausalLMTask

        globals()["TASK"] = task = CausalLMTask()
        return task
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

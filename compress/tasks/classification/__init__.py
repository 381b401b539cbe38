"""The classification task (`task: classification`): an encoder that labels a text.

Everything of this task lives in this folder: its recipe (`config`), data (`data`), stages (`teacher`, `distill`,
`prune`, `export`, `quantize`), the benchmark (`suite`, run in `worker` processes), the report sections
(`report`), the bundle (`bundle`, shipping `bundle_template/predict.py`), tied together by `task`.
"""


def __getattr__(name: str):
    """`TASK`, made on first use: importing a module of this folder that needs no torch (the bundle template, the
    memory probe's runtimes) must not import the stages, and with them torch."""
    if name == "TASK":
        from compress.tasks.classification.task import ClassificationTask

        globals()["TASK"] = task = ClassificationTask()
        return task
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

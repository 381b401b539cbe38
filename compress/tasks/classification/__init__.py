"""The classification task (`task: classification`): an encoder that labels a text.

Everything of this task lives in this folder: its recipe (`config`), data (`data`), stages (`teacher`, `distill`,
`prune`, `export`, `quantize`), the benchmark (`suite`, run in `worker` processes), the report sections
(`report`), the bundle (`bundle`, shipping `bundle_template/predict.py`), tied together by `task`.

The task object is `task.TASK`, imported by `compress.tasks`' table when a recipe names the task: this package's
`__init__` imports nothing, so a torch-free module of it (the bundle template, the memory probe) loads no torch.
"""

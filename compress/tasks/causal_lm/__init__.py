"""The causal-LM task (`task: causal-lm`): a decoder-only model that continues a text.

Everything of this task lives in this folder: its recipe (`config`), corpus (`data`), model loading and
evaluation (`model`), stages (`teacher`, `distill`, `prune`, `export` with `genai`, `quantize`), the benchmark
(`suite`, run in `worker` processes, with the `anchors` a user would pick instead), the report sections
(`report`), the bundle (`bundle`, shipping `bundle_template/generate.py`), tied together by `task`.

The task object is `task.TASK`, imported by `compress.tasks`' table when a recipe names the task: this package's
`__init__` imports nothing, so a torch-free module of it (the bundle template, the memory probe) loads no torch.
"""

"""The seq2seq task (`task: seq2seq`): an encoder-decoder model that writes an output text for an input text.

Everything of this task lives in this folder: its recipe (`config`), pairs (`data`), model loading, students
and scores (`model`), training (`training`), stages (`export`, `quantize`, run by `task`), the ONNX loop
(`bundle_template/translate.py`, also what the gates and the benchmark run through `runtime`), the benchmark
(`suite`, run in `worker` processes), the report sections (`report`) and the bundle (`bundle`).

The task object is `task.TASK`, imported by `compress.tasks`' table when a recipe names the task: this package's
`__init__` imports nothing, so a torch-free module of it (the bundle template, the memory probe) loads no torch.
"""

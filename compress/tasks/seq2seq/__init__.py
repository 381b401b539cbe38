"""The seq2seq task (`task: seq2seq`): an encoder-decoder model that writes an output text for an input text.

Everything of this task lives in this folder: its recipe (`config`), pairs (`data`), model loading, students
and scores (`model`), training (`training`), stages (`export`, `quantize`, run by `task`), the ONNX loop
(`bundle_template/translate.py`, also what the gates and the benchmark run through `runtime`), the benchmark
(`suite`, run in `worker` processes), the report sections (`report`) and the bundle (`bundle`).
"""

from compress.tasks.seq2seq.task import Seq2SeqTask

TASK = Seq2SeqTask()

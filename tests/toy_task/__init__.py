"""A toy third task, `task: word-count`, defined outside the package: one folder and one line in the task table.

It exists to show (and test) that adding a task is an addition: nothing in `compress/`, `export/` or
`benchmarks/` knows it. The "model" predicts how many words a line holds from its length in characters
(a line fitted by least squares); distillation fits a student on the teacher's predictions, pruning zeroes the
smaller coefficient, export writes the model as JSON, quantization rounds the coefficients to a grid, and the
benchmark scores every variant's mean absolute error on dev. The report goes through the shared envelope.
"""

from tests.toy_task.task import WordCountTask

TASK = WordCountTask()

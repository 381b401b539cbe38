"""The classification task (`task: classification`): an encoder that labels a text.

Everything of this task lives in this folder: its recipe (`config`), data (`data`), stages (`teacher`, `distill`,
`prune`, `export`, `quantize`), the benchmark (`suite`, run in `worker` processes), the report sections
(`report`), the bundle (`bundle`, shipping `bundle_template/predict.py`), tied together by `task`.
"""

from compress.tasks.classification.task import ClassificationTask

TASK = ClassificationTask()

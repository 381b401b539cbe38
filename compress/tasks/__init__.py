"""The task axis: what differs between labelling a text, continuing one, and whatever task comes next.

Each task is one folder (`compress/tasks/<task>/`) holding everything that is that task's: its recipe model,
data reading, model loading, stages, export, benchmark worker and suite, report sections and plots, bundle and
bundle template. The pipeline (`compress.pipeline`), the CLI's commands, the report envelope and `bundle` ask
the task through the `Task` interface (`compress.stage`); none of them names one.

`TASKS` is the one table of tasks: a name (the recipe's `task`) to a function returning the task. Each entry
imports its folder when first asked, so reading a recipe does not import the stages of every task.
"""

from __future__ import annotations

from collections.abc import Callable

from compress.stage import RunContext, Step, Task

__all__ = ["DEFAULT_TASK", "TASKS", "RunContext", "Step", "Task", "task_for"]


def _classification() -> Task:
    from compress.tasks.classification.task import TASK

    return TASK


def _causal_lm() -> Task:
    from compress.tasks.causal_lm.task import TASK

    return TASK


def _seq2seq() -> Task:
    from compress.tasks.seq2seq.task import TASK

    return TASK


# The one table of tasks: the recipe's `task` -> its implementation. Adding a task is a folder and a line here.
TASKS: dict[str, Callable[[], Task]] = {
    "classification": _classification,
    "causal-lm": _causal_lm,
    "seq2seq": _seq2seq,
}
DEFAULT_TASK = "classification"  # a recipe without `task`


def task_for(name: str) -> Task:
    """The implementation of the task named `name` (the recipe's `task`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]()

"""The task axis: what differs between labelling a text and continuing one.

A task carries, in one module each, everything the pipeline must not know about: how its data is read and
encoded, which model class it trains, its distillation loss, its quality metric and whether higher is better,
optimum's export task name, how a shipped artifact is evaluated, and what the benchmark times. The pipeline
(`compress.pipeline`), the manifest, the cache and the report scaffolding are the same for every task.

`task_for` picks the implementation with a plain `match` on the recipe's `task`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class RunContext(Protocol):
    """What a stage may use of the run it is part of (`compress.pipeline.RunContext` is the one)."""

    recipe: Any
    run_dir: Path
    log: Callable[[str], None]

    @property
    def data(self) -> Any: ...

    def out(self, step_id: str) -> Path: ...

    def model_dir(self, variant: str) -> Path: ...

    def load(self, variant: str) -> tuple[Any, Any]: ...

    def metrics(self, step_id: str) -> dict: ...


class Step(Protocol):
    """One step of the plan (`compress.pipeline.Step`): its stage, variant, config and input step ids."""

    stage: str
    name: str
    config: Any
    inputs: tuple[str, ...]

    @property
    def id(self) -> str: ...


class Task(Protocol):
    """One task's stages. Each stage function fills the fresh directory `out` and returns its metrics."""

    name: str  # the recipe's `task`
    metric: str  # the quality figure of the report: "accuracy" or "perplexity"
    higher_is_better: bool
    export_task: str  # optimum's task name for the ONNX export

    def load_data(self, recipe) -> Any:
        """The recipe's splits, read and checked (errors name the file, line and value)."""

    def summary(self, data) -> str:
        """One line on the data, for `edge-compress check`."""

    def load_model(self, model_dir: Path) -> tuple[Any, Any]:
        """A model of this task and its tokenizer from a local directory."""

    def preflight(self, recipe) -> None:
        """Checks that need the teacher's config, before any step runs."""

    def teacher(self, ctx: RunContext, step: Step, out: Path) -> dict: ...

    def distill(self, ctx: RunContext, step: Step, out: Path) -> dict: ...

    def prune(self, ctx: RunContext, step: Step, out: Path) -> dict: ...

    def export(self, ctx: RunContext, step: Step, out: Path) -> dict: ...

    def quantize(self, ctx: RunContext, step: Step, out: Path) -> dict: ...

    def benchmark(self, ctx: RunContext, step: Step, out: Path) -> dict: ...


def task_for(name: str) -> Task:
    """The implementation of the task named `name` (the recipe's `task`)."""
    match name:
        case "classification":
            from compress.tasks.classification import ClassificationTask

            return ClassificationTask()
        case "causal-lm":
            from compress.tasks.causal_lm import CausalLMTask

            return CausalLMTask()
    raise ValueError(f"unknown task {name!r}")

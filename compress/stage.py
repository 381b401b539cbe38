"""The interface between the pipeline and a task: what a stage may use of its run (`RunContext`), one step of
the plan (`Step`), and what a task provides (`Task`). The task table is `compress.tasks`; the pipeline's own
`RunContext` and `Step` are in `compress.pipeline`."""

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
    """One task's stages and what the report, `compare` and `bundle` need of it. Each stage function fills the
    fresh directory `out` and returns its metrics."""

    name: str  # the recipe's `task`
    metric: str  # the quality figure of the report: "accuracy", "perplexity", ...
    higher_is_better: bool
    recipe_class: type  # the recipe model (a `compress.config.RecipeBase`)

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

    def write_report(self, run_dir: Path, results: dict) -> dict:
        """Write `report.json`, `report.md` and the plots for the benchmark's `results`; returns the report."""

    def compare_row(self, a: dict, b: dict) -> dict:
        """One variant's figures in two reports of this task (`benchmarks.report.delta` each), for `compare`."""

    def render_comparison(self, cmp: dict) -> str:
        """`benchmarks.report.compare_reports`' result as a plain-text table."""

    bundle_rules: dict[str, float]  # the options of the default variant's rule (for example a quality bound)

    def bundle(self, run_dir: Path, target: str, out_dir: Path, variant: str | None, *, rule: dict,
               force: bool) -> dict:  # fmt: skip
        """Write a deployment bundle for `target` from a finished run; returns its record (`bundle.json`).
        `rule` holds values for some of `bundle_rules`."""

    def bundle_message(self, meta: dict, out_dir: Path) -> str:
        """What `edge-compress bundle` prints about the bundle it wrote."""

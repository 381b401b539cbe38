"""The interface between the pipeline and a task: what a stage may use of its run (`RunContext`), one step of
the plan (`Step`), and what a task provides (`Task`). The task table is `compress.tasks`; the pipeline's own
`RunContext` and `Step` are in `compress.pipeline`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
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

    def tokenizer(self, variant: str) -> Any: ...

    def metrics(self, step_id: str) -> dict: ...

    def ok(self, step_id: str) -> bool: ...


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

    def report_sections(self, report: dict) -> list:
        """The report's sections (`benchmarks.document.Section`) for a `report.json`, to render it again."""

    def compare_row(self, a: dict, b: dict) -> dict:
        """One variant's figures in two reports of this task (`benchmarks.report.delta` each), for `compare`."""

    def render_comparison(self, cmp: dict) -> str:
        """`benchmarks.report.compare_reports`' result as a plain-text table."""

    bundle_rules: dict[str, Any]  # the bundle's options: the default variant's rule (a quality bound), and others

    def bundle(self, run_dir: Path, target: str, out_dir: Path, variant: str | None, *, rule: dict,
               force: bool) -> dict:  # fmt: skip
        """Write a deployment bundle for `target` from a finished run; returns its record (`bundle.json`).
        `rule` holds values for some of `bundle_rules`."""

    def bundle_message(self, meta: dict, out_dir: Path) -> str:
        """What `edge-compress bundle` prints about the bundle it wrote."""


class TaskBase:
    """The report, `compare` and bundle hooks of `Task`, written once: they delegate to the task folder's
    `report` module (`write`, `compare_row`, `render_compare`) and bundle function, which the task names in
    `report_module` and `bundle_function` (imported there, when first used: reading a recipe imports neither)."""

    bundle_rules: dict[str, Any] = {}

    def report_module(self) -> Any:
        raise NotImplementedError

    def bundle_function(self) -> Callable[..., dict]:
        raise NotImplementedError

    def write_report(self, run_dir: Path, results: dict, manifest: dict) -> dict:
        return self.report_module().write(run_dir, results, manifest)

    def report_sections(self, report: dict) -> list:
        return self.report_module().sections(report)

    def compare_row(self, a: dict, b: dict) -> dict:
        return self.report_module().compare_row(a, b)

    def render_comparison(self, cmp: dict) -> str:
        return self.report_module().render_compare(cmp)

    def bundle(self, run_dir: Path, target: str, out_dir: Path, variant: str | None, *, rule: dict, force: bool):
        rule = {**self.bundle_rules, **rule}
        return self.bundle_function()(run_dir, target, out_dir, variant, force=force, **rule)

    def costs(self, recipe, data=None) -> list[str]:
        """Lines `check` prints about what the run will cost (none unless the task estimates it); `data` is the
        recipe's loaded data (`load_data`), for estimates that depend on its size."""
        return []

    def verify_function(self) -> Callable[..., dict]:
        """The task's `verify(bundle_dir, cpus, progress)`: its bundle's script on emulated arm64 CPUs
        (`export.verify`)."""
        raise NotImplementedError


@dataclass(frozen=True)
class BuiltVariant:
    """A model the run made and the benchmark measures: its name, stage, the variant it descends from, the step
    whose directory holds its ONNX artifact, and the model variant whose metrics (parameters, layers) it has."""

    name: str
    stage: str
    parent: str
    artifact: str
    model: str


def built_variants(ctx: RunContext) -> list[BuiltVariant]:
    """The run's own variants, in recipe order, that passed their quality gates and were built: a gated model is
    reported, never measured or shipped. The teacher's descendants name its ONNX export as their parent."""
    r = ctx.recipe

    def built(stage: str, name: str) -> bool:
        return ctx.ok(f"{stage}/{name}") and ctx.ok(f"export/{name}")

    out = [BuiltVariant(d.name, "distill", "teacher-onnx", f"export/{d.name}", d.name) for d in r.distill]
    out = [v for v in out if built("distill", v.name)]
    out += [
        BuiltVariant(p.name, "prune", r.source_of(p), f"export/{p.name}", p.name)
        for p in r.prune
        if built("prune", p.name)
    ]
    for q in r.quantize:
        if ctx.ok(f"quantize/{q.name}"):
            src = r.source_of(q)
            parent = "teacher-onnx" if src == "teacher" else src
            out.append(BuiltVariant(q.name, "quantize", parent, f"quantize/{q.name}", src))
    return out


def save_results(ctx: RunContext, step: Step, out: Path, results: dict, artifact_dirs: dict[str, Path]) -> dict:
    """Write the benchmark's `results.json` into the step's directory `out`, each variant naming its artifact's
    step directory (relative to the run directory), and paths under `out` (the optimum baseline, .ort files)
    recorded under the step's final directory, not the temporary one being written. Returns the results."""
    from compress.manifest import write_json_atomic

    steps = {name: str(d.relative_to(ctx.run_dir)) for name, d in artifact_dirs.items()}
    for v in results["variants"]:
        v["artifact"] = steps.get(v["name"])
    results = json.loads(json.dumps(results).replace(str(out.resolve()), str(ctx.out(step.id).resolve())))
    results = json.loads(json.dumps(results).replace(str(out), str(ctx.out(step.id))))
    write_json_atomic(out / "results.json", results)
    return results

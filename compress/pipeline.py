"""The pipeline: an explicit, ordered list of stages, each cached by the hash of its config and inputs."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from compress.data import TaskData, load_task_data
from compress.manifest import (
    Manifest,
    atomic_dir,
    clean_stale_temporaries,
    hash_json,
    hash_path,
    library_versions,
    write_json_atomic,
)
from compress.recipe import Recipe, RecipeError

# The ONNX variants the export stage writes, from which stage's output each comes.
EXPORTED = {"teacher": "teacher", "student": "distill", "pruned": "prune"}


@dataclass
class RunContext:
    recipe: Recipe
    run_dir: Path
    manifest: Manifest
    log: Callable[[str], None] = print
    _models: dict = field(default_factory=dict)

    @cached_property
    def data(self) -> TaskData:
        return load_task_data(self.recipe.data)

    @cached_property
    def data_hashes(self) -> dict:
        d = self.recipe.data
        files = {k: hash_path(getattr(d, k)) for k in ("train", "dev", "test") if getattr(d, k) is not None}
        return {"files": files, "config": d.model_dump(mode="json", exclude={"train", "dev", "test"})}

    def out(self, stage: str) -> Path:
        return self.run_dir / stage

    def output_hash(self, stage: str) -> str:
        return self.manifest.stage(stage)["output_hash"]

    def load(self, stage: str):
        """The model (and tokenizer) a training stage wrote, loaded once per run."""
        if stage not in self._models:
            from compress.modeling import load_classifier

            self._models[stage] = load_classifier(self.out(stage))
        return self._models[stage]

    def teacher_logits(self) -> np.ndarray:
        return np.load(self.out("teacher") / "train_logits.npy")


# ---- stages: each takes the context and a fresh directory to fill, and returns its metrics ----


def _teacher(ctx: RunContext, out: Path) -> dict:
    from compress.teacher import train_teacher

    r = ctx.recipe
    res = train_teacher(r.teacher, ctx.data, seed=r.seed, max_length=r.data.max_length, work_dir=out / "_trainer")
    res.model.save_pretrained(out)
    res.tokenizer.save_pretrained(out)
    np.save(out / "train_logits.npy", res.train_logits)
    return res.metrics


def _distill(ctx: RunContext, out: Path) -> dict:
    from compress.distill import distill

    r = ctx.recipe
    teacher, tokenizer = ctx.load("teacher")
    res = distill(
        teacher,
        tokenizer,
        ctx.teacher_logits(),
        r.distill,
        ctx.data,
        seed=r.seed,
        max_length=r.data.max_length,
        work_dir=out / "_trainer",
    )
    res.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return res.metrics


def _prune(ctx: RunContext, out: Path) -> dict:
    from compress.prune import prune

    r = ctx.recipe
    student, tokenizer = ctx.load("distill")
    res = prune(
        student,
        tokenizer,
        ctx.teacher_logits(),
        r.prune,
        ctx.data,
        seed=r.seed,
        max_length=r.data.max_length,
        work_dir=out / "_trainer",
    )
    res.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return res.metrics


def _export(ctx: RunContext, out: Path) -> dict:
    from export.onnx import export_onnx

    metrics = {}
    for name, stage in EXPORTED.items():
        ctx.log(f"    exporting {name} ({stage}/) to ONNX")
        metrics[name] = export_onnx(
            ctx.out(stage),
            out / name,
            ctx.recipe.export,
            ctx.data.dev.texts,
            max_length=ctx.recipe.data.max_length,
        )
    return metrics


def _quantize(ctx: RunContext, out: Path) -> dict:
    from compress.quantize import quantize

    return quantize(ctx.out("export") / "pruned", out, ctx.recipe.quantize)


def _benchmark(ctx: RunContext, out: Path) -> dict:
    from benchmarks.suite import Variant, benchmark

    m = ctx.manifest
    teacher, distill, prune = (m.stage(s)["metrics"] for s in ("teacher", "distill", "prune"))
    exp = ctx.out("export")
    variants = [
        Variant(
            "teacher-torch",
            "baseline",
            "torch",
            None,
            ctx.out("teacher"),
            ctx.out("teacher"),
            teacher["params"],
            teacher["layers"],
        ),
        Variant(
            "teacher-onnx",
            "teacher",
            "onnxruntime",
            "teacher-torch",
            exp / "teacher" / "model.onnx",
            exp / "teacher",
            teacher["params"],
            teacher["layers"],
        ),
        Variant(
            "student-onnx",
            "distill",
            "onnxruntime",
            "teacher-onnx",
            exp / "student" / "model.onnx",
            exp / "student",
            distill["params"],
            distill["layers"],
        ),
        Variant(
            "pruned-onnx",
            "prune",
            "onnxruntime",
            "student-onnx",
            exp / "pruned" / "model.onnx",
            exp / "pruned",
            prune["params"],
            prune["layers"],
        ),
        Variant(
            "pruned-int8-onnx",
            "quantize",
            "onnxruntime",
            "pruned-onnx",
            ctx.out("quantize") / "model.onnx",
            ctx.out("quantize"),
            prune["params"],
            prune["layers"],
        ),
    ]
    results = benchmark(
        variants,
        ctx.data,
        ctx.recipe.benchmark,
        max_length=ctx.recipe.data.max_length,
        reference="teacher-torch",
    )
    write_json_atomic(out / "results.json", results)
    return {v["name"]: {"accuracy": v["accuracy"], "p50_ms": v["latency_ms"]["p50"]} for v in results["variants"]}


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunContext, Path], dict]
    inputs: tuple[str, ...]  # stages whose outputs this one reads
    uses_data: bool = True


# The pipeline, in order.
STAGES: tuple[Stage, ...] = (
    Stage("teacher", _teacher, ()),
    Stage("distill", _distill, ("teacher",)),
    Stage("prune", _prune, ("distill", "teacher")),
    Stage("export", _export, ("teacher", "distill", "prune")),
    Stage("quantize", _quantize, ("export",), uses_data=False),
    Stage("benchmark", _benchmark, ("teacher", "distill", "prune", "export", "quantize")),
)


def _stage_key(ctx: RunContext, stage: Stage) -> tuple[str, dict]:
    r = ctx.recipe
    config = getattr(r, stage.name).model_dump(mode="json")
    inputs = {s: ctx.output_hash(s) for s in stage.inputs}
    if stage.uses_data:
        inputs["data"] = ctx.data_hashes
    if stage.name == "teacher" and r.teacher.path is not None:
        inputs["teacher_path"] = hash_path(r.teacher.path)
    if stage.name == "teacher" and r.teacher.path is None and r.teacher.base != "minilm":
        inputs["teacher_base"] = hash_path(Path(r.teacher.base))
    basis = {"stage": stage.name, "config": config, "seed": r.seed, "inputs": inputs}
    return hash_json(basis), basis


def preflight(recipe: Recipe) -> None:
    """Checks that need the teacher's config, done before any stage runs (not 20 minutes into one)."""
    from compress.modeling import base_model_dir

    teacher_dir = recipe.teacher.path or base_model_dir(recipe.teacher.base)
    cfg = json.loads((Path(teacher_dir) / "config.json").read_text())
    n = cfg.get("num_hidden_layers", cfg.get("n_layers"))
    bad = [i for i in recipe.distill.layers if n is not None and i >= n]
    if bad:
        raise RecipeError(f"distill.layers = {list(recipe.distill.layers)}: the teacher has layers 0..{n - 1}")


def run_pipeline(recipe: Recipe, out_dir: Path | None = None, *, log: Callable[[str], None] = print) -> dict:
    """Run every stage of `recipe` whose config or inputs changed since the last run in `out_dir`.

    Args:
        recipe: a validated recipe (see `compress.recipe.load_recipe`).
        out_dir: the run directory; default `runs/<recipe.name>`.

    Returns:
        The report (also written to `out_dir/report.json` and `report.md`).
    """
    from benchmarks.report import write_report

    preflight(recipe)
    run_dir = Path(out_dir) if out_dir is not None else Path("runs") / recipe.name
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(run_dir)
    manifest = Manifest(run_dir / "manifest.json", recipe.model_dump(mode="json"))
    ctx = RunContext(recipe, run_dir, manifest, log)
    manifest.save()
    for i, stage in enumerate(STAGES, 1):
        key, basis = _stage_key(ctx, stage)
        out = ctx.out(stage.name)
        if manifest.is_fresh(stage.name, key, out):
            log(f"[{i}/{len(STAGES)}] {stage.name}: inputs and config unchanged, skipped")
            continue
        log(f"[{i}/{len(STAGES)}] {stage.name}: running")
        started = time.time()
        manifest.record(stage.name, {"status": "running", "key": key, "started": _iso(started)})
        with atomic_dir(out) as tmp:
            metrics = stage.run(ctx, tmp)
            shutil.rmtree(tmp / "_trainer", ignore_errors=True)
        ended = time.time()
        manifest.record(
            stage.name,
            {
                "status": "done",
                "key": key,
                "config": basis["config"],
                "seed": recipe.seed,
                "inputs": basis["inputs"],
                "output": str(out.relative_to(run_dir)),
                "output_hash": hash_path(out),
                "metrics": metrics,
                "versions": library_versions(),
                "started": _iso(started),
                "ended": _iso(ended),
                "wall_s": round(ended - started, 2),
            },
        )
        log(f"[{i}/{len(STAGES)}] {stage.name}: done in {ended - started:.1f}s")
    results = json.loads((ctx.out("benchmark") / "results.json").read_text())
    report = write_report(results, manifest.data, run_dir)
    log(f"report: {run_dir / 'report.md'}")
    return report


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))

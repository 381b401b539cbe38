"""The pipeline: an explicit, ordered list of steps, each cached by the hash of its config and inputs.

`plan(recipe)` turns the recipe into that list: the teacher, each distill variant, each prune variant, the
ONNX export of every model, each quantize variant, then the benchmark. A step reads only the outputs of the
steps named in its `inputs`, so changing one variant re-runs that variant and what depends on it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from compress.data import TaskData, load_task_data
from compress.errors import StageError
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


@dataclass(frozen=True)
class Step:
    """One unit of work: a stage applied to one variant."""

    stage: str  # teacher, distill, prune, export, quantize or benchmark
    name: str  # the variant it produces (for export: the model it exports)
    config: Any  # the stage config (a frozen pydantic model)
    inputs: tuple[str, ...]  # ids of the steps whose outputs this one reads
    run: Callable[[RunContext, Step, Path], dict]

    @property
    def id(self) -> str:
        return self.stage if self.name == self.stage else f"{self.stage}/{self.name}"


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

    def out(self, step_id: str) -> Path:
        return self.run_dir / step_id

    def model_dir(self, variant: str) -> Path:
        """The Hugging Face directory of a model variant (the teacher, a student or a pruned student)."""
        return self.out(model_step_id(self.recipe, variant))

    def load(self, variant: str):
        """A model variant and its tokenizer, loaded once per run."""
        if variant not in self._models:
            from compress.modeling import load_classifier

            self._models[variant] = load_classifier(self.model_dir(variant))
        return self._models[variant]

    def teacher_logits(self) -> np.ndarray:
        return np.load(self.out("teacher") / "train_logits.npy")

    def metrics(self, step_id: str) -> dict:
        return self.manifest.stage(step_id)["metrics"]


def model_step_id(recipe: Recipe, variant: str) -> str:
    if variant == "teacher":
        return "teacher"
    if variant in {d.name for d in recipe.distill}:
        return f"distill/{variant}"
    if variant in {p.name for p in recipe.prune}:
        return f"prune/{variant}"
    raise RecipeError(f"no model variant named {variant!r}")


# ---- what each stage does: fill a fresh directory, return the metrics ----


def _teacher(ctx: RunContext, step: Step, out: Path) -> dict:
    from compress.teacher import train_teacher

    r = ctx.recipe
    res = train_teacher(r.teacher, ctx.data, seed=r.seed, max_length=r.data.max_length, work_dir=out / "_trainer")
    res.model.save_pretrained(out)
    res.tokenizer.save_pretrained(out)
    np.save(out / "train_logits.npy", res.train_logits)
    return res.metrics


def _distill(ctx: RunContext, step: Step, out: Path) -> dict:
    from compress.distill import distill

    r = ctx.recipe
    teacher, tokenizer = ctx.load("teacher")
    res = distill(
        teacher,
        tokenizer,
        ctx.teacher_logits(),
        step.config,
        ctx.data,
        seed=r.seed,
        max_length=r.data.max_length,
        work_dir=out / "_trainer",
        log=ctx.log,
    )
    res.model.save_pretrained(out)
    res.tokenizer.save_pretrained(out)  # the trimmed tokenizer when trim_vocab is on
    return res.metrics


def _prune(ctx: RunContext, step: Step, out: Path) -> dict:
    from compress.prune import prune

    r = ctx.recipe
    student, tokenizer = ctx.load(r.source_of(step.config))
    res = prune(
        student,
        tokenizer,
        ctx.teacher_logits(),
        step.config,
        ctx.data,
        seed=r.seed,
        max_length=r.data.max_length,
        work_dir=out / "_trainer",
    )
    res.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return res.metrics


def _export(ctx: RunContext, step: Step, out: Path) -> dict:
    from export.onnx import export_onnx

    r = ctx.recipe
    return export_onnx(ctx.model_dir(step.name), out, step.config, ctx.data.dev.texts, max_length=r.data.max_length)


def _quantize(ctx: RunContext, step: Step, out: Path) -> dict:
    from transformers import AutoTokenizer

    from compress.calibration import calibration_feeds, model_input_names
    from compress.quantize import quantize
    from export.runtime import accuracy_evaluator

    q, r, src = step.config, ctx.recipe, ctx.out(step.inputs[0])
    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    holdout = ctx.data.holdout or ctx.data.dev  # dev only when the recipe holds nothing out of train
    evaluate = accuracy_evaluator(tokenizer, holdout.texts, holdout.labels, r.data.max_length)

    calibration = None
    if q.method == "static" or q.max_accuracy_drop is not None:
        texts = ctx.data.train.texts[: q.calibration_examples]
        calibration = calibration_feeds(tokenizer, texts, r.data.max_length, model_input_names(src / "model.onnx"))
    from compress.sensitivity import AccuracyBudgetError

    try:
        return quantize(
            src,
            out,
            q,
            calibration,
            evaluate=evaluate,
            check_texts=ctx.data.dev.texts[:256],
            max_length=r.data.max_length,
        )
    except AccuracyBudgetError as e:
        # Never ship an over-budget model: this variant gets no artifact, the run goes on without it, and the
        # report says so. Its float32 source stays the model to deploy.
        ctx.log(f"    {step.id}: no int8 model within quantize.max_accuracy_drop = {q.max_accuracy_drop}; not shipped")
        return {"shipped": False, "reason": str(e), "max_accuracy_drop": q.max_accuracy_drop, "source": step.inputs[0]}


def _benchmark(ctx: RunContext, step: Step, out: Path) -> dict:
    from benchmarks.baselines import optimum_dynamic_int8
    from benchmarks.suite import Variant, benchmark

    r = ctx.recipe

    def onnx(name: str, stage: str, parent: str | None, artifact: str, model: str) -> Variant:
        m = ctx.metrics(model_step_id(r, model))
        d = ctx.out(artifact)
        return Variant(name, stage, "onnxruntime", parent, d / "model.onnx", d, m["params"], m["layers"])

    t = ctx.metrics("teacher")
    # What a user would get from optimum alone: the teacher, dynamic int8 with optimum's AVX2 preset.
    optimum_int8 = out / "teacher-int8-optimum"
    optimum_dynamic_int8(ctx.out("export/teacher"), optimum_int8)
    variants = [
        Variant(
            "teacher-torch", "baseline", "torch", None, ctx.out("teacher"), ctx.out("teacher"), t["params"], t["layers"]
        ),
        onnx("teacher-onnx", "baseline", "teacher-torch", "export/teacher", "teacher"),
        Variant(
            "teacher-int8-optimum",
            "baseline",
            "onnxruntime",
            "teacher-onnx",
            optimum_int8 / "model.onnx",
            optimum_int8,
            t["params"],
            t["layers"],
        ),
    ]
    variants += [onnx(d.name, "distill", "teacher-onnx", f"export/{d.name}", d.name) for d in r.distill]
    variants += [onnx(p.name, "prune", r.source_of(p), f"export/{p.name}", p.name) for p in r.prune]
    variants += [onnx(q.name, "quantize", r.source_of(q), f"quantize/{q.name}", r.source_of(q)) for q in r.quantize]
    results = benchmark(
        variants,
        ctx.data,
        step.config,
        max_length=r.data.max_length,
        reference="teacher-torch",
        work_dir=out,
        log=ctx.log,
    )
    # Artifacts written here (the optimum baseline, .ort files) are recorded under their final path, not the
    # temporary directory this step writes into.
    results = json.loads(json.dumps(results).replace(str(out.resolve()), str(ctx.out(step.id).resolve())))
    results = json.loads(json.dumps(results).replace(str(out), str(ctx.out(step.id))))
    write_json_atomic(out / "results.json", results)
    return {v["name"]: {"accuracy": v["accuracy"], "p50_ms": v["latency_ms"]["p50"]} for v in results["variants"]}


def plan(recipe: Recipe) -> list[Step]:
    """The ordered steps of a run."""
    steps = [Step("teacher", "teacher", recipe.teacher, (), _teacher)]
    models = ["teacher"]
    for d in recipe.distill:
        steps.append(Step("distill", d.name, d, ("teacher",), _distill))
        models.append(d.name)
    for p in recipe.prune:
        steps.append(Step("prune", p.name, p, (f"distill/{recipe.source_of(p)}", "teacher"), _prune))
        models.append(p.name)
    for m in models:
        steps.append(Step("export", m, recipe.export, (model_step_id(recipe, m),), _export))
    for q in recipe.quantize:
        steps.append(Step("quantize", q.name, q, (f"export/{recipe.source_of(q)}",), _quantize))
    everything = tuple(s.id for s in steps)
    steps.append(Step("benchmark", "benchmark", recipe.benchmark, everything, _benchmark))
    return steps


def _step_key(ctx: RunContext, step: Step) -> tuple[str, dict]:
    r = ctx.recipe
    inputs: dict[str, Any] = {s: ctx.manifest.stage(s)["output_hash"] for s in step.inputs}
    inputs["data"] = ctx.data_hashes
    if step.stage in ("quantize", "benchmark"):
        # Their results depend on the machine: int8 kernels (VNNI or not) and the timings themselves.
        from compress.hardware import cpu_info

        inputs["machine"] = {"cpu": cpu_info(), "versions": library_versions()}
    if step.stage == "teacher" and r.teacher.path is not None:
        inputs["teacher_path"] = hash_path(r.teacher.path)
    if step.stage == "teacher" and r.teacher.path is None and r.teacher.base != "minilm":
        inputs["teacher_base"] = hash_path(Path(r.teacher.base))
    basis = {"step": step.id, "config": step.config.model_dump(mode="json"), "seed": r.seed, "inputs": inputs}
    return hash_json(basis), basis


def preflight(recipe: Recipe) -> None:
    """Checks that need the teacher's config, done before any step runs (not 20 minutes into one)."""
    from compress.modeling import base_model_dir

    teacher_dir = recipe.teacher.path or base_model_dir(recipe.teacher.base)
    cfg = json.loads((Path(teacher_dir) / "config.json").read_text())
    n = cfg.get("num_hidden_layers", cfg.get("n_layers"))
    for i, d in enumerate(recipe.distill):
        if n is not None and any(layer >= n for layer in d.layers):
            key = "distill.layers" if len(recipe.distill) == 1 else f"distill.{i}.layers"
            raise RecipeError(f"{key} = {list(d.layers)}: the teacher has layers 0..{n - 1}")


def run_pipeline(recipe: Recipe, out_dir: Path | None = None, *, log: Callable[[str], None] = print) -> dict:
    """Run every step of `recipe` whose config or inputs changed since the last run in `out_dir`.

    Args:
        recipe: a validated recipe (see `compress.recipe.load_recipe`).
        out_dir: the run directory; default `runs/<recipe.name>`.
        log: where progress lines go.

    Returns:
        The report (also written to `out_dir/report.json` and `report.md`).
    """
    from benchmarks.report import write_report
    from compress.distributed import world_size

    if world_size() > 1:
        # The training loop is DDP-ready (compress.training.train under torchrun), but the pipeline's steps write
        # shared artifacts and the manifest; running them once per rank would race. Refuse rather than corrupt.
        raise StageError("run the pipeline as one process; torchrun applies to compress.training.train, not to run")
    preflight(recipe)
    run_dir = Path(out_dir) if out_dir is not None else Path("runs") / recipe.name
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(run_dir)
    manifest = Manifest(run_dir / "manifest.json", recipe.model_dump(mode="json"))
    ctx = RunContext(recipe, run_dir, manifest, log)
    steps = plan(recipe)
    manifest.data["plan"] = [s.id for s in steps]
    manifest.save()
    for i, step in enumerate(steps, 1):
        key, basis = _step_key(ctx, step)
        out = ctx.out(step.id)
        tag = f"[{i}/{len(steps)}] {step.id}"
        if manifest.is_fresh(step.id, key, out):
            log(f"{tag}: inputs and config unchanged, skipped")
            continue
        log(f"{tag}: running")
        started = time.time()
        manifest.record(step.id, {"status": "running", "key": key, "started": _iso(started)})
        with atomic_dir(out) as tmp:
            metrics = step.run(ctx, step, tmp)
            shutil.rmtree(tmp / "_trainer", ignore_errors=True)
        ended = time.time()
        manifest.record(
            step.id,
            {
                "status": "done",
                "stage": step.stage,
                "key": key,
                "config": basis["config"],
                "seed": recipe.seed,
                "inputs": basis["inputs"],
                "output": step.id,
                "output_hash": hash_path(out),
                "metrics": metrics,
                "versions": library_versions(),
                "started": _iso(started),
                "ended": _iso(ended),
                "wall_s": round(ended - started, 2),
            },
        )
        log(f"{tag}: done in {ended - started:.1f}s")
    results = json.loads((ctx.out("benchmark") / "results.json").read_text())
    # Only this plan's steps: records of variants since removed from the recipe stay in the manifest only.
    planned = {**manifest.data, "stages": {s.id: manifest.stage(s.id) for s in steps}}
    report = write_report(results, planned, run_dir)
    log(f"report: {run_dir / 'report.md'}")
    return report


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))

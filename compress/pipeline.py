"""The pipeline: an explicit, ordered list of steps, each cached by the hash of its config and inputs.

`plan(recipe)` turns the recipe into that list: the teacher, each distill variant, each prune variant, the
ONNX export of every model, each quantize variant, then the benchmark. A step reads only the outputs of the
steps named in its `inputs`, so changing one variant re-runs that variant and what depends on it.

What a stage does depends on the recipe's task (`compress.tasks`): the plan is the same for every task, and
each step calls its task's function for that stage.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from compress.errors import RecipeError, StageError
from compress.hardware import children_peak_rss_bytes, peak_rss_bytes, reset_peak_rss, returned_heap, reused_heap
from compress.manifest import (
    Manifest,
    RunLockedError,
    atomic_dir,
    clean_stale_temporaries,
    hash_json,
    hash_path,
    library_versions,
    run_lock,
)
from compress.recipe import AnyRecipe
from compress.tasks import Task, task_for

_TRAINING_STAGES = ("teacher", "distill", "prune")


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
    recipe: AnyRecipe
    run_dir: Path
    manifest: Manifest
    log: Callable[[str], None] = print
    _models: dict = field(default_factory=dict)

    @cached_property
    def task(self) -> Task:
        return task_for(self.recipe.task)

    @cached_property
    def data(self):
        """The task's data (as its `load_data` reads it), read once per run."""
        return self.task.load_data(self.recipe)

    @cached_property
    def data_hashes(self) -> dict:
        d = self.recipe.data
        files = {k: hash_path(getattr(d, k)) for k in ("train", "dev", "test") if getattr(d, k) is not None}
        return {"files": files, "config": d.model_dump(mode="json", exclude={"train", "dev", "test"})}

    def out(self, step_id: str) -> Path:
        return self.run_dir / step_id

    def model_dir(self, variant: str) -> Path:
        """The Hugging Face directory of a model variant (the teacher, a student or a pruned student)."""
        return self.out(self.recipe.model_step(variant))

    def load(self, variant: str):
        """A model variant and its tokenizer, loaded once per run (until `release`)."""
        if variant not in self._models:
            self._models[variant] = self.task.load_model(self.model_dir(variant))
        return self._models[variant]

    def tokenizer(self, variant: str):
        """A variant's tokenizer, without its weights where the task can read it alone (`load_tokenizer`): a step
        that only encodes text does not hold a 1B-parameter model for it."""
        if variant in self._models:
            return self._models[variant][1]
        read = getattr(self.task, "load_tokenizer", None)
        return read(self.model_dir(variant)) if read else self.load(variant)[1]

    def release(self) -> None:
        """Forget the models loaded so far: the steps that do not train (export, quantize, benchmark) work on
        files, and a teacher kept from the teacher step would otherwise stay resident through all of them."""
        self._models.clear()
        gc.collect()

    def metrics(self, step_id: str) -> dict:
        return self.manifest.stage(step_id)["metrics"]

    def ok(self, step_id: str) -> bool:
        """Whether a step finished, passed its quality gate and produced an artifact to build on or ship."""
        rec = self.manifest.stage(step_id) or {}
        return rec.get("status") == "done" and (rec.get("metrics") or {}).get("shipped", True) is not False


def plan(recipe: AnyRecipe) -> list[Step]:
    """The ordered steps of a run."""
    task = task_for(recipe.task)
    steps = [Step("teacher", "teacher", recipe.teacher, (), task.teacher)]
    models = ["teacher"]
    for d in recipe.distill:
        steps.append(Step("distill", d.name, d, ("teacher",), task.distill))
        models.append(d.name)
    for p in recipe.prune:
        steps.append(Step("prune", p.name, p, (f"distill/{recipe.source_of(p)}", "teacher"), task.prune))
        models.append(p.name)
    for m in models:
        steps.append(Step("export", m, recipe.export, (recipe.model_step(m),), task.export))
    for q in recipe.quantize:
        steps.append(Step("quantize", q.name, q, (f"export/{recipe.source_of(q)}",), task.quantize))
    everything = tuple(s.id for s in steps)
    steps.append(Step("benchmark", "benchmark", recipe.benchmark, everything, task.benchmark))
    return steps


def _step_key(ctx: RunContext, step: Step) -> tuple[str, dict]:
    r = ctx.recipe
    # A step not built (after a failed quality gate) has no output: its status stands in for the hash.
    inputs: dict[str, Any] = {
        s: (ctx.manifest.stage(s) or {}).get("output_hash") or (ctx.manifest.stage(s) or {}).get("status")
        for s in step.inputs
    }
    inputs["data"] = ctx.data_hashes
    if step.stage in ("quantize", "benchmark"):
        # Their results depend on the machine: int8 kernels (VNNI or not) and the timings themselves.
        from compress.hardware import cpu_info

        inputs["machine"] = {"cpu": cpu_info(), "versions": library_versions()}
    if step.stage == "teacher":
        for key, path in r.teacher_dirs().items():  # a user's model directory: its content, not its name
            inputs[f"teacher_{key}"] = hash_path(path)
    basis = {"step": step.id, "config": step.config.model_dump(mode="json"), "seed": r.seed, "inputs": inputs}
    return hash_json(basis), basis


def run_pipeline(recipe: AnyRecipe, out_dir: Path | None = None, *, log: Callable[[str], None] = print) -> dict:
    """Run every step of `recipe` whose config or inputs changed since the last run in `out_dir`.

    Args:
        recipe: a validated recipe (see `compress.recipe.load_recipe`).
        out_dir: the run directory; default `runs/<recipe.name>`.
        log: where progress lines go.

    Returns:
        The report (also written to `out_dir/report.json` and `report.md`).
    """
    from compress.distributed import is_main_process, join_process_group, world_size

    task_for(recipe.task).preflight(recipe)
    run_dir = Path(out_dir) if out_dir is not None else Path("runs") / recipe.name
    if world_size() > 1:  # torchrun: the training steps on every rank (one DDP job), the rest on rank 0
        join_process_group()
        if not is_main_process():
            return _follow(recipe, run_dir)
    _make_run_dir(run_dir)
    try:
        with run_lock(run_dir):
            return _run_locked(recipe, run_dir, log)
    except RunLockedError as e:
        raise RecipeError(str(e)) from None


def _make_run_dir(run_dir: Path) -> None:
    """Create the run directory, or say in one line why it cannot be (a file, read-only, no space)."""
    for p in [run_dir, *run_dir.parents]:
        if p.exists() and not p.is_dir():
            raise RecipeError(f"--out {run_dir}: {p} is a file, not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RecipeError(f"--out {run_dir}: cannot write there ({e.strerror})") from None


def _announce(step: Step, runs: bool) -> None:
    """Under torchrun, tell the other ranks whether rank 0 runs this training step (they run it with it)."""
    from compress.distributed import agree, world_size

    if world_size() > 1 and step.stage in _TRAINING_STAGES:
        agree(runs)


def _follow(recipe: AnyRecipe, run_dir: Path) -> dict:
    """A rank other than 0 in a torchrun launch: each training step that rank 0 runs, run alongside it (their
    Trainer is one DistributedDataParallel job over the ranks, every rank computing the same evaluations), its
    output written to a scratch directory and discarded; nothing of the run directory is written here. The
    steps that do not train run on rank 0 alone while this rank waits for the next announcement."""
    import tempfile

    from compress.distributed import agree, rank

    ctx = RunContext(recipe, run_dir, None, log=lambda _: None)  # type: ignore[arg-type]
    for step in plan(recipe):
        if step.stage not in _TRAINING_STAGES or not agree(False):
            continue
        ctx.manifest = Manifest(run_dir / "manifest.json", recipe.model_dump(mode="json"))  # rank 0's, read now
        with reused_heap(), tempfile.TemporaryDirectory(prefix=f"edge-compress-rank{rank()}-") as tmp:
            step.run(ctx, step, Path(tmp))
    return {}


def _run_locked(recipe: AnyRecipe, run_dir: Path, log: Callable[[str], None]) -> dict:
    clean_stale_temporaries(run_dir)  # the lock is held: no live run owns a temporary here
    manifest = Manifest(run_dir / "manifest.json", recipe.model_dump(mode="json"))
    if manifest.problem:
        log(f"warning: {manifest.problem}")
    ctx = RunContext(recipe, run_dir, manifest, log)
    steps = plan(recipe)
    manifest.data["plan"] = [s.id for s in steps]
    manifest.save()
    for i, step in enumerate(steps, 1):
        out = ctx.out(step.id)
        tag = f"[{i}/{len(steps)}] {step.id}"
        if step.stage == "benchmark":
            _require_a_passing_variant(ctx, steps)
        else:
            blocked = [s for s in step.inputs if (manifest.stage(s) or {}).get("status") in GATED]
            if blocked:
                # Nothing is built from a model that failed its quality gate (or from one built from such a model).
                reason = f"not built: {', '.join(blocked)} failed its quality gate or was not built"
                manifest.record(step.id, {"status": "skipped-gate", "stage": step.stage, "reason": reason})
                log(f"{tag}: {reason}")
                _announce(step, False)
                continue
        key, basis = _step_key(ctx, step)
        fresh = manifest.is_fresh(step.id, key, out)
        _announce(step, not fresh)
        if fresh:
            status = manifest.stage(step.id)["status"]
            log(
                f"{tag}: inputs and config unchanged, skipped"
                + (" (it failed its quality gate)" if status in GATED else "")
            )
            continue
        log(f"{tag}: running")
        started = time.time()
        manifest.record(step.id, {"status": "running", "key": key, "started": _iso(started)})
        peak_is_the_steps = reset_peak_rss()  # else the process's peak so far: an upper bound
        # training steps reuse freed heap (2x faster distillation steps on the LM default, measured; see
        # reused_heap); the other steps, which load model after model, give large blocks back (returned_heap; the
        # benchmark's timings and memory probes run in fresh processes, with the allocator a deployed runtime has)
        heap = reused_heap() if step.stage in _TRAINING_STAGES else returned_heap()
        if step.stage not in _TRAINING_STAGES:
            ctx.release()
        with heap, atomic_dir(out) as tmp:
            metrics = step.run(ctx, step, tmp)
            shutil.rmtree(tmp / "_trainer", ignore_errors=True)
        ended = time.time()
        gate = (metrics or {}).get("gate") or {}
        manifest.record(
            step.id,
            {
                "status": "failed-gate" if gate.get("passed") is False else "done",
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
                # the process's peak resident memory during the step (this process: the benchmark's own worker
                # processes are measured by the benchmark)
                "peak_rss_bytes": peak_rss_bytes(),
                "peak_rss_scope": "step" if peak_is_the_steps else "process so far",
                # the largest child process of the run so far (benchmark workers, probes, fresh processes)
                "peak_rss_children_bytes": children_peak_rss_bytes(),
            },
        )
        if gate.get("passed") is False:
            log(f"{tag}: FAILED its quality gate ({'; '.join(gate.get('reasons', []))}); nothing is built from it")
        peak = manifest.stage(step.id).get("peak_rss_bytes")
        log(f"{tag}: done in {ended - started:.1f}s" + (f", peak memory {peak / 2**30:.2f} GiB" if peak else ""))
    results = json.loads((ctx.out("benchmark") / "results.json").read_text())
    # Only this plan's steps: records of variants since removed from the recipe stay in the manifest only.
    planned = {**manifest.data, "stages": {s.id: manifest.stage(s.id) for s in steps}}
    report = ctx.task.write_report(run_dir, results, planned)
    for step_id, why in gate_failures(manifest, [s.id for s in steps]).items():
        log(f"quality gate: {step_id} failed ({why}); nothing was built from it and it is not in the report's figures")
    log(f"report: {run_dir / 'report.md'}")
    return report


GATED = ("failed-gate", "skipped-gate")


def gate_failures(manifest: Manifest, step_ids: list[str]) -> dict[str, str]:
    """Step id -> why, for the planned steps that failed their quality gate (not those merely skipped after one)."""
    out = {}
    for s in step_ids:
        rec = manifest.stage(s) or {}
        if rec.get("status") == "failed-gate":
            out[s] = "; ".join((rec.get("metrics") or {}).get("gate", {}).get("reasons", [])) or "failed"
    return out


def _require_a_passing_variant(ctx: RunContext, steps: list[Step]) -> None:
    """Before the benchmark: the run must have made at least one model that passed every gate on its way."""
    made = [s for s in steps if s.stage in ("distill", "prune", "quantize")]
    passing = [s for s in made if ctx.ok(s.id) and (s.stage == "quantize" or ctx.ok(f"export/{s.name}"))]
    if not passing:
        failures = gate_failures(ctx.manifest, [s.id for s in steps])
        listed = " | ".join(f"{k}: {v}" for k, v in failures.items()) or "no model variant was built"
        raise StageError(f"no variant passed its quality gate: {listed}")


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))

"""What every task's bundle does with the run it reads and the directory it writes: the error they raise, the
output path's safety, the choice of the variant (named, or by the task's rule) on a measured target, that the
artifact shipped is the one the finished benchmark measured, and the files' checksums. Each task's bundle
(`compress/tasks/<task>/bundle.py`) writes its own files with these."""

from __future__ import annotations

import json
from pathlib import Path


class BundleError(ValueError):
    """A run directory that cannot be bundled as asked (missing report, unknown variant or target)."""


def check_out_dir(run_dir: Path, out_dir: Path, force: bool) -> None:
    """Refuse to write a bundle over the run directory (or a directory holding it), over anything that is not a
    bundle this tool wrote, and over a bundle unless `force`."""
    run, out = Path(run_dir).resolve(), Path(out_dir).resolve()
    if out == run or out in run.parents:
        raise BundleError(f"--out {out_dir}: that would replace the run directory {run_dir}; choose another path")
    if not out.exists():
        return
    meta = out / "bundle.json"
    ours = False
    if out.is_dir() and meta.is_file():
        try:
            ours = {"format", "variant", "files"} <= set(json.loads(meta.read_text()))
        except (OSError, ValueError):
            ours = False
    if not ours:
        kind = "a file" if not out.is_dir() else "a directory that is not a bundle written by edge-compress"
        raise BundleError(f"--out {out_dir}: {kind} is there; choose a new path (nothing was changed)")
    if not force:
        raise BundleError(f"--out {out_dir}: a bundle is there already; add --force to replace it")


def measured_artifact(run_dir: Path, manifest: dict, step_id: str) -> Path:
    """The artifact directory of `step_id` inside `run_dir`, checked to be the one the finished benchmark measured.

    Raises:
        BundleError: no finished benchmark, or the artifact's content hash differs from the one the benchmark
            recorded (a later run rebuilt it and did not finish its benchmark).
    """
    from compress.manifest import hash_path

    bench = (manifest.get("stages") or {}).get("benchmark") or {}
    recorded = (bench.get("inputs") or {}).get(step_id)
    if bench.get("status") != "done" or recorded is None:
        raise BundleError(f"{run_dir}: the benchmark did not finish measuring {step_id}; run the pipeline to the end")
    path = Path(run_dir) / step_id
    if not path.is_dir():
        raise BundleError(f"{path}: not found in the run directory")
    if hash_path(path) != recorded:
        raise BundleError(
            f"{path} is not what the benchmark measured (its content changed after the last finished benchmark); "
            "run the pipeline to the end, then bundle"
        )
    return path


def open_run(run_dir: Path, out_dir: Path, force: bool, variant: str | None) -> tuple[dict, dict]:
    """The finished run's report and manifest, after the checks every bundle makes: a report exists, `out_dir`
    may be written, and a variant named explicitly did not fail its quality gate."""
    run_dir = Path(run_dir)
    if not (run_dir / "report.json").is_file():
        raise BundleError(f"{run_dir}: no report.json (run the pipeline to the end first)")
    check_out_dir(run_dir, out_dir, force)
    report = json.loads((run_dir / "report.json").read_text())
    gated = {g["name"]: g for g in report.get("gated", [])}
    if variant in gated:
        g = gated[variant]
        why = g["reason"] or g["status"]
        raise BundleError(f"variant {variant!r} failed its quality gate and is never shipped: {why}")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return report, manifest


def choose_variant(report: dict, run_dir: Path, target: str, variant: str | None, select) -> tuple[dict, str, int]:
    """The variant to ship to `target` and why, and the target's thread count.

    Args:
        variant: a variant named by the user, or None for `select(report, target) -> (variant, why)`, the task's
            rule.

    Raises:
        BundleError: the target was not measured; the variant is unknown or not an ONNX variant.
    """
    from compress.targets import PRESETS

    measured = report.get("environment", {}).get("targets") or {}
    if target not in measured:
        known = "" if target in PRESETS else " (nor is it a named target)"
        raise BundleError(
            f"target {target!r} was not measured by this run{known}; measured: {', '.join(measured) or 'none'} "
            "(add it to benchmark.targets and run again)"
        )
    by = {v["name"]: v for v in report["variants"]}
    if variant is None:
        chosen, why = select(report, target)
    elif variant not in by:
        raise BundleError(f"no variant {variant!r} in {Path(run_dir) / 'report.json'}; variants: {', '.join(by)}")
    elif by[variant]["runtime"] != "onnxruntime":
        raise BundleError(f"variant {variant!r} runs on {by[variant]['runtime']}; a bundle needs an ONNX variant")
    else:
        chosen, why = by[variant], "named explicitly"
    return chosen, why, measured[target]["threads"]


def sha256(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_bundle_script(bundle_dir: Path, script: str, kind: str = "bundle"):
    """A bundle's own script (`predict.py`, `generate.py`, ...), imported as a module: what runs on the device.

    Raises:
        BundleError: `bundle_dir` has no such script (it is not a `kind`).
    """
    import importlib.util

    path = Path(bundle_dir) / script
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: not a {kind} (no {script})")
    spec = importlib.util.spec_from_file_location(f"edge_bundle_{path.stem}_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

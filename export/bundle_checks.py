"""What every kind of bundle checks about the run it reads and the directory it writes: the error they raise, the
output path's safety, and that the artifact shipped is the one the finished benchmark measured. Shared by the
classifier's bundle (`export.bundle`) and the causal LM's (`export.bundle_lm`)."""

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

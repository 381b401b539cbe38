"""Run bookkeeping: content hashes, atomic artifact directories, and the run manifest.

The manifest records, per stage, the config, the input and output hashes, the metrics, the seed, library
versions and wall time. A stage whose key (config + seed + input hashes) matches a finished record whose
output is still intact is skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def hash_path(path: Path) -> str:
    """sha256 of a file, or of a directory's relative file names and contents (sorted)."""
    h = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; on success it replaces `final`, on failure it is removed.

    An interrupted stage therefore never leaves a half-written artifact under the final name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def clean_stale_temporaries(run_dir: Path) -> None:
    """Remove temporaries left by a killed run (a kill -9 skips the cleanup in `atomic_dir`)."""
    run_dir = Path(run_dir)
    for pattern in (".*.tmp-*", ".*.old-*", "*/.*.tmp-*", "*/.*.old-*"):
        for p in run_dir.glob(pattern):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in (
        "torch",
        "transformers",
        "optimum",
        "optimum-onnx",
        "onnx",
        "onnxruntime",
        "tokenizers",
        "numpy",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _read_stages(path: Path) -> tuple[dict | None, str | None]:
    """The stage records of a manifest file, or None and what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return None, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
    except (OSError, UnicodeDecodeError) as e:
        return None, f"cannot be read ({type(e).__name__})"
    if not isinstance(data, dict):
        return None, f"holds a JSON {type(data).__name__}, not an object"
    stages = data.get("stages")
    if not isinstance(stages, dict):
        return None, f'"stages" is {json.dumps(stages)[:40]}, not an object'
    bad = [k for k, v in stages.items() if not isinstance(v, dict)]
    if bad:
        return None, f"the records of {bad[:3]} are not objects"
    return stages, None


class Manifest:
    """The run's `manifest.json`: one record per stage, rewritten atomically after each stage.

    Every save first keeps the previous file as `manifest.json.bak`. A manifest that cannot be read (truncated,
    edited by hand, not an object) is set aside as `manifest.json.corrupt-<time>` and the backup is read instead;
    either way each record is trusted only where its output's hash still matches (`is_fresh`). `problem` says what
    was wrong, for the caller to report.
    """

    def __init__(self, path: Path, recipe: dict[str, Any]):
        self.path = Path(path)
        self.data: dict[str, Any] = {"recipe": recipe, "stages": {}}
        self.problem: str | None = None
        if self.path.is_file():
            stages, problem = _read_stages(self.path)
            if problem is not None:
                aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(self.path, aside)
                backup = self.path.with_name(self.path.name + ".bak")
                stages, backup_problem = _read_stages(backup) if backup.is_file() else (None, "there is none")
                kept = (
                    f"read the previous save ({backup.name}) instead; steps whose outputs still match it are kept"
                    if stages is not None
                    else f"no usable backup ({backup.name}: {backup_problem}); every step runs again"
                )
                self.problem = f"{self.path} {problem}; set aside as {aside.name}; {kept}"
            self.data["stages"] = stages or {}
        self.data["recipe"] = recipe

    def stage(self, name: str) -> dict[str, Any] | None:
        return self.data["stages"].get(name)

    def is_fresh(self, name: str, key: str, output: Path) -> bool:
        """True when a finished record has this key and its output is still there, unchanged."""
        rec = self.stage(name)
        return bool(
            rec
            and rec.get("status") in ("done", "failed-gate")  # a failed gate is a finished, reproducible verdict
            and rec.get("key") == key
            and output.exists()
            and rec.get("output_hash") == hash_path(output)
        )

    def record(self, name: str, record: dict[str, Any]) -> None:
        self.data["stages"][name] = record
        self.save()

    def save(self) -> None:
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if self.path.is_file() and _read_stages(self.path)[1] is None:
            shutil.copy2(self.path, self.path.with_name(self.path.name + ".bak"))
        write_json_atomic(self.path, self.data)


class RunLockedError(RuntimeError):
    """Another process holds the run directory's lock."""


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir/.lock` (an exclusive `flock`) for the duration of a run.

    The kernel releases the lock when its process ends, killed or not, so a dead run never leaves it held.

    Raises:
        RunLockedError: another process holds it; the message names its pid, command and start time.
    """
    import fcntl

    run_dir = Path(run_dir)
    path = run_dir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise RunLockedError(f"{run_dir} is in use by {holder}; wait for it to finish, or use another --out") from None
    try:
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        os.write(fd, f"process {os.getpid()} ({' '.join(_argv())[:200]}), started {started}".encode())
        yield
    finally:
        os.close(fd)


def _argv() -> list[str]:
    import sys

    return [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else ["python"]

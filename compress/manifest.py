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


class Manifest:
    """The run's `manifest.json`: one record per stage, rewritten atomically after each stage."""

    def __init__(self, path: Path, recipe: dict[str, Any]):
        self.path = Path(path)
        self.data: dict[str, Any] = {"recipe": recipe, "stages": {}}
        if self.path.is_file():
            with contextlib.suppress(json.JSONDecodeError):
                old = json.loads(self.path.read_text())
                self.data["stages"] = old.get("stages", {})
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
        write_json_atomic(self.path, self.data)

"""What a published model's card records about how it was made, for every task's `publish` module: the code's
commit, the machine, the corpus files' checksums, paths relative to the repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch

from compress.manifest import hash_path

ROOT = Path(__file__).resolve().parents[1]


def code_commit() -> str:
    """The repository's commit, marked when the working tree has uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
        return sha.stdout.strip() + (" (with uncommitted changes)" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def repo_relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def machine_line() -> str:
    from compress.hardware import cpu_info

    info = cpu_info()
    isa = ", ".join(flag for flag, has in info["isa"].items() if has)
    return f"{info['model']} ({info['logical_cores']} logical cores; {isa}), torch on {torch.get_num_threads()} threads"


def corpus_files(data_config) -> dict:
    """train / dev / test of a recipe's `data` section: file name and sha256 of each that is set."""
    return {
        key: {"file": Path(p).name, "sha256": hash_path(Path(p))}
        for key, p in (("train", data_config.train), ("dev", data_config.dev), ("test", data_config.test))
        if p is not None
    }

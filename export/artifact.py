"""An exported model: one directory holding one or more ONNX files, each with a role, beside the tokenizer.

A classifier or a decoder-only LM is one file (`model`); an encoder-decoder model will be two or three
(`encoder`, `decoder`, ...). `artifact.json` names them, so that quantizing, measuring, sizing and bundling
walk the files an artifact has instead of assuming `model.onnx`. A directory without `artifact.json` (written
before it existed) is read as the single file `model.onnx`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

ARTIFACT_FILE = "artifact.json"


@dataclass(frozen=True)
class Artifact:
    """An artifact directory and its ONNX files by role (file names relative to the directory)."""

    dir: Path
    task: str | None = None  # the task that wrote it (`compress.tasks`); None: a bare model.onnx
    files: dict[str, str] = field(default_factory=lambda: {"model": "model.onnx"})
    # Set when the files' graphs were optimized offline (`export.offline`): {"onnxruntime": version, "level"}.
    # Sessions then load them with graph optimizations off (`export.session.ort_session`).
    graph_optimized: dict | None = None

    def path(self, role: str = "model") -> Path:
        """The ONNX file with this role."""
        if role not in self.files:
            raise KeyError(f"{self.dir}: no ONNX file with role {role!r} (roles: {', '.join(self.files)})")
        return self.dir / self.files[role]

    @property
    def onnx_paths(self) -> list[Path]:
        return [self.dir / f for f in self.files.values()]

    def weight_files(self) -> list[Path]:
        """The ONNX files and any external-data files they reference (what a device downloads)."""
        out: list[Path] = []
        for p in self.onnx_paths:
            out += [f for f in with_external_data(p) if f not in out]
        return out

    def sizes(self) -> dict:
        """Bytes of the weight files, raw and gzip-compressed (`file_sizes`)."""
        return file_sizes(self.weight_files())

    def with_dir(self, directory: Path) -> Artifact:
        """The same files, in another directory (a copy of the artifact)."""
        return Artifact(Path(directory), self.task, dict(self.files), self.graph_optimized)

    def write(self) -> None:
        data: dict = {"task": self.task, "files": self.files}
        if self.graph_optimized:
            data["graph_optimized"] = self.graph_optimized
        (self.dir / ARTIFACT_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path) -> Artifact:
        directory = Path(directory)
        meta = directory / ARTIFACT_FILE
        if not meta.is_file():
            return cls(directory)
        data = json.loads(meta.read_text())
        return cls(directory, data.get("task"), dict(data["files"]), data.get("graph_optimized"))


def with_external_data(onnx_path: Path) -> list[Path]:
    """`onnx_path` and the external-data files its initializers reference (beside it), in that order."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    onnx_path = Path(onnx_path)
    out = [onnx_path]
    for t in onnx.load(str(onnx_path), load_external_data=False).graph.initializer:
        if uses_external_data(t):
            f = onnx_path.parent / next(e.value for e in t.external_data if e.key == "location")
            if f not in out:
                out.append(f)
    return out


# ONNX's protobuf holds at most 2 GiB; above this many bytes of tensors a model is written with them in one side
# file (`NAME.data`, beside `NAME`), which ONNX Runtime memory-maps at load.
INLINE_LIMIT_BYTES = 2**31 - 2**28


def tensor_bytes(model) -> int:
    """Bytes of a loaded ONNX model's initializers (what decides whether it fits one protobuf)."""
    from onnx.external_data_helper import uses_external_data

    total = 0
    for t in model.graph.initializer:
        if uses_external_data(t):
            total += int(next((e.value for e in t.external_data if e.key == "length"), 0) or 0)
        else:
            total += t.ByteSize()
    return total


def save_model(model, path: Path) -> list[Path]:
    """Write an ONNX model to `path`: one file while its tensors are under `INLINE_LIMIT_BYTES`, else the graph
    in `path` and every tensor in `path.name + ".data"` beside it. Returns the files written."""
    import onnx

    path = Path(path)
    if tensor_bytes(model) < INLINE_LIMIT_BYTES:
        onnx.save(model, str(path))
        return [path]
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    return [path, data]


def move_model(onnx_path: Path, dst_dir: Path) -> Path:
    """Move an ONNX model and the external-data files it references into `dst_dir` (names kept)."""
    import shutil

    files = with_external_data(onnx_path)
    for f in files:
        shutil.move(f, Path(dst_dir) / f.name)
    return Path(dst_dir) / files[0].name


def copy_model(onnx_path: Path, dst_dir: Path, name: str | None = None) -> Path:
    """Copy an ONNX model with its external-data files into `dst_dir` (the model renamed to `name` if given;
    the data files keep their names, which the model refers to). Returns the copied model's path."""
    import shutil

    files = with_external_data(onnx_path)
    dst = Path(dst_dir) / (name or files[0].name)
    shutil.copy2(files[0], dst)
    for f in files[1:]:
        shutil.copy2(f, Path(dst_dir) / f.name)
    return dst


# Files up to this size are gzipped whole for their compressed size; a larger one is estimated from samples.
GZIP_EXACT_BYTES = 256 << 20
GZIP_SAMPLES = 16


def gzip_size(path: Path, chunk: int = 1 << 24, exact_up_to: int = GZIP_EXACT_BYTES) -> int:
    """The size of `path` gzipped at level 6 (what a download compressed that way weighs), read in 16 MB chunks: a
    1B-parameter model's weights are never held whole for it.

    Up to `exact_up_to` bytes the whole file is compressed. A larger file (a 1B model's float32 weights: 5 GB,
    about 4 minutes of one core) is estimated by `GZIP_SAMPLES` evenly spaced chunks, each compressed on its own,
    their compressed share of the bytes read scaled to the file: deflate looks back only 32 KB, so a chunk
    compresses as it would inside the whole file, and spacing the samples over the file reads every part of it
    (embedding, layers, head). `gzip_size_is_estimated` says which a size is.
    """
    import zlib

    size = Path(path).stat().st_size
    if size <= exact_up_to:
        z, n = zlib.compressobj(6, zlib.DEFLATED, 31), 0  # wbits 31: the gzip container, as gzip.compress writes
        with open(path, "rb") as f:
            while block := f.read(chunk):
                n += len(z.compress(block))
        return n + len(z.flush())
    chunks = -(-size // chunk)
    read = packed = 0
    with open(path, "rb") as f:
        for i in range(GZIP_SAMPLES):
            f.seek(chunk * (i * chunks // GZIP_SAMPLES))
            block = f.read(chunk)
            z = zlib.compressobj(6, zlib.DEFLATED, -15)  # raw deflate: the gzip header and trailer added once below
            packed += len(z.compress(block)) + len(z.flush())
            read += len(block)
    return round(packed / read * size) + 18  # gzip's 10-byte header and 8-byte trailer


def gzip_size_is_estimated(path: Path, exact_up_to: int = GZIP_EXACT_BYTES) -> bool:
    """Whether `gzip_size(path)` is sampled rather than measured on the whole file."""
    return Path(path).stat().st_size > exact_up_to


def file_sizes(files: list[Path]) -> dict:
    """What a download of `files` weighs: {"size_bytes", "size_gzip_bytes" (level 6, `gzip_size`)}, and
    "size_gzip_estimated": true where a file past `GZIP_EXACT_BYTES` was sampled. Every task's report uses it."""
    out = {
        "size_bytes": sum(Path(f).stat().st_size for f in files),
        "size_gzip_bytes": sum(gzip_size(f) for f in files),
    }
    if any(gzip_size_is_estimated(f) for f in files):
        out["size_gzip_estimated"] = True
    return out

"""The teacher as optimum runs it: `ORTModelForSeq2SeqLM` on the teacher's export (float32, its merged decoder),
and on the teacher quantized by optimum's own dynamic int8 recipe (`benchmarks.baselines.optimum_dynamic_int8`:
the encoder and both decoder graphs each quantized, loaded unmerged, as optimum's documentation does it). A
baseline directory holds hard links to the export's files (copies where links cannot be made)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from compress.tasks.seq2seq.export import FILES, PARTS

OPTIMUM_FP32, OPTIMUM_INT8 = "teacher-optimum", "teacher-int8-optimum"


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _side_files(export_dir: Path, out: Path) -> None:
    for f in export_dir.iterdir():  # config, generation config, tokenizer, settings
        if f.is_file() and not f.name.endswith((".onnx", ".onnx_data", ".data")):
            _link(f, out / f.name)


def optimum_dirs(export_dir: Path, out: Path) -> dict[str, Path]:
    """Build the two baselines' directories under `out`; name -> directory."""
    from benchmarks.baselines import optimum_dynamic_int8

    fp32 = out / OPTIMUM_FP32
    fp32.mkdir(parents=True)
    for name in FILES:
        _link(export_dir / name, fp32 / name)
    _side_files(export_dir, fp32)
    source = out / "_unmerged"
    source.mkdir()
    _link(export_dir / FILES[0], source / FILES[0])
    for name in PARTS:
        _link(export_dir / "parts" / name, source / name)
    _side_files(export_dir, source)
    optimum_dynamic_int8(source, out / OPTIMUM_INT8, file_names=(FILES[0], *PARTS))
    shutil.rmtree(source)
    return {OPTIMUM_FP32: fp32, OPTIMUM_INT8: out / OPTIMUM_INT8}


def optimum_model(path: Path, threads: int, spinning: bool = False):
    """optimum's `ORTModelForSeq2SeqLM` on a baseline directory, with the project's session options."""
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    from export.session import session_options

    return ORTModelForSeq2SeqLM.from_pretrained(
        path, session_options=session_options(threads, spinning=spinning), provider="CPUExecutionProvider"
    )

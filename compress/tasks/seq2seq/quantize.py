"""Quantize a seq2seq ONNX export: the encoder and both decoder graphs (first step, cached steps) with ONNX
Runtime's dynamic int8 (`compress.int8`) or weight-only int4/int8 (`compress.weight_only`, `MatMulNBits`), the
two decoder graphs then merged again (optimum's `merge_decoders`, which shares their identical initializers).

The merged decoder cannot be quantized as it is: its weights are used inside the branches of an `If` node,
which ONNX Runtime's quantizers do not visit (measured: no MatMul of the merged file was quantized)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from compress.tasks.seq2seq.config import Seq2SeqQuantizeConfig
from compress.tasks.seq2seq.export import FILES, PARTS

ENCODER, MERGED = FILES


def _quantize_file(src: Path, dst: Path, cfg: Seq2SeqQuantizeConfig) -> dict:
    if cfg.method == "dynamic":
        from compress.int8 import Int8Spec, quantize_model

        spec = Int8Spec(
            "dynamic", "uint8", "int8", reduce_range="auto", per_channel=cfg.per_channel, op_types=("MatMul",)
        )
        res = quantize_model(src, dst, spec)
        return {"int8_ops": res["int8_ops"], "reduce_range": res.get("reduce_range")}
    from compress.weight_only import WeightOnlySpec, weight_only

    spec = WeightOnlySpec(bits=cfg.bits, block_size=cfg.block_size)
    res = weight_only(src, dst, spec, accuracy_level=4)  # int8 activations in the kernels: the fast CPU path
    return {"quantized_matmuls": res["quantized_matmuls"]}


def quantize_seq2seq(src_dir: Path, out: Path, cfg: Seq2SeqQuantizeConfig) -> dict:
    """Write the quantized encoder and merged decoder of the export in `src_dir` into `out`, with its settings
    and tokenizer files; returns what each graph got."""
    from optimum.onnx.graph_transformations import merge_decoders

    files = {}
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp = Path(tmp)
        files["encoder"] = _quantize_file(src_dir / ENCODER, out / ENCODER, cfg)
        for part in PARTS:
            files[part.removesuffix(".onnx")] = _quantize_file(src_dir / "parts" / part, tmp / part, cfg)
        merge_decoders(tmp / PARTS[0], tmp / PARTS[1], save_path=str(out / MERGED), strict=False)
    for f in src_dir.iterdir():  # settings and tokenizer
        if f.is_file() and not f.name.endswith((".onnx", ".onnx_data", ".data")):
            shutil.copy2(f, out / f.name)
    sizes = {name: (out / name).stat().st_size for name in FILES}
    return {"method": cfg.method, "graphs": files, "size_bytes": sum(sizes.values()), "file_bytes": sizes}

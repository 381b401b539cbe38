"""Quantize stage: post-training dynamic int8 with ONNX Runtime's quantization tool."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path

import onnx

from compress.hardware import cpu_info, has_vnni
from compress.recipe import QuantizeConfig


def resolve_reduce_range(setting: str | bool) -> tuple[bool, str]:
    """Whether to quantize weights to 7 bits, and why.

    On x86 CPUs without VNNI, ONNX Runtime's u8s8 kernels (uint8 activations from DynamicQuantizeLinear,
    int8 weights) use VPMADDUBSW, whose int16 intermediate sums can saturate; 7-bit weights avoid it.
    With VNNI (or on ARM) full 8-bit weights are exact and more accurate.
    """
    if setting != "auto":
        return bool(setting), "set in the recipe"
    info = cpu_info()
    if info["machine"] in ("x86_64", "AMD64", "i686") and not has_vnni():
        return True, "x86 CPU without VNNI: u8s8 may saturate, so weights use 7 bits"
    return False, "CPU with VNNI or non-x86: full 8-bit weights"


def graph_summary(model_path: Path) -> dict:
    """Operator counts and int8/uint8 initializer counts of an ONNX graph."""
    model = onnx.load(str(model_path), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    int8 = sum(1 for t in model.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))
    return {
        "op_counts": dict(sorted(ops.items())),
        "int8_initializers": int8,
        "initializers": len(model.graph.initializer),
    }


def quantize(onnx_dir: Path, out_dir: Path, config: QuantizeConfig) -> dict:
    """Write `out_dir/model.onnx`, an int8 version of `onnx_dir/model.onnx`, with its tokenizer and config.

    Returns:
        The settings used (with the reason for `reduce_range`) and the quantized graph's operator counts.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    reduce_range, why = resolve_reduce_range(config.reduce_range)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        # ONNX shape inference and graph cleanup first, as onnxruntime's quantization docs recommend. Symbolic
        # shape inference is skipped: it gives up on optimum's BERT graphs and then leaves temporary files
        # in the working directory.
        quant_pre_process(onnx_dir / "model.onnx", pre, skip_symbolic_shape=True)
        quantize_dynamic(
            pre,
            out_dir / "model.onnx",
            op_types_to_quantize=list(config.op_types),
            per_channel=config.per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
        )
    for f in onnx_dir.iterdir():
        if f.is_file() and f.suffix != ".onnx":
            shutil.copy2(f, out_dir / f.name)
    summary = graph_summary(out_dir / "model.onnx")
    if summary["int8_initializers"] == 0:
        raise RuntimeError(f"quantize: no int8 weights in {out_dir / 'model.onnx'}; op_types {config.op_types}")
    return {
        "method": config.method,
        "op_types": list(config.op_types),
        "per_channel": config.per_channel,
        "reduce_range": reduce_range,
        "reduce_range_reason": why,
        **summary,
    }

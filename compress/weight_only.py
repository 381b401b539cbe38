"""Weight-only n-bit quantization of an ONNX graph's MatMul weights (and optionally its embedding Gather):
ONNX Runtime's `MatMulNBitsQuantizer` (int4 or int8 weights in blocks of `block_size` along the input
dimension, a scale and optionally a zero point per block: `MatMulNBits`), RTN, HQQ or GPTQ rounding, per-node
bit widths for mixed precision, and the graph rewrites the quantizer needs first.

The rewrites are hand-written because no library pass does exactly this: a tied head reads the embedding through
a `Transpose` node, which the quantizers skip (its weight is not an initializer), so the transpose is folded into
an initializer of its own; and `Gemm` projections (GPT-2's) become MatMul + Add (ONNX Runtime's own
`ONNXModel.replace_gemm_with_matmul`), as `MatMulNBits` takes MatMuls only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compress.calibration import FeedReader
from compress.embedding_quant import token_embedding_gather
from export.artifact import save_model


@dataclass(frozen=True)
class WeightOnlySpec:
    """How weights are quantized (a task's quantize config with these fields serves as well)."""

    bits: Literal[4, 8] = 4
    block_size: int = 32  # weights per scale, a power of two
    symmetric: bool = False  # no zero points
    algorithm: Literal["rtn", "hqq", "gptq"] = "rtn"
    embeddings: Literal["fp32", "int8", "int4"] = "fp32"  # the token embedding Gather


WEIGHT_ONLY_OPS = ("MatMulNBits", "GatherBlockQuantized")


def fold_constant_transposes(model: onnx.ModelProto) -> int:
    """Replace each `Transpose` of an initializer (a tied LM head's view of the embedding) by a transposed
    initializer of its own, in place; returns how many were folded.

    The quantizers only take MatMuls whose weight is an initializer; this gives the head one. The float32 file
    grows by the head's size; the quantized head is then a fraction of it.
    """
    inits = {t.name: t for t in model.graph.initializer}
    folded, keep = 0, []
    for node in model.graph.node:
        if node.op_type == "Transpose" and node.input[0] in inits:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            array = numpy_helper.to_array(inits[node.input[0]])
            model.graph.initializer.append(
                numpy_helper.from_array(np.ascontiguousarray(array.transpose(perm)), node.output[0])
            )
            folded += 1
            continue
        keep.append(node)
    if folded:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return folded


def prepare(src: Path, dst: Path) -> dict:
    """The graph rewrites before quantization (see the module docstring); writes `dst`."""
    from onnxruntime.quantization.onnx_model import ONNXModel

    model = onnx.load(str(src))
    # Shapes the exporter recorded for intermediate values are dropped: ONNX Runtime's quantization pre-processing
    # re-infers them, and fails where a recorded shape disagrees with its inference (GenAI's builder records some
    # of its fused operators' outputs at a rank ONNX's inference does not give them).
    del model.graph.value_info[:]
    folded = fold_constant_transposes(model)
    gemms = sum(1 for n in model.graph.node if n.op_type == "Gemm")
    wrapped = ONNXModel(model)
    if gemms:
        wrapped.replace_gemm_with_matmul()
    save_model(wrapped.model, dst)
    return {"folded_transposes": folded, "gemm_to_matmul": gemms}


def weight_matmuls(model: onnx.ModelProto, min_dim: int) -> tuple[list[str], list[str]]:
    """MatMul nodes with a 2-D initializer weight: (those worth quantizing, those too small to block)."""
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    take, skip = [], []
    for n in model.graph.node:
        if n.op_type == "MatMul" and len(n.input) > 1 and len(inits.get(n.input[1], ())) == 2:
            k, cols = inits[n.input[1]]
            (take if k >= min_dim and cols >= 8 else skip).append(n.name)
    return take, skip


def weight_only(
    src: Path,
    dst: Path,
    config: WeightOnlySpec,
    accuracy_level: int,
    calibration=None,
    bits_by_node: dict[str, int] | None = None,
) -> dict:
    """Quantize the MatMul weights (and optionally the embedding Gather) of `src` with `MatMulNBitsQuantizer`.

    `config`: a `WeightOnlySpec`, or any config with its fields. `calibration`: feeds for GPTQ.

    `bits_by_node` (mixed precision): each quantizable MatMul's bits, 4, 8 or 32 (left in float). ONNX Runtime's
    quantizer takes one bit width per call, so the 4-bit nodes are quantized in one pass and the 8-bit ones in a
    second over its result, each pass excluding the others.
    """
    mnq = _nbits_quantizer()
    model = onnx.load(str(src))
    take, skip = weight_matmuls(model, config.block_size)
    ops = ("MatMul", "Gather") if config.embeddings == "int4" else ("MatMul",)
    passes = [(config.bits, skip)]
    if bits_by_node is not None:
        passes = [(b, skip + [n for n in take if bits_by_node.get(n, 32) != b]) for b in (4, 8)]
        passes = [(b, ex) for b, ex in passes if any(bits_by_node.get(n) == b for n in take)]
    for bits, exclude in passes:
        if config.algorithm == "hqq":
            algo = mnq.HQQWeightOnlyQuantConfig(block_size=config.block_size, bits=4, op_types_to_quantize=ops)
        elif config.algorithm == "gptq":
            algo = mnq.GPTQWeightOnlyQuantConfig(
                calibration_data_reader=FeedReader(calibration or []),
                block_size=config.block_size,
                op_types_to_quantize=("MatMul",),
            )
        else:
            algo = mnq.DefaultWeightOnlyQuantConfig(
                block_size=config.block_size,
                is_symmetric=config.symmetric,
                accuracy_level=accuracy_level,
                bits=bits,
                op_types_to_quantize=ops if bits == 4 else ("MatMul",),
                quant_axes=(("MatMul", 0), ("Gather", 1)),
            )
        quantizer = mnq.MatMulNBitsQuantizer(
            model,
            block_size=config.block_size,
            is_symmetric=config.symmetric,
            accuracy_level=accuracy_level,
            nodes_to_exclude=exclude,
            algo_config=algo,
        )
        quantizer.process()
        model = quantizer.model.model
    out = model
    set_accuracy_level(out, accuracy_level)
    if config.embeddings == "int8":
        gather_uint8_(out)
    save_model(out, dst)
    left = [n for n in take if bits_by_node is not None and bits_by_node.get(n, 32) == 32]
    return {
        "quantized_matmuls": len(take) - len(left),
        "kept_float_matmuls": skip + left,
        "embeddings": config.embeddings,
    }


def gather_uint8_(model: onnx.ModelProto, rows_per_chunk: int = 1 << 14) -> str:
    """The token embedding's `Gather` (`embedding_quant.token_embedding_gather`) reads a uint8 table, and one
    `DequantizeLinear` (per-tensor scale and zero point, asymmetric over [min(0, min), max(0, max)]) turns the
    gathered rows back into float32: in place; returns the node rewritten.

    The form ONNX Runtime's dynamic quantizer gives a Gather (8 bits: MatMulNBitsQuantizer writes a Gather at 4 bits
    only), which `.ort` holds. Written here because that quantizer reloads the whole model and re-infers its
    shapes: at 1.2B parameters it took 50 s and 8 GB beyond the model for one table (measured); this converts the
    table in chunks of rows, with the model already in memory.
    """
    gather = token_embedding_gather(model)
    init = next(t for t in model.graph.initializer if t.name == gather.input[0])
    table = numpy_helper.to_array(init)
    lo, hi = min(0.0, float(table.min())), max(0.0, float(table.max()))
    scale = np.float32((hi - lo) / 255.0 if hi > lo else 1.0)
    zero = np.uint8(np.clip(round(-lo / float(scale)), 0, 255))
    q = np.empty(table.shape, np.uint8)
    for r in range(0, table.shape[0], rows_per_chunk):
        q[r : r + rows_per_chunk] = np.clip(np.rint(table[r : r + rows_per_chunk] / scale) + zero, 0, 255)
    name = gather.input[0]
    model.graph.initializer.remove(init)
    del table
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(q, f"{name}_quantized"),
            numpy_helper.from_array(np.array(scale, np.float32), f"{name}_scale"),
            numpy_helper.from_array(np.array(zero, np.uint8), f"{name}_zero_point"),
        ]
    )
    rows = gather.output[0]
    gather.input[0] = f"{name}_quantized"
    gather.output[0] = f"{rows}_quantized"
    dq = helper.make_node(
        "DequantizeLinear",
        [gather.output[0], f"{name}_scale", f"{name}_zero_point"],
        [rows],
        name=f"{gather.name or name}_DequantizeLinear",
    )
    nodes = list(model.graph.node)
    nodes.insert(nodes.index(gather) + 1, dq)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return gather.name


def _nbits_quantizer():
    """onnxruntime's matmul_nbits_quantizer module, imported without its side effect: it calls
    `logging.basicConfig(level=INFO)` at import, which would print every node every later quantizer visits."""
    import logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    root.setLevel(level)
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    logging.getLogger(mnq.__name__).setLevel(logging.WARNING)
    return mnq


def set_accuracy_level(model: onnx.ModelProto, level: int) -> None:
    """Set every MatMulNBits node's `accuracy_level` (the weights are the same at every level)."""
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            for a in list(node.attribute):
                if a.name == "accuracy_level":
                    node.attribute.remove(a)
            if level:
                node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))

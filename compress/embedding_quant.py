"""4-bit token embeddings: the embedding table as ONNX Runtime's `GatherBlockQuantized`, packed in uint8.

A classifier's token embedding is most of its file (MiniLM: 30,522 x 384 of 22.7M parameters) and each call
reads only the rows of its tokens, so 4 bits there cost no compute. ONNX Runtime's own quantizer
(`MatMulNBitsQuantizer` with `op_types_to_quantize=("Gather",)`) writes the table as an INT4 tensor, which ONNX
Runtime 1.32's `.ort` format cannot hold (the conversion fails), so a model quantized that way cannot ship to
ONNX Runtime Mobile. `GatherBlockQuantized` also takes the table as uint8 holding two 4-bit values per byte with
MatMulNBits's conventions (low nibble first, zero points packed the same way); that form converts to `.ort`.
No library writes it, hence this rewrite: one `Gather` node replaced, nothing else in the graph touched.

Each row is split into blocks of `block_size` values along the hidden axis; a block stores a scale and a 4-bit zero
point (asymmetric round-to-nearest between the block's min and max). The scales are float16: their rounding
(relative 5e-4) is invisible next to 4-bit codes (steps of 1/15 of the block's range), and at 32 values per block
float32 scales would add a fifth to the table's bytes. The operator then returns float16 rows, which one `Cast`
turns back into the float32 the graph expects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"


def quantize_blocks(table: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric 4-bit round-to-nearest of a (V, H) table in blocks of `block_size` along H.

    Returns:
        q: (V, H) uint8 codes in [0, 15]; scale: (V, H / block_size) float32 holding float16 values (what the
        model stores); zero_point: (V, H / block_size) uint8 in [0, 15]. A value is (q - zero_point) * scale.
    """
    rows, hidden = table.shape
    if hidden % block_size:
        raise ValueError(f"embedding width {hidden} is not a multiple of block_size {block_size}")
    blocks = table.astype(np.float32).reshape(rows, hidden // block_size, block_size)
    lo = np.minimum(blocks.min(-1), 0.0)  # 0 stays exactly representable (padding rows, zero biases)
    hi = np.maximum(blocks.max(-1), 0.0)
    scale = np.where(hi > lo, (hi - lo) / 15.0, 1.0).astype(np.float16).astype(np.float32)  # stored as fp16
    zero_point = np.clip(np.round(-lo / scale), 0, 15).astype(np.uint8)
    q = np.clip(np.round(blocks / scale[..., None]) + zero_point[..., None], 0, 15).astype(np.uint8)
    return q.reshape(rows, hidden), scale, zero_point


def dequantize_blocks(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """The float table that `quantize_blocks`' output stands for (the reference the tests compare against)."""
    rows, hidden = q.shape
    n = scale.shape[1]
    blocks = q.reshape(rows, n, hidden // n).astype(np.float32) - zero_point[..., None].astype(np.float32)
    return (blocks * scale[..., None]).reshape(rows, hidden)


def _pack(codes: np.ndarray) -> np.ndarray:
    """Two 4-bit codes per byte along the last axis, the first in the low nibble (odd widths padded with 0)."""
    if codes.shape[-1] % 2:
        codes = np.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, 1)])
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def _from_input(model: onnx.ModelProto, value: str, input_name: str) -> bool:
    """Whether `value` is the graph input `input_name`, possibly through ops that keep its values."""
    producers = {o: n for n in model.graph.node for o in n.output}
    for _ in range(8):
        if value == input_name:
            return True
        node = producers.get(value)
        if node is None or node.op_type not in ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Identity", "Flatten"):
            return False
        value = node.input[0]
    return False


def token_embedding_gather(model: onnx.ModelProto, input_name: str = "input_ids") -> onnx.NodeProto:
    """The `Gather` that reads the token embedding: a 2-D float32 initializer indexed by the graph input
    `input_name` (position and token-type tables are indexed by other values).

    Raises:
        ValueError: no such Gather (a fused graph keeps the table inside EmbedLayerNormalization; a rewritten
            one no longer has a float table), or the table has other readers (a tied LM head).
    """
    inits = {t.name: t for t in model.graph.initializer}
    candidates = [
        n
        for n in model.graph.node
        if n.op_type == "Gather"
        and n.input[0] in inits
        and len(inits[n.input[0]].dims) == 2
        and inits[n.input[0]].data_type == onnx.TensorProto.FLOAT
        and _from_input(model, n.input[1], input_name)
    ]
    if not candidates:
        raise ValueError(
            f"no Gather of a 2-D float32 embedding table indexed by {input_name!r} in the graph "
            "(fused, or already quantized?)"
        )
    gather = max(candidates, key=lambda n: inits[n.input[0]].dims[0])
    readers = [n.name for n in model.graph.node if gather.input[0] in n.input and n is not gather]
    if readers:
        raise ValueError(f"the embedding table {gather.input[0]!r} is also read by {readers}: not rewritten")
    return gather


def quantize_token_embedding(src: Path, dst: Path, *, block_size: int = 32) -> dict:
    """Write `dst`: `src` with its token embedding as a 4-bit `GatherBlockQuantized` (see the module docstring).

    Returns:
        The node and table rewritten, its shape, the block size, bytes before and after, and the largest
        absolute rounding error.
    """
    model = onnx.load(str(src))
    gather = token_embedding_gather(model)
    name = gather.input[0]
    init = next(t for t in model.graph.initializer if t.name == name)
    table = numpy_helper.to_array(init)
    axis = next((a.i for a in gather.attribute if a.name == "axis"), 0)
    if axis != 0:
        raise ValueError(f"{gather.name}: Gather axis {axis}; a token embedding gathers rows (axis 0)")
    q, scale, zero_point = quantize_blocks(table, block_size)
    new_inits = [
        numpy_helper.from_array(_pack(q), f"{name}_q4"),
        numpy_helper.from_array(scale.astype(np.float16), f"{name}_scale"),
        numpy_helper.from_array(_pack(zero_point), f"{name}_zp"),
    ]
    base = gather.name or f"{name}_Gather"
    node = helper.make_node(
        "GatherBlockQuantized",
        [new_inits[0].name, gather.input[1], new_inits[1].name, new_inits[2].name],
        [f"{gather.output[0]}_fp16"],
        name=f"{base}_q4",
        domain=MS_DOMAIN,
        gather_axis=0,
        quantize_axis=1,
        block_size=block_size,
        bits=4,
    )
    cast = helper.make_node("Cast", node.output, [gather.output[0]], name=f"{base}_q4_cast", to=onnx.TensorProto.FLOAT)
    nodes = list(model.graph.node)
    at = nodes.index(gather)
    nodes[at : at + 1] = [node, cast]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.remove(init)
    model.graph.initializer.extend(new_inits)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    onnx.save(model, str(dst))
    error = float(np.abs(dequantize_blocks(q, scale, zero_point) - table).max())
    return {
        "node": node.name,
        "table": name,
        "shape": list(table.shape),
        "block_size": block_size,
        "bytes_before": int(table.nbytes),
        "bytes_after": int(sum(numpy_helper.to_array(t).nbytes for t in new_inits)),
        "max_abs_error": error,
    }

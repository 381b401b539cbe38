"""This CPU's measured matrix-multiply peak through ONNX Runtime, and the share of it a model's latency reaches.

The peak is what ONNX Runtime's own kernels reach on one large product (fp32 `MatMul`; int8 `MatMulInteger`, u8
activations by s8 weights, the VNNI kernel where the CPU has it) with the target's threads, not a datasheet
figure: a model's share of it says how much of its latency is matrix arithmetic and how much is everything else
(per-call overheads, small operators, memory traffic). The products are M x K by K x N with M = 256 rows, the
shape of a batch of sentences, so that the kernels run compute-bound.
"""

from __future__ import annotations

import time

import numpy as np


def _matmul_model(kind: str, m: int, k: int, n: int):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])
        w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    else:
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])
        w = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "w")
        node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])
    graph = helper.make_graph([node], f"peak_{kind}", [a], [y], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def measure_peak_macs(threads: int = 1, *, m: int = 256, k: int = 1024, n: int = 1024, seconds: float = 1.0) -> dict:
    """Multiply-accumulates per second of one large fp32 and one large int8 product in ONNX Runtime.

    Returns:
        {"fp32": MAC/s, "int8": MAC/s, "shape": [m, k, n], "threads": threads}: the best of repeated calls
        after a warm-up (the best, not the median: a peak is what the kernel can do, not what it does on average).
    """
    import onnxruntime as ort

    from export.session import session_options

    out: dict = {"shape": [m, k, n], "threads": threads}
    for kind in ("fp32", "int8"):
        sess = ort.InferenceSession(
            _matmul_model(kind, m, k, n), session_options(threads), providers=["CPUExecutionProvider"]
        )
        rng = np.random.default_rng(1)
        a = rng.standard_normal((m, k)).astype(np.float32) if kind == "fp32" else rng.integers(0, 256, (m, k), np.uint8)
        for _ in range(3):
            sess.run(None, {"a": a})
        best, t_end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            sess.run(None, {"a": a})
            best = min(best, time.perf_counter() - t0)
        out[kind] = m * k * n / best
    return out


def share_of_peak(macs: float, seconds: float, peak_macs_per_s: float) -> float:
    """The share of `peak_macs_per_s` that `macs` in `seconds` reaches (0 to 1; above 1 means the peak is wrong)."""
    return macs / seconds / peak_macs_per_s

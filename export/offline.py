"""A model saved the way a device should load it: graph optimized once, offline, and weights in a side file.

ONNX Runtime optimizes a graph every time a session is made (fusions, constant folding), and it reads an
inline model's weights into memory, where the file bytes, the parsed protobuf and the initializers coexist
while the session is built. Measured on the default recipe's shipped int8 model (5.8 MB, one pinned thread,
the `session_memory` study): weights in an external file, which ONNX Runtime memory-maps,
and a graph optimized ahead of time and loaded with optimizations off, cut the model's resident memory by about
3 MB and its load time, at the same latency. This is ONNX Runtime's own recipe (its `optimized_model_filepath`
and external-initializer session options); the only thing written here is the bookkeeping: the artifact
records that its graph is pre-optimized, so that every session of the project, and the deployed bundles, load
it with optimizations off (`export.session`).

The extended level is used, not "all": ONNX Runtime documents the extended level's output as portable across
CPUs, while the "all" level may bake in layouts for the CPU that saved it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

EXTERNAL_MIN_BYTES = 1024  # smaller initializers (biases, LayerNorm parameters) stay inline


def optimize_offline(src: Path, dst: Path, *, optimize: bool = True, external_data: bool = True) -> dict:
    """Write `dst` (and `dst.data` with `external_data`): `src` optimized by ONNX Runtime at the extended level.

    Args:
        src: an ONNX model (inline weights, or external data beside it).
        dst: the model to write; its weights go to `<dst name>.data` in the same directory when `external_data`.
        optimize: run the extended graph optimizations now (else the graph is saved as it is).
        external_data: initializers of `EXTERNAL_MIN_BYTES` or more go to the side file.

    Returns:
        graph_optimized ({"onnxruntime": version, "level": "extended"} or None), external_data, the files written
        and their bytes, and the operator counts before and after.
    """
    import onnx
    import onnxruntime as ort

    from export.session import session_options

    src, dst = Path(src), Path(dst)
    before = _op_counts(onnx.load(str(src), load_external_data=False))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".offline-") as tmp:
        out = Path(tmp) / dst.name
        if optimize:
            so = session_options(1)
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            so.optimized_model_filepath = str(out)
            if external_data:
                so.add_session_config_entry(
                    "session.optimized_model_external_initializers_file_name", out.name + ".data"
                )
                so.add_session_config_entry(
                    "session.optimized_model_external_initializers_min_size_in_bytes", str(EXTERNAL_MIN_BYTES)
                )
            ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        else:  # the graph exactly as it is (ONNX Runtime's saver would fold Constant nodes into initializers)
            onnx.save(
                onnx.load(str(src)),
                str(out),
                save_as_external_data=external_data,
                all_tensors_to_one_file=True,
                location=out.name + ".data",
                size_threshold=EXTERNAL_MIN_BYTES,
            )
        written = sorted(Path(tmp).iterdir())
        for f in written:  # the model last, so a reader never sees it without its weights
            if f.name != dst.name:
                os.replace(f, dst.parent / f.name)
        os.replace(out, dst)
    files = [dst.parent / f.name for f in written]
    after = _op_counts(onnx.load(str(dst), load_external_data=False))
    return {
        "graph_optimized": {"onnxruntime": ort.__version__, "level": "extended"} if optimize else None,
        "external_data": external_data,
        "files": {f.name: f.stat().st_size for f in files},
        "nodes_before": sum(before.values()),
        "nodes_after": sum(after.values()),
        "op_types_after": after,
    }


def _op_counts(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

"""ONNX Runtime sessions: the one place they are made (checks, sensitivity searches, benchmarks, probes).

Imports only onnxruntime (and `export.artifact`, stdlib only), so the memory probe and the benchmark worker, which
must not pay for torch, can use it.
The deployed bundles (`export/bundle_template/`) carry a copy of these settings: they run without this package.
"""

from __future__ import annotations

from pathlib import Path

from export.artifact import Artifact  # stdlib only at import: the probes' no-model process loads it too


def session_options(threads: int, *, spinning: bool = False):
    """The session options every ONNX Runtime session of the project uses (checks, searches, benchmarks).

    `threads` intra-op threads, one inter-op thread, sequential execution, warnings off. Intra-op spinning is off
    unless `spinning` (a target that measures a desktop's policy): a spinning worker thread burns a core while it
    waits for work, which a phone's scheduler and battery do not tolerate; the deployed bundles set the same.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    spin = "1" if spinning else "0"  # stated either way, so a session's policy can be read back
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return so


def preoptimized(model_path: Path | str) -> bool:
    """Whether `model_path` is an ONNX file whose graph was optimized offline (`export.offline`), as the
    `artifact.json` beside it records; such a graph is loaded with ONNX Runtime's optimizations off."""
    path = Path(model_path)
    if path.suffix != ".onnx":
        return False
    artifact = Artifact.read(path.parent)
    return bool(artifact.graph_optimized) and path.name in artifact.files.values()


def ort_session(model_path: Path | str, threads: int = 1, *, spinning: bool = False):
    """An ONNX Runtime CPU session on `model_path` (.onnx or .ort) with `session_options`: the one place
    sessions are made. A graph optimized offline is loaded as it is (optimizing it again would only cost
    memory and load time)."""
    import onnxruntime as ort

    so = session_options(threads, spinning=spinning)
    if preoptimized(model_path):
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])

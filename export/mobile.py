"""ONNX Runtime's mobile format: convert a model to `.ort`, check it, and ask ORT's usability checker about it.

`.ort` is what ONNX Runtime Mobile (the Android/iOS packages and minimal builds) loads: the graph already
optimized and serialized as a flatbuffer, with no ONNX protobuf parsing or graph optimization at start-up.
Both steps are ONNX Runtime's own tools (`onnxruntime.tools.convert_onnx_models_to_ort` and
`onnxruntime.tools.check_onnx_model_mobile_usability`); this module only runs them and records what they say.

NNAPI (Android) and CoreML (iOS) take only some operators. Dynamic int8 (DynamicQuantizeLinear, MatMulInteger)
is not among them, so such a model runs on the CPU provider; a static QDQ model is the one that can go to an NPU.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np


def convert_to_ort(
    onnx_path: Path,
    out_dir: Path,
    *,
    target_platform: Literal["arm", "amd64"] | None = None,
    optimization_style: Literal["Fixed", "Runtime"] = "Fixed",
) -> dict:
    """Convert `onnx_path` to `out_dir/model.ort` with `onnxruntime.tools.convert_onnx_models_to_ort`.

    Args:
        onnx_path: the ONNX model.
        out_dir: receives `model.ort` and `required_operators.config` (the operator list a minimal ONNX
            Runtime build for this model needs: `build.sh --include_ops_by_config`).
        target_platform: "arm" lets QDQ int8 node groups fuse into int8 kernels (ORT's session option
            `session.qdqisint8allowed`); "amd64" and None keep the portable form.
        optimization_style: "Fixed" bakes the optimizations in (CPU provider); "Runtime" saves some to replay at
            load, for NNAPI/CoreML whose node assignment is known only on the device.

    Returns:
        ort_path, size_bytes, the settings, and the converter's log lines.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from export.artifact import copy_model

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in" / "model.onnx"  # alone in its directory: the tool converts every .onnx it sees
        src.parent.mkdir()
        copy_model(onnx_path, src.parent, src.name)  # with its external data: .ort holds every weight inline
        with contextlib.redirect_stdout(log):
            convert_onnx_models_to_ort(
                src,
                output_dir=Path(tmp) / "out",
                optimization_styles=[OptimizationStyle[optimization_style]],
                target_platform=target_platform,
            )
        produced = sorted((Path(tmp) / "out").glob("*.ort"))
        if len(produced) != 1:
            raise RuntimeError(f"convert_to_ort: expected one .ort file, got {produced}: {log.getvalue()[-500:]}")
        ort_path = out_dir / "model.ort"
        shutil.move(produced[0], ort_path)
        for cfg in (Path(tmp) / "out").glob("*.config"):
            shutil.move(cfg, out_dir / "required_operators.config")
    return {
        "ort_path": str(ort_path),
        "size_bytes": ort_path.stat().st_size,
        "target_platform": target_platform,
        "optimization_style": optimization_style,
        "log": [line for line in log.getvalue().splitlines() if line.strip()],
    }


def compare_outputs(model_a: Path, model_b: Path, requests: list[dict[str, np.ndarray]]) -> dict:
    """Run two models (ONNX or ORT format) on the same requests and compare their logits.

    Returns:
        max_abs_logit_diff, label_agreement (share of equal argmax) and the number of requests.
    """
    from export.runtime import OrtClassifier

    a, b = OrtClassifier(model_a, threads=1), OrtClassifier(model_b, threads=1)
    la = np.concatenate([a(r) for r in requests])
    lb = np.concatenate([b(r) for r in requests])
    return {
        "max_abs_logit_diff": float(np.abs(la - lb).max()),
        "label_agreement": float((la.argmax(-1) == lb.argmax(-1)).mean()),
        "requests": len(requests),
    }


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _ep_record(info, fixed_info) -> dict:
    def one(i) -> dict:
        return {
            "suitability": i.suitability().name,  # YES / MAYBE / NO, the checker's own verdict
            "nodes": i.num_nodes,
            "supported_nodes": i.num_supported_nodes,
            "partitions": i.num_partitions,
            "unsupported_ops": sorted(i.unsupported_ops),
            "nodes_unsupported_due_to_dynamic_shape": i.nodes_unsupported_due_to_dynamic_input,
        }

    return {"as_is": one(info), "fixed_shapes": one(fixed_info) if fixed_info is not None else None}


def mobile_usability(onnx_path: Path) -> dict:
    """What `onnxruntime.tools.check_onnx_model_mobile_usability` concludes about `onnx_path`, structured.

    The same steps as the tool (`usability_checker.analyze_model`): optimize to ORT's basic level, infer shapes,
    estimate how the graph partitions for NNAPI, CoreML NeuralNetwork and CoreML MLProgram, with the model's
    input shapes as they are and as if they were fixed. Called through its functions rather than its command
    line so the figures come back as data, not only as log text; the log text is kept too.

    Returns:
        {"eps": {ep: {"as_is": {...}, "fixed_shapes": {...} | None, "best": YES|MAYBE|NO}}, "dynamic_inputs",
         "try_npu": whether any EP is worth trying (the tool's overall answer), "verdict": one line,
         "log": the tool's analysis lines}.
    """
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    capture = _Capture()
    logger = logging.getLogger(f"{__name__}.usability")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(capture)
    checkers = {
        "NNAPI": uc.check_nnapi_partitions,
        "CoreML NeuralNetwork": lambda m, f: uc.check_coreml_partitions(m, f, "coreml_supported_neuralnetwork_ops.md"),
        "CoreML MLProgram": lambda m, f: uc.check_coreml_partitions(m, f, "coreml_supported_mlprogram_ops.md"),
    }
    eps: dict[str, dict] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            optimized = Path(tmp) / "model.onnx"
            optimize_model(Path(onnx_path), optimized, use_external_initializers=True)
            model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
            dynamic_inputs, _ = uc.check_shapes(model.graph, logger)
            for ep, check in checkers.items():
                info = check(model, True)
                info.print_analysis(logger, ep)
                fixed = check(model, False) if dynamic_inputs else None
                rec = _ep_record(info, fixed)
                best = max(info.suitability(), fixed.suitability() if fixed is not None else info.suitability())
                rec["best"] = best.name
                eps[ep] = rec
    finally:
        logger.removeHandler(capture)
    try_npu = any(r["best"] != "NO" for r in eps.values())
    parts = []
    for ep, r in eps.items():
        a = r["as_is"]
        pct = 100 * a["supported_nodes"] / max(a["nodes"], 1)
        text = f"{ep} {a['suitability']} ({a['partitions']} partitions, {pct:.0f}% of nodes"
        if a["unsupported_ops"]:
            text += f"; unsupported: {', '.join(o.removeprefix('ai.onnx:') for o in a['unsupported_ops'][:6])}"
        text += ")"
        if r["fixed_shapes"] is not None and r["fixed_shapes"]["suitability"] != a["suitability"]:
            text += f", {r['fixed_shapes']['suitability']} with fixed input shapes"
        parts.append(text)
    verdict = "; ".join(parts) + (
        ". Worth comparing against the CPU provider on the device." if try_npu else ". Use the CPU execution provider."
    )
    return {
        "eps": eps,
        "dynamic_inputs": [i.name for i in dynamic_inputs],
        "try_npu": try_npu,
        "verdict": verdict,
        "log": capture.lines,
    }

"""Where a classifier's milliseconds go: ONNX Runtime's profiler, one thread, each dev sentence alone.

    python -m compress.tasks.classification.studies.op_profile RUN_DIR [--variants int8-dynamic student] [--sentences
    300]

For each ONNX variant of a finished run, the kernel time per request summed by operator type (after ONNX
Runtime's own graph optimizations, so the fused operators it makes at load are what is listed), and the share
spent in the matrix products against everything else (quantizing activations, LayerNorm, GELU, softmax,
reshapes). The profiler adds its own cost per node, so read the shares, not the totals.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

# Operators whose time is matrix arithmetic (weights or attention scores), after ONNX Runtime's fusions.
MATRIX_OPS = {
    "MatMul",
    "Gemm",
    "FusedMatMul",
    "FusedGemm",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QLinearMatMul",
    "MatMulNBits",
    "Attention",
    "QAttention",
    "MultiHeadAttention",
}


def profile(model: Path, requests: list[dict], warmup: int = 10) -> dict:
    """Kernel microseconds per request by operator type for `model` on `requests` (one thread, spinning off)."""
    import onnxruntime as ort

    from export.session import session_options

    with tempfile.TemporaryDirectory() as tmp:
        # The one place sessions are made (export.session) does not profile; its options are reused here.
        so = session_options(1)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "profile")
        sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        for r in requests[:warmup] + requests:
            sess.run(None, {k: r[k] for k in names})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: Counter = Counter()
    runs = 0
    for e in events:
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            runs += 1
        elif e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and runs >= warmup:
            per_op[e["args"]["op_name"]] += e["dur"]
    n = len(requests)
    total = sum(per_op.values()) / n
    matrix = sum(v for k, v in per_op.items() if k in MATRIX_OPS) / n
    return {
        "us_per_request": total,
        "matrix_share": matrix / total if total else 0.0,
        "by_op_us": {k: v / n for k, v in per_op.most_common()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--variants", nargs="*", default=None, help="default: every ONNX variant of the report")
    p.add_argument("--sentences", type=int, default=300)
    a = p.parse_args()
    from transformers import AutoTokenizer

    from compress.tasks.classification.config import DataConfig
    from compress.tasks.classification.data import load_task_data
    from export.runtime import tokenize_each

    report = json.loads((a.run_dir / "report.json").read_text())
    manifest = json.loads((a.run_dir / "manifest.json").read_text())
    data = DataConfig(**manifest["recipe"]["data"])
    texts = load_task_data(data).dev.texts[: a.sentences]
    for v in report["variants"]:
        if v["runtime"] != "onnxruntime" or (a.variants and v["name"] not in a.variants):
            continue
        model = a.run_dir / v["artifact"] / "model.onnx" if v.get("artifact") else Path(v["path"])
        tok = AutoTokenizer.from_pretrained(model.parent, local_files_only=True)
        requests = [{k: np.asarray(x) for k, x in r.items()} for r in tokenize_each(tok, texts, data.max_length)]
        res = profile(model, requests)
        top = ", ".join(f"{k} {us:.0f}" for k, us in list(res["by_op_us"].items())[:6])
        print(f"{v['name']:24s} {res['us_per_request']:7.0f} us/request, matrix {res['matrix_share']:.0%}; {top}")


if __name__ == "__main__":
    main()

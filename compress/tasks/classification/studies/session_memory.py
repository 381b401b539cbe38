"""What a model's resident memory is made of, and which ONNX Runtime session options change it.

    python -m compress.tasks.classification.studies.session_memory MODEL.onnx TOKENIZER_DIR [--texts 32] [--repeats 3]

Each setting runs in a fresh process pinned to one core, under the `iot` target's 512 MiB address-space cap: it
loads the model with those options, records the high-water mark of its resident set right after loading and
after running the dev-like sentences, and times the calls. The no-model process (same imports, tokenizer
loaded) is the floor every figure is compared with. Settings:

- `default`: the project's `export.session.session_options`;
- `no-arena`: `enable_cpu_mem_arena = False` (activations from malloc instead of a pooled arena);
- `no-prepack`: `session.disable_prepacking` (kernels keep the initializers as stored, no packed copies);
- `basic-opt`: graph optimizations at the basic level (fewer rewritten copies of initializers at load);
- `external-data`: the same model saved with its weights in a side file, which ONNX Runtime memory-maps;
- `offline`: what `quantize.optimize_offline` + `external_data` ship (`export.offline`): the graph optimized once
  at the extended level, weights in a side file, loaded with optimizations off;
- `empty-graph`: a session on a one-node graph (Identity): what the runtime costs before any model, i.e. the
  code it pages in and the structures it builds for any session. Part of every model's figure.

A model that is already in the offline form is measured as it is (its `artifact.json` says so).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = ("none", "empty-graph", "default", "no-arena", "no-prepack", "basic-opt", "external-data", "offline")


def _child(model: str, tokenizer_dir: str, setting: str, n_texts: int, repeats: int) -> dict:
    import csv

    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from benchmarks.memory import _peak_rss_bytes, request_arrays
    from export.session import preoptimized, session_options

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    tok.no_padding()
    dev = Path(__file__).resolve().parents[2] / "data" / "sst2" / "dev.tsv"
    texts = [r["sentence"] for r in csv.DictReader(dev.open(), delimiter="\t")][:n_texts]
    requests = request_arrays(tok.encode_batch(texts))  # in the no-model process too, as in benchmarks.memory
    if setting == "none":
        return {"load_peak": _peak_rss_bytes(), "peak": _peak_rss_bytes()}
    so = session_options(1)
    if setting == "offline" or (setting != "basic-opt" and preoptimized(model)):
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif setting == "no-arena":
        so.enable_cpu_mem_arena = False
    elif setting == "no-prepack":
        so.add_session_config_entry("session.disable_prepacking", "1")
    elif setting == "basic-opt":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    load_peak = _peak_rss_bytes()
    names = [i.name for i in sess.get_inputs()]
    feeds = [{k: r[k] for k in names} for r in requests]
    for f in feeds:  # warm-up
        sess.run(None, f)
    times = []
    for _ in range(repeats):
        for f in feeds:
            t0 = time.perf_counter()
            sess.run(None, f)
            times.append(time.perf_counter() - t0)
    return {"load_peak": load_peak, "peak": _peak_rss_bytes(), "p50_ms": float(np.median(times) * 1e3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("tokenizer_dir", type=Path)
    p.add_argument("--texts", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--child", nargs=2, metavar=("SETTING", "MODEL"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        from benchmarks.process import apply_limits

        apply_limits([0], 512 * 2**20)
        print(json.dumps(_child(a.child[1], str(a.tokenizer_dir), a.child[0], a.texts, a.repeats)))
        return
    import onnx
    from onnx import TensorProto, helper

    from benchmarks.process import thread_env
    from export.offline import optimize_offline

    with tempfile.TemporaryDirectory() as tmp:
        external = Path(tmp) / "external" / "model.onnx"
        optimize_offline(a.model, external, optimize=False)
        offline = Path(tmp) / "offline" / "model.onnx"
        optimize_offline(a.model, offline)
        empty = Path(tmp) / "empty.onnx"
        io = [helper.make_tensor_value_info(n, TensorProto.INT64, [1, None]) for n in ("input_ids", "logits")]
        graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])], "empty", io[:1], io[1:])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(empty))
        models = {"external-data": external, "offline": offline, "empty-graph": empty}
        rows = {}
        for setting in SETTINGS:
            model = models.get(setting, a.model)
            cmd = [
                sys.executable,
                "-m",
                "compress.tasks.classification.studies.session_memory",
                str(a.model),
                str(a.tokenizer_dir),
            ]
            cmd += ["--texts", str(a.texts), "--repeats", str(a.repeats), "--child", setting, str(model)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(1), check=True)
            rows[setting] = json.loads(out.stdout.strip().splitlines()[-1])
    floor = rows["none"]["peak"]
    from export.artifact import with_external_data

    size = sum(f.stat().st_size for f in with_external_data(a.model))
    print(f"{a.model} ({size / 1e6:.2f} MB with its external data); no-model process {floor / 1e6:.1f} MB")
    print(f"{'setting':14s} {'model RSS MB':>13s} {'of it at load':>14s} {'p50 ms':>8s}")
    for setting, r in rows.items():
        if setting == "none":
            continue
        print(
            f"{setting:14s} {(r['peak'] - floor) / 1e6:13.1f} {(r['load_peak'] - floor) / 1e6:14.1f} {r['p50_ms']:8.3f}"
        )


if __name__ == "__main__":
    main()

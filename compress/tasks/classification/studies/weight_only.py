"""int8 `MatMulInteger` or 4/8-bit weight-only `MatMulNBits` for a classifier, on this CPU: accuracy, speed, size.

    python -m compress.tasks.classification.studies.weight_only RUN_DIR [--variants student pruned-structured]
    [--passes 3]

For each float32 ONNX variant of a finished run: dynamic int8 (u8s8, per-tensor and per-channel scales) and
`MatMulNBits` with 4- and 8-bit weights in blocks of 32 at `accuracy_level` 4 (activations quantized to int8 per
block, int8 products), each with the token embedding as an int8 table. Dev accuracy one sentence per call, p50
on one pinned thread with every candidate interleaved request by request, file size. The same weights ship
either way; what differs is the kernel ONNX Runtime runs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _candidates(src: Path, tmp: Path) -> dict[str, Path]:
    from compress.int8 import Int8Spec, quantize_model
    from compress.weight_only import WeightOnlySpec, prepare, weight_only

    out = {"fp32": src}
    for name, pc in (("int8 MatMulInteger", False), ("int8 MatMulInteger per-channel", True)):
        out[name] = tmp / f"{len(out)}.onnx"
        quantize_model(src, out[name], Int8Spec("dynamic", "uint8", "int8", reduce_range=False, per_channel=pc))
    prepared = tmp / "prepared.onnx"
    prepare(src, prepared)  # the pooler and classifier Gemm become MatMul + Add, which MatMulNBits takes
    for bits in (4, 8):
        name = f"{bits}-bit MatMulNBits level 4"
        out[name] = tmp / f"{len(out)}.onnx"
        weight_only(prepared, out[name], WeightOnlySpec(bits=bits, block_size=32, embeddings="int8"), 4)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--variants", nargs="*", default=["student", "pruned-structured"])
    p.add_argument("--passes", type=int, default=3)
    a = p.parse_args()
    from transformers import AutoTokenizer

    from compress.tasks.classification.config import DataConfig
    from compress.tasks.classification.data import load_task_data
    from export.runtime import tokenize_each
    from export.session import ort_session

    os.sched_setaffinity(0, {0})
    manifest = json.loads((a.run_dir / "manifest.json").read_text())
    cfg = DataConfig(**manifest["recipe"]["data"])
    dev = load_task_data(cfg).dev
    labels = np.asarray(dev.labels)
    for variant in a.variants:
        src_dir = a.run_dir / "export" / variant
        tok = AutoTokenizer.from_pretrained(src_dir, local_files_only=True)
        requests = tokenize_each(tok, dev.texts, cfg.max_length)
        with tempfile.TemporaryDirectory() as tmp:
            paths = _candidates(src_dir / "model.onnx", Path(tmp))
            sessions = {n: ort_session(path, 1) for n, path in paths.items()}
            names = {n: [i.name for i in s.get_inputs()] for n, s in sessions.items()}
            acc = {}
            for n, s in sessions.items():
                preds = [int(s.run(None, {k: r[k] for k in names[n]})[0].argmax(-1)[0]) for r in requests]
                acc[n] = float((np.asarray(preds) == labels).mean())
            times: dict[str, list[float]] = {n: [] for n in sessions}
            for _ in range(a.passes):
                for r in requests:
                    for n, s in sessions.items():
                        feed = {k: r[k] for k in names[n]}
                        t0 = time.perf_counter()
                        s.run(None, feed)
                        times[n].append(time.perf_counter() - t0)
            sizes = {n: path.stat().st_size for n, path in paths.items()}
        base = float(np.median(times["int8 MatMulInteger"]))
        print(f"\n{variant}: dev accuracy, p50 on 1 pinned thread ({len(requests)} sentences x {a.passes}), size")
        for n in sessions:
            p50 = float(np.median(times[n]))
            speed = f"p50 {p50 * 1e3:6.3f} ms ({base / p50:4.2f}x int8)"
            print(f"  {n:34s} {acc[n]:.2%}  {speed}  {sizes[n] / 1e6:6.2f} MB")


if __name__ == "__main__":
    main()

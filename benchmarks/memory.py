"""Peak resident memory of a fresh process that loads one model and runs it.

Run as `python -m benchmarks.memory --runtime onnxruntime --model DIR/model.onnx --tokenizer DIR`; prints one
JSON line. `--model none` gives the same process without a model: the baseline to subtract.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _peak_rss_bytes() -> int:
    # VmHWM is this address space's high-water mark. getrusage's ru_maxrss is not usable here: Linux carries
    # it across fork+exec, so a child of a large parent reports the parent's peak.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux; non-Linux fallback


def _child(runtime: str, model: str, tokenizer_dir: str, texts: list[str], threads: int, max_length: int) -> dict:
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length)
    encs = tok.encode_batch(texts)
    if runtime == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        t0 = time.perf_counter()
        if model == "none":
            return {"load_s": 0.0}
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        load_s = time.perf_counter() - t0
        names = [i.name for i in sess.get_inputs()]
        for e in encs:
            feeds = {
                "input_ids": [e.ids],
                "attention_mask": [e.attention_mask],
                "token_type_ids": [e.type_ids],
            }
            sess.run(None, {k: np.asarray(feeds[k], dtype=np.int64) for k in names})
    else:
        import torch
        from transformers import AutoModelForSequenceClassification

        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        if model == "none":
            return {"load_s": 0.0}
        m = AutoModelForSequenceClassification.from_pretrained(model, local_files_only=True).eval()
        load_s = time.perf_counter() - t0
        with torch.inference_mode():
            for e in encs:
                m(input_ids=torch.tensor([e.ids]), attention_mask=torch.tensor([e.attention_mask]))
    return {"load_s": load_s}


def measure_peak_rss(
    runtime: str,
    model: Path | str,
    tokenizer_dir: Path,
    texts: list[str],
    *,
    threads: int = 1,
    max_length: int = 128,
) -> dict:
    """Peak RSS of a fresh process loading `model` and running it on `texts`, and of one that loads none.

    Returns:
        peak_rss_bytes, baseline_rss_bytes (same imports and tokenizer, no model), their difference and the
        model load time.
    """

    def run(m: str) -> dict:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.memory",
            "--runtime",
            runtime,
            "--model",
            str(m),
            "--tokenizer",
            str(tokenizer_dir),
            "--threads",
            str(threads),
            "--max-length",
            str(max_length),
        ]
        proc = subprocess.run(
            cmd,
            input="\n".join(texts),
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"memory probe failed for {m}: {proc.stderr.strip().splitlines()[-1:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    with_model, without = run(str(model)), run("none")
    return {
        "peak_rss_bytes": with_model["peak_rss_bytes"],
        "baseline_rss_bytes": without["peak_rss_bytes"],
        "model_rss_bytes": with_model["peak_rss_bytes"] - without["peak_rss_bytes"],
        "load_s": with_model["load_s"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runtime", choices=["onnxruntime", "torch"], required=True)
    p.add_argument("--model", required=True, help="model.onnx, a HF model dir, or 'none' for the baseline")
    p.add_argument("--tokenizer", required=True, help="directory holding tokenizer.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-length", type=int, default=128)
    a = p.parse_args()
    texts = [t for t in sys.stdin.read().split("\n") if t]
    out = _child(a.runtime, a.model, a.tokenizer, texts, a.threads, a.max_length)
    out["peak_rss_bytes"] = _peak_rss_bytes()
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Peak resident memory of a fresh process that loads one model and runs it, optionally under a target's limits.

Run as `python -m benchmarks.memory --probe MODULE --runtime onnxruntime --model DIR/model.onnx --tokenizer DIR`;
prints one JSON line. What the process does with the model is the probe module's `child` function (each task has
one: `compress/tasks/<task>/probe.py`, a classifier classifying texts, a decoder generating). `--model none` gives
the same process without a model: the baseline to subtract. `--cpus 0,1`
pins the process and `--memory-limit-bytes N` caps its address space (RLIMIT_AS) before anything is imported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.process import ROOT, apply_limits, thread_env
from compress.hardware import peak_rss_bytes
from compress.targets import ANCHOR_RUNTIMES


def request_arrays(encodings) -> list[dict]:
    """One (1, T) int64 array per input name for each `tokenizers` encoding: the requests a device sends."""
    import numpy as np

    return [
        {
            "input_ids": np.asarray([e.ids], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids], dtype=np.int64),
        }
        for e in encodings
    ]


def measure_peak_rss(
    runtime: str,
    model: Path | str,
    tokenizer_dir: Path,
    texts: list[str],
    *,
    threads: int = 1,
    max_length: int = 128,
    cpus: list[int] | tuple[int, ...] | None = None,
    memory_limit_bytes: int | None = None,
    baseline: dict | None = None,
    probe: str,
    new_tokens: int = 0,
) -> dict:
    """Peak RSS of a fresh process loading `model` and running it on `texts`, and of one that loads none.

    Args:
        probe: the module whose `child(runtime, model, tokenizer_dir, texts, threads, max_length, new_tokens)`
            the process runs (a task's `probe`: for a decoder, `texts` is one prompt's token ids and it generates
            `new_tokens`); `runtime` is one the probe takes.
        cpus: cores to pin both processes to (a target's affinity).
        memory_limit_bytes: RLIMIT_AS of both processes (a target's cap on address space, which counts
            reserved as well as touched memory, so it is stricter than the same figure of RSS).
        baseline: the no-model probe's result from an earlier call with the same runtime and limits, to reuse.

    Returns:
        peak_rss_bytes, baseline_rss_bytes (same imports and tokenizer, no model), their difference
        (model_rss_bytes), the model load time, and `baseline` (the no-model probe, for reuse). With a memory
        limit: `fits_memory_limit`, and on failure `error` instead of the figures.

    Raises:
        RuntimeError: a probe failed and no memory limit was set (so the failure is not a finding).
    """

    def run(m: str) -> dict:
        cmd = [sys.executable, "-m", "benchmarks.memory", "--probe", probe, "--runtime", runtime, "--model", str(m)]
        cmd += ["--new-tokens", str(new_tokens)]
        cmd += ["--tokenizer", str(tokenizer_dir), "--threads", str(threads), "--max-length", str(max_length)]
        if cpus:
            cmd += ["--cpus", ",".join(map(str, cpus))]
        if memory_limit_bytes:
            cmd += ["--memory-limit-bytes", str(memory_limit_bytes)]
        proc = subprocess.run(
            cmd,
            input="\n".join(texts),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=thread_env(threads),
        )
        if proc.returncode != 0:
            last = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            if memory_limit_bytes:
                return {"error": f"{m}: {last[0]}"}
            raise RuntimeError(f"memory probe failed for {m}: {last}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    without = baseline if baseline is not None else run("none")
    with_model = run(str(model))
    limited = {"fits_memory_limit": "error" not in with_model} if memory_limit_bytes else {}
    if "error" in with_model or "error" in without:
        return {**limited, "error": with_model.get("error") or without.get("error"), "baseline": without}
    return {
        "peak_rss_bytes": with_model["peak_rss_bytes"],
        "baseline_rss_bytes": without["peak_rss_bytes"],
        "model_rss_bytes": with_model["peak_rss_bytes"] - without["peak_rss_bytes"],
        "load_s": with_model["load_s"],
        **limited,
        "baseline": without,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runtime", choices=["onnxruntime", "torch", "optimum", *ANCHOR_RUNTIMES], required=True)
    p.add_argument("--probe", required=True, help="the module whose child() runs the model (a task's probe)")
    p.add_argument("--new-tokens", type=int, default=0, help="tokens generated after the prompt (a decoder)")
    p.add_argument("--model", required=True, help="model.onnx, a HF model dir, or 'none' for the baseline")
    p.add_argument("--tokenizer", required=True, help="directory holding tokenizer.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--cpus", default=None, help="comma-separated cores to pin to")
    p.add_argument("--memory-limit-bytes", type=int, default=None, help="RLIMIT_AS")
    a = p.parse_args()
    apply_limits([int(c) for c in a.cpus.split(",")] if a.cpus else None, a.memory_limit_bytes)
    texts = [t for t in sys.stdin.read().split("\n") if t]
    import importlib

    child = importlib.import_module(a.probe).child
    out = child(a.runtime, a.model, a.tokenizer, texts, a.threads, a.max_length, a.new_tokens)
    out["peak_rss_bytes"] = peak_rss_bytes()
    print(json.dumps(out))


if __name__ == "__main__":
    main()

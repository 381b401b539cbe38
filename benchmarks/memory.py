"""Peak resident memory of a fresh process that loads one model and runs it, optionally under a target's limits.

Run as `python -m benchmarks.memory --runtime onnxruntime --model DIR/model.onnx --tokenizer DIR`; prints one
JSON line. `--model none` gives the same process without a model: the baseline to subtract. `--cpus 0,1`
pins the process and `--memory-limit-bytes N` caps its address space (RLIMIT_AS) before anything is imported.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.worker import apply_limits, thread_env
from compress.targets import ANCHOR_RUNTIMES


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


def _child(runtime: str, model: str, tokenizer_dir: str, texts: list[str], threads: int, max_length: int) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length)
    # The requests as arrays, built in the baseline too: preparing inputs is the application's cost, not the model's.
    requests = request_arrays(tok.encode_batch(texts))
    if runtime == "onnxruntime":
        import onnxruntime  # noqa: F401  (imported in the baseline too: its import is not the model's cost)

        from export.session import ort_session

        if model == "none":
            return {"load_s": 0.0}
        t0 = time.perf_counter()
        sess = ort_session(model, threads)
        load_s = time.perf_counter() - t0
        names = [i.name for i in sess.get_inputs()]
        for r in requests:
            sess.run(None, {k: r[k] for k in names})
    else:
        import torch
        from transformers import AutoModelForSequenceClassification

        torch.set_num_threads(threads)
        if model == "none":
            return {"load_s": 0.0}
        t0 = time.perf_counter()
        m = AutoModelForSequenceClassification.from_pretrained(model, local_files_only=True).eval()
        load_s = time.perf_counter() - t0
        with torch.inference_mode():
            for r in requests:
                m(input_ids=torch.from_numpy(r["input_ids"]), attention_mask=torch.from_numpy(r["attention_mask"]))
    return {"load_s": load_s}


def _child_lm(runtime: str, model: str, prompt: list[int], new_tokens: int, threads: int) -> dict:
    """Load a causal LM and generate `new_tokens` after `prompt` (greedy, KV cache), as a device would.

    The libraries a runtime needs are imported before the `none` check, so the no-model baseline holds them too.
    """
    import onnxruntime  # noqa: F401

    if runtime == "onnxruntime":
        from export.lm_onnx import generator_for
    elif runtime in ANCHOR_RUNTIMES:
        from benchmarks.anchors import runner

        __import__("onnxruntime_genai" if runtime == "genai" else "llama_cpp")
    else:
        import torch

        torch.set_num_threads(threads)
        if runtime == "torch":
            from transformers import AutoModelForCausalLM as model_class
        else:
            from optimum.onnxruntime import ORTModelForCausalLM as model_class

            from export.session import session_options
    if model == "none":
        return {"load_s": 0.0}
    t0 = time.perf_counter()
    if runtime == "onnxruntime":
        path = Path(model)
        gen = generator_for(path.parent, path.name, threads=threads)
        load_s = time.perf_counter() - t0
        n = sum(1 for _ in gen.stream(prompt, new_tokens, ignore_eos=True))
        return {"load_s": load_s, "generated": n}
    if runtime in ANCHOR_RUNTIMES:
        r = runner(runtime, model, threads)
        load_s = time.perf_counter() - t0
        return {"load_s": load_s, "generated": sum(1 for _ in r.stream(prompt, new_tokens))}
    if runtime == "torch":
        m = model_class.from_pretrained(model, local_files_only=True).eval()
    else:
        m = model_class.from_pretrained(model, session_options=session_options(threads))
    load_s = time.perf_counter() - t0
    ids = torch.tensor([prompt])
    pad = m.generation_config.pad_token_id
    with torch.inference_mode():
        out = m.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad if pad is not None else m.generation_config.eos_token_id,
        )
    return {"load_s": load_s, "generated": int(out.shape[1] - ids.shape[1])}


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
    task: str = "classification",
    new_tokens: int = 0,
) -> dict:
    """Peak RSS of a fresh process loading `model` and running it on `texts`, and of one that loads none.

    For `task="causal-lm"`, `texts` is one prompt (its token ids, as strings) and the model generates
    `new_tokens` after it; `runtime` is torch, optimum, onnxruntime, or an anchor's (genai, llama.cpp).

    Args:
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
        cmd = [sys.executable, "-m", "benchmarks.memory", "--runtime", runtime, "--model", str(m), "--task", task]
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
            cwd=Path(__file__).resolve().parent.parent,
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
    p.add_argument("--task", choices=["classification", "causal-lm"], default="classification")
    p.add_argument("--new-tokens", type=int, default=0, help="causal-lm: tokens generated after the prompt")
    p.add_argument("--model", required=True, help="model.onnx, a HF model dir, or 'none' for the baseline")
    p.add_argument("--tokenizer", required=True, help="directory holding tokenizer.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--cpus", default=None, help="comma-separated cores to pin to")
    p.add_argument("--memory-limit-bytes", type=int, default=None, help="RLIMIT_AS")
    a = p.parse_args()
    apply_limits([int(c) for c in a.cpus.split(",")] if a.cpus else None, a.memory_limit_bytes)
    texts = [t for t in sys.stdin.read().split("\n") if t]
    if a.task == "causal-lm":
        out = _child_lm(a.runtime, a.model, [int(t) for t in texts], a.new_tokens, a.threads)
    else:
        out = _child(a.runtime, a.model, a.tokenizer, texts, a.threads, a.max_length)
    out["peak_rss_bytes"] = _peak_rss_bytes()
    print(json.dumps(out))


if __name__ == "__main__":
    main()

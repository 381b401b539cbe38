"""Latency of several models under one target's constraints, measured in a fresh process.

Run as `python -m compress.tasks.classification.worker SPEC.json`: the process first pins itself to the target's
cores, then loads every listed model with the target's thread count and intra-op spinning off (on for a target that
says so), times them interleaved on each request set (`latency.time_interleaved`), measures batch throughput, and
prints one JSON line.

A fresh process per target means one target's thread pools, arenas and warmed caches do not carry into the
next. The address-space cap of a target is not applied here: interleaving needs every variant loaded in one
process, and a cap on their sum describes no single deployed model. `memory.measure_peak_rss` applies it,
one model per process.
"""

from __future__ import annotations

import json
import time

from benchmarks.process import process_facts, read_spec, run_worker


def _runner(variant: dict, threads: int, spinning: bool = False):
    import numpy as np

    if variant["runtime"] == "onnxruntime":
        from export.session import ort_session

        sess = ort_session(variant["path"], threads, spinning=spinning)
        names = [i.name for i in sess.get_inputs()]
        run = lambda x: sess.run(["logits"], {k: x[k] for k in names})  # noqa: E731
        run.session = sess
        return run
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(threads)
    model = AutoModelForSequenceClassification.from_pretrained(variant["path"], local_files_only=True).eval()

    def run(x: dict) -> np.ndarray:
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in x.items()}).logits.numpy()

    return run


def _arrays(requests: list[dict]) -> list[dict]:
    import numpy as np

    return [{k: np.asarray(v, dtype=np.int64) for k, v in r.items()} for r in requests]


def _run(spec: dict) -> dict:
    """The measurement itself, in the worker process (limits already applied)."""
    from benchmarks.latency import paired_speedup_ci, summarize, time_interleaved

    threads, p = spec["threads"], spec["protocol"]
    stats = {"resamples": p["bootstrap_resamples"], "confidence": p["confidence"]}
    # Libraries first, so that load_s is the model's load alone, as in the memory probe.
    import onnxruntime  # noqa: F401

    if any(v["runtime"] == "torch" for v in spec["variants"]):
        import torch  # noqa: F401
        from transformers import AutoModelForSequenceClassification  # noqa: F401
    runners, load_s = {}, {}
    for v in spec["variants"]:
        t0 = time.perf_counter()
        runners[v["name"]] = _runner(v, threads, spec.get("spinning", False))
        load_s[v["name"]] = time.perf_counter() - t0
    out: dict = {"load_s": load_s, "latency": {}, "speedup": {}, "throughput": {}, "process": process_facts(runners)}
    for key, requests in spec["request_sets"].items():
        times = time_interleaved(
            runners,
            _arrays(requests),
            warmup=p["warmup"],
            passes=p["passes"] or 1,
            max_requests=None if p["passes"] else p["requests"],
            max_seconds=None if p["passes"] else p["seconds"],
        )
        out["latency"][key] = {n: summarize(t, **stats) for n, t in times.items()}
        out["speedup"][key] = {
            n: {b: paired_speedup_ci(times[b], t, **stats) for b in spec["baselines"] if b in times and b != n}
            for n, t in times.items()
        }
    for bs, batches in spec["batch_sets"].items():
        times = time_interleaved(
            runners,
            _arrays(batches),
            warmup=min(p["warmup"], 2),  # a batch costs many requests: two calls size the arenas
            max_requests=p["requests"],
            max_seconds=p["throughput_seconds"],
        )
        sentences = [len(b["input_ids"]) for b in batches]
        out["throughput"][bs] = {}
        for n, t in times.items():
            done = sum(sentences[k % len(batches)] for k in range(len(t)))
            out["throughput"][bs][n] = {
                "sentences_per_s": done / sum(t),
                "batch_p50_ms": summarize(t, resamples=0)["p50"],
                "batches": len(t),
                "seq_len_mean": float(sum(len(b["input_ids"][0]) for b in batches) / len(batches)),
            }
    return out


def measure_target(
    target,
    variants: list[dict],
    request_sets: dict[str, list[dict]],
    batch_sets: dict[str, list[dict]],
    protocol: dict,
    baselines: list[str],
) -> dict:
    """Run the worker for one target in a fresh process and return its measurements.

    Args:
        target: a resolved `compress.targets.Target`.
        variants: [{"name", "runtime" (torch | onnxruntime), "path"}] to load.
        request_sets: name (e.g. "real", "64") -> requests, each a dict of (1, T) int lists.
        batch_sets: batch size (as a string) -> padded batches, each a dict of (B, T) int lists.
        protocol: warmup, requests, seconds, passes, throughput_seconds, bootstrap_resamples, confidence.
        baselines: variants each other variant's speed-up (with its paired bootstrap interval) is taken against.

    Returns:
        load_s, latency (set -> variant -> percentiles with intervals, ms), speedup (set -> variant -> baseline ->
        {ratio, ci}), throughput (batch size -> variant -> sentences_per_s, ...), wall_s.

    Raises:
        RuntimeError: the worker failed; the message holds the last lines of its stderr.
    """
    spec = {
        "variants": variants,
        "request_sets": request_sets,
        "batch_sets": batch_sets,
        "protocol": protocol,
        "baselines": baselines,
    }
    return run_worker("compress.tasks.classification.worker", target, spec, "benchmark worker")


def main() -> None:
    spec = read_spec()
    print(json.dumps(_run(spec)))


if __name__ == "__main__":
    main()

"""Single-stream latency, interleaved across variants so that machine noise hits all of them alike."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def percentiles(times_s: list[float]) -> dict:
    """p50/p90/p99, mean and spread in milliseconds."""
    a = np.asarray(times_s) * 1e3
    return {
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "max": float(a.max()),
        "n": int(a.size),
    }


def measure_latency(
    runners: dict[str, Callable[[dict], object]],
    inputs: list[dict],
    *,
    warmup: int = 20,
    passes: int = 1,
    progress: Callable | None = None,
) -> dict[str, dict]:
    """Time each runner on each input, one request at a time.

    For every input the runners are called in turn, in an order that rotates from input to input, so a
    slow moment of the machine is shared by all variants instead of landing on one of them.

    Args:
        runners: variant name -> callable taking one request (a dict of (1, T) arrays).
        inputs: the requests, e.g. every dev sentence at its real length.
        warmup: untimed calls per runner before timing (session initialisation, allocator growth).
        passes: timed passes over `inputs`.

    Returns:
        variant name -> percentiles of the per-request wall time, in ms.
    """
    names = list(runners)
    for name in names:
        for k in range(warmup):  # cycles through the inputs when warmup > len(inputs)
            runners[name](inputs[k % len(inputs)])
    times: dict[str, list[float]] = {n: [] for n in names}
    steps = [(p, i) for p in range(passes) for i in range(len(inputs))]
    it = progress(steps) if progress else steps
    for k, (_, i) in enumerate(it):
        x = inputs[i]
        for j in range(len(names)):
            name = names[(k + j) % len(names)]
            t0 = time.perf_counter()
            runners[name](x)
            times[name].append(time.perf_counter() - t0)
    return {n: percentiles(t) for n, t in times.items()}

"""Single-stream latency, interleaved across variants so that machine noise hits all of them alike.

The statistics are pure functions: percentiles, their bootstrap confidence intervals, and the paired bootstrap
interval of a speed-up between two variants timed on the same requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

QUANTILES = (50, 90, 99)


def percentiles(times_s: Sequence[float]) -> dict:
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


def _resample_indices(n: int, resamples: int, seed: int, chunk: int = 256):
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, chunk):
        yield rng.integers(0, n, size=(min(chunk, resamples - start), n))


def bootstrap_ci(
    samples: Sequence[float],
    quantiles: Sequence[float] = QUANTILES,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap confidence interval of each quantile of `samples`.

    Resamples the observations with replacement `resamples` times, computes the quantile of each resample,
    and returns the (1 - confidence)/2 and (1 + confidence)/2 quantiles of those estimates. Deterministic
    for a given `seed`.

    Args:
        samples: the observations (e.g. per-request times).
        quantiles: percentiles in [0, 100].
        resamples: bootstrap resamples; 0 gives the point estimate as both bounds.
        confidence: coverage of the interval, in (0, 1).
        seed: seed of the resampling.

    Returns:
        `"p50"`-style key -> (low, high), in the unit of `samples`.
    """
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        raise ValueError("bootstrap_ci: no samples")
    keys = [f"p{q:g}" for q in quantiles]
    if resamples == 0 or a.size == 1:
        points = np.percentile(a, quantiles)
        return {k: (float(p), float(p)) for k, p in zip(keys, points, strict=True)}
    estimates = np.concatenate(
        [np.percentile(a[idx], quantiles, axis=1).T for idx in _resample_indices(a.size, resamples, seed)]
    )  # (resamples, len(quantiles))
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(estimates, [tail, 100 - tail], axis=0)
    return {k: (float(lo[i]), float(hi[i])) for i, k in enumerate(keys)}


def paired_speedup_ci(
    baseline_s: Sequence[float],
    variant_s: Sequence[float],
    *,
    quantile: float = 50,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Speed-up of a variant over a baseline (baseline's quantile / variant's), with a paired bootstrap interval.

    The two arrays must come from the same requests in the same order (as `time_interleaved` gives them):
    each resample draws request indices and takes both variants' times of those requests, so the noise of a
    slow moment, shared by both, cancels in the ratio instead of widening its interval.

    Returns:
        {"ratio": point estimate, "ci": [low, high]}.
    """
    b, v = np.asarray(baseline_s, dtype=np.float64), np.asarray(variant_s, dtype=np.float64)
    if b.shape != v.shape or b.size == 0:
        raise ValueError(f"paired_speedup_ci: need two equal-length, non-empty arrays, got {b.size} and {v.size}")
    ratio = float(np.percentile(b, quantile) / np.percentile(v, quantile))
    if resamples == 0 or b.size == 1:
        return {"ratio": ratio, "ci": [ratio, ratio]}
    est = np.concatenate(
        [
            np.percentile(b[idx], quantile, axis=1) / np.percentile(v[idx], quantile, axis=1)
            for idx in _resample_indices(b.size, resamples, seed)
        ]
    )
    return {"ratio": ratio, "ci": _interval(est, confidence)}


def rate_ci(
    counts: Sequence[float],
    seconds: Sequence[float],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """A rate over requests (total count / total seconds: tokens/s over generations) with a percentile-bootstrap
    interval that resamples whole requests (a slow request moves the rate as much as its share of the time).

    Returns:
        {"rate": point estimate, "ci": [low, high], "requests": n}.
    """
    c, t = np.asarray(counts, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
    if c.shape != t.shape or c.size == 0 or t.sum() <= 0:
        raise ValueError(f"rate_ci: need equal-length, non-empty counts and seconds, got {c.size} and {t.size}")
    rate = float(c.sum() / t.sum())
    if resamples == 0 or c.size == 1:
        return {"rate": rate, "ci": [rate, rate], "requests": int(c.size)}
    idx = _resample_indices(c.size, resamples, seed)
    est = np.concatenate([c[i].sum(axis=1) / t[i].sum(axis=1) for i in idx])
    return {"rate": rate, "ci": _interval(est, confidence), "requests": int(c.size)}


def paired_rate_ratio_ci(
    counts: Sequence[float],
    seconds_a: Sequence[float],
    seconds_b: Sequence[float],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Rate of A over rate of B (tokens/s of A / tokens/s of B) on the same requests, with a paired bootstrap
    interval: each resample draws request indices and takes both runs of those requests, so a slow moment shared
    by both cancels in the ratio.

    Returns:
        {"ratio": point estimate, "ci": [low, high], "requests": n}.
    """
    c = np.asarray(counts, dtype=np.float64)
    a, b = np.asarray(seconds_a, dtype=np.float64), np.asarray(seconds_b, dtype=np.float64)
    if not c.shape == a.shape == b.shape or c.size == 0:
        raise ValueError(f"paired_rate_ratio_ci: need equal-length, non-empty arrays, got {c.size}, {a.size}, {b.size}")
    ratio = float(b.sum() / a.sum())  # same counts: (C / sum a) / (C / sum b)
    if resamples == 0 or c.size == 1:
        return {"ratio": ratio, "ci": [ratio, ratio], "requests": int(c.size)}
    idx = _resample_indices(c.size, resamples, seed)
    est = np.concatenate([b[i].sum(axis=1) / a[i].sum(axis=1) for i in idx])
    return {"ratio": ratio, "ci": _interval(est, confidence), "requests": int(c.size)}


def _interval(estimates: np.ndarray, confidence: float) -> list[float]:
    """The central `confidence` interval of bootstrap estimates."""
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(estimates, [tail, 100 - tail])
    return [float(lo), float(hi)]


def summarize(times_s: Sequence[float], *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """`percentiles` in ms plus `ci`: the bootstrap interval of p50, p90 and p99 (ms) at `confidence`."""
    out = percentiles(times_s)
    ci = bootstrap_ci(np.asarray(times_s) * 1e3, resamples=resamples, confidence=confidence, seed=seed)
    out["ci"] = {k: [lo, hi] for k, (lo, hi) in ci.items()}
    out["confidence"] = confidence
    return out


def time_interleaved(
    runners: dict[str, Callable[[dict], object]],
    inputs: list[dict],
    *,
    warmup: int = 20,
    passes: int = 1,
    max_requests: int | None = None,
    max_seconds: float | None = None,
    progress: Callable | None = None,
) -> dict[str, list[float]]:
    """Per-request wall times (seconds) of each runner, requests interleaved across runners.

    For every request the runners are called in turn, in an order that rotates from request to request, so a
    slow moment of the machine is shared by all variants instead of landing on one of them. Every runner
    gets the same requests in the same order: element k of each list is the same request.

    Args:
        runners: variant name -> callable taking one request (a dict of (1, T) arrays).
        inputs: the requests, e.g. every dev sentence at its real length.
        warmup: untimed calls per runner before timing (session initialisation, allocator growth).
        passes: timed passes over `inputs` (used when `max_requests` is None).
        max_requests: timed requests per runner, cycling through `inputs`; replaces `passes`.
        max_seconds: stop after the request during which this much time has passed, whichever comes first.
        progress: wraps the iterable of timed steps, e.g. tqdm.

    Returns:
        variant name -> list of per-request times in seconds, all of the same length (at least 1).
    """
    names = list(runners)
    for name in names:
        for k in range(warmup):  # cycles through the inputs when warmup > len(inputs)
            runners[name](inputs[k % len(inputs)])
    total = max_requests if max_requests is not None else passes * len(inputs)
    times: dict[str, list[float]] = {n: [] for n in names}
    steps = [(k // len(inputs), k % len(inputs)) for k in range(total)]
    it = progress(steps) if progress else steps
    start = time.perf_counter()
    for k, (_, i) in enumerate(it):
        x = inputs[i]
        for j in range(len(names)):
            name = names[(k + j) % len(names)]
            t0 = time.perf_counter()
            runners[name](x)
            times[name].append(time.perf_counter() - t0)
        if max_seconds is not None and time.perf_counter() - start >= max_seconds:
            break
    return times


def measure_latency(
    runners: dict[str, Callable[[dict], object]],
    inputs: list[dict],
    *,
    warmup: int = 20,
    passes: int = 1,
    max_requests: int | None = None,
    max_seconds: float | None = None,
    progress: Callable | None = None,
) -> dict[str, dict]:
    """Time each runner on each input, one request at a time (see `time_interleaved`).

    Returns:
        variant name -> percentiles of the per-request wall time, in ms.
    """
    times = time_interleaved(
        runners,
        inputs,
        warmup=warmup,
        passes=passes,
        max_requests=max_requests,
        max_seconds=max_seconds,
        progress=progress,
    )
    return {n: percentiles(t) for n, t in times.items()}

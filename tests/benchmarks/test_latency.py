"""Latency: percentiles and their bootstrap intervals, and runners timed interleaved on every request."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from benchmarks.latency import (
    bootstrap_ci,
    measure_latency,
    paired_rate_ratio_ci,
    paired_speedup_ci,
    percentiles,
    rate_ci,
    summarize,
    time_interleaved,
)


def test_percentiles_of_known_data():
    times_s = [ms / 1e3 for ms in range(1, 101)]  # 1..100 ms
    random.Random(0).shuffle(times_s)
    p = percentiles(times_s)
    # numpy's default linear interpolation between order statistics.
    assert p["p50"] == pytest.approx(50.5)
    assert p["p90"] == pytest.approx(90.1)
    assert p["p99"] == pytest.approx(99.01)
    assert p["mean"] == pytest.approx(50.5)
    assert (p["min"], p["max"], p["n"]) == (pytest.approx(1.0), pytest.approx(100.0), 100)


def test_percentiles_of_a_single_time():
    assert percentiles([0.002]) == pytest.approx(
        {"p50": 2.0, "p90": 2.0, "p99": 2.0, "mean": 2.0, "min": 2.0, "max": 2.0, "n": 1}
    )


def _recording_runners(names, log):
    def make(name):
        def run(x):
            log.append((name, x["i"]))

        return run

    return {n: make(n) for n in names}


def test_every_runner_gets_every_input_each_pass_interleaved():
    names = ["a", "b", "c"]
    inputs = [{"i": i} for i in range(5)]
    log: list[tuple[str, int]] = []
    result = measure_latency(_recording_runners(names, log), inputs, warmup=2, passes=3)

    assert set(result) == set(names)
    assert all(result[n]["n"] == len(inputs) * 3 for n in names)
    warm, timed = log[: 2 * len(names)], log[2 * len(names) :]
    # Warm-up: each runner in turn on the first `warmup` inputs, untimed.
    assert warm == [(n, i) for n in names for i in range(2)]
    assert len(timed) == len(inputs) * 3 * len(names)
    # Timed: for each request every runner once, in an order that rotates from request to request.
    for k in range(len(inputs) * 3):
        group = timed[k * len(names) : (k + 1) * len(names)]
        assert {i for _, i in group} == {k % len(inputs)}
        assert [n for n, _ in group] == [names[(k + j) % len(names)] for j in range(len(names))]
    for n in names:
        assert [i for m, i in timed if m == n] == list(range(5)) * 3


def test_times_measure_the_runner():
    inputs = [{"i": i} for i in range(6)]
    result = measure_latency(
        {"sleep5ms": lambda x: time.sleep(0.005), "noop": lambda x: None}, inputs, warmup=1, passes=2
    )
    slow, fast = result["sleep5ms"], result["noop"]
    assert slow["n"] == fast["n"] == 12
    assert slow["min"] >= 5.0  # sleep never returns early
    assert fast["p50"] < slow["p50"]
    assert slow["min"] <= slow["p50"] <= slow["p90"] <= slow["p99"] <= slow["max"]


def test_progress_wraps_the_timed_steps():
    seen = []

    def progress(steps):
        seen.append(list(steps))
        return steps

    measure_latency({"a": lambda x: None}, [{"i": 0}, {"i": 1}], warmup=0, passes=2, progress=progress)
    assert seen == [[(0, 0), (0, 1), (1, 0), (1, 1)]]


def test_max_requests_cycles_the_inputs_and_max_seconds_stops_early():
    log: list[tuple[str, int]] = []
    times = time_interleaved(
        _recording_runners(["a", "b"], log), [{"i": i} for i in range(3)], warmup=0, max_requests=7
    )
    assert [len(t) for t in times.values()] == [7, 7]
    assert [i for m, i in log if m == "a"] == [0, 1, 2, 0, 1, 2, 0]
    slow = time_interleaved(
        {"a": lambda x: time.sleep(0.01), "b": lambda x: None},
        [{"i": 0}],
        warmup=0,
        max_requests=1000,
        max_seconds=0.05,
    )
    # Stops after the request during which 50 ms passed: about 5 requests of 10 ms, same count for both.
    assert 4 <= len(slow["a"]) == len(slow["b"]) <= 8


def test_bootstrap_interval_covers_the_true_median_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    true_median = np.log(2)  # of the exponential distribution with rate 1
    covered, widths = 0, {}
    for n in (100, 900):
        for rep in range(30):
            ci = bootstrap_ci(rng.exponential(size=n), resamples=300, confidence=0.9, seed=rep)
            lo, hi = ci["p50"]
            covered += n == 100 and lo <= true_median <= hi
            widths.setdefault(n, []).append(hi - lo)
    assert covered >= 23  # nominal 90% of 30 = 27; allow for bootstrap's small-sample undercoverage
    # Width shrinks like 1/sqrt(n): 9x the data, about a third of the width.
    assert 0.2 < np.mean(widths[900]) / np.mean(widths[100]) < 0.5


def test_bootstrap_is_deterministic_ordered_and_degenerate_cases():
    x = np.random.default_rng(0).normal(10, 1, size=200)
    a, b = bootstrap_ci(x, seed=3), bootstrap_ci(x, seed=3)
    assert a == b
    for q in ("p50", "p90", "p99"):
        assert a[q][0] <= np.percentile(x, int(q[1:])) <= a[q][1]
    assert a["p50"][1] < a["p99"][1]
    assert bootstrap_ci([5.0]) == {"p50": (5.0, 5.0), "p90": (5.0, 5.0), "p99": (5.0, 5.0)}
    assert bootstrap_ci(x, resamples=0)["p50"] == (pytest.approx(np.median(x)),) * 2
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_paired_speedup_interval_is_narrower_than_unpaired_noise():
    rng = np.random.default_rng(0)
    # Machine noise shared by both variants on each request (a slow moment hits both); b is exactly 2x faster.
    noise = rng.lognormal(0, 0.5, size=300)
    base, fast = 2.0 * noise, 1.0 * noise
    r = paired_speedup_ci(base, fast, resamples=500)
    assert r["ratio"] == pytest.approx(2.0)
    assert r["ci"][0] == pytest.approx(2.0) and r["ci"][1] == pytest.approx(2.0)
    # Independent noise: a real interval around the true ratio.
    r2 = paired_speedup_ci(2.0 * rng.lognormal(0, 0.2, 300), rng.lognormal(0, 0.2, 300), resamples=500)
    assert r2["ci"][0] < 2.0 < r2["ci"][1] and r2["ci"][1] - r2["ci"][0] > 0.1
    with pytest.raises(ValueError):
        paired_speedup_ci([1.0, 2.0], [1.0])


def test_a_rate_is_total_count_over_total_time_with_an_interval_over_requests():
    rng = np.random.default_rng(1)
    counts, seconds = [127] * 40, list(0.03 * rng.lognormal(0, 0.3, 40))
    r = rate_ci(counts, seconds, resamples=500)
    assert r["rate"] == pytest.approx(sum(counts) / sum(seconds)) and r["requests"] == 40
    assert r["ci"][0] < r["rate"] < r["ci"][1]
    same = rate_ci([10, 10, 10], [0.5, 0.5, 0.5], resamples=200)  # no spread between requests: no width
    assert same["ci"] == pytest.approx([20.0, 20.0])
    with pytest.raises(ValueError):
        rate_ci([1, 2], [1.0])


def test_a_paired_rate_ratio_cancels_noise_both_runs_share():
    rng = np.random.default_rng(2)
    noise = rng.lognormal(0, 0.5, size=60)  # a slow request is slow for both loops
    counts = [127] * 60
    r = paired_rate_ratio_ci(counts, 1.0 * noise, 1.1 * noise, resamples=500)  # A needs 1/1.1 of B's time
    assert r["ratio"] == pytest.approx(1.1) and r["ci"] == pytest.approx([1.1, 1.1])
    r2 = paired_rate_ratio_ci(counts, rng.lognormal(0, 0.2, 60), rng.lognormal(0, 0.2, 60), resamples=500)
    assert r2["ci"][0] < r2["ratio"] < r2["ci"][1]
    with pytest.raises(ValueError):
        paired_rate_ratio_ci([1], [1.0], [1.0, 2.0])


def test_summarize_adds_intervals_in_ms():
    s = summarize([0.001, 0.002, 0.003, 0.004], resamples=50)
    assert s["p50"] == pytest.approx(2.5) and s["confidence"] == 0.95
    assert 1.0 <= s["ci"]["p50"][0] <= 2.5 <= s["ci"]["p50"][1] <= 4.0

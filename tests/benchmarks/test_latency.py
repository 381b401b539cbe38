"""Latency: percentiles on known data, and runners timed interleaved on every request."""

from __future__ import annotations

import random
import time

import pytest

from benchmarks.latency import measure_latency, percentiles


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

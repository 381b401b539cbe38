"""The per-target worker with the PyTorch baseline, and the memory cap of a target."""

from __future__ import annotations

import numpy as np

from benchmarks.memory import measure_peak_rss
from compress.targets import PRESETS, TargetSpec, allowed_cpus, resolve_target
from compress.tasks.classification.worker import measure_target

PROBE = "compress.tasks.classification.probe"


def test_torch_and_onnx_variants_in_one_pinned_single_thread_worker(tiny_torch_variant, tiny_variants):
    onnx = tiny_variants[0]
    variants = [{"name": v.name, "runtime": v.runtime, "path": str(v.path)} for v in (tiny_torch_variant, onnx)]
    request = {"input_ids": [[2, 7, 9, 3]], "attention_mask": [[1, 1, 1, 1]], "token_type_ids": [[0, 0, 0, 0]]}
    protocol = {
        "warmup": 1, "requests": 12, "seconds": 10, "passes": None, "throughput_seconds": 0.1,
        "bootstrap_resamples": 100, "confidence": 0.9,
    }  # fmt: skip
    target = resolve_target(PRESETS["iot"])
    res = measure_target(target, variants, {"real": [request] * 3}, {}, protocol, ["teacher-torch"])
    p = res["process"]
    assert p["affinity"] == allowed_cpus()[:1]
    # PyTorch's pool gets the target's threads, and OpenMP is told not to spin (ORT's allow_spinning=0).
    assert p["torch_threads"] == 1 and p["omp_wait_policy"] == "PASSIVE"
    assert p["ort_intra_op_threads"] == 1 and p["ort_allow_spinning"] == "0"
    assert res["latency"]["real"]["teacher-torch"]["n"] == res["latency"]["real"]["teacher-onnx"]["n"] == 12
    sp = res["speedup"]["real"]["teacher-onnx"]["teacher-torch"]
    assert sp["ci"][0] <= sp["ratio"] <= sp["ci"][1]
    assert res["speedup"]["real"]["teacher-torch"] == {}


def test_a_spinning_target_runs_its_worker_spinning(tiny_torch_variant, tiny_variants):
    """`spinning: true` reaches the worker: ONNX Runtime's allow_spinning on, OpenMP left to its own policy."""
    variants = [{"name": v.name, "runtime": v.runtime, "path": str(v.path)} for v in (tiny_torch_variant,
                                                                                     tiny_variants[0])]  # fmt: skip
    request = {"input_ids": [[2, 7, 9, 3]], "attention_mask": [[1, 1, 1, 1]], "token_type_ids": [[0, 0, 0, 0]]}
    protocol = {
        "warmup": 1, "requests": 4, "seconds": 10, "passes": None, "throughput_seconds": 0.1,
        "bootstrap_resamples": 50, "confidence": 0.9,
    }  # fmt: skip
    target = resolve_target(TargetSpec(name="spin", threads=1, pin_cpus=True, spinning=True))
    assert target.spinning and target.describe()["intra_op_spinning"] is True
    p = measure_target(target, variants, {"real": [request]}, {}, protocol, ["teacher-torch"])["process"]
    assert p["ort_allow_spinning"] == "1" and p["omp_wait_policy"] is None and p["torch_threads"] == 1


def test_pytorch_does_not_fit_a_512_mib_address_space_and_onnx_runtime_does(tiny_torch_variant, tiny_variants):
    cap = 512 * 2**20
    torch_m = measure_peak_rss(
        "torch",
        tiny_torch_variant.path,
        tiny_torch_variant.tokenizer_dir,
        ["good"],
        memory_limit_bytes=cap,
        probe=PROBE,
    )
    assert torch_m["fits_memory_limit"] is False and torch_m["error"]
    int8 = tiny_variants[2]
    ort_m = measure_peak_rss(
        "onnxruntime", int8.path, int8.tokenizer_dir, ["good"], memory_limit_bytes=cap, probe=PROBE
    )
    assert ort_m["fits_memory_limit"] is True and ort_m["peak_rss_bytes"] < cap


def test_resolve_target_pins_to_the_first_cores():
    cpus = allowed_cpus()
    host = resolve_target(PRESETS["host"])
    assert host.threads == len(cpus) and host.cpus is None
    iot = resolve_target(PRESETS["iot"])
    assert (iot.threads, iot.cpus, iot.memory_limit_bytes) == (1, tuple(cpus[:1]), 512 * 2**20)
    big = resolve_target(TargetSpec(name="big", threads=len(cpus) + 2, pin_cpus=True))
    assert big.cpus == tuple(cpus) and big.describe()["oversubscribed"] is True
    assert np.all(np.diff(cpus) > 0)

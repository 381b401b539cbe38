"""The benchmark stage on three tiny ONNX variants, two emulated targets, every measurement on."""

from __future__ import annotations

import pytest

from compress.targets import allowed_cpus
from compress.tasks.classification.suite import fixed_length_requests, throughput_batches

NAMES = ["teacher-onnx", "teacher-int8-optimum", "int8"]
BASELINES = NAMES[:2]


@pytest.fixture
def results(bench_results):
    return bench_results


def test_every_variant_is_measured_on_every_target_and_length(results):
    by = {v["name"]: v for v in results["variants"]}
    assert list(by) == NAMES
    for t in ("iot", "mobile"):
        for key in ("real", "16"):
            lats = [by[n]["targets"][t]["latency_ms"][key] for n in NAMES]
            # Interleaved: every variant timed on the same requests, so the same count for all.
            assert len({lat["n"] for lat in lats}) == 1 and 1 <= lats[0]["n"] <= 30
            for lat in lats:
                assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
                lo, hi = lat["ci"]["p50"]
                assert lo <= lat["p50"] <= hi
        for n in NAMES:
            rec = by[n]["targets"][t]
            assert set(rec["throughput"]) == {"1", "8"}
            assert all(x["sentences_per_s"] > 0 and x["batches"] >= 1 for x in rec["throughput"].values())
            assert rec["load_s"] > 0
            assert set(rec["speedup"]["real"]) == {b for b in BASELINES if b != n}
            for sp in rec["speedup"]["real"].values():
                assert sp["ci"][0] <= sp["ratio"] <= sp["ci"][1]
    # The top-level figures are the primary target's (mobile, when measured) real-length ones.
    assert by["int8"]["latency_ms"] == by["int8"]["targets"]["mobile"]["latency_ms"]["real"]
    assert results["settings"]["lengths"]["16"]["seq_len_mean"] == 16
    assert results["settings"]["primary_target"] == "mobile" and results["environment"]["threads"] == 2


def test_each_target_ran_under_its_limits(results):
    env = results["environment"]
    assert env["emulation"].startswith("Targets emulate")
    assert env["cpu"]["model"] and "avx2" in env["cpu"]["isa"]
    cpus = allowed_cpus()
    for name, threads in (("iot", 1), ("mobile", 2)):
        t = env["targets"][name]
        assert t["threads"] == threads and t["intra_op_spinning"] is False
        # Read back inside the worker process, not echoed from its instructions.
        p = t["process"]
        assert p["affinity"] == cpus[:threads]
        assert p["ort_intra_op_threads"] == threads and p["ort_allow_spinning"] == "0"
    assert env["targets"]["iot"]["memory_limit_bytes"] == 512 * 2**20


def test_memory_per_target_within_the_caps(results):
    by = {v["name"]: v for v in results["variants"]}
    for n in NAMES:
        for t in ("iot", "mobile"):
            m = by[n]["targets"][t]["memory"]
            assert m["fits_memory_limit"] is True
            assert m["peak_rss_bytes"] > m["baseline_rss_bytes"] > 10 * 2**20
        assert by[n]["peak_rss_bytes"] == by[n]["targets"]["mobile"]["memory"]["peak_rss_bytes"]


def test_accuracy_agreement_and_ort_format(results):
    by = {v["name"]: v for v in results["variants"]}
    assert by["teacher-onnx"]["agreement_with_teacher"] == 1.0
    for n in NAMES:
        assert by[n]["agreement_with_teacher"] >= 0.9 and by[n]["agreement_with_teacher_test"] >= 0.9
    assert by["int8"]["size_bytes"] < by["teacher-onnx"]["size_bytes"]
    # Only the deployable variant is converted; the .ort file gives the ONNX model's predictions.
    assert [n for n in NAMES if "ort" in by[n]] == ["int8"]
    ort = by["int8"]["ort"]
    assert ort["agreement_with_onnx"] == 1.0 and ort["agreement_with_onnx_test"] == 1.0
    assert ort["accuracy"] == by["int8"]["accuracy"]
    usable = ort["mobile_usability"]
    nnapi = usable["eps"]["NNAPI"]["as_is"]
    assert {"ai.onnx:DynamicQuantizeLinear", "ai.onnx:MatMulInteger"} <= set(nnapi["unsupported_ops"])
    assert "NNAPI" in usable["verdict"] and usable["dynamic_inputs"]


def test_fixed_length_requests_have_exactly_that_length(tiny_onnx_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_onnx_dir)
    reqs = fixed_length_requests(tok, ["good", "the movie was very good and lovely", ""], 64)
    assert [r["input_ids"].shape for r in reqs] == [(1, 64)] * 2  # the empty text has nothing to repeat
    assert all(r["attention_mask"].all() for r in reqs)


def test_throughput_batches_keep_their_size(tiny_onnx_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_onnx_dir)
    texts = ["good", "the movie was very good and lovely", "bad", "it was dull", "great"]
    batches = throughput_batches(tok, texts, 2, 32)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2]  # the short last batch is dropped
    assert batches[0]["input_ids"].shape[1] == max(len(tok(t)["input_ids"]) for t in texts[:2])
    assert [b["input_ids"].shape[0] for b in throughput_batches(tok, texts, 8, 32)] == [5]


def test_variants_are_measured_after_their_parents_with_the_reference_first():
    from pathlib import Path

    from compress.tasks.causal_lm.suite import LMVariant, parents_first

    def v(name, parent):
        return LMVariant(name, "x", "onnxruntime", parent, Path("."), Path("."), 1, 1)

    given = [v("int4", "student"), v("teacher", None), v("student", "teacher-onnx"), v("teacher-onnx", "teacher"),
             v("int4-genai", "int4"), v("anchor", "teacher"), v("orphan", "not-measured")]  # fmt: skip
    order = [x.name for x in parents_first(given, "teacher")]
    assert order[0] == "teacher" and sorted(order) == sorted(x.name for x in given)
    for x in given:
        if x.parent in order:
            assert order.index(x.parent) < order.index(x.name), x.name

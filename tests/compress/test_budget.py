"""Accuracy budget: the most sensitive nodes stay float32 until int8 fits; no fit raises; the AVX2 choice."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from transformers import AutoTokenizer

import compress.hardware
from compress.calibration import calibration_feeds, model_input_names
from compress.int8 import Int8Spec, preprocess, quantize_model
from compress.sensitivity import (
    AccuracyBudgetError,
    choose_int8_variant,
    group_nodes,
    quantizable_nodes,
    quantize_within_budget,
    sqnr_db,
)
from export.runtime import OrtClassifier, batched_logits
from tests.conftest import make_corpus

WORD_EMBEDDINGS = "/bert/embeddings/word_embeddings/Gather"


def _eval_set():
    corpus = make_corpus()
    rows = corpus["dev"] + corpus["test"]
    return [t for t, _ in rows], np.array([int(y) for _, y in rows])


@pytest.fixture(scope="module")
def tokenizer(tiny_onnx_dir):
    return AutoTokenizer.from_pretrained(tiny_onnx_dir, local_files_only=True)


@pytest.fixture(scope="module")
def feeds(tiny_onnx_dir, tokenizer):
    texts = [t for t, _ in make_corpus()["train"]][:16]
    return calibration_feeds(tokenizer, texts, 64, model_input_names(tiny_onnx_dir / "model.onnx"))


@pytest.fixture(scope="module")
def accuracy(tokenizer):
    texts, labels = _eval_set()

    def evaluate(path) -> float:
        return float((batched_logits(OrtClassifier(path), tokenizer, texts, 64).argmax(-1) == labels).mean())

    return evaluate


@pytest.fixture(scope="module")
def fragile_fp32(tmp_path_factory, tiny_onnx_dir, tokenizer):
    """The tiny model with one word-embedding row ([MASK], never looked up) set to 200.

    The float32 model computes exactly what it did: no sentence holds [MASK]. But one scale per tensor now spans
    +-200 where the real embeddings are below 0.11, so int8 rounds every real embedding to about zero: the
    word-embedding Gather is the one node int8 cannot have, on any CPU.
    """
    model = onnx.load(str(tiny_onnx_dir / "model.onnx"))
    for t in model.graph.initializer:
        if t.name.endswith("word_embeddings.weight"):
            table = numpy_helper.to_array(t).copy()
            assert np.abs(table).max() < 1
            table[tokenizer.mask_token_id] = 200.0
            t.CopyFrom(numpy_helper.from_array(table, t.name))
    path = tmp_path_factory.mktemp("fragile") / "model.onnx"
    onnx.save(model, str(path))
    return path


def test_sqnr_db():
    ref = np.array([3.0, -4.0])
    assert sqnr_db(ref, ref) == math.inf
    assert sqnr_db(ref, ref * 1.1) == pytest.approx(20.0)  # noise power 1% of the signal's


def test_group_nodes_by_encoder_block():
    nodes = [
        "/bert/embeddings/word_embeddings/Gather",
        "/bert/encoder/layer.0/attention/self/query/MatMul",
        "/bert/encoder/layer.0/output/dense/MatMul",
        "/bert/encoder/layer.11/intermediate/dense/MatMul",
        "/classifier/Gemm_MatMul",
    ]
    assert group_nodes(nodes, "node") == {n: (n,) for n in nodes}
    assert group_nodes(nodes, "block") == {
        nodes[0]: (nodes[0],),
        "layer.0": (nodes[1], nodes[2]),
        "layer.11": (nodes[3],),
        nodes[4]: (nodes[4],),
    }
    with pytest.raises(ValueError, match="granularity"):
        group_nodes(nodes, "layer")


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_excluding_every_quantizable_node_leaves_no_int8_compute(tmp_path, tiny_onnx_dir, feeds, method):
    # The listed names are the ones the quantizer matches (dynamic renames each Gemm to <name>_MatMul first).
    pre = preprocess(tiny_onnx_dir / "model.onnx", tmp_path / "pre.onnx")
    spec = Int8Spec(method, reduce_range=True)
    nodes = quantizable_nodes(pre, spec)
    ops = Counter(n.op_type for n in onnx.load(str(pre)).graph.node)
    # Dynamic: the 6 weight MatMuls of each of 4 layers, pooler and classifier, 3 embeddings. Static QDQ adds the
    # 2 activation x activation MatMuls of each attention.
    assert len(nodes) == {"dynamic": 4 * 6 + 2 + 3, "static": 4 * 8 + 2 + 3}[method]
    assert ops["Gemm"] == 2 and ops["Gather"] >= 3
    metrics = quantize_model(
        pre, tmp_path / "none.onnx", Int8Spec(method, nodes_to_exclude=nodes), feeds, preprocessed=True
    )
    assert metrics["int8_initializers"] == 0
    assert not set(metrics["int8_ops"]) & {"MatMulInteger", "DequantizeLinear"}


def test_budget_keeps_the_sensitive_node_in_float32(tmp_path, fragile_fp32, feeds, accuracy):
    assert accuracy(fragile_fp32) == 1.0
    full = quantize_model(fragile_fp32, tmp_path / "full.onnx", Int8Spec(), feeds)
    assert accuracy(tmp_path / "full.onnx") <= 0.6  # everything int8: the embeddings collapse, labels are chance

    out = tmp_path / "int8" / "model.onnx"
    result = quantize_within_budget(fragile_fp32, out, Int8Spec(), accuracy, 0.01, feeds)
    assert result.excluded_nodes == (WORD_EMBEDDINGS,)
    assert result.accuracy == 1.0 and result.fp32_accuracy == 1.0
    assert result.sensitivity[0][0] == WORD_EMBEDDINGS and result.sensitivity[0][1] < 0  # more noise than signal
    assert all(s > 30 for _, s in result.sensitivity[1:])
    assert [t["fits"] for t in result.trials] == [False, True]
    # Everything else is still int8: the same integer MatMuls as the full model, one float table more.
    graph = onnx.load(str(out)).graph
    assert result.metrics["int8_ops"]["MatMulInteger"] == full["int8_ops"]["MatMulInteger"] == 26
    assert result.metrics["int8_initializers"] == full["int8_initializers"] - 2  # its data and zero point
    words = [t for t in graph.initializer if t.name.endswith("word_embeddings.weight")]
    assert len(words) == 1 and words[0].data_type == onnx.TensorProto.FLOAT
    assert result.size_bytes == out.stat().st_size < result.fp32_size_bytes
    assert accuracy(out) == result.accuracy
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]  # no temporaries left
    assert result.to_dict()["excluded_nodes"] == [WORD_EMBEDDINGS]


def test_budget_search_by_encoder_block_for_static_int8(tmp_path, fragile_fp32, feeds, accuracy):
    out = tmp_path / "model.onnx"
    spec = Int8Spec("static", reduce_range=True)
    result = quantize_within_budget(fragile_fp32, out, spec, accuracy, 0.01, feeds, granularity="block")
    assert result.excluded_nodes == (WORD_EMBEDDINGS,)
    assert {u for u, _ in result.sensitivity} >= {f"layer.{i}" for i in range(4)}
    assert result.accuracy == 1.0 and result.metrics["int8_ops"]["QuantizeLinear"] > 0


def test_a_loose_budget_quantizes_everything_without_ranking(tmp_path, tiny_onnx_dir, feeds, accuracy):
    result = quantize_within_budget(tiny_onnx_dir / "model.onnx", tmp_path / "m.onnx", Int8Spec(), accuracy, 0.0, feeds)
    assert result.excluded_nodes == () and result.sensitivity == ()
    assert len(result.trials) == 1 and result.accuracy == 1.0


def test_search_finds_the_fewest_float32_nodes(tmp_path, tiny_onnx_dir, feeds):
    # A metric that counts float32 weight MatMuls: 24 in float32 (pooler and classifier are Gemm), 0 in full
    # int8, k when k of the 26 quantizable ones stay float32. A budget of 18.5 needs k = 6, found by doubling
    # (1, 2, 4 fail; 8 fits) and bisecting (6 fits, 5 fails).
    def float_matmuls(path) -> float:
        graph = onnx.load(str(path)).graph
        inits = {t.name for t in graph.initializer}
        return float(sum(n.op_type == "MatMul" and n.input[1] in inits for n in graph.node))

    spec = Int8Spec(op_types=("MatMul",), reduce_range=True)
    result = quantize_within_budget(tiny_onnx_dir / "model.onnx", tmp_path / "m.onnx", spec, float_matmuls, 18.5, feeds)
    assert result.fp32_accuracy == 24
    assert len(result.excluded_nodes) == 6
    assert [len(t["float32_units"]) for t in result.trials] == [0, 1, 2, 4, 8, 6, 5]
    assert result.metrics["int8_ops"]["MatMulInteger"] == 26 - 6
    # The six kept in float32 are the six that hurt the logits most when quantized alone.
    assert set(result.excluded_nodes) == {u for u, _ in result.sensitivity[:6]}
    assert [s for _, s in result.sensitivity] == sorted(s for _, s in result.sensitivity)


def test_no_int8_model_within_the_budget_raises_and_writes_nothing(tmp_path, tiny_onnx_dir, feeds):
    fp32 = tiny_onnx_dir / "model.onnx"
    out_dir = tmp_path / "out"
    seen = []

    def only_float32_passes(path) -> float:  # any int8 model "loses" 10 points
        seen.append(path)
        return 1.0 if path == fp32 else 0.9

    spec = Int8Spec(op_types=("MatMul",), reduce_range=True)
    with pytest.raises(AccuracyBudgetError, match=r"within max_accuracy_drop 0.05.*Keep the float32 model"):
        quantize_within_budget(
            fp32, out_dir / "model.onnx", spec, only_float32_passes, 0.05, feeds, granularity="block"
        )
    assert list(out_dir.iterdir()) == []
    # Tried: all int8, then 1, 2, 4, then all but one of the 6 units (4 blocks, pooler, classifier) in float32.
    assert len(seen) == 1 + 5


def test_a_negative_budget_is_rejected(tmp_path, tiny_onnx_dir, feeds, accuracy):
    with pytest.raises(ValueError, match="max_accuracy_drop=-0.1"):
        quantize_within_budget(tiny_onnx_dir / "model.onnx", tmp_path / "m.onnx", Int8Spec(), accuracy, -0.1, feeds)


def test_choose_int8_variant_for_this_cpu(tmp_path, tiny_onnx_dir, tokenizer):
    texts, _ = _eval_set()
    ref = batched_logits(OrtClassifier(tiny_onnx_dir / "model.onnx"), tokenizer, texts, 64)

    def fidelity(path) -> float:
        return sqnr_db(ref, batched_logits(OrtClassifier(path), tokenizer, texts, 64))

    latency_feeds = calibration_feeds(tokenizer, texts[:4], 64, ["input_ids", "attention_mask", "token_type_ids"])
    result = choose_int8_variant(
        tiny_onnx_dir / "model.onnx", tmp_path, fidelity, latency_feeds=latency_feeds, latency_warmup=1
    )
    table = {r["name"]: r for r in result["table"]}
    assert set(table) == {"dynamic-u8s8", "dynamic-u8s8-rr", "dynamic-u8u8", "dynamic-u8u8-rr"}
    # Each of the 4 requests is timed in each of the 5 interleaved passes.
    assert all(r["int8_ops"]["MatMulInteger"] == 26 and r["latency_ms"]["n"] == 4 * 5 for r in table.values())
    assert result["chosen"] == max(table, key=lambda n: table[n]["score"])
    assert result["chosen_spec"].name == result["chosen"]
    assert all((tmp_path / f"{n}.onnx").is_file() for n in table)
    assert all(r["score"] > 30 for n, r in table.items() if n != "dynamic-u8s8")
    info = compress.hardware.cpu_info()
    if info["machine"] == "x86_64" and info["isa"]["avx2"] and not compress.hardware.has_vnni():
        # VPMADDUBSW saturation: measured 17 dB with 8-bit u8s8 weights against 58 dB with 7-bit ones, and
        # 60 dB for u8u8, whose kernel does not saturate.
        assert table["dynamic-u8s8"]["score"] < 30 < table["dynamic-u8s8-rr"]["score"]
        assert result["chosen"] != "dynamic-u8s8"

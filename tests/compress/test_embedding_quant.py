"""4-bit token embeddings (GatherBlockQuantized packed in uint8): rounding, the rewritten graph, ONNX Runtime's
outputs against float32, the .ort conversion, and the classifier quantize stage that uses them."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from transformers import AutoTokenizer

from compress.embedding_quant import dequantize_blocks, quantize_blocks, quantize_token_embedding
from compress.tasks.classification.config import QuantizeConfig
from compress.tasks.classification.quantize import quantize
from export.runtime import OrtClassifier, batched_logits


def test_block_rounding_error_is_at_most_half_a_step():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 64)).astype(np.float32) * rng.uniform(0.01, 3, (50, 1)).astype(np.float32)
    table[3] = 0.0  # a padding row stays exactly zero
    q, scale, zp = quantize_blocks(table, 32)
    assert q.dtype == np.uint8 and q.max() <= 15 and zp.max() <= 15
    assert scale.shape == zp.shape == (50, 2)
    err = np.abs(dequantize_blocks(q, scale, zp) - table).reshape(50, 2, 32).max(-1)
    assert (err <= scale / 2 + 1e-6).all()
    assert (dequantize_blocks(q, scale, zp)[3] == 0).all()
    with pytest.raises(ValueError, match="multiple of block_size"):
        quantize_blocks(table[:, :48], 32)


@pytest.fixture(scope="module")
def int4_embedding(tmp_path_factory, tiny_onnx_dir):
    out = tmp_path_factory.mktemp("emb4") / "model.onnx"
    record = quantize_token_embedding(tiny_onnx_dir / "model.onnx", out, block_size=16)
    return out, record


def test_the_token_table_becomes_packed_4_bit_blocks(int4_embedding, tiny_onnx_dir):
    out, record = int4_embedding
    model = onnx.load(str(out))
    nodes = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    assert len(nodes) == 1 and nodes[0].domain == "com.microsoft"
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    data = inits[nodes[0].input[0]]
    vocab, hidden = record["shape"]
    assert data.dtype == np.uint8 and data.shape == (vocab, hidden // 2)  # two codes per byte
    assert inits[nodes[0].input[2]].shape == (vocab, hidden // 16)
    assert record["table"] not in inits  # the float table is gone
    assert record["bytes_after"] < record["bytes_before"] / 5
    assert out.stat().st_size < (tiny_onnx_dir / "model.onnx").stat().st_size


def test_int4_embedding_outputs_stay_close_and_convert_to_ort(int4_embedding, tiny_onnx_dir, tiny_corpus, tmp_path):
    from export.mobile import convert_to_ort

    out, _ = int4_embedding
    tokenizer = AutoTokenizer.from_pretrained(tiny_onnx_dir, local_files_only=True)
    texts = [t for split in ("dev", "test") for t, _ in tiny_corpus[split]]
    ref = batched_logits(OrtClassifier(tiny_onnx_dir / "model.onnx"), tokenizer, texts, 32)
    got = batched_logits(OrtClassifier(out), tokenizer, texts, 32)
    cosine = float((ref * got).sum() / (np.linalg.norm(ref) * np.linalg.norm(got)))
    assert cosine > 0.999
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= 0.95
    # The reason for the packed form: ONNX Runtime's INT4 tensors do not convert to .ort; this does, and runs.
    conv = convert_to_ort(out, tmp_path / "ort")
    got_ort = batched_logits(OrtClassifier(conv["ort_path"]), tokenizer, texts, 32)
    np.testing.assert_allclose(got_ort, got, atol=1e-4)


def test_a_graph_without_a_float_embedding_gather_is_refused(tmp_path, tiny_onnx_dir):
    first = tmp_path / "a.onnx"
    quantize_token_embedding(tiny_onnx_dir / "model.onnx", first)
    with pytest.raises(ValueError, match="no Gather of a 2-D float32 embedding table"):
        quantize_token_embedding(first, tmp_path / "b.onnx")  # already rewritten: no float table left
    assert not (tmp_path / "b.onnx").exists()


def test_quantize_stage_int4_embedding_with_measured_per_channel(tmp_path, tiny_onnx_dir, tiny_corpus):
    from compress.calibration import calibration_feeds, model_input_names
    from export.runtime import accuracy_evaluator

    tokenizer = AutoTokenizer.from_pretrained(tiny_onnx_dir, local_files_only=True)
    texts = [t for t, _ in tiny_corpus["dev"]]
    labels = [int(y) for _, y in tiny_corpus["dev"]]
    config = QuantizeConfig(select="measure", per_channel="measure", embeddings="int4", embedding_block_size=16)
    feeds = calibration_feeds(tokenizer, texts[:8], 32, model_input_names(tiny_onnx_dir / "model.onnx"))
    summary = quantize(
        tiny_onnx_dir,
        tmp_path / "q",
        config,
        evaluate=accuracy_evaluator(tokenizer, texts, labels, 32),
        latency_feeds=feeds,
    )
    names = [c["name"] for c in summary["selection"]["candidates"]]
    assert len(names) == 8 and sum(n.endswith("-pc") for n in names) == 4  # each setting with and without
    assert all("latency_ms" in c for c in summary["selection"]["candidates"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q" / "model.onnx")).graph.node}
    assert {"GatherBlockQuantized", "MatMulInteger"} <= ops
    assert summary["embedding"]["block_size"] == 16


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"per_channel": "measure"}, "needs quantize.select 'measure'"),
        ({"embeddings": "int4", "fuse": True}, "choose one"),
        ({"embeddings": "int4", "embedding_block_size": 48}, "power of two"),
    ],
)
def test_inconsistent_quantize_keys_are_refused(keys, message):
    with pytest.raises(ValueError, match=message):
        QuantizeConfig(**keys)


def test_int4_nodes_become_matmulnbits_and_the_rest_int8(tmp_path, tiny_onnx_dir, tiny_corpus):
    pattern = "/bert/encoder/layer.?/output/dense/MatMul"  # `*` would also match attention/output/dense
    summary = quantize(tiny_onnx_dir, tmp_path / "q", QuantizeConfig(int4_nodes=[pattern]))
    graph = onnx.load(str(tmp_path / "q" / "model.onnx")).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    layers = json.loads((tiny_onnx_dir / "config.json").read_text())["num_hidden_layers"]
    assert len(nbits) == len(summary["int4_nodes"]["nodes"]) == layers  # one FFN output per layer, nothing else
    assert all(a.i == 4 for n in nbits for a in n.attribute if a.name in ("bits", "accuracy_level"))
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) > 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_onnx_dir, local_files_only=True)
    texts = [t for t, _ in tiny_corpus["dev"]]
    ref = batched_logits(OrtClassifier(tiny_onnx_dir / "model.onnx"), tokenizer, texts, 32)
    got = batched_logits(OrtClassifier(tmp_path / "q" / "model.onnx"), tokenizer, texts, 32)
    assert float((ref * got).sum() / (np.linalg.norm(ref) * np.linalg.norm(got))) > 0.999
    with pytest.raises(ValueError, match="match no weight MatMul"):
        quantize(tiny_onnx_dir, tmp_path / "bad", QuantizeConfig(int4_nodes=["*/no_such_layer/*"]))

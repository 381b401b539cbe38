"""Graph fusion and fp16: fused operators in the graph, outputs equal to the unfused model's, pruned heads kept."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime.transformers.optimizer
import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from compress.tasks.classification.config import ExportConfig
from compress.tasks.classification.export import export_onnx
from export.optimize import OptimizeCheckError, attention_shape, optimize_onnx, to_fp16
from export.runtime import OrtClassifier
from tests.conftest import make_corpus

TEXTS = [
    "it was good",
    "the movie was very good and lovely",
    "this film seemed quite dull and awful and the plot is so boring",
    "the acting felt truly excellent and superb",
    "the story is bad",
    "it seemed really poor and dreadful",
    "the music was so wonderful and brilliant and the story is good",
]


def _check_texts() -> list[str]:
    corpus = make_corpus()
    return [t for split in ("dev", "test") for t, _ in corpus[split]]


def _batches(tokenizer):
    """One sentence alone, a padded batch, and the same batch padded to 40 tokens (mostly padding)."""
    yield dict(tokenizer(TEXTS[:1], return_tensors="np"))
    yield dict(tokenizer(TEXTS, padding="longest", return_tensors="np"))
    yield dict(tokenizer(TEXTS, padding="max_length", max_length=40, return_tensors="np"))


def _max_diff(ref_path, got_path, tokenizer) -> float:
    ref, got = OrtClassifier(ref_path), OrtClassifier(got_path)
    return max(float(np.abs(ref(b) - got(b)).max()) for b in _batches(tokenizer))


@pytest.fixture(scope="module")
def fused(tmp_path_factory, tiny_onnx_dir):
    """The tiny exported model fused, run from an empty working directory."""
    out = tmp_path_factory.mktemp("fused")
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        metrics = optimize_onnx(tiny_onnx_dir, out, _check_texts(), max_length=64)
    return out, metrics, cwd


def test_fused_graph_holds_one_fused_op_per_layer(fused):
    out, metrics, _ = fused
    ops = Counter(n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node)
    layers = 4
    assert metrics["fused_ops"] == {
        "EmbedLayerNormalization": 1,
        "Attention": layers,
        "SkipLayerNormalization": 2 * layers,
        "BiasGelu": layers,
    }
    assert {op: ops[op] for op in metrics["fused_ops"]} == metrics["fused_ops"]
    assert metrics["fully_fused"]
    assert metrics["attention_heads"] == [2] * layers
    # What the fusions replace is gone: no Softmax, Erf or LayerNormalization, and 6 -> 3 MatMuls per layer.
    assert ops["Softmax"] == ops["Erf"] == ops["LayerNormalization"] == 0
    assert ops["MatMul"] == 3 * layers
    assert metrics["size_bytes"] < metrics["source_size_bytes"]


def test_fused_outputs_match_the_unfused_model_on_padded_batches(fused, tiny_onnx_dir):
    out, metrics, _ = fused
    assert metrics["check_examples"] == 64
    assert metrics["max_abs_logit_diff"] < 1e-4
    assert metrics["label_agreement"] == 1.0
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    # Fused Attention reads the mask from EmbedLayerNormalization: padding must still be ignored.
    assert _max_diff(tiny_onnx_dir / "model.onnx", out / "model.onnx", tokenizer) < 1e-4


def test_side_files_are_copied_and_nothing_lands_in_the_working_directory(fused, tiny_onnx_dir):
    out, _, cwd = fused
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in tiny_onnx_dir.iterdir())
    assert (out / "config.json").read_bytes() == (tiny_onnx_dir / "config.json").read_bytes()
    assert list(cwd.iterdir()) == []


def test_pruned_heads_are_detected_per_layer(tmp_path, trained_classifier_dir):
    model = AutoModelForSequenceClassification.from_pretrained(trained_classifier_dir)
    model.prune_heads({0: [0], 2: [1]})  # 2 heads per layer -> 1, 2, 1, 2
    hf = tmp_path / "hf"
    model.save_pretrained(hf)
    AutoTokenizer.from_pretrained(trained_classifier_dir).save_pretrained(hf)
    texts = _check_texts()
    export_onnx(hf, tmp_path / "onnx", ExportConfig(check_examples=32), texts, max_length=64)
    metrics = optimize_onnx(tmp_path / "onnx", tmp_path / "fused", texts, max_length=64)
    assert metrics["num_heads_given"] == 0  # auto-detection: no one head count is right
    assert metrics["attention_heads"] == [1, 2, 1, 2]
    assert metrics["fused_ops"]["Attention"] == 4
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "fused", local_files_only=True)
    assert _max_diff(tmp_path / "onnx" / "model.onnx", tmp_path / "fused" / "model.onnx", tokenizer) < 1e-4


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"num_attention_heads": 12, "hidden_size": 384}, (12, 384)),
        ({"num_attention_heads": 12, "hidden_size": 384, "pruned_heads": {}}, (12, 384)),
        ({"num_attention_heads": 12, "hidden_size": 384, "pruned_heads": {"0": [1, 3]}}, (0, 0)),
        ({"n_heads": 12, "dim": 768}, (12, 768)),  # DistilBERT's keys
        ({}, (0, 0)),
    ],
)
def test_attention_shape_from_config(config, expected):
    assert attention_shape(config) == expected


def test_a_fusion_that_changes_the_outputs_fails_the_check(tmp_path, tiny_onnx_dir, monkeypatch):
    original = onnxruntime.transformers.optimizer.optimize_model

    def broken(*args, **kwargs):
        optimizer = original(*args, **kwargs)
        for t in optimizer.model.graph.initializer:
            if t.name.endswith("classifier.bias"):
                t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) + 0.5, t.name))
        return optimizer

    monkeypatch.setattr(onnxruntime.transformers.optimizer, "optimize_model", broken)
    with pytest.raises(OptimizeCheckError, match="max \\|logit diff\\| 5.00e-01"):
        optimize_onnx(tiny_onnx_dir, tmp_path / "fused", _check_texts(), max_length=64)


@pytest.mark.parametrize("source", ["exported", "fused"])
def test_fp16_loads_and_matches_float32(tmp_path, tiny_onnx_dir, fused, source):
    src = tiny_onnx_dir if source == "exported" else fused[0]
    metrics = to_fp16(src, tmp_path / "fp16", _check_texts(), max_length=64)
    model = onnx.load(str(tmp_path / "fp16" / "model.onnx"))
    # Weights are float16; the inputs (int64 ids) and the logits (float32) are as before, so callers do not change.
    assert metrics["fp16_initializers"] > 0
    assert not [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and t.dims]
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert metrics["max_abs_logit_diff"] < 1e-2
    assert metrics["label_agreement"] == 1.0
    assert metrics["size_bytes"] < metrics["source_size_bytes"]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "fp16", local_files_only=True)
    assert _max_diff(src / "model.onnx", tmp_path / "fp16" / "model.onnx", tokenizer) < 1e-2
    assert json.loads((tmp_path / "fp16" / "config.json").read_text()) == json.loads((src / "config.json").read_text())

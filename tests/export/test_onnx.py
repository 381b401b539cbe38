"""ONNX export: ONNX Runtime matches PyTorch on dynamic shapes, ships tokenizer and labels, checks itself."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import compress.tasks.classification.export
from compress.tasks.classification.config import ExportConfig
from compress.tasks.classification.export import ExportCheckError, export_onnx
from export.runtime import OrtClassifier

TEXTS = [
    "it was good",
    "the movie was very good and lovely",
    "this film seemed quite dull and awful and the plot is so boring",
    "the acting felt truly excellent and superb",
    "the story is bad",
    "it seemed really poor and dreadful",
    "the music was so wonderful and brilliant and the story is good",
]


def _batches(tokenizer):
    """Batches of 1, 3 and 7 sentences: padded to their longest member, and one padded to 40 tokens."""
    for texts, padding in (
        (TEXTS[:1], "longest"),
        (TEXTS[1:4], "longest"),
        (TEXTS, "longest"),
        (TEXTS, "max_length"),
    ):
        yield dict(tokenizer(texts, padding=padding, max_length=40, return_tensors="np"))


def test_ort_matches_torch_on_batches_of_any_size_and_length(tiny_onnx_dir, trained_classifier_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_onnx_dir, local_files_only=True)
    torch_model = AutoModelForSequenceClassification.from_pretrained(trained_classifier_dir).eval()
    ort_model = OrtClassifier(tiny_onnx_dir / "model.onnx")
    shapes = set()
    for batch in _batches(tokenizer):
        shapes.add(batch["input_ids"].shape)
        with torch.no_grad():
            want = torch_model(**{k: torch.as_tensor(v) for k, v in batch.items()}).logits.numpy()
        got = ort_model(batch)
        assert got.shape == want.shape
        assert np.abs(got - want).max() < 1e-4, batch["input_ids"].shape
    assert len(shapes) == 4 and {s[1] for s in shapes} >= {40}
    # The margins are real (the model was trained), so this is not agreement on near-zero noise.
    assert np.abs(want[:, 1] - want[:, 0]).min() > 0.5


def test_graph_inputs_have_symbolic_batch_and_sequence_axes(tiny_onnx_dir):
    graph = onnx.load(str(tiny_onnx_dir / "model.onnx")).graph
    inputs = {i.name: i.type.tensor_type.shape.dim for i in graph.input}
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    for name, dims in inputs.items():
        assert len(dims) == 2 and all(d.dim_param and not d.dim_value for d in dims), name
    assert [o.name for o in graph.output] == ["logits"]


def test_tokenizer_ships_beside_the_model(tiny_onnx_dir, trained_classifier_dir):
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        assert (tiny_onnx_dir / name).is_file(), name
    shipped = AutoTokenizer.from_pretrained(tiny_onnx_dir, local_files_only=True)
    source = AutoTokenizer.from_pretrained(trained_classifier_dir, local_files_only=True)
    assert shipped(TEXTS)["input_ids"] == source(TEXTS)["input_ids"]
    assert shipped.unk_token_id not in [i for ids in shipped(TEXTS)["input_ids"] for i in ids]


def test_label_names_ship_in_config_json(tiny_classifier_dir, tmp_path, tiny_corpus):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir)
    model.config.id2label, model.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    src = tmp_path / "src"
    model.save_pretrained(src)
    AutoTokenizer.from_pretrained(tiny_classifier_dir).save_pretrained(src)
    out = tmp_path / "onnx"
    texts = [t for t, _ in tiny_corpus["dev"]]
    metrics = export_onnx(src, out, ExportConfig(check_examples=8), texts, max_length=32)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    assert config["label2id"] == {"neg": 0, "pos": 1}
    assert metrics["check_examples"] == 8


def test_export_reports_its_check(tmp_path, trained_classifier_dir, tiny_corpus):
    texts = [t for t, _ in tiny_corpus["dev"]]
    metrics = export_onnx(trained_classifier_dir, tmp_path, ExportConfig(check_examples=20), texts, max_length=32)
    assert metrics["check_examples"] == 20
    assert 0 <= metrics["max_abs_logit_diff"] < 1e-4
    assert metrics["label_agreement"] == 1.0


class _Perturbed(OrtClassifier):
    shift = 0.0
    swap = False

    def __call__(self, batch):
        logits = super().__call__(batch) + self.shift
        return logits[:, ::-1] if self.swap else logits


@pytest.mark.parametrize(
    ("shift", "swap", "config", "named"),
    [
        (0.01, False, ExportConfig(atol=1e-3), "export.atol 0.001"),  # logits off, labels the same
        (0.0, True, ExportConfig(atol=100.0), "label agreement 0.0000"),  # within atol, labels flipped
    ],
    ids=["logits-off", "labels-flipped"],
)
def test_failed_check_raises(tmp_path, monkeypatch, trained_classifier_dir, tiny_corpus, shift, swap, config, named):
    monkeypatch.setattr(_Perturbed, "shift", shift)
    monkeypatch.setattr(_Perturbed, "swap", swap)
    monkeypatch.setattr(compress.tasks.classification.export, "OrtClassifier", _Perturbed)
    texts = [t for t, _ in tiny_corpus["dev"]]
    with pytest.raises(ExportCheckError) as e:
        export_onnx(trained_classifier_dir, tmp_path, config, texts, max_length=32)
    assert named in str(e.value)
    assert str(trained_classifier_dir) in str(e.value)

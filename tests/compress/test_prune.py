"""Prune stage: global magnitude pruning to the target sparsity, masks held through the fine-tune."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from compress.data import load_task_data
from compress.modeling import load_classifier
from compress.prune import prunable_linears, prune
from compress.recipe import DataConfig, PruneConfig


@pytest.fixture
def setup(tiny_classifier_dir, tiny_data_dir):
    model, tokenizer = load_classifier(tiny_classifier_dir)
    data = load_task_data(DataConfig(train=tiny_data_dir / "train.tsv", dev=tiny_data_dir / "dev.tsv"))
    teacher_logits = np.random.default_rng(0).normal(size=(len(data.train.labels), 2)).astype(np.float32) * 3
    return model.eval(), tokenizer, teacher_logits, data


def _run(setup, tmp_path, **config):
    model, tokenizer, teacher_logits, data = setup
    cfg = PruneConfig(batch_size=8, **config)
    return prune(model, tokenizer, teacher_logits, cfg, data, seed=0, max_length=32, work_dir=tmp_path / "work")


def _encoder_weights(model) -> dict[str, torch.Tensor]:
    # Independent of prunable_linears: every Linear inside the encoder's layers.
    return {n: m.weight.detach().clone() for n, m in model.bert.encoder.named_modules() if isinstance(m, nn.Linear)}


def _expected_zero_masks(model, sparsity: float) -> dict[str, torch.Tensor]:
    """The global L1 selection: the round(s * N) smallest |w| over all encoder Linear weights."""
    weights = _encoder_weights(model)
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    k = round(sparsity * flat.numel())
    threshold = flat.kthvalue(k).values
    return {n: w.abs() <= threshold for n, w in weights.items()}


@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_measured_sparsity_equals_target_and_zeros_are_the_smallest_weights(setup, tmp_path, sparsity):
    res = _run(setup, tmp_path, sparsity=sparsity, epochs=0)
    weights = _encoder_weights(res.model)
    n = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros == round(sparsity * n)  # exact up to rounding the count
    expected = _expected_zero_masks(setup[0], sparsity)
    for name, w in weights.items():
        assert torch.equal(w == 0, expected[name]), name
    # Embeddings, pooler and classifier are left as they were (the [PAD] embedding row is zero already).
    for part in ("bert.embeddings.word_embeddings", "bert.pooler.dense", "classifier"):
        assert torch.equal(res.model.get_submodule(part).weight, setup[0].get_submodule(part).weight), part
    assert res.metrics["sparsity_prunable"] == pytest.approx(zeros / n, abs=1e-12)
    assert res.metrics["target_sparsity"] == sparsity
    assert res.metrics["layers"] == 4
    assert len(prunable_linears(res.model)) == len(weights) == 4 * 6


def test_fine_tune_holds_the_masks_and_leaves_a_plain_model(setup, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    model = setup[0]
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    res = _run(setup, tmp_path, sparsity=0.5, epochs=1, learning_rate=1e-3)
    pruned = res.model

    # The fine-tune moved the surviving weights but no pruned weight came back.
    expected = _expected_zero_masks(model, 0.5)
    for name, w in _encoder_weights(pruned).items():
        assert torch.equal(w == 0, expected[name]), name
        original = before[f"bert.encoder.{name}.weight"]
        assert not torch.equal(w[~expected[name]], original[~expected[name]]), name

    # The input model is untouched: same tensors, no masks, no hooks.
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(not m._forward_pre_hooks for m in model.modules())

    # The masks were made permanent: plain `weight` parameters only.
    keys = list(pruned.state_dict())
    assert not [k for k in keys if k.endswith(("weight_orig", "weight_mask"))]
    assert all(not m._forward_pre_hooks for m in pruned.modules())
    assert all(isinstance(m.weight, nn.Parameter) for _, m in prunable_linears(pruned))
    assert list(cwd.iterdir()) == []  # the Trainer wrote only under work_dir


def test_pruned_model_saves_and_reloads_with_the_same_logits(setup, tmp_path):
    _, tokenizer, _, data = setup
    res = _run(setup, tmp_path, sparsity=0.5, epochs=0)
    res.model.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved", local_files_only=True).eval()
    batch = tokenizer(data.dev.texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want, got = res.model.eval()(**batch).logits, reloaded(**batch).logits
    assert torch.equal(want, got)
    zeros = sum(int((w == 0).sum()) for w in _encoder_weights(reloaded).values())
    assert zeros == round(0.5 * sum(w.numel() for w in _encoder_weights(reloaded).values()))


def test_zero_sparsity_without_fine_tune_is_a_copy(setup, tmp_path):
    model = setup[0]
    res = _run(setup, tmp_path, sparsity=0.0, epochs=0)
    assert res.model is not model
    got = res.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())
    assert res.metrics["sparsity_prunable"] == 0.0

"""Prune stage: global magnitude pruning to the target sparsity, masks held through the fine-tune."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from transformers import AutoModelForSequenceClassification

from compress.masks import magnitude_masks, nm_mask, prunable_linears
from compress.modeling import count_parameters, load_classifier
from compress.structured import heads_per_layer, macs_per_token
from compress.tasks.classification.config import DataConfig, PruneConfig
from compress.tasks.classification.data import load_task_data
from compress.tasks.classification.prune import prune


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


# --- extended settings: unstructured scopes, N:M, structured, cubic schedule, Taylor -----------------------------


def _run_settings(setup, tmp_path, **settings):
    model, tokenizer, teacher_logits, data = setup
    cfg = PruneConfig(batch_size=8, **settings)
    return prune(model, tokenizer, teacher_logits, cfg, data, seed=0, max_length=32, work_dir=tmp_path / "work")


def test_magnitude_masks_match_torch_global_unstructured():
    torch.manual_seed(0)
    layers = [nn.Linear(16, 8), nn.Linear(8, 24), nn.Linear(24, 4)]
    want_layers = copy.deepcopy(layers)
    torch_prune.global_unstructured(
        [(m, "weight") for m in want_layers], pruning_method=torch_prune.L1Unstructured, amount=0.37
    )
    got = magnitude_masks([m.weight.abs() for m in layers], 0.37)
    for g, m in zip(got, want_layers, strict=True):
        assert torch.equal(g, m.weight_mask.bool())
    per_tensor = magnitude_masks([m.weight.abs() for m in layers], 0.37, scope="layer")
    assert [int((~k).sum()) for k in per_tensor] == [round(0.37 * m.weight.numel()) for m in layers]


def test_magnitude_masks_keep_earlier_drops():
    scores = [torch.tensor([[5.0, 1.0, 2.0, 3.0]]), torch.tensor([[4.0, 6.0]])]
    pruned = [torch.tensor([[True, False, False, False]]), torch.tensor([[False, False]])]
    got = magnitude_masks(scores, 0.5, pruned=pruned)  # 3 of 6: the pruned 5.0 and the two smallest
    assert got[0].tolist() == [[False, False, False, True]] and got[1].tolist() == [[True, True]]


def test_nm_mask_keeps_the_n_largest_of_every_m():
    torch.manual_seed(0)
    w = torch.randn(6, 16)
    keep = nm_mask(w.abs(), 2, 4)
    groups, kept = w.abs().view(-1, 4), keep.view(-1, 4)
    assert (kept.sum(dim=1) == 2).all()
    assert (groups[kept].view(-1, 2).min(dim=1).values >= groups[~kept].view(-1, 2).max(dim=1).values).all()
    with pytest.raises(ValueError, match="multiple of m"):
        nm_mask(torch.rand(2, 6), 2, 4)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"heads": 0.5}, "prune.heads applies only to method 'structured'"),
        ({"method": "structured", "sparsity": 0.3}, "prune.sparsity applies only to method 'unstructured'"),
        ({"every": 5}, "prune.every applies only to schedule 'cubic'"),
        ({"schedule": "cubic", "epochs": 0}, "prune.epochs must be > 0"),
        ({"method": "n:m", "schedule": "cubic"}, "does not apply to method 'n:m'"),
        ({"method": "n:m", "nm": (4, 4)}, "1 <= n < m"),
        ({"schedule": "cubic", "start": 0.8, "end": 0.5}, "after prune.end"),
        ({"heads_fraction": 0.5}, "heads_fraction"),
    ],
)
def test_settings_reject_keys_that_do_not_apply(settings, message):
    with pytest.raises(ValueError, match=message):
        PruneConfig(**settings)


def test_recipe_config_is_read_as_settings(setup, tmp_path):
    res = _run(setup, tmp_path, sparsity=0.4, epochs=0)
    assert res.metrics["method"] == "unstructured" and res.metrics["schedule"] == "oneshot"
    assert res.metrics["target_sparsity"] == 0.4


def test_layer_scope_gives_every_matrix_the_target(setup, tmp_path):
    res = _run_settings(setup, tmp_path, sparsity=0.3, scope="layer", epochs=0)
    for name, w in _encoder_weights(res.model).items():
        assert int((w == 0).sum()) == round(0.3 * w.numel()), name
    assert all(v == pytest.approx(0.3, abs=1e-3) for v in res.metrics["per_layer"].values())


def test_nm_method_leaves_the_pattern(setup, tmp_path):
    res = _run_settings(setup, tmp_path, method="n:m", epochs=1, learning_rate=1e-3)
    for name, w in _encoder_weights(res.model).items():
        assert ((w != 0).view(-1, 4).sum(dim=1) <= 2).all(), name
    assert res.metrics["sparsity_prunable"] == pytest.approx(0.5, abs=1e-3)
    assert res.metrics["target_sparsity"] == 0.5


def test_structured_oneshot_removes_heads_and_neurons_and_reloads(setup, tmp_path):
    model, tokenizer, _, data = setup
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config_before = model.config.to_dict()
    res = _run_settings(setup, tmp_path, method="structured", heads=0.5, ffn=0.5, scope="layer", epochs=0)
    m = res.metrics
    # Tiny model: 4 layers of 2 heads (width 16) and 64 FFN neurons, hidden 32.
    assert m["heads_per_layer_before"] == [2, 2, 2, 2] and m["heads_per_layer"] == [1, 1, 1, 1]
    assert m["ffn_size_before"] == 64 and m["ffn_size"] == 32
    per_head, per_neuron = 3 * (32 * 16 + 16) + 32 * 16, 2 * 32 + 1
    assert m["params_before"] - m["params"] == 4 * per_head + 4 * 32 * per_neuron
    assert m["params"] == count_parameters(res.model)
    assert m["macs_per_token"] < m["macs_per_token_before"]
    assert m["macs_per_token"] == macs_per_token(res.model, m["macs_seq_len"])
    assert res.model.config.intermediate_size == 32 and len(res.model.config.pruned_heads) == 4

    # The input model is untouched.
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert model.config.to_dict() == config_before and heads_per_layer(model) == [2, 2, 2, 2]

    res.model.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved", local_files_only=True).eval()
    batch = tokenizer(data.dev.texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, res.model(**batch).logits, atol=1e-5, rtol=0)


def test_cubic_unstructured_reaches_the_target_at_the_end(setup, tmp_path):
    res = _run_settings(
        setup, tmp_path, sparsity=0.6, schedule="cubic", start=0.0, end=0.5, every=1, epochs=2, learning_rate=1e-3
    )
    weights = _encoder_weights(res.model)
    n = sum(w.numel() for w in weights.values())
    assert sum(int((w == 0).sum()) for w in weights.values()) == round(0.6 * n)
    original = _encoder_weights(setup[0])  # the optimizer kept training the masked weights
    assert all(not torch.equal(w[w != 0], original[k][w != 0]) for k, w in weights.items())
    history = res.metrics["schedule_history"]  # 64 examples / 8 = 8 steps per epoch, 16 in all
    steps, levels = [s for s, _ in history], [lvl for _, lvl in history]
    assert steps == list(range(9)) and levels == sorted(levels) and levels[-1] == 1.0
    assert res.metrics["dev_accuracy_torch_before_finetune"] is None
    assert all(not m._forward_pre_hooks for m in res.model.modules())


def test_cubic_structured_with_taylor(setup, tmp_path):
    model = setup[0]
    res = _run_settings(
        setup,
        tmp_path,
        method="structured",
        heads=0.5,
        ffn=0.25,
        schedule="cubic",
        importance="taylor",
        taylor_batches=2,
        every=2,
        epochs=1,
        learning_rate=1e-3,
    )
    assert sum(res.metrics["heads_per_layer"]) == 4 and min(res.metrics["heads_per_layer"]) >= 1
    assert res.metrics["ffn_size"] == 48
    assert res.metrics["schedule_history"][-1][1] == 1.0
    assert heads_per_layer(model) == [2, 2, 2, 2] and all(not m._forward_pre_hooks for m in model.modules())


def test_a_structured_config_keeps_the_unstructured_default_out(setup, tmp_path):
    model, tokenizer, teacher_logits, data = setup
    cfg = PruneConfig(method="structured", heads=0.5, epochs=0, batch_size=8)
    res = prune(model, tokenizer, teacher_logits, cfg, data, seed=0, max_length=32, work_dir=tmp_path / "work")
    assert res.metrics["method"] == "structured" and res.metrics["heads_per_layer"] == [1, 1, 1, 1]
    assert res.metrics["target_sparsity"] == 0.0
    # A dumped and reloaded config (as the manifest holds it) validates again.
    assert PruneConfig(**cfg.model_dump()) == cfg
    with pytest.raises(ValueError, match="prune.sparsity applies only"):
        PruneConfig(method="structured", heads=0.5, sparsity=0.3)


def _hidden_distance(a, b, tokenizer, texts) -> float:
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    mask = batch["attention_mask"][:, :, None].float()
    with torch.no_grad():
        ha = a(**batch, output_hidden_states=True).hidden_states
        hb = b(**batch, output_hidden_states=True).hidden_states
    return float(sum((((x - y) ** 2) * mask).sum() / mask.sum() for x, y in zip(ha[1:], hb[1:], strict=True)))


def test_hidden_weight_pulls_the_pruned_model_towards_its_source(setup, tmp_path):
    model, tokenizer, _, data = setup
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    common = dict(method="unstructured", sparsity=0.6, epochs=3, learning_rate=1e-3)
    plain = _run(setup, tmp_path / "plain", **common)
    layered = _run(setup, tmp_path / "layered", hidden_weight=50.0, **common)
    assert layered.metrics["hidden_weight"] == 50.0 and plain.metrics["hidden_weight"] == 0.0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # the source is not trained
    far = _hidden_distance(plain.model, model, tokenizer, data.dev.texts)
    near = _hidden_distance(layered.model, model, tokenizer, data.dev.texts)
    assert near < 0.7 * far, (near, far)

"""Structured pruning: head and neuron importance, selection, masks, physical removal and reload."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

from compress.structured import (
    StructuredPruner,
    StructuredSelection,
    apply_structured_masks_,
    compact_,
    ffn_sizes,
    heads_per_layer,
    macs_per_token,
    masked_selection,
    select_heads,
    select_neurons,
    structure_importance,
    taylor_scores,
)

HIDDEN, HEADS, HEAD, FFN, LAYERS, VOCAB = 32, 4, 8, 64, 3, 40


def _bert():
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=64,
    )
    return BertForSequenceClassification(cfg).eval()


def _distilbert():
    torch.manual_seed(0)
    cfg = DistilBertConfig(
        vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN, max_position_embeddings=64
    )
    return DistilBertForSequenceClassification(cfg).eval()


# The pieces each architecture prunes: (Q, K, V, O, FFN in, FFN out) paths inside a layer.
PATHS = {
    "bert": ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
    + ("intermediate.dense", "output.dense"),
    "distilbert": (
        "attention.q_lin",
        "attention.k_lin",
        "attention.v_lin",
        "attention.out_lin",
        "ffn.lin1",
        "ffn.lin2",
    ),
}
MODELS = {"bert": _bert, "distilbert": _distilbert}


def _layers(model):
    return (
        model.base_model.encoder.layer if hasattr(model.base_model, "encoder") else model.base_model.transformer.layer
    )


def _batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0  # one padded sentence
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_macs_per_token_matches_a_hand_count():
    cfg = BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)
    # Per layer at seq_len 10: Q,K,V 3*32*32 = 3072; output 32*32 = 1024; scores 10*32 = 320; context 320;
    # FFN 32*64 + 64*32 = 4096. Total 8832 per layer.
    assert macs_per_token(cfg, 10) == 4 * 8832
    # Layer 0 without head 1: attention width 16 -> 1536 + 512 + 160 + 160 + 4096 = 6464.
    cfg.pruned_heads = {0: [1]}
    assert macs_per_token(cfg, 10) == 3 * 8832 + 6464
    cfg.intermediate_size = 32  # FFN halved everywhere: 2048 fewer per layer
    assert macs_per_token(cfg, 10) == 3 * 8832 + 6464 - 4 * 2048
    assert macs_per_token(cfg, 20) - macs_per_token(cfg, 10) == 10 * 2 * (3 * 32 + 16)  # attention grows with L


def test_select_heads_per_layer_and_global():
    scores = [torch.tensor([4.0, 1.0, 3.0, 2.0]), torch.tensor([1.0, 1.0, 1.0, 9.0]), torch.tensor([5.0, 6.0])]
    assert select_heads(scores, 0.5, scope="layer") == [[1, 3], [0, 1], [0]]
    assert select_heads(scores, 0.99, scope="layer") == [[1, 2, 3], [0, 1, 2], [0]]  # one head always stays
    # Global, on layer-normalised scores: 5 of 10 heads; layer 1's three small heads go first.
    got = select_heads(scores, 0.5, scope="global")
    assert sum(map(len, got)) == 5 and got[1] == [0, 1, 2]
    assert all(len(d) < len(s) for d, s in zip(got, scores, strict=True))
    assert sum(map(len, select_heads(scores, 0.95, scope="global"))) == 10 - 3  # capped: one head per layer


def test_select_heads_keeps_earlier_drops():
    scores = [torch.tensor([4.0, 1.0, 3.0, 2.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])]
    for scope in ("global", "layer"):
        got = select_heads(scores, 0.5, scope=scope, dropped=[[0], []])  # head 0 is the best but dropped before
        assert 0 in got[0] and sum(map(len, got)) == 4


def test_select_neurons_same_count_in_every_layer():
    torch.manual_seed(0)
    scores = [torch.rand(64) for _ in range(3)]
    got = select_neurons(scores, 0.3)
    assert [len(d) for d in got] == [19, 19, 19]  # round(0.3 * 64)
    for s, d in zip(scores, got, strict=True):
        assert set(d) == set(torch.argsort(s)[:19].tolist())  # the lowest
    assert [len(d) for d in select_neurons(scores, 0.3, dropped=[[], list(range(25)), []])] == [25, 25, 25]
    with pytest.raises(ValueError, match="different FFN sizes"):
        select_neurons([torch.rand(4), torch.rand(5)], 0.5)


def test_magnitude_importance_is_the_l2_norm_of_the_head_and_neuron_weights():
    model = _bert()
    scores = structure_importance(model)
    layer = _layers(model)[1]
    rows = slice(2 * HEAD, 3 * HEAD)  # head 2
    parts = [layer.get_submodule(p).weight.detach()[rows] for p in PATHS["bert"][:3]]
    parts.append(layer.get_submodule(PATHS["bert"][3]).weight.detach()[:, rows])
    want = torch.sqrt(sum((w**2).sum() for w in parts))
    assert scores.heads[1][2] == pytest.approx(float(want), rel=1e-5)
    fin, fout = (layer.get_submodule(p).weight.detach() for p in PATHS["bert"][4:])
    want = torch.sqrt((fin[5] ** 2).sum() + (fout[:, 5] ** 2).sum())
    assert scores.neurons[1][5] == pytest.approx(float(want), rel=1e-5)
    assert [len(h) for h in scores.heads] == [HEADS] * LAYERS and [len(n) for n in scores.neurons] == [FFN] * LAYERS


def test_taylor_scores_are_w_times_grad_summed_over_batches_and_zero_when_masked():
    model = _bert()
    batches = [_batch(1), _batch(2)]
    got = taylor_scores(model, batches)
    q = model.bert.encoder.layer[0].attention.self.query
    want = torch.zeros_like(q.weight)
    for b in batches:
        model.zero_grad()
        model(**b).loss.backward()
        want += (q.weight * q.weight.grad).abs()
    model.zero_grad(set_to_none=True)
    assert torch.allclose(got["bert.encoder.layer.0.attention.self.query"], want, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())  # grads left as they were
    assert not model.training

    apply_structured_masks_(model, StructuredSelection.of([[1], [], []], [[3], [], []]))
    scores = structure_importance(model, "taylor", batches=batches)
    assert scores.heads[0][1] == 0 and scores.neurons[0][3] == 0
    assert (scores.heads[0][[0, 2, 3]] > 0).all()


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_compact_removes_exactly_the_selected_heads_and_neurons(arch, tmp_path):
    model = MODELS[arch]()
    before = {
        i: [layer.get_submodule(p).weight.detach().clone() for p in PATHS[arch]]
        for i, layer in enumerate(_layers(model))
    }
    n_params = sum(p.numel() for p in model.parameters())
    heads = [[1], [0, 2], [0, 1, 3]]
    neurons = [sorted(torch.randperm(FFN, generator=torch.Generator().manual_seed(i))[:24].tolist()) for i in range(3)]
    selection = StructuredSelection.of(heads, neurons)
    apply_structured_masks_(model, selection)
    assert masked_selection(model) == selection
    batch = _batch()
    masked = _logits(model, batch)

    compact_(model)
    assert heads_per_layer(model) == [3, 2, 1] and ffn_sizes(model) == [FFN - 24] * 3
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert not [k for k in model.state_dict() if k.endswith(("_orig", "_mask"))]
    for i, layer in enumerate(_layers(model)):
        rows = torch.tensor([r for h in range(HEADS) if h not in heads[i] for r in range(h * HEAD, (h + 1) * HEAD)])
        keep = torch.tensor([j for j in range(FFN) if j not in neurons[i]])
        q, k, v, o, fin, fout = (layer.get_submodule(p).weight for p in PATHS[arch])
        for new, old in ((q, before[i][0]), (k, before[i][1]), (v, before[i][2])):
            assert torch.equal(new, old[rows])
        assert torch.equal(o, before[i][3][:, rows])
        assert torch.equal(fin, before[i][4][keep]) and torch.equal(fout, before[i][5][:, keep])

    # Same function as the masked model, and fewer parameters by exactly the removed weights:
    # a head is 3 * (HIDDEN * HEAD + HEAD) of Q/K/V weights and biases plus HIDDEN * HEAD of output columns;
    # a neuron is an FFN-in row and bias plus an FFN-out column.
    torch.testing.assert_close(_logits(model, batch), masked, atol=1e-5, rtol=0)
    per_head, per_neuron = 3 * (HIDDEN * HEAD + HEAD) + HIDDEN * HEAD, 2 * HIDDEN + 1
    removed = 6 * per_head + 3 * 24 * per_neuron
    assert sum(p.numel() for p in model.parameters()) == n_params - removed

    # An ordinary Hugging Face model: it saves and reloads with the same shapes and logits.
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, local_files_only=True).eval()
    assert heads_per_layer(reloaded) == [3, 2, 1] and ffn_sizes(reloaded) == [FFN - 24] * 3
    assert {int(k): sorted(v) for k, v in reloaded.config.pruned_heads.items()} == {0: [1], 1: [0, 2], 2: [0, 1, 3]}
    assert sum(p.numel() for p in reloaded.parameters()) == n_params - removed
    torch.testing.assert_close(_logits(reloaded, batch), masked, atol=1e-5, rtol=0)
    assert macs_per_token(reloaded, 11) == macs_per_token(model, 11) < macs_per_token(MODELS[arch](), 11)


def test_compacting_twice_maps_head_ids_to_the_original_numbering(tmp_path):
    model = _bert()
    apply_structured_masks_(model, StructuredSelection.of([[1], [], []], [[], [], []]))
    compact_(model)  # layer 0 now holds original heads 0, 2, 3
    apply_structured_masks_(model, StructuredSelection.of([[1], [], []], [[], [], []]))  # current 1 = original 2
    batch = _batch()
    masked = _logits(model, batch)
    compact_(model)
    assert sorted(model.config.pruned_heads[0]) == [1, 2]
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, local_files_only=True).eval()
    torch.testing.assert_close(_logits(reloaded, batch), masked, atol=1e-5, rtol=0)


def test_compact_refuses_uneven_ffn():
    model = _bert()
    apply_structured_masks_(model, StructuredSelection.of([[], [], []], [[0], [], []]))
    with pytest.raises(ValueError, match="different numbers of FFN neurons"):
        compact_(model)


def test_pruner_tightens_monotonically_to_the_targets():
    model = _bert()
    pruner = StructuredPruner(heads=0.5, ffn=0.5, scope="layer")
    pruner.prune_to_(model, 0.0)
    assert masked_selection(model) == StructuredSelection.of([[]] * 3, [[]] * 3)
    pruner.prune_to_(model, 0.5)
    half = masked_selection(model)
    assert [len(h) for h in half.heads] == [1, 1, 1] and [len(n) for n in half.neurons] == [16] * 3
    with torch.no_grad():  # training moves weights: the earlier drops must stay dropped anyway
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    pruner.prune_to_(model, 1.0)
    full = masked_selection(model)
    assert [len(h) for h in full.heads] == [2, 2, 2] and [len(n) for n in full.neurons] == [32] * 3
    for a, b in zip(half.heads + half.neurons, full.heads + full.neurons, strict=True):
        assert set(a) <= set(b)

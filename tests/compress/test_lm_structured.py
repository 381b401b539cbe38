"""Structured pruning of decoders: a cut equals zeroing what it removes, reloads as an ordinary model, and keeps
what its importance ranks highest."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

from compress.architectures import family_of, head_dim, weight_layers
from compress.decoder_structured import (
    DecoderImportance,
    activation_importance,
    apply_cut,
    magnitude_importance,
    plan_cut,
)
from compress.errors import RecipeError
from compress.tasks.causal_lm.config import LMPruneConfig as PruneConfig
from compress.tasks.causal_lm.config import TextDataConfig
from compress.tasks.causal_lm.data import load_text_data, train_blocks
from compress.tasks.causal_lm.prune import prune_lm
from tests.lm_fixtures import tiny_causal_lm

IDS = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))


def _model(family: str):
    if family == "qwen3":  # per-head q/k norms and an explicit head_dim
        torch.manual_seed(0)
        cfg = Qwen3Config(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            head_dim=16,
        )
        return Qwen3ForCausalLM(cfg).eval()
    model = tiny_causal_lm(family, 100, 0).eval()
    if family == "qwen2":  # its Q, K, V biases must be sliced with the rows
        with torch.no_grad():
            for layer in weight_layers(model):
                for p in ("q_proj", "k_proj", "v_proj"):
                    getattr(layer.self_attn, p).bias.normal_()
    return model


@torch.no_grad()
def _zeroed(model, cut):
    """The source with the removed groups' output columns and the removed neurons' input rows set to zero."""
    ref = copy.deepcopy(model)
    fam = family_of(ref)
    cfg = ref.config
    g = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    width = ref.get_submodule(f"{ref.base_model_prefix}.{fam.layers}.0.{fam.qkv or fam.query}").weight.shape
    for i, layer in enumerate(weight_layers(ref)):
        neurons = torch.ones(
            cfg.intermediate_size if fam.ffn_key == "intermediate_size" else 4 * cfg.hidden_size, dtype=torch.bool
        )
        neurons[list(cut.neurons[i])] = False
        up = layer.get_submodule(fam.ffn_in)
        if fam.conv1d:
            up.weight[:, neurons] = 0
            up.bias[neurons] = 0
            continue
        if fam.gate_up:  # the neuron's gate row and its up row
            up.weight[torch.cat([neurons, neurons])] = 0
            continue
        up.weight[neurons] = 0
        layer.get_submodule(fam.ffn_gate).weight[neurons] = 0
        groups = torch.ones(g, dtype=torch.bool)
        groups[list(cut.groups[i])] = False
        cols = groups.repeat_interleave(width[0] // g)
        layer.get_submodule(fam.out).weight[:, cols] = 0
    return ref


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gpt2", "phi3"])
def test_a_cut_equals_zeroing_what_it_removes_and_reloads_as_an_ordinary_model(family, tmp_path):
    model = _model(family)
    heads = 0.0 if family in ("gpt2", "phi3") else 0.5  # fused Q, K, V: the FFN only
    cut = plan_cut(model, activation_importance(model, [IDS]), heads=heads, ffn=0.5)
    new = apply_cut(model, cut)
    assert new.num_parameters() < model.num_parameters()
    expected = _zeroed(model, cut)(IDS).logits
    got = new(IDS).logits
    assert torch.allclose(got, expected, atol=1e-5)
    new.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(again(IDS).logits, got)
    if family not in ("gpt2", "phi3"):
        assert (
            new.config.num_key_value_heads == 1
            and new.config.num_attention_heads == model.config.num_attention_heads // 2
        )
        assert new.config.head_dim == head_dim(model.config)


def test_a_cut_decodes_with_a_kv_cache_exactly_as_without():
    model = _model("llama")
    new = apply_cut(model, plan_cut(model, magnitude_importance(model), heads=0.5, ffn=0.25, hidden=0.25))
    full = new(IDS).logits[:, -1]
    past = new(IDS[:, :-1], use_cache=True).past_key_values
    step = new(IDS[:, -1:], past_key_values=past, use_cache=True).logits[:, -1]
    assert torch.allclose(full, step, atol=1e-5)


def test_a_hidden_cut_narrows_every_tensor_and_keeps_the_head_tied():
    model = _model("llama")
    new = apply_cut(model, plan_cut(model, magnitude_importance(model), hidden=0.25))
    assert new.config.hidden_size == 24 and new.config.head_dim == 8  # heads keep their width
    assert new.get_input_embeddings().weight.shape == (100, 24)
    assert new.get_output_embeddings().weight.data_ptr() == new.get_input_embeddings().weight.data_ptr()
    assert new.model.layers[0].self_attn.q_proj.weight.shape == (32, 24)
    assert new.model.layers[0].self_attn.o_proj.weight.shape == (24, 32)
    assert torch.isfinite(new(IDS).logits).all()


def test_the_plan_keeps_the_highest_scores_in_every_layer_and_the_same_count():
    model = _model("llama")  # 4 layers, 2 key/value groups, FFN 64, hidden 32
    up, down = torch.arange(64.0), torch.arange(64.0).flip(0)
    imp = DecoderImportance(
        groups=[torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.5])] * 2,
        neurons=[up, down] * 2,
        channels=torch.arange(32.0),
    )
    cut = plan_cut(model, imp, heads=0.5, ffn=0.75, hidden=0.5)
    assert cut.groups == ((1,), (0,)) * 2
    assert cut.neurons == (tuple(range(48, 64)), tuple(range(16))) * 2
    assert cut.channels == tuple(range(16, 32))


def test_activation_importance_ranks_a_dead_neuron_last():
    model = _model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[5] = 0
    imp = activation_importance(model, [IDS])
    assert imp.neurons[1][5] == 0 and imp.neurons[1].argmin() == 5
    assert all(s.shape == (2,) for s in imp.groups) and imp.channels.shape == (32,)


def test_what_cannot_be_cut_is_refused_in_a_line():
    gpt2 = _model("gpt2")
    with pytest.raises(RecipeError, match="prune.heads: gpt2"):
        plan_cut(gpt2, magnitude_importance(gpt2), heads=0.5)
    with pytest.raises(RecipeError, match="prune.hidden: gpt2"):
        plan_cut(gpt2, magnitude_importance(gpt2), hidden=0.5)
    llama = _model("llama")
    with pytest.raises(RecipeError, match="removes no group"):
        plan_cut(llama, magnitude_importance(llama), heads=0.25)


def test_the_prune_stage_cuts_distils_and_leaves_the_source_alone(text_data_dir, tiny_lm_dirs, tmp_path):
    from compress.tasks.causal_lm.model import load_causal_lm

    teacher, tok = load_causal_lm(tiny_lm_dirs["llama"])
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    data_cfg = TextDataConfig(
        train=text_data_dir / "train.txt", dev=text_data_dir / "dev.txt", documents="line", block_size=32
    )
    cfg = PruneConfig(
        method="structured",
        ffn=0.5,
        heads=0.5,
        importance="activation",
        epochs=1,
        batch_size=8,
        calibration_batches=2,
        learning_rate=3e-3,
    )
    res = prune_lm(teacher, tok, teacher, cfg, load_text_data(data_cfg), data_cfg, seed=0, work_dir=tmp_path)
    m = res.metrics
    assert m["cut"]["ffn_width"] == [64, 32] and m["cut"]["kv_groups"] == [2, 1]
    assert res.model.config.intermediate_size == 32
    assert m["dev_perplexity_torch"] < m["dev_perplexity_torch_before_finetune"]  # the fine-tune recovers
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


def test_cubic_rounds_cut_most_early_and_reach_the_target_at_end():
    from compress.tasks.causal_lm.prune import _segments, cut_rounds

    s = PruneConfig(method="structured", ffn=0.5, schedule="cubic", rounds=4, start=0.1, end=0.7)
    rounds = cut_rounds(s)
    assert [round(at, 6) for at, _ in rounds] == [0.1, 0.3, 0.5, 0.7]
    done = [d for _, d in rounds]
    assert done == sorted(done) and done[-1] == 1.0 and done[0] > 0.25  # cubic: more than a quarter in round 1
    assert cut_rounds(PruneConfig(method="structured", ffn=0.5)) == [(0.0, 1.0)]
    # 1.5 epochs of 10 blocks split at 0.1 .. 0.7: 15 blocks in all, each pass a permutation, nothing dropped
    parts = _segments(10, 1.5, 0, [at for at, _ in rounds])
    flat = np.concatenate(parts)
    assert [len(p) for p in parts] == [2, 3, 3, 3, 4] and len(flat) == 15
    assert sorted(flat[:10]) == list(range(10)) and len(set(flat[10:])) == 5


def test_a_gradual_cut_reaches_the_one_shot_shape_in_rounds(text_data_dir, tiny_lm_dirs, tmp_path):
    from compress.tasks.causal_lm.model import load_causal_lm

    teacher, tok = load_causal_lm(tiny_lm_dirs["llama"])
    data_cfg = TextDataConfig(
        train=text_data_dir / "train.txt", dev=text_data_dir / "dev.txt", documents="line", block_size=32
    )
    data = load_text_data(data_cfg)
    shares = dict(method="structured", ffn=0.5, heads=0.5, hidden=0.25, importance="activation")
    common = dict(epochs=1, batch_size=8, calibration_batches=2, learning_rate=3e-3)
    gradual = PruneConfig(**shares, **common, schedule="cubic", rounds=3)
    res = prune_lm(teacher, tok, teacher, gradual, data, data_cfg, seed=0, work_dir=tmp_path / "g")
    m = res.metrics
    kept = [r["kept"] for r in m["cut_rounds"]]
    assert [r["at_fraction"] for r in m["cut_rounds"]] == [0.0, 0.375, 0.75]
    ffn = [k["ffn"] for k in kept]
    assert ffn == sorted(ffn, reverse=True) and ffn[0] < 64 and ffn[-1] == 32 and len(set(ffn)) == 3
    assert kept[-1] == {"kv_groups": 1, "ffn": 32, "hidden": 24}
    assert m["cut"] == {"kv_groups": [2, 1], "attention_heads": [4, 2], "ffn_width": [64, 32], "hidden_size": [32, 24]}
    assert np.isfinite(m["dev_perplexity_torch"]) and m["schedule"] == "cubic"
    # An ordinary transformers model of the one-shot cut's config.
    res.model.save_pretrained(tmp_path / "saved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    ids = torch.arange(1, 17)[None]
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, res.model(ids).logits, atol=1e-5)


def test_depth_selection_drops_a_layer_that_does_nothing_first(tiny_lm_dirs):
    from compress.tasks.causal_lm.data import pack_blocks, token_stream
    from compress.tasks.causal_lm.distill import select_layers
    from compress.tasks.causal_lm.model import load_causal_lm
    from tests.lm_fixtures import make_documents

    model, tok = load_causal_lm(tiny_lm_dirs["llama"])  # trained on this corpus: its layers matter on its text
    with torch.no_grad():  # layer 2 adds nothing to the residual stream: removing it changes no output
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    blocks = pack_blocks(token_stream(tok, make_documents()["dev"]), 32)[:8]
    kept, rounds = select_layers(model, blocks, 2)
    assert rounds[0]["dropped"] == 2 and len(kept) == 2 and 2 not in kept
    for r in rounds:  # each round drops the layer whose absence costs least
        assert r["dropped"] == min(r["perplexity_without"], key=r["perplexity_without"].get)
    assert [r["layers"] for r in rounds] == [[0, 1, 2, 3], sorted(kept + [rounds[1]["dropped"]])]
    with pytest.raises(ValueError, match="num_layers = 4"):
        select_layers(model, blocks, 4)


def test_a_bounded_layer_choice_measures_only_the_least_influential_layers_each_round(tiny_lm_dirs):
    from compress.tasks.causal_lm.data import pack_blocks, token_stream
    from compress.tasks.causal_lm.distill import block_influence, select_layers
    from compress.tasks.causal_lm.model import load_causal_lm
    from tests.lm_fixtures import make_documents

    model, tok = load_causal_lm(tiny_lm_dirs["llama"])
    with torch.no_grad():  # layer 1 leaves the residual stream as it found it
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    blocks = pack_blocks(token_stream(tok, make_documents()["dev"]), 32)[:8]
    influence = block_influence(model, blocks[:4])
    assert influence[1] == pytest.approx(0.0, abs=1e-6) and min(influence[i] for i in (0, 2, 3)) > 1e-3
    kept, rounds = select_layers(model, blocks, 1, candidates=2)
    assert [len(r["perplexity_without"]) for r in rounds] == [2, 2, 2]  # (4 - 1) rounds x 2, not 4 + 3 + 2
    assert rounds[0]["dropped"] == 1
    for r in rounds[:2]:  # the layers measured are those of least influence in the model of that round
        ranked = sorted(r["block_influence"], key=r["block_influence"].get)
        assert set(r["perplexity_without"]) == set(ranked[:2])
    assert "block_influence" not in rounds[2]  # two layers left: both measured
    full, _ = select_layers(model, blocks, 1, candidates=4)  # as many candidates as layers: the exhaustive choice
    assert full == select_layers(model, blocks, 1)[0]


def test_a_recipe_takes_layers_or_num_layers_not_both():
    from compress.tasks.causal_lm.config import LMDistillConfig

    assert LMDistillConfig(num_layers=3).num_layers == 3
    with pytest.raises(ValueError, match="choose one"):
        LMDistillConfig(layers=[0, 1], num_layers=2)


def test_sequence_level_kd_adds_teacher_written_blocks_once_per_teacher(text_data_dir, tiny_lm_dirs, tmp_path):
    from compress.tasks.causal_lm.config import LMDistillConfig
    from compress.tasks.causal_lm.distill import distill_lm
    from compress.tasks.causal_lm.model import load_causal_lm

    teacher, tok = load_causal_lm(tiny_lm_dirs["llama"])
    data_cfg = TextDataConfig(
        train=text_data_dir / "train.txt", dev=text_data_dir / "dev.txt", documents="line", block_size=32
    )
    data = load_text_data(data_cfg)
    cfg = LMDistillConfig(layers=[0, 3], max_steps=2, batch_size=8, generated_sequences=6, generation_prompt_tokens=8)
    logs: list[str] = []
    runs = [
        distill_lm(
            teacher,
            tok,
            cfg,
            data,
            data_cfg,
            seed=0,
            work_dir=tmp_path / f"w{i}",
            log=logs.append,
            cache_dir=tmp_path / "cache",
        )  # fmt: skip
        for i in range(2)
    ]
    base = distill_lm(teacher, tok, cfg.model_copy(update={"generated_sequences": 0}), data, data_cfg, seed=0,
                      work_dir=tmp_path / "w", log=lambda _: None)  # fmt: skip
    g = runs[0].metrics["generated_sequences"]
    assert g["blocks"] == 6 and g["tokens"] == 6 * 32 and base.metrics["generated_sequences"] is None
    assert runs[0].metrics["train_tokens"] == base.metrics["train_tokens"] + 6 * 32
    [cached] = list((tmp_path / "cache").iterdir())
    blocks = np.load(cached)
    assert blocks.shape == (6, 32)
    assert any("teacher-written blocks read from" in line for line in logs)  # the second student reused them
    # each block continues a real train prompt
    train = {tuple(b[:8]) for b in train_blocks(tok, data.train, data_cfg).blocks}
    assert all(tuple(b[:8]) in train for b in blocks)

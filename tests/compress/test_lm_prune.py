"""Pruning decoders: GPT-2's Conv1D and Llama's Linear projections, measured sparsity, n:m along the inputs."""

from __future__ import annotations

import pytest
import torch

from compress.architectures import as_out_in, projection_modules
from compress.masks import UnstructuredPruner, measure_sparsity
from compress.structured import remove_masks_
from compress.tasks.causal_lm.config import LMPruneConfig as PruneConfig
from compress.tasks.causal_lm.config import TextDataConfig
from compress.tasks.causal_lm.data import load_text_data
from compress.tasks.causal_lm.prune import prune_lm
from tests.lm_fixtures import tiny_causal_lm


@pytest.mark.parametrize("family", ["gpt2", "llama", "phi3"])
def test_unstructured_reaches_the_target_on_every_projection_kind(family):
    model = tiny_causal_lm(family, 100, 0)
    UnstructuredPruner(sparsity=0.6).prune_to_(model, 1.0)
    remove_masks_(model)
    m = measure_sparsity(model)
    total = sum(mod.weight.numel() for _, mod in projection_modules(model))
    assert m["sparsity_prunable"] == pytest.approx(round(0.6 * total) / total, abs=1e-9)
    assert set(m["per_layer"]) == {"0", "1", "2", "3"}
    head = model.get_output_embeddings().weight
    assert (head == 0).float().mean() < 0.01  # the embedding / LM head stays dense


def test_two_four_runs_along_each_outputs_inputs_for_conv1d():
    model = tiny_causal_lm("gpt2", 100, 0)
    UnstructuredPruner(nm=(2, 4)).prune_to_(model, 1.0)
    remove_masks_(model)
    for _, mod in projection_modules(model):
        w = as_out_in(mod)  # (out, in), whichever way the module stores it
        groups = (w != 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert torch.all(groups == 2)


def test_prune_stage_fine_tunes_against_the_teacher_and_keeps_the_zeros(text_data_dir, tiny_lm_dirs, tmp_path):
    from compress.tasks.causal_lm.model import load_causal_lm

    teacher, tok = load_causal_lm(tiny_lm_dirs["llama"])
    data_cfg = TextDataConfig(
        train=text_data_dir / "train.txt", dev=text_data_dir / "dev.txt", documents="line", block_size=32
    )
    cfg = PruneConfig(sparsity=0.5, schedule="cubic", epochs=1, batch_size=8, every=2)
    res = prune_lm(teacher, tok, teacher, cfg, load_text_data(data_cfg), data_cfg, seed=0, work_dir=tmp_path)
    assert res.metrics["sparsity_prunable"] == pytest.approx(0.5, abs=1e-3)
    assert res.metrics["schedule_history"][-1][1] == 1.0
    assert res.metrics["dev_perplexity_torch"] > 1
    assert measure_sparsity(teacher)["sparsity_prunable"] < 0.01  # the source is not modified


def test_wanda_ranks_each_output_row_by_weight_times_input_norm():
    from compress.masks import input_norms
    from compress.tasks.causal_lm.prune import _lm_forward

    model = tiny_causal_lm("llama", 100, 0)
    batches = [{"input_ids": torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))}]
    modules = [m for _, m in projection_modules(model)]
    norms = input_norms(model, modules, batches, _lm_forward)
    UnstructuredPruner(sparsity=0.5, importance="wanda", batches=batches, forward=_lm_forward).prune_to_(model, 1.0)
    for mod, norm in zip(modules, norms, strict=True):
        w = as_out_in(mod, mod.weight_orig.detach()).abs()
        keep = as_out_in(mod, mod.weight_mask.bool())
        assert torch.all(keep.sum(1) == w.shape[1] - round(0.5 * w.shape[1]))  # half of every row
        score = w * norm[None, :]
        kept_min = score.masked_fill(~keep, float("inf")).min(1).values
        dropped_max = score.masked_fill(keep, -1.0).max(1).values
        assert torch.all(kept_min >= dropped_max)  # within a row, every kept weight outscores every dropped one


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_wanda_stage_prunes_one_shot_at_a_sparsity_and_two_four(family, text_data_dir, tiny_lm_dirs, tmp_path):
    from compress.tasks.causal_lm.model import load_causal_lm

    teacher, tok = load_causal_lm(tiny_lm_dirs[family])
    data_cfg = TextDataConfig(
        train=text_data_dir / "train.txt", dev=text_data_dir / "dev.txt", documents="line", block_size=32
    )
    data = load_text_data(data_cfg)
    for cfg, target in (
        (PruneConfig(sparsity=0.6, importance="wanda", epochs=0, batch_size=8, calibration_batches=2), 0.6),
        (PruneConfig(method="n:m", importance="wanda", epochs=0, batch_size=8, calibration_batches=2), 0.5),
    ):
        res = prune_lm(teacher, tok, teacher, cfg, data, data_cfg, seed=0, work_dir=tmp_path / cfg.method)
        assert res.metrics["sparsity_prunable"] == pytest.approx(target, abs=0.01)
        assert res.metrics["importance"] == "wanda" and res.metrics["dev_perplexity_torch"] > 1

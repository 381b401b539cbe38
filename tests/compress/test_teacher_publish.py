"""A teacher trained until convergence and published as a model directory with its card (`make teacher-lm`)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl

from compress.errors import RecipeError
from compress.recipe import load_recipe
from compress.training import StopWhenConverged
from tests.lm_fixtures import write_lm_recipe, write_text_data


def _epoch(cb: StopWhenConverged, epoch: int, loss: float) -> TrainerControl:
    state, control = SimpleNamespace(epoch=float(epoch), global_step=10 * epoch), TrainerControl()
    cb.on_epoch_end(None, state, control)
    assert control.should_evaluate
    cb.on_evaluate(None, state, control, metrics={"eval_loss": loss})
    return control


def test_training_stops_after_the_first_epoch_that_gains_less_than_the_bound():
    cb = StopWhenConverged(0.02)
    # perplexity 100 -> 80 (20% gain) -> 79 (1.25% gain): stop after epoch 3, not before
    assert not _epoch(cb, 1, torch.log(torch.tensor(100.0)).item()).should_training_stop
    assert not _epoch(cb, 2, torch.log(torch.tensor(80.0)).item()).should_training_stop
    assert _epoch(cb, 3, torch.log(torch.tensor(79.0)).item()).should_training_stop
    assert cb.converged and [round(c["heldout_perplexity"]) for c in cb.curve] == [100, 80, 79]
    assert cb.curve[0]["gain"] is None and cb.curve[1]["gain"] == pytest.approx(0.2)


def test_a_last_epoch_cut_short_is_recorded_but_never_called_convergence():
    cb = StopWhenConverged(0.02)
    _epoch(cb, 1, 5.0)
    state, control = SimpleNamespace(epoch=1.5, global_step=15), TrainerControl()
    cb.on_epoch_end(None, state, control)
    cb.on_evaluate(None, state, control, metrics={"eval_loss": 4.999})  # half an epoch gains 0.1%
    assert not control.should_training_stop and not cb.converged
    assert cb.curve[-1]["whole_epoch"] is False and cb.curve[0]["whole_epoch"] is True


def test_the_control_reads_what_its_variant_read():
    from compress.tasks.causal_lm.control import blocks_seen

    assert blocks_seen(0.5, None, 16, 1000) == 500
    assert blocks_seen(1.0, 200, 16, 1000) == 3200  # max_steps overrides epochs, the data repeated


def test_evaluations_between_epochs_do_not_count_as_epochs():
    cb = StopWhenConverged(0.5)
    _epoch(cb, 1, 5.0)
    control = TrainerControl()
    cb.on_evaluate(None, SimpleNamespace(epoch=1.5, global_step=15), control, metrics={"eval_loss": 4.99})
    assert not control.should_training_stop and len(cb.curve) == 1


def test_the_rule_needs_a_held_out_slice_and_a_teacher_to_train(tmp_path):
    data = write_text_data(tmp_path / "data")
    bad = write_lm_recipe(tmp_path / "a.yaml", data, teacher={"min_epoch_gain": 0.02}, data={"holdout_fraction": 0})
    with pytest.raises(RecipeError, match="teacher.min_epoch_gain: measured on held-out train pages, but data.holdout"):
        load_recipe(bad)


def test_publish_writes_a_float16_model_directory_with_its_card_and_record(tmp_path):
    from compress.tasks.causal_lm.model import load_causal_lm
    from compress.tasks.causal_lm.publish import main

    data = write_text_data(tmp_path / "data")
    recipe = write_lm_recipe(
        tmp_path / "teacher.yaml",
        data,
        teacher={"epochs": 3, "min_epoch_gain": 0.9},  # any epoch gains less than 90%: stops after epoch 2
        data={"holdout_fraction": 0.1},
    )
    out = tmp_path / "models" / "tiny-teacher"
    assert main([str(recipe), str(out)]) == 0
    record = json.loads((out / "training.json").read_text())
    m = record["metrics_float32"]
    assert m["converged"] is True and [c["epoch"] for c in m["heldout_curve"]] == [1.0, 2.0]
    assert m["epochs_trained"] == 2.0 and record["corpus"]["train"]["sha256"] and record["commit"]
    # stored as float16; what a user loads measures within rounding of the float32 weights
    raw = (out / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F16"}
    assert record["metrics_stored"]["dev_perplexity_torch"] == pytest.approx(m["dev_perplexity_torch"], rel=1e-2)
    model, _ = load_causal_lm(out, "teacher.path")
    assert model.config.num_hidden_layers == 4
    removal = record["layer_removal"]
    assert set(removal["without"]) == {"0", "1", "2", "3"} and removal["perplexity"] > 1
    assert removal["every_layer_needed"] == (min(removal["without"].values()) > removal["perplexity"])
    card = (out / "README.md").read_text()
    assert "stopped after the epoch that lowered held-out perplexity by less than 90%" in card
    assert "| 2 |" in card and record["corpus"]["dev"]["sha256"] in card and "without one (layer 0: " in card
    # the card can be rewritten from the record alone
    (out / "README.md").unlink()
    assert main([str(recipe), str(out), "--card-only"]) == 0 and (out / "README.md").read_text() == card


def test_publish_refuses_a_recipe_that_trains_nothing(tmp_path, tiny_lm_dirs, capsys):
    from compress.tasks.causal_lm.publish import main

    data = write_text_data(tmp_path / "data")
    recipe = write_lm_recipe(tmp_path / "r.yaml", data, teacher={"path": str(tiny_lm_dirs["llama"])})
    assert main([str(recipe), str(tmp_path / "out")]) == 2
    assert "teacher.path is set; publish pretrains a teacher" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

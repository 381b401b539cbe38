"""Distill stage: config, hold-out selection, per-batch teacher only when needed, narrow and trimmed students."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from compress.modeling import default_attention_map, default_hidden_map, load_classifier
from compress.recipe import RecipeError
from compress.tasks.classification.data import Split, TaskData, encode
from compress.tasks.classification.distill import DistillConfig, distill
from compress.training import predict_logits, train, training_args
from compress.vocab import TrimVocabConfig


@pytest.fixture(scope="module")
def task() -> TaskData:
    from tests.conftest import make_corpus

    c = make_corpus()

    def split(rows):
        return Split([t for t, _ in rows], [int(y) for _, y in rows])

    # The last 8 train rows are the held-out slice (what load_task_data carves with data.holdout_fraction).
    return TaskData(split(c["train"][:56]), split(c["dev"]), split(c["test"]), ["0", "1"], split(c["train"][56:]))


@pytest.fixture(scope="module")
def teacher(trained_classifier_dir, task):
    model, tokenizer = load_classifier(trained_classifier_dir)
    model.eval()
    logits = predict_logits(model, tokenizer, encode(tokenizer, task.train, 32))
    return model, tokenizer, logits


def _config(**kw) -> DistillConfig:
    base = dict(layers=[0, 2], epochs=2, batch_size=8, learning_rate=3e-3)
    return DistillConfig(**{**base, **kw})


@pytest.fixture
def count_calls():
    """Count forward passes of one model object (not of the copies a student is made from)."""
    handles = []

    def start(model) -> list[int]:
        calls = [0]

        def hook(module, *_):
            calls[0] += module is model

        handles.append(model.register_forward_hook(hook))
        return calls

    yield start
    for h in handles:
        h.remove()


# ---- pure parts ----


def test_default_maps_follow_the_kept_layers():
    # Student layer k stands in for teacher layers layers[k]..layers[k+1]-1; the last ends where the teacher does.
    assert default_hidden_map([0, 2, 4], 6) == [(0, 0), (1, 2), (2, 4), (3, 6)]
    assert default_hidden_map([1, 3], 4) == [(0, 1), (1, 3), (2, 4)]
    assert default_attention_map([1, 3]) == [(0, 1), (1, 3)]


def test_config_forbids_unknown_keys_and_checks_bounds():
    with pytest.raises(ValidationError, match="hidden_weigth"):
        DistillConfig(hidden_weigth=1.0)
    with pytest.raises(ValidationError, match="trim_vocab.min_frequency"):
        DistillConfig(trim_vocab={"enabled": True, "min_frequency": 0})
    with pytest.raises(ValidationError, match="hidden_layer_map"):
        DistillConfig(hidden_layer_map=[[0, -1]])
    cfg = DistillConfig(layers=[4, 0, 2], hidden_layer_map=[[1, 2], [2, 4]])
    assert cfg.layers == [0, 2, 4] and cfg.hidden_layer_map == [(1, 2), (2, 4)]


def test_the_recipe_section_is_the_distill_config(teacher, task, tmp_path):
    from compress.tasks.classification.config import DistillConfig as RecipeDistill

    assert RecipeDistill is DistillConfig
    model, tokenizer, logits = teacher
    old = RecipeDistill(layers=[0, 2], epochs=1, batch_size=8, learning_rate=3e-3)
    res = distill(model, tokenizer, logits, old, task, seed=0, max_length=32, work_dir=tmp_path, log=lambda _: None)
    assert res.metrics["holdout_examples"] == 8  # the task's held-out slice
    assert res.tokenizer is tokenizer


def test_layer_maps_out_of_range_are_recipe_errors(teacher, task, tmp_path):
    model, tokenizer, logits = teacher
    with pytest.raises(RecipeError, match="distill.hidden_layer_map"):
        distill(
            model,
            tokenizer,
            logits,
            _config(hidden_weight=1, hidden_layer_map=[[3, 1]]),
            task,
            seed=0,
            max_length=32,
            work_dir=tmp_path,
        )
    with pytest.raises(RecipeError, match="distill.relation_heads"):
        distill(
            model,
            tokenizer,
            logits,
            _config(value_relation_weight=1, relation_heads=3),
            task,
            seed=0,
            max_length=32,
            work_dir=tmp_path,
        )


# ---- training ----


def test_logits_only_uses_the_cache_and_never_runs_the_teacher(teacher, task, tmp_path, count_calls):
    model, tokenizer, logits = teacher
    calls = count_calls(model)
    res = distill(
        model, tokenizer, logits, _config(), task, seed=0, max_length=32, work_dir=tmp_path, log=lambda _: None
    )
    assert calls[0] == 0
    assert res.metrics["loss"]["teacher_per_batch"] is False


def test_internal_losses_run_the_teacher_per_batch_and_the_student_learns(teacher, task, tmp_path, count_calls):
    model, tokenizer, logits = teacher
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    calls = count_calls(model)
    lines = []
    cfg = _config(hidden_weight=1.0, attention_weight=1.0, value_relation_weight=1.0, epochs=3)
    res = distill(model, tokenizer, logits, cfg, task, seed=0, max_length=32, work_dir=tmp_path, log=lines.append)
    steps = 3 * -(-(64 - 8) // 8)
    assert calls[0] == steps  # once per training batch, never for evaluation
    m = res.metrics
    assert m["loss"]["teacher_per_batch"] and m["loss"]["hidden_layer_map"] == [[0, 0], [1, 2], [2, 4]]
    assert m["holdout_examples"] == 8 and m["best_step"] is not None
    assert m["dev_accuracy_torch"] >= 0.9 and m["test_accuracy_torch"] >= 0.9
    assert "MACs/token" in lines[0] and m["macs_per_token"] < m["teacher_macs_per_token"]
    assert res.model.training is False
    # The teacher is as it was: weights, requires_grad flags, eval mode.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training


def test_narrow_student_with_smaller_hidden_trains_projections_that_are_not_saved(teacher, task, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model, tokenizer, logits = teacher
    cfg = _config(
        hidden_size=16, heads=2, intermediate_size=32, hidden_weight=1.0, value_relation_weight=1.0, relation_heads=2
    )
    res = distill(model, tokenizer, logits, cfg, task, seed=0, max_length=32, work_dir=tmp_path, log=lambda _: None)
    assert res.metrics["sizes"]["student"]["hidden_size"] == 16
    res.model.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert set(reloaded.state_dict()) == set(res.model.state_dict())
    assert not any("projection" in k for k in res.model.state_dict())


def test_training_puts_back_the_best_held_out_weights(teacher, task, tmp_path):
    from compress.modeling import build_student

    model, tokenizer, logits = teacher
    train_set = encode(tokenizer, task.train, 32, teacher_logits=logits)
    hold = encode(tokenizer, task.holdout, 32)
    student = build_student(model, [0])
    args = training_args(
        tmp_path, epochs=4, batch_size=8, learning_rate=2e-2, seed=0, warmup_ratio=0.0, evaluate=True, eval_steps=2
    )
    history = train(
        student,
        tokenizer,
        train_set,
        args,
        {"temperature": 2.0, "alpha": 0.5},
        eval_dataset=hold,
    )
    evals = [h for h in history if "eval_accuracy" in h]
    best = history[-1]
    assert len(evals) >= 4
    key = max((e["eval_accuracy"], -e["eval_loss"], e["step"]) for e in evals)
    assert (best["best_eval_accuracy"], -best["best_eval_loss"], best["best_step"]) == key
    # The model now is the one that scored best, not the last one.
    out = predict_logits(student, tokenizer, hold)
    assert float((out.argmax(-1) == np.asarray(hold.labels)).mean()) == best["best_eval_accuracy"]
    loss = F.cross_entropy(torch.as_tensor(out), torch.as_tensor(hold.labels)).item()
    assert loss == pytest.approx(best["best_eval_loss"], rel=1e-4)


def test_trimmed_vocabulary_ships_with_the_student(teacher, task, tmp_path):
    model, tokenizer, logits = teacher
    cfg = _config(trim_vocab=TrimVocabConfig(enabled=True, keep_chars=False))
    res = distill(model, tokenizer, logits, cfg, task, seed=0, max_length=32, work_dir=tmp_path, log=lambda _: None)
    v = res.metrics["vocab"]
    assert len(res.tokenizer) == v["vocab_size_after"] <= v["vocab_size_before"] == len(tokenizer)
    assert res.model.config.vocab_size == len(res.tokenizer)
    assert v["dev_unk_rate_after"] == 0.0  # the tiny corpus's dev words all occur in train
    assert res.metrics["dev_accuracy_torch"] >= 0.9
    # Every dev word's pieces are kept, so the trimmed student computes what the untrimmed one did.
    assert v["dev_accuracy_untrimmed"] == res.metrics["dev_accuracy_torch"]
    assert v["test_accuracy_untrimmed"] is not None


def test_albert_student_distils_by_application(task, tmp_path):
    from tests.compress.test_modeling import tiny_family_model
    from tests.conftest import _tiny_tokenizer

    tokenizer = _tiny_tokenizer(tmp_path)
    teacher_model = tiny_family_model("albert")
    logits = np.random.default_rng(0).normal(size=(len(task.train.texts), 2)).astype(np.float32)
    cfg = _config(layers=[1, 3], hidden_weight=1.0, attention_weight=1.0, value_relation_weight=1.0, epochs=1)
    res = distill(
        teacher_model, tokenizer, logits, cfg, task, seed=0, max_length=32, work_dir=tmp_path, log=lambda _: None
    )
    assert res.model.config.num_hidden_layers == 2
    assert res.metrics["loss"]["hidden_layer_map"] == [[0, 1], [1, 3], [2, 4]]
    assert res.metrics["loss"]["attention_layer_map"] == [[0, 1], [1, 3]]
    assert np.isfinite(res.metrics["train_loss_final"])


def test_the_config_imports_without_torch():
    # compress.recipe can take DistillConfig from here and `edge-compress check` stays quick.
    import subprocess
    import sys

    code = (
        "import sys, compress.tasks.classification.distill; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_augmented_copies_are_labelled_by_the_teacher_and_trained_on(teacher, task, tmp_path, count_calls):
    from compress.tasks.classification.augment import AugmentConfig

    model, tokenizer, logits = teacher
    lines = []
    cfg = _config(augment=AugmentConfig(copies=2, mask=0.2, replace=0.2, ngram=0.3), epochs=1)
    res = distill(model, tokenizer, logits, cfg, task, seed=0, max_length=32, work_dir=tmp_path, log=lines.append)
    aug = res.metrics["augment"]
    assert 0 < aug["examples"] <= 2 * len(task.train.texts)
    assert 0 <= aug["label_differs_from_source"] <= 1
    assert any("augmented" in line for line in lines)
    plain = distill(model, tokenizer, logits, _config(epochs=1), task, seed=0, max_length=32, work_dir=tmp_path / "p")
    assert plain.metrics["augment"] is None
    assert res.metrics["train_examples"] == len(task.train.texts) + aug["examples"]
    assert res.metrics["train_steps"] > plain.metrics["train_steps"]  # the copies were trained on

"""Distill stage: a student built from the teacher, trained to match it, selected on held-out train examples.

The student is a subset of the teacher's layers, optionally with fewer heads, a narrower FFN or a smaller
hidden size (`compress.modeling.build_student`). It learns from the teacher's soft targets (cached logits)
and the labels, and optionally from the teacher's hidden states, attention maps and last-layer value
relations (the teacher then runs on every batch). A slice of the *train* split is held out to pick the best
weights; dev and test are only ever measured. Optionally the train split is augmented with copies the
teacher labels (`compress.tasks.classification.augment`). Optionally the vocabulary is trimmed to the pieces the train
split uses (`compress.vocab`), after training, so that the teacher and the student saw the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compress.tasks.classification.config import DistillConfig


@dataclass
class DistillResult:
    model: object
    metrics: dict = field(default_factory=dict)
    tokenizer: object = None  # the student's tokenizer: the teacher's, or its trimmed copy


def _loss_spec(cfg: DistillConfig, student, teacher):
    from compress.errors import RecipeError
    from compress.modeling import (
        check_layer_map,
        default_attention_map,
        default_hidden_map,
        num_layers,
        value_projection,
    )
    from compress.training import LossSpec

    n_s, n_t = num_layers(student), num_layers(teacher)
    hidden_map = check_layer_map(
        "distill",
        "hidden_layer_map", cfg.hidden_layer_map or default_hidden_map(cfg.layers, n_t), n_s, n_t
    )
    attention_map = check_layer_map(
        "distill",
        "attention_layer_map", cfg.attention_layer_map or default_attention_map(cfg.layers), n_s - 1, n_t - 1
    )
    relation_heads = cfg.relation_heads or teacher.config.num_attention_heads
    if cfg.value_relation_weight > 0:
        widths = {"student": value_projection(student).out_features, "teacher": value_projection(teacher).out_features}
        bad = {k: w for k, w in widths.items() if w % relation_heads}
        if bad:
            raise RecipeError(
                f"distill.relation_heads = {relation_heads}: must divide the value widths {widths}; {bad} do not"
            )
    return LossSpec(
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        hidden_weight=cfg.hidden_weight,
        attention_weight=cfg.attention_weight,
        value_relation_weight=cfg.value_relation_weight,
        hidden_layer_map=tuple(hidden_map),
        attention_layer_map=tuple(attention_map),
        relation_heads=relation_heads,
    )


def _build_student(teacher, cfg: DistillConfig, seed: int):
    """Seed torch and build the student from the teacher's layers."""
    import torch

    from compress.modeling import build_student

    torch.manual_seed(seed)
    return build_student(
        teacher,
        cfg.layers,
        heads=cfg.heads,
        intermediate_size=cfg.intermediate_size,
        hidden_size=cfg.hidden_size,
        hidden_init=cfg.hidden_init,
        seed=seed,
    )


def _training_sets(
    teacher,
    tokenizer,
    teacher_logits: np.ndarray,
    cfg: DistillConfig,
    data,
    *,
    seed: int,
    max_length: int,
    log: Callable[[str], None],
):
    """The encoded train set (augmented when asked), the encoded hold-out set (or None) and the augmentation metrics."""
    from compress.tasks.classification.augment import augment_train
    from compress.tasks.classification.data import encode

    train_split, train_logits, augment_metrics = data.train, teacher_logits, None
    if cfg.augment.copies > 0:
        train_split, train_logits, augment_metrics = augment_train(
            teacher, tokenizer, data.train, teacher_logits, cfg.augment, seed=seed, max_length=max_length
        )
        log(
            f"    augmented: {augment_metrics['examples']:,} teacher-labelled copies of {len(data.train.texts):,} "
            f"train texts; the teacher labels {augment_metrics['label_differs_from_source']:.1%} of them unlike "
            "their source"
        )
    train_set = encode(tokenizer, train_split, max_length, teacher_logits=train_logits)
    hold_set = encode(tokenizer, data.holdout, max_length) if data.holdout is not None else None
    return train_set, hold_set, augment_metrics


def _train_student(
    student,
    teacher,
    tokenizer,
    spec,
    cfg: DistillConfig,
    train_set,
    hold_set,
    *,
    seed: int,
    work_dir: Path,
    log: Callable[[str], None],
) -> tuple[dict, int, list]:
    """Log the sizes, then train the student; returns the sizes, the mean train length and the training history."""
    from compress.modeling import describe
    from compress.training import train, training_args

    args = training_args(
        work_dir,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        seed=seed,
        warmup_ratio=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        evaluate=hold_set is not None,
        eval_steps=cfg.eval_steps,
    )
    seq_len = max(1, round(float(np.mean(train_set.lengths))))
    sizes = {"teacher": describe(teacher, seq_len), "student_init": describe(student, seq_len)}
    t, s = sizes["teacher"], sizes["student_init"]
    log(
        f"    student {s['params']:,} params, {s['macs_per_token'] / 1e6:.2f}M MACs/token | teacher {t['params']:,} "
        f"params, {t['macs_per_token'] / 1e6:.2f}M MACs/token (at {seq_len} tokens, the mean train length)"
    )
    student.train()
    history = train(
        student,
        tokenizer,
        train_set,
        args,
        distill=spec,
        eval_dataset=hold_set,
        teacher=teacher if spec.needs_teacher else None,
    )
    return sizes, seq_len, history


def _split_accuracy(model, tok, split, max_length: int) -> float | None:
    """Accuracy of `model` on a split, or None when the split is absent."""
    from compress.tasks.classification.data import encode
    from compress.training import accuracy, predict_logits

    if split is None:
        return None
    return accuracy(predict_logits(model, tok, encode(tok, split, max_length)), split.labels)


def _trim(student, tokenizer, cfg: DistillConfig, data, max_length: int, log: Callable[[str], None]):
    """Trim the student's vocabulary to the train split's pieces; returns the model, tokenizer and metrics."""
    from compress.vocab import trim_vocab

    evals = {"dev": data.dev.texts, **({"test": data.test.texts} if data.test is not None else {})}
    trimmed = trim_vocab(student, tokenizer, data.train.texts, cfg.trim_vocab, eval_texts=evals)
    # What trimming cost, on the same sentences: the untrimmed student's accuracy before it is dropped.
    for name in ("dev", "test"):
        split = getattr(data, name)
        trimmed.metrics[f"{name}_accuracy_untrimmed"] = _split_accuracy(student, tokenizer, split, max_length)
    vocab_metrics = trimmed.metrics
    log(
        f"    vocabulary {vocab_metrics['vocab_size_before']:,} -> {vocab_metrics['vocab_size_after']:,} pieces;"
        f" dev [UNK] rate {vocab_metrics['dev_unk_rate_before']:.4%} -> {vocab_metrics['dev_unk_rate_after']:.4%}"
    )
    return trimmed.model, trimmed.tokenizer, vocab_metrics


def _loss_record(spec) -> dict:
    """The distillation loss's settings, as recorded in the metrics."""
    return {
        "temperature": spec.temperature,
        "alpha": spec.alpha,
        "hidden_weight": spec.hidden_weight,
        "attention_weight": spec.attention_weight,
        "value_relation_weight": spec.value_relation_weight,
        "hidden_layer_map": [list(p) for p in spec.hidden_layer_map],
        "attention_layer_map": [list(p) for p in spec.attention_layer_map],
        "relation_heads": spec.relation_heads,
        "teacher_per_batch": spec.needs_teacher,
    }


def distill(
    teacher,
    tokenizer,
    teacher_logits: np.ndarray,
    config,
    data,
    *,
    seed: int,
    max_length: int,
    work_dir: Path,
    log: Callable[[str], None] = print,
) -> DistillResult:
    """Build the student from `teacher`, train it against the teacher, keep the best held-out weights.

    Args:
        teacher: the fine-tuned teacher classifier (not modified).
        tokenizer: the teacher's tokenizer.
        teacher_logits: (N_train, C) teacher logits on the train split, computed once by the teacher stage.
        config: the student and its training (the recipe's `distill` section).
        data: the task's splits; dev and test are only measured.
        seed: seeds the student's fresh parts, the hold-out split and the Trainer.
        max_length: tokenizer truncation.
        work_dir: scratch directory for the Trainer.
        log: where the size comparison line goes.

    Returns:
        The student, its metrics (dev and test accuracy, held-out accuracy of the kept weights and the step
        they are from, parameters and MACs/token of student and teacher, vocabulary trimming figures) and the
        student's tokenizer (the teacher's, or the trimmed one).
    """
    from compress.distributed import describe_runtime
    from compress.modeling import describe

    cfg = config
    student = _build_student(teacher, cfg, seed)
    spec = _loss_spec(cfg, student, teacher)
    train_set, hold_set, augment_metrics = _training_sets(
        teacher, tokenizer, teacher_logits, cfg, data, seed=seed, max_length=max_length, log=log
    )
    sizes, seq_len, history = _train_student(
        student, teacher, tokenizer, spec, cfg, train_set, hold_set, seed=seed, work_dir=work_dir, log=log
    )
    student_tokenizer, vocab_metrics = tokenizer, None
    if cfg.trim_vocab.enabled:
        student, student_tokenizer, vocab_metrics = _trim(student, tokenizer, cfg, data, max_length, log)
    student.eval()
    sizes["student"] = describe(student, seq_len)

    t = sizes["teacher"]
    best = next((h for h in reversed(history) if "best_eval_accuracy" in h), {})
    metrics = {
        "dev_accuracy_torch": _split_accuracy(student, student_tokenizer, data.dev, max_length),
        "test_accuracy_torch": _split_accuracy(student, student_tokenizer, data.test, max_length),
        "holdout_examples": len(hold_set) if hold_set is not None else 0,
        "holdout_accuracy": best.get("best_eval_accuracy"),
        "best_step": best.get("best_step"),
        "params": sizes["student"]["params"],
        "teacher_params": t["params"],
        "macs_per_token": sizes["student"]["macs_per_token"],
        "teacher_macs_per_token": t["macs_per_token"],
        "layers": sizes["student"]["layers"],
        "layer_indices": list(cfg.layers),
        "sizes": sizes,
        "loss": _loss_record(spec),
        "vocab": vocab_metrics,
        "augment": augment_metrics,
        "train_examples": len(train_set),
        "train_steps": max((h.get("step", 0) for h in history), default=0),
        "runtime": describe_runtime(),
        "train_loss_final": next((h["train_loss"] for h in reversed(history) if "train_loss" in h), None),
    }
    return DistillResult(student, metrics, student_tokenizer)

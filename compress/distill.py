"""Distill stage: a student made of a subset of the teacher's layers, trained on its soft targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from compress.data import TaskData, encode
from compress.modeling import build_student, count_parameters, num_layers
from compress.recipe import DistillConfig
from compress.training import accuracy, predict_logits, train, training_args


@dataclass
class DistillResult:
    model: object
    metrics: dict = field(default_factory=dict)


def distill(
    teacher,
    tokenizer,
    teacher_logits: np.ndarray,
    config: DistillConfig,
    data: TaskData,
    *,
    seed: int,
    max_length: int,
    work_dir: Path,
) -> DistillResult:
    """Build the student from `config.layers` of `teacher` and train it on cached teacher logits + labels.

    The teacher itself is not modified (the student is a deep copy).
    """
    torch.manual_seed(seed)
    student = build_student(teacher, config.layers)
    train_set = encode(tokenizer, data.train, max_length, teacher_logits=teacher_logits)
    args = training_args(
        work_dir,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=seed,
        warmup_ratio=config.warmup_ratio,
        weight_decay=config.weight_decay,
    )
    student.train()
    history = train(
        student,
        tokenizer,
        train_set,
        args,
        distill={"temperature": config.temperature, "alpha": config.alpha},
    )
    dev_logits = predict_logits(student, tokenizer, encode(tokenizer, data.dev, max_length), desc="student dev")
    return DistillResult(
        student,
        {
            "dev_accuracy_torch": accuracy(dev_logits, data.dev.labels),
            "params": count_parameters(student),
            "teacher_params": count_parameters(teacher),
            "layers": num_layers(student),
            "layer_indices": list(config.layers),
            "train_loss_final": next((h["train_loss"] for h in reversed(history) if "train_loss" in h), None),
        },
    )

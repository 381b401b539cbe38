"""Teacher stage: fine-tune a pretrained encoder on the task, or take a fine-tuned one as it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from compress.errors import RecipeError
from compress.modeling import base_model_dir, count_parameters, load_classifier, num_layers
from compress.tasks.classification.config import TeacherConfig
from compress.tasks.classification.data import TaskData, encode
from compress.training import accuracy, predict_logits, train, training_args


@dataclass
class TeacherResult:
    model: object
    tokenizer: object
    train_logits: np.ndarray  # (N_train, C): cached soft targets for the later stages
    metrics: dict = field(default_factory=dict)


def train_teacher(
    config: TeacherConfig, data: TaskData, *, seed: int, max_length: int, work_dir: Path
) -> TeacherResult:
    """Fine-tune `config.base` on the train split (or load `config.path`), then cache its train logits.

    Returns:
        The teacher, its tokenizer, its logits on train (computed once here so that distillation never
        runs the teacher again) and metrics: dev accuracy, parameters, layers, whether it was trained.
    """
    torch.manual_seed(seed)
    if config.path is not None:
        model, tokenizer = load_classifier(config.path)
        if model.config.num_labels != len(data.label_names):
            raise RecipeError(
                f"teacher.path = {str(config.path)!r}: the model has {model.config.num_labels} labels, "
                f"the data has {len(data.label_names)} ({data.label_names})"
            )
        history = []
    else:
        model, tokenizer = load_classifier(base_model_dir(config.base), data.label_names)
        train_set = encode(tokenizer, data.train, max_length)
        args = training_args(
            work_dir,
            epochs=config.epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            seed=seed,
            warmup_ratio=config.warmup_ratio,
            weight_decay=config.weight_decay,
        )
        history = train(model, tokenizer, train_set, args)
    model.eval()
    train_logits = predict_logits(model, tokenizer, encode(tokenizer, data.train, max_length), desc="teacher logits")
    dev_logits = predict_logits(model, tokenizer, encode(tokenizer, data.dev, max_length), desc="teacher dev")
    metrics = {
        "trained": config.path is None,
        "dev_accuracy_torch": accuracy(dev_logits, data.dev.labels),
        "train_accuracy_torch": accuracy(train_logits, data.train.labels),
        "params": count_parameters(model),
        "layers": num_layers(model),
        "train_loss_final": next((h["train_loss"] for h in reversed(history) if "train_loss" in h), None),
    }
    return TeacherResult(model, tokenizer, train_logits, metrics)

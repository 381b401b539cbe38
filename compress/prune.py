"""Prune stage: global unstructured magnitude pruning of the encoder's Linear weights.

Masks come from torch.nn.utils.prune (global L1 ranking across all encoder matrices), a short fine-tune
under the distillation loss lets the remaining weights compensate, and the masks are then made permanent.
Unstructured zeros shrink the compressed file; ONNX Runtime's dense CPU kernels do not skip them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from compress.data import TaskData, encode
from compress.modeling import count_parameters, num_layers
from compress.recipe import PruneConfig
from compress.training import accuracy, predict_logits, train, training_args


@dataclass
class PruneResult:
    model: object
    metrics: dict = field(default_factory=dict)


def prunable_linears(model) -> list[tuple[str, nn.Linear]]:
    """The encoder's Linear layers (attention projections and FFN); embeddings and the head stay dense."""
    return [
        (name, m)
        for name, m in model.base_model.named_modules()
        if isinstance(m, nn.Linear) and (".layer." in f".{name}")
    ]


def measure_sparsity(model) -> dict:
    """Share of exact zeros per prunable matrix, per encoder layer, over all prunable weights and the model."""
    per_matrix, per_layer = {}, {}
    zeros_total = numel_total = 0
    for name, m in prunable_linears(model):
        w = m.weight.detach()
        z, n = int((w == 0).sum()), w.numel()
        per_matrix[name] = z / n
        layer = name.split(".layer.")[1].split(".")[0] if ".layer." in name else name
        lz, ln = per_layer.get(layer, (0, 0))
        per_layer[layer] = (lz + z, ln + n)
        zeros_total += z
        numel_total += n
    all_zero = sum(int((p == 0).sum()) for p in model.parameters())
    all_numel = count_parameters(model)
    return {
        "sparsity_prunable": zeros_total / max(numel_total, 1),
        "sparsity_model": all_zero / all_numel,
        "nonzero_params": all_numel - all_zero,
        "per_layer": {k: z / n for k, (z, n) in per_layer.items()},
        "per_matrix": per_matrix,
    }


def prune(
    model,
    tokenizer,
    teacher_logits: np.ndarray,
    config: PruneConfig,
    data: TaskData,
    *,
    seed: int,
    max_length: int,
    work_dir: Path,
) -> PruneResult:
    """Prune a copy of `model` to `config.sparsity`, fine-tune with masks held, make the masks permanent."""
    torch.manual_seed(seed)
    model = copy.deepcopy(model)
    params = [(m, "weight") for _, m in prunable_linears(model)]
    if config.sparsity > 0:
        torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=config.sparsity)
    before = accuracy(
        predict_logits(model, tokenizer, encode(tokenizer, data.dev, max_length), desc="pruned dev"),
        data.dev.labels,
    )
    if config.epochs > 0:
        args = training_args(
            work_dir,
            epochs=config.epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            seed=seed,
            warmup_ratio=0.0,
        )
        model.train()
        train(
            model,
            tokenizer,
            encode(tokenizer, data.train, max_length, teacher_logits=teacher_logits),
            args,
            distill={"temperature": config.temperature, "alpha": config.alpha},
        )
    if config.sparsity > 0:
        for m, name in params:
            torch_prune.remove(m, name)
    model.eval()
    dev = predict_logits(model, tokenizer, encode(tokenizer, data.dev, max_length), desc="pruned dev")
    return PruneResult(
        model,
        {
            "target_sparsity": config.sparsity,
            **measure_sparsity(model),
            "dev_accuracy_torch_before_finetune": before,
            "dev_accuracy_torch": accuracy(dev, data.dev.labels),
            "params": count_parameters(model),
            "layers": num_layers(model),
        },
    )

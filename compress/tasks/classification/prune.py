"""Prune stage: unstructured, N:M or structured (heads and FFN neurons) pruning of the encoder.

- unstructured: the weights of the encoder's Linear layers with the lowest importance are masked, ranked over
  all matrices ("global") or within each matrix ("layer"). The zeros shrink the compressed file; ONNX
  Runtime's dense CPU kernels do not skip them, so latency does not change.
- n:m: n of every m consecutive weights along each row are kept (2:4 is what sparse tensor cores run);
  on CPUs it is unstructured sparsity with a pattern.
- structured: whole attention heads and FFN neurons are removed (`compress.structured`); the matrices
  shrink and the model runs faster on any backend.

Masks come from torch.nn.utils.prune and are held through a short fine-tune under the distillation loss
(optionally with a hidden-state loss to the unpruned model, layer by layer: `hidden_weight`),
either set once up front ("oneshot") or tightened on the cubic schedule of Zhu & Gupta (2017) while the
fine-tune runs ("cubic", `compress.schedule.GradualPruningCallback`). Importance is weight magnitude or
first-order Taylor |w * dL/dw| on a few training batches. At the end the masks are made permanent (and, for
structured pruning, the masked heads and neurons physically removed).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from compress.batches import EncodedDataset, PadCollator
from compress.losses import distillation_loss
from compress.masks import UnstructuredPruner, pruning_record
from compress.modeling import count_parameters, num_layers
from compress.schedule import GradualPruningCallback
from compress.structured import (
    StructuredPruner,
    compact_,
    ffn_sizes,
    heads_per_layer,
    macs_per_token,
    masked_selection,
    remove_masks_,
)
from compress.tasks.classification.config import PruneConfig
from compress.tasks.classification.data import TaskData, encode
from compress.training import LossSpec, accuracy, predict_logits, train, training_args


@dataclass
class PruneResult:
    model: object
    metrics: dict = field(default_factory=dict)


# --- unstructured mask selection (pure) ----------------------------------------------------------------------


# --- the stage -----------------------------------------------------------------------------------------------


def _distill_loss(model, batch: dict, *, temperature: float, alpha: float) -> torch.Tensor:
    inputs = dict(batch)  # the same batches are scored at every update: leave them whole
    teacher, labels = inputs.pop("teacher_logits"), inputs.pop("labels")
    return distillation_loss(model(**inputs).logits, teacher, labels, temperature, alpha)


def _score_batches(tokenizer, train_set: EncodedDataset, s: PruneConfig, seed: int) -> list[dict]:
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed)).tolist()
    collate = PadCollator(tokenizer)
    chunks = [order[i : i + s.batch_size] for i in range(0, len(order), s.batch_size)][: s.taylor_batches]
    return [collate([train_set[i] for i in chunk]) for chunk in chunks]


def _pruner(s: PruneConfig, batches, loss_fn) -> UnstructuredPruner | StructuredPruner:
    common = dict(importance=s.importance, batches=batches, loss_fn=loss_fn)
    if s.method == "structured":
        return StructuredPruner(heads=s.heads, ffn=s.ffn, scope=s.scope, **common)
    if s.method == "n:m":
        return UnstructuredPruner(nm=s.nm, **common)
    return UnstructuredPruner(sparsity=s.sparsity, scope=s.scope, **common)


def _shape(model, seq_len: int) -> dict:
    return {
        "params": count_parameters(model),
        "heads_per_layer": heads_per_layer(model),
        "ffn_size": ffn_sizes(model)[0],
        "macs_per_token": macs_per_token(model, seq_len),
    }


def _start_masks_(pruner, model, tokenizer, dev_set: EncodedDataset, data: TaskData, s: PruneConfig):
    """Set the masks now (oneshot, measuring dev accuracy) or a schedule callback; returns callbacks, accuracy."""
    callbacks, accuracy_before = None, None
    if s.schedule == "oneshot":
        pruner.prune_to_(model, 1.0)
        dev = predict_logits(model, tokenizer, dev_set, desc="pruned dev")
        accuracy_before = accuracy(dev, data.dev.labels)
    else:
        callbacks = [GradualPruningCallback(pruner, start=s.start, end=s.end, every=s.every)]
    return callbacks, accuracy_before


def _fine_tune_(
    model, source, tokenizer, train_set: EncodedDataset, s: PruneConfig, *, seed: int, work_dir: Path, callbacks
) -> None:
    """Fine-tune the masked model under the distillation loss (with layer distillation from `source`)."""
    args = training_args(
        work_dir,
        epochs=s.epochs,
        batch_size=s.batch_size,
        learning_rate=s.learning_rate,
        seed=seed,
        warmup_ratio=0.0,
    )
    # Layer distillation from the unpruned model (as CoFi does): the pruned model's hidden states are
    # pulled towards its own source's, layer for layer, while the logits follow the teacher's cache.
    n = num_layers(model)
    spec = LossSpec(
        temperature=s.temperature,
        alpha=s.alpha,
        hidden_weight=s.hidden_weight,
        hidden_layer_map=tuple((i, i) for i in range(n + 1)),
    )
    model.train()
    train(
        model,
        tokenizer,
        train_set,
        args,
        distill=spec,
        teacher=source if spec.needs_teacher else None,
        callbacks=callbacks,
    )


def _make_permanent_(model, pruner, s: PruneConfig, callbacks):
    """Bring the masks to their targets if training did not, then make them permanent; returns the selection."""
    if callbacks:
        callbacks[0].finish(model)  # training did not run (no examples): the targets hold all the same
    if s.method == "structured":
        selection = masked_selection(model)
        compact_(model)
    else:
        selection = None
        remove_masks_(model)
    return selection


def _measure(
    model,
    tokenizer,
    dev_set: EncodedDataset,
    data: TaskData,
    s: PruneConfig,
    *,
    before: dict,
    seq_len: int,
    accuracy_before: float | None,
    selection,
    callbacks,
) -> dict:
    """The pruned model's metrics: sparsity, shape before and after, dev accuracy, removed heads, schedule."""
    dev = predict_logits(model, tokenizer, dev_set, desc="pruned dev")
    after = _shape(model, seq_len)
    metrics = {
        **pruning_record(s, model),
        "target_heads": s.heads,
        "target_ffn": s.ffn,
        **after,
        "params_before": before["params"],
        "heads_per_layer_before": before["heads_per_layer"],
        "ffn_size_before": before["ffn_size"],
        "macs_per_token_before": before["macs_per_token"],
        "macs_seq_len": seq_len,
        "dev_accuracy_torch_before_finetune": accuracy_before,
        "dev_accuracy_torch": accuracy(dev, data.dev.labels),
        "hidden_weight": s.hidden_weight,
        "layers": num_layers(model),
    }
    if selection is not None:
        metrics["heads_removed"] = [list(h) for h in selection.heads]
    if callbacks:
        metrics["schedule_history"] = [list(h) for h in callbacks[0].history]
    return metrics


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
    """Prune a copy of `model`, fine-tune it with the masks held, make the pruning permanent.

    Args:
        model: a BERT-family sequence classifier; not modified.
        tokenizer: its tokenizer.
        teacher_logits: (N_train, C) cached teacher logits for the distillation fine-tune.
        config: the recipe's `prune` section for this variant.
        data: the task's splits (train for fine-tuning and Taylor scores, dev for the accuracy metrics).
        seed: for the fine-tune and the choice of Taylor batches.
        max_length: tokenizer truncation.
        work_dir: where the Trainer may write.

    Returns:
        The pruned model (an ordinary Hugging Face model; structured pruning records removed heads in
        `config.pruned_heads` and the FFN size in the config) and metrics: measured sparsity overall, per
        encoder layer and per matrix; heads per layer and FFN size; parameters and encoder MACs per token
        (at the mean tokenized dev length) before and after; dev accuracy before and after the fine-tune;
        for the cubic schedule, the (step, level) of every mask update.
    """
    s = config
    torch.manual_seed(seed)
    source, model = model, copy.deepcopy(model)
    dev_set = encode(tokenizer, data.dev, max_length)
    seq_len = max(1, round(float(np.mean(dev_set.lengths))))
    before = _shape(model, seq_len)

    train_set = encode(tokenizer, data.train, max_length, teacher_logits=teacher_logits)
    loss_fn = partial(_distill_loss, temperature=s.temperature, alpha=s.alpha)
    batches = _score_batches(tokenizer, train_set, s, seed) if s.importance == "taylor" else None
    pruner = _pruner(s, batches, loss_fn)

    callbacks, accuracy_before = _start_masks_(pruner, model, tokenizer, dev_set, data, s)
    if s.epochs > 0:
        _fine_tune_(model, source, tokenizer, train_set, s, seed=seed, work_dir=work_dir, callbacks=callbacks)
    selection = _make_permanent_(model, pruner, s, callbacks)
    model.eval()
    metrics = _measure(
        model,
        tokenizer,
        dev_set,
        data,
        s,
        before=before,
        seq_len=seq_len,
        accuracy_before=accuracy_before,
        selection=selection,
        callbacks=callbacks,
    )
    return PruneResult(model, metrics)

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from compress.architectures import as_out_in, family_of, projection_modules
from compress.config import PruneConfig
from compress.data import EncodedDataset, PadCollator, TaskData, encode
from compress.losses import distillation_loss
from compress.modeling import count_parameters, num_layers
from compress.schedule import GradualPruningCallback
from compress.structured import (
    StructuredPruner,
    compact_,
    current_mask,
    effective,
    ffn_sizes,
    heads_per_layer,
    macs_per_token,
    masked_selection,
    remove_masks_,
    set_mask_,
    taylor_scores,
)
from compress.training import LossSpec, accuracy, predict_logits, train, training_args


@dataclass
class PruneResult:
    model: object
    metrics: dict = field(default_factory=dict)


def prunable_linears(model) -> list[tuple[str, nn.Module]]:
    """The attention and FFN projections inside the layers (`nn.Linear`, or GPT-2's `Conv1D`); embeddings and
    the head stay dense. Chosen by `compress.architectures.projection_modules`, a predicate over the modules."""
    return projection_modules(model)


def measure_sparsity(model) -> dict:
    """Share of exact zeros per prunable matrix, per encoder layer, over all prunable weights and the model."""
    per_matrix, per_layer = {}, {}
    zeros_total = numel_total = 0
    prefix = f"{family_of(model).layers}."
    for name, m in prunable_linears(model):
        w = effective(m).detach()
        z, n = int((w == 0).sum()), w.numel()
        per_matrix[name] = z / n
        layer = name.removeprefix(prefix).split(".")[0]
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


# --- unstructured mask selection (pure) ----------------------------------------------------------------------


def magnitude_masks(
    scores: Sequence[torch.Tensor],
    sparsity: float,
    *,
    scope: Literal["global", "layer"] = "global",
    pruned: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Keep-masks dropping the lowest-scoring round(sparsity * N) entries, over all tensors or in each.

    With `pruned` (True where an entry is pruned already), those entries are dropped first and stay
    dropped, so a schedule only tightens. Without it, "global" is the selection of
    torch.nn.utils.prune.global_unstructured with L1Unstructured (same count, same topk).

    Hand-written rather than calling global_unstructured again at every schedule step: torch's iterative
    pruning takes `amount` as a share of the weights still unpruned and stacks masks in a PruningContainer,
    whereas a schedule states the total sparsity and must re-rank the surviving weights after training moved
    them.

    Args:
        scores: importance per tensor (|w| for magnitude, |w * grad| for Taylor).
        sparsity: share of entries to drop, in [0, 1).
        scope: "global" ranks all tensors together; "layer" drops round(sparsity * n_i) in each tensor.
        pruned: per tensor, a bool tensor of entries pruned already.

    Returns:
        Per tensor, a bool mask (True = kept).
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    pruned = list(pruned) if pruned is not None else [torch.zeros_like(s, dtype=torch.bool) for s in scores]
    ranked = [s.detach().float().masked_fill(p, -1.0) for s, p in zip(scores, pruned, strict=True)]  # scores >= 0
    if scope == "layer":
        counts = [max(round(sparsity * r.numel()), int(p.sum())) for r, p in zip(ranked, pruned, strict=True)]
        return [_keep_mask(r, k) for r, k in zip(ranked, counts, strict=True)]
    if scope != "global":
        raise ValueError(f"scope must be 'global' or 'layer', not {scope!r}")
    flat = torch.cat([r.flatten() for r in ranked])
    keep = _keep_mask(flat, max(round(sparsity * flat.numel()), int(sum(p.sum() for p in pruned))))
    return [k.view_as(r) for k, r in zip(keep.split([r.numel() for r in ranked]), ranked, strict=True)]


def _keep_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        keep.view(-1)[torch.topk(scores.reshape(-1), k=k, largest=False).indices] = False
    return keep


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n highest-scoring of every m consecutive entries along the last dim (the 2:4 pattern for n=2, m=4).

    Args:
        scores: (out, in) importance of a weight matrix; `in` must be a multiple of m.
        n: entries kept per group.
        m: group size.

    Returns:
        A bool mask shaped like `scores` (True = kept), exactly n True in every group.
    """
    if not 1 <= n < m:
        raise ValueError(f"need 1 <= n < m, got n={n}, m={m}")
    if scores.shape[-1] % m:
        raise ValueError(f"last dim {scores.shape[-1]} is not a multiple of m={m}")
    groups = scores.detach().reshape(-1, m)  # (out * in / m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, torch.topk(groups, k=n, dim=1).indices, True)
    return keep.view_as(scores)


@torch.no_grad()
def input_norms(model, modules: list[nn.Module], batches, forward: Callable[[nn.Module, dict], object]):
    """The L2 norm of each input feature of each module over every token of `batches` (Wanda's ||X_j||)."""
    sums: list[torch.Tensor | None] = [None] * len(modules)

    def hook_for(k: int):
        def hook(_module, args):
            x = args[0].detach().float()
            x = x.reshape(-1, x.shape[-1]).pow(2).sum(0)
            sums[k] = x if sums[k] is None else sums[k] + x

        return hook

    hooks = [m.register_forward_pre_hook(hook_for(k)) for k, m in enumerate(modules)]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            forward(model, batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if any(x is None for x in sums):
        raise ValueError("input_norms: a module saw no input (no batches?)")
    return [x.sqrt() for x in sums]


def row_masks(scores_out_in: torch.Tensor, sparsity: float, pruned: torch.Tensor) -> torch.Tensor:
    """Keep-mask of an (out, in) score matrix dropping the round(sparsity * in) lowest entries of each row (the
    comparison group of Wanda: each output's own weights), pruned entries first."""
    ranked = scores_out_in.detach().float().masked_fill(pruned, -1.0)
    k = max(round(sparsity * ranked.shape[1]), int(pruned.sum(1).max()) if pruned.numel() else 0)
    keep = torch.ones_like(ranked, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, torch.topk(ranked, k=k, dim=1, largest=False).indices, False)
    return keep


class UnstructuredPruner:
    """Tightens weight masks of the encoder's Linear layers to `level` times the target sparsity.

    Args:
        sparsity: final share of the encoder's Linear weights zeroed (ignored with `nm`).
        scope: "global" or "layer" (see `magnitude_masks`); Wanda ranks within each output row.
        importance: "magnitude", "taylor", or "wanda" (|w| times the norm of its input over calibration batches,
            Sun et al. 2023: no gradient, no retraining needed).
        nm: (n, m) for the N:M pattern instead of a sparsity (applied in full at any level > 0).
        batches: for Taylor and Wanda: a re-iterable collection of batches.
        loss_fn: for Taylor; see `compress.structured.taylor_scores`.
        forward: for Wanda: runs the model on one batch.
    """

    def __init__(
        self,
        *,
        sparsity: float = 0.0,
        scope: Literal["global", "layer"] = "global",
        importance: Literal["magnitude", "taylor", "wanda"] = "magnitude",
        nm: tuple[int, int] | None = None,
        batches: Sequence[dict] | None = None,
        loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
        forward: Callable[[nn.Module, dict], object] | None = None,
    ):
        if importance in ("taylor", "wanda") and not batches:
            raise ValueError(f"{importance} importance needs batches")
        if importance == "wanda" and forward is None:
            raise ValueError("wanda importance needs a forward function")
        self.sparsity, self.scope, self.importance, self.nm = sparsity, scope, importance, nm
        self.batches, self.loss_fn, self.forward = batches, loss_fn, forward

    def _scores(self, model, modules: list[nn.Linear]) -> list[torch.Tensor]:
        if self.importance == "magnitude":
            return [effective(m).detach().abs() for m in modules]
        if self.importance == "wanda":
            norms = input_norms(model, modules, self.batches, self.forward)
            return [
                as_out_in(m, as_out_in(m, effective(m).detach().abs()) * n[None, :])
                for m, n in zip(modules, norms, strict=True)
            ]
        by_name = taylor_scores(model, self.batches, self.loss_fn)
        names = {m: n for n, m in model.named_modules()}
        return [by_name[names[m]] for m in modules]

    def prune_to_(self, model, level: float) -> None:
        modules = [m for _, m in prunable_linears(model)]
        pruned = [~current_mask(m) for m in modules]
        if level <= 0 or (self.nm is None and self.sparsity == 0):
            masks = [~p for p in pruned]
        elif self.nm is not None:
            # n of every m consecutive weights along each output's inputs: a Conv1D stores (in, out).
            masks = [
                as_out_in(m, nm_mask(as_out_in(m, s), *self.nm)) & ~p
                for m, s, p in zip(modules, self._scores(model, modules), pruned, strict=True)
            ]
        elif self.importance == "wanda":
            masks = [
                as_out_in(m, row_masks(as_out_in(m, s), level * self.sparsity, as_out_in(m, p)))
                for m, s, p in zip(modules, self._scores(model, modules), pruned, strict=True)
            ]
        else:
            scores = self._scores(model, modules)
            masks = magnitude_masks(scores, level * self.sparsity, scope=self.scope, pruned=pruned)
        for m, keep in zip(modules, masks, strict=True):
            set_mask_(m, "weight", keep)


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

    callbacks, accuracy_before = None, None
    if s.schedule == "oneshot":
        pruner.prune_to_(model, 1.0)
        dev = predict_logits(model, tokenizer, dev_set, desc="pruned dev")
        accuracy_before = accuracy(dev, data.dev.labels)
    else:
        callbacks = [GradualPruningCallback(pruner, start=s.start, end=s.end, every=s.every)]
    if s.epochs > 0:
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
    if callbacks and (not callbacks[0].history or callbacks[0].history[-1][1] < 1.0):
        pruner.prune_to_(model, 1.0)  # training did not run (no examples): the targets hold all the same
    if s.method == "structured":
        selection = masked_selection(model)
        compact_(model)
    else:
        selection = None
        remove_masks_(model)
    model.eval()
    dev = predict_logits(model, tokenizer, dev_set, desc="pruned dev")
    after = _shape(model, seq_len)
    metrics = {
        "method": s.method,
        "scope": s.scope,
        "schedule": s.schedule,
        "importance": s.importance,
        "target_sparsity": s.target_sparsity,
        **measure_sparsity(model),
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
    return PruneResult(model, metrics)

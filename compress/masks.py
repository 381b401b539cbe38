"""Weight masks, the unstructured side of pruning, for any model in `compress.architectures`: which weights of
the prunable Linear layers go by magnitude, first-order Taylor or Wanda importance (|w| times its input's
norm on calibration batches), unstructured (over all matrices or within each) or n:m along each row, and the
pruner that holds them (torch.nn.utils.prune) and tightens them on a schedule (`compress.schedule`).

Whole structures (heads, FFN neurons, hidden channels) are `compress.structured` (encoders) and
`compress.decoder_structured` (decoders).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from compress.architectures import as_out_in, layer_stacks, projection_modules
from compress.modeling import count_parameters
from compress.structured import current_mask, effective, set_mask_, taylor_scores


def prunable_linears(model) -> list[tuple[str, nn.Module]]:
    """The attention and FFN projections inside the layers (`nn.Linear`, or GPT-2's `Conv1D`); embeddings and
    the head stay dense. Chosen by `compress.architectures.projection_modules`, a predicate over the modules."""
    return projection_modules(model)


def measure_sparsity(model) -> dict:
    """Share of exact zeros per prunable matrix, per layer (an encoder-decoder's as `encoder.0`, `decoder.0`),
    over all prunable weights and the model."""
    per_matrix, per_layer = {}, {}
    zeros_total = numel_total = 0
    stacks = layer_stacks(model)
    for name, m in prunable_linears(model):
        w = effective(m).detach()
        z, n = int((w == 0).sum()), w.numel()
        per_matrix[name] = z / n
        stack = next(s for s in stacks if name.startswith(f"{s}."))
        layer = name.removeprefix(f"{stack}.").split(".")[0]
        if len(stacks) > 1:
            layer = f"{stack.split('.')[0]}.{layer}"
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


def pruning_record(config, model) -> dict:
    """What a prune step did, as each task records it: the `config`'s method, scope, schedule, importance and
    target sparsity (a `compress.config.PruneBase`), and the sparsity measured on `model` (`measure_sparsity`)."""
    keys = ("method", "scope", "schedule", "importance", "target_sparsity")
    return {k: getattr(config, k) for k in keys} | measure_sparsity(model)


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

"""Structured pruning of BERT-family encoders: whole attention heads and FFN neurons.

Unlike scattered zeros, removing a head or a neuron shrinks the matrices themselves, so dense CPU kernels
(ONNX Runtime's included) do less work. The flow:

1. importance of each head (its Q, K, V rows and output-projection columns) and each FFN neuron (its
   intermediate row and output column): weight magnitude, or first-order Taylor |w * dL/dw| over batches;
2. selection (pure functions): which heads and neurons to drop for a target share, never the last head of a
   layer, and the same number of neurons in every layer so `intermediate_size` stays one number;
3. masks (torch.nn.utils.prune.custom_from_mask) that hold the dropped rows and columns at zero while the
   optimizer keeps training the rest, tightened step by step under a schedule;
4. `compact_`: the masked heads removed with transformers' own `prune_heads` (recorded in
   `config.pruned_heads`, so `from_pretrained` rebuilds the smaller shapes) and the masked neurons sliced out
   with `prune_linear_layer`, leaving an ordinary Hugging Face model.

Supported layouts (read from `compress.architectures`): BERT, RoBERTa, ELECTRA and DistilBERT. `macs_per_token`
covers every family of that table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from transformers.pytorch_utils import prune_linear_layer

from compress.architectures import Family, family_of, ffn_width, head_dim, kv_heads, weight_layers
from compress.errors import RecipeError


def _config_layout(config) -> Family:
    fam = family_of(config, "structured pruning")
    if fam.attention is None or fam.shared_layers:
        raise RecipeError(
            f"structured pruning supports BERT, RoBERTa, ELECTRA and DistilBERT encoders, not {fam.name}"
            + (" (one layer shared by every application)" if fam.shared_layers else "")
        )
    return fam


def _layout(model) -> tuple[Family, nn.ModuleList]:
    fam = _config_layout(model.config)
    return fam, weight_layers(model)


def _module(layer: nn.Module, path: str) -> nn.Linear:
    return layer.get_submodule(path)


def _replace(layer: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(layer.get_submodule(parent), name, new)


def head_size(model) -> int:
    """Width of one attention head: hidden size over the configured (unpruned) number of heads."""
    _config_layout(model.config)
    return model.config.hidden_size // model.config.num_attention_heads


def heads_per_layer(model) -> list[int]:
    """Attention heads physically present in each layer (masked heads still count)."""
    fam, layers = _layout(model)
    size = head_size(model)
    return [_module(layer, fam.query).out_features // size for layer in layers]


def ffn_sizes(model) -> list[int]:
    """FFN neurons physically present in each layer (masked neurons still count)."""
    fam, layers = _layout(model)
    return [_module(layer, fam.ffn_in).out_features for layer in layers]


def macs_per_token(config_or_model, seq_len: int) -> int:
    """Multiply-accumulates per token of the model's matmuls at sequence length `seq_len`.

    Per layer with hidden size d, a kept query heads and g key/value heads of width h, and FFN size f:
    Q and output projections 2 * d * a * h, K and V 2 * d * g * h (g = a without grouped-query attention);
    attention scores Q K^T and context A V, each a dot product of width a * h against `seq_len` positions,
    2 * seq_len * a * h; FFN 2 * d * f, or 3 * d * f when gated (Llama). A decoder adds its LM head, d * V
    (the largest single matmul of a small one); an encoder's embeddings, pooler and classifier, LayerNorm and
    softmax are left out. Pruned heads are read from `config.pruned_heads`, so pass the config of a compacted
    model (masks that are not yet removed are not seen).

    For a decoder generating with a KV cache, `seq_len` is the context the new token attends to.

    Args:
        config_or_model: a config of a family in `compress.architectures`, or a model (its `.config`).
        seq_len: tokens in the sequence (the attention matmuls grow with it).

    Returns:
        The count, an integer.
    """
    config = getattr(config_or_model, "config", config_or_model)
    fam = family_of(config)
    d, heads, n_layers = int(config.hidden_size), int(config.num_attention_heads), int(config.num_hidden_layers)
    h, g, f = head_dim(config), kv_heads(config), ffn_width(config)
    pruned = {int(k): set(v) for k, v in (getattr(config, "pruned_heads", None) or {}).items()}
    total = 0
    for i in range(n_layers):
        a = heads - len(pruned.get(i if not fam.shared_layers else 0, ()))
        kv = g if g != heads else a
        ffn_matrices = 3 if fam.ffn_gate or fam.gate_up else 2
        total += 2 * d * a * h + 2 * d * kv * h + 2 * seq_len * a * h + ffn_matrices * d * f
    if fam.kind == "decoder":
        total += d * int(config.vocab_size)
    return total


# --- masks ---------------------------------------------------------------------------------------------------


def effective(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The tensor a module computes with: orig * mask under a torch prune reparametrisation, else itself."""
    if hasattr(module, f"{name}_mask"):
        return getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask")
    return getattr(module, name)


def current_mask(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The module's pruning mask for `name` as a bool tensor (all True when it has none)."""
    mask = getattr(module, f"{name}_mask", None)
    if mask is None:
        return torch.ones_like(getattr(module, name), dtype=torch.bool)
    return mask.bool()


@torch.no_grad()
def set_mask_(module: nn.Module, name: str, keep: torch.Tensor) -> None:
    """Hold `module.<name>` at zero where `keep` is False, in place.

    The first call reparametrises with torch.nn.utils.prune.custom_from_mask (the Parameter object is kept as
    `<name>_orig`, so an optimizer that holds it keeps working); later calls overwrite the mask buffer rather
    than stacking a PruningContainer of masks.
    """
    mask = keep.to(dtype=getattr(module, name).dtype)
    if hasattr(module, f"{name}_mask"):
        getattr(module, f"{name}_mask").copy_(mask)
        setattr(module, name, getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask"))
    else:
        torch_prune.custom_from_mask(module, name, mask.contiguous())


def remove_masks_(model: nn.Module) -> nn.Module:
    """Make every torch prune mask in `model` permanent (zeros baked in, plain Parameters, no hooks)."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
    return model


@dataclass(frozen=True)
class StructuredSelection:
    """Dropped head and FFN-neuron indices per layer (positions in the current matrices), sorted."""

    heads: tuple[tuple[int, ...], ...]
    neurons: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, heads: Sequence[Iterable[int]], neurons: Sequence[Iterable[int]]) -> StructuredSelection:
        return cls(tuple(tuple(sorted(set(h))) for h in heads), tuple(tuple(sorted(set(n))) for n in neurons))


def masked_selection(model) -> StructuredSelection:
    """The heads and neurons the model's current masks hold at zero (read from the Q and FFN-in masks)."""
    fam, layers = _layout(model)
    size = head_size(model)
    heads, neurons = [], []
    for layer in layers:
        rows = current_mask(_module(layer, fam.query)).any(dim=1)  # (heads * size,)
        heads.append(torch.nonzero(~rows.view(-1, size).any(dim=1)).flatten().tolist())
        neurons.append(torch.nonzero(~current_mask(_module(layer, fam.ffn_in)).any(dim=1)).flatten().tolist())
    return StructuredSelection.of(heads, neurons)


def apply_structured_masks_(model, selection: StructuredSelection) -> None:
    """Mask the selected heads and neurons in place; anything not selected is unmasked.

    A head: its rows of the Q, K and V weights and biases, and its columns of the output projection (whose
    bias stays). A neuron: its row and bias of the intermediate layer and its column of the output layer.
    A masked head has q = k = v = 0, hence a zero context, so the layer's output equals that of the model
    without the head; likewise a masked neuron contributes nothing.
    """
    fam, layers = _layout(model)
    size = head_size(model)
    if len(selection.heads) != len(layers) or len(selection.neurons) != len(layers):
        raise ValueError(f"selection covers {len(selection.heads)} layers, the model has {len(layers)}")
    for layer, dropped_heads, dropped_neurons in zip(layers, selection.heads, selection.neurons, strict=True):
        q = _module(layer, fam.query)
        rows = torch.ones(q.out_features // size, dtype=torch.bool)
        rows[list(dropped_heads)] = False
        rows = rows.repeat_interleave(size)  # (heads * size,)
        for path in (fam.query, fam.key, fam.value):
            lin = _module(layer, path)
            set_mask_(lin, "weight", rows[:, None].expand_as(lin.weight))
            if lin.bias is not None:
                set_mask_(lin, "bias", rows)
        out = _module(layer, fam.out)
        set_mask_(out, "weight", rows[None, :].expand_as(out.weight))

        ffn_in, ffn_out = _module(layer, fam.ffn_in), _module(layer, fam.ffn_out)
        keep = torch.ones(ffn_in.out_features, dtype=torch.bool)
        keep[list(dropped_neurons)] = False
        set_mask_(ffn_in, "weight", keep[:, None].expand_as(ffn_in.weight))
        if ffn_in.bias is not None:
            set_mask_(ffn_in, "bias", keep)
        set_mask_(ffn_out, "weight", keep[None, :].expand_as(ffn_out.weight))


def compact_(model):
    """Physically remove the masked heads and neurons of `model`, in place; return it.

    Heads go through the model's own `prune_heads` (recorded in `config.pruned_heads`, which
    `from_pretrained` replays to rebuild the smaller shapes); neurons are sliced out of the FFN Linears with
    transformers' `prune_linear_layer` and the config's FFN size updated. Every torch prune mask is made
    permanent first, so the result is an ordinary model that `save_pretrained` writes and
    `from_pretrained` reads back.

    Raises:
        ValueError: layers left with different numbers of neurons (one `intermediate_size` cannot describe
            them) or a layer left without heads.
    """
    fam, layers = _layout(model)
    selection = masked_selection(model)
    kept = {f - len(drop) for f, drop in zip(ffn_sizes(model), selection.neurons, strict=True)}
    if len(kept) > 1:
        raise ValueError(f"layers keep different numbers of FFN neurons {sorted(kept)}; config holds one size")
    if any(len(d) == n for d, n in zip(selection.heads, heads_per_layer(model), strict=True)):
        raise ValueError("a layer would be left without attention heads")
    remove_masks_(model)

    for layer, dropped in zip(layers, selection.neurons, strict=True):
        if dropped:
            ffn_in, ffn_out = _module(layer, fam.ffn_in), _module(layer, fam.ffn_out)
            index = torch.tensor(sorted(set(range(ffn_in.out_features)) - set(dropped)))
            _replace(layer, fam.ffn_in, prune_linear_layer(ffn_in, index, dim=0))
            _replace(layer, fam.ffn_out, prune_linear_layer(ffn_out, index, dim=1))
    setattr(model.config, fam.ffn_key, ffn_sizes(model)[0])

    # prune_heads takes head ids of the original numbering; a model pruned before has fewer rows.
    n_heads = model.config.num_attention_heads
    to_prune = {}
    for i, (layer, dropped) in enumerate(zip(layers, selection.heads, strict=True)):
        present = sorted(set(range(n_heads)) - set(layer.get_submodule(fam.attention).pruned_heads))
        if dropped:
            to_prune[i] = [present[j] for j in dropped]
    if to_prune:
        model.prune_heads(to_prune)
    return model


# --- importance ----------------------------------------------------------------------------------------------


def _hard_label_loss(model, batch: dict) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "teacher_logits"}
    return model(**inputs).loss


def _param(module: nn.Module, name: str = "weight") -> nn.Parameter:
    # Under a torch prune mask the trained Parameter is `<name>_orig`; its grad is already masked.
    return getattr(module, f"{name}_orig") if hasattr(module, f"{name}_orig") else getattr(module, name)


def _taylor(model, modules: Sequence[nn.Module], batches: Iterable[dict], loss_fn) -> list[torch.Tensor]:
    loss_fn = loss_fn or _hard_label_loss
    params = [_param(m) for m in modules]
    scores = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    saved = {p: p.grad for p in model.parameters()}  # leave the optimizer's view of the grads as it was
    was_training = model.training
    model.eval()  # no dropout: the score is of the model as it will run
    seen = 0
    try:
        with torch.enable_grad():
            for batch in batches:
                model.zero_grad(set_to_none=True)
                loss_fn(model, batch).backward()
                for s, p in zip(scores, params, strict=True):
                    if p.grad is not None:
                        s += (p.detach() * p.grad).abs().float()
                seen += 1
    finally:
        for p, g in saved.items():
            p.grad = g
        model.train(was_training)
    if seen == 0:
        raise ValueError("Taylor importance needs at least one batch")
    return scores


def taylor_scores(
    model, batches: Iterable[dict], loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """First-order Taylor importance |w * dL/dw| of every encoder Linear weight, summed over `batches`.

    The first-order estimate of the loss change when a weight is zeroed (Molchanov et al., 2019). Masked
    weights score 0. The model's mode and its parameters' `.grad` are restored afterwards.

    Args:
        model: a BERT-family model, masked or not.
        batches: dicts of tensors the model (or `loss_fn`) accepts.
        loss_fn: `loss_fn(model, batch) -> scalar`; default: the model's own loss on `batch["labels"]`
            (a `teacher_logits` entry is dropped).

    Returns:
        Full module name -> score tensor shaped like the weight.
    """
    fam, layers = _layout(model)
    paths = (fam.query, fam.key, fam.value, fam.out, fam.ffn_in, fam.ffn_out)
    modules = [_module(layer, p) for layer in layers for p in paths]
    names = {m: n for n, m in model.named_modules()}
    return {names[m]: s for m, s in zip(modules, _taylor(model, modules, batches, loss_fn), strict=True)}


@dataclass(frozen=True)
class StructureScores:
    """Importance per layer: heads (H_l,) and FFN neurons (F,)."""

    heads: tuple[torch.Tensor, ...]
    neurons: tuple[torch.Tensor, ...]


def _norm(x: torch.Tensor, p: float) -> torch.Tensor:
    # Rows of x are groups; (sum |x|^p)^(1/p).
    return x.abs().pow(p).sum(dim=1).pow(1.0 / p)


def group_scores(element: Sequence[torch.Tensor], size: int, p: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Aggregate element scores of one layer into head and neuron scores.

    Args:
        element: scores shaped like the weights of Q, K, V (H*size, d), the output projection (d, H*size),
            FFN in (F, d) and FFN out (d, F), in that order.
        size: head width.
        p: the group norm: 2 for L2 of magnitudes, 1 for L1 or for summing Taylor scores.

    Returns:
        Head scores (H,) and neuron scores (F,).
    """
    q, k, v, o, fin, fout = element
    n_heads = q.shape[0] // size
    per_head = torch.cat([t.reshape(n_heads, -1) for t in (q, k, v)] + [o.t().reshape(n_heads, -1)], dim=1)
    per_neuron = torch.cat([fin, fout.t()], dim=1)
    return _norm(per_head, p), _norm(per_neuron, p)


def structure_importance(
    model,
    importance: Literal["magnitude", "taylor"] = "magnitude",
    *,
    batches: Iterable[dict] | None = None,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
    p: float = 2.0,
) -> StructureScores:
    """Importance of every attention head and FFN neuron, computed on the current (masked) weights.

    Magnitude: the Lp norm of a head's Q, K, V rows and output-projection columns, of a neuron's
    intermediate row and output column. Taylor: the sum of |w * dL/dw| over the same weights and `batches`.

    Args:
        model: a BERT-family model.
        importance: "magnitude" or "taylor".
        batches: for Taylor; see `taylor_scores`.
        loss_fn: for Taylor; see `taylor_scores`.
        p: the norm for magnitude (2: L2, 1: L1); Taylor scores are summed.

    Returns:
        Per-layer head and neuron scores.
    """
    fam, layers = _layout(model)
    paths = (fam.query, fam.key, fam.value, fam.out, fam.ffn_in, fam.ffn_out)
    modules = [_module(layer, path) for layer in layers for path in paths]
    if importance == "magnitude":
        with torch.no_grad():
            element = [effective(m).detach().abs() for m in modules]
    elif importance == "taylor":
        if batches is None:
            raise ValueError("Taylor importance needs batches")
        element, p = _taylor(model, modules, batches, loss_fn), 1.0
    else:
        raise ValueError(f"importance must be 'magnitude' or 'taylor', not {importance!r}")
    size = head_size(model)
    heads, neurons = [], []
    for i in range(len(layers)):
        h, n = group_scores(element[6 * i : 6 * i + 6], size, p)
        heads.append(h)
        neurons.append(n)
    return StructureScores(tuple(heads), tuple(neurons))


# --- selection (pure) ----------------------------------------------------------------------------------------


def _check_fraction(fraction: float) -> None:
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")


def _lowest(scores: torch.Tensor, count: int, forced: Iterable[int]) -> list[int]:
    """The `count` lowest-scoring indices, `forced` ones first; ties go to the lower index."""
    forced = set(forced)
    order = sorted(range(len(scores)), key=lambda j: (j not in forced, float(scores[j]), j))
    return sorted(order[: max(count, len(forced))])


def select_heads(
    scores: Sequence[torch.Tensor],
    fraction: float,
    *,
    scope: Literal["global", "layer"] = "global",
    dropped: Sequence[Iterable[int]] | None = None,
) -> list[list[int]]:
    """Heads to drop, per layer, for a share `fraction` of all heads; every layer keeps at least one.

    Args:
        scores: per layer, a (H_l,) importance tensor (higher = more important).
        fraction: share of heads to drop, in [0, 1).
        scope: "global" ranks all heads together, each layer's scores divided by their L2 norm first
            (Michel et al., 2019), dropping min(round(fraction * total), total - layers) heads; "layer"
            drops min(round(fraction * H_l), H_l - 1) heads in every layer.
        dropped: heads dropped already (per layer); they stay dropped, so masks only tighten.

    Returns:
        Sorted head indices to drop, per layer (including `dropped`).
    """
    _check_fraction(fraction)
    dropped = [set(d) for d in dropped] if dropped is not None else [set() for _ in scores]
    sizes = [len(s) for s in scores]
    if scope == "layer":
        return [_lowest(s, min(round(fraction * n), n - 1), d) for s, n, d in zip(scores, sizes, dropped, strict=True)]
    if scope != "global":
        raise ValueError(f"scope must be 'global' or 'layer', not {scope!r}")
    total = sum(sizes)
    target = max(min(round(fraction * total), total - len(sizes)), sum(map(len, dropped)))
    ranked = []
    for i, s in enumerate(scores):
        s = s.double() / (s.double().norm() + 1e-12)
        ranked += [(j not in dropped[i], float(s[j]), i, j) for j in range(len(s))]
    out = [set(d) for d in dropped]
    left = [n - len(d) for n, d in zip(sizes, dropped, strict=True)]
    count = sum(map(len, dropped))
    for _, _, i, j in sorted(ranked):
        if count >= target:
            break
        if j in out[i] or left[i] <= 1:
            continue
        out[i].add(j)
        left[i] -= 1
        count += 1
    return [sorted(d) for d in out]


def select_neurons(
    scores: Sequence[torch.Tensor], fraction: float, *, dropped: Sequence[Iterable[int]] | None = None
) -> list[list[int]]:
    """FFN neurons to drop: the min(round(fraction * F), F - 1) lowest-scoring in every layer.

    The same count in every layer keeps `intermediate_size` a single number, so the pruned model is an
    ordinary config that `from_pretrained` rebuilds.

    Args:
        scores: per layer, an (F,) importance tensor; every layer must have the same F.
        fraction: share of neurons to drop, in [0, 1).
        dropped: neurons dropped already (per layer); they stay dropped.

    Returns:
        Sorted neuron indices to drop, per layer.
    """
    _check_fraction(fraction)
    sizes = {len(s) for s in scores}
    if len(sizes) > 1:
        raise ValueError(f"layers have different FFN sizes {sorted(sizes)}")
    dropped = [set(d) for d in dropped] if dropped is not None else [set() for _ in scores]
    f = sizes.pop() if sizes else 0
    count = max([min(round(fraction * f), f - 1)] + [len(d) for d in dropped])
    return [_lowest(s, count, d) for s, d in zip(scores, dropped, strict=True)]


class StructuredPruner:
    """Tightens head and neuron masks to `level` times the final targets (see `GradualPruningCallback`).

    Args:
        heads: final share of attention heads dropped.
        ffn: final share of FFN neurons dropped in every layer.
        scope: head ranking, "global" or "layer" (see `select_heads`).
        importance: "magnitude" or "taylor".
        batches: for Taylor: a re-iterable collection of batches (the same ones at every update).
        loss_fn: for Taylor; see `taylor_scores`.
    """

    def __init__(
        self,
        *,
        heads: float = 0.0,
        ffn: float = 0.0,
        scope: Literal["global", "layer"] = "global",
        importance: Literal["magnitude", "taylor"] = "magnitude",
        batches: Sequence[dict] | None = None,
        loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
    ):
        _check_fraction(heads)
        _check_fraction(ffn)
        if importance == "taylor" and not batches:
            raise ValueError("Taylor importance needs batches")
        self.heads, self.ffn, self.scope, self.importance = heads, ffn, scope, importance
        self.batches, self.loss_fn = batches, loss_fn

    def prune_to_(self, model, level: float) -> None:
        current = masked_selection(model)
        if math.isclose(level * self.heads, 0) and math.isclose(level * self.ffn, 0):
            apply_structured_masks_(model, current)  # nothing to rank: install (or keep) the masks
            return
        scores = structure_importance(model, self.importance, batches=self.batches, loss_fn=self.loss_fn)
        heads = select_heads(scores.heads, level * self.heads, scope=self.scope, dropped=current.heads)
        neurons = select_neurons(scores.neurons, level * self.ffn, dropped=current.neurons)
        apply_structured_masks_(model, StructuredSelection.of(heads, neurons))

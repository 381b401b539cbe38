"""Where each architecture keeps its layers, attention heads and FFN: the one table every stage reads.

Building a student (layer subsets, narrower FFN, fewer heads), structured and unstructured pruning, the
size and compute figures, and the int8 sensitivity search's grouping of ONNX nodes into blocks all look things
up here, so a new family is one entry. Paths are module paths: `layers` from the model's `base_model` to the
`ModuleList` of layers, the others from one layer. Config keys are the standard names that every
transformers config answers through its `attribute_map` (GPT-2's `n_layer` is `num_hidden_layers`), except
the FFN width, whose name differs per family.

Families:
- encoders: BERT (also RoBERTa, ELECTRA, XLM-R), DistilBERT, ALBERT (one layer's weights shared by every
  application; only `num_hidden_groups == inner_group_num == 1`);
- decoders: GPT-2 (fused QKV in one `Conv1D`, whose weight is stored (in, out)), and the Llama family (Llama,
  Mistral, Qwen2, Qwen3, Gemma, Gemma 2, Granite, OLMo, OLMo 2, StableLM: grouped-query attention, RoPE, a gated
  FFN, each with its own norms and scalings, and the same projection names).
- encoder-decoders (`ENCODER_DECODERS`): two stacks, each a `Family` row, the decoder's with cross-attention:
  T5 (and mT5; relative position bias owned by the first block of each stack; a gated FFN where the config says
  `is_gated_act`), BART (and mBART) and Marian (the same layout as BART).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from compress.errors import RecipeError


@dataclass(frozen=True)
class Family:
    """One architecture's layout. A path that is None does not exist in the family."""

    name: str
    kind: Literal["encoder", "decoder"]
    layers: str  # base model -> ModuleList of the layers that own weights
    query: str | None  # separate Q, K, V projections ...
    key: str | None
    value: str | None
    qkv: str | None  # ... or one fused projection (GPT-2's c_attn: Q, K, V blocks along the output)
    out: str  # attention output projection (all heads -> hidden)
    ffn_in: str  # FFN input projection (Llama: up_proj)
    ffn_gate: str | None  # gated FFN: the gate projection (Llama: gate_proj), sliced with ffn_in
    ffn_out: str  # FFN output projection
    ffn_key: str  # config key of the FFN width
    attention: str | None = None  # the module with transformers' prune_heads() (encoders only)
    layer_index: str | None = None  # attribute naming a layer's slot in the KV cache (decoders)
    per_layer_keys: tuple[str, ...] = ()  # config lists with one entry per layer (Qwen2's layer_types)
    shared_layers: bool = False  # ALBERT: one layer applied num_hidden_layers times
    conv1d: bool = False  # projections are transformers' Conv1D, weight (in, out)
    gate_up: bool = False  # ffn_in holds the gate's rows, then the up projection's (Phi-3's gate_up_proj)

    def projections(self) -> tuple[str, ...]:
        """Paths of every projection matrix of a layer (attention and FFN)."""
        attn = (self.qkv,) if self.qkv else (self.query, self.key, self.value)
        return (*attn, self.out, self.ffn_in, *((self.ffn_gate,) if self.ffn_gate else ()), self.ffn_out)


_BERT = Family(
    "bert",
    "encoder",
    "encoder.layer",
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    None,
    "attention.output.dense",
    "intermediate.dense",
    None,
    "output.dense",
    "intermediate_size",
    attention="attention",
)
_DISTILBERT = Family(
    "distilbert",
    "encoder",
    "transformer.layer",
    "attention.q_lin",
    "attention.k_lin",
    "attention.v_lin",
    None,
    "attention.out_lin",
    "ffn.lin1",
    None,
    "ffn.lin2",
    "hidden_dim",
    attention="attention",
)
_ALBERT = Family(
    "albert",
    "encoder",
    "encoder.albert_layer_groups.0.albert_layers",
    "attention.query",
    "attention.key",
    "attention.value",
    None,
    "attention.dense",
    "ffn",
    None,
    "ffn_output",
    "intermediate_size",
    attention="attention",
    shared_layers=True,
)
_GPT2 = Family(
    "gpt2",
    "decoder",
    "h",
    None,
    None,
    None,
    "attn.c_attn",
    "attn.c_proj",
    "mlp.c_fc",
    None,
    "mlp.c_proj",
    "n_inner",
    layer_index="attn.layer_idx",
    conv1d=True,
)
_LLAMA = Family(
    "llama",
    "decoder",
    "layers",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    None,
    "self_attn.o_proj",
    "mlp.up_proj",
    "mlp.gate_proj",
    "mlp.down_proj",
    "intermediate_size",
    layer_index="self_attn.layer_idx",
    per_layer_keys=("layer_types",),
)
# Gemma 3's text decoder (Gemma3ForCausalLM): Llama's layout, q/k norms over one head's width, sliding and global
# layers (`layer_types`); its base_model_prefix names the image-text model's language model, absent from the
# text-only class, so its layers are found from the whole model.
_GEMMA3 = replace(_LLAMA, name="gemma3", layers="model.layers")
_PHI3 = Family(
    "phi3",
    "decoder",
    "layers",
    None,
    None,
    None,
    "self_attn.qkv_proj",  # Q rows, then K's, then V's (grouped-query: K and V have the key/value heads only)
    "self_attn.o_proj",
    "mlp.gate_up_proj",
    None,
    "mlp.down_proj",
    "intermediate_size",
    layer_index="self_attn.layer_idx",
    gate_up=True,
)

# model_type (config.json) -> family.
FAMILIES: dict[str, Family] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "electra": _BERT,
    "distilbert": _DISTILBERT,
    "albert": _ALBERT,
    "gpt2": _GPT2,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "granite": _LLAMA,
    "olmo": _LLAMA,
    "olmo2": _LLAMA,
    "stablelm": _LLAMA,
    "gemma3_text": _GEMMA3,
    "phi3": _PHI3,
}


@dataclass(frozen=True)
class EncoderDecoder:
    """An encoder-decoder family: its two stacks (paths from the model's `base_model`), the config keys of their
    depths, the decoder's cross-attention, and what only each stack's first layer owns (T5's relative position
    bias: a student whose first layer comes from a deeper teacher layer takes it from the teacher's first)."""

    name: str
    encoder: Family
    decoder: Family
    encoder_depth_key: str
    decoder_depth_key: str
    cross_attention: tuple[str, str, str, str]  # decoder layer -> cross-attention Q, K, V, output projections
    first_layer_only: tuple[str, ...] = ()  # parameter paths inside a stack's first layer

    def stacks(self) -> tuple[tuple[str, Family, str], ...]:
        """(stack name, family, depth key) of the encoder and the decoder."""
        return (("encoder", self.encoder, self.encoder_depth_key), ("decoder", self.decoder, self.decoder_depth_key))


def _t5_stack(kind: Literal["encoder", "decoder"], gated: bool) -> Family:
    ffn = "layer.1.DenseReluDense" if kind == "encoder" else "layer.2.DenseReluDense"
    return Family(
        f"t5-{kind}",
        kind,
        f"{kind}.block",
        "layer.0.SelfAttention.q",
        "layer.0.SelfAttention.k",
        "layer.0.SelfAttention.v",
        None,
        "layer.0.SelfAttention.o",
        f"{ffn}.wi_1" if gated else f"{ffn}.wi",
        f"{ffn}.wi_0" if gated else None,
        f"{ffn}.wo",
        "d_ff",
    )


def _bart_stack(kind: Literal["encoder", "decoder"]) -> Family:
    return Family(
        f"bart-{kind}",
        kind,
        f"{kind}.layers",
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        None,
        "self_attn.out_proj",
        "fc1",
        None,
        "fc2",
        f"{kind}_ffn_dim",
    )


def _t5(gated: bool) -> EncoderDecoder:
    return EncoderDecoder(
        "t5",
        _t5_stack("encoder", gated),
        _t5_stack("decoder", gated),
        "num_layers",
        "num_decoder_layers",
        (
            "layer.1.EncDecAttention.q",
            "layer.1.EncDecAttention.k",
            "layer.1.EncDecAttention.v",
            "layer.1.EncDecAttention.o",
        ),  # fmt: skip
        first_layer_only=("layer.0.SelfAttention.relative_attention_bias",),
    )


_BART_LIKE = EncoderDecoder(
    "bart",
    _bart_stack("encoder"),
    _bart_stack("decoder"),
    "encoder_layers",
    "decoder_layers",
    ("encoder_attn.q_proj", "encoder_attn.k_proj", "encoder_attn.v_proj", "encoder_attn.out_proj"),
)
# model_type -> encoder-decoder family (T5's rows depend on the config's gated FFN: `encoder_decoder_of`).
ENCODER_DECODERS: dict[str, EncoderDecoder] = {
    "t5": _t5(False),
    "mt5": _t5(True),
    "bart": _BART_LIKE,
    "mbart": _BART_LIKE,
    "marian": _BART_LIKE,
}


def encoder_decoder_of(config_or_model, what: str = "this stage") -> EncoderDecoder:
    """The encoder-decoder family of a model or config.

    Raises:
        RecipeError: a model type the table does not describe.
    """
    config = getattr(config_or_model, "config", config_or_model)
    kind = getattr(config, "model_type", None)
    if kind not in ENCODER_DECODERS:
        raise RecipeError(
            f"{what}: model_type {kind!r} is not a supported encoder-decoder; supported: "
            f"{', '.join(sorted(ENCODER_DECODERS))}"
        )
    if kind in ("t5", "mt5"):
        return _t5(bool(getattr(config, "is_gated_act", False)))
    return ENCODER_DECODERS[kind]


# ONNX node names follow module paths (`/bert/encoder/layer.3/...`, `/model/layers.0/...`, `/transformer/h.2/...`):
# the last part of each family's `layers` path names a block.
ONNX_LAYER = re.compile(
    r"(?:^|/)(?:" + "|".join(sorted({f.layers.rpartition(".")[2] for f in FAMILIES.values()})) + r")[._/](\d+)[./]"
)


def family_of(config_or_model, what: str = "this stage") -> Family:
    """The family of a model or config.

    Raises:
        RecipeError: a model type the table does not describe, or an ALBERT with several layer groups.
    """
    config = getattr(config_or_model, "config", config_or_model)
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        raise RecipeError(f"{what}: model_type {kind!r} is not supported; supported: {', '.join(sorted(FAMILIES))}")
    if kind == "albert" and (config.num_hidden_groups != 1 or config.inner_group_num != 1):
        raise RecipeError(f"{what}: ALBERT with num_hidden_groups or inner_group_num other than 1 is not supported")
    return FAMILIES[kind]


def weight_layers(model) -> nn.ModuleList:
    """The layer modules that own weights (one per layer; ALBERT: the single shared layer)."""
    return model.base_model.get_submodule(family_of(model).layers)


def num_layers(model_or_config) -> int:
    """Layers the model applies (for ALBERT, applications of its shared layer)."""
    config = getattr(model_or_config, "config", model_or_config)
    return int(config.num_hidden_layers)


def ffn_width(config) -> int:
    """The FFN width of every layer (GPT-2's `n_inner` of None means 4 x hidden)."""
    fam = family_of(config)
    width = getattr(config, fam.ffn_key, None)
    return int(width) if width is not None else 4 * int(config.hidden_size)


def head_dim(config) -> int:
    """Width of one attention head (a config's explicit `head_dim` wins over hidden / heads)."""
    explicit = getattr(config, "head_dim", None)
    return int(explicit) if explicit else int(config.hidden_size) // int(config.num_attention_heads)


def kv_heads(config) -> int:
    """Key/value heads per layer: fewer than the query heads under grouped-query attention."""
    n = getattr(config, "num_key_value_heads", None)
    return int(n) if n else int(config.num_attention_heads)


def is_projection(module: nn.Module) -> bool:
    """A weight matrix a transformation may touch: `nn.Linear` or transformers' `Conv1D` (GPT-2)."""
    return isinstance(module, nn.Linear | Conv1D)


def layer_stacks(model) -> tuple[str, ...]:
    """Paths (from `base_model`) of the model's layer stacks: one for an encoder or a decoder, two for an
    encoder-decoder (its encoder's, then its decoder's)."""
    if getattr(model.config, "model_type", None) in ENCODER_DECODERS:
        return tuple(fam.layers for _, fam, _ in encoder_decoder_of(model).stacks())
    return (family_of(model).layers,)


def projection_modules(model) -> list[tuple[str, nn.Module]]:
    """(name, module) of every attention and FFN projection inside the layers, in layer order (an
    encoder-decoder's: its encoder's, then its decoder's self-attention, cross-attention and FFN).

    Selected by a predicate over (name, module): a projection (`is_projection`) inside a layer stack. The
    embeddings, the classifier or LM head, and a pooler stay out.
    """
    prefixes = tuple(f"{stack}." for stack in layer_stacks(model))
    return [(name, m) for name, m in model.base_model.named_modules() if name.startswith(prefixes) and is_projection(m)]


def ffn_in_rows(fam: Family, neurons: torch.Tensor, width: int) -> torch.Tensor:
    """The rows of a layer's FFN input projection that feed `neurons` (of `width`): the neurons' own rows, or, where
    gate and up are fused (`Family.gate_up`), their gate rows and their up rows."""
    return torch.cat([neurons, neurons + width]) if fam.gate_up else neurons


def out_in(module: nn.Module) -> tuple[int, int]:
    """(output features, input features) of a projection, whichever way it stores its weight."""
    if isinstance(module, Conv1D):
        return module.nf, module.weight.shape[0]
    return module.out_features, module.in_features


def as_out_in(module: nn.Module, tensor=None):
    """A projection's weight (or a tensor shaped like it) as (out, in): Conv1D stores (in, out)."""
    t = module.weight if tensor is None else tensor
    return t.t() if isinstance(module, Conv1D) else t

"""Decoders of the sizes people ship, with random weights: the published configurations of SmolLM2-135M,
Qwen2.5-0.5B and Llama-3.2-1B (and a few neighbours) built here, so every causal-LM stage can be run and measured
at real scale on a machine that cannot download a checkpoint.

Random weights make perplexity meaningless, but the shapes, the file sizes, the speeds and the memory every step
needs are those of the real model. The weights are stored in bfloat16, as the published checkpoints are. The
tokenizer is ours (byte-level BPE trained on the corpus given, `data.train_tokenizer`, up to the published
vocabulary size: a small corpus stops short of it), with `<|endoftext|>` as BOS, EOS and padding; the embedding
matrix and the LM head keep the published vocabulary size, as Qwen2.5's pad theirs beyond the tokenizer's.

    python -m compress.tasks.causal_lm.shapes qwen2.5-0.5b --corpus data/devdocs/train.jsonl.gz --out /tmp/qwen
    edge-compress run configs/lm-ptq-shapes.yaml --set teacher.path=/tmp/qwen --out runs/qwen-shape
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from compress.errors import RecipeError
from compress.tasks.causal_lm.config import TextDataConfig, TokenizerConfig
from compress.tasks.causal_lm.data import END_OF_TEXT, read_documents, train_tokenizer

# The fields of each model's published config.json that decide its shape and its arithmetic (read from the
# model cards' config.json files on the Hugging Face Hub: HuggingFaceTB/SmolLM2-135M and -360M,
# Qwen/Qwen2.5-0.5B, Qwen/Qwen3-0.6B, meta-llama/Llama-3.2-1B). Token ids are not copied: the tokenizer is ours.
PUBLISHED: dict[str, dict] = {
    "smollm2-135m": dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        vocab_size=49152,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        hidden_act="silu",
        initializer_range=0.041666666666666664,
        attention_bias=False,
        mlp_bias=False,
    ),
    "smollm2-360m": dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        hidden_size=960,
        intermediate_size=2560,
        num_hidden_layers=32,
        num_attention_heads=15,
        num_key_value_heads=5,
        head_dim=64,
        vocab_size=49152,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        hidden_act="silu",
        initializer_range=0.02,
        attention_bias=False,
        mlp_bias=False,
    ),
    "qwen2.5-0.5b": dict(
        model_type="qwen2",
        architectures=["Qwen2ForCausalLM"],
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        hidden_act="silu",
        initializer_range=0.02,
        use_sliding_window=False,
        sliding_window=32768,
        max_window_layers=24,
    ),
    "qwen3-0.6b": dict(
        model_type="qwen3",
        architectures=["Qwen3ForCausalLM"],
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        hidden_act="silu",
        initializer_range=0.02,
        attention_bias=False,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=28,
    ),
    "llama-3.2-1b": dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        hidden_act="silu",
        initializer_range=0.02,
        attention_bias=False,
        mlp_bias=False,
        rope_scaling=dict(
            factor=32.0,
            high_freq_factor=4.0,
            low_freq_factor=1.0,
            original_max_position_embeddings=8192,
            rope_type="llama3",
        ),
    ),
}

# The corpus share the tokenizer is trained on: enough text for tens of thousands of merges, in about a minute.
TOKENIZER_DOCUMENTS = 4000


def published_config(name: str, *, overrides: dict | None = None):
    """The transformers config of a published shape, `overrides` (e.g. fewer layers for a test) applied.

    Raises:
        RecipeError: an unknown name.
    """
    from transformers import AutoConfig

    if name not in PUBLISHED:
        raise RecipeError(f"unknown shape {name!r}; known: {', '.join(PUBLISHED)}")
    fields = {**PUBLISHED[name], **(overrides or {})}
    kind = fields.pop("model_type")
    return AutoConfig.for_model(kind, **fields)


def build_random(name: str, out_dir: Path, docs: list[str], *, seed: int = 0, overrides: dict | None = None) -> dict:
    """Write a Hugging Face directory holding a model of the published shape `name` with random weights
    (bfloat16 safetensors) and a tokenizer trained on `docs`; returns what was built (also in shape.json).

    Raises:
        RecipeError: an unknown name, or no documents.
    """
    from transformers import AutoModelForCausalLM

    if not docs:
        raise RecipeError("no documents to train the tokenizer on")
    config = published_config(name, overrides=overrides)
    started = time.time()
    # BPE training stops at the published vocabulary size, or short of it on a small corpus: never beyond.
    tokenizer = train_tokenizer(
        docs[:TOKENIZER_DOCUMENTS],
        TokenizerConfig(vocab_size=int(config.vocab_size)),
        int(config.max_position_embeddings),
    )
    eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    config.bos_token_id = config.eos_token_id = config.pad_token_id = eos
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    model.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    record = {
        "shape": name,
        "published": PUBLISHED[name],
        "overrides": overrides or {},
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokenizer_pieces": len(tokenizer),
        "seed": seed,
        "weights": "random (transformers' initialisation, bfloat16)",
        "seconds": round(time.time() - started, 1),
    }
    (out_dir / "shape.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m compress.tasks.causal_lm.shapes",
        description="Build a decoder of a published shape with random weights (for measuring, not for text).",
    )
    p.add_argument("shape", choices=sorted(PUBLISHED))
    p.add_argument("--corpus", type=Path, required=True, help="text (.txt / .jsonl, optionally .gz) for the tokenizer")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        docs = read_documents(a.corpus, "corpus", TextDataConfig(train=a.corpus, dev=a.corpus))
        record = build_random(a.shape, a.out, docs, seed=a.seed)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{a.out}: {record['shape']}, {record['parameters']:,} parameters, {record['tokenizer_pieces']:,} "
        f"tokenizer pieces, {record['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

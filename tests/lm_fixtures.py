"""Tiny causal-LM material built in code: a synthetic English-like corpus and random GPT-2, Llama and Qwen2 models.

Imported by tests/conftest.py, which exposes the fixtures.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import yaml

SUBJECTS = ["the module", "this function", "a class", "the parser", "the server", "each thread", "the list"]
VERBS = ["returns", "reads", "writes", "creates", "closes", "opens", "sorts", "checks"]
OBJECTS = ["a file", "the value", "a new object", "the socket", "an integer", "the string", "a dictionary"]
ADVERBS = ["quickly", "safely", "again", "once", "twice", "lazily"]
LM_SIZES = {"train": 240, "dev": 24, "test": 24}


def make_documents(seed: int = 0) -> dict[str, list[str]]:
    """train/dev/test documents of 2-5 sentences each ('The parser reads a file quickly. ...'); deterministic."""
    rng = random.Random(seed)

    def sentence() -> str:
        return f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ADVERBS)}."

    return {
        split: [" ".join(sentence() for _ in range(rng.randint(2, 5))) for _ in range(n)]
        for split, n in LM_SIZES.items()
    }


def write_text_data(d: Path, documents: dict[str, list[str]] | None = None) -> Path:
    """train.txt, dev.txt and test.txt, one document per line, in a new directory `d`."""
    d.mkdir(parents=True)
    for split, docs in (documents or make_documents()).items():
        (d / f"{split}.txt").write_text("\n".join(docs) + "\n")
    return d


def tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on the tiny corpus (the teacher stage's own recipe)."""
    from compress.tasks.causal_lm.config import TokenizerConfig
    from compress.tasks.causal_lm.data import train_tokenizer

    return train_tokenizer(make_documents()["train"], TokenizerConfig(vocab_size=vocab_size), max_positions=256)


def tiny_causal_lm(
    family: str, vocab_size: int, eos_id: int, seed: int = 0, *, hidden: int = 32, layers: int = 4, ffn: int = 64
):
    """A random decoder of `family` (gpt2, llama, qwen2, phi3), 4 heads (2 key/value heads), built in code."""
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Phi3Config,
        Phi3ForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=256, **common))
    shape = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=ffn,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        **common,
    )
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**shape))
    if family == "phi3":  # fused qkv_proj and gate_up_proj
        return Phi3ForCausalLM(Phi3Config(**shape, pad_token_id=None))
    return LlamaForCausalLM(LlamaConfig(**shape))


def save_tiny_causal_lm(d: Path, family: str, *, train_steps: int = 60) -> Path:
    """A tiny decoder of `family` with its tokenizer, briefly trained on the tiny corpus (so that its greedy tokens
    are not near-ties), saved with save_pretrained into `d`."""
    import torch

    from compress.tasks.causal_lm.data import pack_blocks, token_stream

    tok = tiny_tokenizer()
    model = tiny_causal_lm(family, len(tok), tok.eos_token_id)
    blocks = torch.as_tensor(np.stack(pack_blocks(token_stream(tok, make_documents()["train"]), 32)[:64]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(train_steps):
        idx = torch.randint(0, len(blocks), (8,), generator=gen)
        loss = model(input_ids=blocks[idx], labels=blocks[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.eos_token_id
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def write_lm_recipe(path: Path, data_dir: Path, **sections) -> Path:
    """A tiny causal-LM recipe at `path`; each keyword names a section and updates (not replaces) its keys."""
    tree = {
        "name": "tiny-lm",
        "task": "causal-lm",
        "seed": 0,
        "data": {k: str(data_dir / f"{k}.txt") for k in ("train", "dev", "test")}
        | {"documents": "line", "block_size": 32},
        "teacher": {
            "architecture": {
                "family": "llama",
                "hidden_size": 32,
                "layers": 4,
                "heads": 4,
                "kv_heads": 2,
                "intermediate_size": 64,
                "max_positions": 256,
            },
            "tokenizer": {"vocab_size": 300},
            "epochs": 2,
            "batch_size": 8,
            "learning_rate": 3.0e-3,
        },
        "distill": {"layers": [0, 3], "epochs": 1, "batch_size": 8, "learning_rate": 3.0e-3},
        "prune": {"sparsity": 0.5, "epochs": 0.5, "batch_size": 8},
        "export": {"prompts": 2, "prompt_tokens": 8, "new_tokens": 8},
        "quantize": [{"name": "int4", "block_size": 16}, {"name": "int8", "method": "dynamic"}],
        "benchmark": {
            "targets": ["host"],
            "prompt_lengths": [8, 16],
            "new_tokens": 8,
            "prompts": 1,
            "runs": 1,
            "warmup": 1,
            "memory": False,
            "ort_format": False,
            "greedy_prompts": 3,
            "greedy_tokens": 8,
        },
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(tree.get(section), dict):
            tree[section] = {**tree[section], **values}
        else:
            tree[section] = values
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def save_wide_head_llama(d: Path) -> Path:
    """A random 2-layer Llama (hidden 64, 4 heads of 16: the narrowest ONNX Runtime's GroupQueryAttention takes on
    CPU) with the tiny tokenizer, saved into `d`."""
    tok = tiny_tokenizer()
    tiny_causal_lm("llama", len(tok), tok.eos_token_id, hidden=64, layers=2, ffn=128).save_pretrained(d)
    tok.save_pretrained(d)
    return d

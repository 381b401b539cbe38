"""Causal-LM data: read a plain-text corpus, split it, train a tokenizer for it, pack it into token blocks.

Documents come from `.txt` (separated by blank lines, or one per line) or `.jsonl` (one object per line, the text
under a field), either of them optionally gzip-compressed (`.txt.gz`, `.jsonl.gz`). A slice of the train
documents (whole documents, never a cut through one) is held out for model selection; dev and test are only
ever measured. Documents are tokenized, each followed by the end-of-text token, concatenated and cut into
blocks of `block_size` tokens: every position of a block is a prediction target, so no compute goes to padding.

Every problem with a file (missing, binary, not UTF-8, not gzip, a JSONL line that is not an object with a
string text, no text at all) is a `RecipeError` naming the file and, where there is one, the line.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.datafiles import jsonl_objects, read_text
from compress.errors import RecipeError
from compress.tasks.causal_lm.config import TextDataConfig, TokenizerConfig

END_OF_TEXT = "<|endoftext|>"  # the separator and end-of-text token of tokenizers trained here (GPT-2's name)
TEXT_SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")


@dataclass(frozen=True)
class TextData:
    """The corpus as documents: train, held out of train (model selection), dev and test (reported)."""

    train: list[str]
    dev: list[str]
    test: list[str] | None
    holdout: list[str]


def text_format(path: Path) -> str:
    """`.txt` or `.jsonl` (a `.gz` suffix after either is decompressed on reading)."""
    name = path.name.lower()
    for suffix in TEXT_SUFFIXES:
        if name.endswith(suffix):
            return suffix.removesuffix(".gz")
    raise RecipeError(f"{path}: unsupported format; use {', '.join(TEXT_SUFFIXES)}")


def read_documents(path: Path, key: str, config: TextDataConfig) -> list[str]:
    """The documents of one file, in file order; empty documents are skipped.

    Raises:
        RecipeError: the file cannot be read as the format its name says, or holds no text.
    """
    path = Path(path)
    text = read_text(path, key)
    where = f"data.{key} = {str(path)!r}"
    docs: list[str] = []
    if text_format(path) == ".jsonl":
        field = config.text_field
        for n, rec in jsonl_objects(text, where):
            if field not in rec:
                raise RecipeError(
                    f"data.text_field = {field!r}: line {n} of {path} has no such key (keys: {', '.join(rec)})"
                )
            value = rec[field]
            if not isinstance(value, str):
                raise RecipeError(f"{where}: line {n}: {field!r} is {json.dumps(value)[:40]}, expected a string")
            if value.strip():
                docs.append(value)
    elif config.documents == "line":
        docs = [line for line in text.splitlines() if line.strip()]
    else:
        paragraphs, current = [], []
        for line in text.splitlines():
            if line.strip():
                current.append(line)
            elif current:
                paragraphs.append("\n".join(current))
                current = []
        if current:
            paragraphs.append("\n".join(current))
        docs = paragraphs
    if not docs:
        raise RecipeError(f"{where}: no text (the file holds only whitespace or empty documents)")
    return docs


def load_text_data(config: TextDataConfig) -> TextData:
    """Read the corpus named in the recipe and hold out whole train documents for model selection."""
    train = read_documents(config.train, "train", config)
    dev = read_documents(config.dev, "dev", config)
    test = read_documents(config.test, "test", config) if config.test is not None else None
    train, holdout = _carve_holdout(train, config.holdout_fraction)
    return TextData(train, dev, test, holdout)


def _carve_holdout(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    n = min(round(len(docs) * fraction), len(docs) - 1)
    if n <= 0 and fraction > 0 and len(docs) > 1:
        n = 1  # a small corpus still gets a held-out document: model selection never reads dev
    if n <= 0:
        return docs, []
    order = list(range(len(docs)))
    random.Random(20261201).shuffle(order)  # fixed: the holdout must not move with the training seed
    held = set(order[:n])
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


# ---- tokenizer ----


def train_tokenizer(docs: list[str], config: TokenizerConfig, max_positions: int):
    """A byte-level BPE tokenizer (GPT-2's scheme: any byte sequence encodes, nothing is unknown) trained on
    `docs` with the `tokenizers` library, as a transformers `PreTrainedTokenizerFast`. `<|endoftext|>` is its
    only special token: beginning, end and padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        model_max_length=max_positions,
    )


def end_of_text_id(tokenizer) -> int:
    """The token that ends a document (the tokenizer's EOS)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise RecipeError(f"the tokenizer ({type(tokenizer).__name__}) has no end-of-sequence token to join documents")
    return int(eos)


def bos_prefix(tokenizer) -> list[int]:
    """[BOS] when the tokenizer's own configuration starts every text with it (Llama 3's and Gemma's do, GPT-2's,
    Qwen2's and SmolLM2's do not), else []: documents in training and evaluation, and prompts in the bundle,
    start as the model saw text in its own training."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return [int(bos)] if with_special[:1] == [bos] and plain[:1] != [bos] else []


def token_stream(tokenizer, docs: list[str], max_tokens: int | None = None) -> np.ndarray:
    """All documents as one int64 token sequence, each after the tokenizer's BOS when its configuration adds one
    (`bos_prefix`) and followed by the end-of-text token.

    With `max_tokens`, documents are tokenized until that many tokens are reached and the stream is cut there.
    """
    import transformers

    eos = end_of_text_id(tokenizer)
    prefix = bos_prefix(tokenizer)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "sequence longer than the model's maximum": blocks cut it
    try:
        parts, total = [], 0
        for start in range(0, len(docs), 256):
            ids = tokenizer(docs[start : start + 256], add_special_tokens=False)["input_ids"]
            for seq in ids:
                parts.append(np.asarray([*prefix, *seq, eos], dtype=np.int64))
                total += len(prefix) + len(seq) + 1
            if max_tokens is not None and total >= max_tokens:
                break
    finally:
        transformers.logging.set_verbosity(verbosity)
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return stream[:max_tokens] if max_tokens is not None else stream


def pack_blocks(stream: np.ndarray, block_size: int, *, keep_tail: bool = False) -> list[np.ndarray]:
    """Cut a token stream into blocks of `block_size`; the shorter tail is kept (evaluation) or dropped
    (training batches stay one shape). A tail of one token predicts nothing and is always dropped."""
    n_full = len(stream) // block_size
    blocks = [stream[i * block_size : (i + 1) * block_size] for i in range(n_full)]
    tail = stream[n_full * block_size :]
    if keep_tail and len(tail) >= 2:
        blocks.append(tail)
    return blocks


def eval_blocks(tokenizer, docs: list[str], config: TextDataConfig, key: str) -> list[np.ndarray]:
    """The blocks a split is evaluated on (dev, test, held-out), capped at `max_eval_tokens`.

    Raises:
        RecipeError: the split holds fewer than two tokens.
    """
    blocks = pack_blocks(token_stream(tokenizer, docs, config.max_eval_tokens), config.block_size, keep_tail=True)
    if not blocks:
        raise RecipeError(f"data.{key}: fewer than 2 tokens of text, nothing to evaluate")
    return blocks


def prompts_from(tokenizer, docs: list[str], count: int, length: int, max_tokens: int | None = None) -> list[list[int]]:
    """`count` prompts of exactly `length` tokens, cut from evenly spaced places of the documents' token stream
    (repeating the stream when it is shorter than needed)."""
    stream = token_stream(tokenizer, docs, max_tokens)
    if len(stream) == 0:
        raise RecipeError("no tokens to make prompts from")
    while len(stream) < length + count:
        stream = np.concatenate([stream, stream])
    span = len(stream) - length
    starts = [round(i * span / max(1, count)) for i in range(count)]
    return [stream[s : s + length].tolist() for s in starts]


class BlockDataset:
    """Fixed-length token blocks for the Trainer: each item is `input_ids` and `labels` (the same ids; the model
    shifts them)."""

    def __init__(self, blocks: list[np.ndarray] | np.ndarray):
        self.blocks = np.stack(blocks) if len(blocks) else np.zeros((0, 1), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict:
        ids = self.blocks[i]
        return {"input_ids": ids, "labels": ids}

    @property
    def tokens(self) -> int:
        return int(self.blocks.size)


def selection_blocks(tokenizer, docs: list[str], config: TextDataConfig) -> BlockDataset | None:
    """Full blocks of the held-out slice for model selection during training (None when it holds no block:
    training then keeps its last weights)."""
    if not docs:
        return None
    blocks = pack_blocks(token_stream(tokenizer, docs, config.max_eval_tokens), config.block_size)
    return BlockDataset(blocks) if blocks else None


def train_blocks(tokenizer, docs: list[str], config: TextDataConfig) -> BlockDataset:
    """The training blocks (full blocks only), capped at `max_train_tokens`.

    Raises:
        RecipeError: the train split is shorter than one block.
    """
    stream = token_stream(tokenizer, docs, config.max_train_tokens)
    blocks = pack_blocks(stream, config.block_size)
    if not blocks:
        raise RecipeError(
            f"data.train: {len(stream)} tokens, fewer than one block (data.block_size = {config.block_size})"
        )
    return BlockDataset(blocks)

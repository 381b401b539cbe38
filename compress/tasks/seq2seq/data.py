"""Seq2seq data: source/target pairs from JSON Lines (two fields) or CSV / TSV (a header naming two columns),
optionally gzip-compressed. A slice of the train pairs is held out for choices and gates (every pair of one
source text goes to the same side, so no held-out input was trained on); dev and test are only ever measured.

Every problem with a file (missing, binary, not UTF-8, a line that is not an object, a missing field or
column, a value that is not text, no pairs at all) is a `RecipeError` naming the file and, where there is one,
the line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

from compress.datafiles import jsonl_objects, read_text, where
from compress.errors import RecipeError
from compress.tasks.seq2seq.config import PairDataConfig


@dataclass(frozen=True)
class Pairs:
    """Inputs and their reference outputs, in file order."""

    sources: list[str]
    targets: list[str]

    def __len__(self) -> int:
        return len(self.sources)

    def take(self, n: int | None) -> Pairs:
        return self if n is None else Pairs(self.sources[:n], self.targets[:n])


@dataclass(frozen=True)
class PairData:
    """The splits: train, held out of train (choices and gates), dev and test (reported)."""

    train: Pairs
    holdout: Pairs
    dev: Pairs
    test: Pairs | None


def _text(value, n: int, field: str, at: str) -> str:
    if not isinstance(value, str):
        raise RecipeError(f"{at}: line {n}: {field!r} is {json.dumps(value)[:40]}, expected a string")
    return value


def read_pairs(path: Path, key: str, config: PairDataConfig) -> Pairs:
    """The pairs of one file, in file order; a pair with an empty side is skipped.

    Raises:
        RecipeError: the file cannot be read as the format its name says, lacks a field, or holds no pairs.
    """
    path = Path(path)
    at = where(path, key)
    text = read_text(path, key)
    src_key, tgt_key = config.source_field, config.target_field
    rows: list[tuple[int, str, str]] = []
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".jsonl"):
        for n, rec in jsonl_objects(text, at):
            for field, cfg in ((src_key, "source_field"), (tgt_key, "target_field")):
                if field not in rec:
                    raise RecipeError(
                        f"data.{cfg} = {field!r}: line {n} of {path} has no such key (keys: {', '.join(rec)})"
                    )
            rows.append((n, _text(rec[src_key], n, src_key, at), _text(rec[tgt_key], n, tgt_key, at)))
    else:
        delimiter = "\t" if name.endswith(".tsv") else ","
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        columns = reader.fieldnames or []
        for field, cfg in ((src_key, "source_field"), (tgt_key, "target_field")):
            if field not in columns:
                raise RecipeError(f"data.{cfg} = {field!r}: {path} has no such column (columns: {', '.join(columns)})")
        for row in reader:
            n = reader.line_num
            if row.get(src_key) is None or row.get(tgt_key) is None:
                raise RecipeError(f"{at}: line {n} has fewer columns than the header")
            rows.append((n, row[src_key], row[tgt_key]))
    kept = [(s, t) for _, s, t in rows if s.strip() and t.strip()]
    if not kept:
        raise RecipeError(f"{at}: no pairs (every line lacks a source or a target text)")
    return Pairs([s for s, _ in kept], [t for _, t in kept])


def _held_out(source: str, fraction: float, seed: int) -> bool:
    """Whether a pair goes to the held-out slice: a hash of its source text and the seed (stable, and every pair of
    one source on the same side)."""
    digest = hashlib.sha256(f"{seed}\0{source}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def load_pair_data(config: PairDataConfig, seed: int = 42) -> PairData:
    """The recipe's splits, read and checked."""
    train = read_pairs(config.train, "train", config).take(config.max_train_examples)
    dev = read_pairs(config.dev, "dev", config).take(config.max_eval_examples)
    test = read_pairs(config.test, "test", config).take(config.max_eval_examples) if config.test else None
    held = [_held_out(s, config.holdout_fraction, seed) for s in train.sources]
    if config.holdout_fraction > 0 and not any(held):  # a tiny train set: hold out one source's pairs at least
        held = [s == train.sources[-1] for s in train.sources]
    kept = Pairs(
        [s for s, h in zip(train.sources, held, strict=True) if not h],
        [t for t, h in zip(train.targets, held, strict=True) if not h],
    )
    holdout = Pairs(
        [s for s, h in zip(train.sources, held, strict=True) if h],
        [t for t, h in zip(train.targets, held, strict=True) if h],
    )
    if not kept.sources:
        raise RecipeError(
            f"data.holdout_fraction = {config.holdout_fraction}: nothing of data.train is left to train on"
        )
    return PairData(kept, holdout.take(config.max_eval_examples), dev, test)

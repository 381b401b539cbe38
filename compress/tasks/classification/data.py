"""Task data: read TSV/CSV/JSONL splits, map labels to ids, tokenize without padding.

Padding happens per batch (dynamic padding) and batches are grouped by length, so the short SST-2 sentences
(about 13 tokens on average in train) are not padded to a fixed 128.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

from compress.batches import EncodedDataset
from compress.datafiles import jsonl_objects, read_text
from compress.errors import RecipeError
from compress.tasks.classification.config import DataConfig


@dataclass(frozen=True)
class Split:
    """One split of the task: texts and label ids."""

    texts: list[str]
    labels: list[int]


@dataclass(frozen=True)
class TaskData:
    """All splits, plus the label names in id order (shipped with the model)."""

    train: Split
    dev: Split
    test: Split | None
    label_names: list[str]
    holdout: Split | None = None  # carved from train, for choices (model selection, int8 settings): never dev/test


# csv's default field limit (131,072 characters) turns one long review into a traceback; texts are cut to
# max_length tokens anyway, so a long field is read, not refused.
_FIELD_LIMIT = 1 << 24


def _read_rows(path: Path, text_col: str, label_col: str, key: str) -> list[tuple[str, str]]:
    import io

    suffix = path.suffix.lower()
    where = f"data.{key} = {str(path)!r}"
    rows: list[tuple[str, str]] = []
    text = read_text(path, key)
    if suffix == ".jsonl":
        for n, rec in jsonl_objects(text, where):
            _check_columns(rec.keys(), path, text_col, label_col, key)
            value = rec[text_col]
            if not isinstance(value, str):
                raise RecipeError(f"{where}: line {n}: {text_col!r} is {_show(value)}, expected a string")
            rows.append((value, _label_str(rec[label_col], where, n)))
    else:
        csv.field_size_limit(_FIELD_LIMIT)
        f = io.StringIO(text, newline="")
        # TSV files of GLUE are unquoted: a quote character is part of the text.
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if suffix == ".tsv" else csv.DictReader(f)
        try:
            _check_columns(reader.fieldnames or [], path, text_col, label_col, key)
            for rec in reader:
                if rec[text_col] is None or rec[label_col] is None:
                    raise RecipeError(f"{where}: line {reader.line_num} has too few columns")
                rows.append((rec[text_col], _label_str(rec[label_col].strip(), where, reader.line_num)))
        except csv.Error as e:
            raise RecipeError(f"{where}: line {reader.line_num} cannot be parsed ({e})") from None
    if not rows:
        raise RecipeError(f"{where}: no rows")
    if not any(t.strip() for t, _ in rows):
        raise RecipeError(f"{where}: every text in column {text_col!r} is empty")
    return rows


def _show(value) -> str:
    return json.dumps(value)[:40] if not isinstance(value, float) else repr(value)


def _label_str(value, where: str = "", line: int = 0) -> str:
    """A label as its class name. Whole numbers are one class however written (0, 0.0, "0", "0.0"); a label that
    is null, a list, an object, a boolean, NaN or a fraction is an error naming the line and value."""
    if isinstance(value, str):
        stripped = value.strip()
        try:
            number = float(stripped)
        except ValueError:
            if not stripped:
                raise RecipeError(f"{where}: line {line}: the label is empty") from None
            return stripped
        value = number if stripped.lower() not in ("nan", "inf", "-inf", "infinity") else float("nan")
        if value == value and value.is_integer():
            return str(int(value))
        if value != value:
            raise RecipeError(f"{where}: line {line}: label {stripped!r} is not a class")
        return stripped
    if isinstance(value, bool) or value is None or isinstance(value, list | dict):
        raise RecipeError(f"{where}: line {line}: label {_show(value)} is not a class (a string or a whole number)")
    if isinstance(value, float):
        if value != value or not value.is_integer():
            raise RecipeError(f"{where}: line {line}: label {_show(value)} is not a class (a string or a whole number)")
        value = int(value)
    return str(value)


def _check_columns(columns, path: Path, text_col: str, label_col: str, key: str) -> None:
    columns = list(columns)
    for name, col in (("text_column", text_col), ("label_column", label_col)):
        if col not in columns:
            raise RecipeError(f"data.{name} = {col!r}: no such column in {path} (columns: {', '.join(columns)})")


def load_task_data(cfg: DataConfig) -> TaskData:
    """Read the splits named in the recipe.

    Raises:
        RecipeError: a missing column, an unparsable line, or a dev/test label that train does not have.
    """
    raw = {k: _read_rows(getattr(cfg, k), cfg.text_column, cfg.label_column, k) for k in ("train", "dev")}
    if cfg.test is not None:
        raw["test"] = _read_rows(cfg.test, cfg.text_column, cfg.label_column, "test")
    if cfg.labels:
        names = [_label_str(x, "data.labels", i + 1) for i, x in enumerate(cfg.labels)]
        if len(set(names)) != len(names):
            raise RecipeError(f"data.labels = {list(cfg.labels)}: two entries name one class ({names})")
    else:
        names = sorted({lab for _, lab in raw["train"]}, key=_label_sort_key)
    if len(names) < 2:
        raise RecipeError(f"data.label_column = {cfg.label_column!r}: train has fewer than 2 distinct labels")
    index = {n: i for i, n in enumerate(names)}
    splits: dict[str, Split] = {}
    for key, rows in raw.items():
        limit = cfg.max_train_examples if key == "train" else cfg.max_eval_examples
        if limit is not None:
            rows = rows[:limit]
        unknown = sorted({lab for _, lab in rows if lab not in index})
        if unknown:
            raise RecipeError(
                f"data.{key}: labels {unknown[:5]} are not among the known labels {names} (set data.labels)"
            )
        splits[key] = Split([t for t, _ in rows], [index[lab] for _, lab in rows])
    train, holdout = _carve_holdout(splits["train"], cfg.holdout_fraction)
    return TaskData(train, splits["dev"], splits.get("test"), names, holdout)


def _carve_holdout(train: Split, fraction: float) -> tuple[Split, Split | None]:
    """Move a fixed random `fraction` of train into a held-out split (the same examples on every run)."""
    n = min(round(len(train.labels) * fraction), len(train.labels) - 1)
    if n <= 0:
        return train, None
    order = list(range(len(train.labels)))
    random.Random(20261123).shuffle(order)  # fixed: the holdout must not move with the training seed
    held = set(order[:n])

    def pick(keep: bool) -> Split:
        idx = [i for i in range(len(train.labels)) if (i in held) != keep]
        return Split([train.texts[i] for i in idx], [train.labels[i] for i in idx])

    return pick(True), pick(False)


def _label_sort_key(label: str) -> tuple[int, float | str]:
    # Numeric labels sort numerically ("2" before "10"); others alphabetically.
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


def encode(tokenizer, split: Split, max_length: int, teacher_logits=None) -> EncodedDataset:
    """Tokenize a split with truncation and no padding."""
    enc = tokenizer(split.texts, truncation=True, max_length=max_length, padding=False)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return EncodedDataset({k: enc[k] for k in keys}, split.labels, teacher_logits)



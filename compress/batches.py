"""Batches of tokenized examples for training and inference, whatever the task: a dataset of unpadded
encodings (with a teacher's cached outputs for distillation), a collator that pads each batch to its longest
member, and length-sorted batches for fast passes over a split."""

from __future__ import annotations

import numpy as np
import torch


class EncodedDataset(torch.utils.data.Dataset):
    """Tokenized examples (unpadded), optionally with the teacher's cached logits for distillation."""

    def __init__(self, encodings: dict[str, list[list[int]]], labels: list[int], teacher_logits=None):
        self.encodings = encodings
        self.labels = labels
        self.teacher_logits = teacher_logits  # (N, C) float32 array or None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.encodings.items()}
        item["labels"] = self.labels[i]
        if self.teacher_logits is not None:
            item["teacher_logits"] = self.teacher_logits[i]
        return item

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.encodings["input_ids"]]


class PadCollator:
    """Pads a batch to its longest member and stacks teacher logits when present."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        logits = [f.pop("teacher_logits") for f in features if "teacher_logits" in f]
        batch = self.tokenizer.pad(features, padding="longest", return_tensors="pt")
        if logits:
            batch["teacher_logits"] = torch.as_tensor(np.stack(logits), dtype=torch.float32)
        return batch


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, for fast inference over a whole split."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

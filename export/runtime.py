"""Uniform inference over a PyTorch model and an ONNX Runtime session, for checks and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.batches import length_sorted_batches
from export.session import ort_session, session_options  # noqa: F401  (re-exported)


class OrtClassifier:
    """An ONNX sequence classifier on ONNX Runtime's CPU provider; call it with a dict of int64 arrays."""

    runtime = "onnxruntime"

    def __init__(self, model_path: Path, threads: int = 1):
        self.session = ort_session(model_path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {k: np.asarray(batch[k], dtype=np.int64) for k in self.input_names}
        return self.session.run(["logits"], feeds)[0]


class TorchClassifier:
    """A PyTorch sequence classifier in eager mode; call it with a dict of int64 arrays."""

    runtime = "torch"

    def __init__(self, model_or_dir, threads: int | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification

        if threads is not None:
            torch.set_num_threads(threads)
        if isinstance(model_or_dir, str | Path):
            model_or_dir = AutoModelForSequenceClassification.from_pretrained(model_or_dir, local_files_only=True)
        self.model = model_or_dir.eval()
        self._torch = torch

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            feeds = {k: torch.as_tensor(np.asarray(v, dtype=np.int64)) for k, v in batch.items()}
            return self.model(**feeds).logits.float().numpy()


def tokenize_each(tokenizer, texts: list[str], max_length: int) -> list[dict[str, np.ndarray]]:
    """One (1, T) batch per text at its real length: what a single-sentence request looks like."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{k: np.asarray([enc[k][i]], dtype=np.int64) for k in keys} for i in range(len(texts))]


def batched_logits(classifier, tokenizer, texts: list[str], max_length: int, batch_size: int = 32) -> np.ndarray:
    """Logits for every text, in order, from length-sorted padded batches."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    lengths = [len(x) for x in enc["input_ids"]]
    out: np.ndarray | None = None
    for idx in length_sorted_batches(lengths, batch_size):
        batch = tokenizer.pad({k: [enc[k][i] for i in idx] for k in enc}, padding="longest", return_tensors="np")
        logits = classifier(dict(batch))
        if out is None:
            out = np.zeros((len(texts), logits.shape[-1]), dtype=np.float32)
        out[idx] = logits
    return out


def accuracy_evaluator(tokenizer, texts: list[str], labels: list[int], max_length: int, threads: int = 2):
    """An `ONNX path -> accuracy` callable over fixed sentences (for int8 choices on held-out data).

    One sentence per call, as a device serves it and as the benchmark measures: dynamic int8 quantizes the
    activations of each call, so padding and batch neighbours would change what is being chosen.
    """
    requests = tokenize_each(tokenizer, texts, max_length)

    def evaluate(path: Path) -> float:
        clf = OrtClassifier(path, threads=threads)
        preds = [int(clf(r)[0].argmax()) for r in requests]
        return float((np.asarray(preds) == np.asarray(labels)).mean())

    return evaluate

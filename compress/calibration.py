"""Calibration inputs for static int8: real sentences, one (1, T) request each, at their own lengths."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

Feed = dict[str, np.ndarray]


def calibration_feeds(tokenizer, texts: Sequence[str], max_length: int, input_names: Sequence[str]) -> list[Feed]:
    """Tokenize each text alone (batch 1, no padding): the shapes the deployed model sees per request.

    Calibrating on padded batches would put [PAD] positions into the activation ranges; requests at their
    real lengths do not have them. ONNX Runtime's calibrators reduce every output to its min/max or a
    histogram, so inputs of different sequence lengths mix freely.

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: the calibration sentences.
        max_length: truncation length.
        input_names: the ONNX model's input names (e.g. `input_ids`, `attention_mask`, `token_type_ids`).

    Returns:
        One feed dict of int64 arrays of shape (1, T) per text.
    """
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    missing = [k for k in input_names if k not in enc]
    if missing:
        raise ValueError(f"the tokenizer does not produce the model inputs {missing}")
    return [{k: np.asarray([enc[k][i]], dtype=np.int64) for k in input_names} for i in range(len(texts))]


def model_input_names(model_path: Path) -> list[str]:
    """The graph inputs of an ONNX model (initializers excluded)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in inits]


class FeedReader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over a fixed list of feeds; rewindable, so one list serves many runs."""

    def __init__(self, feeds: Sequence[Feed]):
        self.feeds = list(feeds)
        self._start, self._end = 0, len(self.feeds)
        self._next = 0

    def get_next(self) -> Feed | None:
        if self._next >= self._end:
            return None
        self._next += 1
        return self.feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = self._start

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        # quantize_static's CalibStridedMinMax option walks the data in slices through this.
        self._start, self._end = start_index, min(end_index, len(self.feeds))
        self._next = self._start

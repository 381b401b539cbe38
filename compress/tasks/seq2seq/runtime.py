"""Running a seq2seq ONNX directory over a split, as the bundle does (`bundle_template/translate.py`): the
outputs the gates and the benchmark score."""

from __future__ import annotations

from pathlib import Path

from compress.tasks.seq2seq.bundle_template.translate import Translator


def onnx_outputs(
    onnx_dir: Path, tokenizer, sources: list[str], data_cfg, threads: int = 2, batch_size: int = 1
) -> list[list[int]]:
    """Greedy output ids of each source through ONNX Runtime, in order: one input at a time by default, as an app
    translates and as the bundle runs, because a dynamic-int8 graph quantizes its activations with one scale
    per batch (an input's output can change with the inputs batched beside it: measured, 7 of 20 on a tiny
    model). `batch_size` > 1 batches inputs of similar length."""
    translator = Translator(onnx_dir, threads=threads)
    enc = tokenizer(
        [data_cfg.source_prefix + s for s in sources], truncation=True, max_length=data_cfg.max_source_length
    )["input_ids"]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    outs: list[list[int]] = [[] for _ in sources]
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        for i, out in zip(idx, translator.greedy([enc[i] for i in idx], data_cfg.max_target_length), strict=True):
            outs[i] = out
    return outs


def texts(tokenizer, outputs: list[list[int]]) -> list[str]:
    """Output ids as text (special tokens dropped)."""
    return tokenizer.batch_decode(outputs, skip_special_tokens=True)

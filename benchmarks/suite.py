"""Benchmark stage: every variant measured the same way, in one session, on the artifact that ships."""

from __future__ import annotations

import gzip
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from benchmarks.latency import measure_latency
from benchmarks.memory import measure_peak_rss
from compress.data import TaskData
from compress.hardware import cpu_info
from compress.manifest import library_versions
from compress.recipe import BenchmarkConfig
from export.runtime import OrtClassifier, TorchClassifier, batched_logits, tokenize_each


@dataclass(frozen=True)
class Variant:
    """One model to measure. `path` is model.onnx for onnxruntime, the model directory for torch."""

    name: str
    stage: str  # teacher, distill, prune, quantize or baseline
    runtime: str  # torch or onnxruntime
    parent: str | None
    path: Path
    tokenizer_dir: Path
    params: int
    layers: int


def size_on_disk(variant: Variant) -> dict:
    """Bytes of the weights file(s) as shipped, raw and gzip-compressed (level 6)."""
    files = [variant.path] if variant.path.is_file() else sorted(variant.path.glob("*.safetensors"))
    raw = sum(f.stat().st_size for f in files)
    gz = sum(len(gzip.compress(f.read_bytes(), compresslevel=6)) for f in files)
    return {"size_bytes": raw, "size_gzip_bytes": gz}


def _load(variant: Variant, threads: int):
    if variant.runtime == "onnxruntime":
        return OrtClassifier(variant.path, threads=threads)
    return TorchClassifier(variant.path, threads=threads)


def benchmark(
    variants: list[Variant], data: TaskData, config: BenchmarkConfig, *, max_length: int, reference: str
) -> dict:
    """Accuracy (dev, test), single-stream latency, size and peak RSS of each variant.

    Args:
        reference: the variant whose predictions the others' agreement is measured against (the teacher).

    Returns:
        The report: environment, settings and one record per variant (schema in the README).
    """
    from transformers import AutoTokenizer

    eval_threads = os.cpu_count() or 1
    records: dict[str, dict] = {}
    preds: dict[str, dict[str, np.ndarray]] = {}
    for v in tqdm(variants, desc="accuracy", unit="variant"):
        tok = AutoTokenizer.from_pretrained(v.tokenizer_dir, local_files_only=True)
        clf = _load(v, eval_threads)
        rec = {k: (str(x) if isinstance(x, Path) else x) for k, x in asdict(v).items()}
        preds[v.name] = {}
        for split_name in ("dev", "test"):
            split = getattr(data, split_name)
            if split is None:
                continue
            logits = batched_logits(clf, tok, split.texts, max_length)
            preds[v.name][split_name] = logits.argmax(-1)
            rec[f"accuracy_{split_name}" if split_name != "dev" else "accuracy"] = float(
                (logits.argmax(-1) == np.asarray(split.labels)).mean()
            )
        rec.update(size_on_disk(v))
        records[v.name] = rec
        del clf
    for name, rec in records.items():
        rec["agreement_with_teacher"] = float((preds[name]["dev"] == preds[reference]["dev"]).mean())

    # Latency: every variant loaded with the benchmark thread count, requests interleaved.
    tok = AutoTokenizer.from_pretrained(variants[0].tokenizer_dir, local_files_only=True)
    texts = data.dev.texts[: config.latency_examples] if config.latency_examples else data.dev.texts
    requests = tokenize_each(tok, texts, max_length)
    runners = {v.name: _load(v, config.threads) for v in variants}
    t0 = time.perf_counter()
    lat = measure_latency(
        runners,
        requests,
        warmup=config.warmup,
        passes=config.passes,
        progress=lambda it: tqdm(it, desc=f"latency x{len(variants)} variants", unit="req"),
    )
    latency_wall = time.perf_counter() - t0
    del runners
    for name, stats in lat.items():
        records[name]["latency_ms"] = stats

    if config.memory:
        probe_texts = data.dev.texts[:32]
        for v in tqdm(variants, desc="peak RSS (fresh process each)", unit="variant"):
            records[v.name].update(
                measure_peak_rss(
                    v.runtime,
                    v.path,
                    v.tokenizer_dir,
                    probe_texts,
                    threads=config.threads,
                    max_length=max_length,
                )
            )

    lengths = [int(r["input_ids"].shape[1]) for r in requests]
    return {
        "environment": {
            "cpu": cpu_info(),
            "threads": config.threads,
            "execution_provider": "CPUExecutionProvider",
            "versions": library_versions(),
        },
        "settings": {
            "latency": "single stream, batch 1, each dev sentence at its real tokenized length",
            "batch_size": 1,
            "requests": len(requests),
            "passes": config.passes,
            "warmup": config.warmup,
            "seq_len_mean": float(np.mean(lengths)),
            "seq_len_max": int(max(lengths)),
            "latency_wall_s": latency_wall,
            "accuracy_threads": eval_threads,
        },
        "reference": reference,
        "variants": [records[v.name] for v in variants],
    }

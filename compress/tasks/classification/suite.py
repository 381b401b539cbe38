"""Benchmark stage: every variant measured the same way, in one run, on the artifact that ships.

Accuracy and agreement with the teacher come from the main process (ONNX Runtime for ONNX artifacts, also
on the `.ort` conversion when asked). Latency and throughput come from one fresh worker process per target
(`compress.tasks.classification.worker`), memory from one fresh process per model and target (`benchmarks.memory`).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from benchmarks.memory import measure_peak_rss
from benchmarks.process import environment
from compress.hardware import cpu_info
from compress.targets import BASELINES, Target, resolve_target
from compress.tasks.classification.config import BenchmarkConfig
from compress.tasks.classification.data import TaskData
from compress.tasks.classification.worker import measure_target
from export.artifact import Artifact, file_sizes
from export.runtime import OrtClassifier, TorchClassifier, batched_logits, tokenize_each

# Distinct sentences used at each fixed length: the content hardly matters when the length is fixed.
FIXED_LENGTH_EXAMPLES = 128


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
    """Bytes of the weights file(s) as shipped, raw and gzip-compressed (level 6): every ONNX file of the
    artifact (`export.artifact`), or a PyTorch model directory's safetensors."""
    if variant.path.is_file():
        return Artifact.read(variant.path.parent).sizes()
    return file_sizes(sorted(variant.path.glob("*.safetensors")))


def _load(variant: Variant, threads: int):
    if variant.runtime == "onnxruntime":
        return OrtClassifier(variant.path, threads=threads)
    return TorchClassifier(variant.path, threads=threads)


def _max_positions(variants: list[Variant]) -> int | None:
    import json

    found = []
    for v in variants:
        cfg = Path(v.tokenizer_dir) / "config.json"
        if cfg.is_file():
            n = json.loads(cfg.read_text()).get("max_position_embeddings")
            if isinstance(n, int):
                found.append(n)
    return min(found) if found else None


def fixed_length_requests(tokenizer, texts: list[str], length: int) -> list[dict[str, np.ndarray]]:
    """One (1, `length`) request per non-empty text: the text repeated until it has enough tokens, then truncated.

    Real words at a controlled length, rather than padding (whose cost ONNX Runtime pays all the same, but
    which no request in service carries).
    """
    out = []
    for t in texts:
        n = len(tokenizer(t, add_special_tokens=False)["input_ids"])
        if n == 0:  # nothing to repeat
            continue
        text = " ".join([t] * (math.ceil(length / n) + 1))
        enc = tokenizer(text, truncation=True, max_length=length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        out.append({k: np.asarray([enc[k]], dtype=np.int64) for k in keys})
    return out


def throughput_batches(tokenizer, texts: list[str], batch_size: int, max_length: int) -> list[dict[str, np.ndarray]]:
    """Consecutive texts in batches of `batch_size`, each padded to its longest (no sorting by length:
    requests arrive in no particular order). A short last batch is dropped unless it is the only one."""
    n = len(texts) if len(texts) < batch_size else len(texts) - len(texts) % batch_size
    batches = []
    for i in range(0, n, batch_size):
        enc = tokenizer(texts[i : i + batch_size], truncation=True, max_length=max_length, padding="longest")
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        batches.append({k: np.asarray(enc[k], dtype=np.int64) for k in keys})
    return batches


def _lists(requests: list[dict[str, np.ndarray]]) -> list[dict[str, list]]:
    return [{k: v.tolist() for k, v in r.items()} for r in requests]


def split_logits(classifier, tokenizer, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    """Logits for every text: each alone at its real length (batch_size 1, what a device serving one request
    at a time computes) or in length-sorted padded batches."""
    if batch_size > 1:
        return batched_logits(classifier, tokenizer, texts, max_length, batch_size=batch_size)
    return np.concatenate([classifier(r) for r in tokenize_each(tokenizer, texts, max_length)])


def _accuracy(
    variants: list[Variant], data: TaskData, max_length: int, threads: int, batch_size: int
) -> tuple[dict, dict]:
    from transformers import AutoTokenizer

    records: dict[str, dict] = {}
    preds: dict[str, dict[str, np.ndarray]] = {}
    for v in tqdm(variants, desc="accuracy", unit="variant"):
        tok = AutoTokenizer.from_pretrained(v.tokenizer_dir, local_files_only=True)
        clf = _load(v, threads)
        rec = {k: (str(x) if isinstance(x, Path) else x) for k, x in asdict(v).items()}
        preds[v.name] = {}
        for split_name in ("dev", "test"):
            split = getattr(data, split_name)
            if split is None:
                continue
            logits = split_logits(clf, tok, split.texts, max_length, batch_size)
            preds[v.name][split_name] = logits.argmax(-1)
            key = "accuracy" if split_name == "dev" else f"accuracy_{split_name}"
            rec[key] = float((logits.argmax(-1) == np.asarray(split.labels)).mean())
        rec.update(size_on_disk(v))
        records[v.name] = rec
        del clf
    return records, preds


def _ort_format(
    v: Variant, data: TaskData, max_length: int, threads: int, batch_size: int, work_dir: Path, onnx_preds: dict
) -> dict:
    """Convert to .ort, measure accuracy of the .ort file itself, ask the mobile usability checker."""
    from transformers import AutoTokenizer

    from export.mobile import convert_to_ort, mobile_usability

    conv = convert_to_ort(v.path, work_dir / v.name)
    ort_path = Path(conv["ort_path"])
    tok = AutoTokenizer.from_pretrained(v.tokenizer_dir, local_files_only=True)
    clf = OrtClassifier(ort_path, threads=threads)
    rec: dict[str, Any] = {"path": str(ort_path), **file_sizes([ort_path])}
    for split_name in ("dev", "test"):
        split = getattr(data, split_name)
        if split is None:
            continue
        pred = split_logits(clf, tok, split.texts, max_length, batch_size).argmax(-1)
        key = "accuracy" if split_name == "dev" else f"accuracy_{split_name}"
        rec[key] = float((pred == np.asarray(split.labels)).mean())
        rec[f"agreement_with_onnx{'' if split_name == 'dev' else '_' + split_name}"] = float(
            (pred == onnx_preds[split_name]).mean()
        )
    usability = mobile_usability(v.path)
    rec["mobile_usability"] = {k: usability[k] for k in ("eps", "dynamic_inputs", "try_npu", "verdict")}
    return rec


_INT8_KERNELS = {"MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "QLinearMatMul", "QuantizeLinear"}


def _compute(variants: list[Variant], records: dict, targets, requests: list[dict], log) -> dict:
    """MACs per request (`compress.structured.macs_per_token` of each variant's config, averaged over the
    requests' lengths) and the share of this CPU's measured peak (`benchmarks.peak`, int8 or fp32 by the
    variant's kernels) that each target's p50 reaches; writes `records[name]["compute"]`, returns the peaks."""
    import onnx
    from transformers import AutoConfig

    from benchmarks.peak import measure_peak_macs, share_of_peak
    from compress.structured import macs_per_token

    lengths = [len(r["input_ids"][0]) for r in requests]
    threads = sorted({t.threads for t in targets})
    log(f"    matrix-multiply peak of this CPU through ONNX Runtime at {threads} thread(s)")
    peaks = {str(n): measure_peak_macs(n) for n in threads}
    for v in variants:
        try:
            config = AutoConfig.from_pretrained(v.tokenizer_dir, local_files_only=True)
            macs = float(np.mean([macs_per_token(config, n) * n for n in lengths]))
        except (OSError, ValueError, KeyError):  # a config this project cannot count: no compute figures
            continue
        kind = "fp32"
        if v.runtime == "onnxruntime":
            ops = {n.op_type for n in onnx.load(str(v.path), load_external_data=False).graph.node}
            kind = "int8" if ops & _INT8_KERNELS else "fp32"
        rec = records[v.name]
        rec["compute"] = {"macs_per_request": macs, "kernels": kind, "targets": {}}
        for target, figures in rec["targets"].items():
            t = next(t for t in targets if t.name == target)
            p50 = figures["latency_ms"][next(iter(figures["latency_ms"]))]["p50"] / 1e3
            rec["compute"]["targets"][target] = {
                "macs_per_s": macs / p50,
                "share_of_peak": share_of_peak(macs, p50, peaks[str(t.threads)][kind]),
            }
    return peaks


def _add_agreement(records: dict, preds: dict, reference: str) -> None:
    """Write each variant's agreement with the reference's predictions (dev, and test when there is one)."""
    for name, rec in records.items():
        rec["agreement_with_teacher"] = float((preds[name]["dev"] == preds[reference]["dev"]).mean())
        if "test" in preds[name]:
            rec["agreement_with_teacher_test"] = float((preds[name]["test"] == preds[reference]["test"]).mean())


def _add_ort_records(
    variants: list[Variant],
    data: TaskData,
    s: BenchmarkConfig,
    max_length: int,
    eval_threads: int,
    work_dir: Path | None,
    records: dict,
    preds: dict,
) -> None:
    """Write `records[name]["ort"]` for every deployable ONNX variant: its `.ort` conversion, measured."""
    deployable = [v for v in variants if v.runtime == "onnxruntime" and v.name not in BASELINES]
    with tempfile.TemporaryDirectory() as tmp:
        ort_dir = Path(work_dir) / "ort" if work_dir is not None else Path(tmp)
        for v in tqdm(deployable, desc=".ort conversion and mobile check", unit="variant"):
            rec = _ort_format(v, data, max_length, eval_threads, s.accuracy_batch_size, ort_dir, preds[v.name])
            if work_dir is None:
                rec["path"] = None  # converted in a temporary directory, gone after this call
            records[v.name]["ort"] = rec


def _requests(
    variants: list[Variant], data: TaskData, s: BenchmarkConfig, max_length: int
) -> tuple[dict[str, list[dict]], dict[str, dict], list, dict[str, list[dict]]]:
    """The latency requests per length, their length figures, the lengths skipped and the throughput batches."""
    from transformers import AutoTokenizer

    # The requests: the same token ids for every variant and target. With a trimmed vocabulary in the run, the
    # smallest vocabulary tokenizes them: its ids are valid for every model (each vocabulary holds at least
    # as many rows), and latency depends on the sequence length, not on which ids fill it.
    dirs = {str(v.tokenizer_dir) for v in variants}
    tok = min((AutoTokenizer.from_pretrained(d, local_files_only=True) for d in sorted(dirs)), key=len)
    texts = data.dev.texts[: s.latency_examples] if s.latency_examples else data.dev.texts
    request_sets: dict[str, list[dict]] = {}
    lengths_info: dict[str, dict] = {}
    limit = _max_positions(variants)
    skipped = []
    for length in s.lengths:
        if length == "real":
            reqs = tokenize_each(tok, texts, max_length)
        elif limit is not None and length > limit:
            skipped.append(length)
            continue
        else:
            reqs = fixed_length_requests(tok, texts[:FIXED_LENGTH_EXAMPLES], length)
        seq = [int(r["input_ids"].shape[1]) for r in reqs]
        request_sets[str(length)] = _lists(reqs)
        lengths_info[str(length)] = {
            "distinct_requests": len(reqs),
            "seq_len_mean": float(np.mean(seq)),
            "seq_len_max": max(seq),
        }
    batch_sets = {str(b): _lists(throughput_batches(tok, texts, b, max_length)) for b in s.batch_sizes}
    return request_sets, lengths_info, skipped, batch_sets


def _measure_targets(
    variants: list[Variant],
    targets: list[Target],
    request_sets: dict[str, list[dict]],
    batch_sets: dict[str, list[dict]],
    s: BenchmarkConfig,
    baselines: list[str],
    log: Callable[[str], None],
) -> tuple[dict[str, dict], float]:
    """Latency and throughput of every variant on each target (a worker per target), and the wall time taken."""
    protocol = {
        "warmup": s.warmup,
        "requests": s.requests,
        "seconds": s.seconds,
        "passes": s.passes,
        "throughput_seconds": s.throughput_seconds,
        "bootstrap_resamples": s.bootstrap_resamples,
        "confidence": s.confidence,
    }
    spec_variants = [{"name": v.name, "runtime": v.runtime, "path": str(v.path)} for v in variants]
    per_target: dict[str, dict] = {}
    t0 = time.perf_counter()
    for target in targets:
        budget = f"{s.passes} pass(es)" if s.passes else f"up to {s.requests} requests or {s.seconds:g} s per length"
        log(
            f"    benchmark target {target.name}: {target.threads} thread(s), cores "
            f"{list(target.cpus) if target.cpus else 'any'}, spinning {'on' if target.spinning else 'off'}; "
            f"{len(variants)} variants interleaved, "
            f"lengths {list(request_sets)}, {budget}"
            + (f", throughput at batch {s.batch_sizes}" if s.batch_sizes else "")
        )
        per_target[target.name] = measure_target(target, spec_variants, request_sets, batch_sets, protocol, baselines)
    return per_target, time.perf_counter() - t0


def _measure_memory(
    variants: list[Variant],
    targets: list[Target],
    data: TaskData,
    max_length: int,
    per_target: dict[str, dict],
    log: Callable[[str], None],
) -> None:
    """Write `per_target[target]["memory"]`: each variant's peak RSS on each target, a fresh process per model."""
    probe_texts = data.dev.texts[:32]
    for target in targets:
        log(f"    peak RSS on target {target.name}: a fresh process per model")
        # The no-model process loads the variant's own tokenizer: a trimmed vocabulary's tokenizer takes a few
        # MB less than the teacher's, and a shared baseline would book that difference to the model.
        base: dict[tuple[str, str], dict] = {}
        for v in variants:
            m = measure_peak_rss(
                v.runtime,
                v.path,
                v.tokenizer_dir,
                probe_texts,
                threads=target.threads,
                max_length=max_length,
                cpus=target.cpus,
                memory_limit_bytes=target.memory_limit_bytes,
                baseline=base.get((v.runtime, str(v.tokenizer_dir))),
                probe="compress.tasks.classification.probe",
            )
            base[(v.runtime, str(v.tokenizer_dir))] = m.pop("baseline")
            per_target[target.name].setdefault("memory", {})[v.name] = m


def _add_target_records(
    variants: list[Variant],
    targets: list[Target],
    records: dict,
    per_target: dict[str, dict],
    primary: str,
    request_sets: dict[str, list[dict]],
) -> None:
    """Write each variant's figures per target, and the primary target's latency (and memory) at its top level."""
    for v in variants:
        rec = records[v.name]
        rec["targets"] = {}
        for target in targets:
            res = per_target[target.name]
            rec["targets"][target.name] = {
                "latency_ms": {k: res["latency"][k][v.name] for k in res["latency"]},
                "speedup": {k: res["speedup"][k][v.name] for k in res["speedup"]},
                "throughput": {b: res["throughput"][b][v.name] for b in res["throughput"]},
                "load_s": res["load_s"][v.name],
                **({"memory": res["memory"][v.name]} if "memory" in res else {}),
            }
        primary_rec = rec["targets"][primary]
        rec["latency_ms"] = primary_rec["latency_ms"][next(iter(request_sets))]
        if "memory" in primary_rec and "error" not in primary_rec["memory"]:
            rec.update({k: x for k, x in primary_rec["memory"].items() if k != "fits_memory_limit"})


def benchmark(
    variants: list[Variant],
    data: TaskData,
    config: BenchmarkConfig,
    *,
    max_length: int,
    reference: str,
    work_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Accuracy (dev, test), latency per target and length, throughput, size and peak RSS of each variant.

    Args:
        variants: the models; names in `BASELINES` are the reference points of every ratio.
        data: dev (and test) splits; dev sentences are also the latency requests.
        config: the recipe's `benchmark` section.
        max_length: truncation length of the task.
        reference: the variant whose predictions the others' agreement is measured against (the teacher).
        work_dir: where `.ort` conversions are kept (default: a temporary directory, removed afterwards).
        log: where one line per measurement phase goes.

    Returns:
        environment, settings and one record per variant (schema in the README).
    """
    s = config
    cpu = cpu_info()
    eval_threads = s.accuracy_threads or os.cpu_count() or 1
    records, preds = _accuracy(variants, data, max_length, eval_threads, s.accuracy_batch_size)
    _add_agreement(records, preds, reference)
    if s.ort_format:
        _add_ort_records(variants, data, s, max_length, eval_threads, work_dir, records, preds)

    request_sets, lengths_info, skipped, batch_sets = _requests(variants, data, s, max_length)
    baselines = [b for b in BASELINES if b in records]
    targets: list[Target] = [resolve_target(t) for t in s.targets]
    per_target, latency_wall = _measure_targets(variants, targets, request_sets, batch_sets, s, baselines, log)
    if s.memory:
        _measure_memory(variants, targets, data, max_length, per_target, log)
    _add_target_records(variants, targets, records, per_target, s.primary, request_sets)

    first = next(iter(request_sets))
    peaks = _compute(variants, records, targets, request_sets[first], log)
    return {
        "environment": environment(targets, s.primary, per_target, cpu=cpu) | {"peak_macs_per_s": peaks},
        "settings": {
            "latency": "single stream, batch 1, each dev sentence at its real tokenized length"
            if first == "real"
            else f"single stream, batch 1, {first} tokens",
            "batch_size": 1,
            "requests": lengths_info[first]["distinct_requests"],
            "passes": s.passes,
            "warmup": s.warmup,
            "seq_len_mean": lengths_info[first]["seq_len_mean"],
            "seq_len_max": lengths_info[first]["seq_len_max"],
            "latency_wall_s": latency_wall,
            "accuracy_threads": eval_threads,
            "accuracy_batch_size": s.accuracy_batch_size,
            "primary_target": s.primary,
            "lengths": lengths_info,
            "skipped_lengths": skipped,
            "throughput_batch_sizes": list(s.batch_sizes),
            "protocol": s.model_dump(mode="json"),
            "baselines": baselines,
        },
        "reference": reference,
        "variants": [records[v.name] for v in variants],
    }

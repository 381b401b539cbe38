"""The seq2seq benchmark: every variant's quality on dev and test through the runtime it ships in, and its
sentence latency on each target.

Quality is chrF and BLEU (sacrebleu) of greedy outputs: the PyTorch teacher through `generate`, every ONNX
variant through the bundle's loop. Speed is measured in one fresh worker process per target
(`compress.tasks.seq2seq.worker`), the variants interleaved on the same dev inputs one at a time; the figures are
sentences per second (1 / mean sentence latency), p50/p90 latency, and output tokens per second. Beside them, the
anchor a user would otherwise ship: the teacher in CTranslate2 at int8 (`compress.tasks.seq2seq.anchors`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.latency import percentiles
from benchmarks.process import environment
from compress.targets import resolve_target
from export.artifact import file_sizes

OUTPUTS_DIR = "outputs"  # each variant's dev outputs, one JSON line per input (the bundle checks against them)


def _score(ctx, name: str, runtime: str, path: Path, tokenizer, model=None) -> dict:
    from compress.tasks.seq2seq.model import greedy_outputs, quality
    from compress.tasks.seq2seq.runtime import onnx_outputs, texts

    r, data = ctx.recipe, ctx.data
    figures: dict = {}
    outputs: dict[str, list[str]] = {}
    for split_name in ("dev", "test"):
        split = getattr(data, split_name)
        if split is None:
            continue
        if runtime == "ctranslate2":
            from compress.tasks.seq2seq.anchors import CT2Translator

            ct2 = CT2Translator(path, torch.get_num_threads(), r.data.max_target_length)
            enc = tokenizer([r.data.source_prefix + s for s in split.sources], truncation=True,
                            max_length=r.data.max_source_length)["input_ids"]  # fmt: skip
            ids = [ct2.greedy(x) for x in enc]
        elif runtime in ("torch", "optimum"):
            if runtime == "optimum" and model is None:
                from compress.tasks.seq2seq.baselines import optimum_model

                model = optimum_model(path, torch.get_num_threads())
            ids = greedy_outputs(
                model,
                tokenizer,
                [r.data.source_prefix + s for s in split.sources],
                r.data.max_target_length,
                r.data.max_source_length,
            )
        else:
            ids = onnx_outputs(path, tokenizer, split.sources, r.data, threads=torch.get_num_threads())
        outputs[split_name] = texts(tokenizer, ids)
        q = quality(outputs[split_name], split.targets)
        figures[f"{split_name}_chrf"], figures[f"{split_name}_bleu"] = q["chrf"], q["bleu"]
        figures[f"{split_name}_output_tokens"] = float(np.mean([len(x) for x in ids]))
    ctx.log(f"    {name}: dev chrF {figures['dev_chrf']:.2f}, BLEU {figures['dev_bleu']:.2f}")
    return figures, outputs


def _memory(rows: list[dict], target, inputs: list[list[int]], max_length: int, res: dict) -> None:
    """Peak RSS of a fresh process per variant translating `inputs` under the target's limits (and of one that
    loads no model, per runtime: `model_rss_bytes` is the difference)."""
    from benchmarks.memory import measure_peak_rss

    texts = [" ".join(map(str, x)) for x in inputs]
    base: dict[str, dict] = {}
    for row in rows:
        m = measure_peak_rss(row["runtime"], row["path"], Path(row["path"]), texts, threads=target.threads,
                             cpus=target.cpus, memory_limit_bytes=target.memory_limit_bytes,
                             baseline=base.get(row["runtime"]), probe="compress.tasks.seq2seq.probe",
                             max_length=max_length)  # fmt: skip
        base[row["runtime"]] = m.pop("baseline")
        res.setdefault("memory", {})[row["name"]] = m


def run_suite(ctx, variants, artifacts: dict[str, Path], out: Path) -> dict:
    """Quality and speed of the teacher (PyTorch and ONNX) and every built variant; returns the results."""
    from compress.tasks.seq2seq.worker import measure_target

    r = ctx.recipe
    s = r.benchmark
    teacher, tokenizer = ctx.load("teacher")
    rows = [
        {
            "name": "teacher-torch",
            "stage": "teacher",
            "runtime": "torch",
            "parent": None,
            "path": ctx.model_dir("teacher"),
        },
        {
            "name": "teacher-onnx",
            "stage": "export",
            "runtime": "onnxruntime",
            "parent": "teacher-torch",
            "path": artifacts["teacher-onnx"],
        },
    ] + [
        {
            "name": v.name,
            "stage": v.stage,
            "runtime": "onnxruntime",
            "parent": v.parent,
            "path": artifacts[v.name],
            "model": v.model,
        }
        for v in variants
    ]
    from compress.tasks.seq2seq.baselines import optimum_dirs

    for name, path in optimum_dirs(artifacts["teacher-onnx"], out / "baselines").items():
        rows.append(
            {
                "name": name,
                "stage": "anchor" if name == "teacher-optimum" else "baseline",
                "runtime": "optimum",
                "parent": "teacher-torch",
                "path": path,
            }
        )
    anchors = {"built": {}, "unavailable": []}
    if "ctranslate2-int8" in s.anchors:
        from compress.tasks.seq2seq.anchors import CT2_INT8, build_ct2

        built = build_ct2(ctx.model_dir("teacher"), out / "anchors" / CT2_INT8)
        if "path" in built:
            anchors["built"][CT2_INT8] = {**built, "runtime": "ctranslate2", "compute_type": "int8"}
            rows.append({"name": CT2_INT8, "stage": "anchor", "runtime": "ctranslate2", "parent": "teacher-torch",
                         "path": Path(built["path"])})  # fmt: skip
        else:
            anchors["unavailable"].append({"name": CT2_INT8, "reason": built["reason"]})
            ctx.log(f"    anchor {CT2_INT8} unavailable: {built['reason']}")
    (out / OUTPUTS_DIR).mkdir()
    for row in rows:
        model = teacher if row["runtime"] == "torch" else None
        figures, outputs = _score(ctx, row["name"], row["runtime"], row["path"], tokenizer, model)
        row.update(figures)
        with open(out / OUTPUTS_DIR / f"{row['name']}.dev.jsonl", "w", encoding="utf-8") as f:
            for src, hyp in zip(ctx.data.dev.sources, outputs["dev"], strict=True):
                f.write(json.dumps({"input": src, "output": hyp}, ensure_ascii=False) + "\n")
        model_step = r.model_step(row.get("model", "teacher"))
        row["params"] = ctx.metrics(model_step).get("params")
        weights = [f for f in Path(row["path"]).iterdir()
                   if f.name.endswith((".onnx", ".onnx_data", ".safetensors", ".bin"))]  # fmt: skip
        row.update(file_sizes(weights))
    timed = ctx.data.dev.sources[: s.sentences]
    inputs = tokenizer([r.data.source_prefix + x for x in timed], truncation=True, max_length=r.data.max_source_length)[
        "input_ids"
    ]
    targets = [resolve_target(t) for t in s.targets]
    per_target = {}
    for target in targets:
        ctx.log(
            f"    timing {len(rows)} variants on {target.name} ({target.threads} threads), {len(inputs)} inputs "
            f"x {s.runs} runs"
        )
        res = measure_target(
            target,
            [{"name": row["name"], "runtime": row["runtime"], "path": str(row["path"])} for row in rows],
            inputs,
            {"max_length": r.data.max_target_length, "runs": s.runs, "warmup": s.warmup},
        )
        per_target[target.name] = res
        if s.memory:
            _memory(rows, target, inputs[:8], r.data.max_target_length, res)
        for row in rows:
            times = res["sentence_s"][row["name"]]
            made = res["output_tokens"][row["name"]]
            row.setdefault("targets", {})[target.name] = {
                "sentence_ms": percentiles(times),
                "sentences_per_s": len(times) / sum(times),
                "output_tokens_per_s": sum(made) / sum(times),
                "load_s": res["load_s"][row["name"]],
                **(res.get("memory") or {}).get(row["name"], {}),
            }
    primary = s.primary
    for row in rows:
        row["sentences_per_s"] = row["targets"][primary]["sentences_per_s"]
        row["peak_rss_bytes"] = row["targets"][primary].get("peak_rss_bytes")
        row["model_rss_bytes"] = row["targets"][primary].get("model_rss_bytes")
        row["path"] = str(row["path"])
    return {
        "environment": environment(targets, primary, per_target),
        "settings": {
            "primary_target": primary,
            "timed_inputs": len(inputs),
            "runs": s.runs,
            "warmup": s.warmup,
            "max_length": r.data.max_target_length,
            "decoding": "greedy",
            "batch": 1,
            "dev_inputs": len(ctx.data.dev),
            "test_inputs": len(ctx.data.test) if ctx.data.test else 0,
        },
        "variants": rows,
        "anchors": anchors,
    }

"""The classification run's report: what `compress.tasks.classification.suite` measured, as `report.json`, its
sections and figures (written by `benchmarks.report.write_report`), and its rows in `edge-compress compare`.

`report.json`, schema_version 2 (version 1's keys are all still there; new keys are marked +):

    schema_version, task (+), run, reference (+: the variant agreement is measured against)
    environment: cpu {model, machine, logical_cores, isa {avx2, avx512_vnni, ...}}, threads (primary target's),
        execution_provider, versions {...},
        + targets {NAME: {threads, cpus (pinned cores or null), memory_limit_bytes, intra_op_spinning (false),
                   oversubscribed, process {affinity, ort_intra_op_threads, ort_allow_spinning, torch_threads,
                   omp_wait_policy: read back inside the worker}, worker_wall_s}},
        + emulation (the sentence saying targets are emulated on this CPU)
    settings: latency, batch_size, requests, passes, warmup, seq_len_mean, seq_len_max, latency_wall_s,
        accuracy_threads, + accuracy_batch_size, primary_target, lengths {"real" | "16" ...: {distinct_requests,
        seq_len_mean, seq_len_max}}, skipped_lengths, throughput_batch_sizes, protocol (the BenchmarkConfig),
        baselines
    variants: [{name, stage, runtime, parent, path, tokenizer_dir, params, layers,
        accuracy (dev), accuracy_test, agreement_with_teacher (dev), + agreement_with_teacher_test,
        latency_ms {p50, p90, p99, mean, min, max, n, + ci {p50: [lo, hi], p90, p99}, + confidence}:
            the primary target at real lengths,
        size_bytes, size_gzip_bytes, peak_rss_bytes, baseline_rss_bytes, model_rss_bytes, load_s (primary target),
        + targets {NAME: {latency_ms {"real" | "16" | ...: as latency_ms above},
                          speedup {"real" | ...: {BASELINE: {ratio, ci [lo, hi]}}}  (paired bootstrap),
                          throughput {"1" | "8" | "32": {sentences_per_s, batch_p50_ms, batches, seq_len_mean}},
                          load_s (in the worker),
                          memory {peak_rss_bytes, baseline_rss_bytes, model_rss_bytes, load_s,
                                  fits_memory_limit (with a cap), error (when the probe failed under the cap)}}},
        + ort {path, size_bytes, size_gzip_bytes, accuracy, accuracy_test, agreement_with_onnx,
               agreement_with_onnx_test, mobile_usability {eps {NNAPI | CoreML ...: {as_is, fixed_shapes, best}},
               dynamic_inputs, try_npu, verdict}}  (deployable ONNX variants, when settings.ort_format),
        ratios {BASELINE: {speedup_p50, size_ratio, size_gzip_ratio, accuracy_delta, peak_rss_ratio,
                           + speedup_p50_by_target {NAME: {ratio, ci}}}}}]
    + pareto {NAME: [variant names on the accuracy / p50 front, fastest first]}
    stages {STEP: {wall_s, started, ended}}
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.document import (
    Section,
    cpu_line,
    gated_note,
    gated_rows,
    mb,
    ms,
    pct,
    stage_section,
    steps_section,
    target_line,
)
from benchmarks.plots import pareto_front
from benchmarks.report import build_envelope, cell, delta, relative, render_comparison, write_report
from compress.targets import BASELINES
from compress.tasks.classification.plots import all_plots


def _ratios(v: dict, base: dict) -> dict:
    out = {
        "speedup_p50": base["latency_ms"]["p50"] / v["latency_ms"]["p50"],
        "size_ratio": v["size_bytes"] / base["size_bytes"],
        "size_gzip_ratio": v["size_gzip_bytes"] / base["size_gzip_bytes"],
        "accuracy_delta": v["accuracy"] - base["accuracy"],
    }
    if v.get("peak_rss_bytes") and base.get("peak_rss_bytes"):
        out["peak_rss_ratio"] = v["peak_rss_bytes"] / base["peak_rss_bytes"]
    if "targets" in v:
        by_target = {}
        for t, rec in v["targets"].items():
            first = next(iter(rec["speedup"]), None)
            if v["name"] == base["name"]:
                by_target[t] = {"ratio": 1.0, "ci": [1.0, 1.0]}
            elif first is not None and base["name"] in rec["speedup"][first]:
                by_target[t] = rec["speedup"][first][base["name"]]
        out["speedup_p50_by_target"] = by_target
    return out


def _pareto_by_target(variants: list[dict]) -> dict[str, list[str]]:
    targets = list(variants[0].get("targets", {})) if variants else []
    out = {}
    for t in targets:
        pts = [(_headline(v["targets"][t]["latency_ms"])["p50"], v["accuracy"]) for v in variants]
        out[t] = [variants[i]["name"] for i in pareto_front(pts)]
    return out


def _headline(latency_sets: dict) -> dict:
    """The real-length figures of a target, or its first length setting when real lengths were not run."""
    return latency_sets.get("real") or next(iter(latency_sets.values()))


def _step_summary(step: str, m: dict) -> dict:
    """The few figures of a step's metrics a reader of the report needs (the manifest has them all)."""
    keys = {
        "teacher": ("dev_accuracy_torch", "params", "layers", "trained"),
        "distill": (
            "dev_accuracy_torch",
            "test_accuracy_torch",
            "holdout_accuracy",
            "best_step",
            "params",
            "macs_per_token",
            "teacher_macs_per_token",
            "layer_indices",
        ),
        "prune": (
            "method",
            "dev_accuracy_torch",
            "sparsity_prunable",
            "per_layer",
            "heads_per_layer",
            "ffn_size",
            "params_before",
            "params",
            "macs_per_token_before",
            "macs_per_token",
            "hidden_weight",
        ),
        "quantize": ("method", "reduce_range", "reduce_range_reason", "int8_ops", "shipped"),
    }.get(step.split("/")[0], ())
    out = {k: m[k] for k in keys if k in m}
    if "selection" in m:
        out["selection"] = {
            "chosen": m["selection"]["chosen"],
            "reason": m["selection"]["reason"],
            "candidates": {c["name"]: c["score"] for c in m["selection"]["candidates"]},
        }
    if "budget" in m:
        b = m["budget"]
        out["budget"] = {
            k: b[k] for k in ("accuracy", "fp32_accuracy", "max_accuracy_drop", "excluded_nodes") if k in b
        }
    for key in ("vocab", "augment"):
        if m.get(key):
            out[key] = {k: v for k, v in m[key].items() if not isinstance(v, dict | list)}
    if isinstance(m.get("loss"), dict):
        weights = ("alpha", "hidden_weight", "attention_weight", "value_relation_weight")
        out["loss"] = {k: m["loss"][k] for k in weights if m["loss"].get(k)}
    return out


def build_report(results: dict, manifest: dict) -> dict:
    """Merge benchmark results with the manifest's stage records into the report document (schema above)."""
    report = build_envelope(results, manifest, task="classification", ratios=_ratios, step_summary=_step_summary)
    report["pareto"] = _pareto_by_target(report["variants"])
    return report


def _main_table(report: dict) -> Section:
    env, s = report["environment"], report["settings"]
    primary = s.get("primary_target")
    where = f"target **{primary}**, " if primary else ""
    if s.get("passes") or "protocol" not in s:
        timed = f"{s.get('passes') or 1} pass(es) over {s['requests']} sentences"
    else:
        timed = f"timed requests until {s['protocol']['requests']} or {s['protocol']['seconds']:g} s"
    sec = Section(
        paragraphs=[
            f"CPU: {cpu_line(env)}. Latency: {s['latency']}, {where}{env['threads']} thread(s), "
            f"{env['execution_provider']}, {s['warmup']} warm-up requests, then {timed}, mean length "
            f"{s['seq_len_mean']:.1f} tokens (max {s['seq_len_max']}); variants interleaved per request.",
            "Accuracy is on the dev split through each variant's own runtime (ONNX Runtime for ONNX artifacts), "
            + (
                "each sentence alone as a device serves it. "
                if s.get("accuracy_batch_size", 32) == 1
                else f"in padded batches of {s.get('accuracy_batch_size', 32)} (dynamic int8 predictions can "
                "differ slightly from single requests). "
            )
            + "Ratios are against the teacher in PyTorch eager (speed-up = teacher p50 / variant p50).",
        ],
        header=[
            "variant",
            "stage",
            "runtime",
            "layers",
            "params",
            "dev acc",
            "Δ acc",
            "test acc",
            "agree w/ teacher",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "speed-up",
            "size MB",
            "gzip MB",
            "size ratio",
            "peak RSS MB",
            "model RSS MB",
            "gate",
        ],  # fmt: skip
        right=set(range(3, 18)),
    )
    front = set(report.get("pareto", {}).get(primary, []))
    for v in report["variants"]:
        r = v["ratios"].get("teacher-torch", {})
        lat = v["latency_ms"]
        sec.rows.append(
            [
                v["name"] + (" ★" if v["name"] in front and v["name"] not in BASELINES else ""),
                v["stage"],
                v["runtime"],
                str(v["layers"]),
                f"{v['params'] / 1e6:.1f}M",
                pct(v["accuracy"]),
                f"{r.get('accuracy_delta', 0) * 100:+.2f}",
                pct(v.get("accuracy_test")),
                f"{v['agreement_with_teacher'] * 100:.1f}%",
                ms(lat["p50"]),
                ms(lat["p90"]),
                ms(lat["p99"]),
                f"{r.get('speedup_p50', 1):.2f}x",
                mb(v["size_bytes"]),
                mb(v["size_gzip_bytes"]),
                f"{r.get('size_ratio', 1):.2f}",
                mb(v.get("peak_rss_bytes")),
                mb(v.get("model_rss_bytes")),
                "pass" if v["name"] not in BASELINES else "",
            ]
        )
    sec.rows += gated_rows(report, len(sec.header))
    sec.paragraphs.append(gated_note(report))
    if front:
        sec.paragraphs.append(f"★ on the accuracy/latency Pareto front of target {primary} (not dominated).")
    return sec


def _ci(lat: dict) -> str:
    ci = lat.get("ci", {}).get("p50")
    return f"{ms(lat['p50'])} ({ms(ci[0])}–{ms(ci[1])})" if ci and ci[0] != ci[1] else ms(lat["p50"])


def _target_sections(report: dict) -> list[Section]:
    env, variants = report["environment"], report["variants"]
    targets = env.get("targets") or {}
    if not targets or "targets" not in variants[0]:
        return []
    baselines = [b for b in BASELINES if any(v["name"] == b for v in variants)]
    conf = report["settings"].get("protocol", {}).get("confidence", 0.95)
    out = [
        Section(
            "Latency by target",
            paragraphs=[
                env.get("emulation", ""),
                f"p50 with its {conf:.0%} bootstrap confidence interval, at the dev sentences' real lengths; "
                "p50 at fixed lengths (the dev sentences repeated and cut to N tokens); speed-up over each "
                "baseline with a paired bootstrap interval (the same requests, timed interleaved). "
                "Each target runs in its own fresh process.",
            ],
        )
    ]
    for t, desc in targets.items():
        sets = list(variants[0]["targets"][t]["latency_ms"])
        fixed = [k for k in sets if k != "real"]
        first = sets[0]
        header = ["variant", f"p50 ms ({conf:.0%} CI)", "p90 ms", "p99 ms", "n"]
        header += [f"p50 @{k} tok" for k in fixed] + [f"× {b}" for b in baselines] + ["load s"]
        sec = Section(f"{t}", level=3, paragraphs=[target_line(t, desc, env)], header=header)
        sec.right = set(range(1, len(header)))
        if first != "real":
            sec.paragraphs.append(f"The first columns are at {first} tokens.")
        for v in variants:
            rec = v["targets"][t]
            lat = rec["latency_ms"][first]
            row = [v["name"], _ci(lat), ms(lat["p90"]), ms(lat["p99"]), str(lat["n"])]
            row += [ms(rec["latency_ms"][k]["p50"]) for k in fixed]
            for b in baselines:
                sp = rec["speedup"][first].get(b)
                row.append("1" if v["name"] == b else f"{sp['ratio']:.2f} ({sp['ci'][0]:.2f}–{sp['ci'][1]:.2f})")
            row.append(f"{rec['load_s']:.2f}")
            sec.rows.append(row)
        out.append(sec)
        batch = list(variants[0]["targets"][t]["throughput"])
        has_mem = "memory" in variants[0]["targets"][t]
        if batch or has_mem:
            header = ["variant"] + [f"batch {b} sent/s" for b in batch]
            if has_mem:
                header += ["peak RSS MB", "no-model process MB", "model RSS MB", "load s (fresh)"]
                if desc.get("memory_limit_bytes"):
                    header.append(f"fits {desc['memory_limit_bytes'] / 2**20:.0f} MiB")
            sec2 = Section(None, header=header, right=set(range(1, len(header))))
            for v in variants:
                rec = v["targets"][t]
                row = [v["name"]] + [f"{rec['throughput'][b]['sentences_per_s']:.0f}" for b in batch]
                if has_mem:
                    m = rec["memory"]
                    row += [mb(m.get("peak_rss_bytes")), mb(m.get("baseline_rss_bytes")), mb(m.get("model_rss_bytes"))]
                    row.append(f"{m['load_s']:.2f}" if "load_s" in m else "–")
                    if desc.get("memory_limit_bytes"):
                        row.append("yes" if m.get("fits_memory_limit") else "**no**")
                sec2.rows.append(row)
            out.append(sec2)
    out.append(Section(plot="accuracy_vs_latency", caption="Accuracy against p50 latency per target"))
    out.append(Section(plot="latency_by_length", caption="p50 latency by input length"))
    return out


def _compute_section(report: dict) -> list[Section]:
    """MACs per request and the share of the CPU's measured matrix-multiply peak each variant reaches."""
    rows = [v for v in report["variants"] if "compute" in v]
    peaks = report["environment"].get("peak_macs_per_s") or {}
    if not rows or not peaks:
        return []
    targets = list(rows[0]["compute"]["targets"])
    peak_text = "; ".join(
        f"{n} thread(s): fp32 {p['fp32'] / 1e9:.0f}, int8 {p['int8'] / 1e9:.0f} GMAC/s" for n, p in peaks.items()
    )
    header = ["variant", "kernels", "MMACs / request"]
    header += [x for t in targets for x in (f"GMAC/s {t}", f"share of peak {t}")]
    sec = Section(
        "Compute: MACs and the share of this CPU's peak",
        paragraphs=[
            "MACs per request: the matrix products of the encoder (projections, attention, FFN) at each dev "
            "sentence's real length, averaged; embeddings, pooler, classifier, LayerNorm and softmax are left out. "
            f"Peak: one large product (256 x 1024 x 1024) through ONNX Runtime on this CPU, best call: {peak_text}. "
            "The share is MACs / p50 / the peak of the variant's kernels (int8 for quantized graphs): what is "
            "left to 100% is per-call overhead, small operators and memory traffic, not arithmetic.",
        ],
        header=header,
        right=set(range(2, len(header))),
    )
    for v in rows:
        c = v["compute"]
        row = [v["name"], c["kernels"], f"{c['macs_per_request'] / 1e6:.1f}"]
        for t in targets:
            f = c["targets"][t]
            row += [f"{f['macs_per_s'] / 1e9:.1f}", f"{f['share_of_peak']:.1%}"]
        sec.rows.append(row)
    return [sec]


def _mobile_section(report: dict) -> list[Section]:
    rows = [v for v in report["variants"] if "ort" in v]
    if not rows:
        return []
    eps = list(rows[0]["ort"]["mobile_usability"]["eps"])
    sec = Section(
        "Mobile format (.ort) and NPU coverage",
        paragraphs=[
            "Each deployable ONNX variant converted to ONNX Runtime's mobile format "
            "(`onnxruntime.tools.convert_onnx_models_to_ort`, fixed optimizations); its accuracy is measured on "
            "the `.ort` file itself. NPU columns: `onnxruntime.tools.check_onnx_model_mobile_usability`'s "
            "verdict for the model as it is (dynamic input shapes) / with fixed input shapes.",
        ],
        header=["variant", ".ort MB", ".ort gzip MB", ".ort dev acc", "agree w/ ONNX", *eps],
        right={1, 2, 3, 4},
    )
    for v in rows:
        o = v["ort"]
        cells = []
        for ep in eps:
            r = o["mobile_usability"]["eps"][ep]
            fixed = r["fixed_shapes"]["suitability"] if r["fixed_shapes"] else r["as_is"]["suitability"]
            cells.append(f"{r['as_is']['suitability']} / {fixed}")
        sec.rows.append(
            [v["name"], mb(o["size_bytes"]), mb(o["size_gzip_bytes"]), pct(o.get("accuracy")),
             f"{o.get('agreement_with_onnx', 0) * 100:.1f}%", *cells]
        )  # fmt: skip
        sec.bullets.append(f"{v['name']}: {o['mobile_usability']['verdict']}")
    sec.paragraphs.append(
        "Dynamic int8 (DynamicQuantizeLinear, MatMulInteger) is outside NNAPI's and CoreML's operator sets: such "
        "a model runs on the CPU provider. A static QDQ variant is the candidate for an NPU."
    )
    return [sec]


def sections(report: dict) -> list[Section]:
    """The classification report's sections, in order."""
    out = [Section(f"edge-compress report: {report['run']}", level=1), _main_table(report)]
    out += _target_sections(report)
    out += _compute_section(report)
    out.append(Section("Size and memory", plot="size_and_memory", caption="Size on disk and peak memory"))
    out += _mobile_section(report)
    out += steps_section(report)
    out += stage_section(report)
    out.append(
        Section(
            "Notes",
            paragraphs=[
                "Throughput batches are consecutive dev sentences padded to the longest in the batch: with short "
                "sentences of varied length, the padding can cost more than batching saves, so batch 1 at real "
                "lengths may serve more sentences per second.",
                "Unstructured sparsity shrinks the gzip size, not the latency: ONNX Runtime's CPU kernels are "
                "dense. Structured pruning removes whole heads and FFN neurons, so its matrices are smaller and it is "
                "what speeds a model up. Peak RSS is measured in a fresh process per model; model RSS subtracts the "
                "same process without a model. Compare ratios measured in the same run, not absolute milliseconds "
                "across machines or runs.",
            ],
        )
    )
    return out


def write(run_dir: Path, results: dict, manifest: dict) -> dict:
    """Write the run's report (`report.json`, `.md`, `.html`, figures) into `run_dir`; returns the document."""
    report = build_report(results, manifest)
    return write_report(report, sections(report), all_plots(report), run_dir)


def compare_row(x: dict, y: dict) -> dict:
    """One variant's figures in two runs (`benchmarks.report.compare_reports`)."""
    row = {
        "accuracy": delta(x.get("accuracy"), y.get("accuracy")),
        "p50_ms": delta(x["latency_ms"]["p50"], y["latency_ms"]["p50"]),
    }
    for k in ("size_bytes", "size_gzip_bytes", "peak_rss_bytes"):
        row[k] = delta(x.get(k), y.get(k))
    tx, ty = x.get("targets", {}), y.get("targets", {})
    row["targets"] = {}
    for t in [t for t in tx if t in ty]:
        lx, ly = tx[t]["latency_ms"], ty[t]["latency_ms"]
        row["targets"][t] = {k: delta(lx[k]["p50"], ly[k]["p50"]) for k in lx if k in ly}
    return row


def render_compare(cmp: dict) -> str:
    """The comparison as a plain-text table: accuracy, p50, size and memory; p50 per target and length."""

    def cells(r: dict) -> list[str]:
        return [
            cell(r["accuracy"], lambda x: f"{x * 100:.2f}%", lambda d: f"{d['delta'] * 100:+.2f} pt"),
            cell(r["p50_ms"], lambda x: f"{x:.2f}"),
            cell(r["size_bytes"], lambda x: f"{x / 1e6:.1f}"),
            cell(r["size_gzip_bytes"], lambda x: f"{x / 1e6:.1f}"),
            cell(r["peak_rss_bytes"], lambda x: f"{x / 1e6:.0f}"),
        ]

    per_target = ("p50 ms per target and length:", lambda k, d: f"{k:>5}  {cell(d, lambda x: f'{x:.2f}', relative)}")
    return render_comparison(cmp, ["dev acc", "p50 ms", "size MB", "gzip MB", "peak RSS MB"], cells, per_target)

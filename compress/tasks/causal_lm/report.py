"""The causal-LM run's report: what `compress.tasks.causal_lm.suite` measured, as `report.json` and its sections.

`report.json` for `task: causal-lm` (schema_version 2, `task` names the task):

    schema_version, task, run, reference, not_shipped, steps, stages, environment (as the classifier's),
    settings: primary_target, ttft_headline_length, prompt_lengths, new_tokens, prompts_per_length, runs, warmup,
        decoding, perplexity, dev_tokens, test_tokens, greedy_prompts, greedy_prompt_tokens, greedy_tokens,
        memory_context, eval_threads, quality_wall_s, protocol, baselines
    mixed_precision {STEP: {budget_kind (perplexity | size), budget (ratio | MB), sensitivity_int4_alone, tried,
        assignment, perplexity_ratio, size_bytes, ...}}
    anchors: {built: {NAME: {path, runtime, command, build_s, builder}}, unavailable: [{name, reason}]}
    variants: [{name, stage, runtime (torch | optimum | onnxruntime | genai | llama.cpp), parent, path, model_dir,
        params, layers,
        perplexity (dev), perplexity_test, dev_tokens, agreement_with_teacher (teacher-forced greedy next token),
        kl_to_teacher (KL(teacher || variant) on dev, nats per token),
        control {model, perplexity, perplexity_ratio} (its own or its nearest ancestor's equal-training control),
        greedy_prefix_match, greedy_identical_with_teacher, greedy {prompts, new_tokens, tokens},
        size_bytes, size_gzip_bytes (size_gzip_estimated: true where a file past 256 MB was sampled,
        `export.artifact.gzip_size`),
        ttft_ms (primary target, headline prompt length), decode_ms_per_token, tokens_per_s (primary target),
        peak_rss_bytes, baseline_rss_bytes, model_rss_bytes, load_s (primary target),
        targets {NAME: {ttft_ms {LENGTH: {p50, p90, ...}}, decode_ms_per_token {p50, p90, mean, ...},
                        decode_ms_per_token_by_length, tokens_per_s, tokens_per_s_ci, cpu_per_wall (CPU
                        seconds over wall seconds while it generated), vs_parent (another runtime's row: our
                        tokens/s over its, paired), load_s, memory {...}}},
        ort {path, size_bytes, perplexity_first_blocks, perplexity_first_blocks_onnx, greedy_identical_with_onnx},
        ratios {BASELINE: {tokens_per_s_ratio, ttft_speedup, size_ratio, perplexity_ratio, peak_rss_ratio,
                           tokens_per_s_ratio_by_target {NAME}}}}]
    pareto {TARGET: [variant names on the perplexity / per-token latency front, fastest first]}
    controls {STUDENT OR CUT: the equal-training control's metrics (compress.tasks.causal_lm.control)}
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
from compress.targets import BASELINES, is_reference
from compress.tasks.causal_lm.plots import all_plots


def _ratios(v: dict, base: dict) -> dict:
    def ratio(a, b):
        return a / b if a and b else None

    out = {
        "tokens_per_s_ratio": ratio(v.get("tokens_per_s"), base.get("tokens_per_s")),
        "ttft_speedup": ratio((base.get("ttft_ms") or {}).get("p50"), (v.get("ttft_ms") or {}).get("p50")),
        "size_ratio": ratio(v["size_bytes"], base["size_bytes"]),
        "size_gzip_ratio": ratio(v["size_gzip_bytes"], base["size_gzip_bytes"]),
        "perplexity_ratio": ratio(v["perplexity"], base["perplexity"]),
        "peak_rss_ratio": ratio(v.get("peak_rss_bytes"), base.get("peak_rss_bytes")),
    }
    out["tokens_per_s_ratio_by_target"] = {
        t: ratio(rec.get("tokens_per_s"), base["targets"][t].get("tokens_per_s"))
        for t, rec in v.get("targets", {}).items()
        if t in base.get("targets", {})
    }
    return out


def _pareto(variants: list[dict]) -> dict[str, list[str]]:
    out = {}
    for t in list(variants[0].get("targets", {})) if variants else []:
        # pareto_front wants (cost, benefit): per-token latency against minus perplexity.
        pts = [(v["targets"][t]["decode_ms_per_token"]["mean"], -v["perplexity"]) for v in variants]
        out[t] = [variants[i]["name"] for i in pareto_front(pts)]
    return out


def lm_step_summary(step: str, m: dict) -> dict:
    """The figures of an LM step's metrics a reader of the report needs (the manifest has them all)."""
    keys = {
        "teacher": ("trained", "source", "dev_perplexity_torch", "params", "layers", "train_tokens", "train_steps"),
        "distill": (
            "dev_perplexity_torch",
            "test_perplexity_torch",
            "dev_agreement_with_teacher_torch",
            "holdout_perplexity_best",
            "params",
            "macs_per_token",
            "teacher_macs_per_token",
            "layer_indices",
            "train_tokens",
            "train_wall_s",
        ),
        "prune": (
            "method",
            "sparsity_prunable",
            "cut",
            "params",
            "macs_per_token",
            "dev_perplexity_torch_before_finetune",
            "dev_perplexity_torch",
        ),
        "export": ("max_abs_logit_diff", "greedy_identical", "check_prompts", "new_tokens"),
        "quantize": (
            "method",
            "quantized_ops",
            "holdout_perplexity_fp32",
            "holdout_perplexity",
            "holdout_perplexity_ratio",
            "size_bytes",
            "shipped",
        ),
    }.get(step.split("/")[0], ())
    out = {k: m[k] for k in keys if k in m}
    level = m.get("accuracy_level")
    if isinstance(level, dict):
        out["accuracy_level"] = level.get("chosen")
    return out


def build_lm_report(results: dict, manifest: dict) -> dict:
    """Merge the LM benchmark's results with the manifest's stage records into the report document."""
    report = build_envelope(results, manifest, task="causal-lm", ratios=_ratios, step_summary=lm_step_summary)
    stages = manifest["stages"]
    report["accuracy_levels"] = {
        name: rec["metrics"]["accuracy_level"]
        for name, rec in stages.items()
        if rec and isinstance((rec.get("metrics") or {}).get("accuracy_level"), dict)
    }
    report["mixed_precision"] = {
        name: rec["metrics"]["mixed_precision"]
        for name, rec in stages.items()
        if rec and isinstance((rec.get("metrics") or {}).get("mixed_precision"), dict)
    }
    report["anchors"] = results.get("anchors") or {"built": {}, "unavailable": []}
    report["pareto"] = _pareto(report["variants"])
    report["controls"] = {
        name.split("/", 1)[-1]: rec["metrics"]["control"]
        for name, rec in stages.items()
        if rec and isinstance((rec.get("metrics") or {}).get("control"), dict)
    }
    by_name = {v["name"]: v for v in report["variants"]}
    for v in report["variants"]:
        model = _control_of(v, by_name, report["controls"])
        if model is not None:
            control = report["controls"][model]["dev_perplexity_torch"]
            v["control"] = {"model": model, "perplexity": control, "perplexity_ratio": v["perplexity"] / control}
    return report


def _control_of(v: dict, by_name: dict, controls: dict) -> str | None:
    """The student or cut whose equal-training control `v` is measured against: itself, or, for a quantized
    copy (same shape, no further training), its source's. Other variants (an unstructured prune, which was
    trained further) have none."""
    seen = set()
    while v is not None and v["name"] not in seen:
        if v["name"] in controls:
            return v["name"]
        if v.get("stage") != "quantize":
            return None
        seen.add(v["name"])
        v = by_name.get(v.get("parent"))
    return None


def _ppl(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _kl(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _control_section(report: dict) -> list[Section]:
    """Each student and cut (and what was made of them) against the teacher and against its equal-training
    control: distillation's and pruning's value, measured."""
    controls = report.get("controls") or {}
    rows = [v for v in report["variants"] if v.get("control")]
    if not rows:
        return []
    sec = Section(
        "Compression against equal training",
        paragraphs=[
            "Each student and structured cut has a control: a model of its shape, from random weights, trained on "
            "the corpus alone (no teacher) for as many training blocks as the variant saw in its lineage (a cut: "
            "the student's distillation and its own fine-tune). A variant below its control's perplexity owes "
            "that to the teacher; a control below the variant says the teacher's knowledge did not survive the "
            "compression. A quantized copy is set against its source's control; a variant trained further without "
            "a control of its own (an unstructured prune) has none. KL: KL(teacher || variant) of the next-token "
            "distributions on dev, nats per token (0 = the teacher's predictions exactly). Control perplexities "
            "are measured in PyTorch; the variants' through their own runtime.",
        ],
        header=["variant", "runtime", "dev ppl", "× teacher", "KL nats", "agree", "control", "control dev ppl",
                "× control", "control steps"],  # fmt: skip
        right={2, 3, 4, 5, 7, 8, 9},
    )
    for v in rows:
        c, r = v["control"], v["ratios"].get("teacher-torch", {})
        sec.rows.append(
            [
                v["name"],
                v["runtime"],
                _ppl(v["perplexity"]),
                f"{r['perplexity_ratio']:.3f}" if r.get("perplexity_ratio") else "–",
                _kl(v.get("kl_to_teacher")),
                pct(v["agreement_with_teacher"]),
                c["model"],
                _ppl(c["perplexity"]),
                f"{c['perplexity_ratio']:.3f}",
                f"{controls[c['model']]['train_steps']:,}",
            ]
        )
    return [sec]


def _main_table(report: dict) -> Section:
    env, s = report["environment"], report["settings"]
    primary = s["primary_target"]
    length = s["ttft_headline_length"]
    sec = Section(
        paragraphs=[
            f"CPU: {cpu_line(env)}. Target **{primary}** ({env['threads']} thread(s)): time to first token (TTFT) "
            f"with a {length}-token prompt, and decode latency per token, {s['decoding']}; "
            f"{s['prompts_per_length']} prompt(s) per length x {s['runs']} run(s), variants interleaved.",
            f"Perplexity on dev ({s['dev_tokens']:,} predicted tokens) and test, {s['perplexity']}, through each "
            "variant's own runtime. Agreement: share of dev positions where the variant's greedy next token is the "
            f"teacher's. Greedy prefix: mean share of {s['greedy_tokens']} greedy tokens, from "
            f"{s['greedy_prompts']} dev prompts, identical to the teacher's before the first difference. KL: "
            "KL(teacher || variant) of the next-token distributions on dev, nats per token; KL parent: the same "
            "to the model the variant was quantized, pruned or distilled from (its `parent`), on the first dev "
            "blocks.",
            "Runtimes: `torch` is transformers' `generate`; `optimum` is optimum's `ORTModelForCausalLM`; "
            "`onnxruntime` is this project's decoder loop (the bundle's `generate.py`); `genai` and `llama.cpp` "
            "run the anchors (the teacher as ONNX Runtime GenAI's builder and llama.cpp make it) through their own "
            "generators.",
        ],
        header=[
            "variant",
            "stage",
            "runtime",
            "layers",
            "params",
            "dev ppl",
            "× teacher ppl",
            "KL nats",
            "KL parent",
            "test ppl",
            "agree",
            "greedy prefix",
            f"TTFT ms @{length}",
            "ms/token p50",
            "p90",
            "tokens/s",
            "× torch tok/s",
            "size MB",
            "gzip MB",
            "peak RSS MB",
            "model RSS MB",
            "gate",
        ],  # fmt: skip
        right=set(range(3, 21)),
    )
    front = set(report.get("pareto", {}).get(primary, []))
    for v in report["variants"]:
        r = v["ratios"].get("teacher-torch", {})
        d = v.get("decode_ms_per_token") or {}
        sec.rows.append(
            [
                v["name"] + (" ★" if v["name"] in front and not is_reference(v) else ""),
                v["stage"],
                v["runtime"],
                str(v["layers"]),
                f"{v['params'] / 1e6:.1f}M",
                _ppl(v["perplexity"]),
                f"{r['perplexity_ratio']:.3f}" if r.get("perplexity_ratio") else "–",
                _kl(v.get("kl_to_teacher")),
                _kl(v.get("kl_to_parent")),
                _ppl(v.get("perplexity_test")),
                pct(v["agreement_with_teacher"]),
                pct(v["greedy_prefix_match"]),
                ms((v.get("ttft_ms") or {}).get("p50")),
                ms(d.get("p50")),
                ms(d.get("p90")),
                f"{v['tokens_per_s']:.0f}" if v.get("tokens_per_s") else "–",
                f"{r['tokens_per_s_ratio']:.2f}x" if r.get("tokens_per_s_ratio") else "–",
                mb(v["size_bytes"]),
                mb(v["size_gzip_bytes"]) + (" (est.)" if v.get("size_gzip_estimated") else ""),
                mb(v.get("peak_rss_bytes")),
                mb(v.get("model_rss_bytes")),
                "pass" if not is_reference(v) else "",
            ]
        )
    sec.rows += gated_rows(report, len(sec.header))
    sec.paragraphs.append(gated_note(report))
    if front:
        sec.paragraphs.append(f"★ on the perplexity / decode-latency Pareto front of target {primary}.")
    return sec


def _target_sections(report: dict) -> list[Section]:
    env, variants, s = report["environment"], report["variants"], report["settings"]
    out = [
        Section(
            "Speed and memory by target",
            paragraphs=[
                env.get("emulation", ""),
                "TTFT p50 (p90) per prompt length; decode ms per token over all lengths; tokens/s = 1000 / mean "
                "ms per token, with its 95% bootstrap interval over the timed generations. Peak RSS: a fresh "
                "process per model generating "
                f"{s['new_tokens']} tokens after a {s['memory_context']}-token prompt; model RSS subtracts the "
                "same process without a model. Each target runs in its own fresh process.",
            ],
        )
    ]
    baselines = [b for b in BASELINES if any(v["name"] == b for v in variants)]
    for t, desc in (env.get("targets") or {}).items():
        lengths = list(variants[0]["targets"][t]["ttft_ms"])
        header = ["variant"] + [f"TTFT @{n}" for n in lengths] + ["ms/token p50", "p90", "tokens/s", "CPU/wall"]
        header += [f"× {b}" for b in baselines] + ["peak RSS MB", "model RSS MB", "load s"]
        if desc.get("memory_limit_bytes"):
            header.append(f"fits {desc['memory_limit_bytes'] / 2**20:.0f} MiB")
        sec = Section(t, level=3, paragraphs=[target_line(t, desc, env)], header=header)
        sec.right = set(range(1, len(header)))
        for v in variants:
            rec = v["targets"][t]
            d = rec["decode_ms_per_token"]
            row = [v["name"]]
            row += [f"{ms(rec['ttft_ms'][n].get('p50'))} ({ms(rec['ttft_ms'][n].get('p90'))})" for n in lengths]
            row += [ms(d.get("p50")), ms(d.get("p90")), _rate(rec["tokens_per_s"], rec.get("tokens_per_s_ci"))]
            row.append(_cpu(rec))
            for b in baselines:
                x = v["ratios"][b]["tokens_per_s_ratio_by_target"].get(t)
                row.append("1" if v["name"] == b else (f"{x:.2f}x" if x else "–"))
            m = rec.get("memory") or {}
            row += [mb(m.get("peak_rss_bytes")), mb(m.get("model_rss_bytes")), f"{rec['load_s']:.2f}"]
            if desc.get("memory_limit_bytes"):
                row.append("yes" if m.get("fits_memory_limit") else ("**no**" if m else "–"))
            sec.rows.append(row)
        out.append(sec)
    out.append(Section(plot="quality_vs_speed", caption="Perplexity against decode speed per target"))
    out.append(Section(plot="ttft_by_length", caption="Time to first token by prompt length"))
    out += _context_section(report)
    return out


def _context_section(report: dict) -> list[Section]:
    """Model RSS and decode ms/token against context on the primary target (`benchmark.memory_contexts`)."""
    s = report["settings"]
    target = s.get("primary_target")
    rows = [v for v in report["variants"] if (v["targets"].get(target) or {}).get("memory_by_context")]
    if not rows:
        return []
    contexts = sorted({int(k) for v in rows for k in v["targets"][target]["memory_by_context"]})
    lengths = sorted({int(k) for v in rows for k in v["targets"][target].get("decode_ms_per_token_by_length", {})})
    header = ["variant"] + [f"RSS MB @{n}" for n in contexts] + [f"ms/token @{n}" for n in lengths]
    sec = Section(
        f"Against context (target {target})",
        level=3,
        paragraphs=[
            f"Model RSS (peak of a fresh process minus the same process without a model) generating "
            f"{s['new_tokens']} tokens after a prompt of each length, and decode ms per token (p50) after the timed "
            "prompts of each length. The cache grows with the context; the weights do not."
        ],
        header=header,
    )
    sec.right = set(range(1, len(header)))
    for v in rows:
        rec = v["targets"][target]
        mem, by = rec["memory_by_context"], rec.get("decode_ms_per_token_by_length") or {}
        row = [v["name"]] + [mb((mem.get(str(n)) or {}).get("model_rss_bytes")) for n in contexts]
        row += [ms((by.get(str(n)) or {}).get("p50")) for n in lengths]
        sec.rows.append(row)
    return [sec, Section(plot="context", caption="Decode time and memory against context")]


def _anchor_section(report: dict) -> list[Section]:
    """How each anchor was made, which could not be, and the fastest shipped variant of ours against each."""
    anchors = report.get("anchors") or {}
    built, unavailable = anchors.get("built") or {}, anchors.get("unavailable") or []
    if not built and not unavailable:
        return []
    by = {v["name"]: v for v in report["variants"]}
    sec = Section(
        "Against what a user would pick instead",
        paragraphs=[
            "The same teacher, compressed by the tools people use and run by their own runtimes, measured by the "
            "same harness in the same run (same dev text, prompts, targets and interleaving)."
        ],
        header=["anchor", "made by", "build s", "dev ppl", "tokens/s", "TTFT ms", "peak RSS MB", "size MB"],
        right={2, 3, 4, 5, 6, 7},
    )
    for name, b in built.items():
        v = by.get(name, {})
        sec.rows.append(
            [
                name,
                f"`{b.get('command', '')}`",
                f"{b['build_s']:.1f}" if b.get("build_s") is not None else "–",
                _ppl(v.get("perplexity")),
                f"{v['tokens_per_s']:.0f}" if v.get("tokens_per_s") else "–",
                ms((v.get("ttft_ms") or {}).get("p50")),
                mb(v.get("peak_rss_bytes")),
                mb(v.get("size_bytes")),
            ]
        )
    for u in unavailable:
        sec.rows.append([u["name"], f"not measured: {u['reason']}", "–", "–", "–", "–", "–", "–"])
    ours = [v for v in report["variants"] if not is_reference(v) and v.get("tokens_per_s")]
    if ours and built:
        best = max(ours, key=lambda v: v["tokens_per_s"])
        parts = []
        for name in built:
            a = by.get(name)
            if a and a.get("tokens_per_s"):
                parts.append(
                    f"{best['tokens_per_s'] / a['tokens_per_s']:.2f}x the tokens/s of {name} at "
                    f"{best['perplexity'] / a['perplexity']:.3f}x its perplexity"
                )
        if parts:
            sec.paragraphs.append(f"Fastest variant of ours, **{best['name']}**: " + "; ".join(parts) + ".")
    return [sec]


_RUNTIME_NAMES = {"onnxruntime": "this project's loop", "genai": "GenAI's generator", "llama.cpp": "llama.cpp"}


def _same_model_section(report: dict) -> list[Section]:
    """Our variants also run by the runtimes users already have (`benchmark.in_genai`: the same model file through
    GenAI's generator; `benchmark.in_llama_cpp`: the same model as llama.cpp converts and quantizes it), on every
    target, with each runtime's CPU time over wall time (who spins)."""
    by = {v["name"]: v for v in report["variants"]}
    children: dict[str, list[dict]] = {}
    for v in report["variants"]:
        parent = by.get(v.get("parent"))
        if v.get("stage") == "anchor" and v.get("runtime") in ("genai", "llama.cpp") and parent is not None \
                and parent.get("runtime") == "onnxruntime":  # fmt: skip
            children.setdefault(parent["name"], []).append(v)
    if not children:
        return []
    env = report.get("environment") or {}
    targets = list(env.get("targets") or next(iter(by.values())).get("targets", {}))
    spin = {t: "on" if (env.get("targets") or {}).get(t, {}).get("intra_op_spinning") else "off" for t in targets}
    sec = Section(
        "The same model in other runtimes",
        paragraphs=[
            "Each of these variants run by this project's loop (the bundle's `generate.py`), by ONNX Runtime GenAI's "
            "generator on the same model file, and by llama.cpp on the same model as llama.cpp's converter and "
            "quantizer make it (the type nearest ours: its rounding differs, so its greedy tokens may too), in the "
            "same run, interleaved, same prompts, threads and token counts; llama.cpp's cache sized to the longest "
            "prompt + new tokens. Brackets: 95% bootstrap intervals over the timed generations (for the ratio, "
            "paired: both on the same requests). CPU/wall: the process's CPU time over wall time while it "
            "generated, about 1 per busy thread: a runtime whose threads spin while they wait shows its thread count. "
            "Spinning asked of every runtime per target: "
            + ", ".join(f"{t} {spin[t]}" for t in targets)
            + " (ONNX Runtime's allow_spinning; for llama.cpp OpenMP's wait policy, PASSIVE when off and its own "
            "default, a short spin before sleeping, when on; GenAI's generator is asked through its session "
            "options); on a spinning target each generation starts after a 50 ms pause, so that the previous "
            "runtime's spinning threads are quiet. Greedy: the recorded dev continuations identical to ours.",
        ],
        header=["model", "runtime", "target", "tokens/s", "ours / it", "TTFT ms", "CPU/wall", "greedy identical"],
        right={3, 4, 5, 6, 7},
    )
    middle = str((report.get("settings") or {}).get("ttft_headline_length", ""))
    for name, others in children.items():
        ours = by[name]
        ga = (ours.get("greedy") or {}).get("tokens") or []
        for t in targets:
            for v in [ours, *others]:
                rec = (v.get("targets") or {}).get(t) or {}
                if not rec:
                    continue
                paired = rec.get("vs_parent")
                ratio = "1" if v is ours else "–"
                if paired:
                    ratio = f"{paired['ratio']:.2f}x [{paired['ci'][0]:.2f}, {paired['ci'][1]:.2f}]"
                gb = (v.get("greedy") or {}).get("tokens") or []
                same = sum(x == y for x, y in zip(ga, gb, strict=False))
                gguf = v["runtime"] == "llama.cpp"
                kind = Path(str(v.get("path") or "")).stem.rsplit("-", 1)[-1].upper() if gguf else ""
                ttft = (rec.get("ttft_ms") or {}).get(middle) or {}
                sec.rows.append(
                    [
                        name if v is ours else "",
                        _RUNTIME_NAMES[v["runtime"]] + (f" ({kind})" if kind else ""),
                        t,
                        _rate(rec.get("tokens_per_s"), rec.get("tokens_per_s_ci")),
                        ratio,
                        ms(ttft.get("p50")),
                        _cpu(rec),
                        "" if v is ours else (f"{same}/{len(ga)}" if ga else "–"),
                    ]
                )
    return [sec]


def _cpu(rec: dict) -> str:
    """CPU seconds over wall seconds while a variant generated on one target ("1.86"), when measured."""
    return f"{rec['cpu_per_wall']:.2f}" if rec.get("cpu_per_wall") else "–"


def _rate(rate, ci) -> str:
    """Tokens/s with its interval when measured ("4,468 [4,401, 4,520]")."""
    if not rate:
        return "–"
    return f"{rate:.0f} [{ci[0]:.0f}, {ci[1]:.0f}]" if ci else f"{rate:.0f}"


def _mixed_section(report: dict) -> list[Section]:
    out = []
    for name, mp in (report.get("mixed_precision") or {}).items():
        sec = Section(
            f"{name}: mixed precision",
            level=3,
            paragraphs=[
                "Each block quantized to int4 alone (the rest float32) and its held-out perplexity cost measured; "
                + (
                    f"from all int4, blocks raised to int8 (then float) in order of that cost per weight, each kept "
                    f"while the file stays within {mp['budget']} MB. "
                    if mp.get("budget_kind") == "size"
                    else f"from all int4, the most sensitive blocks raised to int8 (then float) until within "
                    f"{mp['budget']}x of float32. "
                )
                + f"Chosen: {mp['perplexity_ratio']:.4f}x of float32's perplexity, "
                + (f"{mp['size_bytes'] / 1e6:.2f} MB, " if mp.get("size_bytes") else "")
                + f"{mp['mean_bits_per_projection_weight']:.2f} bits per projection weight on average; "
                f"{len(mp['tried'])} assignment(s) tried. Its size and speed are the variant's rows above."
            ],
            header=["block", "perplexity ratio, int4 alone", "chosen"],
            right={1},
        )
        for g, ratio in mp["sensitivity_int4_alone"].items():
            sec.rows.append([g, f"{ratio:.4f}", mp["assignment"][g]])
        out.append(sec)
    return out


def _quantize_section(report: dict) -> list[Section]:
    out = []
    for name, level in report.get("accuracy_levels", {}).items():
        sec = Section(
            f"{name}: MatMulNBits accuracy_level",
            level=3,
            paragraphs=[level.get("reason", ""), f"Chosen: **{level.get('chosen')}**."],
        )
        if level.get("table"):
            sec.header = ["accuracy_level", "decode ms/token p50 (1 thread)", "held-out perplexity"]
            sec.right = {1, 2}
            sec.rows = [
                [str(r["accuracy_level"]), f"{r['decode_ms_per_token_p50']:.3f}", _ppl(r["holdout_perplexity"])]
                for r in level["table"]
            ]
        out.append(sec)
    if out:
        out.insert(
            0,
            Section(
                "Weight-only quantization: compute type",
                paragraphs=[
                    "accuracy_level 0 dequantizes the int4/int8 weights to fp32 on every call; 4 quantizes the "
                    "activations to int8 and multiplies in int8. Both were built from the same weights and measured "
                    "on this CPU."
                ],
            ),
        )
    return out


def _ort_section(report: dict) -> list[Section]:
    rows = [v for v in report["variants"] if "ort" in v]
    if not rows:
        return []
    sec = Section(
        "Mobile format (.ort)",
        paragraphs=[
            "Each deployable ONNX variant converted to ONNX Runtime's mobile format; perplexity of the .ort file on "
            "the first dev blocks against the .onnx file's, and greedy tokens compared on a few prompts."
        ],
        header=["variant", ".ort MB", "ppl .ort", "ppl .onnx", "greedy identical"],
        right={1, 2, 3, 4},
    )
    for v in rows:
        o = v["ort"]
        if "error" in o:
            sec.rows.append([v["name"], "–", "–", "–", f"not converted: {o['error']}"])
            continue
        sec.rows.append(
            [
                v["name"],
                mb(o["size_bytes"]),
                _ppl(o["perplexity_first_blocks"]),
                _ppl(o["perplexity_first_blocks_onnx"]),
                pct(o["greedy_identical_with_onnx"]),
            ]
        )
    return [sec]


def sections(report: dict) -> list[Section]:
    """The causal-LM report's sections, in order."""
    out = [Section(f"edge-compress report: {report['run']} (causal LM)", level=1), _main_table(report)]
    out += _control_section(report)
    out += _anchor_section(report)
    out += _same_model_section(report)
    out += _target_sections(report)
    out.append(Section("Size and memory", plot="size_and_memory", caption="Size on disk and peak memory"))
    out += _quantize_section(report)
    out += _mixed_section(report)
    out += _ort_section(report)
    out += steps_section(
        report,
        "No quantized model fitted these variants' perplexity budget; their float32 source stays the model to deploy.",
    )
    out += stage_section(report)
    out.append(
        Section(
            "Notes",
            paragraphs=[
                "Unstructured sparsity shrinks the gzip size, not the decode time: ONNX Runtime's CPU kernels are "
                "dense. Fewer layers, a narrower model and fewer bytes per weight (int4, int8) are what make a "
                "decoder faster on a CPU, where decoding one token reads every weight once.",
                "Compare ratios measured in the same run, not absolute milliseconds across machines or runs.",
            ],
        )
    )
    return out


def write(run_dir: Path, results: dict, manifest: dict) -> dict:
    """Write the run's report (`report.json`, `.md`, `.html`, figures) into `run_dir`; returns the document."""
    report = build_lm_report(results, manifest)
    return write_report(report, sections(report), all_plots(report), run_dir)


def compare_row(x: dict, y: dict) -> dict:
    """One variant's figures in two runs (`benchmarks.report.compare_reports`)."""
    row = {
        "perplexity": delta(x.get("perplexity"), y.get("perplexity")),
        "tokens_per_s": delta(x.get("tokens_per_s"), y.get("tokens_per_s")),
        "ttft_ms": delta((x.get("ttft_ms") or {}).get("p50"), (y.get("ttft_ms") or {}).get("p50")),
    }
    for k in ("size_bytes", "size_gzip_bytes", "peak_rss_bytes"):
        row[k] = delta(x.get(k), y.get(k))
    row["targets"] = {
        t: {"tokens_per_s": delta(x["targets"][t].get("tokens_per_s"), y["targets"][t].get("tokens_per_s"))}
        for t in x.get("targets", {})
        if t in y.get("targets", {})
    }
    return row


def render_compare(cmp: dict) -> str:
    """The comparison as a plain-text table: perplexity, decode speed, TTFT, size and memory; tokens/s per target."""

    def cells(r: dict) -> list[str]:
        return [
            cell(r["perplexity"], lambda x: f"{x:.3f}"),
            cell(r["tokens_per_s"], lambda x: f"{x:.0f}"),
            cell(r["ttft_ms"], lambda x: f"{x:.2f}"),
            cell(r["size_bytes"], lambda x: f"{x / 1e6:.1f}"),
            cell(r["size_gzip_bytes"], lambda x: f"{x / 1e6:.1f}"),
            cell(r["peak_rss_bytes"], lambda x: f"{x / 1e6:.0f}"),
        ]

    per_target = ("decode tokens/s per target:", lambda k, d: f" {cell(d, lambda x: f'{x:.0f}', relative)}")
    header = ["dev ppl", "tokens/s", "TTFT ms", "size MB", "gzip MB", "peak RSS MB"]
    return render_comparison(cmp, header, cells, per_target)

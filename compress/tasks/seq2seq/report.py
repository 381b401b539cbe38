"""The seq2seq report: each variant's chrF and BLEU on dev and test, size, and sentence latency per target,
against the teacher in PyTorch and as exported.

`report.json` holds the envelope (`benchmarks.report.build_envelope`) with, per variant: `dev_chrf`,
`dev_bleu`, `test_chrf`, `test_bleu` (when a test split exists), `params`, `size_bytes`, `size_gzip_bytes`,
`sentences_per_s` (primary target) and `targets` (target -> `sentences_per_s`, `output_tokens_per_s`,
`sentence_ms` percentiles), and `ratios` to each baseline (`speed`: sentences/s ratio, `chrf_delta`: points).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.document import Section, cpu_line, gated_note, mb, stage_section, steps_section, target_line
from benchmarks.plots import BLUE, GREEN, GREY, cpu_caption, pareto_front, plt, png, report_plots
from benchmarks.report import build_envelope, cell, delta, relative, render_comparison, write_report
from compress.targets import is_reference
from compress.tasks.seq2seq.anchors import CT2_INT8


def _ratios(v: dict, b: dict) -> dict:
    speed = v["sentences_per_s"] / b["sentences_per_s"] if b.get("sentences_per_s") else None
    return {"speed": speed, "chrf_delta": v["dev_chrf"] - b["dev_chrf"]}


def _step_summary(name: str, m: dict) -> dict:
    keep = (
        "params",
        "encoder_layers",
        "decoder_layers",
        "holdout_chrf_torch",
        "holdout_chrf_onnx",
        "parent_holdout_chrf_onnx",
        "train_steps",
        "size_bytes",
    )
    out = {k: m[k] for k in keep if m.get(k) is not None}
    if m.get("check"):
        out["identical greedy outputs"] = f"{m['check']['identical_outputs']}/{m['check']['inputs']}"
    return out


def build_report(results: dict, manifest: dict) -> dict:
    report = build_envelope(results, manifest, task="seq2seq", ratios=_ratios, step_summary=_step_summary)
    report["anchors"] = results.get("anchors") or {"built": {}, "unavailable": []}
    by = {v["name"]: v for v in report["variants"]}
    ct2 = by.get(CT2_INT8)
    for v in report["variants"]:
        if ct2 is not None and v is not ct2:
            v["ratios"][CT2_INT8] = _ratios(v, ct2)
    return report


def _main_table(report: dict) -> Section:
    targets = list(report["environment"]["targets"])
    test = any(v.get("test_chrf") is not None for v in report["variants"])
    header = ["variant", "runtime", "params", "size MB", "dev chrF", "dev BLEU", *(["test chrF"] if test else [])]
    primary = report["settings"].get("primary_target")
    anchor = any(v["name"] == CT2_INT8 for v in report["variants"])
    header += [f"{t} sent/s" for t in targets] + [f"x teacher-torch ({primary})"]
    header += [f"x {CT2_INT8} ({primary})"] if anchor else []
    sec = Section("Quality, size and speed", header=header, right=set(range(2, len(header))))
    for v in report["variants"]:
        row = [
            v["name"],
            v["runtime"],
            f"{v['params']:,}" if v.get("params") else "–",
            mb(v.get("size_bytes")),
            f"{v['dev_chrf']:.2f}",
            f"{v['dev_bleu']:.2f}",
        ]
        if test:
            row.append(f"{v['test_chrf']:.2f}" if v.get("test_chrf") is not None else "–")
        row += [f"{v['targets'][t]['sentences_per_s']:.1f}" for t in targets]
        for ref in ("teacher-torch", *([CT2_INT8] if anchor else [])):
            speed = (v.get("ratios") or {}).get(ref, {}).get("speed")
            row.append(f"{speed:.2f}x" if speed else "–")
        sec.rows.append(row)
    s = report["settings"]
    sec.paragraphs = [
        f"chrF and BLEU (sacrebleu) of greedy outputs on {s['dev_inputs']} dev inputs"
        + (f" and {s['test_inputs']} test inputs" if s.get("test_inputs") else "")
        + ", each ONNX variant through the bundle's own loop (encoder once, decoder with its cache), the teacher "
        "through transformers' `generate`"
        + (
            f", `{CT2_INT8}` the teacher converted by CTranslate2's own converter and run by its `Translator` at "
            "int8 (greedy)"
            if anchor
            else ""
        )
        + ". Speed: sentences per second translating one input at a time "
        f"({s['timed_inputs']} dev inputs x {s['runs']} runs, variants interleaved, each writing its own output of "
        f"at most {s['max_length']} tokens), in a fresh process per target.",
    ]
    for u in (report.get("anchors") or {}).get("unavailable") or []:
        sec.paragraphs.append(f"Anchor `{u['name']}` not measured: {u['reason']}.")
    note = gated_note(report)
    if note:
        sec.paragraphs.append(note)
    return sec


def _rss(r: dict, key: str) -> str:
    if r.get("error"):
        return "over the cap" if r.get("fits_memory_limit") is False else "failed"
    return mb(r.get(key))


def _latency_section(report: dict) -> list[Section]:
    out = []
    env = report["environment"]
    for t, d in env["targets"].items():
        sec = Section(
            f"Target {t}",
            level=3,
            paragraphs=[target_line(t, d, env)],
            header=["variant", "sent/s", "p50 ms", "p90 ms", "output tokens/s", "peak RSS MB", "model RSS MB"],
            right={1, 2, 3, 4, 5, 6},
        )
        for v in report["variants"]:
            r = v["targets"][t]
            sec.rows.append(
                [
                    v["name"],
                    f"{r['sentences_per_s']:.1f}",
                    f"{r['sentence_ms']['p50']:.2f}",
                    f"{r['sentence_ms']['p90']:.2f}",
                    f"{r['output_tokens_per_s']:.0f}",
                    _rss(r, "peak_rss_bytes"),
                    _rss(r, "model_rss_bytes"),
                ]
            )
        out.append(sec)
    return [
        Section("Sentence latency per target", paragraphs=[f"Measured on {cpu_line(env)}."]),
        *out,
        Section(plot="quality_vs_speed", caption="chrF against sentences per second"),
    ]


def sections(report: dict) -> list[Section]:
    """The seq2seq report's sections, in order."""
    out = [Section(f"edge-compress report: {report['run']} (seq2seq)", level=1), _main_table(report)]
    out += _latency_section(report)
    out.append(Section("Size", plot="size_and_memory", caption="Size on disk"))
    out += steps_section(report, "No quantized model fitted these variants' chrF budget.")
    out += stage_section(report)
    out.append(
        Section(
            "Notes",
            paragraphs=[
                "Not measured yet for this task: peak memory per variant, beam search speed, and optimum's "
                "ORTModelForSeq2SeqLM as a baseline.",
                "Compare ratios measured in the same run, not absolute milliseconds across machines or runs.",
            ],
        )
    )
    return out


def quality_vs_speed(report: dict) -> bytes:
    """One panel per target: dev chrF against sentences per second."""
    targets = list(report["environment"]["targets"])
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 4.4), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        rows = [(v, v["targets"][target]["sentences_per_s"]) for v in report["variants"]]
        front = pareto_front([(1 / s, v["dev_chrf"]) for v, s in rows])
        for i, (v, s) in enumerate(rows):
            base = is_reference(v)
            ax.plot(
                s, v["dev_chrf"], "s" if base else "o", color=GREY if base else (GREEN if i in front else BLUE), ms=7
            )
            ax.annotate(v["name"], (s, v["dev_chrf"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_title(f"target {target}", fontsize=10)
        ax.set_xlabel("sentences/s (greedy, one input at a time)")
        ax.set_ylabel("dev chrF (higher is better)")
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.25, y=0.15)
    fig.suptitle(f"chrF vs speed on {cpu_caption(report)}", fontsize=10)
    return png(fig)


def write(run_dir: Path, results: dict, manifest: dict) -> dict:
    """Write the run's report (`report.json`, `.md`, `.html`, figures) into `run_dir`; returns the document."""
    report = build_report(results, manifest)
    plots = report_plots(report, quality_vs_speed=quality_vs_speed(report))
    return write_report(report, sections(report), plots, run_dir)


def compare_row(x: dict, y: dict) -> dict:
    """One variant's figures in two runs (`benchmarks.report.compare_reports`)."""
    return {
        "dev_chrf": delta(x.get("dev_chrf"), y.get("dev_chrf")),
        "sentences_per_s": delta(x.get("sentences_per_s"), y.get("sentences_per_s")),
        "size_bytes": delta(x.get("size_bytes"), y.get("size_bytes")),
        "targets": {
            t: {
                "sentences_per_s": delta(x["targets"][t].get("sentences_per_s"), y["targets"][t].get("sentences_per_s"))
            }
            for t in x.get("targets", {})
            if t in y.get("targets", {})
        },
    }


def render_compare(cmp: dict) -> str:
    """The comparison as a plain-text table: chrF, speed and size; sentences/s per target."""

    def cells(r: dict) -> list[str]:
        return [
            cell(r["dev_chrf"], lambda x: f"{x:.2f}"),
            cell(r["sentences_per_s"], lambda x: f"{x:.1f}"),
            cell(r["size_bytes"], lambda x: f"{x / 1e6:.1f}"),
        ]

    per_target = ("sentences/s per target:", lambda k, d: f" {cell(d, lambda x: f'{x:.1f}', relative)}")
    return render_comparison(cmp, ["dev chrF", "sent/s", "size MB"], cells, per_target)

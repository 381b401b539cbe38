"""The causal-LM report's figures: perplexity against decode speed per target, time to first token by prompt length."""

from __future__ import annotations

from benchmarks.plots import (
    BLUE,
    GREEN,
    GREY,
    cpu_caption,
    pareto_front,
    plain_log_axis,
    plt,
    png,
    report_plots,
)
from compress.targets import is_reference


def quality_vs_speed(report: dict) -> bytes:
    """A causal LM's figure: one panel per target, dev perplexity against decode tokens per second."""
    targets = list(report["environment"].get("targets") or {})
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 4.4), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        rows = [(v, v["targets"][target]) for v in report["variants"]]
        pts = [(rec["decode_ms_per_token"]["mean"], -v["perplexity"]) for v, rec in rows]
        front = pareto_front(pts)
        fx = [rows[i][1]["tokens_per_s"] for i in front]
        fy = [rows[i][0]["perplexity"] for i in front]
        ax.step(fx, fy, where="pre", color=GREEN, lw=1.5, alpha=0.7, zorder=1)
        for i, (v, rec) in enumerate(rows):
            base = is_reference(v)
            color = GREY if base else (GREEN if i in front else BLUE)
            ax.plot(rec["tokens_per_s"], v["perplexity"], "s" if base else "o", color=color, ms=7, zorder=3)
            ax.annotate(
                v["name"], (rec["tokens_per_s"], v["perplexity"]), textcoords="offset points", xytext=(5, 5), fontsize=8
            )
        desc = report["environment"]["targets"][target]
        ax.set_title(f"target {target}: {desc.get('threads')} thread(s)", fontsize=10)
        ax.set_xlabel("decode tokens/s (greedy, batch 1, KV cache)")
        ax.set_ylabel("dev perplexity (lower is better)")
        ax.set_xscale("log")
        plain_log_axis(ax.xaxis)
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.25, y=0.15)
    axes[0][0].legend(
        handles=[
            plt.Line2D([], [], color=GREEN, lw=1.5, label="Pareto front"),
            plt.Line2D([], [], marker="o", ls="", color=BLUE, label="variant"),
            plt.Line2D([], [], marker="s", ls="", color=GREY, label="baseline"),
        ],
        fontsize=8,
    )
    fig.suptitle(f"Perplexity vs decode speed, emulated targets on {cpu_caption(report)}", fontsize=10)
    return png(fig)


def ttft_by_length(report: dict) -> bytes | None:
    """A causal LM's figure: p50 time to first token at each prompt length, one panel per target."""
    targets = list(report["environment"].get("targets") or {})
    if not targets:
        return None
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 4.0), squeeze=False, sharey=True)
    for ax, target in zip(axes[0], targets, strict=True):
        for v in report["variants"]:
            ttft = v["targets"][target]["ttft_ms"]
            lengths = [int(k) for k in ttft]
            ax.plot(lengths, [ttft[k]["p50"] for k in ttft], marker="o", ls="--" if is_reference(v) else "-",
                    label=v["name"])  # fmt: skip
        ax.set_title(f"target {target}", fontsize=10)
        ax.set_xlabel("prompt length, tokens")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("time to first token, ms (p50)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"Time to first token by prompt length on {cpu_caption(report)}", fontsize=10)
    return png(fig)


def context_curve(report: dict) -> bytes | None:
    """A causal LM's figure on the primary target: decode ms/token (p50) by prompt length, and model RSS by
    prompt length (`benchmark.memory_contexts`), one line per variant measured at several contexts."""
    target = report["settings"].get("primary_target")
    rows = [v for v in report["variants"] if (v["targets"].get(target) or {}).get("memory_by_context")]
    if not rows:
        return None
    new = report["settings"].get("new_tokens")
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(10.4, 4.0))
    for v in rows:
        rec = v["targets"][target]
        by = rec.get("decode_ms_per_token_by_length") or {}
        xs = sorted(by, key=int)
        speed.plot([int(x) for x in xs], [by[x]["p50"] for x in xs], marker="o", label=v["name"])
        pts = sorted((int(k), m["model_rss_bytes"] / 1e6) for k, m in rec["memory_by_context"].items()
                     if m.get("model_rss_bytes") is not None)  # fmt: skip
        memory.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=v["name"])
    for ax, label in ((speed, "decode ms per token (p50)"), (memory, "model RSS, MB (peak minus no-model process)")):
        ax.set_xlabel(f"prompt tokens (then {new} generated)")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
    memory.legend(fontsize=8)
    fig.suptitle(f"Against context, target {target}, on {cpu_caption(report)}", fontsize=10)
    return png(fig)


def all_plots(report: dict) -> dict[str, bytes]:
    """name -> PNG of every figure that has data."""
    return report_plots(report, quality_vs_speed=quality_vs_speed(report), ttft_by_length=ttft_by_length(report),
                        context=context_curve(report))  # fmt: skip

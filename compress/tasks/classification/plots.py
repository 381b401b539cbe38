"""The classification report's figures: accuracy against latency per target, latency by sentence length."""

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


def accuracy_vs_latency(report: dict) -> bytes:
    """One panel per target: dev accuracy against p50 latency at real sentence lengths, Pareto front marked."""
    targets = list(report["environment"].get("targets") or {"default": {}})
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 4.4), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        rows = []
        for v in report["variants"]:
            t = v.get("targets", {}).get(target)
            lat = t["latency_ms"].get("real") if t else v["latency_ms"]
            if lat is None and t:
                lat = next(iter(t["latency_ms"].values()))
            rows.append((v, lat))
        pts = [(lat["p50"], v["accuracy"]) for v, lat in rows]
        front = pareto_front(pts)
        fx, fy = zip(*[pts[i] for i in front], strict=True)
        ax.step(fx, [y * 100 for y in fy], where="post", color=GREEN, lw=1.5, alpha=0.7, label="Pareto front", zorder=1)
        for i, (v, lat) in enumerate(rows):
            base = is_reference(v)
            lo, hi = lat.get("ci", {}).get("p50", [lat["p50"], lat["p50"]])
            ax.errorbar(
                lat["p50"],
                v["accuracy"] * 100,
                xerr=[[lat["p50"] - lo], [hi - lat["p50"]]],
                fmt="s" if base else "o",
                color=GREY if base else (GREEN if i in front else BLUE),
                ms=7,
                capsize=3,
                zorder=3,
            )
            ax.annotate(
                v["name"], (lat["p50"], v["accuracy"] * 100), textcoords="offset points", xytext=(5, 5), fontsize=8
            )
        desc = report["environment"].get("targets", {}).get(target, {})
        threads = desc.get("threads", report["environment"].get("threads"))
        ax.set_title(f"target {target}: {threads} thread(s)", fontsize=10)
        ax.set_xlabel("p50 latency, ms (batch 1, real lengths; bars: 95% CI)")
        ax.set_ylabel("dev accuracy, %")
        ax.set_xscale("log")
        plain_log_axis(ax.xaxis)
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.25, y=0.15)
    axes[0][0].legend(
        handles=[
            plt.Line2D([], [], color=GREEN, lw=1.5, label="Pareto front"),
            plt.Line2D([], [], marker="o", ls="", color=GREEN, label="on the front"),
            plt.Line2D([], [], marker="o", ls="", color=BLUE, label="dominated"),
            plt.Line2D([], [], marker="s", ls="", color=GREY, label="baseline"),
        ],
        fontsize=8,
        loc="lower right",
    )
    fig.suptitle(f"Accuracy vs latency, emulated targets on {cpu_caption(report)}", fontsize=10)
    return png(fig)


def latency_by_length(report: dict) -> bytes | None:
    """p50 latency at each fixed input length, one line per variant, one panel per target."""
    targets = list(report["environment"].get("targets") or {})
    fixed = [k for k in report["settings"].get("lengths", {}) if k != "real"]
    if not targets or not fixed:
        return None
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 4.0), squeeze=False, sharey=True)
    for ax, target in zip(axes[0], targets, strict=True):
        for v in report["variants"]:
            lat = v["targets"][target]["latency_ms"]
            ys = [lat[k]["p50"] for k in fixed]
            ax.plot(
                [int(k) for k in fixed],
                ys,
                marker="o",
                ls="--" if is_reference(v) else "-",
                label=v["name"],
            )
        ax.set_title(f"target {target}", fontsize=10)
        ax.set_xlabel("input length, tokens")
        ax.set_xticks([int(k) for k in fixed])
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("p50 latency, ms (batch 1)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"Latency by input length on {cpu_caption(report)}", fontsize=10)
    return png(fig)


def all_plots(report: dict) -> dict[str, bytes]:
    """name -> PNG of every figure that has data."""
    return report_plots(
        report, accuracy_vs_latency=accuracy_vs_latency(report), latency_by_length=latency_by_length(report)
    )

"""The report's figures, drawn with matplotlib (Agg: no display needed) and returned as PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen before pyplot is imported)

from compress.targets import is_reference  # noqa: E402

_BLUE, _GREY, _ORANGE, _GREEN = "#1f77b4", "#7f7f7f", "#ff7f0e", "#2ca02c"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: (latency, accuracy), lower latency and higher accuracy.

    A point is dominated when another is at least as fast and at least as accurate, and strictly better in one.
    Ties (identical points) are all kept. Returned sorted by latency.
    """
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(
            (lj <= lat and aj >= acc) and (lj < lat or aj > acc) for j, (lj, aj) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def _plain_log_axis(axis) -> None:
    """Log scale labelled 2, 5, 10, 20 ms rather than 2x10^0 (matplotlib's default minor labels collide)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=30))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _cpu_caption(report: dict) -> str:
    cpu = report["environment"]["cpu"]
    isa = ", ".join(k for k, on in cpu["isa"].items() if on) or "none detected"
    return f"{cpu['model']} ({cpu['machine']}; ISA: {isa})"


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
        ax.step(
            fx, [y * 100 for y in fy], where="post", color=_GREEN, lw=1.5, alpha=0.7, label="Pareto front", zorder=1
        )
        for i, (v, lat) in enumerate(rows):
            base = is_reference(v)
            lo, hi = lat.get("ci", {}).get("p50", [lat["p50"], lat["p50"]])
            ax.errorbar(
                lat["p50"],
                v["accuracy"] * 100,
                xerr=[[lat["p50"] - lo], [hi - lat["p50"]]],
                fmt="s" if base else "o",
                color=_GREY if base else (_GREEN if i in front else _BLUE),
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
        _plain_log_axis(ax.xaxis)
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.25, y=0.15)
    axes[0][0].legend(
        handles=[
            plt.Line2D([], [], color=_GREEN, lw=1.5, label="Pareto front"),
            plt.Line2D([], [], marker="o", ls="", color=_GREEN, label="on the front"),
            plt.Line2D([], [], marker="o", ls="", color=_BLUE, label="dominated"),
            plt.Line2D([], [], marker="s", ls="", color=_GREY, label="baseline"),
        ],
        fontsize=8,
        loc="lower right",
    )
    fig.suptitle(f"Accuracy vs latency, emulated targets on {_cpu_caption(report)}", fontsize=10)
    return _png(fig)


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
        _plain_log_axis(ax.yaxis)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("p50 latency, ms (batch 1)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"Latency by input length on {_cpu_caption(report)}", fontsize=10)
    return _png(fig)


def size_and_memory(report: dict) -> bytes:
    """Size on disk (raw and gzip) and peak / model RSS of each variant, as horizontal bars."""
    vs = report["variants"]
    names = [v["name"] for v in vs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 0.5 * len(vs) + 1.6))
    y = range(len(vs))
    a.barh([i - 0.2 for i in y], [v["size_bytes"] / 1e6 for v in vs], 0.4, color=_BLUE, label="raw")
    a.barh([i + 0.2 for i in y], [v["size_gzip_bytes"] / 1e6 for v in vs], 0.4, color=_ORANGE, label="gzip -6")
    a.set_yticks(list(y), names)
    a.invert_yaxis()
    a.set_xlabel("MB")
    a.set_title("size on disk", fontsize=10)
    a.legend(fontsize=8, loc="lower right")
    peak = [(v.get("peak_rss_bytes") or 0) / 1e6 for v in vs]
    model = [(v.get("model_rss_bytes") or 0) / 1e6 for v in vs]
    b.barh([i - 0.2 for i in y], peak, 0.4, color=_GREY, label="peak RSS of the process")
    b.barh([i + 0.2 for i in y], model, 0.4, color=_GREEN, label="model's share (peak minus no-model process)")
    b.set_yticks(list(y), names)
    b.invert_yaxis()
    b.set_xlabel("MB")
    primary = report["settings"].get("primary_target", "")
    b.set_title(f"memory, fresh process per model (target {primary})", fontsize=10)
    b.legend(fontsize=8, loc="lower right")
    for ax in (a, b):
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def stage_wall_time(report: dict) -> bytes | None:
    """Wall time of each pipeline step, as horizontal bars."""
    stages = [(k, st["wall_s"]) for k, st in report["stages"].items() if st.get("wall_s") is not None]
    if not stages:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(stages) + 1.2))
    ax.barh([k for k, _ in stages], [w for _, w in stages], color=_BLUE)
    ax.invert_yaxis()
    total = sum(w for _, w in stages)
    for i, (_, w) in enumerate(stages):
        ax.annotate(f"{w:.1f} s", (w, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlabel("wall time, s")
    ax.set_title(f"Where the time went: {total:.0f} s in all (each step as of the last time it ran)", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    ax.margins(x=0.15)
    return _png(fig)


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
        ax.step(fx, fy, where="pre", color=_GREEN, lw=1.5, alpha=0.7, zorder=1)
        for i, (v, rec) in enumerate(rows):
            base = is_reference(v)
            color = _GREY if base else (_GREEN if i in front else _BLUE)
            ax.plot(rec["tokens_per_s"], v["perplexity"], "s" if base else "o", color=color, ms=7, zorder=3)
            ax.annotate(
                v["name"], (rec["tokens_per_s"], v["perplexity"]), textcoords="offset points", xytext=(5, 5), fontsize=8
            )
        desc = report["environment"]["targets"][target]
        ax.set_title(f"target {target}: {desc.get('threads')} thread(s)", fontsize=10)
        ax.set_xlabel("decode tokens/s (greedy, batch 1, KV cache)")
        ax.set_ylabel("dev perplexity (lower is better)")
        ax.set_xscale("log")
        _plain_log_axis(ax.xaxis)
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.25, y=0.15)
    axes[0][0].legend(
        handles=[
            plt.Line2D([], [], color=_GREEN, lw=1.5, label="Pareto front"),
            plt.Line2D([], [], marker="o", ls="", color=_BLUE, label="variant"),
            plt.Line2D([], [], marker="s", ls="", color=_GREY, label="baseline"),
        ],
        fontsize=8,
    )
    fig.suptitle(f"Perplexity vs decode speed, emulated targets on {_cpu_caption(report)}", fontsize=10)
    return _png(fig)


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
        _plain_log_axis(ax.yaxis)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("time to first token, ms (p50)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"Time to first token by prompt length on {_cpu_caption(report)}", fontsize=10)
    return _png(fig)


def all_plots(report: dict) -> dict[str, bytes]:
    """name -> PNG of every figure that has data."""
    if report.get("task") == "causal-lm":
        plots = {
            "quality_vs_speed": quality_vs_speed(report),
            "ttft_by_length": ttft_by_length(report),
            "size_and_memory": size_and_memory(report),
            "stage_wall_time": stage_wall_time(report),
        }
        return {k: v for k, v in plots.items() if v is not None}
    plots = {
        "accuracy_vs_latency": accuracy_vs_latency(report),
        "latency_by_length": latency_by_length(report),
        "size_and_memory": size_and_memory(report),
        "stage_wall_time": stage_wall_time(report),
    }
    return {k: v for k, v in plots.items() if v is not None}

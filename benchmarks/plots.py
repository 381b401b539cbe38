"""Plot primitives of every report: matplotlib on Agg (no display needed), PNG bytes, the Pareto front, the
figures any task's report has (size and memory, where the time went). Each task draws its own figures in its
folder (`compress/tasks/<task>/plots.py`) with these."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen before pyplot is imported; task plots use this)

BLUE, GREY, ORANGE, GREEN = "#1f77b4", "#7f7f7f", "#ff7f0e", "#2ca02c"


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


def plain_log_axis(axis) -> None:
    """Log scale labelled 2, 5, 10, 20 ms rather than 2x10^0 (matplotlib's default minor labels collide)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=30))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def cpu_caption(report: dict) -> str:
    cpu = report["environment"]["cpu"]
    isa = ", ".join(k for k, on in cpu["isa"].items() if on) or "none detected"
    return f"{cpu['model']} ({cpu['machine']}; ISA: {isa})"


def size_and_memory(report: dict) -> bytes:
    """Size on disk (raw and gzip) and peak / model RSS of each variant, as horizontal bars."""
    vs = report["variants"]
    names = [v["name"] for v in vs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 0.5 * len(vs) + 1.6))
    y = range(len(vs))
    a.barh([i - 0.2 for i in y], [v["size_bytes"] / 1e6 for v in vs], 0.4, color=BLUE, label="raw")
    a.barh([i + 0.2 for i in y], [v["size_gzip_bytes"] / 1e6 for v in vs], 0.4, color=ORANGE, label="gzip -6")
    a.set_yticks(list(y), names)
    a.invert_yaxis()
    a.set_xlabel("MB")
    a.set_title("size on disk", fontsize=10)
    a.legend(fontsize=8, loc="lower right")
    peak = [(v.get("peak_rss_bytes") or 0) / 1e6 for v in vs]
    model = [(v.get("model_rss_bytes") or 0) / 1e6 for v in vs]
    b.barh([i - 0.2 for i in y], peak, 0.4, color=GREY, label="peak RSS of the process")
    b.barh([i + 0.2 for i in y], model, 0.4, color=GREEN, label="model's share (peak minus no-model process)")
    b.set_yticks(list(y), names)
    b.invert_yaxis()
    b.set_xlabel("MB")
    primary = report["settings"].get("primary_target", "")
    b.set_title(f"memory, fresh process per model (target {primary})", fontsize=10)
    b.legend(fontsize=8, loc="lower right")
    for ax in (a, b):
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return png(fig)


def stage_wall_time(report: dict) -> bytes | None:
    """Wall time of each pipeline step, as horizontal bars."""
    stages = [(k, st["wall_s"]) for k, st in report["stages"].items() if st.get("wall_s") is not None]
    if not stages:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(stages) + 1.2))
    ax.barh([k for k, _ in stages], [w for _, w in stages], color=BLUE)
    ax.invert_yaxis()
    total = sum(w for _, w in stages)
    for i, (_, w) in enumerate(stages):
        ax.annotate(f"{w:.1f} s", (w, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlabel("wall time, s")
    ax.set_title(f"Where the time went: {total:.0f} s in all (each step as of the last time it ran)", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    ax.margins(x=0.15)
    return png(fig)


def report_plots(report: dict, **figures: bytes | None) -> dict[str, bytes]:
    """name -> PNG of a task's `figures` and the ones every report has (size and memory, where the time went),
    leaving out those without data (None)."""
    figures |= {"size_and_memory": size_and_memory(report), "stage_wall_time": stage_wall_time(report)}
    return {k: v for k, v in figures.items() if v is not None}

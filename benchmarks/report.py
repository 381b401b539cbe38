"""The report envelope every task's report goes into: `report.json` for machines, `report.md` and a
self-contained `report.html` for people, and two runs' reports side by side.

Both human renderings come from one list of sections (text, a table, a figure; `benchmarks.document`), so they
always say the same. What the sections and figures are is the task's (`compress/tasks/<task>/report.py`); the
schema of each task's report is in its `report.py`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.document import Section, gated_variants, render_html_sections, render_md, write_atomic
from compress.manifest import write_json_atomic
from compress.targets import BASELINES

SCHEMA_VERSION = 2
PLOTS_DIR = "report_plots"
VERIFICATIONS_FILE = "verifications.json"  # bundles of this run checked on another architecture (`verify`)


def stage_times(manifest: dict) -> dict:
    """Each step's wall time, start and end, from the manifest."""
    return {
        name: {"wall_s": rec.get("wall_s"), "started": rec.get("started"), "ended": rec.get("ended")}
        for name, rec in manifest["stages"].items()
    }


def not_shipped(manifest: dict) -> dict:
    """Variants a step chose not to ship (for example a quantization that did not pay), with its reason."""
    return {
        name: rec["metrics"]["reason"]
        for name, rec in manifest["stages"].items()
        if rec and isinstance(rec.get("metrics"), dict) and rec["metrics"].get("shipped") is False
    }


def build_envelope(
    results: dict,
    manifest: dict,
    *,
    task: str,
    ratios: Callable[[dict, dict], dict],
    step_summary: Callable[[str, dict], dict],
) -> dict:
    """What every task's `report.json` holds: the run, its steps, environment, settings and variants, each
    variant with its ratios against each baseline it was measured beside (`compress.targets.BASELINES`).

    Args:
        results: the benchmark's results (environment, settings, reference, variants).
        manifest: the run's manifest (stage records).
        task: the task's name, recorded as `task`.
        ratios: (variant, baseline) -> the task's ratios of the two.
        step_summary: (step id, its metrics) -> the few figures a reader needs.
    """
    by_name = {v["name"]: v for v in results["variants"]}
    variants = [
        {**v, "ratios": {b: ratios(v, by_name[b]) for b in BASELINES if b in by_name}} for v in results["variants"]
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "run": manifest["recipe"]["name"],
        "not_shipped": not_shipped(manifest),
        "gated": gated_variants(manifest),
        "steps": {
            name: step_summary(name, rec.get("metrics") or {}) for name, rec in manifest["stages"].items() if rec
        },
        "environment": results["environment"],
        "settings": results["settings"],
        "reference": results.get("reference"),
        "variants": variants,
        "stages": stage_times(manifest),
    }


def render_markdown(sections: list[Section], plot_paths: dict[str, str] | None = None) -> str:
    """Sections as Markdown. `plot_paths`: plot name -> path relative to the .md file, for images."""
    return render_md(sections, plot_paths or {})


def write_report(report: dict, sections: list[Section], plots: dict[str, bytes], run_dir: Path) -> dict:
    """Write `report.json`, `report.md` (figures in `report_plots/`) and `report.html` into `run_dir`.

    Args:
        report: the document (`report.json`); its `run` names the page.
        sections: what the Markdown and HTML say, in order.
        plots: figure name -> PNG bytes.

    Returns:
        `report`.
    """
    run_dir = Path(run_dir)
    verifications = read_verifications(run_dir)
    if verifications:
        report = {**report, "verifications": verifications}
        at = next((i for i, s in enumerate(sections) if s.title == "Notes"), len(sections))
        sections = [*sections[:at], verification_section(verifications), *sections[at:]]
    write_json_atomic(run_dir / "report.json", report)
    (run_dir / PLOTS_DIR).mkdir(exist_ok=True)
    paths = {}
    for name, png in plots.items():
        write_atomic(run_dir / PLOTS_DIR / f"{name}.png", png)
        paths[name] = f"{PLOTS_DIR}/{name}.png"
    write_atomic(run_dir / "report.md", render_markdown(sections, paths))
    write_atomic(
        run_dir / "report.html", render_html_sections(f"edge-compress report: {report['run']}", sections, plots)
    )
    return report


def read_verifications(run_dir: Path) -> list[dict]:
    """The emulated verifications recorded for this run's bundles (`record_verification`), oldest first."""
    path = Path(run_dir) / VERIFICATIONS_FILE
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # a damaged side file never stops a report; the bundles keep their own record
    return records if isinstance(records, list) else []


def record_verification(run_dir: Path, bundle_dir: Path, meta: dict, result: dict) -> list[dict]:
    """Keep a bundle's verification (`bundle.json`'s "verification") with the run it was made from, one record
    per bundle directory (the latest replaces an earlier one), for the report's "Checked on" section."""
    run_dir, bundle_dir = Path(run_dir), Path(bundle_dir).resolve()
    cpus = {
        cpu: {
            "passed": bool(r.get("comparison", {}).get("passed")),
            "summary": r.get("comparison", {}).get("summary") or r.get("error", ""),
            "known_answer": r.get("known_answer", {}).get("relative_max_diff"),
        }
        for cpu, r in result.get("cpus", {}).items()
    }
    record = {
        "bundle": str(bundle_dir),
        "variant": meta.get("variant"),
        "target": meta.get("target"),
        "arch": result.get("arch"),
        "emulator": result.get("emulator"),
        "runtime": (meta.get("versions") or {}).get("onnxruntime"),
        "passed": bool(result.get("passed")),
        "cpus": cpus,
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    records = [r for r in read_verifications(run_dir) if r.get("bundle") != record["bundle"]] + [record]
    write_json_atomic(run_dir / VERIFICATIONS_FILE, records)
    return records


def verification_section(records: list[dict]) -> Section:
    """One row per bundle and emulated CPU: what `verify` compared and whether it held."""
    rows = [
        [
            f"{r.get('variant')} ({r.get('target')})",
            f"{r.get('arch')} {cpu}",
            "yes" if c.get("passed") else "NO",
            c.get("summary", ""),
        ]
        for r in records
        for cpu, c in r.get("cpus", {}).items()
    ]
    emulators = sorted({str(r.get("emulator")) for r in records})
    return Section(
        "Checked on other CPUs (emulated)",
        paragraphs=[
            "Each bundle's own script run on emulated CPUs against the figures recorded here at bundle time "
            f"(`edge-compress verify`; {', '.join(emulators)}): same labels and scores within tolerance, or the same "
            "greedy tokens with any difference explained by a measured near-tie. Emulated times are never speeds.",
        ],
        header=["bundle", "CPU", "same results", "compared"],
        rows=rows,
    )


def rewrite_report(run_dir: Path, sections_of: Callable[[dict], list[Section]]) -> dict:
    """Render a finished run's `report.json` again (with its current verifications), its figures as they are."""
    run_dir = Path(run_dir)
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    report.pop("verifications", None)
    plots = {p.stem: p.read_bytes() for p in sorted((run_dir / PLOTS_DIR).glob("*.png"))}
    return write_report(report, sections_of(report), plots, run_dir)


# ---- two runs side by side ----------------------------------------------------------------------------------


def delta(a: float | None, b: float | None) -> dict | None:
    """One figure in run a and run b: {a, b, delta, ratio}, or None when either lacks it."""
    if a is None or b is None:
        return None
    return {"a": a, "b": b, "delta": b - a, **({"ratio": b / a} if a else {})}


def compare_reports(a: dict, b: dict, row: Callable[[dict, dict], dict]) -> dict:
    """Differences between two reports of one task, variants matched by name (b relative to a).

    Args:
        row: the task's figures of one variant in both runs: (variant in a, variant in b) -> {figure: delta}.

    Returns:
        {"task", "run_a", "run_b", "variants": [{"name", **row}], "only_in_a", "only_in_b", "warnings": reasons
        the speed figures may not be comparable (another CPU, other thread counts, other settings)}.
    """
    va, vb = {v["name"]: v for v in a["variants"]}, {v["name"]: v for v in b["variants"]}
    rows = [{"name": name, **row(va[name], vb[name])} for name in va if name in vb]
    warnings = []
    ca, cb = a["environment"]["cpu"], b["environment"]["cpu"]
    if (ca.get("model"), ca.get("isa")) != (cb.get("model"), cb.get("isa")):
        warnings.append(f"different CPUs ({ca.get('model')} vs {cb.get('model')}): latency is not comparable")
    if a["environment"].get("threads") != b["environment"].get("threads"):
        warnings.append(
            f"different thread counts ({a['environment'].get('threads')} vs {b['environment'].get('threads')})"
        )
    if a["settings"].get("protocol") != b["settings"].get("protocol"):
        warnings.append("different benchmark settings")
    return {
        "task": a.get("task"),
        "run_a": a.get("run"),
        "run_b": b.get("run"),
        "variants": rows,
        "only_in_a": [n for n in va if n not in vb],
        "only_in_b": [n for n in vb if n not in va],
        "warnings": warnings,
    }


def cell(d: dict | None, fmt: Callable[[float], str], change: Callable[[dict], str] | None = None) -> str:
    """One compared figure as `a -> b (change)`; the change is relative unless `change` says otherwise."""
    return "–" if d is None else f"{fmt(d['a'])} → {fmt(d['b'])} ({(change or relative)(d)})"


def relative(d: dict) -> str:
    return f"{(d['ratio'] - 1) * 100:+.1f}%" if "ratio" in d else f"{d['delta']:+g}"


def render_comparison(
    cmp: dict, header: list[str], cells: Callable[[dict], list[str]], per_target: tuple[str, Callable] | None
) -> str:
    """A plain-text table of `compare_reports`' result: value in a → value in b (change).

    Args:
        header: the column titles after "variant".
        cells: a compared row -> its cells after the name.
        per_target: (title, compared figure -> text) for the per-target lines, or None.
    """
    rows = [[r["name"], *cells(r)] for r in cmp["variants"]]
    header = ["variant", *header]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    fmt_row = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    lines = [f"a: {cmp['run_a']}    b: {cmp['run_b']}    (b relative to a; variants matched by name)", ""]
    lines += [fmt_row(header), fmt_row(["-" * w for w in widths]), *map(fmt_row, rows)]
    found = [
        (r["name"], t, k, d) for r in cmp["variants"] for t, ks in r.get("targets", {}).items() for k, d in ks.items()
    ]
    if found and per_target is not None:
        title, text = per_target
        lines += ["", title]
        lines += [f"  {n:<24} {t:<8} {text(k, d)}" for n, t, k, d in found]
    for key, label in (("only_in_a", "only in a"), ("only_in_b", "only in b")):
        if cmp[key]:
            lines.append(f"{label}: {', '.join(cmp[key])}")
    lines += [f"warning: {w}" for w in cmp["warnings"]]
    return "\n".join(lines) + "\n"

"""The run report: `report.json` for machines, `report.md` for people."""

from __future__ import annotations

from pathlib import Path

from compress.manifest import write_json_atomic

BASELINES = ("teacher-torch", "teacher-onnx")
SCHEMA_VERSION = 1


def _ratios(v: dict, base: dict) -> dict:
    return {
        "speedup_p50": base["latency_ms"]["p50"] / v["latency_ms"]["p50"],
        "size_ratio": v["size_bytes"] / base["size_bytes"],
        "size_gzip_ratio": v["size_gzip_bytes"] / base["size_gzip_bytes"],
        "accuracy_delta": v["accuracy"] - base["accuracy"],
        **(
            {"peak_rss_ratio": v["peak_rss_bytes"] / base["peak_rss_bytes"]}
            if "peak_rss_bytes" in v and "peak_rss_bytes" in base
            else {}
        ),
    }


def build_report(results: dict, manifest: dict) -> dict:
    """Merge benchmark results with the manifest's stage records into the report document."""
    by_name = {v["name"]: v for v in results["variants"]}
    variants = []
    for v in results["variants"]:
        v = dict(v)
        v["ratios"] = {b: _ratios(v, by_name[b]) for b in BASELINES if b in by_name}
        variants.append(v)
    stages = {
        name: {"wall_s": rec.get("wall_s"), "started": rec.get("started"), "ended": rec.get("ended")}
        for name, rec in manifest["stages"].items()
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "run": manifest["recipe"]["name"],
        "environment": results["environment"],
        "settings": results["settings"],
        "variants": variants,
        "stages": stages,
    }


def _mb(n: float | None) -> str:
    return "–" if n is None else f"{n / 1e6:.1f}"


def render_markdown(report: dict) -> str:
    env, s = report["environment"], report["settings"]
    isa = ", ".join(k for k, on in env["cpu"]["isa"].items() if on) or "none detected"
    lines = [
        f"# edge-compress report: {report['run']}",
        "",
        f"CPU: {env['cpu']['model']} ({env['cpu']['logical_cores']} logical cores; ISA: {isa}). "
        f"Latency: {s['latency']}, {env['threads']} thread(s), {env['execution_provider']}, "
        f"{s['requests']} requests x {s['passes']} pass(es) after {s['warmup']} warm-up, "
        f"mean length {s['seq_len_mean']:.1f} tokens (max {s['seq_len_max']}); variants interleaved per request.",
        "Accuracy is on the dev split through each variant's own runtime (ONNX Runtime for ONNX artifacts). "
        "Ratios are against the teacher in PyTorch eager (speed-up = teacher p50 / variant p50).",
        "",
        "| variant | stage | runtime | layers | params | dev acc | Δ acc | test acc | agree w/ teacher "
        "| p50 ms | p90 ms | p99 ms | speed-up | size MB | gzip MB | size ratio | peak RSS MB | model RSS MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in report["variants"]:
        r = v["ratios"].get("teacher-torch", {})
        lat = v["latency_ms"]
        test = v.get("accuracy_test")
        lines.append(
            f"| {v['name']} | {v['stage']} | {v['runtime']} | {v['layers']} | {v['params'] / 1e6:.1f}M "
            f"| {v['accuracy'] * 100:.2f}% | {r.get('accuracy_delta', 0) * 100:+.2f} "
            f"| {'–' if test is None else f'{test * 100:.2f}%'} | {v['agreement_with_teacher'] * 100:.1f}% "
            f"| {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | {r.get('speedup_p50', 1):.2f}x "
            f"| {_mb(v['size_bytes'])} | {_mb(v['size_gzip_bytes'])} | {r.get('size_ratio', 1):.2f} "
            f"| {_mb(v.get('peak_rss_bytes'))} | {_mb(v.get('model_rss_bytes'))} |"
        )
    lines += ["", "## Stage wall time", "", "| stage | wall s |", "|---|---:|"]
    for name, st in report["stages"].items():
        lines.append(f"| {name} | {st['wall_s'] if st['wall_s'] is not None else '–'} |")
    lines += [
        "",
        "Unstructured sparsity (the pruned variants) shrinks the gzip size, not the latency: ONNX Runtime's CPU "
        "kernels are dense. Peak RSS is measured in a fresh process per model; model RSS subtracts the same "
        "process without a model.",
        "",
    ]
    return "\n".join(lines)


def write_report(results: dict, manifest: dict, run_dir: Path) -> dict:
    """Write `report.json` and `report.md` into `run_dir` and return the report."""
    report = build_report(results, manifest)
    write_json_atomic(Path(run_dir) / "report.json", report)
    md = Path(run_dir) / "report.md"
    tmp = md.with_name(".report.md.tmp")
    tmp.write_text(render_markdown(report))
    tmp.replace(md)
    return report

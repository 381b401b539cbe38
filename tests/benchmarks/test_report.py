"""The report: JSON document, Markdown, self-contained HTML with figures, Pareto fronts, run comparison."""

from __future__ import annotations

import base64
import copy
import json
import re
import struct

import pytest

from benchmarks.plots import pareto_front
from benchmarks.report import compare_reports, render_markdown
from compress.tasks.classification.report import build_report, compare_row, render_compare, sections, write

MANIFEST = {
    "recipe": {"name": "tiny"},
    "stages": {
        "teacher": {"wall_s": 12.5, "started": "a", "ended": "b"},
        "quantize/int8": {"wall_s": 1.5, "started": "c", "ended": "d"},
        "benchmark": {"status": "running"},
    },
}


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


def test_pareto_front():
    # (latency, accuracy): b is dominated by a (slower, less accurate); d ties a exactly and is kept.
    pts = [(1.0, 0.90), (2.0, 0.85), (3.0, 0.95), (1.0, 0.90), (0.5, 0.80)]
    assert pareto_front(pts) == [4, 0, 3, 2]
    assert pareto_front([(1.0, 0.5)]) == [0]
    assert pareto_front([(1.0, 0.5), (1.0, 0.6)]) == [1]  # same speed, more accurate


def test_write_report_json_md_html_and_plots(bench_results, tmp_path):
    report = write(tmp_path, bench_results, MANIFEST)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert on_disk["schema_version"] == 2
    by = {v["name"]: v for v in on_disk["variants"]}
    r = by["int8"]["ratios"]
    assert set(r) == {"teacher-onnx", "teacher-int8-optimum"}
    assert r["teacher-onnx"]["size_ratio"] == pytest.approx(by["int8"]["size_bytes"] / by["teacher-onnx"]["size_bytes"])
    assert set(r["teacher-onnx"]["speedup_p50_by_target"]) == {"iot", "mobile"}
    assert by["teacher-onnx"]["ratios"]["teacher-onnx"]["speedup_p50_by_target"]["iot"]["ratio"] == 1.0
    assert set(on_disk["pareto"]) == {"iot", "mobile"} and all(on_disk["pareto"].values())

    md = (tmp_path / "report.md").read_text()
    for name in by:
        assert f"| {name} |" in md or f"| {name} ★ |" in md
    assert "### iot" in md and "### mobile" in md
    cpu = on_disk["environment"]["cpu"]["model"]
    assert md.count(f"Emulated on {cpu}") == 2  # the CPU goes with every target's figures
    assert "Targets emulate device classes on this CPU" in md
    assert "DynamicQuantizeLinear" in md  # the mobile usability verdict
    images = re.findall(r"!\[[^\]]*\]\((report_plots/[a-z_]+\.png)\)", md)
    assert len(images) == 4
    for rel in images:
        w, h = _png_size((tmp_path / rel).read_bytes())
        assert w > 400 and h > 150

    page = (tmp_path / "report.html").read_text()
    srcs = re.findall(r"src='([^']*)'", page)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in page and "<script" not in page and "src='http" not in page  # nothing to fetch
    for s in srcs:
        _png_size(base64.b64decode(s.split(",", 1)[1]))
    assert "<table>" in page and "int8" in page


def test_a_report_from_results_without_targets_still_renders(bench_results, tmp_path):
    # results.json cached by an older benchmark stage: no per-target data, no .ort checks.
    old = copy.deepcopy(bench_results)
    for v in old["variants"]:
        v.pop("targets")
        v.pop("ort", None)
    old["environment"].pop("targets")
    for k in ("lengths", "protocol", "primary_target"):
        old["settings"].pop(k)
    report = write(tmp_path, old, MANIFEST)
    assert report["pareto"] == {}
    md = render_markdown(sections(report))
    assert "| int8 |" in md and "Latency by target" not in md
    assert sorted(p.name for p in (tmp_path / "report_plots").iterdir()) == [
        "accuracy_vs_latency.png",
        "size_and_memory.png",
        "stage_wall_time.png",
    ]


def test_compare_two_runs(bench_results):
    a = build_report(bench_results, MANIFEST)
    b = copy.deepcopy(a)
    by = {v["name"]: v for v in b["variants"]}
    by["int8"]["accuracy"] += 0.03125
    by["int8"]["latency_ms"]["p50"] = a["variants"][2]["latency_ms"]["p50"] / 2
    by["int8"]["size_bytes"] *= 2
    b["variants"] = [v for v in b["variants"] if v["name"] != "teacher-int8-optimum"]
    b["variants"].append({**by["int8"], "name": "int8-static"})
    b["environment"]["cpu"] = {**a["environment"]["cpu"], "model": "Other CPU"}

    cmp = compare_reports(a, b, compare_row)
    rows = {r["name"]: r for r in cmp["variants"]}
    assert set(rows) == {"teacher-onnx", "int8"}
    assert rows["int8"]["accuracy"]["delta"] == pytest.approx(0.03125)
    assert rows["int8"]["p50_ms"]["ratio"] == pytest.approx(0.5)
    assert rows["int8"]["size_bytes"]["ratio"] == pytest.approx(2.0)
    assert rows["teacher-onnx"]["p50_ms"]["delta"] == 0
    assert set(rows["int8"]["targets"]) == {"iot", "mobile"}
    assert cmp["only_in_a"] == ["teacher-int8-optimum"] and cmp["only_in_b"] == ["int8-static"]
    assert any("different CPUs" in w for w in cmp["warnings"])
    text = render_compare(cmp)
    assert "-50.0%" in text and "+3.12 pt" in text and "+100.0%" in text
    assert "only in b: int8-static" in text and "warning: different CPUs" in text


def test_compare_command_reads_two_run_directories(bench_results, tmp_path, capsys):
    from compress.cli import main

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write(tmp_path / name, bench_results, {**MANIFEST, "recipe": {"name": name}})
    with pytest.raises(SystemExit) as e:
        main(["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("a: a    b: b") and "int8" in out and "(+0.0%)" in out
    with pytest.raises(SystemExit) as e:
        main(["compare", str(tmp_path / "a"), str(tmp_path / "missing"), "--json"])
    assert e.value.code == 2 and "no report.json" in capsys.readouterr().err


def test_step_summary_keeps_the_distill_loss_augmentation_and_vocab_figures():
    from compress.tasks.classification.report import _step_summary

    m = {
        "dev_accuracy_torch": 0.9,
        "loss": {"alpha": 0.5, "hidden_weight": 0.0, "value_relation_weight": 1.0, "hidden_layer_map": [[0, 0]]},
        "augment": {"copies": 2, "examples": 120, "label_differs_from_source": 0.1},
        "vocab": {"vocab_size_before": 100, "vocab_size_after": 40, "per_split": {"x": 1}},
        "runtime": {"device": "cpu"},
    }
    out = _step_summary("distill/student", m)
    assert out["loss"] == {"alpha": 0.5, "value_relation_weight": 1.0}  # terms switched off are left out
    assert out["augment"]["examples"] == 120 and out["vocab"] == {"vocab_size_before": 100, "vocab_size_after": 40}
    assert "runtime" not in out
    assert _step_summary("prune/p", {"hidden_weight": 1.0, "method": "structured"})["hidden_weight"] == 1.0

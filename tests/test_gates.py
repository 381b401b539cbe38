"""Quality gates in a run: a collapsed pruned classifier and an over-budget LM student are gated, nothing is built
from them, the report and manifest say so, the bundle refuses them, and the run goes on with what passed."""

from __future__ import annotations

import json

import pytest

from compress.errors import StageError
from compress.pipeline import run_pipeline
from compress.recipe import load_recipe
from compress.tasks.classification.bundle import BundleError, bundle
from tests.conftest import write_tiny_data, write_tiny_recipe
from tests.lm_fixtures import write_lm_recipe, write_text_data


@pytest.fixture(scope="module")
def collapsed_run(tmp_path_factory, tiny_base_dir):
    work = tmp_path_factory.mktemp("gate_cls")
    data = write_tiny_data(work / "data")
    prune = [
        # A structured prune with a fine-tune far too aggressive: the weights blow up and one label remains.
        {"name": "wrecked", "method": "structured", "heads": 0.5, "ffn": 0.9, "epochs": 1, "batch_size": 8,
         "learning_rate": 0.9},
        {"name": "sparse", "sparsity": 0.3, "epochs": 1, "batch_size": 8, "learning_rate": 1e-3},
    ]  # fmt: skip
    quantize = [{"name": "int8-wrecked", "source": "wrecked"}, {"name": "int8-sparse", "source": "sparse"}]
    path = write_tiny_recipe(work / "recipe.yaml", data, tiny_base_dir, prune=prune, quantize=quantize)
    logs: list[str] = []
    report = run_pipeline(load_recipe(path), work / "run", log=logs.append)
    return work / "run", report, logs


def test_the_collapsed_model_is_gated_and_nothing_is_built_from_it(collapsed_run):
    run, report, logs = collapsed_run
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    wrecked = stages["prune/wrecked"]
    assert wrecked["status"] == "failed-gate"
    gate = wrecked["metrics"]["gate"]
    assert gate["passed"] is False and any(r.startswith("collapsed") for r in gate["reasons"])
    assert gate["metric"] == "accuracy" and gate["collapse"]["top_label_share"] >= 0.99
    for step in ("export/wrecked", "quantize/int8-wrecked"):
        assert stages[step]["status"] == "skipped-gate"
        assert not (run / step / "model.onnx").exists()
    for step in ("distill/student", "prune/sparse", "quantize/int8-sparse"):
        assert stages[step]["status"] == "done" and stages[step]["metrics"]["gate"]["passed"] is True
    assert stages["teacher"]["metrics"]["gate"]["passed"] is True
    names = [v["name"] for v in report["variants"]]
    assert "wrecked" not in names and "int8-wrecked" not in names and "int8-sparse" in names
    gated = {g["name"]: g for g in report["gated"]}
    assert gated["wrecked"]["status"] == "failed-gate" and gated["int8-wrecked"]["status"] == "skipped-gate"
    md = (run / "report.md").read_text()
    assert "| wrecked ⛔ | prune |" in md and "**failed**: held-out accuracy" in md and "| int8-wrecked ⛔ |" in md
    assert any("quality gate: prune/wrecked failed (collapsed" in line for line in logs)


def test_the_bundle_refuses_a_gated_variant(collapsed_run, tmp_path):
    run, _, _ = collapsed_run
    with pytest.raises(BundleError, match="'wrecked' failed its quality gate and is never shipped: collapsed"):
        bundle(run, "mobile", tmp_path / "b", "wrecked")
    meta = bundle(run, "mobile", tmp_path / "ok", max_accuracy_drop=1.0)
    assert meta["variant"] not in ("wrecked", "int8-wrecked")


def test_a_run_where_nothing_passes_fails_naming_each_failure(tmp_path, tiny_base_dir):
    data = write_tiny_data(tmp_path / "data")
    path = write_tiny_recipe(
        tmp_path / "recipe.yaml",
        data,
        tiny_base_dir,
        distill={"layers": [0, 2], "epochs": 1, "batch_size": 8, "learning_rate": 0.9},  # wrecked as well
        prune=[],
        quantize=[],
    )
    with pytest.raises(StageError, match=r"no variant passed its quality gate: distill/student: collapsed"):
        run_pipeline(load_recipe(path), tmp_path / "run", log=lambda s: None)


def test_an_lm_student_over_its_perplexity_bound_is_gated(tmp_path):
    data = write_text_data(tmp_path / "data")
    distill = [
        # One layer of four, barely trained: far above the teacher's perplexity.
        {"name": "stub", "layers": [0], "max_steps": 1, "learning_rate": 1e-6, "batch_size": 8,
         "max_perplexity_ratio": 1.05},
        {"name": "student", "layers": [0, 3], "epochs": 1, "batch_size": 8, "learning_rate": 3.0e-3},
    ]  # fmt: skip
    quantize = [{"name": "int4-stub", "source": "stub", "block_size": 16}]
    path = write_lm_recipe(tmp_path / "recipe.yaml", data, distill=distill, prune=[], quantize=quantize)
    report = run_pipeline(load_recipe(path), tmp_path / "run", log=lambda s: None)
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    gate = stages["distill/stub"]["metrics"]["gate"]
    assert stages["distill/stub"]["status"] == "failed-gate" and gate["metric"] == "perplexity"
    assert gate["value"] > 1.05 * gate["parent_value"] and "max_perplexity_ratio 1.05" in gate["reasons"][0]
    assert gate["collapse"]["unigram_perplexity"] > 1
    assert stages["export/stub"]["status"] == stages["quantize/int4-stub"]["status"] == "skipped-gate"
    assert [v["name"] for v in report["variants"]][-1] == "student"
    assert {g["name"] for g in report["gated"]} == {"stub", "int4-stub"}
    with pytest.raises(BundleError, match="'stub' failed its quality gate"):
        bundle(tmp_path / "run", "host", tmp_path / "b", "stub")

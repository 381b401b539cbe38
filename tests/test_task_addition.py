"""Adding a task is an addition: a toy third task (`tests/toy_task/`, one folder) and one line in the task
table run through the pipeline's plan, cache, quality gates, report, `compare`, `check` and `bundle`, with
nothing in the package naming it."""

from __future__ import annotations

import json
import random

import pytest

from compress import commands
from compress.cli import main
from compress.pipeline import plan, run_pipeline
from compress.recipe import load_recipe
from compress.tasks import TASKS


@pytest.fixture
def toy_task(monkeypatch):
    from tests.toy_task import TASK

    monkeypatch.setitem(TASKS, "word-count", lambda: TASK)  # the one line a new task adds to the table
    return TASK


def _lines(rng: random.Random, n: int) -> str:
    words = ["a", "tiny", "model", "counts", "words", "in", "lines", "of", "text"]
    return "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(n)) + "\n"


@pytest.fixture
def toy_recipe(tmp_path):
    rng = random.Random(0)
    (tmp_path / "train.txt").write_text(_lines(rng, 200))
    (tmp_path / "dev.txt").write_text(_lines(rng, 50))
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(
        "name: toy\ntask: word-count\ndata: {train: train.txt, dev: dev.txt}\n"
        "distill: [{name: student}, {name: strict, max_mae: 0.0}]\n"
        "prune: [{name: no-intercept, method: structured, heads: 0.5}]\n"
        "quantize: [{name: coarse, source: student, step: 0.05}]\n"
    )
    return recipe


def test_a_toy_task_runs_through_plan_cache_gates_report_compare_and_bundle(toy_task, toy_recipe, tmp_path, capsys):
    recipe = load_recipe(toy_recipe)
    assert type(recipe).__name__ == "WordCountRecipe"
    assert [s.id for s in plan(recipe)] == [
        "teacher", "distill/student", "distill/strict", "prune/no-intercept", "export/teacher", "export/student",
        "export/strict", "export/no-intercept", "quantize/coarse", "benchmark",
    ]  # fmt: skip
    logs: list[str] = []
    report = run_pipeline(recipe, tmp_path / "run", log=logs.append)
    assert report["task"] == "word-count"
    by = {v["name"]: v for v in report["variants"]}
    # The strict student fails its gate (no line fit has zero error): nothing is built from it, it is not shipped.
    assert "strict-export" not in by and any(g["name"] == "strict" for g in report["gated"])
    assert by["student-export"]["mae"] < 1.0 and by["coarse"]["mae"] < 1.0
    for name in ("report.json", "report.md", "report.html"):
        assert (tmp_path / "run" / name).is_file()
    assert "word-count report: toy" in (tmp_path / "run" / "report.md").read_text()

    # The cache: a second run changes nothing; a changed quantize variant re-runs it and the benchmark only.
    logs.clear()
    run_pipeline(recipe, tmp_path / "run", log=logs.append)
    assert sum("running" in line for line in logs) == 0
    logs.clear()
    changed = load_recipe(toy_recipe, {"quantize.step": 0.5})
    run_pipeline(changed, tmp_path / "run2", log=lambda s: None)
    run_pipeline(changed, tmp_path / "run", log=logs.append)
    assert [line.split(":")[0].split("] ")[1] for line in logs if line.endswith("running")] == [
        "quantize/coarse",
        "benchmark",
    ]

    # compare and bundle ask the task.
    cmp = commands.compare(tmp_path / "run2", tmp_path / "run", out=lambda s: None)
    assert cmp["task"] == "word-count" and {r["name"] for r in cmp["variants"]} >= {"coarse", "student-export"}
    meta = commands.bundle_run(tmp_path / "run", "any", tmp_path / "bundle", rule={"max_mae": 0.9}, out=print)
    assert meta["variant"] in by and (tmp_path / "bundle" / "model.json").is_file()
    with pytest.raises(commands.CommandError, match="--max-accuracy-drop: not an option of a word-count run"):
        commands.bundle_run(tmp_path / "run", "any", tmp_path / "b2", rule={"max_accuracy_drop": 0.1})
    capsys.readouterr()
    assert main(["check", str(toy_recipe)]) in (0, None)
    assert "ok (word-count: 200 train / 50 dev lines)" in capsys.readouterr().out


def test_a_toy_recipe_is_as_strict_as_the_others(toy_task, toy_recipe, tmp_path):
    from compress.errors import RecipeError

    bad = tmp_path / "bad.yaml"
    bad.write_text(toy_recipe.read_text().replace("step: 0.05", "step: true"))
    with pytest.raises(RecipeError, match=r"step = True: expected a number, got the boolean true"):
        load_recipe(bad)
    bad.write_text(toy_recipe.read_text() + "benchmark: {repeats: 3, epochs: 1}\n")
    with pytest.raises(RecipeError, match=r"unknown key 'benchmark.epochs'; valid keys here: repeats"):
        load_recipe(bad)


def test_an_unknown_task_names_the_known_ones(tmp_path):
    from compress.errors import RecipeError

    r = tmp_path / "r.yaml"
    r.write_text("name: x\ntask: word-count\ndata: {train: a.txt, dev: b.txt}\n")
    with pytest.raises(RecipeError, match=r"task = 'word-count': expected one of classification, causal-lm"):
        load_recipe(r)
    assert json.dumps(sorted(TASKS)) == '["causal-lm", "classification", "seq2seq"]'

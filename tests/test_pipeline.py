"""The whole pipeline on a tiny random BERT: artifacts, report, caching, interruption."""

from __future__ import annotations

import json

import pytest

import compress.tasks.classification.export
from compress.pipeline import plan, run_pipeline
from compress.recipe import load_recipe
from tests.conftest import write_tiny_data, write_tiny_recipe

VARIANTS = ["teacher-torch", "teacher-onnx", "teacher-int8-optimum", "student", "pruned", "int8"]
STEPS = [
    "teacher",
    "distill/student",
    "prune/pruned",
    "export/teacher",
    "export/student",
    "export/pruned",
    "quantize/int8",
    "benchmark",
]
VARIANT_KEYS = {
    "name",
    "stage",
    "runtime",
    "parent",
    "params",
    "layers",
    "accuracy",
    "latency_ms",
    "size_bytes",
    "size_gzip_bytes",
    "peak_rss_bytes",
    "ratios",
}


def _ran(logs: list[str]) -> list[str]:
    return [line.split("] ")[1].split(": ")[0] for line in logs if line.endswith(": running")]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_base_dir):
    # One full run shared by the tests below (it is the slow part); each test then works on its own copy
    # or only reads.
    work = tmp_path_factory.mktemp("pipeline")
    data = write_tiny_data(work / "data")
    recipe = load_recipe(write_tiny_recipe(work / "recipe.yaml", data, tiny_base_dir, benchmark={"memory": True}))
    out = tmp_path_factory.mktemp("run")
    logs: list[str] = []
    report = run_pipeline(recipe, out, log=logs.append)
    return recipe, out, report, logs


def test_every_stage_writes_its_artifact_and_the_report(first_run):
    recipe, out, report, logs = first_run
    assert [s.id for s in plan(recipe)] == STEPS
    assert _ran(logs) == STEPS
    for step in STEPS:
        assert (out / step).is_dir()
    assert not list(out.glob("**/.*tmp-*"))
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["run"] == "tiny"
    assert [v["name"] for v in on_disk["variants"]] == VARIANTS
    for v in on_disk["variants"]:
        assert VARIANT_KEYS <= set(v), VARIANT_KEYS - set(v)
        lat = v["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert 0.0 <= v["accuracy"] <= 1.0
        assert v["size_bytes"] > v["size_gzip_bytes"] > 0
        assert v["peak_rss_bytes"] >= v["baseline_rss_bytes"] > 0
    assert {"cpu", "threads", "versions"} <= set(on_disk["environment"])
    assert "isa" in on_disk["environment"]["cpu"]
    md = (out / "report.md").read_text()
    for name in VARIANTS:
        assert f"| {name} |" in md


def test_models_learn_and_int8_is_smaller(first_run):
    _, out, report, _ = first_run
    by = {v["name"]: v for v in report["variants"]}
    assert [(by[n]["stage"], by[n]["parent"]) for n in VARIANTS] == [
        ("baseline", None),
        ("baseline", "teacher-torch"),
        ("baseline", "teacher-onnx"),
        ("distill", "teacher-onnx"),
        ("prune", "student"),
        ("quantize", "pruned"),
    ]
    # The synthetic task is separable by word identity: a trained teacher is far above chance (0.5).
    assert by["teacher-onnx"]["accuracy"] >= 0.8
    # ONNX export preserves the teacher's predictions.
    assert by["teacher-onnx"]["accuracy"] == pytest.approx(by["teacher-torch"]["accuracy"], abs=1 / 32)
    assert by["student"]["layers"] == 2 and by["teacher-onnx"]["layers"] == 4
    # int8 weights are a quarter of fp32; on a model this tiny the graph's fixed parts keep the ratio ~0.7.
    assert by["int8"]["size_bytes"] < 0.8 * by["pruned"]["size_bytes"]
    # Half the encoder weights are zero: the pruned file compresses better than the dense student's.
    assert by["pruned"]["size_gzip_bytes"] < by["student"]["size_gzip_bytes"]


def test_manifest_records_each_stage(first_run):
    recipe, out, _, _ = first_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "tiny"
    for step in STEPS:
        rec = manifest["stages"][step]
        assert rec["status"] == "done"
        assert len(rec["output_hash"]) == 64
        assert rec["seed"] == recipe.seed
        assert {"torch", "onnx", "onnxruntime", "transformers"} <= set(rec["versions"])
        assert rec["wall_s"] >= 0
    assert manifest["stages"]["teacher"]["inputs"]["data"]["files"]["train"]
    prune = manifest["stages"]["prune/pruned"]["metrics"]
    assert prune["sparsity_prunable"] == pytest.approx(0.5, abs=1e-3)
    assert manifest["stages"]["quantize/int8"]["metrics"]["int8_initializers"] > 0


def test_rerun_skips_unchanged_stages_and_sparsity_change_reruns_from_prune(first_run, tmp_path):
    import shutil

    recipe, out, _, _ = first_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    logs: list[str] = []
    run_pipeline(recipe, run, log=logs.append)
    assert _ran(logs) == []
    assert sum("skipped" in line for line in logs) == len(STEPS)

    changed = load_recipe(recipe_path(recipe, tmp_path, prune={"sparsity": 0.3}))
    logs = []
    report = run_pipeline(changed, run, log=logs.append)
    assert _ran(logs) == ["prune/pruned", "export/pruned", "quantize/int8", "benchmark"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["prune/pruned"]["metrics"]["sparsity_prunable"] == pytest.approx(0.3, abs=1e-3)
    assert [v["name"] for v in report["variants"]] == VARIANTS


def recipe_path(recipe, tmp_path, **sections):
    import yaml

    tree = recipe.model_dump(mode="json")
    for k, v in sections.items():
        (tree[k][0] if isinstance(tree[k], list) else tree[k]).update(v)
    p = tmp_path / "changed.yaml"
    p.write_text(yaml.safe_dump(tree))
    return p


def test_interrupted_stage_leaves_no_artifact_and_the_next_run_finishes(first_run, tmp_path, monkeypatch):
    import shutil

    recipe, out, _, _ = first_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    shutil.rmtree(run / "export")  # as if export had never finished
    (run / "report.json").unlink()

    def interrupted(model_dir, out_dir, *args, **kwargs):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "model.onnx").write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(compress.tasks.classification.export, "export_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(recipe, run, log=lambda _: None)
    assert list((run / "export").iterdir()) == []  # neither a half-written export/teacher nor a temporary
    assert json.loads((run / "manifest.json").read_text())["stages"]["export/teacher"]["status"] == "running"

    monkeypatch.undo()
    logs: list[str] = []
    run_pipeline(recipe, run, log=logs.append)
    # The re-export is byte-identical to the one before, so quantize and benchmark stay valid and are skipped.
    assert _ran(logs) == ["export/teacher", "export/student", "export/pruned"]
    assert (run / "export" / "pruned" / "model.onnx").stat().st_size > 1000
    assert (run / "report.json").is_file()


def test_stale_temporaries_from_a_killed_run_are_cleaned(first_run, tmp_path):
    import shutil

    recipe, out, _, _ = first_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    stale = run / "prune" / ".pruned.tmp-99999"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    logs: list[str] = []
    run_pipeline(recipe, run, log=logs.append)
    assert not stale.exists()
    assert _ran(logs) == []


def _copy_with_a_harsh_trim(first_run, tmp_path):
    """A copy of the first run to change, and a `trim_vocab` section that removes pieces: the tiny train split
    uses every piece of the tiny vocabulary, so a frequency threshold (the median count of the train pieces)
    makes the cut."""
    import shutil

    import numpy as np
    from transformers import AutoTokenizer

    from compress.tasks.classification.data import load_task_data
    from compress.vocab import token_counts

    recipe, out, _, _ = first_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    teacher_tok = AutoTokenizer.from_pretrained(run / "teacher", local_files_only=True)
    counts = token_counts(teacher_tok, load_task_data(recipe.data).train.texts)
    return recipe, run, {"enabled": True, "keep_chars": False, "min_frequency": int(np.median(counts[counts > 0])) + 1}


def test_a_trimmed_vocabulary_flows_through_export_quantize_and_benchmark(first_run, tmp_path):
    import onnx
    from transformers import AutoTokenizer

    recipe, run, trim = _copy_with_a_harsh_trim(first_run, tmp_path)
    # The cut is harsh on purpose (it must remove pieces): the accuracy budget is off, the collapse checks stay.
    trimmed = load_recipe(recipe_path(recipe, tmp_path, distill={"trim_vocab": trim, "max_drop": None}))
    logs: list[str] = []
    report = run_pipeline(trimmed, run, log=logs.append)
    assert _ran(logs) == STEPS[1:3] + STEPS[4:]  # the teacher and its export are unchanged
    full = len(AutoTokenizer.from_pretrained(run / "teacher", local_files_only=True))
    for step in ("distill/student", "prune/pruned", "export/student", "export/pruned", "quantize/int8"):
        rows = len(AutoTokenizer.from_pretrained(run / step, local_files_only=True))
        assert rows < full, step
        if step.startswith(("export", "quantize")):
            graph = onnx.load(str(run / step / "model.onnx")).graph
            embedding = next(i for i in graph.initializer if "word_embeddings" in i.name and len(i.dims) == 2)
            assert embedding.dims[0] == rows, step
    vocab = json.loads((run / "manifest.json").read_text())["stages"]["distill/student"]["metrics"]["vocab"]
    assert vocab["vocab_size_after"] < vocab["vocab_size_before"] == full
    assert vocab["dev_accuracy_untrimmed"] is not None
    # The ONNX student, fed by its own (trimmed) tokenizer, predicts what the trimmed PyTorch student did.
    student = json.loads((run / "manifest.json").read_text())["stages"]["distill/student"]["metrics"]
    acc = {v["name"]: v["accuracy"] for v in report["variants"]}
    assert acc["student"] == pytest.approx(student["dev_accuracy_torch"], abs=1 / 32)


def test_a_second_run_on_the_same_directory_exits_2_naming_the_first(tmp_path, tiny_base_dir, capsys):
    import subprocess
    import sys
    import time

    from compress.cli import main

    data = write_tiny_data(tmp_path / "data")
    recipe = write_tiny_recipe(tmp_path / "recipe.yaml", data, tiny_base_dir, prune=[], quantize=[])
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "compress", "run", str(recipe), "--out", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not ((run / ".lock").is_file() and (run / ".lock").read_text()) and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(SystemExit) as e:
        main(["run", str(recipe), "--out", str(run)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and f"is in use by process {first.pid} " in err and len(err.splitlines()) == 1
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    report = json.loads((run / "report.json").read_text())
    assert [v["name"] for v in report["variants"]][-1] == "student"


def test_a_prune_step_trims_the_vocabulary_and_augments_before_it_prunes(first_run, tmp_path):
    from transformers import AutoTokenizer

    from compress.tasks.classification.data import load_task_data

    recipe, run, trim = _copy_with_a_harsh_trim(first_run, tmp_path)
    prune = {"trim_vocab": trim, "augment": {"copies": 1}, "max_drop": None}
    changed = load_recipe(recipe_path(recipe, tmp_path, prune=prune))
    logs: list[str] = []
    run_pipeline(changed, run, log=logs.append)
    assert _ran(logs) == ["prune/pruned", "export/pruned", "quantize/int8", "benchmark"]  # the student stays
    full = len(AutoTokenizer.from_pretrained(run / "teacher", local_files_only=True))
    assert len(AutoTokenizer.from_pretrained(run / "distill/student", local_files_only=True)) == full
    for step in ("prune/pruned", "export/pruned", "quantize/int8"):
        assert len(AutoTokenizer.from_pretrained(run / step, local_files_only=True)) < full, step
    metrics = json.loads((run / "manifest.json").read_text())["stages"]["prune/pruned"]["metrics"]
    assert metrics["vocab"]["vocab_size_after"] < metrics["vocab"]["vocab_size_before"] == full
    assert 0 < metrics["augment"]["examples"] <= len(load_task_data(recipe.data).train.texts)
    assert metrics["gate"]["passed"] in (True, False)  # judged against the untrimmed student: it ran


def test_the_report_gives_macs_and_the_share_of_the_measured_peak(first_run):
    _, out, report, _ = first_run
    peaks = report["environment"]["peak_macs_per_s"]
    assert all(p["int8"] > 0 and p["fp32"] > 0 for p in peaks.values())
    by = {v["name"]: v for v in report["variants"]}
    assert by["int8"]["compute"]["kernels"] == "int8" and by["student"]["compute"]["kernels"] == "fp32"
    # The student keeps fewer layers than the teacher: fewer MACs per request, at the same lengths.
    assert by["student"]["compute"]["macs_per_request"] < by["teacher-onnx"]["compute"]["macs_per_request"]
    for v in by.values():
        for figures in v["compute"]["targets"].values():
            assert 0 < figures["share_of_peak"] < 1
    assert "Compute: MACs and the share of this CPU's peak" in (out / "report.md").read_text()


def test_an_int8_model_saved_for_the_device_goes_through_benchmark_and_bundle(first_run, tmp_path):
    import shutil

    from compress.tasks.classification.bundle import bundle

    recipe, out, before, _ = first_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    changed = load_recipe(recipe_path(recipe, tmp_path, quantize={"optimize_offline": True, "external_data": True}))
    logs: list[str] = []
    report = run_pipeline(changed, run, log=logs.append)
    assert _ran(logs) == ["quantize/int8", "benchmark"]
    q = run / "quantize" / "int8"
    assert json.loads((q / "artifact.json").read_text())["graph_optimized"]["level"] == "extended"
    by, was = {v["name"]: v for v in report["variants"]}, {v["name"]: v for v in before["variants"]}
    # The size counts the side file; the same weights loaded another way classify every sentence the same.
    assert by["int8"]["size_bytes"] == sum((q / f).stat().st_size for f in ("model.onnx", "model.onnx.data"))
    assert by["int8"]["accuracy"] == was["int8"]["accuracy"]
    assert by["int8"]["accuracy_test"] == was["int8"]["accuracy_test"]
    memory = by["int8"]["targets"]["mobile"]["memory"]
    assert memory["model_rss_bytes"] > 0 and memory["baseline_rss_bytes"] > 0
    meta = bundle(run, "mobile", tmp_path / "bundle", variant="int8")
    assert meta["default_model"] == "onnx" and "model.onnx.data" in meta["files"]
    assert meta["check"]["ort_vs_onnx_label_agreement"] == 1.0


def test_a_bundles_emulated_verification_goes_into_its_runs_report_and_stays(first_run, tmp_path, monkeypatch):
    import shutil

    from compress.commands import CommandError, verify_bundle_dir
    from compress.tasks import task_for
    from compress.tasks.classification.bundle import bundle

    recipe, out, _, _ = first_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    b = tmp_path / "bundle"
    bundle(run, "mobile", b)
    calls = []

    def emulated(bundle_dir, cpus, progress):  # what export.verify returns, without minutes of QEMU
        calls.append(cpus)
        return {
            "arch": "arm64",
            "emulator": "qemu-aarch64 test",
            "passed": cpus != ["cortex-a53"],
            "cpus": {c: {"comparison": {"passed": c != "cortex-a53", "summary": f"onnx: on {c}"}} for c in cpus},
        }

    monkeypatch.setattr(type(task_for("classification")), "verify_function", lambda self: emulated)
    other = tmp_path / "other"
    shutil.copytree(run, other)
    report = json.loads((other / "report.json").read_text())
    (other / "report.json").write_text(json.dumps({**report, "run": "another-run"}))
    with pytest.raises(CommandError, match="made from run .* not from this one"):
        verify_bundle_dir(b, cpus=["cortex-a72"], run_dir=other, out=lambda s: None)
    assert not calls  # refused before any emulation

    assert verify_bundle_dir(b, cpus=["cortex-a72", "neoverse-n1"], run_dir=run, out=lambda s: None)["passed"]
    md = (run / "report.md").read_text()
    assert "Checked on other CPUs (emulated)" in md and "onnx: on neoverse-n1" in md
    assert (run / "report.html").read_text().count("onnx: on cortex-a72") == 1
    assert not verify_bundle_dir(b, cpus=["cortex-a53"], run_dir=run, out=lambda s: None)["passed"]
    records = json.loads((run / "report.json").read_text())["verifications"]
    assert len(records) == 1 and not records[0]["passed"]  # the latest verification of a bundle replaces the last
    assert "| NO |" in (run / "report.md").read_text().replace("  ", " ")
    run_pipeline(recipe, run, log=lambda s: None)  # a rerun writes the report again, with what was verified
    assert json.loads((run / "report.json").read_text())["verifications"][0]["cpus"].keys() == {"cortex-a53"}

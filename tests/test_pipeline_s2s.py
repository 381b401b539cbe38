"""The seq2seq path end to end on tiny encoder-decoders: every stage, the report, the bundle; users' T5, BART and
Marian directories through `teacher.path`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from compress.pipeline import run_pipeline
from compress.recipe import load_recipe
from tests.s2s_fixtures import make_user_model, write_pairs, write_s2s_recipe

STEPS = ["teacher", "distill/student", "prune/sparse", "export/teacher", "export/student", "export/sparse",
         "quantize/int8", "quantize/int4", "benchmark"]  # fmt: skip
PRUNE = [{"name": "sparse", "sparsity": 0.5, "epochs": 0.5, "batch_size": 32, "learning_rate": 3.0e-3,
          "max_chrf_drop": None}]  # fmt: skip


def _ops(path) -> dict[str, int]:
    """Operator counts of a graph, subgraphs (the merged decoder's branches) included."""
    counts: dict[str, int] = {}

    def walk(graph):
        for n in graph.node:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
            for a in n.attribute:
                if a.g is not None and a.g.node:
                    walk(a.g)

    walk(onnx.load(str(path), load_external_data=False).graph)
    return counts


@pytest.fixture(scope="module")
def s2s_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("s2s_pipeline")
    recipe = load_recipe(write_s2s_recipe(work / "recipe.yaml", write_pairs(work / "data"), prune=PRUNE))
    logs: list[str] = []
    report = run_pipeline(recipe, work / "run", log=logs.append)
    return work, report, logs


def test_every_stage_runs_and_the_report_has_every_variant(s2s_run):
    work, report, _ = s2s_run
    manifest = json.loads((work / "run" / "manifest.json").read_text())
    assert manifest["plan"] == STEPS
    assert all(manifest["stages"][s]["status"] == "done" for s in STEPS)
    names = [v["name"] for v in report["variants"] if v.get("stage") != "anchor"]
    assert names == ["teacher-torch", "teacher-onnx", "student", "sparse", "int8", "int4", "teacher-int8-optimum"]
    for v in report["variants"]:
        assert 0 <= v["dev_chrf"] <= 100 and v["test_chrf"] is not None
        assert v["targets"]["host"]["sentences_per_s"] > 0
    by = {v["name"]: v for v in report["variants"]}
    # the export reproduces PyTorch exactly: same greedy outputs, so the same scores
    assert by["teacher-onnx"]["dev_chrf"] == by["teacher-torch"]["dev_chrf"]
    # optimum runs the same float32 export through its own generate loop: the same outputs again
    assert by["teacher-optimum"]["dev_chrf"] == by["teacher-torch"]["dev_chrf"]
    for f in ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"):  # optimum's int8
        assert _ops(Path(by["teacher-int8-optimum"]["path"]) / f).get("MatMulInteger", 0) > 0, f
    assert by["student"]["params"] < by["teacher-torch"]["params"]
    assert by["int8"]["size_bytes"] < by["student"]["size_bytes"]
    assert (work / "run" / "report.md").read_text().count("| int4 |") >= 1


def test_the_ctranslate2_anchor_is_measured_or_reported_unavailable(s2s_run):
    _, report, _ = s2s_run
    anchors = [v for v in report["variants"] if v.get("runtime") == "ctranslate2"]
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        assert anchors == []
        assert [u["name"] for u in report["anchors"]["unavailable"]] == ["teacher-ct2-int8"]
        return
    (ct2,) = anchors
    assert ct2["name"] == "teacher-ct2-int8" and ct2["runtime"] == "ctranslate2"
    assert 0 <= ct2["dev_chrf"] <= 100 and ct2["targets"]["host"]["sentences_per_s"] > 0
    student = next(v for v in report["variants"] if v["name"] == "student")
    assert student["ratios"]["teacher-ct2-int8"]["speed"] > 0


def test_the_student_keeps_the_named_layers_and_the_export_matches_pytorch(s2s_run):
    work, _, _ = s2s_run
    manifest = json.loads((work / "run" / "manifest.json").read_text())
    student = manifest["stages"]["distill/student"]["metrics"]
    assert (student["encoder_layers"], student["decoder_layers"]) == (2, 1)
    for name in ("teacher", "student"):
        check = manifest["stages"][f"export/{name}"]["metrics"]["check"]
        assert check["identical_outputs"] == check["inputs"] > 0
        assert check["max_abs_logit_diff"] < 1e-3


def test_a_pruned_student_ships_its_zeros_in_both_graphs_and_a_smaller_download(s2s_run):
    import numpy as np
    from onnx import numpy_helper

    work, report, _ = s2s_run
    manifest = json.loads((work / "run" / "manifest.json").read_text())
    m = manifest["stages"]["prune/sparse"]["metrics"]
    assert abs(m["sparsity_prunable"] - 0.5) < 0.01 and m["train_steps"] > 0 and m["gate"]["passed"]
    assert {k.split(".")[0] for k in m["per_layer"]} == {"encoder", "decoder"}
    check = manifest["stages"]["export/sparse"]["metrics"]["check"]
    assert check["identical_outputs"] == check["inputs"] > 0
    for f in ("encoder_model.onnx", "decoder_model_merged.onnx"):  # the projections' zeros, as exported
        graph = onnx.load(str(work / "run" / "export" / "sparse" / f)).graph
        mats = [numpy_helper.to_array(t) for t in graph.initializer if len(t.dims) == 2 and min(t.dims) > 1]
        zeros = sum(int((a == 0).sum()) for a in mats) / sum(a.size for a in mats)
        assert zeros > 0.2, (f, zeros)  # half of the projections (the float32 embedding is dense)
        assert np.isfinite(zeros)
    by = {v["name"]: v for v in report["variants"]}
    assert by["sparse"]["parent"] == "student" and by["sparse"]["params"] == by["student"]["params"]
    assert by["sparse"]["size_gzip_bytes"] < by["student"]["size_gzip_bytes"]


def test_quantized_graphs_hold_int8_and_int4_kernels_in_encoder_and_decoder(s2s_run):
    work, _, _ = s2s_run
    for name, op in (("int8", "MatMulInteger"), ("int4", "MatMulNBits")):
        d = work / "run" / "quantize" / name
        for f in ("encoder_model.onnx", "decoder_model_merged.onnx"):
            assert _ops(d / f).get(op, 0) > 0, (name, f)
        assert _ops(d / "decoder_model_merged.onnx").get("If", 0) == 1  # first step and cached steps, one file


def test_the_bundle_reproduces_the_benchmark_and_runs_without_torch(s2s_run, tmp_path):
    from compress.commands import bundle_run

    work, _, _ = s2s_run
    out = tmp_path / "bundle"
    meta = bundle_run(work / "run", "host", out, "int8", rule={}, force=False, out=lambda s: None)
    assert meta["check"]["identical_outputs"] == meta["check"]["inputs"] > 0
    assert set(meta["files"]) >= {"encoder_model.onnx", "decoder_model_merged.onnx", "tokenizer.json", "translate.py"}
    # torch and transformers made unimportable: the bundle needs neither
    block = tmp_path / "block"
    for mod in ("torch", "transformers"):
        (block / mod).mkdir(parents=True)
        (block / mod / "__init__.py").write_text("raise ImportError('not on the device')\n")
    expected = meta["check_inputs"][:3]
    (tmp_path / "in.txt").write_text("\n".join(e["input"] for e in expected) + "\n", encoding="utf-8")
    env = {"PYTHONPATH": str(block), "PATH": "/usr/bin:/bin"}
    script = str(out / "translate.py")
    proc = subprocess.run([sys.executable, script, "--file", str(tmp_path / "in.txt"), "--json"], capture_output=True,
                          text=True, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line)["output"] for line in proc.stdout.splitlines()]
    assert got == [e["output"] for e in expected]
    beam = subprocess.run([sys.executable, script, expected[0]["input"], "--beams", "3"], capture_output=True,
                          text=True, env=env)  # fmt: skip
    assert beam.returncode == 0, beam.stderr


def test_the_arm64_comparison_tells_a_near_tie_from_a_fault(s2s_run, tmp_path):
    """The comparison `verify` applies to an emulated CPU's outputs (the emulated runs are the slow tests')."""
    import numpy as np

    from compress.commands import bundle_run
    from compress.tasks.seq2seq.bundle import _module, compare_verification

    work, _, _ = s2s_run
    out = tmp_path / "bundle"
    bundle_run(work / "run", "host", out, "int8", rule={}, force=False, out=lambda s: None)
    check = json.loads((out / "check.json").read_text())
    same = {"onnx": [{"tokens": list(t)} for t in check["expected"]["onnx"]]}
    assert compare_verification(out, check, same)["passed"]
    i = next(k for k, t in enumerate(check["expected"]["onnx"]) if t)
    ids, want = check["inputs"][i], check["expected"]["onnx"][i]
    z = _module(out).Translator(out, 1).forced_logits(ids, [])
    runner_up = int(np.argsort(z)[-2])
    changed = json.loads(json.dumps(same))
    changed["onnx"][i] = {"tokens": [runner_up], "divergence": {"step": 0, "expected": want[0], "got": runner_up}}
    margin = float(z[want[0]] - z[runner_up])
    verdict = compare_verification(out, check, changed, near_tie=margin + 1e-3)
    assert verdict["passed"] and len(verdict["models"]["onnx"]["near_ties"]) == 1
    verdict = compare_verification(out, check, changed, near_tie=margin / 2)
    assert not verdict["passed"] and verdict["models"]["onnx"]["faults"][0]["input"] == i


def test_the_default_rule_refuses_when_no_variant_is_close_to_the_teacher(s2s_run, tmp_path):
    from compress.commands import CommandError, bundle_run

    work, report, _ = s2s_run
    ref = next(v["dev_chrf"] for v in report["variants"] if v["name"] == "teacher-torch")
    best = max(v["dev_chrf"] for v in report["variants"] if v["name"] in ("student", "int8", "int4"))
    if best >= ref:
        pytest.skip("a variant matched the teacher's chrF: nothing to refuse")
    with pytest.raises(CommandError, match="no variant within"):
        bundle_run(work / "run", "host", tmp_path / "b", None, rule={"max_chrf_drop": (ref - best) / 2},
                   force=False, out=lambda s: None)  # fmt: skip
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("family", ["t5", "bart", "marian"])
def test_a_users_model_directory_runs_through_with_teacher_path(tmp_path, family):
    model_dir = make_user_model(family, tmp_path / f"user-{family}")
    data = write_pairs(tmp_path / "data", train=200, dev=12, test=12)
    recipe = load_recipe(
        write_s2s_recipe(
            tmp_path / "recipe.yaml",
            data,
            teacher={"path": str(model_dir)},
            quantize=[{"name": "int8", "method": "dynamic", "max_chrf_drop": None}],
            benchmark={"memory": False},  # the family's path is under test; memory probes: s2s_run
        )  # fmt: skip
    )
    report = run_pipeline(recipe, tmp_path / "run", log=lambda s: None)
    by = {v["name"]: v for v in report["variants"]}
    assert set(by) - {"teacher-ct2-int8"} == {"teacher-torch", "teacher-onnx", "student", "int8", "teacher-optimum",
                                              "teacher-int8-optimum"}  # fmt: skip
    if family in ("t5", "bart") and importlib.util.find_spec("ctranslate2") is not None:
        # CTranslate2 converts both families; a BartConfig made in code lacks a key its converter reads
        assert by["teacher-ct2-int8"]["dev_chrf"] >= 0, report["anchors"]
    assert by["teacher-onnx"]["dev_chrf"] == by["teacher-torch"]["dev_chrf"]
    # optimum runs the same float32 export through its own generate loop: the same outputs again
    assert by["teacher-optimum"]["dev_chrf"] == by["teacher-torch"]["dev_chrf"]
    for f in ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"):  # optimum's int8
        assert _ops(Path(by["teacher-int8-optimum"]["path"]) / f).get("MatMulInteger", 0) > 0, f
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["distill/student"]["metrics"]["decoder_layers"] == 1
    check = manifest["stages"]["export/student"]["metrics"]["check"]
    assert check["identical_outputs"] == check["inputs"]

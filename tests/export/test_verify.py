"""Bundles checked on emulated arm64 (`edge-compress verify`): the comparisons, the refusals, the one-line errors;
the emulated runs themselves are `slow` (they build a 200 MB arm64 environment and run for minutes)."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from compress.commands import CommandError, verify_bundle_dir
from compress.tasks.classification.bundle import SCORE_TOLERANCE, compare_verification
from export import emulate
from export.emulate import EmulationError, Guest
from export.verify import _compare_known_answer, _known_answer_models
from tests.conftest import qemu_or_skip
from tests.export.test_bundle import fake_run, made  # noqa: F401 - the classifier bundle fixtures


def _check(scores):
    return {"expected": {"onnx": [{"label_id": int(np.argmax(s)), "scores": dict(zip("ab", s, strict=True))}
                                  for s in scores]}}  # fmt: skip


def test_classifier_comparison_allows_only_near_ties_and_small_score_differences():
    check = _check([(0.9, 0.1), (0.52, 0.48), (0.2, 0.8)])
    same = {"onnx": check["expected"]["onnx"]}
    assert compare_verification(check, same)["passed"]
    tie = {"onnx": [same["onnx"][0], {"label_id": 1, "scores": {"a": 0.49, "b": 0.51}}, same["onnx"][2]]}
    r = compare_verification(check, tie)
    assert r["passed"] and r["models"]["onnx"]["near_ties"] == 1 and r["models"]["onnx"]["labels_identical"] == 2
    flip = {"onnx": [{"label_id": 1, "scores": {"a": 0.45, "b": 0.55}}, *same["onnx"][1:]]}
    r = compare_verification(check, flip)
    assert not r["passed"] and r["models"]["onnx"]["unexplained"] == [0]
    drift = {"onnx": [{"label_id": 0, "scores": {"a": 0.9 - 2 * SCORE_TOLERANCE, "b": 0.1 + 2 * SCORE_TOLERANCE}},
                      *same["onnx"][1:]]}  # fmt: skip
    r = compare_verification(check, drift)
    assert not r["passed"] and r["max_score_diff"] == pytest.approx(2 * SCORE_TOLERANCE)


def _fake_guest(tmp_path, version="7.2.22"):
    return Guest(tmp_path / "qemu", version, tmp_path / "root", tmp_path / "site", {})


@pytest.mark.parametrize("cpu", ["max", "cortex-a72"])
def test_a_cpu_model_that_fails_the_known_answer_test_is_refused_with_the_fix(tmp_path, cpu):
    tolerances = _known_answer_models(tmp_path)
    assert set(tolerances) == {"int8", "int4-level0", "int4-level4"}
    for name in tolerances:  # the guest computed exactly what this machine did ...
        shutil.copy(tmp_path / f"{name}.host.npy", tmp_path / f"{name}.guest.npy")
    assert _compare_known_answer(_fake_guest(tmp_path), cpu, tmp_path, tolerances)["relative_max_diff"]["int8"] == 0
    wrong = np.load(tmp_path / "int8.host.npy") * -1.0  # ... or, as QEMU 7.2's SME int8 path does, something else
    np.save(tmp_path / "int8.guest.npy", wrong)
    with pytest.raises(EmulationError) as e:
        _compare_known_answer(_fake_guest(tmp_path), cpu, tmp_path, tolerances)
    assert "fails the known-answer test: int8 differs" in str(e.value) and "\n" not in str(e.value)
    assert ("QEMU 10" in str(e.value)) == (cpu == "max")


def test_a_missing_emulator_or_bundle_is_one_line_naming_the_fix(monkeypatch, made, tmp_path):  # noqa: F811
    out, _ = made
    monkeypatch.setattr(emulate.shutil, "which", lambda name: None)
    with pytest.raises(EmulationError, match="sudo apt-get install qemu-user-static"):
        emulate.find_qemu()
    with pytest.raises(CommandError, match="no arm64 emulator: install"):
        verify_bundle_dir(out, out=lambda s: None)
    with pytest.raises(CommandError, match="only arm64 is emulated"):
        verify_bundle_dir(out, "armhf")
    with pytest.raises(CommandError, match="not a bundle"):
        verify_bundle_dir(tmp_path)
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / "check.json").unlink()
    monkeypatch.setattr(emulate, "find_qemu", lambda: (tmp_path / "qemu", "10.0.0"))
    with pytest.raises(CommandError, match="no check.json"):
        verify_bundle_dir(old, out=lambda s: None)
    with pytest.raises(EmulationError, match="--cpu cortex-x9: not a CPU model"):
        _fake_guest(tmp_path).cpu_root("cortex-x9")


def test_the_classifier_bundle_records_its_check_inputs_and_results(made):  # noqa: F811
    out, meta = made
    check = json.loads((out / "check.json").read_text())
    assert check["count"] == len(check["texts"]) == meta["check"]["texts"]
    assert set(check["expected"]) == {"ort", "onnx"} and len(check["expected"]["onnx"]) == check["count"]
    assert "check.json" in meta["files"]


@pytest.mark.slow
def test_the_classifier_bundle_verifies_on_emulated_arm64(made, tmp_path):  # noqa: F811
    qemu_or_skip()
    out, _ = made
    b = tmp_path / "b"
    shutil.copytree(out, b)
    result = verify_bundle_dir(b, cpus=["cortex-a72"], out=print)
    assert result["passed"], result
    onnx = result["cpus"]["cortex-a72"]["comparison"]["models"]["onnx"]
    assert onnx["labels_identical"] + onnx["near_ties"] == onnx["inputs"]
    assert json.loads((b / "bundle.json").read_text())["verification"]["passed"]


@pytest.mark.slow
def test_qemu_7_sme_is_refused_before_its_results_are_trusted(made, tmp_path):  # noqa: F811
    qemu_or_skip()
    qemu, version = emulate.find_qemu()
    if int(version.split(".")[0]) >= 10:
        pytest.skip(f"QEMU {version} computes the SME path correctly")
    out, _ = made
    with pytest.raises(CommandError, match="fails the known-answer test"):
        verify_bundle_dir(out, cpus=["max"], out=print)
    assert subprocess.run([str(qemu), "--version"], capture_output=True).returncode == 0

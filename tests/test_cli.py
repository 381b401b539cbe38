"""The command line: useful help, one-line errors with a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from compress.cli import main


def test_help_lists_commands_and_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "run" in out and "check" in out and "configs/default.yaml" in out


def test_run_help_explains_set_and_out(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--set" in out and "--out" in out and "prune.sparsity" in out


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("prune.sparsity=1.5", "prune.sparsity = 1.5"),
        ("prune.sparsty=0.5", "unknown key 'prune.sparsty'"),
        ("distill.layers=[0, 9]", "distill.layers"),
        ("data.train=missing.tsv", "data.train"),
        ("teacher.epochs=abc", "teacher.epochs"),
    ],
)
def test_bad_recipe_exits_2_with_one_line(write_recipe, capsys, override, expected):
    with pytest.raises(SystemExit) as e:
        main(["run", str(write_recipe()), "--set", override, "--out", str(write_recipe().parent / "run")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert expected in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_check_validates_without_running(write_recipe, capsys):
    main(["check", str(write_recipe())])
    out = capsys.readouterr().out
    assert "ok" in out and "labels ['0', '1']" in out


def test_module_entry_point_reports_missing_recipe_file(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "compress", "run", str(tmp_path / "nope.yaml")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "recipe file not found" in proc.stderr and "Traceback" not in proc.stderr

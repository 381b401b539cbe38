"""Run bookkeeping: atomic artifact directories, content hashes, and the manifest's freshness test."""

from __future__ import annotations

import json
import shutil

import pytest

from compress.manifest import Manifest, atomic_dir, clean_stale_temporaries, hash_path, write_json_atomic


def _tree(root) -> dict[str, str]:
    """Every file under `root` (hidden ones too) -> its text."""
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


class _Interrupt(Exception):
    pass


def test_failure_leaves_neither_the_final_dir_nor_a_temporary(tmp_path):
    final = tmp_path / "runs" / "stage"
    with pytest.raises(_Interrupt):
        with atomic_dir(final) as tmp:
            (tmp / "model.bin").write_text("half written")
            assert tmp.parent == final.parent and tmp != final
            raise _Interrupt
    assert list(final.parent.iterdir()) == []


def test_failure_keeps_the_previous_artifact(tmp_path):
    final = tmp_path / "stage"
    final.mkdir()
    (final / "model.bin").write_text("v1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(final) as tmp:
            (tmp / "model.bin").write_text("v2, half written")
            raise KeyboardInterrupt
    assert _tree(tmp_path) == {"stage/model.bin": "v1"}


def test_success_replaces_the_older_dir(tmp_path):
    final = tmp_path / "stage"
    final.mkdir()
    (final / "old.bin").write_text("v1")
    with atomic_dir(final) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "new.bin").write_text("v2")
        # Until the block ends, readers still see the old artifact.
        assert _tree(final) == {"old.bin": "v1"}
    assert _tree(tmp_path) == {"stage/sub/new.bin": "v2"}  # no old file, no temporary, no backup


def test_clean_stale_temporaries_removes_only_leftovers(tmp_path):
    (tmp_path / ".teacher.tmp-123").mkdir()
    (tmp_path / ".teacher.tmp-123" / "x").write_text("x")
    (tmp_path / ".manifest.json.tmp-9").write_text("{")
    (tmp_path / ".distill.old-5").mkdir()
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "model.bin").write_text("keep")
    (tmp_path / "manifest.json").write_text("{}")
    clean_stale_temporaries(tmp_path)
    assert _tree(tmp_path) == {"manifest.json": "{}", "teacher/model.bin": "keep"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "teacher"]


def test_hash_path_is_stable_and_follows_content_and_names(tmp_path):
    d = tmp_path / "a"
    (d / "sub").mkdir(parents=True)
    (d / "x.txt").write_text("one")
    (d / "sub" / "y.txt").write_text("two")
    h = hash_path(d)
    assert len(h) == 64 and h == hash_path(d)
    copy = tmp_path / "b"
    shutil.copytree(d, copy)
    assert hash_path(copy) == h  # relative names: a copied artifact is the same artifact

    (d / "x.txt").write_text("One")
    assert hash_path(d) != h
    (d / "x.txt").write_text("one")
    assert hash_path(d) == h
    (d / "x.txt").rename(d / "z.txt")
    assert hash_path(d) != h
    (d / "z.txt").rename(d / "x.txt")
    (d / "extra").write_text("")
    assert hash_path(d) != h

    f = tmp_path / "f.tsv"
    f.write_text("label\tsentence\n")
    hf = hash_path(f)
    assert hf == hash_path(f)
    f.write_text("label\tsentence\n1\tgood\n")
    assert hash_path(f) != hf


def _done(manifest: Manifest, output, key="k1", status="done"):
    manifest.record("prune", {"status": status, "key": key, "output_hash": hash_path(output)})


@pytest.fixture
def stage_output(tmp_path):
    out = tmp_path / "prune"
    out.mkdir()
    (out / "model.safetensors").write_text("weights")
    return out


def test_is_fresh_only_for_a_finished_record_with_the_same_key_and_intact_output(tmp_path, stage_output):
    m = Manifest(tmp_path / "manifest.json", {"name": "tiny"})
    assert not m.is_fresh("prune", "k1", stage_output)  # no record
    _done(m, stage_output, status="running")
    assert not m.is_fresh("prune", "k1", stage_output)
    _done(m, stage_output)
    assert m.is_fresh("prune", "k1", stage_output)
    assert not m.is_fresh("prune", "k2", stage_output)  # config or inputs changed
    assert not m.is_fresh("distill", "k1", stage_output)
    (stage_output / "model.safetensors").write_text("tampered")
    assert not m.is_fresh("prune", "k1", stage_output)
    shutil.rmtree(stage_output)
    assert not m.is_fresh("prune", "k1", stage_output)


def test_manifest_is_written_atomically_and_reloaded(tmp_path, stage_output):
    path = tmp_path / "manifest.json"
    m = Manifest(path, {"name": "tiny", "seed": 0})
    _done(m, stage_output)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    on_disk = json.loads(path.read_text())
    assert on_disk["recipe"] == {"name": "tiny", "seed": 0}
    assert on_disk["stages"]["prune"]["key"] == "k1"

    again = Manifest(path, {"name": "tiny", "seed": 1})  # a new run keeps the old stage records
    assert again.is_fresh("prune", "k1", stage_output)
    assert again.data["recipe"] == {"name": "tiny", "seed": 1}


def test_corrupt_manifest_starts_empty(tmp_path, stage_output):
    path = tmp_path / "manifest.json"
    path.write_text('{"stages": {"prune"')  # a truncated file
    m = Manifest(path, {"name": "tiny"})
    assert m.data["stages"] == {}
    assert not m.is_fresh("prune", "k1", stage_output)


def test_write_json_atomic(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1, "p": tmp_path})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"recipe": {}, "stages": {"teacher": {"status": "do', "not valid JSON"),  # truncated
        ("[]", "holds a JSON list, not an object"),
        ('{"stages": null}', '"stages" is null, not an object'),
        ('{"stages": {"teacher": 3}}', "the records of ['teacher'] are not objects"),
    ],
)
def test_a_broken_manifest_is_set_aside_and_the_backup_read(tmp_path, content, problem):
    out = tmp_path / "teacher"
    out.mkdir()
    (out / "w.bin").write_text("weights")
    m = Manifest(tmp_path / "manifest.json", {"name": "r"})
    m.record("teacher", {"status": "done", "key": "k1", "output_hash": hash_path(out)})
    m.record("distill/s", {"status": "done", "key": "k2", "output_hash": "gone"})  # a second save: a backup exists
    (tmp_path / "manifest.json").write_text(content)
    again = Manifest(tmp_path / "manifest.json", {"name": "r"})
    assert problem in again.problem and "read the previous save (manifest.json.bak)" in again.problem
    assert again.is_fresh("teacher", "k1", out)  # what still matches its recorded hash is kept
    assert list(tmp_path.glob("manifest.json.corrupt-*"))  # the broken file is kept for the user to look at


def test_a_broken_manifest_without_backup_says_every_step_runs_again(tmp_path):
    (tmp_path / "manifest.json").write_text("{oops")
    m = Manifest(tmp_path / "manifest.json", {"name": "r"})
    assert "not valid JSON" in m.problem and "every step runs again" in m.problem and m.data["stages"] == {}


def test_the_run_lock_names_its_holder_and_is_released(tmp_path):
    import os
    import subprocess
    import sys

    from compress.manifest import RunLockedError, run_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from compress.manifest import run_lock\n"
         "with run_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(30)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"is in use by process {holder.pid} "):
            with run_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path):  # a killed holder leaves no lock behind
        assert f"process {os.getpid()}" in (tmp_path / ".lock").read_text()

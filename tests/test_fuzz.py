"""Bad input of every kind, generated in tmp_path: each case is accepted because it is valid, or refused with one
line naming the file, key or value (exit status 2). Never a traceback, never a hang."""

from __future__ import annotations

import copy
import json
import random
import shutil

import pytest
import yaml

from compress.cli import main
from tests.conftest import write_tiny_data, write_tiny_recipe
from tests.lm_fixtures import write_lm_recipe, write_text_data


def _check(capsys, *argv) -> tuple[int, str]:
    try:
        main(["check", *map(str, argv)])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    err = capsys.readouterr().err.strip()
    return code, err


def _assert_clean(code: int, err: str, expect: str | None = None) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("edge-compress: error: ") and len(err) < 600, err
    if expect is not None:
        assert code == 2 and expect in err, err


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_base_dir):
    work = tmp_path_factory.mktemp("fuzz")
    data = write_tiny_data(work / "data")
    recipe = write_tiny_recipe(work / "recipe.yaml", data, tiny_base_dir)
    return work, data, yaml.safe_load(recipe.read_text())


def _write(work, name: str, tree) -> str:
    path = work / name
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


RECIPE_CASES = [
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"distill": {"layers": [0, 9]}}, "distill.layers = [0, 9]: the teacher has layers 0..3"),
    ({"distill": {"heads": 5}}, "distill.heads = 5: the teacher has 2 heads"),
    ({"distill": {"hidden_size": 30, "heads": 4}}, "distill.hidden_size = 30: not a multiple of its 4"),
    ({"distill": {"hidden_size": 64}}, "distill.hidden_size = 64: the teacher's hidden size is 32"),
    ({"prune": {"method": "n:m", "sparsity": 0.7}}, "prune.sparsity applies only to method"),
    ({"prune": {"method": "n:m", "nm": [2, 5]}}, "prune.0.nm = [2, 5]: groups of 5 must divide"),
    ({"prune": {"schedule": "cubic", "rounds": 3}}, "unknown key 'prune.rounds'"),
    ({"prune": {"rounds": 3}}, "unknown key 'prune.rounds'"),
    ({"benchmark": {"lengths": ["real", 512]}}, "benchmark.lengths = ['real', 512]: [512] exceed"),
    ({"seed": -1}, "seed = -1"),
    ({"seed": 2**40}, "seed = 1099511627776"),
    ({"name": "x" * 5000}, "name = 'xxxxxxx"),
    ({"task": "summarize"}, "task = 'summarize'"),
    ({"data": {"labels": ["0", "0", "1"]}}, "'0' is listed twice"),
    ({"data": {"labels": ["0", "0.0"]}}, "two entries name one class"),
    ({"data": {"max_length": 512}}, "data.max_length = 512: the teacher has 128 positions"),
    ({"export": {"atol": "tight"}}, "export.atol = 'tight'"),
    ({"distill": {"hidden_weight": 1.0, "hidden_layer_map": [[1, 9]]}}, "distill.hidden_layer_map = [[1, 9]]: student"),
    ({"distill": {"attention_weight": 1.0, "attention_layer_map": [[0, 4]]}}, "distill.attention_layer_map = [[0, 4]]"),
    ({"teacher": {"epochs": True}}, "teacher.epochs = True: expected a number, got the boolean true"),
    ({"benchmark": {"memory": "yes"}}, "benchmark.memory = 'yes': expected true or false"),
    ({"distill": {"batch_size": 8.5}}, "distill.batch_size = 8.5: expected an integer"),
    ({"data": {"text_column": 3}}, "data.text_column = 3: expected a string, got a number"),
]


@pytest.mark.parametrize(("change", "expect"), RECIPE_CASES)
def test_recipe_mistakes(base, capsys, change, expect):
    work, _, tree = base
    tree = copy.deepcopy(tree)
    for section, value in change.items():
        if isinstance(value, dict) and isinstance(tree.get(section), dict):
            tree[section] = {**tree[section], **value}
        else:
            tree[section] = value
    _assert_clean(*_check(capsys, _write(work, "r.yaml", tree)), expect)


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b"name: x\ndata: [", "not valid YAML at line"),
        (b"", "missing required key"),
        (b"- a\n- b\n", "expected a mapping of sections"),
        ("name: caf\u00e9\n".encode("latin-1"), "not UTF-8 text"),
        ("name: x\n".encode("utf-16"), "not UTF-8 text"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "not UTF-8 text"),
        (
            b"a: &a [1,1,1,1,1,1,1,1,1,1]\n"
            + b"".join(
                b"%c: &%c [*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c]\n" % ((98 + i, 98 + i) + (97 + i,) * 10)
                for i in range(8)
            ),
            "refused",
        ),  # noqa: E501
    ],
)
def test_recipe_files_that_are_not_recipes(tmp_path, capsys, content, expect):
    f = tmp_path / "r.yaml"
    f.write_bytes(content)
    _assert_clean(*_check(capsys, f), expect)


def test_a_bom_is_read_as_utf8(base, capsys):
    work, _, tree = base
    f = work / "bom.yaml"
    f.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(tree).encode())
    code, err = _check(capsys, f)
    assert code == 0, err


def _data_variant(work, name: str, train: bytes | None = None, dev: bytes | None = None, suffix=".tsv"):
    d = work / name
    shutil.rmtree(d, ignore_errors=True)
    write_tiny_data(d)
    if suffix != ".tsv":
        for s in ("train", "dev", "test"):
            (d / f"{s}.tsv").rename(d / f"{s}{suffix}")
    if train is not None:
        (d / f"train{suffix}").write_bytes(train)
    if dev is not None:
        (d / f"dev{suffix}").write_bytes(dev)
    return d


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


GOOD = [{"sentence": "a good film", "label": 1}, {"sentence": "a bad film", "label": 0}] * 20
DATA_CASES = [
    ("latin1", "label\tsentence\n1\tcaf\u00e9 cr\u00e8me\n".encode("latin-1"), None, ".tsv", "not UTF-8 text (byte"),
    ("utf16", "label\tsentence\n1\tgood\n".encode("utf-16"), None, ".tsv", "UTF-16 text"),
    ("binary", b"\x00\x01\x02\x03", None, ".tsv", "binary file"),
    ("bom", b"\xef\xbb\xbflabel\tsentence\n" + b"1\tgood film\n0\tbad film\n" * 10, None, ".tsv", None),
    ("long", b"label\tsentence\n" + b"1\t" + b"good " * 40_000 + b"\n0\tbad film\n" * 10, None, ".tsv", None),
    ("zero_point_zero", b"label\tsentence\n" + b"0\tbad film\n0.0\tdull film\n1\tgood film\n" * 10, None, ".tsv", None),
    ("short_row", b"label\tsentence\n1\n", None, ".tsv", "line 2 has too few columns"),
    ("empty_texts", b"label\tsentence\n" + b"1\t \n0\t\n" * 10, None, ".tsv", "every text in column 'sentence'"),
    ("null_label", _jsonl([*GOOD, {"sentence": "x", "label": None}]), None, ".jsonl", "label null is not a class"),
    ("list_label", _jsonl([*GOOD, {"sentence": "x", "label": [1]}]), None, ".jsonl", "label [1] is not a class"),
    ("nan_label", b'{"sentence": "x", "label": NaN}\n' + _jsonl(GOOD), None, ".jsonl", "label nan is not a class"),
    ("frac_label", _jsonl([*GOOD, {"sentence": "x", "label": 1.5}]), None, ".jsonl", "label 1.5 is not a class"),
    ("bool_label", _jsonl([*GOOD, {"sentence": "x", "label": True}]), None, ".jsonl", "label true is not a class"),
    ("null_text", _jsonl([*GOOD, {"sentence": None, "label": 1}]), None, ".jsonl", "'sentence' is null"),
    ("not_object", _jsonl(GOOD) + b"[1, 2]\n", None, ".jsonl", "is not a JSON object"),
    ("dev_blank", None, b"label\tsentence\n1\t   \n0\t\t\n", ".tsv", "data.dev"),
]


@pytest.mark.parametrize(("name", "train", "dev", "suffix", "expect"), DATA_CASES)
def test_data_files(base, capsys, name, train, dev, suffix, expect):
    work, _, tree = base
    d = _data_variant(work, name, train, dev, suffix)
    tree = copy.deepcopy(tree)
    tree["data"] = {**tree["data"], **{k: str(d / f"{k}{suffix}") for k in ("train", "dev", "test")}}
    code, err = _check(capsys, _write(work, f"{name}.yaml", tree))
    _assert_clean(code, err, expect)
    if expect is None:
        assert code == 0, err


def test_teacher_directories_that_cannot_serve(base, capsys, tiny_base_dir):
    work, _, tree = base
    cases = {
        "no_weights": lambda d: [p.unlink() for p in d.glob("*.safetensors")],
        "bad_config": lambda d: (d / "config.json").write_text("{truncated"),
        "mismatch": lambda d: (d / "config.json").write_text(
            json.dumps({**json.loads((d / "config.json").read_text()), "hidden_size": 48, "intermediate_size": 96})
        ),
    }
    expected = {"no_weights": "no weights", "bad_config": "config.json is not a valid config", "mismatch": "do not fit"}
    for name, damage in cases.items():
        d = work / f"teacher_{name}"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(tiny_base_dir, d)
        damage(d)
        t = copy.deepcopy(tree)
        t["teacher"] = {**t["teacher"], "base": str(d)}
        _assert_clean(*_check(capsys, _write(work, f"{name}.yaml", t)), expected[name])


def test_output_paths_that_cannot_hold_a_run(base, capsys, tmp_path):
    work, _, tree = base
    recipe = _write(work, "out.yaml", tree)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out in (a_file, a_file / "under"):
        with pytest.raises(SystemExit) as e:
            main(["run", str(recipe), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and "is a file, not a directory" in err and len(err.splitlines()) == 1


def _mutations(tree, rng: random.Random, n: int):
    """`n` recipes, each the valid one with one leaf replaced by a value of another kind."""
    leaves = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, [*path, k])
        elif isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
            for i, v in enumerate(node):
                walk(v, [*path, i])
        else:
            leaves.append(path)

    walk(tree, [])
    junk = [None, -1, 0, 10**12, -0.5, 1e308, "", "x" * 3000, [], {}, [1, "a"], {"k": 1}, True, "real", "../../etc"]
    for _ in range(n):
        t = copy.deepcopy(tree)
        path = rng.choice(leaves)
        node = t
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = rng.choice(junk)
        yield path, t


def test_random_mutations_are_accepted_or_refused_in_one_line(base, capsys):
    work, _, tree = base
    rng = random.Random(20261201)
    for k, (path, t) in enumerate(_mutations(tree, rng, 60)):
        code, err = _check(capsys, _write(work, f"m{k}.yaml", t))
        assert code in (0, 2), (path, err)
        _assert_clean(code, err)


def test_lm_recipes_and_corpora(tmp_path, capsys):
    data = write_text_data(tmp_path / "data")
    good = yaml.safe_load(write_lm_recipe(tmp_path / "lm.yaml", data).read_text())
    assert _check(capsys, tmp_path / "lm.yaml")[0] == 0
    for name, content, expect in (
        ("binary", b"\x00\x00\x00", "binary file"),
        ("latin1", "caf\u00e9".encode("latin-1"), "not UTF-8 text"),
        ("empty", b"\n\n", "no text"),
    ):
        (tmp_path / f"{name}.txt").write_bytes(content)
        t = copy.deepcopy(good)
        t["data"]["train"] = str(tmp_path / f"{name}.txt")
        _assert_clean(*_check(capsys, _write(tmp_path, f"{name}.yaml", t)), expect)
    rng = random.Random(7)
    for k, (_, t) in enumerate(_mutations(good, rng, 40)):
        code, err = _check(capsys, _write(tmp_path, f"lm{k}.yaml", t))
        _assert_clean(code, err)

"""The recipe: located one-line errors, overrides, and paths relative to the recipe file."""

from __future__ import annotations

import pydantic
import pytest
import yaml

from compress.recipe import RecipeError, load_recipe, parse_overrides
from compress.tasks.classification.config import PruneConfig, Recipe


def _error(path, overrides=None) -> str:
    with pytest.raises(RecipeError) as e:
        load_recipe(path, overrides)
    msg = str(e.value)
    assert "\n" not in msg, "the user sees one line"
    return msg


def test_tiny_recipe_loads_with_its_values(write_recipe, tiny_data_dir, tiny_base_dir):
    r = load_recipe(write_recipe(prune={"sparsity": 0.3}))
    assert r.name == "tiny"
    assert r.prune[0].sparsity == 0.3 and r.prune[0].epochs == 1  # a section override updates, not replaces
    assert r.distill[0].layers == [0, 2]
    assert r.data.train == tiny_data_dir / "train.tsv"
    assert r.teacher.base == str(tiny_base_dir)


def test_unknown_key_names_it_and_lists_the_valid_keys(write_recipe):
    msg = _error(write_recipe(prune={"sparsty": 0.5}))
    assert "unknown key 'prune.sparsty'" in msg
    valid = msg.split("valid keys here:")[1]
    assert [k.strip() for k in valid.split(",")] == list(PruneConfig.model_fields)


def test_unknown_top_level_section_lists_the_sections(write_recipe):
    msg = _error(write_recipe(quantise={"method": "dynamic"}))
    assert "unknown key 'quantise'" in msg
    for section in Recipe.model_fields:
        assert section in msg.split("valid keys here:")[1]


def test_out_of_range_sparsity_names_key_and_value(write_recipe):
    msg = _error(write_recipe(prune={"sparsity": 1.5}))
    assert "prune.sparsity = 1.5" in msg
    assert "less than 1" in msg


def test_wrong_type_names_key_and_value(write_recipe):
    msg = _error(write_recipe(teacher={"epochs": "abc"}))
    assert "teacher.epochs = 'abc'" in msg
    assert "number" in msg


def test_duplicate_distill_layers_are_an_error(write_recipe):
    assert "distill.layers" in _error(write_recipe(distill={"layers": [0, 0]}))


def test_missing_required_key(write_recipe):
    path = write_recipe()
    tree = yaml.safe_load(path.read_text())
    del tree["name"]
    path.write_text(yaml.safe_dump(tree))
    assert "missing required key 'name'" in _error(path)


def test_missing_data_file_names_data_train(write_recipe, tmp_path):
    missing = tmp_path / "nope.tsv"
    msg = _error(write_recipe(data={"train": str(missing)}))
    assert msg.startswith("data.train = ") and str(missing) in msg and "file not found" in msg


def test_unsupported_data_format(write_recipe, tmp_path):
    (tmp_path / "train.txt").write_text("label\tsentence\n1\tgood\n")
    msg = _error(write_recipe(data={"train": str(tmp_path / "train.txt")}))
    assert "data.train" in msg and "'.txt'" in msg


def test_teacher_base_that_is_not_a_model_dir(write_recipe, tmp_path):
    assert "teacher.base" in _error(write_recipe(teacher={"base": str(tmp_path)}))


def test_missing_recipe_file(tmp_path):
    assert "recipe file not found" in _error(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("- a\n- b\n")
    assert "expected a mapping" in _error(path)


def test_recipe_is_frozen(write_recipe):
    r = load_recipe(write_recipe())
    with pytest.raises(pydantic.ValidationError):
        r.prune[0].sparsity = 0.9


def test_parse_overrides_parses_values_as_yaml():
    got = parse_overrides(["prune.sparsity=0.7", "distill.layers=[0, 1]", "benchmark.memory=false", "name=a=b"])
    assert got == {"prune.sparsity": 0.7, "distill.layers": [0, 1], "benchmark.memory": False, "name": "a=b"}
    assert isinstance(got["prune.sparsity"], float)


@pytest.mark.parametrize("item", ["prune.sparsity", "=0.5", "prune.sparsity=[0,"])
def test_parse_overrides_rejects_malformed_items(item):
    with pytest.raises(RecipeError) as e:
        parse_overrides([item])
    assert repr(item) in str(e.value)


def test_overrides_are_applied_before_validation(write_recipe):
    path = write_recipe()
    r = load_recipe(path, parse_overrides(["prune.sparsity=0.3", "distill.layers=[2, 0]", "seed=7"]))
    assert r.prune[0].sparsity == 0.3
    assert r.distill[0].layers == [0, 2]  # validated: sorted
    assert r.seed == 7
    # An override creating a section the file lacks.
    assert load_recipe(path, {"quantize.per_channel": True}).quantize[0].per_channel is True


def test_bad_override_is_reported_like_a_bad_file(write_recipe):
    msg = _error(write_recipe(), parse_overrides(["prune.sparsity=1.5"]))
    assert "prune.sparsity = 1.5" in msg
    assert "unknown key 'prune.sparsty'" in _error(write_recipe(), {"prune.sparsty": 0.5})


def test_override_into_a_value_is_an_error(write_recipe):
    assert "'name' is a value, not a section" in _error(write_recipe(), {"name.first": "x"})


def test_relative_paths_resolve_against_the_recipe_file(tmp_path, tiny_data_dir, tiny_base_dir, monkeypatch):
    recipe_dir = tmp_path / "configs"
    recipe_dir.mkdir()
    tree = {
        "name": "rel",
        "data": {"train": "../data/train.tsv", "dev": "../data/dev.tsv"},
        "teacher": {"base": f"../{tiny_base_dir.name}"},
    }
    # A link beside the data dir: `../<name>` exists relative to the recipe file, not to the working dir.
    (tmp_path / tiny_base_dir.name).symlink_to(tiny_base_dir, target_is_directory=True)
    path = recipe_dir / "r.yaml"
    path.write_text(yaml.safe_dump(tree))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = load_recipe(path)
    assert r.data.train == (tiny_data_dir / "train.tsv").resolve()
    assert r.data.dev == (tiny_data_dir / "dev.tsv").resolve()
    assert r.data.test is None
    assert r.teacher.base == str(tiny_base_dir.resolve())


def _with_raw_section(path, section: str, text: str):
    """The recipe at `path` with `section` written as raw YAML (as a user types it), not through a YAML dumper."""
    tree = yaml.safe_load(path.read_text())
    tree.pop(section, None)
    path.write_text(yaml.safe_dump(tree, sort_keys=False) + f"{section}:\n{text}")
    return path


@pytest.mark.parametrize(
    ("section", "text", "message"),
    [
        ("prune", "  sparsity: 0.3\n  sparsity: 0.6\n", "key 'sparsity' appears twice in one mapping"),
        ("prune", "  sparsity: 0.3\n  scope: yes\n", "prune.scope = 'yes'"),  # YAML 1.1's `yes`: a word here
        ("benchmark", "  memory: on\n", "benchmark.memory = 'on': expected true or false"),
    ],
)
def test_repeated_keys_and_yaml_1_1_booleans_are_refused(write_recipe, section, text, message):
    assert message in _error(_with_raw_section(write_recipe(), section, text))

"""Task data: the three file formats, label ids in a stated order, located errors."""

from __future__ import annotations

import json

import pytest

from compress.errors import RecipeError
from compress.tasks.classification.config import DataConfig
from compress.tasks.classification.data import load_task_data


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_tsv_splits_match_the_corpus(tiny_data_dir, tiny_corpus):
    d = tiny_data_dir
    data = load_task_data(DataConfig(train=d / "train.tsv", dev=d / "dev.tsv", test=d / "test.tsv", holdout_fraction=0))
    assert data.label_names == ["0", "1"] and data.holdout is None
    for name in ("train", "dev", "test"):
        split = getattr(data, name)
        assert split.texts == [t for t, _ in tiny_corpus[name]]
        assert split.labels == [int(y) for _, y in tiny_corpus[name]]


def test_holdout_is_carved_from_train_only_and_is_stable(tiny_data_dir, tiny_corpus):
    d = tiny_data_dir
    cfg = DataConfig(train=d / "train.tsv", dev=d / "dev.tsv", holdout_fraction=0.25)
    data = load_task_data(cfg)
    train_rows = {t for t, _ in tiny_corpus["train"]}
    assert len(data.holdout.texts) == 16 and len(data.train.texts) == 48
    assert set(data.holdout.texts) | set(data.train.texts) == train_rows
    assert not set(data.holdout.texts) & set(data.train.texts)
    assert data.dev.texts == [t for t, _ in tiny_corpus["dev"]]
    assert load_task_data(cfg).holdout == data.holdout  # the same examples on every run


def test_tsv_keeps_quotes_as_text(tmp_path):
    # GLUE's TSVs are unquoted: a lone quote is part of the sentence, not the start of a quoted field.
    (tmp_path / "t.tsv").write_text('label\tsentence\n1\tshe said "great\n0\t" bad\n')
    data = load_task_data(DataConfig(train=tmp_path / "t.tsv", dev=tmp_path / "t.tsv"))
    assert data.train.texts == ['she said "great', '" bad']


def test_csv_with_three_string_labels_sorted_alphabetically(tmp_path):
    (tmp_path / "train.csv").write_text('text,y\n"good, really",pos\nmeh,neu\nawful,neg\nfine,pos\n')
    (tmp_path / "dev.csv").write_text("text,y\nbad,neg\nok,neu\n")
    cfg = DataConfig(train=tmp_path / "train.csv", dev=tmp_path / "dev.csv", text_column="text", label_column="y")
    data = load_task_data(cfg)
    assert data.label_names == ["neg", "neu", "pos"]
    assert data.train.texts[0] == "good, really"  # quoted comma stays in the text
    assert data.train.labels == [2, 1, 0, 2]
    assert data.dev.labels == [0, 1]
    assert data.test is None


def test_explicit_label_order_is_kept(tmp_path):
    (tmp_path / "train.csv").write_text("sentence,label\na,pos\nb,neg\nc,neu\n")
    cfg = DataConfig(train=tmp_path / "train.csv", dev=tmp_path / "train.csv", labels=["pos", "neg", "neu"])
    data = load_task_data(cfg)
    assert data.label_names == ["pos", "neg", "neu"]
    assert data.train.labels == [0, 1, 2]


def test_jsonl_numeric_labels_sort_numerically(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"sentence": "a", "label": 10}, {"sentence": "b", "label": 2}])
    data = load_task_data(DataConfig(train=train, dev=train))
    assert data.label_names == ["2", "10"]  # not the string order ["10", "2"]
    assert data.train.labels == [1, 0]


def test_jsonl_skips_blank_lines_and_names_a_bad_line(tmp_path):
    good = tmp_path / "train.jsonl"
    good.write_text('{"sentence": "a", "label": "x"}\n\n{"sentence": "b", "label": "y"}\n')
    assert load_task_data(DataConfig(train=good, dev=good)).train.texts == ["a", "b"]
    bad = tmp_path / "dev.jsonl"
    bad.write_text('{"sentence": "a", "label": "x"}\nnot json\n')
    with pytest.raises(RecipeError, match=r"data\.dev = .*line 2 is not JSON"):
        load_task_data(DataConfig(train=good, dev=bad))


def test_jsonl_line_that_is_not_an_object_is_a_recipe_error(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps([{"sentence": "good", "label": 1}, {"sentence": "bad", "label": 0}]) + "\n")
    with pytest.raises(RecipeError, match=r"data\.train = .*line 1 is not a JSON object"):
        load_task_data(DataConfig(train=path, dev=path))


def test_jsonl_numeric_labels_match_across_int_and_float(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"sentence": "a", "label": 0}, {"sentence": "b", "label": 1}])
    dev = _jsonl(tmp_path / "dev.jsonl", [{"sentence": "c", "label": 0.0}])
    assert load_task_data(DataConfig(train=train, dev=dev)).dev.labels == [0]


def test_missing_text_column_is_named_with_the_columns_present(tiny_data_dir):
    d = tiny_data_dir
    with pytest.raises(RecipeError) as e:
        load_task_data(DataConfig(train=d / "train.tsv", dev=d / "dev.tsv", text_column="text"))
    msg = str(e.value)
    assert "data.text_column = 'text'" in msg
    assert "columns: label, sentence" in msg


def test_missing_label_column_in_jsonl(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"sentence": "a", "target": 1}])
    with pytest.raises(RecipeError, match=r"data\.label_column = 'label'"):
        load_task_data(DataConfig(train=train, dev=train))


def test_dev_label_unknown_to_train_is_named(tiny_data_dir, tmp_path):
    (tmp_path / "dev.tsv").write_text("label\tsentence\n0\tbad\n2\tso so\n")
    with pytest.raises(RecipeError) as e:
        load_task_data(DataConfig(train=tiny_data_dir / "train.tsv", dev=tmp_path / "dev.tsv"))
    msg = str(e.value)
    assert msg.startswith("data.dev:")
    assert "['2']" in msg and "['0', '1']" in msg


def test_single_label_train_is_an_error(tmp_path):
    (tmp_path / "t.tsv").write_text("label\tsentence\n1\tgood\n1\tgreat\n")
    with pytest.raises(RecipeError, match="fewer than 2 distinct labels"):
        load_task_data(DataConfig(train=tmp_path / "t.tsv", dev=tmp_path / "t.tsv"))


def test_short_row_and_empty_file_are_errors(tmp_path):
    (tmp_path / "short.tsv").write_text("label\tsentence\n1\tgood\n0\n")
    with pytest.raises(RecipeError, match="line 3 has too few columns"):
        load_task_data(DataConfig(train=tmp_path / "short.tsv", dev=tmp_path / "short.tsv"))
    (tmp_path / "empty.tsv").write_text("label\tsentence\n")
    with pytest.raises(RecipeError, match=r"data\.train = .*no rows"):
        load_task_data(DataConfig(train=tmp_path / "empty.tsv", dev=tmp_path / "short.tsv"))


def test_example_limits_slice_the_splits(tiny_data_dir, tiny_corpus):
    d = tiny_data_dir
    cfg = DataConfig(
        train=d / "train.tsv",
        dev=d / "dev.tsv",
        test=d / "test.tsv",
        max_train_examples=10,
        max_eval_examples=4,
    )
    data = load_task_data(cfg)
    assert data.train.texts == [t for t, _ in tiny_corpus["train"][:10]]
    assert len(data.dev.labels) == len(data.test.labels) == 4

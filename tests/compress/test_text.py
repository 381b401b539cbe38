"""Causal-LM data: documents from .txt/.jsonl(.gz), one-line errors naming the file, splits, blocks, prompts."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from compress.errors import RecipeError
from compress.tasks.causal_lm.config import TextDataConfig
from compress.tasks.causal_lm.data import (
    eval_blocks,
    load_text_data,
    pack_blocks,
    prompts_from,
    read_documents,
    token_stream,
    train_blocks,
)
from tests.lm_fixtures import make_documents, tiny_tokenizer


def _cfg(tmp_path, **kw) -> TextDataConfig:
    return TextDataConfig(train=tmp_path / "t.txt", dev=tmp_path / "t.txt", **kw)


def test_txt_documents_by_blank_line_or_by_line(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("first para\nstill first\n\n\nsecond\n   \nthird\n")
    assert read_documents(f, "train", _cfg(tmp_path)) == ["first para\nstill first", "second", "third"]
    assert read_documents(f, "train", _cfg(tmp_path, documents="line")) == [
        "first para", "still first", "second", "third",
    ]  # fmt: skip


def test_jsonl_and_gzip(tmp_path):
    rows = [{"text": "one\ntwo"}, {"text": "  "}, {"text": "three", "id": 3}]
    raw = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "a.jsonl").write_text(raw)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(raw.encode()))
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress(b"x y\n\nz\n"))
    cfg = _cfg(tmp_path)
    assert read_documents(tmp_path / "a.jsonl", "dev", cfg) == ["one\ntwo", "three"]
    assert read_documents(tmp_path / "a.jsonl.gz", "dev", cfg) == ["one\ntwo", "three"]
    assert read_documents(tmp_path / "b.txt.gz", "dev", cfg) == ["x y", "z"]
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "hi"}) + "\n")
    assert read_documents(tmp_path / "c.jsonl", "dev", _cfg(tmp_path, text_field="body")) == ["hi"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bin.txt", b"abc\x00\x01def", "binary file (NUL byte at offset 3)"),
        ("latin.txt", "caf\u00e9 cr\u00e8me".encode("latin-1"), "not UTF-8 text (byte 3, line 1)"),
        ("utf16.txt", "hello".encode("utf-16"), "binary file"),
        ("empty.txt", b"", "no text"),
        ("blank.txt", b"  \n\n\t\n", "no text"),
        ("bad.jsonl", b'{"text": "ok"}\n{not json\n', "line 2 is not JSON"),
        ("list.jsonl", b"[1, 2]\n", "line 1 is not a JSON object"),
        ("null.jsonl", b'{"text": null}\n', "line 1: 'text' is null, expected a string"),
        ("field.jsonl", b'{"body": "x"}\n', "data.text_field = 'text': line 1"),
        ("broken.txt.gz", b"\x1f\x8b\x08\x00garbage", "not a readable gzip file"),
    ],
)
def test_bad_files_get_one_line_naming_file_and_place(tmp_path, name, content, message):
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(RecipeError) as e:
        read_documents(f, "train", _cfg(tmp_path))
    text = str(e.value)
    assert message in text and "\n" not in text and name in text


def test_a_bom_is_not_text(tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes("\ufeffhello world\n".encode())
    assert read_documents(f, "train", _cfg(tmp_path)) == ["hello world"]


def test_holdout_is_whole_documents_and_fixed(tmp_path):
    docs = make_documents()
    for split in ("train", "dev"):
        (tmp_path / f"{split}.txt").write_text("\n".join(docs[split]) + "\n")
    cfg = TextDataConfig(train=tmp_path / "train.txt", dev=tmp_path / "dev.txt", documents="line", holdout_fraction=0.1)
    a, b = load_text_data(cfg), load_text_data(cfg)
    assert a.holdout == b.holdout and len(a.holdout) == 24 and a.test is None
    assert sorted(a.train + a.holdout) == sorted(docs["train"])
    assert not set(a.train) & set(a.holdout)


def test_blocks_streams_and_prompts(tmp_path):
    tok = tiny_tokenizer()
    docs = make_documents()["train"][:20]
    stream = token_stream(tok, docs)
    eos = tok.eos_token_id
    assert (stream == eos).sum() == len(docs) and stream[-1] == eos  # every document ends with end-of-text
    assert len(token_stream(tok, docs, max_tokens=50)) == 50
    blocks = pack_blocks(stream, 16)
    assert all(len(b) == 16 for b in blocks) and len(blocks) == len(stream) // 16
    tail = pack_blocks(stream, 16, keep_tail=True)
    assert sum(map(len, tail)) == len(stream) - (len(stream) % 16 if len(stream) % 16 == 1 else 0)
    cfg = _cfg(tmp_path, block_size=16, max_eval_tokens=40)
    assert [len(b) for b in eval_blocks(tok, docs, cfg, "dev")] == [16, 16, 8]
    prompts = prompts_from(tok, docs, 5, 12)
    assert len(prompts) == 5 and all(len(p) == 12 for p in prompts)
    assert len({tuple(p) for p in prompts}) == 5
    with pytest.raises(RecipeError, match="fewer than one block"):
        train_blocks(tok, ["hi"], _cfg(tmp_path, block_size=64))
    ds = train_blocks(tok, docs, _cfg(tmp_path, block_size=16))
    assert ds.blocks.shape[1] == 16 and np.array_equal(ds[0]["input_ids"], ds[0]["labels"])

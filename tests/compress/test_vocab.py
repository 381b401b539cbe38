"""Vocabulary trimming: same tokens for kept words, same logits, a smaller embedding, a loadable artifact."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from compress.vocab import TrimVocabConfig, kept_token_ids, trim_embeddings, trim_tokenizer, trim_vocab, unk_rate
from tests.conftest import corpus_words, make_corpus

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Pieces the train texts never use: whole words, a word that needs two pieces, and continuation pieces.
EXTRA = ["zebra", "quantum", "un", "##believable", "##ly", "##s", "##ness", "believ", "##able", "kind"]
CHARS = list("abcdefghijklmnopqrstuvwxyz") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import BertTokenizerFast

    words = corpus_words(make_corpus())
    vocab = SPECIALS + [w for w in EXTRA + words + CHARS if w not in SPECIALS]
    vocab = list(dict.fromkeys(vocab))  # the corpus words may repeat a character
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab_file=str(path), do_lower_case=True)


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    return BertForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def train_texts():
    return [t for t, _ in make_corpus()["train"]]


def _in_vocab_sentences(texts: list[str], n: int = 40, seed: int = 0) -> list[str]:
    """New sentences made only of words the train texts use (so all their pieces are kept)."""
    words = sorted({w for t in texts for w in t.split()})
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(n)]


def test_kept_ids_are_the_specials_the_train_pieces_and_nothing_unused(tokenizer, train_texts):
    kept = kept_token_ids(tokenizer, train_texts, keep_chars=False)
    used = {i for seq in tokenizer(train_texts, add_special_tokens=False)["input_ids"] for i in seq}
    assert set(kept) == used | set(tokenizer.all_special_ids)
    assert not {tokenizer.convert_tokens_to_ids(t) for t in EXTRA} & set(kept)
    with_chars = kept_token_ids(tokenizer, train_texts, keep_chars=True)
    assert set(with_chars) == set(kept) | {tokenizer.convert_tokens_to_ids(c) for c in CHARS}
    top = kept_token_ids(tokenizer, train_texts, keep_chars=False, keep_top=12)
    assert set(top) == set(kept) | set(range(12))


def test_min_frequency_drops_rare_train_pieces(tokenizer, train_texts):
    counts = np.bincount(
        [i for seq in tokenizer(train_texts, add_special_tokens=False)["input_ids"] for i in seq],
        minlength=len(tokenizer),
    )
    kept = set(kept_token_ids(tokenizer, train_texts, min_frequency=5, keep_chars=False))
    assert kept == set(np.flatnonzero(counts >= 5).tolist()) | set(tokenizer.all_special_ids)


def test_kept_words_tokenize_identically_and_dropped_ones_fall_back(tokenizer, train_texts):
    kept = kept_token_ids(tokenizer, train_texts, keep_chars=False)
    new = trim_tokenizer(tokenizer, kept)
    assert len(new) == len(kept)
    old_of = np.asarray(kept)
    for text in _in_vocab_sentences(train_texts) + [t for t, _ in make_corpus()["dev"]]:
        enc_new, enc_old = new(text), tokenizer(text)
        assert list(old_of[enc_new["input_ids"]]) == enc_old["input_ids"], text
        assert new.convert_ids_to_tokens(enc_new["input_ids"]) == tokenizer.convert_ids_to_tokens(enc_old["input_ids"])
        assert enc_new["attention_mask"] == enc_old["attention_mask"]
    # "unbelievably" is un ##believ... in the old vocabulary; none of those pieces is kept: one [UNK].
    assert new.tokenize("the movie was unbelievable zebra") == ["the", "movie", "was", "[UNK]", "[UNK]"]
    assert new("good")["input_ids"][0] == new.cls_token_id and new.pad_token_id == 0
    # With single characters kept, an unseen word is spelled out instead.
    spelled = trim_tokenizer(tokenizer, kept_token_ids(tokenizer, train_texts, keep_chars=True))
    assert spelled.tokenize("zebra") == ["z", "##e", "##b", "##r", "##a"]


def test_trimmed_model_gives_the_same_logits_on_in_vocabulary_sentences(model, tokenizer, train_texts):
    res = trim_vocab(model, tokenizer, train_texts, TrimVocabConfig(enabled=True, keep_chars=False))
    sentences = _in_vocab_sentences(train_texts)
    with torch.no_grad():
        before = model(**tokenizer(sentences, padding=True, return_tensors="pt")).logits
        after = res.model(**res.tokenizer(sentences, padding=True, return_tensors="pt")).logits
    assert torch.allclose(before, after, atol=1e-5)
    assert res.model.config.vocab_size == len(res.kept_ids) < model.config.vocab_size
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)  # input untouched
    m = res.metrics
    assert m["embedding_params_before"] == len(tokenizer) * 32
    assert m["embedding_params_after"] == len(res.kept_ids) * 32
    assert m["params_before"] - m["params_after"] == m["embedding_params_before"] - m["embedding_params_after"]


def test_metrics_report_unk_rates_on_the_eval_splits(model, tokenizer, train_texts):
    evals = {"dev": ["the movie was good", "zebra quantum"], "test": ["it was dull"]}
    res = trim_vocab(model, tokenizer, train_texts, TrimVocabConfig(enabled=True, keep_chars=False), eval_texts=evals)
    m = res.metrics
    assert m["dev_unk_rate_before"] == 0.0
    assert m["dev_unk_rate_after"] == pytest.approx(2 / 6)  # 6 tokens, zebra and quantum unknown
    assert m["dev_tokens_not_kept"] == pytest.approx(2 / 6)
    assert m["dev_sentences_changed"] == pytest.approx(0.5)
    assert m["test_unk_rate_after"] == 0.0 and m["test_sentences_changed"] == 0.0
    assert unk_rate(res.tokenizer, ["zebra"]) == 1.0


def test_trimmed_artifact_reloads_and_exports_to_onnx(model, tokenizer, train_texts, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from compress.tasks.classification.config import ExportConfig
    from compress.tasks.classification.export import export_onnx

    res = trim_vocab(model, tokenizer, train_texts, TrimVocabConfig(enabled=True))
    res.model.save_pretrained(tmp_path / "model")
    res.tokenizer.save_pretrained(tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "model", local_files_only=True)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model", local_files_only=True).eval()
    sentences = _in_vocab_sentences(train_texts, n=16) + ["zebra and quantum"]
    assert tok(sentences)["input_ids"] == res.tokenizer(sentences)["input_ids"]
    assert len(tok) == len(res.kept_ids)
    with torch.no_grad():
        a = reloaded(**tok(sentences, padding=True, return_tensors="pt")).logits
        b = res.model(**res.tokenizer(sentences, padding=True, return_tensors="pt")).logits
    assert torch.allclose(a, b, atol=1e-6)
    metrics = export_onnx(
        tmp_path / "model", tmp_path / "onnx", ExportConfig(check_examples=17), sentences, max_length=32
    )
    assert metrics["max_abs_logit_diff"] < 1e-4 and metrics["label_agreement"] == 1.0
    assert AutoTokenizer.from_pretrained(tmp_path / "onnx")(sentences)["input_ids"] == tok(sentences)["input_ids"]


def test_non_wordpiece_tokenizers_are_refused(model):
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    bpe = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(BPE(vocab={"a": 0, "b": 1, "<unk>": 2}, merges=[], unk_token="<unk>")),
        unk_token="<unk>",
    )
    with pytest.raises(ValueError, match="WordPiece"):
        trim_vocab(model, bpe, ["ab"], TrimVocabConfig(enabled=True))


def test_embedding_rows_follow_the_kept_ids(model):
    kept = [0, 3, 7, 8]
    small = trim_embeddings(model, kept)
    assert torch.equal(small.get_input_embeddings().weight, model.get_input_embeddings().weight[kept])
    assert small.config.pad_token_id == 0 and small.get_input_embeddings().padding_idx == 0


def test_ascii_chars_and_a_size_floor_filled_most_frequent_first(tmp_path):
    from transformers import BertTokenizerFast

    vocab = SPECIALS + [
        "[unused0]",
        "[unused1]",
        "ж",
        "##ж",
        "a",
        "b",
        "##a",
        "the",
        "good",
        "film",
        "zebra",
        "quantum",
    ]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(path), do_lower_case=True)
    ids = {t: tok.convert_tokens_to_ids(t) for t in vocab}
    used = {ids["the"], ids["good"]} | {ids[t] for t in SPECIALS}
    assert set(kept_token_ids(tok, ["the good"], keep_chars=False)) == used
    assert set(kept_token_ids(tok, ["the good"], keep_chars="ascii")) == used | {ids["a"], ids["b"], ids["##a"]}
    assert set(kept_token_ids(tok, ["the good"], keep_chars=True)) == used | {
        ids[t] for t in ("a", "b", "##a", "ж", "##ж")
    }
    # The floor skips the placeholders and adds the lowest remaining ids: here the characters, then "film".
    filled = kept_token_ids(tok, ["the good"], keep_chars=False, size=len(used) + 6)
    assert set(filled) == used | {ids[t] for t in ("ж", "##ж", "a", "b", "##a", "film")}
    # A floor below what the text needs drops nothing.
    assert set(kept_token_ids(tok, ["the good film"], keep_chars=False, size=2)) == used | {ids["film"]}
    with pytest.raises(ValidationError):
        TrimVocabConfig(keep_chars="latin")

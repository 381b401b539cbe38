"""Augmentation for distillation: embedding neighbours, seeded word-level edits, teacher-labelled copies."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from compress.tasks.classification.augment import AugmentConfig, augment_texts, word_neighbours

VOCAB = {"[PAD]": 0, "[MASK]": 1, "good": 2, "great": 3, "bad": 4, "film": 5, "##s": 6, "a": 7, "movie": 8}


def _embeddings() -> np.ndarray:
    e = np.zeros((len(VOCAB), 3), dtype=np.float32)
    e[VOCAB["good"]] = [1, 0.1, 0]
    e[VOCAB["great"]] = [1, 0.2, 0]
    e[VOCAB["bad"]] = [0.7, -0.7, 0]
    e[VOCAB["##s"]] = [1, 0.1, 0.0001]  # closest of all to "good", but a continuation piece
    e[VOCAB["film"]] = [0, 0, 1]
    e[VOCAB["movie"]] = [0, 0.1, 1]
    e[VOCAB["a"]] = [1, 0.1, 0]  # one letter: never a candidate
    return e


def test_neighbours_are_whole_words_nearest_first_without_the_word_itself():
    nb = word_neighbours(VOCAB, _embeddings(), {"good", "film", "unknown"}, k=2, chunk=1)
    assert nb["good"] == ["great", "bad"]
    assert nb["film"][0] == "movie"
    assert "unknown" not in nb
    assert all(w not in ("##s", "a", "[MASK]") for ws in nb.values() for w in ws)


def test_copies_are_seeded_and_never_equal_their_source():
    texts = ["a good film", "a bad movie that drags", "great"]
    cfg = AugmentConfig(copies=3, mask=0.3, replace=0.3, ngram=0.3)
    nb = word_neighbours(VOCAB, _embeddings(), {"good", "bad", "film", "movie", "great"}, k=2)
    a = augment_texts(texts, cfg, mask_token="[MASK]", neighbours=nb, seed=1)
    assert a == augment_texts(texts, cfg, mask_token="[MASK]", neighbours=nb, seed=1)
    assert a != augment_texts(texts, cfg, mask_token="[MASK]", neighbours=nb, seed=2)
    copies, source = a
    assert len(copies) == len(source) > 0 and all(c != texts[i] for c, i in zip(copies, source, strict=True))
    assert set(source) <= {0, 1, 2}


def test_each_edit_does_what_its_probability_says():
    texts = ["a good film today", "bad movie"]
    nb = {"good": ["great"], "film": ["movie"], "movie": ["film"], "bad": ["good"]}
    masked, _ = augment_texts(
        texts, AugmentConfig(copies=1, mask=1.0, ngram=0), mask_token="[M]", neighbours=nb, seed=0
    )
    assert masked == ["[M] [M] [M] [M]", "[M] [M]"]
    swapped, _ = augment_texts(
        texts, AugmentConfig(copies=1, mask=0, replace=1.0, ngram=0), mask_token="[M]", neighbours=nb, seed=0
    )
    assert swapped == ["a great movie today", "good film"]  # words without neighbours stay
    cut, source = augment_texts(
        ["w1 w2 w3 w4 w5 w6 w7 w8"] * 50,
        AugmentConfig(copies=1, mask=0, replace=0, ngram=1.0, max_ngram=3),
        mask_token=None,
        neighbours={},
        seed=0,
    )
    assert cut and all(1 <= len(c.split()) <= 3 and c in "w1 w2 w3 w4 w5 w6 w7 w8" for c in cut)
    off, _ = augment_texts(texts, AugmentConfig(copies=2, mask=1.0), mask_token=None, neighbours={}, seed=0)
    assert all("[M]" not in c for c in off)  # no mask token: masking is off


def test_config_bounds():
    with pytest.raises(ValidationError):
        AugmentConfig(mask=1.5)
    with pytest.raises(ValidationError):
        AugmentConfig(colour="red")
    assert AugmentConfig().copies == 0

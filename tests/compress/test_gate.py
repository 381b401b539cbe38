"""Quality gates as pure functions: the budget against the parent and the collapse checks."""

from __future__ import annotations

import numpy as np
import pytest

from compress.gate import classifier_gate, lm_gate, unigram_log_probs, unigram_perplexity


def test_a_good_classifier_passes():
    labels = np.array([0, 1] * 50)
    preds = labels.copy()
    preds[:5] = 1 - preds[:5]
    g = classifier_gate(preds, labels, parent="teacher", parent_accuracy=0.97, max_drop=0.05)
    assert g.passed and g.value == pytest.approx(0.95) and g.reasons == ()
    assert g.collapse["majority_rate"] == 0.5 and g.collapse["top_label_share"] == pytest.approx(0.51)


def test_one_label_for_everything_is_a_collapse_whatever_the_budget():
    labels = np.array([0, 1, 2] * 40)
    g = classifier_gate(np.full(120, 2), labels)  # no parent, no budget: still gated
    assert not g.passed and "collapsed: label 2 for 100.0%" in g.reason


def test_accuracy_at_the_majority_rate_is_a_collapse():
    labels = np.array([0] * 80 + [1] * 20)
    preds = np.array([0] * 60 + [1] * 20 + [0] * 20)  # 80% right, but always-0 would score 80% too
    g = classifier_gate(preds, labels)
    assert not g.passed and "not above the majority-label rate 80.00%" in g.reason


def test_a_drop_beyond_the_budget_names_both_figures():
    labels = np.array([0, 1] * 50)
    preds = labels.copy()
    preds[:20] = 1 - preds[:20]
    g = classifier_gate(preds, labels, parent="student", parent_accuracy=0.95, max_drop=0.1)
    assert not g.passed and "15.00 points below student's 95.00% (max_drop 0.1)" in g.reason
    assert classifier_gate(preds, labels, parent="student", parent_accuracy=0.95, max_drop=None).passed


def test_unigram_and_lm_gate():
    train = np.array([0, 0, 0, 1, 1, 2])
    logp = unigram_log_probs(train, vocab_size=4)  # add-one: counts 4, 3, 2, 1 of 10
    assert np.exp(logp).sum() == pytest.approx(1.0)
    blocks = [np.array([9, 0, 1]), np.array([2, 0])]  # the first token of each block is not predicted
    expected = np.exp(-np.mean(np.log([0.4, 0.3, 0.4])))
    assert unigram_perplexity(logp, blocks) == pytest.approx(expected)
    assert lm_gate(20.0, unigram=50.0, parent="teacher", parent_perplexity=18.0, max_ratio=1.25).passed
    over = lm_gate(30.0, unigram=50.0, parent="teacher", parent_perplexity=18.0, max_ratio=1.25)
    assert not over.passed and "1.667x teacher's 18.00 (max_perplexity_ratio 1.25)" in over.reason
    collapsed = lm_gate(60.0, unigram=50.0)
    assert not collapsed.passed and "above the unigram model's 50.00" in collapsed.reason
    assert not lm_gate(float("nan"), unigram=50.0).passed


def test_lm_gate_without_the_collapse_test_still_gates_the_ratio():
    """Random weights (a published shape measured for speed and memory) skip the unigram test only."""
    assert lm_gate(60.0, unigram=None).passed
    assert lm_gate(60.0, unigram=None).to_dict()["collapse"] == {"skipped": "random weights"}
    assert not lm_gate(60.0, unigram=None, parent="teacher", parent_perplexity=40.0, max_ratio=1.25).passed
    assert not lm_gate(float("inf"), unigram=None).passed

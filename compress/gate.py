"""Quality gates: a model that lost too much against its parent, or collapsed, is not built upon or shipped.

Every stage that makes a model measures it on the held-out slice of train it already uses for selection (never
dev or test) and asks `classifier_gate` or `lm_gate`:

- the budget: accuracy no more than `max_drop` below the parent's on the same examples, or perplexity no more
  than `max_perplexity_ratio` times the parent's;
- collapse, whatever the budget: a classifier that gives (almost) every held-out example the same label, or is
  no more accurate than always answering the most frequent label; a language model whose perplexity is above
  that of the unigram model of the train split (it predicts worse than token frequencies alone); a generator of
  outputs (`generation_gate`) that writes one and the same output, or nothing, for (almost) every input.

The functions are pure: figures in, a verdict out. The pipeline (`compress.pipeline`) records a failed verdict as
`failed-gate` and builds nothing from that model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

COLLAPSE_SHARE = 0.99  # a classifier giving one label to this share of held-out examples has collapsed


@dataclass(frozen=True)
class GateResult:
    """The verdict and every figure it rests on (stored in the manifest under `metrics.gate`)."""

    passed: bool
    metric: str  # "accuracy" or "perplexity"
    value: float
    parent: str | None = None
    parent_value: float | None = None
    bound: str | None = None  # the budget, as written in the recipe
    collapse: dict = field(default_factory=dict)  # the collapse test's figures
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return d

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def classifier_gate(
    predictions: Sequence[int],
    labels: Sequence[int],
    *,
    parent: str | None = None,
    parent_accuracy: float | None = None,
    max_drop: float | None = None,
) -> GateResult:
    """Gate a classifier on held-out predictions.

    Args:
        predictions: the model's label ids on the held-out examples.
        labels: the true label ids.
        parent: the variant the model was made from (for the messages).
        parent_accuracy: the parent's accuracy on the same examples; None skips the budget.
        max_drop: the largest accuracy drop allowed (a share, 0.02 = 2 points); None skips the budget.

    Returns:
        The verdict: fails on a drop beyond `max_drop`, on one label for at least 99% of examples, or on an
        accuracy not above the majority-label rate.
    """
    preds, gold = np.asarray(predictions), np.asarray(labels)
    if len(gold) == 0:
        raise ValueError("classifier_gate: no held-out examples")
    accuracy = float((preds == gold).mean())
    _, gold_counts = np.unique(gold, return_counts=True)
    values, pred_counts = np.unique(preds, return_counts=True)
    majority = float(gold_counts.max() / len(gold))
    top_share = float(pred_counts.max() / len(preds))
    top_label = int(values[pred_counts.argmax()])
    reasons = []
    if top_share >= COLLAPSE_SHARE:
        reasons.append(f"collapsed: label {top_label} for {top_share:.1%} of the {len(gold)} held-out examples")
    elif accuracy <= majority + 1e-12:
        reasons.append(
            f"collapsed: held-out accuracy {accuracy:.2%} is not above the majority-label rate {majority:.2%}"
        )
    if max_drop is not None and parent_accuracy is not None and parent_accuracy - accuracy > max_drop + 1e-12:
        reasons.append(
            f"held-out accuracy {accuracy:.2%} is {(parent_accuracy - accuracy) * 100:.2f} points below "
            f"{parent}'s {parent_accuracy:.2%} (max_drop {max_drop})"
        )
    return GateResult(
        passed=not reasons,
        metric="accuracy",
        value=accuracy,
        parent=parent,
        parent_value=parent_accuracy,
        bound=f"max_drop {max_drop}" if max_drop is not None else None,
        collapse={"majority_rate": majority, "top_label": top_label, "top_label_share": top_share},
        reasons=tuple(reasons),
    )


def generation_gate(
    outputs: Sequence[str],
    score: float,
    *,
    metric: str,
    parent: str | None = None,
    parent_score: float | None = None,
    max_drop: float | None = None,
) -> GateResult:
    """Gate a model that writes outputs (a translation, a summary) on its held-out outputs and their score.

    Args:
        outputs: the model's output texts on the held-out inputs.
        score: their score against the references (higher is better, in points: chrF, ROUGE-L).
        metric: the score's name, for the messages.
        parent, parent_score: the variant the model was made from and its score on the same inputs.
        max_drop: the largest drop allowed, in the score's points; None skips the budget.

    Returns:
        The verdict: fails on a drop beyond `max_drop`, or when one output text (empty included) stands for at
        least 99% of the inputs.
    """
    if not outputs:
        raise ValueError("generation_gate: no held-out outputs")
    values, counts = np.unique(np.asarray(outputs, dtype=object).astype(str), return_counts=True)
    top_share = float(counts.max() / len(outputs))
    top = str(values[counts.argmax()])
    reasons = []
    if top_share >= COLLAPSE_SHARE and len(outputs) > 1:
        reasons.append(f"collapsed: the output {top[:40]!r} for {top_share:.1%} of the {len(outputs)} held-out inputs")
    if max_drop is not None and parent_score is not None and parent_score - score > max_drop + 1e-12:
        reasons.append(
            f"held-out {metric} {score:.2f} is {parent_score - score:.2f} points below {parent}'s {parent_score:.2f} "
            f"(max_{metric}_drop {max_drop})"
        )
    return GateResult(
        passed=not reasons,
        metric=metric,
        value=score,
        parent=parent,
        parent_value=parent_score,
        bound=f"max_{metric}_drop {max_drop}" if max_drop is not None else None,
        collapse={"top_output": top[:80], "top_output_share": top_share},
        reasons=tuple(reasons),
    )


def unigram_log_probs(train_tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Log probabilities of the add-one-smoothed unigram model of `train_tokens`, shape (vocab_size,)."""
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    return np.log(counts / counts.sum())


def unigram_perplexity(log_probs: np.ndarray, eval_blocks: Sequence[np.ndarray]) -> float:
    """Perplexity of a unigram model (`unigram_log_probs`) on the predicted tokens of `eval_blocks` (every
    position but each block's first, as a causal LM is scored)."""
    targets = np.concatenate([np.asarray(b[1:], dtype=np.int64) for b in eval_blocks])
    return float(math.exp(-np.asarray(log_probs)[targets].mean()))


def lm_gate(
    perplexity: float,
    *,
    unigram: float | None,
    parent: str | None = None,
    parent_perplexity: float | None = None,
    max_ratio: float | None = None,
) -> GateResult:
    """Gate a language model on its held-out perplexity: against the unigram model (collapse; `unigram=None`
    skips that test, for random weights measured for their shape) and its parent."""
    reasons = []
    if not math.isfinite(perplexity):
        reasons.append(f"collapsed: held-out perplexity is {perplexity}")
    elif unigram is not None and perplexity > unigram:
        reasons.append(
            f"collapsed: held-out perplexity {perplexity:.2f} is above the unigram model's {unigram:.2f} (token "
            "frequencies alone predict better)"
        )
    over = parent_perplexity is not None and perplexity > parent_perplexity * (max_ratio or math.inf) * (1 + 1e-12)
    if max_ratio is not None and over:
        reasons.append(
            f"held-out perplexity {perplexity:.2f} is {perplexity / parent_perplexity:.3f}x {parent}'s "
            f"{parent_perplexity:.2f} (max_perplexity_ratio {max_ratio})"
        )
    return GateResult(
        passed=not reasons,
        metric="perplexity",
        value=perplexity,
        parent=parent,
        parent_value=parent_perplexity,
        bound=f"max_perplexity_ratio {max_ratio}" if max_ratio is not None else None,
        collapse={"unigram_perplexity": unigram} if unigram is not None else {"skipped": "random weights"},
        reasons=tuple(reasons),
    )

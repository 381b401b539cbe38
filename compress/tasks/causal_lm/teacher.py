"""Teacher stage of a causal LM: take the user's model, train one further on the corpus, or pretrain one here.

No pretrained decoder can be downloaded at run time, so the default teacher is pretrained by this stage on the
recipe's corpus: a byte-level BPE tokenizer trained on the train split, then a small decoder of the family and
shape `teacher.architecture` describes (Llama-style by default: grouped-query attention, RoPE, gated FFN,
RMSNorm), trained on next-token prediction, the weights of the lowest held-out loss kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from compress.distributed import describe_runtime
from compress.errors import RecipeError
from compress.tasks.causal_lm.config import LMTeacherConfig, TextDataConfig
from compress.tasks.causal_lm.data import (
    TextData,
    end_of_text_id,
    eval_blocks,
    selection_blocks,
    train_blocks,
    train_tokenizer,
)
from compress.tasks.causal_lm.model import (
    block_training_args,
    check_causal_lm_dir,
    context_window,
    describe_decoder,
    evaluate_blocks,
    final_train_loss,
    load_causal_lm,
    memory_args,
    new_decoder,
    train_lm,
)
from compress.training import StopWhenConverged


@dataclass
class LMTeacherResult:
    model: object
    tokenizer: object
    metrics: dict = field(default_factory=dict)
    dev_predictions: list[np.ndarray] = field(default_factory=list)  # greedy next tokens on the dev blocks


def check_block_size(config, data_config: TextDataConfig, what: str) -> None:
    window = context_window(config)
    if data_config.block_size > window:
        raise RecipeError(
            f"data.block_size = {data_config.block_size}: longer than {what}'s context window of {window} tokens"
        )


def train_teacher_lm(
    config: LMTeacherConfig,
    data: TextData,
    data_config: TextDataConfig,
    *,
    seed: int,
    work_dir: Path,
    log: Callable[[str], None] = print,
) -> LMTeacherResult:
    """Load, continue training or pretrain the teacher; measure its perplexity on the held-out slice, dev and test.

    Returns:
        The teacher, its tokenizer, metrics (perplexities, parameters, shape, training tokens and wall time) and
        its greedy next-token predictions on the dev blocks (the reference of every student's agreement).
    """
    torch.manual_seed(seed)
    trained = config.path is None
    if config.path is not None:
        model, tokenizer = load_causal_lm(config.path, "teacher.path")
    elif config.base is not None:
        model, tokenizer = load_causal_lm(config.base, "teacher.base")
    else:
        arch = config.architecture
        t0 = time.perf_counter()
        tokenizer = train_tokenizer(data.train, config.tokenizer, arch.max_positions)
        log(f"    tokenizer: byte-level BPE, {len(tokenizer):,} pieces, trained in {time.perf_counter() - t0:.1f}s")
        model = new_decoder(arch, len(tokenizer), end_of_text_id(tokenizer), seed)
    check_block_size(model.config, data_config, "the teacher")
    end_of_text_id(tokenizer)
    history: list[dict] = []
    train_tokens = 0
    if trained:
        history, train_tokens = _train(model, tokenizer, config, data, data_config, seed, work_dir, log)
    model.eval()
    metrics, dev_eval = measure_lm(model, tokenizer, data, data_config)
    best = next((h for h in reversed(history) if "best_eval_loss" in h), {})
    curve = next((h for h in reversed(history) if "heldout_curve" in h), {})
    metrics.update(
        {
            "trained": trained,
            "source": str(config.path or config.base or "pretrained here"),
            "train_tokens": train_tokens,
            "train_steps": max((h.get("step", 0) for h in history), default=0),
            "train_loss_final": final_train_loss(history),
            "best_step": best.get("best_step"),
            "holdout_perplexity_best": best.get("best_eval_perplexity"),
            "epochs_trained": round(max((h.get("epoch", 0.0) for h in history), default=0.0), 3),
            "heldout_curve": curve.get("heldout_curve"),
            "converged": curve.get("converged"),
            "training_memory": memory_args(config) if trained else None,
            "runtime": describe_runtime(config.precision) if trained else None,
            **describe_decoder(model, data_config.block_size),
        }
    )
    return LMTeacherResult(model, tokenizer, metrics, dev_eval.predictions)


def _train(model, tokenizer, config: LMTeacherConfig, data: TextData, data_config: TextDataConfig, seed: int,
           work_dir: Path, log: Callable[[str], None]) -> tuple[list[dict], int]:  # fmt: skip
    """Train the teacher on the train blocks (held-out selection, the convergence rule when asked); returns the
    log history and the tokens per epoch."""
    train_set = train_blocks(tokenizer, data.train, data_config)
    hold = selection_blocks(tokenizer, data.holdout, data_config)
    train_tokens = train_set.tokens
    info = describe_decoder(model, data_config.block_size)
    log(
        f"    teacher {info['params']:,} params ({info['layers']} layers, hidden {info['hidden_size']}), "
        f"{len(train_set):,} blocks of {data_config.block_size} tokens ({train_tokens:,} tokens)"
    )
    args = block_training_args(work_dir, config, seed, evaluate=hold is not None)
    if config.min_epoch_gain is not None and hold is None:
        raise RecipeError("teacher.min_epoch_gain: the train split is too small to hold out a slice to measure")
    converge = StopWhenConverged(config.min_epoch_gain) if config.min_epoch_gain is not None else None
    model.train()
    history = train_lm(model, train_set, args, eval_dataset=hold, callbacks=[converge] if converge else None)
    if converge is not None:
        history.append({"heldout_curve": converge.curve, "converged": converge.converged})
    return history, train_tokens


def measure_lm(model, tokenizer, data: TextData, data_config: TextDataConfig, reference=None):
    """Perplexity on held-out, dev and test (PyTorch), and the dev greedy agreement with `reference` predictions.

    Returns:
        The metrics and the dev evaluation (its predictions are what later stages compare against).
    """
    from compress.tasks.causal_lm.model import agreement

    out = {}
    dev_eval = None
    for key in ("holdout", "dev", "test"):
        docs = getattr(data, key)
        if not docs:
            out[f"{key}_perplexity_torch"] = None
            continue
        ev = evaluate_blocks(model, eval_blocks(tokenizer, docs, data_config, key), desc=f"{key} perplexity")
        out[f"{key}_perplexity_torch"] = ev.perplexity
        out[f"{key}_tokens"] = ev.tokens
        if key == "dev":
            dev_eval = ev
    if reference is not None and dev_eval is not None:
        out["dev_agreement_with_teacher_torch"] = agreement(dev_eval.predictions, reference)
    return out, dev_eval


__all__ = ["LMTeacherResult", "check_block_size", "check_causal_lm_dir", "measure_lm", "train_teacher_lm"]

"""The equal-training control of a student or a structured cut: what its training alone would have given.

A student starts from the teacher's layers and learns from its distributions; a cut starts from the student and
is distilled again. Either is better than its teacher's share of the work only if it beats a model of the same
shape, from random weights, trained on the corpus alone (next-token cross-entropy, no teacher) for as many
training blocks as the variant saw in its lineage (a cut: the student's distillation plus its own fine-tune), at
the variant's batch size and learning rate. Without it, an undertrained teacher makes any extra training look like
compression. Its held-out, dev and test perplexities (PyTorch, as the variant's own) go into the variant's
metrics under `control`; the model is not kept.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from compress.tasks.causal_lm.config import TextDataConfig
from compress.tasks.causal_lm.data import TextData, selection_blocks, train_blocks
from compress.tasks.causal_lm.model import final_train_loss, train_lm
from compress.training import training_args


def blocks_seen(epochs: float, max_steps: int | None, batch_size: int, n_blocks: int, accumulation: int = 1) -> int:
    """Training blocks a run of `epochs` over `n_blocks` reads, or of `max_steps` optimizer steps when given (the
    Trainer then runs exactly that many, repeating the data as needed: `max_steps` overrides `epochs`), each step
    of `accumulation` batches."""
    return max_steps * batch_size * accumulation if max_steps is not None else int(round(epochs * n_blocks))


def train_control(
    shape,
    tokenizer,
    data: TextData,
    data_config: TextDataConfig,
    *,
    blocks: int,
    batch_size: int,
    learning_rate: float,
    warmup_ratio: float,
    weight_decay: float,
    seed: int,
    work_dir: Path,
    memory: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train a randomly initialised model with `shape`'s config on the corpus for `blocks` blocks; measure it.
    `memory`: `training_args`' memory settings, the variant's own (`compress.tasks.causal_lm.model.memory_args`).

    Returns:
        Its held-out, dev and test perplexities (PyTorch), optimizer steps, blocks, tokens and wall time.
    """
    from transformers import AutoModelForCausalLM

    from compress.tasks.causal_lm.teacher import measure_lm

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(shape.config))  # the variant's shape, random weights
    model.generation_config = copy.deepcopy(shape.generation_config)
    train_set = train_blocks(tokenizer, data.train, data_config)
    hold = selection_blocks(tokenizer, data.holdout, data_config)
    memory = memory or {}
    per_step = batch_size * memory.get("gradient_accumulation_steps", 1)
    steps = max(1, math.ceil(blocks / per_step))
    log(f"    equal-training control: the same shape from random weights, {steps:,} steps on the corpus alone")
    args = training_args(
        work_dir,
        epochs=1.0,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        evaluate=hold is not None,
        max_steps=steps,  # the Trainer repeats the data when the steps outnumber one epoch
        group_by_length=False,
        prediction_loss_only=True,
        logging_steps=50,
        **memory,
    )
    t0 = time.perf_counter()
    model.train()
    history = train_lm(model, train_set, args, eval_dataset=hold)
    wall = time.perf_counter() - t0
    metrics, _ = measure_lm(model.eval(), tokenizer, data, data_config)
    return {
        **metrics,
        "init": "random weights, the variant's config",
        "loss": "next-token cross-entropy on the corpus; no teacher",
        "train_steps": steps,
        "train_blocks": steps * per_step,
        "train_tokens": steps * per_step * data_config.block_size,
        "train_wall_s": wall,
        "train_loss_final": final_train_loss(history),
    }


__all__ = ["blocks_seen", "train_control"]

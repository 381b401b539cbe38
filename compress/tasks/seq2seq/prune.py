"""Prune stage of an encoder-decoder: unstructured or n:m masks over the attention (self and cross) and FFN
projections of both stacks, chosen by magnitude or Wanda (|w| times its input's norm on training pairs), in one
shot or tightened on the cubic schedule, held through a fine-tune that distils the teacher (the distill stage's
loss: the references and the teacher's token distributions), then made permanent.

The pruners, masks and schedule are the other tasks' (`compress.masks.UnstructuredPruner`, torch.nn.utils.prune,
`compress.schedule.GradualPruningCallback`); the modules they touch are what `compress.architectures` says a
projection of each stack is. The embeddings (shared by encoder, decoder and head) stay dense. The zeros make the
compressed download smaller; ONNX Runtime's dense CPU kernels do not skip them, so they make nothing faster.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from compress.masks import UnstructuredPruner, pruning_record
from compress.schedule import GradualPruningCallback
from compress.structured import remove_masks_
from compress.tasks.seq2seq.config import PairDataConfig, Seq2SeqPruneConfig
from compress.tasks.seq2seq.data import PairData
from compress.tasks.seq2seq.training import pair_batches, train_seq2seq


def _forward(model, batch: dict):
    return model(**batch)


def prune_seq2seq(
    model, tokenizer, teacher, config: Seq2SeqPruneConfig, data: PairData, data_config: PairDataConfig, *,
    seed: int, work_dir: Path, measure=None,
) -> tuple[object, dict]:  # fmt: skip
    """Prune a copy of `model`, fine-tune it against `teacher` with the masks held, make the zeros permanent.

    Args:
        measure: `measure(model) -> dict` of held-out figures, taken right after a one-shot pruning (before the
            fine-tune recovers what it can).

    Returns:
        The pruned model (an ordinary transformers model with zeros) and its metrics: measured sparsity overall,
        per layer (`encoder.N`, `decoder.N`) and per matrix, the figures before the fine-tune, its steps.
    """
    s = config
    torch.manual_seed(seed)
    model = copy.deepcopy(model)
    batches = None
    if s.importance == "wanda":
        batches = pair_batches(data.train, tokenizer, data_config, s.batch_size, s.calibration_batches, seed)
    common = dict(scope=s.scope, importance=s.importance, batches=batches, forward=_forward)
    pruner = UnstructuredPruner(**({"nm": s.nm} if s.method == "n:m" else {"sparsity": s.sparsity}), **common)
    callbacks, before = None, {}
    if s.schedule == "oneshot":
        pruner.prune_to_(model, 1.0)
        if measure is not None:
            before = {f"{k}_before_finetune": v for k, v in measure(model).items()}
    else:
        callbacks = [GradualPruningCallback(pruner, start=s.start, end=s.end, every=s.every)]
    history = []
    if s.epochs > 0:
        history = train_seq2seq(
            model,
            tokenizer,
            data.train,
            s,
            data_config,
            out_dir=work_dir,
            seed=seed,
            teacher=teacher,
            alpha=s.alpha,
            temperature=s.temperature,
            callbacks=callbacks,
        )
    if callbacks:
        callbacks[0].finish(model)
    remove_masks_(model)
    model.eval()
    steps = [h["step"] for h in history if "step" in h]
    metrics = {
        **pruning_record(s, model),
        **before,
        "train_steps": steps[-1] if steps else 0,
        "note": "zeros shrink the compressed file; ONNX Runtime's dense CPU kernels do not run them faster",
    }
    if callbacks:
        metrics["schedule_history"] = [list(h) for h in callbacks[0].history]
    return model, metrics

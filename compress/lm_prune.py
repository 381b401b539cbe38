"""Prune stage of a causal LM: unstructured or n:m magnitude pruning of the decoder's projections.

The same pruners as the classifier's (`compress.prune.UnstructuredPruner`, torch.nn.utils.prune masks, the cubic
schedule of `compress.schedule`), over the modules `compress.architectures.projection_modules` selects: every
attention and FFN projection inside the layer stack, `nn.Linear` or GPT-2's `Conv1D`; the embedding and the LM
head stay dense. The masks are held through a distillation fine-tune against the teacher, then made permanent.
The zeros make the compressed download smaller; ONNX Runtime's dense CPU kernels do not skip them, so they
make no decoder faster.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from compress.config import PruneConfig
from compress.lm import LMLossSpec, describe_decoder, final_train_loss, train_lm
from compress.lm_config import TextDataConfig
from compress.lm_teacher import measure_lm
from compress.losses import next_token_loss
from compress.prune import UnstructuredPruner, measure_sparsity
from compress.schedule import GradualPruningCallback
from compress.structured import remove_masks_
from compress.text import TextData, train_blocks
from compress.training import training_args


@dataclass
class LMPruneResult:
    model: object
    metrics: dict = field(default_factory=dict)


def _lm_loss(model, batch: dict) -> torch.Tensor:
    ids = torch.as_tensor(batch["input_ids"])
    return next_token_loss(model(input_ids=ids, use_cache=False).logits, ids)


def prune_lm(
    model,
    tokenizer,
    teacher,
    config: PruneConfig,
    data: TextData,
    data_config: TextDataConfig,
    *,
    seed: int,
    work_dir: Path,
    teacher_predictions: list[np.ndarray] | None = None,
) -> LMPruneResult:
    """Prune a copy of `model`, fine-tune it against `teacher` with the masks held, make the zeros permanent.

    Returns:
        The pruned model (an ordinary transformers model with zeros) and metrics: measured sparsity overall,
        per layer and per matrix, perplexities before and after the fine-tune, dev agreement with the teacher.
    """
    s = config
    torch.manual_seed(seed)
    model = copy.deepcopy(model)
    train_set = train_blocks(tokenizer, data.train, data_config)
    batches = None
    if s.importance == "taylor":
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed)).tolist()
        batches = [
            {"input_ids": torch.as_tensor(np.stack([train_set[i]["input_ids"] for i in order[k : k + s.batch_size]]))}
            for k in range(0, min(len(order), s.batch_size * s.taylor_batches), s.batch_size)
        ]
    common = dict(scope=s.scope, importance=s.importance, batches=batches, loss_fn=_lm_loss)
    pruner = (
        UnstructuredPruner(nm=s.nm, **common)
        if s.method == "n:m"
        else UnstructuredPruner(sparsity=s.sparsity, **common)
    )
    callbacks, before = None, None
    if s.schedule == "oneshot":
        pruner.prune_to_(model, 1.0)
        before, _ = measure_lm(model, tokenizer, data, data_config, reference=teacher_predictions)
    else:
        callbacks = [GradualPruningCallback(pruner, start=s.start, end=s.end, every=s.every)]
    history: list[dict] = []
    if s.epochs > 0:
        args = training_args(
            work_dir,
            epochs=s.epochs,
            batch_size=s.batch_size,
            learning_rate=s.learning_rate,
            seed=seed,
            warmup_ratio=0.0,
            group_by_length=False,
            prediction_loss_only=True,
            logging_steps=50,
        )
        spec = LMLossSpec(temperature=s.temperature, alpha=s.alpha)
        model.train()
        history = train_lm(model, train_set, args, teacher=teacher, loss=spec, callbacks=callbacks)
    if callbacks and (not callbacks[0].history or callbacks[0].history[-1][1] < 1.0):
        pruner.prune_to_(model, 1.0)
    remove_masks_(model)
    model.eval()
    metrics, _ = measure_lm(model, tokenizer, data, data_config, reference=teacher_predictions)
    metrics.update(
        {
            "method": s.method,
            "scope": s.scope,
            "schedule": s.schedule,
            "importance": s.importance,
            "target_sparsity": s.target_sparsity,
            **measure_sparsity(model),
            **describe_decoder(model, data_config.block_size),
            "dev_perplexity_torch_before_finetune": (before or {}).get("dev_perplexity_torch"),
            "train_loss_final": final_train_loss(history),
            "note": "zeros shrink the compressed file; ONNX Runtime's dense CPU kernels do not run them faster",
        }
    )
    if callbacks:
        metrics["schedule_history"] = [list(h) for h in callbacks[0].history]
    return LMPruneResult(model, metrics)

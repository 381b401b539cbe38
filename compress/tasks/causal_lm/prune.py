"""Prune stage of a causal LM: unstructured or n:m magnitude pruning of the decoder's projections, or a
structured cut (whole key/value groups, FFN neurons, hidden channels; `compress.decoder_structured`).

Structured: the student is cut once by importance (calibration activations or magnitude), then distilled from
the teacher: Minitron's order (prune, then distil), with the same fine-tune as the unstructured path; or, on the
cubic schedule, cut in rounds with distillation between them (`cut_rounds`): the classifier's gradual schedule
tightens masks every few steps, but a decoder's cut changes its matrices' shapes, so here each round is a real
cut, importance re-measured on the partly trained model, and a fresh optimizer for the smaller model. The cut
model is an ordinary transformers model of a smaller config, and smaller matrices are what runs faster.

The same pruners as the classifier's (`compress.masks.UnstructuredPruner`, torch.nn.utils.prune masks, the cubic
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

from compress.losses import next_token_loss
from compress.masks import UnstructuredPruner, pruning_record
from compress.schedule import GradualPruningCallback
from compress.structured import remove_masks_
from compress.tasks.causal_lm.config import LMPruneConfig, TextDataConfig
from compress.tasks.causal_lm.control import blocks_seen
from compress.tasks.causal_lm.data import BlockDataset, TextData, train_blocks
from compress.tasks.causal_lm.model import LMLossSpec, describe_decoder, final_train_loss, memory_args, train_lm
from compress.tasks.causal_lm.teacher import measure_lm
from compress.training import training_args


@dataclass
class LMPruneResult:
    model: object
    metrics: dict = field(default_factory=dict)


def _lm_forward(model, batch: dict):
    return model(input_ids=torch.as_tensor(batch["input_ids"]), use_cache=False)


def _lm_loss(model, batch: dict) -> torch.Tensor:
    ids = torch.as_tensor(batch["input_ids"])
    return next_token_loss(model(input_ids=ids, use_cache=False).logits, ids)


def prune_lm(
    model,
    tokenizer,
    teacher,
    config: LMPruneConfig,
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
    if s.method == "structured":
        return _structured(
            model, tokenizer, teacher, s, data, data_config, train_set, seed, work_dir, teacher_predictions
        )
    batches = None
    if s.importance in ("taylor", "wanda"):
        n = s.taylor_batches if s.importance == "taylor" else s.calibration_batches
        batches = [{"input_ids": ids} for ids in _sample_batches(train_set, s.batch_size, n, seed)]
    common = dict(scope=s.scope, importance=s.importance, batches=batches, loss_fn=_lm_loss, forward=_lm_forward)
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
    history = _finetune(model, train_set, teacher, s, seed, work_dir, callbacks)
    if callbacks:
        callbacks[0].finish(model)
    remove_masks_(model)
    model.eval()
    metrics, _ = measure_lm(model, tokenizer, data, data_config, reference=teacher_predictions)
    metrics.update(
        {
            **pruning_record(s, model),
            **describe_decoder(model, data_config.block_size),
            "dev_perplexity_torch_before_finetune": (before or {}).get("dev_perplexity_torch"),
            "train_loss_final": final_train_loss(history),
            "note": "zeros shrink the compressed file; ONNX Runtime's dense CPU kernels do not run them faster",
        }
    )
    if callbacks:
        metrics["schedule_history"] = [list(h) for h in callbacks[0].history]
    return LMPruneResult(model, metrics)


def _sample_batches(train_set, batch_size: int, n_batches: int, seed: int) -> list[torch.Tensor]:
    """`n_batches` batches of token ids from the train blocks, in a seeded random order."""
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed)).tolist()
    return [
        torch.as_tensor(np.stack([train_set[i]["input_ids"] for i in order[k : k + batch_size]]))
        for k in range(0, min(len(order), batch_size * n_batches), batch_size)
    ]


def _finetune(
    model, train_set, teacher, s: LMPruneConfig, seed: int, work_dir: Path, callbacks=None, epochs: float | None = None
) -> list[dict]:
    """Distillation fine-tune against the teacher (its logits at `temperature`, weight `alpha`), `s.epochs` (or
    `epochs`) over `train_set`."""
    epochs = s.epochs if epochs is None else epochs
    if epochs <= 0 or len(train_set) == 0:
        return []
    args = training_args(
        work_dir,
        epochs=epochs,
        batch_size=s.batch_size,
        learning_rate=s.learning_rate,
        seed=seed,
        warmup_ratio=0.0,
        group_by_length=False,
        prediction_loss_only=True,
        logging_steps=50,
        **memory_args(s),
    )
    spec = LMLossSpec(temperature=s.temperature, alpha=s.alpha)
    model.train()
    return train_lm(model, train_set, args, teacher=teacher, loss=spec, callbacks=callbacks)


def cut_rounds(s: LMPruneConfig) -> list[tuple[float, float]]:
    """(fraction of the fine-tune at which to cut, fraction of the final removal done by then) per round.

    One shot: one round, at the start. Cubic (Zhu & Gupta 2017, as the classifier's masks follow it): `rounds`
    cuts spread evenly from `start` to `end`, round i of k having removed 1 - (1 - i/k)^3 of what the recipe
    removes: most early, while the model has the most training left to recover, the last few structures late.
    """
    if s.schedule == "oneshot":
        return [(0.0, 1.0)]
    k = s.rounds or 3
    return [(s.start + (s.end - s.start) * (i - 1) / (k - 1), 1 - (1 - i / k) ** 3) for i in range(1, k + 1)]


def _segments(n_blocks: int, epochs: float, seed: int, fractions: list[float]) -> list[np.ndarray]:
    """The fine-tune's blocks split at `fractions` of it: seeded passes over the train blocks laid end to end
    (`epochs` of them), so every segment sees new blocks, as one uninterrupted fine-tune would."""
    rng = np.random.default_rng(seed)
    passes = int(np.ceil(epochs)) or 1
    order = np.concatenate([rng.permutation(n_blocks) for _ in range(passes)])[: int(round(epochs * n_blocks))]
    cuts = [int(f * len(order) + 0.5) for f in fractions]
    return [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)])]  # noqa: B905


def _structured(model, tokenizer, teacher, s, data, data_config, train_set, seed, work_dir, teacher_predictions):
    """Cut the student by importance, once (then distil) or in rounds (distilling between them: the cubic
    schedule), measure it before and after."""
    from compress.decoder_structured import (
        activation_importance,
        apply_cut,
        describe_cut,
        kept_counts,
        magnitude_importance,
        plan_cut,
    )

    source = model.eval()
    final = kept_counts(source.config, heads=s.heads, ffn=s.ffn, hidden=s.hidden)
    first = kept_counts(source.config)
    rounds = cut_rounds(s)
    segments = _segments(len(train_set), s.epochs, seed, [at for at, _ in rounds]) if len(rounds) > 1 else None
    history, record, before, cut = [], [], None, None
    for i, (at, done) in enumerate(rounds):
        if segments is not None and len(segments[i]):
            model.train()
            history += _finetune(
                model, BlockDataset(train_set.blocks[segments[i]]), teacher, s, seed + i, work_dir, epochs=1.0
            )
        model.eval()
        last = i == len(rounds) - 1
        keep = final if last else tuple(a - int((a - b) * done + 1e-9) for a, b in zip(first, final))  # noqa: B905
        if s.importance == "activation":
            batches = _sample_batches(train_set, s.batch_size, s.calibration_batches, seed + i)
            importance = activation_importance(model, batches)
        else:
            importance = magnitude_importance(model)
        cut = plan_cut(model, importance, keep=keep)
        model = apply_cut(model, cut)
        record.append({"at_fraction": at, "kept": {"kv_groups": keep[0], "ffn": keep[1], "hidden": keep[2]}})
        if len(rounds) == 1:
            before, _ = measure_lm(model, tokenizer, data, data_config, reference=teacher_predictions)
    torch.manual_seed(seed)
    if segments is None:
        history = _finetune(model, train_set, teacher, s, seed, work_dir)
    elif len(segments[-1]):
        model.train()
        history += _finetune(
            model, BlockDataset(train_set.blocks[segments[-1]]), teacher, s, seed + len(rounds), work_dir, epochs=1.0
        )
    model.eval()
    metrics, _ = measure_lm(model, tokenizer, data, data_config, reference=teacher_predictions)
    metrics.update(
        {
            "method": s.method,
            "schedule": s.schedule,
            "importance": s.importance,
            "shares_removed": {"heads": s.heads, "ffn": s.ffn, "hidden": s.hidden},
            "cut": describe_cut(source, model),
            "cut_rounds": record,
            # indices into the source (one shot); a gradual cut's last round indexes its previous round's model
            "kept_kv_groups": [list(g) for g in cut.groups] if len(rounds) == 1 else None,
            **describe_decoder(model, data_config.block_size),
            "dev_perplexity_torch_before_finetune": (before or {}).get("dev_perplexity_torch"),
            "train_loss_final": final_train_loss(history),
            "training_memory": memory_args(s),
            "train_blocks_seen": (
                sum(len(seg) for seg in segments)
                if segments is not None
                else blocks_seen(s.epochs, None, 1, len(train_set))
            ),
        }
    )
    return LMPruneResult(model, metrics)

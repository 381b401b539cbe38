"""Glue around transformers' Trainer shared by the teacher, distill and prune stages.

One loop for every setting: a plain process on CPU or CUDA, or one process per device under
`torchrun --nproc_per_node N`, where the Trainer (through accelerate) wraps the model in DDP with gloo on CPU
and nccl on CUDA. Length-grouped batches survive DDP: the Trainer builds one `LengthGroupedSampler` over the
whole set and accelerate hands consecutive batches of it to the ranks in turn (transformers 4.57's Trainer no
longer uses `DistributedLengthGroupedSampler`). That sampler shuffles with the global torch RNG, which
accelerate does not synchronise across ranks for it (only for a plain RandomSampler), and which dropout
consumes differently on each rank (their batches differ in shape): from the second epoch on, the ranks would
shuffle differently and see some examples twice and others never. `_SeededLengthGrouping` gives the sampler a
generator of its own, seeded alike on every rank.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.utils import logging as hf_logging

from compress.batches import EncodedDataset, PadCollator, length_sorted_batches
from compress.distributed import device_settings
from compress.losses import attention_transfer_loss, distillation_loss, hidden_state_loss, value_relation_loss
from compress.modeling import value_projection

hf_logging.set_verbosity_error()
logging.getLogger("transformers").setLevel(logging.ERROR)


def training_args(
    out_dir: Path,
    *,
    epochs: float,
    batch_size: int,
    learning_rate: float,
    seed: int,
    warmup_ratio: float = 0.06,
    weight_decay: float = 0.01,
    evaluate: bool = False,
    eval_steps: int | None = None,
    max_steps: int | None = None,
    group_by_length: bool = True,
    prediction_loss_only: bool = False,
    logging_steps: int = 200,
    gradient_accumulation_steps: int = 1,
    gradient_checkpointing: bool = False,
    precision: str = "auto",
) -> TrainingArguments:
    """Trainer settings: length-grouped batches, no checkpoints, no external loggers.

    The device and precision follow the machine (see `compress.distributed.device_settings`): bf16/fp16 mixed
    precision on CUDA, fp32 on CPU, DDP when launched by torchrun.

    Args:
        evaluate: evaluate on the Trainer's eval set during training (`train(..., eval_dataset=...)`): every
            `eval_steps` optimizer steps, or at the end of every epoch when `eval_steps` is None.
        eval_steps: see `evaluate`.
        max_steps: stop after this many optimizer steps (overrides `epochs`).
        group_by_length: batches of similar length (sentences); off for fixed-length LM blocks.
        prediction_loss_only: evaluation keeps only the loss (a language model's logits are too large to gather).
        logging_steps: optimizer steps between loss lines in the log history.
        gradient_accumulation_steps: batches per optimizer step (the step's batch is batch_size times this).
        gradient_checkpointing: recompute each layer's activations in the backward pass (non-reentrant
            checkpointing; a model wrapper must forward `gradient_checkpointing_enable`).
        precision: "auto", "fp32" or "bf16" (`compress.distributed.device_settings`).
    """
    eval_strategy = "no" if not evaluate else ("steps" if eval_steps else "epoch")
    _forget_mixed_precision()
    return TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=max(64, batch_size),
        learning_rate=learning_rate,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        lr_scheduler_type="linear",
        group_by_length=group_by_length,  # batches of similar length: dynamic padding wastes little compute
        save_strategy="no",
        eval_strategy=eval_strategy,
        eval_steps=eval_steps if eval_strategy == "steps" else None,
        label_names=["labels"],  # also for a model wrapper whose forward does not name them
        logging_strategy="steps",
        logging_steps=logging_steps,
        max_steps=max_steps if max_steps is not None else -1,
        prediction_loss_only=prediction_loss_only,
        report_to="none",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
        remove_unused_columns=False,
        gradient_accumulation_steps=gradient_accumulation_steps,
        gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        **device_settings(precision),
    )


def _forget_mixed_precision() -> None:
    """A Trainer's mixed precision outlives it: transformers' TrainingArguments writes it into the environment
    (ACCELERATE_MIXED_PRECISION) and never clears it, and accelerate keeps it in a singleton (`AcceleratorState`),
    so a later Trainer asking for none (a bf16 student, then a float32 cut) would silently train, and leave its
    model's forward patched to run, in bf16. Forget both before each Trainer: this project always states the
    precision (`device_settings`); the process group (`PartialState`) stays."""
    from accelerate.state import AcceleratorState

    os.environ.pop("ACCELERATE_MIXED_PRECISION", None)
    if AcceleratorState._shared_state:
        AcceleratorState._reset_state()


@dataclass(frozen=True)
class LossSpec:
    """What the student is trained on; weights of zero switch a term off.

    loss = alpha * KD(T) + (1 - alpha) * CE + hidden_weight * hidden MSE + attention_weight * attention KL
           + value_relation_weight * value-relation KL

    Layer maps are (student, teacher) pairs: hidden-state indices for `hidden_layer_map` (0 = embedding
    output, k = output of layer k) and 0-based layer indices for `attention_layer_map`. The value relation
    compares the last layers, split into `relation_heads` heads (default: the teacher's head count).
    """

    temperature: float = 2.0
    alpha: float = 0.5
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    value_relation_weight: float = 0.0
    hidden_layer_map: tuple[tuple[int, int], ...] = ()
    attention_layer_map: tuple[tuple[int, int], ...] = ()
    relation_heads: int | None = None

    @property
    def needs_teacher(self) -> bool:
        """Whether the teacher must run per batch: its logits alone come cached with the data."""
        return self.hidden_weight > 0 or self.attention_weight > 0 or self.value_relation_weight > 0


class WithProjections(nn.Module):
    """The student plus the learned maps from its hidden width to the teacher's, applied inside forward.

    They are applied in forward, not in the loss, so that under DDP they are part of the wrapped module: their
    gradients are all-reduced like the student's and DDP's unused-parameter search sees them used.
    """

    def __init__(self, student: nn.Module, projections: nn.ModuleList, sources: Sequence[int]):
        super().__init__()
        self.student = student
        self.projections = projections
        self.sources = list(sources)  # student hidden-state index each projection reads

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.student.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.student.gradient_checkpointing_disable()

    def forward(self, **inputs):
        out = self.student(**inputs)
        if out.hidden_states is not None:
            out["projected_hidden_states"] = tuple(
                p(out.hidden_states[s]) for p, s in zip(self.projections, self.sources, strict=True)
            )
        return out


class KeepBest(TrainerCallback):
    """Remembers the weights with the best held-out accuracy (eval loss breaks ties) and puts them back; with
    `metric="eval_loss"`, the lowest held-out loss (a language model's log perplexity).

    Kept in memory rather than through `load_best_model_at_end`, which writes a full checkpoint at every
    evaluation; a student is small enough to copy to CPU, and every DDP rank holds the same copy because the
    Trainer's evaluation gathers predictions across ranks before computing the metric.
    """

    def __init__(self, metric: str = "eval_accuracy"):
        self.metric = metric
        self.best: tuple[float, float] | None = None
        self.step: int | None = None
        self.state: dict[str, torch.Tensor] | None = None
        self.last_eval_step: int | None = None

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        self.last_eval_step = state.global_step
        if self.metric == "eval_loss":
            key = (-metrics["eval_loss"], 0.0)
        else:
            key = (metrics[self.metric], -metrics.get("eval_loss", 0.0))
        if self.best is None or key >= self.best:  # on a tie, the later (longer-trained) weights
            self.best, self.step = key, state.global_step
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


class StopWhenConverged(TrainerCallback):
    """Evaluates the held-out set at the end of every epoch and stops training after an epoch that lowered its
    loss by less than `min_gain` as a relative perplexity gain (`1 - ppl_now / ppl_before`).

    `curve` keeps each epoch's held-out perplexity (the curve a model card shows); `converged` says whether the
    stop came from the rule (False when the epochs ran out first). transformers' EarlyStoppingCallback counts
    evaluations without improvement; this rule is "one more epoch is worth less than X%", which it cannot say.
    """

    def __init__(self, min_gain: float):
        self.min_gain = min_gain
        self.curve: list[dict] = []
        self.converged = False
        self._epoch_end = False

    def on_epoch_end(self, args, state, control, **kwargs):
        self._epoch_end = True
        control.should_evaluate = True
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self._epoch_end:
            return control
        self._epoch_end = False
        perplexity = float(np.exp(metrics["eval_loss"]))
        epoch = float(state.epoch or 0.0)
        whole = abs(epoch - round(epoch)) < 1e-6  # the last epoch may be cut short (fractional epochs, max_steps)
        gain = 1.0 - perplexity / self.curve[-1]["heldout_perplexity"] if self.curve else None
        self.curve.append(
            {
                "epoch": round(epoch, 3),
                "step": state.global_step,
                "heldout_perplexity": perplexity,
                "gain": gain,
                "whole_epoch": whole,
            }
        )
        if gain is not None and whole and gain < self.min_gain:  # a part of an epoch gains less: not the rule
            self.converged = True
            control.should_training_stop = True
        return control


class _SeededLengthGrouping(Trainer):
    """A Trainer whose length-grouped sampler shuffles with its own generator, seeded from `args.data_seed`.

    Measured with 2 gloo ranks and dropout 0.1 (tests/compress/test_distributed.py): without it, the second
    epoch dealt one example to both ranks and left another out.
    """

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler) and sampler.generator is None:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler.generator = torch.Generator().manual_seed(seed)
        return sampler


def _accuracy_metric(pred) -> dict:
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(pred.label_ids)).mean())}


class DistillTrainer(_SeededLengthGrouping):
    """Trainer whose loss is soft-target KD plus hard-label CE, plus optional hidden/attention/value terms.

    The teacher's logits come cached with each batch (`teacher_logits`). When a hidden-state, attention or
    value-relation weight is non-zero the teacher also runs on the batch (no grad): its internals for 67k
    examples would be far too large to cache.
    """

    def __init__(self, *args, loss: LossSpec, teacher=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_spec = loss
        self.model_accepts_loss_kwargs = False  # the loss below is a batch mean; no token-count rescaling
        self.teacher = teacher
        self._values: dict[str, torch.Tensor] = {}
        self._hooks = []
        if loss.needs_teacher and teacher is None:
            raise ValueError("DistillTrainer: hidden, attention or value-relation losses need the teacher model")
        if teacher is not None:  # run under no_grad, so its requires_grad flags stay as the caller set them
            self._teacher_state = (next(teacher.parameters()).device, teacher.training)
            teacher.eval().to(self.args.device)
        if loss.value_relation_weight > 0:
            student = self.model.student if isinstance(self.model, WithProjections) else self.model
            for name, m in (("student", student), ("teacher", teacher)):
                self._hooks.append(value_projection(m).register_forward_hook(self._keep_values(name)))

    def _keep_values(self, name: str):
        def hook(module, inputs, output):
            self._values[name] = output  # ALBERT: overwritten per application; the last one stays

        return hook

    def release(self) -> None:
        """Remove the value hooks and give the teacher back its device and train/eval mode."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._values.clear()
        if self.teacher is not None:
            device, training = self._teacher_state
            self.teacher.to(device).train(training)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        spec = self.loss_spec
        teacher_logits = inputs.pop("teacher_logits", None)
        labels = inputs.pop("labels")
        if not model.training:  # held-out evaluation: the student alone, plain cross-entropy
            outputs = model(**inputs)
            loss = F.cross_entropy(outputs.logits.float(), labels)
            return (loss, outputs) if return_outputs else loss
        want_hidden, want_attn = spec.hidden_weight > 0, spec.attention_weight > 0
        outputs = model(**inputs, output_hidden_states=want_hidden, output_attentions=want_attn)
        if spec.needs_teacher:
            with torch.no_grad(), self.accelerator.autocast():
                t_out = self.teacher(**inputs, output_hidden_states=want_hidden, output_attentions=want_attn)
            if teacher_logits is None:
                teacher_logits = t_out.logits
        if teacher_logits is None:
            raise ValueError("DistillTrainer: the batch has no teacher_logits and no teacher model to compute them")
        loss = distillation_loss(outputs.logits.float(), teacher_logits.float(), labels, spec.temperature, spec.alpha)
        mask = inputs["attention_mask"]
        if want_hidden:
            projected = outputs.get("projected_hidden_states")
            if projected is not None:
                student_hidden = projected
                pairs = [(k, t) for k, (_, t) in enumerate(spec.hidden_layer_map)]
            else:
                student_hidden, pairs = outputs.hidden_states, spec.hidden_layer_map
            loss = loss + spec.hidden_weight * hidden_state_loss(student_hidden, t_out.hidden_states, pairs, mask)
        if want_attn:
            loss = loss + spec.attention_weight * attention_transfer_loss(
                outputs.attentions, t_out.attentions, spec.attention_layer_map, mask
            )
        if spec.value_relation_weight > 0:
            loss = loss + spec.value_relation_weight * value_relation_loss(
                self._values.pop("student"), self._values.pop("teacher"), mask, spec.relation_heads
            )
        if return_outputs:
            outputs = type(outputs)(loss=None, logits=outputs.logits)  # no hidden states/attentions downstream
            return loss, outputs
        return loss


def _hidden_width(model) -> int:
    return model.config.hidden_size


def _projections(student, teacher, spec: LossSpec) -> nn.ModuleList | None:
    """Learned student->teacher width maps for the hidden-state loss, or None when the widths agree."""
    hs, ht = _hidden_width(student), _hidden_width(teacher)
    if spec.hidden_weight == 0 or hs == ht:
        return None
    return nn.ModuleList(nn.Linear(hs, ht) for _ in spec.hidden_layer_map)


def train(
    model,
    tokenizer,
    dataset: EncodedDataset,
    args: TrainingArguments,
    distill: dict | LossSpec | None = None,
    *,
    eval_dataset: EncodedDataset | None = None,
    teacher=None,
    callbacks: list[TrainerCallback] | None = None,
) -> list[dict]:
    """Train `model` in place (the caller owns a fresh copy) and return the Trainer's log history.

    Args:
        distill: None for plain cross-entropy; else a `LossSpec` (or a dict of its fields, e.g.
            {"temperature": T, "alpha": a}); the dataset then carries the teacher's logits.
        eval_dataset: a held-out set (never dev/test) evaluated as `args` says; the weights with the best
            accuracy on it are put back at the end, and the history ends with a record
            {"best_eval_accuracy", "best_eval_loss", "best_step"}.
        teacher: the teacher model, needed when a hidden-state, attention or value-relation weight is non-zero.
        callbacks: extra `TrainerCallback`s.
    """
    if len(dataset) == 0 or args.num_train_epochs == 0:
        return []
    if eval_dataset is not None and args.eval_strategy == "no":
        raise ValueError("train: an eval_dataset needs training_args(..., evaluate=True)")
    spec = LossSpec(**distill) if isinstance(distill, dict) else distill
    keep_best = KeepBest() if eval_dataset is not None else None
    all_callbacks = [*(callbacks or []), *([keep_best] if keep_best else [])]
    common = dict(
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        data_collator=PadCollator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=_accuracy_metric if eval_dataset is not None else None,
        callbacks=all_callbacks or None,
    )
    if spec is None:
        trainer = _PlainTrainer(model=model, **common)
        trainable = model
    else:
        projections = _projections(model, teacher, spec) if teacher is not None else None
        trainable = (
            WithProjections(model, projections, [s for s, _ in spec.hidden_layer_map])
            if projections is not None
            else model
        )
        trainer = DistillTrainer(model=trainable, loss=spec, teacher=teacher, **common)
    try:
        trainer.train()
        if keep_best is not None:
            if keep_best.last_eval_step != trainer.state.global_step:
                trainer.evaluate()  # the final weights are a candidate too
            keep_best.restore(trainable)
    finally:
        if isinstance(trainer, DistillTrainer):
            trainer.release()
    model.eval()
    history = list(trainer.state.log_history)
    if keep_best is not None and keep_best.best is not None:
        acc, neg_loss = keep_best.best
        history.append({"best_eval_accuracy": acc, "best_eval_loss": -neg_loss, "best_step": keep_best.step})
    return history


class _PlainTrainer(_SeededLengthGrouping):
    """The stock Trainer, with the cross-entropy computed here so that cached teacher logits are ignored."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs.pop("teacher_logits", None)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


@torch.inference_mode()
def predict_logits(
    model, tokenizer, dataset: EncodedDataset, batch_size: int = 64, desc: str = "predict"
) -> np.ndarray:
    """Logits for every example of `dataset`, in order; batches sorted by length so padding stays small."""
    model.eval()
    device = next(model.parameters()).device
    collate = PadCollator(tokenizer)
    out = np.zeros((len(dataset), model.config.num_labels), dtype=np.float32)
    batches = length_sorted_batches(dataset.lengths, batch_size)
    for idx in tqdm(batches, desc=desc, unit="batch", leave=False):
        feats = [{k: v for k, v in dataset[i].items() if k not in ("labels", "teacher_logits")} for i in idx]
        batch = {k: v.to(device) for k, v in collate(feats).items()}
        out[idx] = model(**batch).logits.float().cpu().numpy()
    return out


def accuracy(logits: np.ndarray, labels) -> float:
    """Share of argmax predictions equal to the labels."""
    return float((logits.argmax(-1) == np.asarray(labels)).mean())

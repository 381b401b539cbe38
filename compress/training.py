"""Glue around transformers' Trainer shared by the teacher, distill and prune stages."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from compress.data import EncodedDataset, PadCollator, length_sorted_batches
from compress.losses import distillation_loss

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
) -> TrainingArguments:
    """Trainer settings: length-grouped batches, no checkpoints, no external loggers."""
    return TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        lr_scheduler_type="linear",
        group_by_length=True,  # batches of similar length: dynamic padding wastes little compute
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="steps",
        logging_steps=200,
        report_to="none",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,  # CPU training: nothing to pin
        disable_tqdm=False,
        remove_unused_columns=False,
    )


class DistillTrainer(Trainer):
    """Trainer whose loss is soft-target KD on cached teacher logits plus hard-label CE."""

    def __init__(self, *args, temperature: float, alpha: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.temperature = temperature
        self.alpha = alpha

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        teacher_logits = inputs.pop("teacher_logits")
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = distillation_loss(outputs.logits, teacher_logits, labels, self.temperature, self.alpha)
        return (loss, outputs) if return_outputs else loss


def train(model, tokenizer, dataset: EncodedDataset, args: TrainingArguments, distill: dict | None = None):
    """Train `model` in place (the caller owns a fresh copy) and return the Trainer's log history.

    Args:
        distill: None for plain cross-entropy, else {"temperature": T, "alpha": a}; the dataset then carries
            the teacher's logits.
    """
    if len(dataset) == 0 or args.num_train_epochs == 0:
        return []
    cls = DistillTrainer if distill else Trainer
    kwargs = dict(distill) if distill else {}
    trainer = cls(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=PadCollator(tokenizer),
        processing_class=tokenizer,
        **kwargs,
    )
    trainer.train()
    model.eval()
    return trainer.state.log_history


@torch.inference_mode()
def predict_logits(
    model, tokenizer, dataset: EncodedDataset, batch_size: int = 64, desc: str = "predict"
) -> np.ndarray:
    """Logits for every example of `dataset`, in order; batches sorted by length so padding stays small."""
    model.eval()
    collate = PadCollator(tokenizer)
    out = np.zeros((len(dataset), model.config.num_labels), dtype=np.float32)
    batches = length_sorted_batches(dataset.lengths, batch_size)
    for idx in tqdm(batches, desc=desc, unit="batch", leave=False):
        feats = [{k: v for k, v in dataset[i].items() if k not in ("labels", "teacher_logits")} for i in idx]
        batch = collate(feats)
        out[idx] = model(**batch).logits.float().numpy()
    return out


def accuracy(logits: np.ndarray, labels) -> float:
    """Share of argmax predictions equal to the labels."""
    return float((logits.argmax(-1) == np.asarray(labels)).mean())

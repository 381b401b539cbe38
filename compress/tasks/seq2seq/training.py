"""The seq2seq training loop of the teacher and distill stages: transformers' Trainer (length-grouped batches,
DDP under torchrun, progress) with the loss computed here: cross-entropy on the reference outputs, plus, for a
student, the KL divergence to the teacher's token distributions at every target position (word-level
knowledge distillation, Kim & Rush 2016), the teacher run on the same batch."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import DataCollatorForSeq2Seq

from compress.losses import token_divergence
from compress.tasks.seq2seq.data import Pairs
from compress.training import _SeededLengthGrouping, training_args

IGNORE = -100  # label of padding: no loss


class PairDataset(torch.utils.data.Dataset):
    """Tokenized pairs: `input_ids` of the source (with the recipe's prefix), `labels` of the target."""

    def __init__(self, pairs: Pairs, tokenizer, prefix: str, max_source: int, max_target: int):
        enc = tokenizer([prefix + s for s in pairs.sources], truncation=True, max_length=max_source)
        lab = tokenizer(text_target=pairs.targets, truncation=True, max_length=max_target)
        self.items = [
            {"input_ids": i, "attention_mask": m, "labels": t}
            for i, m, t in zip(enc["input_ids"], enc["attention_mask"], lab["input_ids"], strict=True)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return dict(self.items[i])


def seq2seq_loss(student_logits, teacher_logits, labels, alpha: float, temperature: float, label_smoothing=0.0):
    """(1 - alpha) * cross-entropy on the targets + alpha * KL(teacher_T || student_T) * T^2, both over the target
    positions that are not padding. Shapes: logits (B, T, V), labels (B, T)."""
    v = student_logits.shape[-1]
    mask = labels.ne(IGNORE)
    hard = F.cross_entropy(
        student_logits.reshape(-1, v).float(), labels.reshape(-1), ignore_index=IGNORE, label_smoothing=label_smoothing
    )
    if teacher_logits is None or alpha == 0:
        return hard
    soft = token_divergence(student_logits[mask], teacher_logits[mask], "forward", temperature)
    return alpha * soft + (1 - alpha) * hard


class _Seq2SeqTrainer(_SeededLengthGrouping):
    def __init__(
        self, *args, teacher=None, alpha: float = 0.0, temperature: float = 1.0, label_smoothing=0.0, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.teacher, self.alpha, self.temperature, self.label_smoothing = teacher, alpha, temperature, label_smoothing
        if teacher is not None:
            teacher.eval()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        out = model(**inputs)
        teacher_logits = None
        if self.teacher is not None and self.alpha > 0:
            with torch.no_grad():
                self.teacher.to(out.logits.device)
                teacher_logits = self.teacher(**inputs).logits
        loss = seq2seq_loss(out.logits, teacher_logits, labels, self.alpha, self.temperature, self.label_smoothing)
        return (loss, out) if return_outputs else loss


def train_seq2seq(
    model,
    tokenizer,
    pairs: Pairs,
    cfg,
    data_cfg,
    *,
    out_dir: Path,
    seed: int,
    teacher=None,
    alpha: float = 0.0,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    callbacks: list | None = None,
) -> list[dict]:
    """Train `model` in place on `pairs` (teacher, distill or prune settings `cfg`; `callbacks`: the Trainer's,
    such as a pruning schedule); returns the Trainer's log history."""
    dataset = PairDataset(
        pairs, tokenizer, data_cfg.source_prefix, data_cfg.max_source_length, data_cfg.max_target_length
    )
    # decoder_input_ids come from the model's own shift of the labels, so the teacher sees the same inputs
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE)
    args = training_args(
        out_dir,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        seed=seed,
        warmup_ratio=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_steps=cfg.max_steps,
        logging_steps=50,
    )
    trainer = _Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        teacher=teacher,
        alpha=alpha,
        temperature=temperature,
        label_smoothing=label_smoothing,
        callbacks=callbacks,
    )
    trainer.train()
    model.eval()
    return list(trainer.state.log_history)


def pair_batches(pairs: Pairs, tokenizer, data_cfg, batch_size: int, n: int, seed: int) -> list[dict]:
    """`n` collated batches of `batch_size` training pairs drawn at random (`seed`): calibration for Wanda. Each
    batch holds `labels`, from which the model makes its decoder inputs."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(pairs))[: batch_size * n]
    chosen = Pairs([pairs.sources[i] for i in order], [pairs.targets[i] for i in order])
    dataset = PairDataset(chosen, tokenizer, data_cfg.source_prefix, data_cfg.max_source_length,
                          data_cfg.max_target_length)  # fmt: skip
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE)
    return [collator([dataset[i] for i in range(j, min(j + batch_size, len(dataset)))])
            for j in range(0, len(dataset), batch_size)]  # fmt: skip


# A model whose held-out loss barely changes when every target is paired with another pair's source does not read
# its input: it has learned a language model of the targets (measured on the default's first teachers: a BART-style
# model trained at 1e-3 gave the same loss to 6 decimals, its encoder's output constant across positions).
MIN_SOURCE_GAP = 0.01  # nats per target token


@torch.no_grad()
def source_gap(model, tokenizer, pairs: Pairs, prefix: str, max_source: int, max_target: int, n: int = 256) -> float:
    """Held-out cross-entropy (nats per target token, teacher-forced) with each pair's source replaced by the next
    pair's, minus the cross-entropy with the right sources: how much the model's predictions depend on its input."""
    k = min(n, len(pairs))
    if k < 2:
        return float("nan")
    items = PairDataset(pairs.take(k), tokenizer, prefix, max_source, max_target)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE)
    batch = collator([items[i] for i in range(k)])
    was_training = model.training
    model.eval()
    right = float(model(**batch).loss)
    batch["input_ids"], batch["attention_mask"] = batch["input_ids"].roll(1, 0), batch["attention_mask"].roll(1, 0)
    wrong = float(model(**batch).loss)
    model.train(was_training)
    return wrong - right

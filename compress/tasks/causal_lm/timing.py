"""Seconds per training step of a decoder shape on this machine, measured: what `check`'s wall-time estimate is
made of (`compress.tasks.causal_lm.cost.time_estimate`).

A step is timed on a model of the stage's shape with random weights (Llama-style for every family but GPT-2:
the layout, not the family's details, sets the time), on random tokens at the recipe's block size: forward,
cross-entropy, the teacher's forward and the KL to it where the stage distils, backward and an AdamW update, as
the training loop does them, with freed memory reused as the pipeline's training steps do
(`compress.hardware.reused_heap`). The batch is measured at up to `MAX_MEASURED_BATCH` sequences and scaled
linearly to the recipe's (CPU matrix products are throughput-bound well before that size).
"""

from __future__ import annotations

import time

import torch

from compress.hardware import reused_heap
from compress.losses import next_token_distillation_loss, next_token_loss
from compress.tasks.causal_lm.cost import DecoderShape

MAX_MEASURED_BATCH = 4


def shape_model(s: DecoderShape, block: int, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised decoder of shape `s` (positions for `block` tokens). Llama-style shapes are built
    here rather than by `model.new_decoder`: a cut keeps its head width while its hidden size shrinks."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if not s.gated:  # GPT-2: the teacher stage's own constructor (its head width is hidden / heads)
        from compress.tasks.causal_lm.config import ArchitectureConfig
        from compress.tasks.causal_lm.model import new_decoder

        arch = ArchitectureConfig(
            family="gpt2", hidden_size=s.hidden, layers=s.layers, heads=s.heads, kv_heads=None,
            intermediate_size=s.ffn, max_positions=max(16, block), tie_embeddings=s.tied,
        )  # fmt: skip
        return new_decoder(arch, s.vocab, 0, seed)
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        head_dim=s.head_width,
        intermediate_size=s.ffn,
        max_position_embeddings=block,
        vocab_size=s.vocab,
        tie_word_embeddings=s.tied,
    )
    return LlamaForCausalLM(config)


def step_seconds(
    student: DecoderShape, teacher: DecoderShape | None, batch: int, block: int, repeats: int = 4
) -> float:
    """Median seconds of one training step of `student` at `batch` x `block` tokens, beside `teacher` (its
    forward and the KL to it) when given; measured at min(batch, MAX_MEASURED_BATCH) and scaled to `batch`."""
    measured = min(batch, MAX_MEASURED_BATCH)
    model = shape_model(student, block).train()
    t_model = shape_model(teacher, block, seed=1).eval() if teacher is not None else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, student.vocab, (measured, block))
    times = []
    with reused_heap():
        for _ in range(repeats + 2):  # the first two steps allocate (the optimizer's state too): not counted
            start = time.perf_counter()
            logits = model(input_ids=ids).logits
            if t_model is not None:  # the loss the distill step trains with (chunked over a large vocabulary)
                with torch.no_grad():
                    target = t_model(input_ids=ids).logits
                loss = next_token_distillation_loss(logits, target, ids, temperature=1.0, alpha=0.5)
            else:
                loss = next_token_loss(logits, ids)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
    del model, t_model, opt
    steady = sorted(times[2:])
    return steady[len(steady) // 2] * batch / measured


__all__ = ["MAX_MEASURED_BATCH", "shape_model", "step_seconds"]

"""What each stage of a causal-LM recipe will need in memory, from the teacher's config alone: `check` prints it,
and a recipe whose training stage cannot fit in this machine's memory is refused before anything runs.

An estimate, written here because no library gives one for this pipeline: the terms are the ones that grow with
the model (float32 weights, gradients and Adam's two moments: 16 bytes per trained parameter; the teacher's
weights beside a student; the activations each layer keeps for the backward pass; the full-vocabulary logits
and their loss temporaries, `compress.losses`), plus what the process holds once torch, transformers and ONNX
Runtime are imported. Activations per layer and token are counted as ~10 hidden-size and ~4 FFN-size vectors
plus the attention probabilities (heads x block), the layout of a Llama-style block in eager/SDPA attention;
gradient checkpointing keeps each layer's input only, plus one layer's activations while it is recomputed. Each
run records every step's measured peak (`peak_rss_bytes` in the manifest) to hold these against.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

# Resident memory of the process with torch, transformers, optimum and onnxruntime imported (measured here with
# tiny models: 0.5 to 0.9 GB).
BASELINE_BYTES = 900 * 2**20
CHUNK_ABOVE = 1 << 26  # compress.losses.CHUNK_ABOVE_ELEMENTS
CHUNK = 1 << 24


@dataclass(frozen=True)
class DecoderShape:
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_width: int
    vocab: int
    tied: bool
    gated: bool = True  # Llama/Qwen gate + up + down; GPT-2 up + down

    @property
    def params(self) -> int:
        attention = self.hidden * self.head_width * (2 * self.heads + 2 * self.kv_heads)
        mlp = (3 if self.gated else 2) * self.hidden * self.ffn
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * (attention + mlp + 2 * self.hidden) + embeddings


def activation_bytes(s: DecoderShape, batch: int, block: int, dtype_bytes: int, checkpointing: bool) -> int:
    """What a forward pass keeps for the backward pass, through the layers (not the logits)."""
    per_layer = batch * block * (10 * s.hidden + 4 * s.ffn + 2 * s.heads * block) * dtype_bytes
    if checkpointing:
        return s.layers * batch * block * s.hidden * dtype_bytes + per_layer
    return s.layers * per_layer


def logits_bytes(vocab: int, batch: int, block: int, training: bool) -> int:
    """The logits and the next-token losses' temporaries (chunked above `CHUNK_ABOVE` elements)."""
    n = batch * block * vocab
    if not training:
        return 4 * n
    if n > CHUNK_ABOVE:
        return 4 * n * 2 + 5 * 4 * CHUNK  # logits, their gradient, one slice's temporaries
    return 4 * n * 5  # logits, log-softmaxes, their exponentials, the gradient


def training_bytes(s: DecoderShape, batch: int, block: int, precision: str, checkpointing: bool) -> int:
    dtype = 2 if precision == "bf16" else 4
    return (
        16 * s.params
        + activation_bytes(s, batch, block, dtype, checkpointing)
        + logits_bytes(s.vocab, batch, block, True)
    )


def teacher_beside_bytes(t: DecoderShape, batch: int, block: int, hidden_states: bool) -> int:
    """A teacher run on each batch without gradients: its weights, its logits, one layer's activations, and its
    hidden states when a hidden-state loss reads them."""
    kept = (t.layers + 1) * batch * block * t.hidden * 4 if hidden_states else 0
    return 4 * t.params + 4 * batch * block * t.vocab + activation_bytes(t, batch, block, 4, True) // t.layers + kept


def student_shape(t: DecoderShape, d) -> DecoderShape:
    layers = d.num_layers if d.num_layers is not None else len(d.layers)
    hidden = d.hidden_size or t.hidden
    heads = t.heads if hidden == t.hidden else max(1, hidden // t.head_width)
    kv = t.kv_heads if hidden == t.hidden else max(1, heads * t.kv_heads // t.heads)
    return DecoderShape(layers, hidden, d.intermediate_size or t.ffn, heads, kv, t.head_width, t.vocab, t.tied,
                        t.gated)  # fmt: skip


def estimate(recipe, t: DecoderShape) -> list[dict]:
    """Each stage's estimated peak resident memory: [{"stage", "bytes", "basis"}]."""
    block = recipe.data.block_size

    def row(stage: str, need: int, basis: str) -> dict:
        return {"stage": stage, "bytes": BASELINE_BYTES + need, "basis": basis}

    teacher = recipe.teacher
    if teacher.path is None:
        need = training_bytes(t, teacher.batch_size, block, teacher.precision, teacher.gradient_checkpointing)
        out = [row("teacher", need, f"training {t.params / 1e6:.1f}M parameters, batch {teacher.batch_size} x {block}")]
    else:
        # float32 weights, and the evaluation's logits with their log-softmax temporaries (measured on the
        # SmolLM2-135M shape: 2.18 GiB)
        out = [row("teacher", 4 * t.params + 3 * logits_bytes(t.vocab, 8, block, False),
                   f"measuring {t.params / 1e6:.1f}M parameters")]  # fmt: skip
    for d in recipe.distill:
        s = student_shape(t, d)
        need = training_bytes(s, d.batch_size, block, d.precision, d.gradient_checkpointing)
        need += teacher_beside_bytes(t, d.batch_size, block, d.hidden_weight > 0)
        out.append(row(f"distill/{d.name}", need, f"training {s.params / 1e6:.1f}M parameters beside the teacher, "
                                                   f"batch {d.batch_size} x {block}"))  # fmt: skip
    for p in recipe.prune:
        src = next((d for d in recipe.distill if d.name == (p.source or recipe.distill[0].name)), None)
        s = student_shape(t, src) if src is not None else t
        trains = p.epochs > 0
        need = training_bytes(s, p.batch_size, block, p.precision, p.gradient_checkpointing) if trains else 8 * s.params
        if p.method == "structured":  # the source beside the cut while it is made (its importance, its copy)
            need += 8 * s.params
        need += teacher_beside_bytes(t, p.batch_size, block, False)
        out.append(row(f"prune/{p.name}", need, f"the {s.params / 1e6:.1f}M-parameter source"
                                               + (", fine-tuned beside the teacher" if trains else "")))  # fmt: skip
    # export: the PyTorch model, the traced graph and the serialized ONNX model at once; quantize: the float graph,
    # the quantized one and the evaluation's logits; the largest model (the teacher) decides
    # its weights three times over, and the check's PyTorch decoding and ONNX Runtime session (measured: 3.27 GiB
    # for the SmolLM2-135M shape; 11.2 GiB for Llama-3.2-1B's, under this estimate)
    out.append(row("export", 12 * t.params + 2**30, "the teacher: its weights three times over, and its check"))
    if recipe.quantize:
        need = 12 * t.params + logits_bytes(t.vocab, 4, block, False)
        out.append(row("quantize", need, "the largest source: float graph, quantized graph, evaluation"))
    return out


def cut_shape(s: DecoderShape, p) -> DecoderShape:
    """The shape a structured cut leaves (its shares of KV groups, FFN neurons and hidden channels removed)."""
    kv = max(1, round(s.kv_heads * (1 - p.heads)))
    return DecoderShape(s.layers, max(1, round(s.hidden * (1 - p.hidden))), max(1, round(s.ffn * (1 - p.ffn))),
                        kv * (s.heads // s.kv_heads), kv, s.head_width, s.vocab, s.tied, s.gated)  # fmt: skip


def training_steps(c, n_blocks: int) -> int:
    """Optimizer steps a stage config `c` (epochs or max_steps, batch_size, gradient_accumulation_steps) runs."""
    per_step = c.batch_size * getattr(c, "gradient_accumulation_steps", 1)
    max_steps = getattr(c, "max_steps", None)
    return max_steps if max_steps is not None else max(1, math.ceil(round(c.epochs * n_blocks) / per_step))


def time_estimate(
    recipe, t: DecoderShape, n_blocks: int, seconds: Callable[[DecoderShape, DecoderShape | None, int], float]
) -> list[dict]:
    """Each training stage's estimated wall time: its optimizer steps (the equal-training control's too) times
    the seconds of one step of its shape, `seconds(student, teacher or None, batch)` (measured:
    `compress.tasks.causal_lm.timing.step_seconds`). Evaluation, export, quantization and the benchmark are not
    counted. Returns [{"stage", "seconds", "basis"}]."""
    out = []
    teacher = recipe.teacher
    if teacher.path is None:
        steps = training_steps(teacher, n_blocks)
        per = seconds(t, None, teacher.batch_size * teacher.gradient_accumulation_steps)
        out.append({"stage": "teacher", "seconds": steps * per, "basis": f"{steps:,} steps x {per:.2f} s"})
    steps_of = {}
    for d in recipe.distill:
        s = student_shape(t, d)
        steps = steps_of[d.name] = training_steps(d, n_blocks)
        batch = d.batch_size * d.gradient_accumulation_steps
        per = seconds(s, t, batch)
        total, basis = steps * per, f"{steps:,} steps x {per:.2f} s beside the teacher"
        if d.control:
            alone = seconds(s, None, batch)
            total, basis = total + steps * alone, basis + f", control {steps:,} x {alone:.2f} s"
        out.append({"stage": f"distill/{d.name}", "seconds": total, "basis": basis})
    for p in recipe.prune:
        if p.epochs == 0:
            continue
        src = next((d for d in recipe.distill if d.name == (p.source or recipe.distill[0].name)), None)
        s = student_shape(t, src) if src is not None else t
        if p.method == "structured":
            s = cut_shape(s, p)
        steps, batch = training_steps(p, n_blocks), p.batch_size * p.gradient_accumulation_steps
        per = seconds(s, t, batch)
        total, basis = steps * per, f"{steps:,} steps x {per:.2f} s beside the teacher"
        if p.method == "structured" and p.control:
            control = steps + steps_of.get(src.name if src is not None else "", 0)  # as many blocks as cut + source
            alone = seconds(s, None, batch)
            total, basis = total + control * alone, basis + f", control {control:,} x {alone:.2f} s"
        out.append({"stage": f"prune/{p.name}", "seconds": total, "basis": basis})
    return out


def machine_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


__all__ = ["BASELINE_BYTES", "DecoderShape", "cut_shape", "estimate", "gib", "machine_memory_bytes", "time_estimate"]

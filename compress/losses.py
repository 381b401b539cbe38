"""Distillation losses: small pure functions of tensors.

Conventions shared by the functions below:
- `attention_mask` is the tokenizer's (B, T) mask, 1 on real tokens and 0 on padding; padded positions never
  contribute to a loss, whatever the model put there.
- Hidden states are the tuples a Hugging Face encoder returns with `output_hidden_states=True`: index 0 is the
  embedding output and index k the output of layer k (1-based), each (B, T, H).
- Attentions are the tuples returned with `output_attentions=True`: index k is layer k's (0-based) attention
  probabilities, (B, heads, T, T), rows over keys summing to 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# log(p) of a probability the model set to exactly 0 (a masked key): finite, so 0 * log(0) terms stay 0, not NaN.
_LOG_FLOOR = 1e-12


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) * T^2 (Hinton et al., 2015), averaged over the batch.

    The T^2 factor keeps the gradient scale of the soft term independent of the temperature.
    Shapes: (B, C) and (B, C).
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha * soft-target KD + (1 - alpha) * cross-entropy on the hard labels."""
    hard = F.cross_entropy(student_logits, labels)
    if alpha == 0:
        return hard
    return alpha * soft_target_loss(student_logits, teacher_logits, temperature) + (1 - alpha) * hard


# Above this many logits (a 256 MB float32 copy: 16 blocks of 256 tokens at a 16k vocabulary) the next-token losses
# are computed a slice of positions at a time, each slice at most LOSS_CHUNK_ELEMENTS, with their gradient (see
# `_chunked_next_token`): at a 152k vocabulary a batch of 16 x 256 tokens would otherwise build several 2.5 GB
# float32 temporaries (log-softmaxes, their exponentials, products) and keep most of them for the backward pass.
CHUNK_ABOVE_ELEMENTS = 1 << 26
LOSS_CHUNK_ELEMENTS = 1 << 24


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each position's prediction of the next token, mean over the predicted positions.

    Shapes: logits (B, T, V), input_ids (B, T); position t predicts token t+1, the last position nothing.
    """
    if logits.numel() > CHUNK_ABOVE_ELEMENTS:
        return _chunked_next_token(logits, input_ids, None, alpha=0.0)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), input_ids[:, 1:].reshape(-1))


def token_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Forward KL(teacher_T || student_T) * T^2 of the next-token distributions, mean over positions.

    Every position of a packed block is a real token, so no mask. Shapes (B, T, V) and (B, T, V).
    """
    v = student_logits.shape[-1]
    return soft_target_loss(student_logits.reshape(-1, v).float(), teacher_logits.reshape(-1, v).float(), temperature)


DIVERGENCES = ("forward", "reverse", "skew", "skew-reverse")


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str = "forward",
    temperature: float = 1.0,
    skew: float = 0.1,
) -> torch.Tensor:
    """A divergence between the teacher's (p) and the student's (q) next-token distributions, mean over
    positions, times T^2 (distributions at temperature T).

    - forward: KL(p || q), Hinton et al.'s soft targets; mass-covering, the student spreads over all the teacher's
      modes;
    - reverse: KL(q || p) (MiniLLM, Gu et al. 2024); mode-seeking, the student puts its mass where the teacher is
      sure;
    - skew: KL(p || skew * p + (1 - skew) * q) and skew-reverse: KL(q || skew * q + (1 - skew) * p) (DistiLLM,
      Ko et al. 2024); mixing a share of the other distribution in keeps the gradient bounded where q or p is
      near zero. skew 0 gives forward / reverse.

    Shapes: (..., V) and (..., V).
    """
    _check_divergence(kind, skew)
    v = student_logits.shape[-1]
    return _divergence_rows(
        student_logits.reshape(-1, v), teacher_logits.reshape(-1, v), kind, temperature, skew
    ).mean()


def _check_divergence(kind: str, skew: float) -> None:
    if kind not in DIVERGENCES:
        raise ValueError(f"kind must be one of {DIVERGENCES}, not {kind!r}")
    if not 0 <= skew < 1:
        raise ValueError(f"skew must be in [0, 1), got {skew}")


def _divergence_rows(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, temperature: float, skew: float
) -> torch.Tensor:
    """`token_divergence` per row of (N, V) logits, times T^2: shape (N,)."""
    t = temperature
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    if kind in ("reverse", "skew-reverse"):
        log_p, log_q = log_q, log_p  # the same formulas with the roles of the two distributions swapped
    if kind.startswith("skew") and skew > 0:
        # log(skew * p + (1 - skew) * q), computed in log space
        log_q = torch.logaddexp(log_p + math.log(skew), log_q + math.log1p(-skew))
    return (log_p.exp() * (log_p - log_q)).sum(-1) * (t * t)  # KL(p || q) per position


def next_token_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    input_ids: torch.Tensor,
    temperature: float,
    alpha: float,
    kind: str = "forward",
    skew: float = 0.1,
) -> torch.Tensor:
    """alpha * divergence to the teacher (`token_divergence`) + (1 - alpha) * next-token cross-entropy."""
    if student_logits.numel() > CHUNK_ABOVE_ELEMENTS:
        _check_divergence(kind, skew)
        return _chunked_next_token(student_logits, input_ids, teacher_logits, alpha, kind, temperature, skew)
    hard = next_token_loss(student_logits, input_ids)
    if alpha == 0:
        return hard
    soft = token_divergence(student_logits, teacher_logits, kind, temperature, skew)
    return alpha * soft + (1 - alpha) * hard


class _KnownGradient(torch.autograd.Function):
    """A scalar loss whose gradient with respect to `logits` was computed already, slice by slice."""

    @staticmethod
    def forward(ctx, logits, value, grad):
        ctx.save_for_backward(grad)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None


def _chunked_next_token(
    student_logits: torch.Tensor,
    input_ids: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    alpha: float,
    kind: str = "forward",
    temperature: float = 1.0,
    skew: float = 0.1,
    chunk_elements: int = LOSS_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """`next_token_distillation_loss` (`next_token_loss` when alpha is 0), the same value and gradient, with the
    float32 temporaries of one slice of positions alive at a time.

    Written here because torch has no chunked loss: each slice's loss is differentiated on the spot (against a
    detached float32 copy of the slice) and its gradient written into one tensor of the logits' shape and dtype,
    which the backward pass hands on. Peak extra memory: that tensor plus one slice's temporaries, instead of
    several float32 copies of the whole (B, T, V) kept for the backward pass.
    """
    b, t, v = student_logits.shape
    rows = student_logits.reshape(b * t, v)
    teacher_rows = teacher_logits.reshape(b * t, v) if teacher_logits is not None and alpha > 0 else None
    targets = torch.full((b, t), -100, dtype=torch.long, device=input_ids.device)
    targets[:, :-1] = input_ids[:, 1:]  # the last position of a block predicts nothing
    targets = targets.reshape(-1)
    n_hard, n_soft = b * (t - 1), b * t  # the divergence counts every position, the cross-entropy the predicting
    want_grad = student_logits.requires_grad and torch.is_grad_enabled()
    grad = torch.empty_like(rows) if want_grad else None
    total = torch.zeros((), dtype=torch.float32, device=rows.device)
    step = max(1, chunk_elements // v)
    for start in range(0, b * t, step):
        end = min(start + step, b * t)
        z = rows[start:end].detach().float().requires_grad_(want_grad)
        with torch.set_grad_enabled(want_grad):
            loss = (1 - alpha) * F.cross_entropy(z, targets[start:end], ignore_index=-100, reduction="sum") / n_hard
            if teacher_rows is not None:
                soft = _divergence_rows(z, teacher_rows[start:end], kind, temperature, skew).sum() / n_soft
                loss = loss + alpha * soft
        if grad is not None:
            (g,) = torch.autograd.grad(loss, z)
            grad[start:end] = g
        total += loss.detach()
    if grad is None:
        return total
    return _KnownGradient.apply(student_logits, total, grad.view_as(student_logits))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` (broadcastable, 0/1) is 1."""
    mask = mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def hidden_state_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    layer_map: Sequence[tuple[int, int]],
    attention_mask: torch.Tensor,
    projections: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Mean squared error between mapped hidden states, over real tokens, averaged over the mapped pairs.

    Args:
        student_hidden: the student's hidden-state tuple, each (B, T, Hs).
        teacher_hidden: the teacher's hidden-state tuple, each (B, T, Ht).
        layer_map: (student index, teacher index) pairs into those tuples (0 = embedding output).
        attention_mask: (B, T), 1 on real tokens.
        projections: one map per pair from Hs to Ht (a learned `nn.Linear` when the widths differ); None when
            the widths are equal.

    Returns:
        A scalar: mean over pairs of the per-element MSE over unpadded positions.
    """
    if not layer_map:
        raise ValueError("hidden_state_loss: empty layer_map")
    if projections is not None and len(projections) != len(layer_map):
        raise ValueError(f"hidden_state_loss: {len(projections)} projections for {len(layer_map)} mapped pairs")
    mask = attention_mask[:, :, None]  # (B, T, 1)
    total = 0.0
    for k, (s, t) in enumerate(layer_map):
        hs = student_hidden[s]
        if projections is not None:
            hs = projections[k](hs)
        ht = teacher_hidden[t]
        if hs.shape != ht.shape:
            raise ValueError(
                f"hidden_state_loss: student state {s} has shape {tuple(hs.shape)}, teacher state {t} "
                f"{tuple(ht.shape)}; pass a projection when the widths differ"
            )
        total = total + _masked_mean((hs.float() - ht.float()) ** 2, mask)
    return total / len(layer_map)


def _kl_rows(p_teacher: torch.Tensor, p_student: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student) along the last dim; 0 * log 0 counts as 0. Shapes (..., K) -> (...)."""
    log_t = p_teacher.clamp_min(_LOG_FLOOR).log()
    log_s = p_student.clamp_min(_LOG_FLOOR).log()
    return (p_teacher * (log_t - log_s)).sum(-1)


def attention_kl(
    student_attention: torch.Tensor, teacher_attention: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """KL(teacher || student) between one layer's attention distributions, mean over real query rows and heads.

    Padded keys are dropped and each row renormalised over the real keys, so what the models put on padding
    (HF gives it probability ~0, not exactly 0) cannot move the loss. When the head counts differ (a student
    with pruned heads) the head-averaged distributions are compared: an average of distributions is one.

    Args:
        student_attention: (B, Hs, T, T) probabilities.
        teacher_attention: (B, Ht, T, T) probabilities.
        attention_mask: (B, T), 1 on real tokens.
    """
    p_s, p_t = student_attention.float(), teacher_attention.float()
    if p_s.shape[1] != p_t.shape[1]:
        p_s, p_t = p_s.mean(1, keepdim=True), p_t.mean(1, keepdim=True)
    keys = attention_mask[:, None, None, :].to(p_s.dtype)  # (B, 1, 1, T)
    p_s = p_s * keys
    p_t = p_t * keys
    p_s = p_s / p_s.sum(-1, keepdim=True).clamp_min(_LOG_FLOOR)
    p_t = p_t / p_t.sum(-1, keepdim=True).clamp_min(_LOG_FLOOR)
    kl = _kl_rows(p_t, p_s)  # (B, H, T)
    return _masked_mean(kl, attention_mask[:, None, :])


def attention_transfer_loss(
    student_attentions: Sequence[torch.Tensor],
    teacher_attentions: Sequence[torch.Tensor],
    layer_map: Sequence[tuple[int, int]],
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """`attention_kl` averaged over (student layer, teacher layer) pairs (0-based layer indices)."""
    if not layer_map:
        raise ValueError("attention_transfer_loss: empty layer_map")
    total = sum(attention_kl(student_attentions[s], teacher_attentions[t], attention_mask) for s, t in layer_map)
    return total / len(layer_map)


def relation(values: torch.Tensor, attention_mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Self-relation softmax(V_r V_r^T / sqrt(d_r)) per relation head r, padded keys masked out.

    Args:
        values: (B, T, A), a layer's value vectors (all heads concatenated).
        attention_mask: (B, T).
        heads: relation heads R; A must be a multiple of R (d_r = A / R).

    Returns:
        (B, R, T, T) probabilities over keys.
    """
    b, t, a = values.shape
    if a % heads:
        raise ValueError(f"relation: value width {a} is not a multiple of {heads} relation heads")
    d = a // heads
    v = values.float().view(b, t, heads, d).transpose(1, 2)  # (B, R, T, d)
    scores = v @ v.transpose(-1, -2) / math.sqrt(d)  # (B, R, T, T)
    keys = attention_mask[:, None, None, :].bool()
    scores = scores.masked_fill(~keys, torch.finfo(scores.dtype).min)
    return scores.softmax(-1)


def value_relation_loss(
    student_values: torch.Tensor,
    teacher_values: torch.Tensor,
    attention_mask: torch.Tensor,
    relation_heads: int,
) -> torch.Tensor:
    """MiniLM's value-relation transfer (Wang et al., 2020; relation heads as in MiniLMv2).

    KL(teacher || student) between the value-value relations of one teacher and one student layer (usually the
    last of each). Both value widths are split into the same number of relation heads, so the student may have
    fewer attention heads or a narrower hidden size than the teacher.

    Args:
        student_values: (B, T, As).
        teacher_values: (B, T, At).
        attention_mask: (B, T), 1 on real tokens.
        relation_heads: R, dividing both As and At.

    Returns:
        A scalar: KL summed over keys, averaged over real query rows and relation heads.
    """
    r_s = relation(student_values, attention_mask, relation_heads)
    r_t = relation(teacher_values, attention_mask, relation_heads)
    kl = _kl_rows(r_t, r_s)  # (B, R, T)
    return _masked_mean(kl, attention_mask[:, None, :])

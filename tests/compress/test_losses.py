"""Distillation losses: properties of the pure functions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compress.losses import (
    attention_kl,
    attention_transfer_loss,
    distillation_loss,
    hidden_state_loss,
    relation,
    soft_target_loss,
    value_relation_loss,
)

B, C = 16, 3


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(B, C, generator=g) * 3
    teacher = torch.randn(B, C, generator=g) * 3
    labels = torch.randint(0, C, (B,), generator=g)
    return student, teacher, labels


@pytest.mark.parametrize("t", [0.5, 1.0, 4.0])
def test_soft_loss_is_zero_for_identical_logits_and_positive_otherwise(logits, t):
    student, teacher, _ = logits
    assert soft_target_loss(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_target_loss(student, teacher, t).item() > 1e-3


def test_soft_loss_ignores_a_constant_shift_of_the_logits(logits):
    student, teacher, _ = logits
    base = soft_target_loss(student, teacher, 2.0)
    assert soft_target_loss(student + 5.0, teacher - 3.0, 2.0).item() == pytest.approx(base.item(), rel=1e-5)


@pytest.mark.parametrize("t", [1.0, 2.0, 8.0])
def test_soft_loss_is_t_squared_times_the_kl_of_softened_distributions(logits, t):
    student, teacher, _ = logits
    p_t = F.softmax(teacher / t, dim=-1)
    kl = (p_t * (p_t.log() - F.log_softmax(student / t, dim=-1))).sum(-1).mean()  # KL(teacher || student)
    assert soft_target_loss(student, teacher, t).item() == pytest.approx(t * t * kl.item(), rel=1e-5)


def test_t_squared_keeps_the_gradient_scale_independent_of_temperature(logits):
    # d/ds of T^2 KL = T (p_s - p_t) -> (s - t) centred / C as T grows: the gradient stops shrinking with T.
    # Without the T^2 factor the gradient at T=100 would be 4x smaller than at T=50.
    student, teacher, _ = logits

    def grad(t: float) -> torch.Tensor:
        s = student.clone().requires_grad_(True)
        soft_target_loss(s, teacher, t).backward()
        return s.grad

    g50, g100 = grad(50.0), grad(100.0)
    limit = ((student - student.mean(-1, keepdim=True)) - (teacher - teacher.mean(-1, keepdim=True))) / (C * B)
    assert torch.allclose(g50, g100, rtol=0, atol=0.02 * limit.abs().max().item())
    assert torch.allclose(g100, limit, rtol=0, atol=0.02 * limit.abs().max().item())


def test_alpha_zero_is_cross_entropy(logits):
    student, teacher, labels = logits
    got = distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.0)
    assert got.item() == pytest.approx(F.cross_entropy(student, labels).item(), rel=1e-6)


def test_alpha_one_is_the_soft_loss(logits):
    student, teacher, labels = logits
    got = distillation_loss(student, teacher, labels, temperature=2.0, alpha=1.0)
    assert got.item() == pytest.approx(soft_target_loss(student, teacher, 2.0).item(), rel=1e-6)


def test_alpha_mixes_linearly(logits):
    student, teacher, labels = logits
    soft = soft_target_loss(student, teacher, 3.0).item()
    hard = F.cross_entropy(student, labels).item()
    got = distillation_loss(student, teacher, labels, temperature=3.0, alpha=0.3).item()
    assert got == pytest.approx(0.3 * soft + 0.7 * hard, rel=1e-6)


@pytest.mark.parametrize("t", [0.1, 1.0, 20.0])
def test_gradient_is_finite_for_extreme_logits(t):
    student = torch.tensor([[1e4, -1e4, 0.0], [-5e3, 5e3, 1.0]], requires_grad=True)
    teacher = torch.tensor([[-1e4, 1e4, 0.0], [5e3, -5e3, 1.0]])
    loss = distillation_loss(student, teacher, torch.tensor([1, 0]), temperature=t, alpha=0.5)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


# ---- hidden states, attention maps, value relations ----

T, H = 6, 8


@pytest.fixture
def mask():
    m = torch.ones(3, T, dtype=torch.long)
    m[1, 4:] = 0  # two padded positions
    m[2, 2:] = 0  # four
    return m


def _hidden(seed: int, width: int = H, n: int = 3) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(3, T, width, generator=g) for _ in range(n))


def _attention(seed: int, heads: int, mask: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(3, heads, T, T, generator=g) * 2
    scores = scores.masked_fill(mask[:, None, None, :] == 0, torch.finfo(torch.float32).min)
    return scores.softmax(-1)


def test_hidden_loss_is_the_mse_over_real_tokens_averaged_over_pairs(mask):
    s, t = _hidden(0), _hidden(1)
    pairs = [(0, 0), (1, 2), (2, 1)]
    got = hidden_state_loss(s, t, pairs, mask).item()
    real = mask.bool()
    want = sum(((s[i] - t[j])[real] ** 2).mean().item() for i, j in pairs) / len(pairs)
    assert got == pytest.approx(want, rel=1e-5)
    assert hidden_state_loss(t, t, [(0, 0), (2, 2)], mask).item() == 0.0


def test_hidden_loss_ignores_what_sits_on_padding(mask):
    s, t = _hidden(0), _hidden(1)
    noisy = tuple(x.masked_fill(mask[:, :, None] == 0, 1e3) for x in s)
    pairs = [(1, 1), (2, 2)]
    assert hidden_state_loss(noisy, t, pairs, mask).item() == pytest.approx(
        hidden_state_loss(s, t, pairs, mask).item(), rel=1e-6
    )


def test_hidden_loss_projects_a_narrower_student_and_trains_the_projection(mask):
    t = _hidden(1)
    s = tuple(x[..., :4] for x in _hidden(0))  # student width 4, teacher 8
    with pytest.raises(ValueError, match="projection"):
        hidden_state_loss(s, t, [(1, 1)], mask)
    proj = torch.nn.Linear(4, H)
    loss = hidden_state_loss(s, t, [(1, 1)], mask, projections=[proj])
    loss.backward()
    assert proj.weight.grad.abs().sum() > 0
    # A projection that reproduces the teacher exactly gives zero.
    exact = [lambda x: t[1]]
    assert hidden_state_loss(s, t, [(1, 1)], mask, projections=exact).item() == 0.0


def test_attention_kl_is_zero_for_equal_maps_positive_otherwise(mask):
    a, b = _attention(0, 2, mask), _attention(1, 2, mask)
    assert attention_kl(a, a, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_kl(b, a, mask).item() > 1e-3


def test_attention_kl_matches_a_direct_computation_on_real_tokens(mask):
    s, t = _attention(0, 2, mask), _attention(1, 2, mask)
    total, rows = 0.0, 0
    for b in range(3):
        n = int(mask[b].sum())
        for h in range(2):
            for q in range(n):
                p, r = t[b, h, q, :n], s[b, h, q, :n]
                p, r = p / p.sum(), r / r.sum()
                total += (p * (p.log() - r.log())).sum().item()
                rows += 1
    assert attention_kl(s, t, mask).item() == pytest.approx(total / rows, rel=1e-4)


def test_attention_kl_ignores_padded_queries_and_keys(mask):
    s, t = _attention(0, 2, mask), _attention(1, 2, mask)
    pad_q = (mask == 0)[:, None, :, None]
    pad_k = (mask == 0)[:, None, None, :]
    # Whatever a model writes on padded rows, or leaks onto padded keys, does not count.
    junk = s.masked_fill(pad_q, 0.5)
    junk = junk + 1e-3 * pad_k.float()
    assert attention_kl(junk, t, mask).item() == pytest.approx(attention_kl(s, t, mask).item(), rel=1e-4)


def test_attention_kl_compares_head_averages_when_head_counts_differ(mask):
    t = _attention(1, 4, mask)
    student = t.mean(1, keepdim=True)  # one head equal to the teacher's average
    assert attention_kl(student, t, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_kl(_attention(2, 1, mask), t, mask).item() > 1e-3


def test_attention_transfer_averages_over_the_layer_map(mask):
    s = [_attention(i, 2, mask) for i in range(3)]
    t = [_attention(10 + i, 2, mask) for i in range(3)]
    pairs = [(0, 1), (2, 2)]
    want = (attention_kl(s[0], t[1], mask) + attention_kl(s[2], t[2], mask)) / 2
    assert attention_transfer_loss(s, t, pairs, mask).item() == pytest.approx(want.item(), rel=1e-6)


def test_relation_rows_are_distributions_over_real_keys(mask):
    v = _hidden(0)[0]
    r = relation(v, mask, heads=2)  # (B, 2, T, T)
    assert r.shape == (3, 2, T, T)
    assert torch.allclose(r.sum(-1), torch.ones(3, 2, T))
    assert (r.masked_select(mask[:, None, None, :] == 0) == 0).all()
    with pytest.raises(ValueError, match="multiple"):
        relation(v, mask, heads=3)


def test_value_relation_is_zero_for_equal_values_and_invariant_to_rotations_within_a_head(mask):
    v = _hidden(0)[0]
    assert value_relation_loss(v, v, mask, 2).item() == pytest.approx(0.0, abs=1e-6)
    # V V^T is unchanged by an orthogonal map of each relation head's coordinates.
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(3)))
    rotated = torch.cat([v[..., :4] @ q, v[..., 4:] @ q], dim=-1)
    assert value_relation_loss(rotated, v, mask, 2).item() == pytest.approx(0.0, abs=1e-5)
    assert value_relation_loss(_hidden(1)[0], v, mask, 2).item() > 1e-3


def test_value_relation_handles_different_widths_and_ignores_padding(mask):
    teacher = _hidden(0, width=12)[0]
    student = _hidden(1, width=6)[0].requires_grad_(True)  # fewer heads: 3 relation heads of 2 vs of 4
    loss = value_relation_loss(student, teacher, mask, 3)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    # Padded positions get no gradient and their content does not move the loss.
    assert (student.grad[mask == 0] == 0).all()
    noisy = student.detach().masked_fill(mask[:, :, None] == 0, 50.0)
    assert value_relation_loss(noisy, teacher, mask, 3).item() == pytest.approx(loss.item(), rel=1e-5)


# ---- next-token losses computed a slice of positions at a time ----


@pytest.mark.parametrize("kind", ["forward", "reverse", "skew", "skew-reverse"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_chunked_next_token_loss_has_the_value_and_gradient_of_the_direct_one(monkeypatch, kind, alpha):
    from compress import losses

    g = torch.Generator().manual_seed(1)
    student = (torch.randn(3, 7, 50, generator=g) * 2).requires_grad_()
    teacher = torch.randn(3, 7, 50, generator=g) * 2
    ids = torch.randint(0, 50, (3, 7), generator=g)
    direct = losses.next_token_distillation_loss(
        student, teacher, ids, 2.0, alpha, kind, 0.2 if "skew" in kind else 0.1
    )
    (g_direct,) = torch.autograd.grad(direct * 3.0, student)
    # every batch chunked, 4 positions (of 21) per slice: the slices do not align with the blocks
    monkeypatch.setattr(losses, "CHUNK_ABOVE_ELEMENTS", 0)
    monkeypatch.setattr(losses, "LOSS_CHUNK_ELEMENTS", 4 * 50)
    chunked = losses.next_token_distillation_loss(
        student, teacher, ids, 2.0, alpha, kind, 0.2 if "skew" in kind else 0.1
    )
    (g_chunked,) = torch.autograd.grad(chunked * 3.0, student)
    torch.testing.assert_close(chunked, direct, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_chunked, g_direct, rtol=1e-5, atol=1e-7)


def test_chunked_cross_entropy_matches_and_needs_no_gradient(monkeypatch):
    from compress import losses

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 9, 30, generator=g).requires_grad_()
    ids = torch.randint(0, 30, (2, 9), generator=g)
    direct = losses.next_token_loss(logits, ids)
    (g_direct,) = torch.autograd.grad(direct, logits)
    monkeypatch.setattr(losses, "CHUNK_ABOVE_ELEMENTS", 0)
    monkeypatch.setattr(losses, "LOSS_CHUNK_ELEMENTS", 5 * 30)
    chunked = losses.next_token_loss(logits, ids)
    (g_chunked,) = torch.autograd.grad(chunked, logits)
    torch.testing.assert_close(chunked, direct, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_chunked, g_direct, rtol=1e-5, atol=1e-7)
    assert g_chunked[:, -1].abs().max() == 0  # the last position predicts nothing
    with torch.no_grad():  # evaluation: a value, no gradient tensor built
        value = losses.next_token_loss(logits, ids)
    assert not value.requires_grad
    torch.testing.assert_close(value, direct.detach(), rtol=1e-5, atol=1e-6)


def test_chunked_loss_rejects_an_unknown_divergence(monkeypatch):
    from compress import losses

    monkeypatch.setattr(losses, "CHUNK_ABOVE_ELEMENTS", 0)
    x = torch.zeros(1, 4, 8)
    with pytest.raises(ValueError, match="kind must be one of"):
        losses.next_token_distillation_loss(x, x, torch.zeros(1, 4, dtype=torch.long), 1.0, 0.5, "sideways")

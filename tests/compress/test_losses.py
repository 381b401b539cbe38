"""Distillation losses: properties of the pure functions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compress.losses import distillation_loss, soft_target_loss

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

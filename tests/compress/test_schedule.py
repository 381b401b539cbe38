"""The cubic sparsity schedule (pure) and the callback that follows it during training."""

from __future__ import annotations

import pytest
from transformers import TrainerControl, TrainerState

from compress.schedule import GradualPruningCallback, cubic_sparsity, pruning_steps, schedule_window


def test_cubic_endpoints_and_clamping():
    kw = dict(start_step=10, end_step=50, final=0.8, initial=0.1)
    assert cubic_sparsity(10, **kw) == 0.1
    assert cubic_sparsity(50, **kw) == 0.8
    assert cubic_sparsity(-5, **kw) == cubic_sparsity(0, **kw) == 0.1  # before the start: initial
    assert cubic_sparsity(51, **kw) == cubic_sparsity(10_000, **kw) == 0.8  # after the end: final


def test_cubic_matches_the_formula():
    # s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))^3; halfway, (1/2)^3 = 1/8 of the gap is left.
    assert cubic_sparsity(30, start_step=10, end_step=50, final=0.8, initial=0.0) == pytest.approx(0.8 * 7 / 8)
    assert cubic_sparsity(20, start_step=10, end_step=50, final=0.5, initial=0.1) == pytest.approx(
        0.5 + (0.1 - 0.5) * 0.75**3
    )


def test_cubic_is_monotone_and_front_loaded():
    values = [cubic_sparsity(t, start_step=0, end_step=100, final=0.9) for t in range(101)]
    steps = [b - a for a, b in zip(values, values[1:], strict=False)]
    assert all(d >= 0 for d in steps)  # never loosens
    assert all(b <= a + 1e-12 for a, b in zip(steps, steps[1:], strict=False))  # fast first, then slower
    assert values[50] > 0.9 / 2  # more than half of the target by half-time


def test_cubic_jump_when_start_equals_end():
    assert cubic_sparsity(4, start_step=5, end_step=5, final=0.5) == 0.0
    assert cubic_sparsity(5, start_step=5, end_step=5, final=0.5) == 0.5
    with pytest.raises(ValueError, match="before start_step"):
        cubic_sparsity(5, start_step=6, end_step=5, final=0.5)


def test_window_and_steps():
    assert schedule_window(100, 0.1, 0.75) == (10, 75)
    assert schedule_window(3, 0.0, 0.0) == (0, 1)  # the target is always reached inside training
    assert pruning_steps(10, 75, 20) == [10, 30, 50, 70, 75]
    assert pruning_steps(0, 1, 5) == [0, 1]
    with pytest.raises(ValueError):
        schedule_window(100, 0.8, 0.5)


class _RecordingPruner:
    def __init__(self):
        self.levels: list[float] = []

    def prune_to_(self, model, level):
        self.levels.append(level)


def test_callback_follows_the_schedule_and_ends_at_the_target():
    pruner = _RecordingPruner()
    cb = GradualPruningCallback(pruner, start=0.2, end=0.6, every=3)
    state, control = TrainerState(max_steps=20), TrainerControl()
    cb.on_train_begin(None, state, control, model=None)
    for step in range(1, 21):
        state.global_step = step
        cb.on_step_end(None, state, control, model=None)
    cb.on_train_end(None, state, control, model=None)
    # Window 4..12; updates at 4 (still 0: skipped), 7, 10 and 12 (the target).
    assert [s for s, _ in cb.history] == [0, 7, 10, 12]
    assert cb.history[-1][1] == 1.0
    assert pruner.levels == [lvl for _, lvl in cb.history]
    assert pruner.levels == sorted(pruner.levels)
    assert pruner.levels[1] == pytest.approx(cubic_sparsity(7, start_step=4, end_step=12, final=1.0))


def test_callback_reaches_the_target_when_training_stops_early():
    pruner = _RecordingPruner()
    cb = GradualPruningCallback(pruner, start=0.0, end=1.0, every=1)
    state, control = TrainerState(max_steps=10), TrainerControl()
    cb.on_train_begin(None, state, control, model=None)
    for step in range(1, 4):
        state.global_step = step
        cb.on_step_end(None, state, control, model=None)
    cb.on_train_end(None, state, control, model=None)
    assert pruner.levels[-1] == 1.0 and pruner.levels == sorted(pruner.levels)

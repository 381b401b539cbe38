"""Gradual pruning: the cubic sparsity schedule of Zhu & Gupta (2017) and the Trainer callback that follows it.

The schedule functions are pure. The callback knows nothing about what is pruned: it asks a `Pruner`
(unstructured weights, or attention heads and FFN neurons) to tighten its masks to a level in [0, 1], the
share of the pruner's final targets reached so far.
"""

from __future__ import annotations

from typing import Protocol

from transformers import TrainerCallback


def cubic_sparsity(step: float, *, start_step: float, end_step: float, final: float, initial: float = 0.0) -> float:
    """Sparsity at `step` under the cubic schedule of Zhu & Gupta (2017), "To prune, or not to prune".

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3 for t0 <= t <= t0 + n * dt, where t0 = `start_step`
    and t0 + n * dt = `end_step`; s_i before the start, s_f after the end. Pruning is fast at first, while
    redundant weights abound, and slows as the target nears.

    Args:
        step: the training step t (any real number; clamped outside [start_step, end_step]).
        start_step: t0, where the schedule leaves `initial`.
        end_step: where it reaches `final`; equal to `start_step` means a jump to `final` at t0.
        final: s_f.
        initial: s_i.

    Returns:
        The sparsity s_t.

    Raises:
        ValueError: `end_step` before `start_step`.
    """
    if end_step < start_step:
        raise ValueError(f"end_step {end_step} is before start_step {start_step}")
    if step >= end_step:
        return final
    if step <= start_step:
        return initial
    remaining = 1.0 - (step - start_step) / (end_step - start_step)
    return final + (initial - final) * remaining**3


def schedule_window(total_steps: int, start: float, end: float) -> tuple[int, int]:
    """The first and last pruning step for a schedule running from fraction `start` to `end` of training.

    Steps count optimizer updates from 1 to `total_steps`; the last pruning step is at least 1, so a
    schedule always reaches its target inside training.

    Raises:
        ValueError: fractions outside 0 <= start <= end <= 1, or no steps.
    """
    if not 0 <= start <= end <= 1:
        raise ValueError(f"need 0 <= start <= end <= 1, got start={start}, end={end}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    last = max(1, round(end * total_steps))
    first = min(round(start * total_steps), last)
    return first, last


def pruning_steps(first: int, last: int, every: int) -> list[int]:
    """The steps at which masks are recomputed: every `every` steps from `first`, and always `last`."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    return sorted({*range(first, last, every), last})


class Pruner(Protocol):
    """What the callback drives: masks tightened to a share `level` in [0, 1] of the final targets."""

    def prune_to_(self, model, level: float) -> None: ...


class GradualPruningCallback(TrainerCallback):
    """Tighten a pruner's masks on the cubic schedule while the Trainer fine-tunes the masked model.

    At the start of training the masks are installed at the schedule's initial level (0: all ones) so that
    the optimizer trains the reparametrised weights from the first step; at each pruning step the pruner
    recomputes importance on the current masked weights and tightens to the scheduled level; when training
    ends the final targets are guaranteed (level 1), whatever the step rounding did.

    Args:
        pruner: tightens masks to a level; see `compress.masks.UnstructuredPruner` and
            `compress.structured.StructuredPruner`.
        start: fraction of training at which pruning starts.
        end: fraction of training at which the final targets are reached (< 1 leaves steps to recover).
        every: steps between two mask updates.

    Attributes:
        history: (step, level) of every mask update, in order.
    """

    def __init__(self, pruner: Pruner, *, start: float = 0.0, end: float = 0.75, every: int = 10):
        schedule_window(1, start, end)  # validate now, not at the first step
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.pruner, self.start, self.end, self.every = pruner, start, end, every
        self.history: list[tuple[int, float]] = []
        self._window = (0, 0)
        self._steps: set[int] = set()

    def _tighten(self, model, step: int, level: float) -> None:
        if self.history and level <= self.history[-1][1]:
            return
        self.pruner.prune_to_(model, level)
        self.history.append((step, level))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._window = schedule_window(state.max_steps, self.start, self.end)
        self._steps = set(pruning_steps(*self._window, self.every))
        self.history = []
        self.pruner.prune_to_(model, 0.0)  # masks in place (all ones) before the first optimizer step
        self.history.append((0, 0.0))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step in self._steps:
            first, last = self._window
            self._tighten(model, step, cubic_sparsity(step, start_step=first, end_step=last, final=1.0))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._tighten(model, state.global_step, 1.0)

    def finish(self, model) -> None:
        """Bring the masks to their final targets where training did not (it never ran: no examples)."""
        if not self.history or self.history[-1][1] < 1.0:
            self.pruner.prune_to_(model, 1.0)

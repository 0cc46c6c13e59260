"""A run's length and its clock: epochs, optimizer steps, or a time budget that the steps are fitted to.

A run with ``train.time_budget`` measures itself: after its first steps, and again after every
validation, ``fit_steps`` counts how many optimizer steps still fit in what is left of the budget,
once the validations still to come and the final report are set aside. The learning-rate schedule
(warm-up, then poly or cosine decay) follows that count, so it reaches its end when the budget
does; the loop also stops outright when the clock runs out first.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class Clock:
    """A run's wall-clock seconds: those of its earlier sessions (before a resume) plus this one's."""

    before: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return self.before + time.monotonic() - self.started


def fit_steps(
    budget: float,
    *,
    elapsed: float,
    step: int,
    step_seconds: float,
    validation_seconds: float,
    eval_steps: int,
    final_seconds: float,
) -> int:
    """The run's total optimizer steps: those done plus those that still fit in the budget.

    Args:
        budget: the whole run's seconds (``train.time_budget``).
        elapsed: seconds spent so far (set-up, steps and validations).
        step: steps done.
        step_seconds: measured seconds per step (data loading and saving included).
        validation_seconds: seconds one validation takes (measured, or estimated before the first).
        eval_steps: steps between validations.
        final_seconds: what the end of the run needs (the last validation and the report).
    """
    remaining = budget - elapsed - final_seconds
    per_step = step_seconds + validation_seconds / max(eval_steps, 1)
    return step + max(0, math.floor(remaining / max(per_step, 1e-9)))


def describe_seconds(seconds: float) -> str:
    """``95`` → ``"1 min 35 s"``; ``4000`` → ``"1 h 06 min"`` (whole minutes, rounded down)."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"

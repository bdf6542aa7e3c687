"""When gradient updates happen: the one schedule that the trainer follows and ``Config`` checks a run against.

After the step counter reaches ``max(warmup_steps, batch_size)``, every environment step adds ``updates_per_step``
to a credit, and the whole updates in the credit are due (``updates_per_step`` = 0.25: one update every 4 steps;
= 2: two per step). The credit is part of a checkpoint, so a resumed run keeps the same rhythm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class _ScheduleFields(Protocol):  # what the schedule reads of a Config (config.py imports this module)
    warmup_steps: int
    batch_size: int
    updates_per_step: float


@dataclass
class UpdateSchedule:
    """The gradient updates owed after each environment step."""

    start: int
    """The first step counter at which updates accrue: ``max(warmup_steps, batch_size)``."""
    per_step: float
    """``updates_per_step``."""
    credit: float = 0.0
    """The fraction of an update accrued and not yet made."""

    @classmethod
    def of(cls, config: _ScheduleFields) -> UpdateSchedule:
        """The schedule of a run's config, with no credit yet."""
        # Updates need a full batch in the replay, and none run during the random warm-up.
        return cls(start=max(config.warmup_steps, config.batch_size), per_step=config.updates_per_step)

    def due(self, step: int) -> int:
        """How many updates are due now that the step counter is ``step``; call it once per environment step."""
        if step < self.start:
            return 0
        self.credit += self.per_step
        n = int(self.credit)
        self.credit -= n
        return n

    def first_update(self, total_steps: int) -> int | None:
        """The step of the first update of a fresh run of ``total_steps`` steps (counted from 1), or None when the
        run ends before it. Adds the credit up exactly as :meth:`due` does, float rounding included."""
        fresh = UpdateSchedule(self.start, self.per_step)
        return next((step for step in range(max(self.start, 1), total_steps + 1) if fresh.due(step) > 0), None)

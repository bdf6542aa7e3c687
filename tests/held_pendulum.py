"""``HeldPendulum-v0``: Pendulum-v1 whose environment stands still at a known step while a file exists, so a test can
stop a trial running in another process at that step, whatever the machine's load.

Used as ``held_pendulum:HeldPendulum-v0`` (``gym.make`` imports this module first), with ``tests/`` on the path of
every process that builds it. The file is named by the ``HELD_PENDULUM_FILE`` environment variable."""

from __future__ import annotations

import os
import time

import gymnasium as gym
from gymnasium.envs.classic_control.pendulum import PendulumEnv

HOLD_FILE = "HELD_PENDULUM_FILE"
HOLD_AT = 700  #: the step of an environment instance that waits (counted over its episodes)


class HeldPendulum(PendulumEnv):
    """Pendulum-v1 whose ``HOLD_AT``-th step waits for as long as the file ``$HELD_PENDULUM_FILE`` exists."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        hold = os.environ.get(HOLD_FILE)
        while hold and self.steps == HOLD_AT and os.path.exists(hold):
            time.sleep(0.05)
        return super().step(action)


gym.register("HeldPendulum-v0", entry_point=HeldPendulum, max_episode_steps=200)

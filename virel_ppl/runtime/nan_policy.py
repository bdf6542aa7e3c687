"""NaN and inf in a run: one policy, checked here.

A non-finite number stops the run with a ``ConfigError`` at the first place it can be seen, naming where it came
from and what to change; nothing non-finite is stored in the replay, logged, evaluated or saved. The places:

- the environment's reward and observation, at every training step (:func:`check_env_step`) and evaluation step
  (:func:`check_eval_env_step`): a broken environment, not a diverged agent;
- the guide's mode action during evaluation (:func:`check_mode_action`);
- the agent's update statistics: the agent records the first non-finite update on the device at every update (no
  host sync); the trainer reads that record before it logs and before it checkpoints (:func:`check_updates`);
- the agent's state, before a checkpoint is written (:func:`check_state`): the last good checkpoint is kept.

One sign of divergence comes before any NaN: the critic's loss growing a thousandfold. It warns, once, and the run
goes on (:class:`LossGrowthWatch`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Protocol

import numpy as np
import torch

from virel_ppl.config import ConfigError


class _RecordsNonFinite(Protocol):  # the part of VirelAgent read here
    def first_nonfinite_step(self) -> int | None: ...


def check_env_step(env_id: str, reward: float, obs: np.ndarray, step: int) -> None:
    """Raise ``ConfigError`` when training step ``step`` of ``env_id`` returned a NaN/inf reward or observation."""
    if not (math.isfinite(reward) and np.isfinite(obs).all()):
        raise _env_error(env_id, reward, obs, f"step {step}")


def check_eval_env_step(
    env_id: str, rewards: np.ndarray, obs: np.ndarray, live: np.ndarray, step: int, seed: int
) -> None:
    """:func:`check_env_step` for evaluation step ``step`` of a vector env reset with ``seed``, on the copies where
    ``live`` is True; the error names the first bad copy as its episode."""
    finite = np.isfinite(rewards) & np.isfinite(obs).reshape(len(rewards), -1).all(axis=1)
    bad = np.flatnonzero(live & ~finite)
    if bad.size:
        copy = int(bad[0])
        raise _env_error(env_id, rewards[copy], obs[copy], f"evaluation step {step} (seed {seed}, episode {copy})")


def _env_error(env_id: str, reward: float, obs: np.ndarray, where: str) -> ConfigError:
    return ConfigError(
        f"{env_id} returned {_non_finite(reward, obs)} at {where}; check the environment or its wrappers."
    )


def _non_finite(reward: float, obs: np.ndarray) -> str:
    """What was not finite in one env step: the reward and/or which observation entries (with their values)."""
    parts = [f"a non-finite reward ({float(reward)})"] if not math.isfinite(float(reward)) else []
    bad = np.flatnonzero(~np.isfinite(np.asarray(obs, dtype=float).ravel()))
    if bad.size:
        shown = ", ".join(f"[{i}] = {np.asarray(obs).ravel()[i]}" for i in bad[:4]) + (", ..." if bad.size > 4 else "")
        parts.append(f"a non-finite observation (entr{'y' if bad.size == 1 else 'ies'} {shown})")
    return " and ".join(parts)


def check_mode_action(action: np.ndarray, live: np.ndarray, step: int, seed: int) -> None:
    """Raise ``ConfigError`` when the guide's mode action at evaluation step ``step`` (envs reset with ``seed``) is
    NaN/inf in a copy where ``live`` is True."""
    if not np.isfinite(action[live]).all():
        raise ConfigError(
            f"The guide's mode action is not finite at evaluation step {step} (seed {seed}): the networks diverged; "
            "lower --policy-lr, --critic-lr or --reward-scale."
        )


def check_updates(agent: _RecordsNonFinite, step: int) -> None:
    """Raise ``ConfigError`` naming the first update whose statistics were NaN/inf (one host sync: the agent keeps
    that record on the device at every update); ``step`` is where the trainer looked."""
    bad = agent.first_nonfinite_step()
    if bad is not None:
        raise ConfigError(
            f"The critic diverged: training statistics became NaN/inf at step {bad} (seen at step {step}; "
            f"no checkpoint was written from then on). Lower --critic-lr or --policy-lr, or start a new run "
            "with a smaller --reward-scale: a --resume cannot change it, as the replay buffer already holds "
            "rewards multiplied by the old scale."
        )


def check_state(state: Any, step: int, where: str = "agent") -> None:
    """Raise ``ConfigError`` when a floating tensor in ``state`` (nested dicts/lists, e.g. parameters and optimiser
    states) holds NaN or inf: a checkpoint is never written from a diverged agent."""
    bad = _first_non_finite(state, where)
    if bad is not None:
        raise ConfigError(
            f"Non-finite values in {bad} at step {step}: no checkpoint is written from a diverged agent (the last "
            "good one is kept). The critic diverged: lower --critic-lr or --reward-scale."
        )


def _first_non_finite(obj: Any, where: str) -> str | None:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            return None if bool(torch.isfinite(obj).all()) else where
        return None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else where
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = _first_non_finite(value, f"{where}[{key!r}]" if not isinstance(key, str) else f"{where}.{key}")
        if found is not None:
            return found
    return None


class LossGrowthWatch:
    """Warns once when the critic's logged loss grows more than 1000-fold over its level when logging began (the
    largest of the first three logged values): a critic diverging before any NaN."""

    def __init__(self) -> None:
        self.early: list[float] = []
        self.warned = False

    def see(self, q_loss: float, step: int) -> None:
        if len(self.early) < 3:
            self.early.append(q_loss)
        elif not self.warned and q_loss > 1000 * max(*self.early, 1e-6):
            self.warned = True
            warnings.warn(
                f"The critic's loss grew more than 1000-fold: {q_loss:.3g} at step {step}, against "
                f"{max(self.early):.3g} when logging began. The critic may be diverging: consider a "
                "lower --critic-lr or --policy-lr, or a new run with a smaller --reward-scale.",
                RuntimeWarning,
                stacklevel=1,
            )

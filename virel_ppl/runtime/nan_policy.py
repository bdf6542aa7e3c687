"""NaN and inf in a run: one policy, checked here.

A non-finite number stops the run with a ``ConfigError`` at the first place it can be seen, naming where it came
from and what to change; nothing non-finite is stored in the replay, logged, evaluated or saved. The places:

- the policy's action, before every training step (:func:`check_action`): a non-finite action is the agent's, and the
  error names the part that diverged (:func:`diverged_parts`), so the environment is never blamed for it;
- the environment's reward and observation, at every training step (:func:`check_env_step`) and evaluation step
  (:func:`check_eval_env_step`): a broken environment, not a diverged agent;
- the variant's own parameters kept as logarithms (SAC's log α, MPO's log η and KL multiplier), after every update
  (:func:`check_variant`): one whose exponential underflows to 0 or overflows has diverged though it is finite;
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


#: What a variant's parameter kept as a logarithm is, in words, and the symbol of its exponential.
LOG_PARAMETERS = {
    "log_alpha": ("The temperature α", "α"),
    "log_eta": ("MPO's dual η", "η"),
    "log_lagrange": ("MPO's KL multiplier", "the multiplier"),
}
_CRITIC_ADVICE = (
    "Lower --critic-lr or --policy-lr, or start a new run with a smaller --reward-scale: a --resume cannot change it, "
    "as the replay buffer already holds rewards multiplied by the old scale."
)
_ADVICE = {
    "variant": "Lower --dual-lr, the learning rate of SAC's α and MPO's duals.",
    "critic": _CRITIC_ADVICE,
    "policy": "Lower --policy-lr (or --critic-lr: the policy follows the critic).",
}


class _Agent(_RecordsNonFinite, Protocol):  # the part of VirelAgent read when blaming a divergence
    def state_dict(self) -> dict: ...


def _log_parameters(state: Any, where: str = "") -> list[tuple[str, torch.Tensor]]:
    """The 0-d tensors named ``log_*`` in a variant's state (a module's flat ``state_dict`` or nested dicts), with
    their paths."""
    found = []
    for key, value in state.items() if isinstance(state, dict) else ():
        path = f"{where}.{key}" if where else str(key)
        if isinstance(value, dict):
            found += _log_parameters(value, path)
        elif isinstance(value, torch.Tensor) and value.dim() == 0 and path.rsplit(".", 1)[-1].startswith("log_"):
            found.append((path, value))
    return found


def _bad_log_parameters(state: Any) -> list[tuple[str, str]]:
    """Each log-parameter of a variant's state whose exponential is 0, inf or NaN: (what it is, its values)."""
    found = _log_parameters(state)
    if not found:
        return []
    values = torch.stack([t.detach().float() for _, t in found]).cpu()  # one read for all of them
    bad = []
    for (path, _), v in zip(found, values):
        e = v.exp()
        if not (bool(torch.isfinite(e)) and float(e) > 0):
            name = path.rsplit(".", 1)[-1]
            what, symbol = LOG_PARAMETERS.get(name, (f"The variant's {path}", f"exp({name})"))
            bad.append((what, f"{name} = {float(v):.3g}, so {symbol} = {float(e):.3g}"))
    return bad


def diverged_parts(agent_state: dict) -> list[tuple[str, str]]:
    """The parts of an agent's ``state_dict()`` that diverged, as ``(kind, description)`` in the order they are
    blamed: the variant's own state (``kind`` "variant": α, MPO's duals, π_old; a log-parameter whose exponential is
    0 or inf counts), then the critic, then the policy (with their optimisers' states)."""
    parts = []
    extras = agent_state.get("variant", agent_state.get("extras", {}))  # "extras": the layout before torch modules
    for what, values in _bad_log_parameters(extras):
        parts.append(("variant", f"{what} ({values})"))
    bad = _first_non_finite(extras, "the variant's state")
    if bad is not None and not parts:
        parts.append(("variant", f"non-finite values in {bad}"))
    for kind, keys in (("critic", ("critic", "critic_optim")), ("policy", ("policy", "policy_optim"))):
        bad = next((b for k in keys if (b := _first_non_finite(agent_state.get(k, {}), f"agent.{k}"))), None)
        if bad is not None:
            parts.append((kind, f"non-finite values in {bad}"))
    return parts


def _blame(parts: list[tuple[str, str]], default: str = "critic") -> tuple[str, str, str]:
    """(who diverged, in words; what else is non-finite; the advice) for :func:`diverged_parts`' output."""
    kind, text = parts[0] if parts else (default, "")
    who = {"critic": "The critic", "policy": "The policy"}.get(kind) or text.split(" (")[0]
    if kind == "variant" and not text.startswith("The "):
        who = "The variant's state"
    others = "; ".join(t for _, t in parts)
    return who, others, _ADVICE[kind]


def check_action(action: np.ndarray, agent: _Agent, step: int) -> None:
    """Raise ``ConfigError`` when the policy's action for training step ``step`` is NaN/inf, before the environment
    sees it: the agent diverged (the error names which part, see :func:`diverged_parts`), not the environment."""
    if np.isfinite(action).all():
        return
    parts = diverged_parts(agent.state_dict())
    who, others, advice = _blame(parts, default="policy")
    first = agent.first_nonfinite_step()
    since = f"; training statistics were NaN/inf from the update at step {first} on" if first is not None else ""
    raise ConfigError(
        f"{who} diverged by step {step}: the policy's action at step {step} is not finite ({others or 'its output'}"
        f"{since}), so the environment never saw it. {advice}"
    )


def check_variant(variant_state: dict, step: int) -> None:
    """Raise ``ConfigError`` when, after the update of step ``step``, a log-parameter of the variant (SAC's log α,
    MPO's log η and KL multiplier) has an exponential of 0 or inf: the temperature or a dual diverged, though the
    number itself is finite (its next use would make the policy NaN)."""
    bad = _bad_log_parameters(variant_state)
    if bad:
        raise ConfigError(
            f"{bad[0][0]} diverged at step {step}: {'; '.join(v for _, v in bad)} after that step's update (finite, "
            f"but the next actions would be NaN; no checkpoint was written from then on). {_ADVICE['variant']}"
        )


def check_updates(agent: _Agent, step: int) -> None:
    """Raise ``ConfigError`` naming the first update whose statistics were NaN/inf (one host sync: the agent keeps
    that record on the device at every update) and the part of the agent that diverged; ``step`` is where the
    trainer looked."""
    bad = agent.first_nonfinite_step()
    if bad is not None:
        who, others, advice = _blame(diverged_parts(agent.state_dict()))
        raise ConfigError(
            f"{who} diverged: training statistics became NaN/inf at step {bad} (seen at step {step}; "
            f"no checkpoint was written from then on{'; ' + others if others else ''}). {advice}"
        )


def check_state(state: Any, step: int, where: str = "agent") -> None:
    """Raise ``ConfigError`` when a floating tensor in ``state`` (nested dicts/lists, e.g. parameters and optimiser
    states) holds NaN or inf: a checkpoint is never written from a diverged agent."""
    bad = _first_non_finite(state, where)
    if bad is not None:
        parts = diverged_parts(state) if isinstance(state, dict) else []
        who, _, advice = _blame(parts)
        raise ConfigError(
            f"Non-finite values in {bad} at step {step}: no checkpoint is written from a diverged agent (the last "
            f"good one is kept). {who} diverged: {advice[0].lower() + advice[1:]}"
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

"""Gymnasium environments: construction with clear errors, and saving/restoring their exact state."""

from __future__ import annotations

import difflib
import pickle
import sys

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from virel_ppl.actions import ActionBox, DiscreteActions
from virel_ppl.config import ConfigError

_ONCE = ("settotalmass",)  # MuJoCo ≥ 3.4 warns at every compile of Gymnasium's HalfCheetah/... XML: say it once
_shown_once: set[str] = set()


def _mujoco_warning(message: str) -> None:
    """MuJoCo's warning callback: print as MuJoCo does (stderr), but each ``_ONCE`` warning once per process."""
    key = next((k for k in _ONCE if k in message), None)
    if key is not None:
        if key in _shown_once:
            return
        _shown_once.add(key)
    sys.stderr.write(f"WARNING: {message}\n\n")


if mujoco.get_mju_user_warning() is None:  # keep a handler someone else installed
    mujoco.set_mju_user_warning(_mujoco_warning)


def check_env_id(env_id: str) -> None:
    """Raise ``ValueError`` for an unknown id, suggesting registered ids that are close."""
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"Unknown Gymnasium environment {env_id!r}.{hint}")


def make_env(env_id: str, seed: int | None = None, **kwargs) -> gym.Env:
    """``gym.make(env_id)`` with episode statistics, after checking the id and the spaces.

    A ``Discrete`` action space is seen through :class:`OneHotActions` (one-hot action vectors).
    Raises ``ValueError`` for an unknown id or a non-flat observation, ``TypeError`` for another action space.
    """
    check_env_id(env_id)
    env = gym.wrappers.RecordEpisodeStatistics(one_hot_if_discrete(gym.make(env_id, **kwargs)))
    check_spaces(env)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def check_spaces(env: gym.Env) -> ActionBox | DiscreteActions:
    """Validate the observation (flat Box) and action (bounded Box, or one-hot) spaces; return the action set."""
    obs_space = env.observation_space
    if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
        raise ConfigError(
            f"virel_ppl expects a flat Box observation space, got {obs_space!r}; "
            "flatten it with gymnasium.wrappers.FlattenObservation."
        )
    if isinstance(env.action_space, OneHot):
        return DiscreteActions(env.action_space.n)
    return ActionBox.from_space(env.action_space)


def make_eval_envs(env_id: str, num_envs: int) -> gym.vector.VectorEnv:
    """``num_envs`` copies of the task stepped together, for parallel evaluation episodes."""
    check_env_id(env_id)
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync", wrappers=[one_hot_if_discrete])


class OneHot(spaces.Box):
    """The actions of a ``Discrete(n)`` space as one-hot float vectors; ``sample()`` draws a uniform one-hot."""

    def __init__(self, n: int, seed: int | None = None) -> None:
        super().__init__(0.0, 1.0, (int(n),), np.float32, seed=seed)
        self.n = int(n)

    def sample(self, mask=None, probability=None) -> np.ndarray:
        out = np.zeros(self.n, dtype=np.float32)
        out[self.np_random.integers(self.n)] = 1.0
        return out

    def __repr__(self) -> str:
        return f"OneHot({self.n})"


class OneHotActions(gym.ActionWrapper):
    """A ``Discrete(n)`` env that takes one-hot action vectors (argmax ↦ action), so the replay buffer, the
    critic Q(s, one_hot(a)) and the trainer treat discrete actions like any other action vector."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.start = int(env.action_space.start)
        self.action_space = OneHot(env.action_space.n)

    def action(self, action: np.ndarray) -> int:
        return self.start + int(np.argmax(action))


def one_hot_if_discrete(env: gym.Env) -> gym.Env:
    """Wrap ``env`` with :class:`OneHotActions` when its action space is ``Discrete``; otherwise return it."""
    return OneHotActions(env) if isinstance(env.action_space, spaces.Discrete) else env


_MJ_STATE = mujoco.mjtState.mjSTATE_INTEGRATION  # everything mj_step depends on

# Simulator handles are saved through MuJoCo's own state API; the wrapped env is kept by reference.
_NOT_COPIED = {"env", "model", "data", "mujoco_renderer", "_ezpickle_args", "_ezpickle_kwargs"}


def _layers(env: gym.Env):
    """The env and every env it wraps, outermost first."""
    yield env
    while hasattr(env, "env"):
        env = env.env
        yield env


def get_env_state(env: gym.Env) -> dict:
    """Snapshot an env mid-episode: every wrapper's attributes (RNGs, time limit, episode statistics) and,
    for MuJoCo tasks, the full physics state from ``mj_getState``.

    Pickling the env itself is not enough: MuJoCo envs pickle as their constructor arguments (EzPickle),
    so they would come back freshly built.
    """
    layers = []
    for layer in _layers(env):
        saved = {}
        for name, value in vars(layer).items():
            if name in _NOT_COPIED:
                continue
            try:
                saved[name] = pickle.dumps(value)
            except (pickle.PicklingError, TypeError, AttributeError):
                continue  # e.g. render handles: not part of the dynamics
        layers.append(saved)
    physics = None
    base = env.unwrapped
    if hasattr(base, "data") and hasattr(base, "model"):
        physics = np.empty(mujoco.mj_stateSize(base.model, _MJ_STATE))
        mujoco.mj_getState(base.model, base.data, physics, _MJ_STATE)
    return {"layers": layers, "physics": physics}


def set_env_state(env: gym.Env, state: dict) -> None:
    """Put ``env`` (built by the same :func:`make_env` call) into a state from :func:`get_env_state`."""
    layers = list(_layers(env))
    if len(layers) != len(state["layers"]):
        raise ValueError("The saved environment has a different wrapper stack; was it made with another config?")
    for layer, saved in zip(layers, state["layers"]):
        for name, blob in saved.items():
            setattr(layer, name, pickle.loads(blob))
    if state["physics"] is not None:
        base = env.unwrapped
        mujoco.mj_setState(base.model, base.data, state["physics"], _MJ_STATE)
        mujoco.mj_forward(base.model, base.data)

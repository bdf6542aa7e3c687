"""Gymnasium environments: construction with clear errors, and saving/restoring their exact state."""

from __future__ import annotations

import functools
import importlib
import pickle
import sys
import warnings

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import parse_env_id

from virel_ppl.config import ConfigError, SpaceError, did_you_mean
from virel_ppl.inference.actions import ActionBox, DiscreteActions

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
    """Raise ``ConfigError`` for an unknown id, suggesting close ids that can be built here.

    ``module:EnvId`` first imports ``module`` (which registers ``EnvId``), as ``gym.make`` does.
    """
    if ":" in env_id:
        module, env_id = env_id.split(":", 1)
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            raise ConfigError(
                f"--env {module}:{env_id}: cannot import {module!r} ({err}); it should register {env_id}."
            ) from None
    if env_id in gym.registry:
        return
    hint = did_you_mean(env_id, gym.registry, cutoff=0.5, keep=lambda c: build_error(c) is None)
    raise ConfigError(f"Unknown Gymnasium environment {env_id!r}.{hint}")


@functools.cache
def build_error(env_id: str) -> Exception | None:
    """Why ``gym.make(env_id)`` fails here (e.g. a missing dependency), or None when it builds.

    Builds the env once per id (cached), with its warnings silenced: meant for the few ids of a hint.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gym.make(env_id).close()
    except Exception as err:  # any failure means: do not suggest it
        return err
    return None


def _missing_dependency(env_id: str, err: Exception) -> str:
    """One line for an env whose dependency is missing: the package it needs and an id that builds instead."""
    text = str(err).split(". Environment registration")[0]
    if "mujoco v2 and v3" in text or getattr(err, "name", None) == "mujoco_py":
        need = "it needs mujoco-py (MuJoCo's v2 and v3 tasks run on it; they moved to gymnasium-robotics)"
    elif "mujoco<3" in text:
        need = f"it needs mujoco<3, but mujoco {mujoco.__version__} is installed"
    elif isinstance(err, ModuleNotFoundError) and err.name:
        need = f"it needs the Python package {err.name.split('.')[0]!r} ({text})"
    else:
        need = text.rstrip(".")
    namespace, name, version = parse_env_id(env_id.split(":")[-1])
    others = sorted(
        (
            spec
            for spec in gym.registry.values()
            if (spec.namespace, spec.name) == (namespace, name) and spec.version not in (None, version)
        ),
        key=lambda spec: -spec.version,
    )
    instead = next((spec.id for spec in others if build_error(spec.id) is None), None)
    return f"Cannot build {env_id} here: {need}." + (f" Use {instead}, which builds here." if instead else "")


def _make(env_id: str, **kwargs) -> gym.Env:
    """``gym.make`` with a missing dependency reported as a ``ConfigError`` naming the package."""
    with warnings.catch_warnings(record=True) as caught:  # e.g. "out of date": shown only if the env builds
        try:
            env = gym.make(env_id, **kwargs)
        except (ImportError, gym.error.DependencyNotInstalled) as err:
            raise ConfigError(_missing_dependency(env_id, err)) from err
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return env


def make_env(env_id: str, seed: int | None = None, **kwargs) -> gym.Env:
    """``gym.make(env_id)`` with episode statistics, after checking the id and the spaces.

    A ``Discrete`` action space is seen through :class:`OneHotActions` (one-hot action vectors).
    Raises ``ConfigError`` (a ``ValueError``) for an unknown id, a missing dependency or a non-flat observation,
    ``SpaceError`` (also a ``TypeError``) for an action space it cannot use.
    """
    check_env_id(env_id)
    env = gym.wrappers.RecordEpisodeStatistics(one_hot_if_discrete(_make(env_id, **kwargs)))
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
    try:
        return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync", wrappers=[one_hot_if_discrete])
    except (ImportError, gym.error.DependencyNotInstalled) as err:
        raise ConfigError(_missing_dependency(env_id, err)) from err


class BoundedActions(gym.ActionWrapper):
    """Declare finite bounds ``[low, high]`` on an env whose ``Box`` action space is unbounded (±inf).

    VIREL's prior p(a|s) is uniform on the action box, so the box must be finite; this wrapper says which range
    of actions the policy acts in (``low``/``high``: scalars or arrays of the action shape) and clips the actions
    it passes on to it. Gymnasium's ``ClipAction`` cannot do this (it leaves the space infinite) and
    ``RescaleAction`` refuses infinite bounds. From the command line, register the wrapped env in a module of
    yours and pass ``--env yourmodule:MyTask-bounded-v0``::

        gym.register("MyTask-bounded-v0",
                     entry_point=lambda **kw: BoundedActions(gym.make("MyTask-v0", **kw), -1.0, 1.0))
    """

    def __init__(self, env: gym.Env, low: float | np.ndarray, high: float | np.ndarray) -> None:
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, spaces.Box):
            raise SpaceError(f"BoundedActions needs a Box action space, got {space!r}.")
        low = np.broadcast_to(np.asarray(low, dtype=space.dtype), space.shape)
        high = np.broadcast_to(np.asarray(high, dtype=space.dtype), space.shape)
        if not (np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all()):
            raise ConfigError(f"BoundedActions needs finite bounds with low < high, got {low} and {high}.")
        if (low < space.low).any() or (high > space.high).any():
            raise ConfigError(
                f"BoundedActions: the bounds [{low}, {high}] reach outside the env's own {space}; keep them inside."
            )
        self.action_space = spaces.Box(low, high, dtype=space.dtype)

    def action(self, action: np.ndarray) -> np.ndarray:
        return np.clip(action, self.action_space.low, self.action_space.high)


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
# What mj_step leaves from its forward pass, i.e. of the positions before its integration, and an env reads before
# its next step (Humanoid's centre of mass from xipos, Ant's torso from xpos): mj_forward after mj_setState would
# compute them from the positions after it, and the next reward would differ.
_MJ_DERIVED = ("xpos", "xipos", "xquat", "xmat", "ximat", "subtree_com", "cinert", "cvel", "cacc", "cfrc_int",
               "cfrc_ext", "qacc", "qfrc_actuator", "actuator_force", "sensordata")  # fmt: skip

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
        derived = {name: np.array(getattr(base.data, name)) for name in _MJ_DERIVED}
        return {"layers": layers, "physics": physics, "derived": derived}
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
        for name, value in state.get("derived", {}).items():  # (states saved before these were kept lack them)
            getattr(base.data, name)[...] = value

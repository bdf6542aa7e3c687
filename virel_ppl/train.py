"""The training loop: collect, M-step, E-step, target update, evaluate, log, checkpoint.

``train(config)`` runs (or, with ``resume=RUN_DIR``, continues) one run and returns its summary. A run
directory holds ``config.json``, ``train.csv``, ``eval.csv``, ``diagnostics.csv`` (ε and the guide's PSIS k̂ at
each evaluation, see ``diagnostics.py``), TensorBoard events, ``learning_curve.png`` and ``checkpoint.pt``.
Ctrl-C or SIGTERM stops at the next step boundary and writes a checkpoint from which ``--resume`` continues exactly
as if the run had not stopped (on CPU); a second Ctrl-C stops at once, without one. Checkpoint files, their rotation
and the rules of a resume live in ``checkpoints.py``.
"""

from __future__ import annotations

import gc
import json
import math
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer.elbo import ELBO
from tqdm.auto import tqdm

from virel_ppl.actions import ActionBox
from virel_ppl.agent import VirelAgent, lookup
from virel_ppl.checkpoints import (
    CHECKPOINT,
    CheckpointError,
    build_code_guide,
    check_finite,
    code_name,
    guard_run_dir,
    is_code_name,
    load_agent,
    load_agent_state,
    load_checkpoint,
    prepare_run_dir,
    resumed_config,
    save_checkpoint,
    saved_config,
    unwritable_run_dir,
)
from virel_ppl.config import Config, ConfigError
from virel_ppl.diagnostics import replay_states, training_diagnostics
from virel_ppl.envs import check_spaces, get_env_state, make_env, make_eval_envs, set_env_state
from virel_ppl.guides import GUIDES
from virel_ppl.logger import RunLogger, plot_learning_curve
from virel_ppl.replay import ReplayBuffer

__all__ = ["CHECKPOINT", "RunResult", "StoppedWithoutCheckpoint", "Trainer", "evaluate", "load_agent", "train"]
Hook = Callable[["Trainer", int], None]


@dataclass
class RunResult:
    """What a finished (or stopped) run reports."""

    run_dir: Path
    steps: int
    final_eval_return: float
    best_eval_return: float
    interrupted: bool
    signal: int | None = field(default=None)
    """The signal that stopped the run early (``signal.SIGINT`` or ``signal.SIGTERM``), None if it ran to the end."""


class StoppedWithoutCheckpoint(KeyboardInterrupt):
    """A second Ctrl-C (or SIGTERM) arrived before the run could finish its step: it stopped at once, and the
    steps since the last checkpoint are not saved."""

    def __init__(self, run_dir: Path, step: int, saved_step: int | None, signum: int = signal.SIGINT) -> None:
        self.signum = signum
        kept = (
            f"{run_dir / CHECKPOINT} from step {saved_step} is intact: --resume {run_dir} continues from there"
            if saved_step is not None
            else "no checkpoint had been written yet"
        )
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        super().__init__(f"Stopped at once at step {step} by a second {name}, without writing a checkpoint; {kept}.")


@torch.no_grad()
def evaluate(agent: VirelAgent, env_id: str, episodes: int, seed: int) -> np.ndarray:
    """Returns of ``episodes`` episodes with the guide's mode action, run side by side on a vector env.

    Raises ``ConfigError`` when ``episodes`` < 1, or when an action, reward or observation is not finite.
    """
    if episodes < 1:
        raise ConfigError(f"Evaluation needs at least one episode, got {episodes}.")
    envs = make_eval_envs(env_id, episodes)
    try:
        obs, _ = envs.reset(seed=seed)
        returns = np.zeros(episodes)
        done = np.zeros(episodes, dtype=bool)
        t = 0
        while not done.all():
            action = agent.act(torch.as_tensor(obs, dtype=torch.float32, device=agent.device), deterministic=True)
            action = action.cpu().numpy()
            if not np.isfinite(action[~done]).all():
                raise ConfigError(
                    f"The guide's mode action is not finite at evaluation step {t} (seed {seed}): the networks "
                    "diverged; lower --policy-lr, --critic-lr or --reward-scale."
                )
            obs, reward, terminated, truncated, _ = envs.step(action)
            if not (np.isfinite(reward[~done]).all() and np.isfinite(obs[~done]).all()):
                copy = int(np.flatnonzero(~done & ~(np.isfinite(reward) & np.isfinite(obs).all(axis=-1)))[0])
                raise ConfigError(
                    f"{env_id} returned {_non_finite(reward[copy], obs[copy])} at evaluation step {t} (seed {seed}, "
                    f"episode {copy}); check the environment or its wrappers."
                )
            returns += np.where(done, 0.0, reward)
            done |= terminated | truncated  # the first episode of each copy is the one that counts
            t += 1
    finally:
        envs.close()
    return returns


def _non_finite(reward: float, obs: np.ndarray) -> str:
    """What was not finite in one env step: the reward and/or which observation entries (with their values)."""
    parts = [f"a non-finite reward ({float(reward)})"] if not math.isfinite(float(reward)) else []
    bad = np.flatnonzero(~np.isfinite(np.asarray(obs, dtype=float).ravel()))
    if bad.size:
        shown = ", ".join(f"[{i}] = {np.asarray(obs).ravel()[i]}" for i in bad[:4]) + (", ..." if bad.size > 4 else "")
        parts.append(f"a non-finite observation (entr{'y' if bad.size == 1 else 'ies'} {shown})")
    return " and ".join(parts)


def _recorded_code(config: Config, policy: torch.nn.Module | None, elbo: ELBO | str | None) -> dict[str, str]:
    """What the run's config records for a guide or ELBO given as code: its class (``checkpoints.code_name``), so
    that config.json, reports and later commands see what really ran. A resume must bring classes of the same names
    (the module may be reached another way, e.g. a script imported rather than run); it keeps the recorded ones."""
    recorded = {}
    if policy is not None:
        recorded["guide"] = code_name(type(policy))
    if elbo is not None:
        recorded["elbo"] = elbo if isinstance(elbo, str) else code_name(type(elbo))
    for name, value in list(recorded.items()):
        saved = getattr(config, name)
        if is_code_name(saved):
            if saved.rpartition(":")[2] != value.rpartition(":")[2]:
                raise CheckpointError(
                    f"The run in {config.run_dir} was trained with the {name} {saved}, not {value}: resume it with "
                    "the same class."
                )
            recorded[name] = saved
    return recorded


class Trainer:
    """Holds the state of one run (env, agent, replay, counters) and advances it step by step."""

    def __init__(
        self,
        config: Config,
        policy_factory: Callable[[int, ActionBox], torch.nn.Module] | None = None,
        elbo: ELBO | None = None,
    ):
        config.validate()
        if policy_factory is None and not is_code_name(config.guide):
            lookup(GUIDES, config.guide, "guide")
        if elbo is None and is_code_name(config.elbo):
            raise CheckpointError(
                f"The run in {config.run_dir} was trained with the ELBO object {config.elbo} from code "
                "(train(elbo=...)), which the command line cannot rebuild; continue it from Python with "
                "train(resume=..., policy_factory=..., elbo=...)."
            )
        self.config = config
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        # Seed everything the run draws from; the env and replay carry their own generators.
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        pyro.set_rng_seed(config.seed)
        self.env = make_env(config.env, seed=config.seed)
        box = check_spaces(self.env).to(config.device)
        obs_dim = self.env.observation_space.shape[0]
        if policy_factory is not None:
            policy = policy_factory(obs_dim, box)
        elif is_code_name(config.guide):  # a resumed run whose guide came from code: rebuilt from its class
            policy = build_code_guide(config, obs_dim, box, config.run_dir)
        else:
            policy = None
        recorded = _recorded_code(config, policy if policy_factory is not None else None, elbo)
        self.agent = VirelAgent(obs_dim, box, config, policy=policy, elbo=elbo)  # elbo: overrides config.elbo
        self.config = replace(config, **recorded)
        self.replay = ReplayBuffer(obs_dim, box.dim, config.buffer_size, config.device, seed=config.seed)
        self.reward_scale = config.resolved_reward_scale()
        self.step = 0
        self.update_credit = 0.0
        self.episodes = 0
        self.obs, _ = self.env.reset(seed=config.seed)
        self.last_eval = float("nan")
        self.best_eval = float("-inf")
        self.stop_requested = False
        self.stop_signal: int | None = None
        self.saved_step: int | None = None  # step of the last checkpoint written or loaded
        self.saving = False
        self.keep_previous = True  # False after resuming from checkpoint.prev.pt: the latest is unreadable

    # --- checkpoints -------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "step": self.step,
            "update_credit": self.update_credit,
            "episodes": self.episodes,
            "obs": self.obs,
            "last_eval": self.last_eval,
            "best_eval": self.best_eval,
            "agent": self.agent.state_dict(),
            "replay": self.replay.state_dict(),
            "env": get_env_state(self.env),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        self.step, self.update_credit, self.episodes = (
            state["step"],
            state["update_credit"],
            state["episodes"],
        )
        self.obs, self.last_eval, self.best_eval = state["obs"], state["last_eval"], state["best_eval"]
        load_agent_state(self.agent, state["agent"], Path(self.config.run_dir or ".") / CHECKPOINT)
        self.replay.load_state_dict(state["replay"])
        set_env_state(self.env, state["env"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.saved_step = self.step

    def check_diverged(self, step: int) -> None:
        """Raise ``ConfigError`` naming the first update whose statistics were NaN/inf (one host sync: the agent keeps
        that record on the device at every update)."""
        bad = self.agent.first_nonfinite_step()
        if bad is not None:
            raise ConfigError(
                f"The critic diverged: training statistics became NaN/inf at step {bad} (seen at step {step}; "
                f"no checkpoint was written from then on). Lower --critic-lr or --policy-lr, or start a new run "
                "with a smaller --reward-scale: a --resume cannot change it, as the replay buffer already holds "
                "rewards multiplied by the old scale."
            )

    def save(self, path: Path | None = None) -> Path:
        """Write the checkpoint (default ``run_dir/checkpoint.pt``; the one it replaces is kept as
        ``checkpoint.prev.pt``). Refuses (``ConfigError``) after a non-finite update, or to write from an agent
        holding NaN or inf."""
        self.check_diverged(self.step)
        path = Path(path) if path is not None else self.config.run_dir / CHECKPOINT
        state = self.state_dict()
        check_finite(state["agent"], self.step)
        self.saving = True  # a second signal now waits for the write to finish
        try:
            save_checkpoint(state, path, keep_previous=self.keep_previous)
        finally:
            self.saving = False
        self.saved_step, self.keep_previous = self.step, True
        return path

    # --- one environment step ----------------------------------------------------------------------------------

    def env_step(self) -> dict | None:
        """Act, step the env, store the transition; returns the episode statistics when an episode ended."""
        cfg = self.config
        if self.step < cfg.warmup_steps:
            action = self.env.action_space.sample()
        else:
            obs_t = torch.as_tensor(self.obs, dtype=torch.float32, device=self.agent.device).unsqueeze(0)
            action = self.agent.act(obs_t)[0].cpu().numpy()
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        if not math.isfinite(reward) or not np.isfinite(next_obs).all():
            raise ConfigError(
                f"{cfg.env} returned {_non_finite(reward, next_obs)} at step {self.step}; check the environment or "
                "its wrappers."
            )
        # Bootstrapping stops only at true terminations; time-limit truncations keep V(s').
        self.replay.add(self.obs, action, reward * self.reward_scale, next_obs, terminated)
        self.obs = next_obs
        self.step += 1
        if terminated or truncated:
            self.episodes += 1
            self.obs, _ = self.env.reset()
            return info.get("episode")
        return None

    def updates_due(self) -> int:
        if self.step < max(self.config.warmup_steps, self.config.batch_size):
            return 0
        self.update_credit += self.config.updates_per_step
        n = int(self.update_credit)
        self.update_credit -= n
        return n


def _default_run_dir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.env}__{cfg.algo}__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def train(
    config: Config | None = None,
    resume: Path | str | None = None,
    overrides: dict | None = None,
    hooks: Sequence[Hook] = (),
    policy_factory: Callable[[int, ActionBox], torch.nn.Module] | None = None,
    elbo: ELBO | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Run ``config`` to ``config.total_steps``, or continue the run in ``resume``. ``hooks`` are called as
    ``hook(trainer, step)`` after every environment step. ``policy_factory(obs_dim, box)`` and ``elbo`` (a Pyro
    ``ELBO`` object, checked by ``virel_ppl.divergences.make_elbo``) replace ``config.guide`` and ``config.elbo``
    with objects from code; the run records their classes there (``checkpoints.code_name``: ``module:Class``), so
    config.json and reports say what ran. A resume rebuilds such a guide from its class where it can be imported
    (``Class(obs_dim, box, hidden=config.hidden)``); an ELBO object must be passed again.

    A resume continues from the saved config; ``config`` (if given) and ``overrides`` may change only the fields
    in ``checkpoints.RESUMABLE`` (e.g. a larger ``total_steps``), anything else raises ``CheckpointError``. A new run
    refuses a ``run_dir`` that already holds a run unless ``overwrite`` (which removes that run's files first).
    """
    if resume is not None:
        if overwrite:
            raise ConfigError("--overwrite starts a new run; it cannot be combined with --resume.")
        run_dir = Path(resume)
        state, ckpt_path = load_checkpoint(run_dir)
        saved = saved_config(state, ckpt_path)
        asked = replace(config if config is not None else saved, run_dir=None)
        asked = replace(asked, **(overrides or {}))
        config = resumed_config(saved, asked, run_dir, step=state["step"])
    elif config is None:
        raise ValueError("train() needs a config or a run directory to resume.")
    else:
        state = None
        config = replace(config, **(overrides or {}))
        if config.run_dir is None:
            config = replace(config, run_dir=_default_run_dir(config))
        guard_run_dir(Path(config.run_dir), overwrite)
    config = replace(config, run_dir=Path(config.run_dir))
    trainer = Trainer(config, policy_factory=policy_factory, elbo=elbo)
    if state is not None:
        trainer.load_state_dict(state)
        trainer.keep_previous = ckpt_path.name == CHECKPOINT  # else the next save replaces the unreadable one
    run_dir = config.run_dir
    prepare_run_dir(run_dir, clean=overwrite)
    try:
        (run_dir / "config.json").write_text(json.dumps(trainer.config.to_dict(), indent=2))  # guides from code too
        logger = RunLogger(run_dir, config.tensorboard, resume_step=trainer.step if state is not None else None)
    except OSError as err:
        raise unwritable_run_dir(run_dir, err) from None
    return _loop(trainer, logger, hooks)


def _loop(trainer: Trainer, logger: RunLogger, hooks: Sequence[Hook]) -> RunResult:
    cfg, agent = trainer.config, trainer.agent
    run_dir = cfg.run_dir
    ckpt = run_dir / CHECKPOINT

    def request_stop(signum, frame):  # first Ctrl-C or SIGTERM: finish this step, checkpoint, stop
        if not trainer.stop_requested:
            trainer.stop_requested, trainer.stop_signal = True, signum
        elif not trainer.saving and trainer.saved_step != trainer.step:  # a second one: stop now, unsaved
            raise StoppedWithoutCheckpoint(run_dir, trainer.step, trainer.saved_step, signum)
        # (during a checkpoint write, or once this step's checkpoint is written, the run is about to end anyway)

    # Signal handlers can only be set from the main thread; elsewhere (e.g. a Tune worker thread) the caller's stay.
    stop_signals = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    old_handlers = {signum: signal.signal(signum, request_stop) for signum in stop_signals}
    bar = tqdm(total=cfg.total_steps, initial=trainer.step, disable=not cfg.progress, unit="step", smoothing=0.05)
    stats: dict = {}
    early_q_loss: list[float] = []  # the first logged critic losses: the level that divergence is measured against
    warned_growth = False

    # Pyro's argument checks cost a device sync per distribution; NaN is recorded on the device at every update.
    try:
        with pyro.validation_enabled(False):
            while trainer.step < cfg.total_steps and not trainer.stop_requested:
                episode = trainer.env_step()
                step = trainer.step
                for _ in range(trainer.updates_due()):
                    stats = agent.update(trainer.replay.sample(cfg.batch_size), step=step)
                if episode is not None:
                    logger.log("episodes", step, {"return": episode["r"], "length": episode["l"]})
                if stats and step % cfg.log_every == 0:
                    trainer.check_diverged(step)
                    row = logger.log("train", step, stats)
                    if not all(math.isfinite(v) for v in row.values()):  # (the on-device record, just read, saw none)
                        raise ConfigError(f"Non-finite training statistics at step {step}: {row}.")
                    q_loss = row.get("critic/q_loss", 0.0)
                    if len(early_q_loss) < 3:
                        early_q_loss.append(q_loss)
                    elif not warned_growth and q_loss > 1000 * max(*early_q_loss, 1e-6):
                        warned_growth = True
                        warnings.warn(
                            f"The critic's loss grew more than 1000-fold: {q_loss:.3g} at step {step}, against "
                            f"{max(early_q_loss):.3g} when logging began. The critic may be diverging: consider a "
                            "lower --critic-lr or --policy-lr, or a new run with a smaller --reward-scale.",
                            RuntimeWarning,
                            stacklevel=1,
                        )
                if step % cfg.eval_every == 0 or step == cfg.total_steps:
                    returns = evaluate(agent, cfg.env, cfg.eval_episodes, seed=cfg.seed + 10_000 + step)
                    trainer.last_eval = float(returns.mean())
                    trainer.best_eval = max(trainer.best_eval, trainer.last_eval)
                    logger.log("eval", step, {"return_mean": returns.mean(), "return_std": returns.std()})
                    bar.set_postfix(eval=f"{trainer.last_eval:.1f}")
                    if stats:  # PSIS k̂ of π_θ vs exp(Q/ε)·prior on 8 replay states; own RNG, training unperturbed
                        states = replay_states(trainer.replay.obs[: len(trainer.replay)], 8, seed=cfg.seed + step)
                        diag = training_diagnostics(agent, states, float(stats["eps"]), seed=cfg.seed + step)
                        logger.log("diagnostics", step, diag)
                if step % cfg.checkpoint_every == 0:
                    trainer.save(ckpt)
                for hook in hooks:
                    hook(trainer, step)
                bar.update(1)
            if trainer.saved_step != trainer.step:
                trainer.save(ckpt)
            if (run_dir / "eval.csv").exists():  # still under our handlers: a second Ctrl-C here changes nothing
                plot_learning_curve(run_dir / "eval.csv", run_dir / "learning_curve.png", f"{cfg.env} — {cfg.algo}")
    finally:
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)
        bar.close()
        logger.close()
    stopped = trainer.stop_requested and trainer.step < cfg.total_steps  # a signal during the last step's work: done
    return RunResult(
        run_dir, trainer.step, trainer.last_eval, trainer.best_eval, stopped, trainer.stop_signal if stopped else None
    )


def record_video(agent: VirelAgent, env_id: str, path: Path, seed: int = 0, max_frames: int = 1000) -> Path:
    """Render one episode with the mode action to an animated GIF.

    Raises ``RuntimeError`` naming the cause and its fix when the env cannot render here (MuJoCo without
    OpenGL/EGL, classic-control tasks without pygame); the env is closed first, so nothing is printed after it.
    """
    import os

    os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before the first render
    import imageio.v2 as imageio

    with _unraisable_silenced():  # a viewer that failed half-way complains in __del__: let it do so here, quietly
        env = None
        try:
            env = make_env(env_id, render_mode="rgb_array")
            obs, _ = env.reset(seed=seed)
            frames = [env.render()]
            message = None
        except Exception as err:  # rendering back-ends fail in many ways: report the cause with the fix
            message = _render_failure(env_id, env, err)
        if message is not None:
            if env is not None:
                try:
                    env.close()
                except Exception:
                    pass
            env = None
            gc.collect()
    if message is not None:
        raise RuntimeError(message)
    done = False
    while not done and len(frames) < max_frames:
        action = agent.act(torch.as_tensor(obs, dtype=torch.float32, device=agent.device)[None], deterministic=True)
        obs, _, terminated, truncated, _ = env.step(action[0].cpu().numpy())
        frames.append(env.render())
        done = terminated or truncated
    env.close()
    imageio.mimsave(path, frames[::2], duration=1 / 30)
    return path


def _render_failure(env_id: str, env, err: Exception) -> str:
    from gymnasium.error import DependencyNotInstalled

    cause = f"{type(err).__name__}: {err}"
    if isinstance(err, (DependencyNotInstalled, ImportError)):  # e.g. pygame for Pendulum-v1, CartPole-v1
        missing = getattr(err, "name", None) or ("pygame" if "pygame" in str(err) else None)
        what = f"{missing} is not installed" if missing else "a rendering package is missing"
        return f"Cannot render {env_id} here: {what} ({cause}). Returns are still reported."
    mujoco_task = env is None or hasattr(env.unwrapped, "mujoco_renderer")
    if mujoco_task:
        return (
            f"Cannot render {env_id} here ({cause}). MuJoCo needs OpenGL: install EGL (e.g. libegl1) and set "
            "MUJOCO_GL=egl, or OSMesa with MUJOCO_GL=osmesa. Returns are still reported."
        )
    return f"Cannot render {env_id} here ({cause}). Returns are still reported."


@contextmanager
def _unraisable_silenced():
    """Drop "Exception ignored in ..." reports (``sys.unraisablehook``) for the duration."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        sys.unraisablehook = hook

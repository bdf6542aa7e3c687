"""The training loop: collect, M-step, E-step, target update, evaluate, log, checkpoint.

``train(config)`` runs (or, with ``resume=RUN_DIR``, continues) one run and returns its summary. A run
directory holds ``config.json``, ``train.csv``, ``eval.csv``, ``diagnostics.csv`` (ε and the guide's PSIS k̂ at
each evaluation, see ``diagnostics.py``), TensorBoard events, ``learning_curve.png`` and ``checkpoint.pt``.
Ctrl-C stops at the next step boundary and writes a checkpoint from which ``--resume`` continues exactly as if
the run had not stopped (on CPU).
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer.elbo import ELBO
from tqdm.auto import tqdm

from virel_ppl.actions import ActionBox
from virel_ppl.agent import VirelAgent, lookup
from virel_ppl.config import Config, ConfigError
from virel_ppl.diagnostics import replay_states, training_diagnostics
from virel_ppl.envs import check_spaces, get_env_state, make_env, make_eval_envs, set_env_state
from virel_ppl.guides import GUIDES
from virel_ppl.logger import RunLogger, plot_learning_curve
from virel_ppl.replay import ReplayBuffer

CHECKPOINT = "checkpoint.pt"
Hook = Callable[["Trainer", int], None]


@dataclass
class RunResult:
    """What a finished (or stopped) run reports."""

    run_dir: Path
    steps: int
    final_eval_return: float
    best_eval_return: float
    interrupted: bool


@torch.no_grad()
def evaluate(agent: VirelAgent, env_id: str, episodes: int, seed: int) -> np.ndarray:
    """Returns of ``episodes`` episodes with the guide's mode action, run side by side on a vector env."""
    envs = make_eval_envs(env_id, episodes)
    obs, _ = envs.reset(seed=seed)
    returns = np.zeros(episodes)
    done = np.zeros(episodes, dtype=bool)
    while not done.all():
        action = agent.act(torch.as_tensor(obs, dtype=torch.float32, device=agent.device), deterministic=True)
        obs, reward, terminated, truncated, _ = envs.step(action.cpu().numpy())
        returns += np.where(done, 0.0, reward)
        done |= terminated | truncated  # the first episode of each copy is the one that counts
    envs.close()
    return returns


class Trainer:
    """Holds the state of one run (env, agent, replay, counters) and advances it step by step."""

    def __init__(
        self,
        config: Config,
        policy_factory: Callable[[int, ActionBox], torch.nn.Module] | None = None,
        elbo: ELBO | None = None,
    ):
        config.validate()
        lookup(GUIDES, config.guide, "guide") if policy_factory is None else None
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
        policy = policy_factory(obs_dim, box) if policy_factory is not None else None
        self.agent = VirelAgent(obs_dim, box, config, policy=policy, elbo=elbo)  # elbo: overrides config.elbo
        self.replay = ReplayBuffer(obs_dim, box.dim, config.buffer_size, config.device, seed=config.seed)
        self.reward_scale = config.resolved_reward_scale()
        self.step = 0
        self.update_credit = 0.0
        self.episodes = 0
        self.obs, _ = self.env.reset(seed=config.seed)
        self.last_eval = float("nan")
        self.best_eval = float("-inf")
        self.stop_requested = False

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
        self.agent.load_state_dict(state["agent"])
        self.replay.load_state_dict(state["replay"])
        set_env_state(self.env, state["env"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])

    def save(self, path: Path) -> Path:
        tmp = path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)  # atomic: an interrupted save never leaves a broken checkpoint
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
                f"{cfg.env} returned a non-finite reward ({reward}) or observation at step {self.step}; "
                "check the environment or its wrappers."
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
) -> RunResult:
    """Run ``config`` to ``config.total_steps``, or continue the run in ``resume`` (its saved config, with
    ``overrides`` such as a larger ``total_steps``). ``hooks`` are called as ``hook(trainer, step)`` after
    every environment step. ``policy_factory(obs_dim, box)`` and ``elbo`` (a Pyro ``ELBO`` object, checked by
    ``virel_ppl.divergences.make_elbo``) replace ``config.guide`` and ``config.elbo`` with objects from code.
    """
    if resume is not None:
        run_dir = Path(resume)
        ckpt_path = run_dir / CHECKPOINT
        if not ckpt_path.exists():
            raise FileNotFoundError(f"No {CHECKPOINT} in {run_dir}: nothing to resume.")
        state = torch.load(ckpt_path, weights_only=False)
        config = replace(Config.from_dict(state["config"]), run_dir=run_dir, **(overrides or {}))
    elif config is None:
        raise ValueError("train() needs a config or a run directory to resume.")
    else:
        state = None
        config = replace(config, **(overrides or {}))
        if config.run_dir is None:
            config = replace(config, run_dir=_default_run_dir(config))
    trainer = Trainer(config, policy_factory=policy_factory, elbo=elbo)
    if state is not None:
        trainer.load_state_dict(state)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    logger = RunLogger(run_dir, config.tensorboard, resume_step=trainer.step if state is not None else None)
    return _loop(trainer, logger, hooks)


def _loop(trainer: Trainer, logger: RunLogger, hooks: Sequence[Hook]) -> RunResult:
    cfg, agent = trainer.config, trainer.agent
    run_dir = cfg.run_dir
    ckpt = run_dir / CHECKPOINT

    def request_stop(signum, frame):  # first Ctrl-C: finish this step, checkpoint, stop
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True

    old_handler = signal.signal(signal.SIGINT, request_stop)
    bar = tqdm(total=cfg.total_steps, initial=trainer.step, disable=not cfg.progress, unit="step", smoothing=0.05)
    stats: dict = {}
    early_q_loss: list[float] = []  # the first logged critic losses: the level that divergence is measured against
    warned_growth = False

    def check_finite(step: int) -> None:  # one host sync: the update-by-update record kept on the device
        bad = agent.first_nonfinite_step()
        if bad is not None:
            raise ConfigError(
                f"The critic diverged: training statistics became NaN/inf at step {bad} (seen at step {step}; "
                f"no checkpoint was written from then on). Lower --critic-lr or --policy-lr, or start a new run "
                "with a smaller --reward-scale: a --resume cannot change it, as the replay buffer already holds "
                "rewards multiplied by the old scale."
            )

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
                    check_finite(step)
                    row = logger.log("train", step, stats)
                    if not all(math.isfinite(v) for v in row.values()):
                        check_finite(step)  # names the step if the record saw it; else the row is the evidence
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
                    check_finite(step)  # never checkpoint a non-finite state
                    trainer.save(ckpt)
                for hook in hooks:
                    hook(trainer, step)
                bar.update(1)
            check_finite(trainer.step)
            trainer.save(ckpt)
    finally:
        signal.signal(signal.SIGINT, old_handler)
        bar.close()
        logger.close()
    if (run_dir / "eval.csv").exists():
        plot_learning_curve(run_dir / "eval.csv", run_dir / "learning_curve.png", f"{cfg.env} — {cfg.algo}")
    return RunResult(run_dir, trainer.step, trainer.last_eval, trainer.best_eval, trainer.stop_requested)


def load_agent(run_dir: Path | str, device: str = "cpu") -> tuple[VirelAgent, Config]:
    """The agent saved in ``run_dir/checkpoint.pt``, with its config."""
    ckpt_path = Path(run_dir) / CHECKPOINT
    if not ckpt_path.exists():
        raise FileNotFoundError(f"No {CHECKPOINT} in {run_dir}; pass the directory of a training run.")
    state = torch.load(ckpt_path, map_location=device, weights_only=False)
    config = replace(Config.from_dict(state["config"]), device=device)
    env = make_env(config.env)
    agent = VirelAgent(env.observation_space.shape[0], check_spaces(env).to(device), config)
    env.close()
    agent.load_state_dict(state["agent"])
    return agent, config


def record_video(agent: VirelAgent, env_id: str, path: Path, seed: int = 0, max_frames: int = 1000) -> Path:
    """Render one episode with the mode action to an animated GIF.

    Raises ``RuntimeError`` with what to do when MuJoCo cannot render here (no OpenGL/EGL).
    """
    import os

    os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before the first render
    import imageio.v2 as imageio

    try:
        env = make_env(env_id, render_mode="rgb_array")
        obs, _ = env.reset(seed=seed)
        frames = [env.render()]
    except Exception as err:  # rendering back-ends fail in many ways: report the cause with the fix
        raise RuntimeError(
            f"Cannot render {env_id} here ({type(err).__name__}: {err}). MuJoCo needs OpenGL: install EGL "
            "(e.g. libegl1) and set MUJOCO_GL=egl, or OSMesa with MUJOCO_GL=osmesa. Returns are still reported."
        ) from err
    done = False
    while not done and len(frames) < max_frames:
        action = agent.act(torch.as_tensor(obs, dtype=torch.float32, device=agent.device)[None], deterministic=True)
        obs, _, terminated, truncated, _ = env.step(action[0].cpu().numpy())
        frames.append(env.render())
        done = terminated or truncated
    env.close()
    imageio.mimsave(path, frames[::2], duration=1 / 30)
    return path

"""External reference learners, run into ordinary run directories so that reports and sweeps treat them as runs.

``sb3_sac`` is Stable-Baselines3's SAC with its own defaults (256-256 networks, batch 256, Adam 3e-4, automatic
entropy tuning, no reward scaling) except ``learning_starts``, which is our ``warmup_steps``: both learners act
uniformly at random for that many steps. Its run directory holds what ours hold for a report: ``config.json``
(the env, ``algo = "sb3_sac"``, the seed, the budget and SB3's hyper-parameters as it ran them), ``eval.csv``
(evaluated exactly as ours: :func:`virel_ppl.runtime.evaluation.evaluate` with the mode action, ``eval_episodes``
episodes on the same seeds, after the update of every ``eval_every``-th step and at the end), ``train.csv`` (SB3's last
actor/critic loss and entropy coefficient every ``log_every`` steps) and ``episodes.csv``.

A baseline run has no resumable checkpoint: one that was stopped is started again from scratch
(:func:`finished` tells the two apart). Stable-Baselines3 is the ``bench`` extra (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from virel_ppl.config import Config, ConfigError

#: ``algo`` names of the external learners (``virel_ppl sweep --algos ... sb3_sac``).
BASELINES = ("sb3_sac",)
#: The ``Config`` fields a baseline uses (and records in config.json); SB3 picks all the others itself.
RECORDED = (
    "env", "algo", "seed", "total_steps", "warmup_steps", "eval_every", "eval_episodes", "log_every", "device",
    "threads", "run_dir", "tensorboard",
)  # fmt: skip


def require_sb3():
    """Import stable_baselines3, or raise ``ConfigError`` saying which extra installs it."""
    try:
        import stable_baselines3
    except ImportError:
        raise ConfigError(
            '--algo sb3_sac needs Stable-Baselines3, which is not installed: pip install -e ".[bench]" '
            "(or pip install stable-baselines3)."
        ) from None
    return stable_baselines3


def check_baseline(config: Config) -> None:
    """Everything that would stop a baseline run, raised before it starts: the config, SB3, the env's spaces."""
    from virel_ppl.runtime.envs import make_env

    config.validate()
    require_sb3()
    if config.guide != "tanh_normal" or config.elbo not in ("auto", "trace"):
        raise ConfigError(f"--algo {config.algo} is SB3's own SAC: it takes no --guide or --elbo.")
    env = make_env(config.env)
    try:
        if env.action_space.__class__.__name__ != "Box":
            raise ConfigError(f"--algo {config.algo} needs a Box action space; {config.env} has {env.action_space}.")
    finally:
        env.close()


def finished(run_dir: Path, total_steps: int) -> bool:
    """Whether the baseline run in ``run_dir`` reached its last evaluation (at ``total_steps``)."""
    from virel_ppl.runtime.logger import read_csv

    path = Path(run_dir) / "eval.csv"
    if not path.exists():
        return False
    steps = read_csv(path).get("step", [])
    return bool(steps) and int(steps[-1]) == total_steps


@dataclass
class _ModeActor:
    """What :func:`virel_ppl.runtime.evaluation.evaluate` needs of an agent, for an SB3 model: the mode action."""

    model: object
    device: torch.device = torch.device("cpu")

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        action, _ = self.model.predict(obs.cpu().numpy(), deterministic=deterministic)
        return torch.as_tensor(action)


def sb3_sac_hyperparameters(config: Config) -> dict:
    """SB3 SAC's keyword arguments for ``config``: its defaults, with ``learning_starts = warmup_steps``."""
    return {"learning_starts": config.warmup_steps, "seed": config.seed, "device": config.device}


def train_sb3_sac(config: Config, on_eval: Callable[[int], None] | None = None) -> Path:
    """Run SB3's SAC for ``config.total_steps`` into ``config.run_dir`` (removing an unfinished earlier attempt);
    ``on_eval(step)`` is called after each evaluation row is written. Returns the run directory."""
    sb3 = require_sb3()
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    from virel_ppl.runtime.envs import make_env
    from virel_ppl.runtime.evaluation import evaluate
    from virel_ppl.runtime.logger import RunLogger, plot_learning_curve

    cfg = config
    run_dir = Path(cfg.run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # no checkpoint to continue from: a stopped baseline starts again
    run_dir.mkdir(parents=True)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    kwargs = sb3_sac_hyperparameters(cfg)
    model = SAC("MlpPolicy", make_env(cfg.env, seed=cfg.seed), verbose=0, **kwargs)
    ours = replace(cfg, run_dir=run_dir).to_dict()
    recorded = {
        **{k: ours[k] for k in RECORDED},
        "learner": f"stable_baselines3 {sb3.__version__} SAC",
        "sb3": {
            "learning_rate": model.learning_rate,
            "buffer_size": model.buffer_size,
            "batch_size": model.batch_size,
            "tau": model.tau,
            "gamma": model.gamma,
            "train_freq": model.train_freq.frequency,
            "gradient_steps": model.gradient_steps,
            "ent_coef": "auto",
            "target_entropy": float(model.target_entropy),
            "net_arch": model.policy.net_arch,
            **kwargs,
        },
    }
    (run_dir / "config.json").write_text(json.dumps(recorded, indent=2, default=str))
    logger = RunLogger(run_dir, cfg.tensorboard)
    actor = _ModeActor(model)
    last = {"eval": -1}

    def evaluation(step: int) -> None:
        returns = evaluate(actor, cfg.env, cfg.eval_episodes, seed=cfg.seed + 10_000 + step)
        logger.log("eval", step, {"return_mean": returns.mean(), "return_std": returns.std()})
        last["eval"] = step
        if on_eval is not None:
            on_eval(step)

    class Recorder(BaseCallback):
        def _on_rollout_start(self) -> None:  # after the update of step num_timesteps, as our evaluations are
            step = self.num_timesteps
            if step and step % cfg.eval_every == 0 and step != last["eval"]:
                evaluation(step)

        def _on_step(self) -> bool:
            step = self.num_timesteps
            for info in self.locals["infos"]:
                if "episode" in info:
                    logger.log("episodes", step, {"return": info["episode"]["r"], "length": info["episode"]["l"]})
            values = self.model.logger.name_to_value
            if step % cfg.log_every == 0 and "train/critic_loss" in values:
                logger.log(
                    "train",
                    step,
                    {
                        "critic/q_loss": values["train/critic_loss"],
                        "actor/loss": values["train/actor_loss"],
                        "sac/alpha": values["train/ent_coef"],
                        "wall_s": time.perf_counter() - start,
                    },
                )
            return True

    start = time.perf_counter()
    try:
        # log_interval=None: SB3 never dumps (and so never clears) its logger, which the recorder reads
        model.learn(cfg.total_steps, callback=Recorder(), log_interval=None, progress_bar=False)
        if last["eval"] != cfg.total_steps:
            evaluation(cfg.total_steps)
    finally:
        logger.close()
        model.env.close()
    if not np.isfinite(model.actor.mu.weight.detach().numpy()).all():
        raise ConfigError(f"{run_dir.name}: SB3's SAC diverged (non-finite policy weights).")
    plot_learning_curve(run_dir / "eval.csv", run_dir / "learning_curve.png", f"{cfg.env} — sb3_sac")
    return run_dir

"""External reference learners, run into ordinary run directories so that reports and sweeps treat them as runs.

``sb3_sac`` is Stable-Baselines3's SAC with its own defaults (256-256 networks, batch 256, Adam 3e-4, automatic
entropy tuning, no reward scaling) except ``learning_starts``, which is our ``warmup_steps``: both learners act
uniformly at random for that many steps. Its run directory holds what ours hold for a report: ``config.json``
(the env, ``algo = "sb3_sac"``, the seed, the budget and SB3's hyper-parameters as it ran them), ``eval.csv``
(evaluated exactly as ours: :func:`virel_ppl.runtime.evaluation.evaluate` with the mode action, ``eval_episodes``
episodes on the same seeds, after the update of every ``eval_every``-th step and at the end), ``train.csv`` (SB3's last
actor/critic loss and entropy coefficient every ``log_every`` steps, and the policy's entropy read off them, see
:func:`sac_entropy`) and ``episodes.csv``.

A baseline run checkpoints at every evaluation, as ours do (``checkpoint.pt``, the one before kept as
``checkpoint.prev.pt``, written atomically by :func:`virel_ppl.runtime.checkpoints.save_checkpoint`): SB3's networks,
its three optimisers and the entropy coefficient, the filled part of its replay buffer, its counters (``num_timesteps``,
``_episode_num``, ``_n_updates``, ``_last_obs``, ...) and the values its logger holds, the training env mid-episode
(every wrapper, SB3's ``Monitor`` included, and the MuJoCo state), the action space's RNG (the warm-up's random
actions) and the Python, NumPy and torch RNGs. Starting a stopped run again continues from its last checkpoint, and
the rest of the run is the one an uninterrupted run would have had (on CPU; its logs drop the rows written after the
checkpoint); only ``train.csv``'s ``wall_s`` differs. A finished run keeps a checkpoint without the replay buffer.
Stable-Baselines3 is the ``bench`` extra (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import json
import random
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
    """Run SB3's SAC for ``config.total_steps`` into ``config.run_dir``, continuing from the run's checkpoint when it
    has one (an earlier attempt that stopped before its first checkpoint is removed); ``on_eval(step)`` is called
    after each evaluation row and its checkpoint are written. Returns the run directory."""
    sb3 = require_sb3()
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    from virel_ppl.runtime.checkpoints import CHECKPOINT, PREVIOUS, load_checkpoint, save_checkpoint
    from virel_ppl.runtime.envs import make_env
    from virel_ppl.runtime.evaluation import evaluate
    from virel_ppl.runtime.logger import RunLogger, plot_learning_curve

    cfg = config
    run_dir = Path(cfg.run_dir)
    state, keep_previous = None, True
    if (run_dir / CHECKPOINT).exists() or (run_dir / PREVIOUS).exists():
        state, path = load_checkpoint(run_dir, keys=SB3_KEYS)
        keep_previous = path.name == CHECKPOINT  # else the next checkpoint replaces the unreadable one
        _check_same_run(state["config"], cfg, run_dir)
    elif run_dir.exists():
        shutil.rmtree(run_dir)  # rows of an attempt that stopped before its first checkpoint
    run_dir.mkdir(parents=True, exist_ok=True)
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
    resumed_at = None
    if state is not None:
        resumed_at = state["step"]
        load_sb3_state(model, state)
    logger = RunLogger(run_dir, cfg.tensorboard, resume_step=resumed_at)
    actor = _ModeActor(model)
    last = {"eval": resumed_at if resumed_at is not None else -1, "keep_previous": keep_previous}
    wall = {"start": time.perf_counter() - (state["wall_s"] if state is not None else 0.0)}

    def wall_s() -> float:
        return time.perf_counter() - wall["start"]

    def evaluation(step: int, final: bool = False) -> None:
        _check_finite(model, run_dir, step)
        returns = evaluate(actor, cfg.env, cfg.eval_episodes, seed=cfg.seed + 10_000 + step)
        logger.log("eval", step, {"return_mean": returns.mean(), "return_std": returns.std()})
        last["eval"] = step
        snapshot = sb3_state(model, recorded, wall_s(), replay=not final)
        save_checkpoint(snapshot, run_dir / CHECKPOINT, keep_previous=last["keep_previous"])
        last["keep_previous"] = True
        if final:  # nothing resumes a finished run: the buffer and the checkpoint before go
            (run_dir / PREVIOUS).unlink(missing_ok=True)
        if on_eval is not None:
            on_eval(step)

    class Recorder(BaseCallback):
        def _on_training_start(self) -> None:
            if state is not None:  # learn() gives SB3 a new logger: the values the next rows read come back
                _load_logger(self.model.logger, state["sb3"]["logger"])

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
                row = {
                    "critic/q_loss": values["train/critic_loss"],
                    "actor/loss": values["train/actor_loss"],
                    "sac/alpha": values["train/ent_coef"],
                }
                entropy = sac_entropy(values, self.model)
                if entropy is not None:
                    row["policy/entropy"] = entropy
                logger.log("train", step, {**row, "wall_s": wall_s()})
            return True

    try:
        # log_interval=None: SB3 never dumps (and so never clears) its logger, which the recorder reads
        if model.num_timesteps < cfg.total_steps:
            try:
                model.learn(
                    cfg.total_steps - model.num_timesteps,
                    callback=Recorder(),
                    log_interval=None,
                    reset_num_timesteps=state is None,
                    progress_bar=False,
                )
            except ValueError as err:  # torch's check of a distribution's NaN parameters, inside SB3's update
                if "invalid values" not in str(err):
                    raise
                raise ConfigError(
                    f"{run_dir.name}: SB3's SAC diverged at step {model.num_timesteps} ({str(err).splitlines()[0]}); "
                    "the last good checkpoint is kept."
                ) from None
        evaluation(cfg.total_steps, final=True)
    finally:
        logger.close()
        model.env.close()
    plot_learning_curve(run_dir / "eval.csv", run_dir / "learning_curve.png", f"{cfg.env} — sb3_sac")
    return run_dir


#: What an SB3 checkpoint holds at its top level (``load_checkpoint`` checks these).
SB3_KEYS = ("config", "step", "sb3")
#: SB3's counters and the last observation it acts from: what ``learn(reset_num_timesteps=False)`` continues from.
SB3_COUNTERS = (
    "num_timesteps", "_episode_num", "_n_updates", "_last_obs", "_last_episode_starts", "_last_original_obs",
    "_current_progress_remaining", "ep_info_buffer", "ep_success_buffer",
)  # fmt: skip


def sac_entropy(values: dict, model) -> float | None:
    """H(π) of SB3's SAC policy on the batch of its last update, on the env's action box (as our ``policy/entropy``):
    read off the two values SB3 logs for that update, so that its RNG draws nothing more.

    SB3's α-loss is −log α · (E[log π₁(a|s)] + target), with π₁ its policy on [−1, 1]ⁿ, so E[−log π₁] = loss / log α
    + target; the affine map onto the box adds Σ log half_range. None without automatic α, with several gradient
    steps per call (SB3 then logs means, which do not factor), or where α is within 1e-4 of 1 (log α ≈ 0: the loss
    says too little; α, a float32, leaves log α a 6e-8 error). ``values``: SB3's ``logger.name_to_value``."""
    if "train/ent_coef_loss" not in values or model.gradient_steps != 1:
        return None
    log_alpha = float(np.log(values["train/ent_coef"]))
    if abs(log_alpha) < 1e-4:
        return None
    space = model.action_space
    box = float(np.log((space.high - space.low) / 2.0).sum())
    return float(values["train/ent_coef_loss"]) / log_alpha + float(model.target_entropy) + box


def _check_same_run(saved: dict, cfg: Config, run_dir: Path) -> None:
    """Refuse (one line) to continue a checkpoint of another run: the fields that fix the run must be the same."""
    from virel_ppl.runtime.checkpoints import RESUMABLE

    ours = cfg.to_dict()
    changed = [k for k in RECORDED if k not in RESUMABLE + ("run_dir",) and k in saved and saved[k] != ours[k]]
    if changed:
        shown = ", ".join(f"{k} ({saved[k]!r} → {ours[k]!r})" for k in changed)
        raise ConfigError(f"{run_dir} holds another SB3 run (changed: {shown}); choose another run directory.")


def _check_finite(model, run_dir: Path, step: int) -> None:
    """Refuse to go on (and to checkpoint) from non-finite networks or entropy coefficient."""
    bad = [name for name, v in model.policy.state_dict().items() if not torch.isfinite(v).all()]
    if not torch.isfinite(model.log_ent_coef.detach()).all():
        bad.append("log_ent_coef")
    if bad:
        raise ConfigError(
            f"{run_dir.name}: SB3's SAC diverged at step {step} (non-finite {', '.join(bad[:3])}); the last good "
            "checkpoint is kept."
        )


def sb3_state(model, config: dict, wall_s: float, replay: bool = True) -> dict:
    """Everything an SB3 SAC run continues from (see the module docstring), as one ``torch.save``-able dict."""
    from virel_ppl.runtime.envs import get_env_state

    sb3 = {
        "policy": model.policy.state_dict(),
        "actor_optimizer": model.actor.optimizer.state_dict(),
        "critic_optimizer": model.critic.optimizer.state_dict(),
        "log_ent_coef": model.log_ent_coef.detach().clone(),
        "ent_coef_optimizer": model.ent_coef_optimizer.state_dict(),
        "counters": {name: getattr(model, name) for name in SB3_COUNTERS},
        "logger": {
            "value": dict(model.logger.name_to_value),
            "count": dict(model.logger.name_to_count),
            "excluded": dict(model.logger.name_to_excluded),
        },
        "action_space_rng": model.action_space.np_random.bit_generator.state,
        "replay": _replay_state(model.replay_buffer) if replay else None,
    }
    return {
        "config": config,
        "step": model.num_timesteps,
        "wall_s": wall_s,
        "sb3": sb3,
        "env": get_env_state(model.env.envs[0]),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
    }


def load_sb3_state(model, state: dict) -> None:
    """Put a freshly built ``model`` (same config) into the state :func:`sb3_state` saved."""
    from virel_ppl.runtime.envs import set_env_state

    sb3 = state["sb3"]
    if sb3["replay"] is None:
        raise ConfigError(f"The checkpoint at step {state['step']} is a finished run's (no replay buffer).")
    model.policy.load_state_dict(sb3["policy"])
    model.actor.optimizer.load_state_dict(sb3["actor_optimizer"])
    model.critic.optimizer.load_state_dict(sb3["critic_optimizer"])
    with torch.no_grad():
        model.log_ent_coef.copy_(sb3["log_ent_coef"])
    model.ent_coef_optimizer.load_state_dict(sb3["ent_coef_optimizer"])
    for name, value in sb3["counters"].items():
        setattr(model, name, value)
    _load_replay(model.replay_buffer, sb3["replay"])
    set_env_state(model.env.envs[0], state["env"])
    model.action_space.np_random.bit_generator.state = sb3["action_space_rng"]
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])


def _load_logger(logger, saved: dict) -> None:
    logger.name_to_value.update(saved["value"])
    logger.name_to_count.update(saved["count"])
    logger.name_to_excluded.update(saved["excluded"])


#: SB3 ReplayBuffer arrays, in order (``next_observations`` is packed, see ``replay.pack_next_obs``).
SB3_REPLAY = ("observations", "actions", "rewards", "dones", "timeouts")


def _replay_state(buffer) -> dict:
    """The filled part of an SB3 ``ReplayBuffer`` as tensors; ``next_observations`` kept only where it is not the
    next row's observation (the end of each episode, and the last row)."""
    from virel_ppl.runtime.replay import pack_next_obs

    n = buffer.buffer_size if buffer.full else buffer.pos
    out = {name: torch.from_numpy(getattr(buffer, name)[:n].copy()) for name in SB3_REPLAY}
    out["next_observations"] = pack_next_obs(out["observations"], torch.from_numpy(buffer.next_observations[:n]))
    return {**out, "pos": buffer.pos, "full": buffer.full}


def _load_replay(buffer, saved: dict) -> None:
    from virel_ppl.runtime.replay import unpack_next_obs

    n = len(saved["observations"])
    for name in SB3_REPLAY:
        getattr(buffer, name)[:n] = saved[name].numpy()
    buffer.next_observations[:n] = unpack_next_obs(saved["observations"], saved["next_observations"]).numpy()
    buffer.pos, buffer.full = saved["pos"], saved["full"]

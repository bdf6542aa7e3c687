"""The training loop as named steps: collect, update, log, evaluate, checkpoint.

``Trainer(config)`` holds one run's state (env, agent, replay, counters, RNGs) and ``Trainer.run(logger)`` advances
it to ``config.total_steps``. What happens after an evaluation besides ``eval.csv`` (``train.py`` adds the guide's
PSIS diagnostics) and after every step (a sweep's reports) comes in as hooks, so this module knows nothing of
diagnostics or sweeps. Setting up the run directory and resuming are ``train.py``'s, checkpoint files
``checkpoints.py``'s, when updates happen ``config.UpdateSchedule``'s, and what a NaN or inf does ``nan_policy.py``'s.

Ctrl-C or SIGTERM stops at the next step boundary and writes a checkpoint from which a resume continues exactly as
if the run had not stopped (on CPU); a second one stops at once, without one (:class:`StoppedWithoutCheckpoint`).
"""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer.elbo import ELBO
from tqdm.auto import tqdm

from virel_ppl.agent import VirelAgent
from virel_ppl.config import Config, UpdateSchedule, lookup
from virel_ppl.inference.actions import ActionBox
from virel_ppl.inference.guides import GUIDES
from virel_ppl.runtime.checkpoints import (
    CHECKPOINT,
    CheckpointError,
    build_code_guide,
    code_name,
    is_code_name,
    load_agent_state,
    save_checkpoint,
)
from virel_ppl.runtime.envs import check_spaces, get_env_state, make_env, set_env_state
from virel_ppl.runtime.evaluation import evaluate
from virel_ppl.runtime.logger import RunLogger, plot_learning_curve
from virel_ppl.runtime.nan_policy import (
    LossGrowthWatch,
    check_action,
    check_env_step,
    check_state,
    check_updates,
    check_variant,
)
from virel_ppl.runtime.replay import ReplayBuffer

Hook = Callable[["Trainer", int], None]
"""``hook(trainer, step)``: called after an environment step (or an evaluation), with the step counter."""


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
        self.schedule = UpdateSchedule.of(config)
        self.step = 0
        self.episodes = 0
        self.obs, _ = self.env.reset(seed=config.seed)
        self.stats: dict = {}  # the last update's statistics (tensors until logged); {} before the first
        self.last_states: torch.Tensor | None = None  # the last update's batch of states (for H(π) when logging)
        self.last_eval = float("nan")
        self.best_eval = float("-inf")
        self.loss_growth = LossGrowthWatch()
        self.stop_requested = False
        self.stop_signal: int | None = None
        self.saved_step: int | None = None  # step of the last checkpoint written or loaded
        self.saving = False
        self.keep_previous = True  # False after resuming from checkpoint.prev.pt: the latest is unreadable

    # --- the loop ----------------------------------------------------------------------------------------------

    def run(self, logger: RunLogger, hooks: Sequence[Hook] = (), on_evaluate: Sequence[Hook] = ()) -> RunResult:
        """Train to ``config.total_steps`` (or until Ctrl-C/SIGTERM), logging to ``logger`` and closing it.

        ``on_evaluate`` hooks run after each evaluation, ``hooks`` after every step; both as ``hook(self, step)``.
        """
        cfg = self.config
        bar = tqdm(total=cfg.total_steps, initial=self.step, disable=not cfg.progress, unit="step", smoothing=0.05)
        # Pyro's argument checks cost a device sync per distribution; NaN is recorded on the device at every update.
        try:
            with _stop_signals(self), pyro.validation_enabled(False):
                while self.step < cfg.total_steps and not self.stop_requested:
                    episode = self.collect()
                    self.update()
                    self.log(logger, episode)
                    if self.step % cfg.eval_every == 0 or self.step == cfg.total_steps:
                        self.evaluate(logger)
                        bar.set_postfix(eval=f"{self.last_eval:.1f}")
                        for hook in on_evaluate:
                            hook(self, self.step)
                    if self.step % cfg.checkpoint_every == 0:
                        self.save()
                    for hook in hooks:
                        hook(self, self.step)
                    bar.update(1)
                self.finish()  # still under our handlers: a second Ctrl-C here changes nothing
        finally:
            bar.close()
            logger.close()
        return self.result()

    def collect(self) -> dict | None:
        """Act, step the env, store the transition; returns the episode statistics when an episode ended."""
        cfg = self.config
        if self.step < cfg.warmup_steps:
            action = self.env.action_space.sample()
        else:
            obs_t = torch.as_tensor(self.obs, dtype=torch.float32, device=self.agent.device).unsqueeze(0)
            action = self.agent.act(obs_t)[0].cpu().numpy()
            check_action(action, self.agent, self.step + 1)  # the policy's fault, not the environment's
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        check_env_step(cfg.env, reward, next_obs, self.step)
        # Bootstrapping stops only at true terminations; time-limit truncations keep V(s').
        self.replay.add(self.obs, action, reward * self.reward_scale, next_obs, terminated)
        self.obs = next_obs
        self.step += 1
        if terminated or truncated:
            self.episodes += 1
            self.obs, _ = self.env.reset()
            return info.get("episode")
        return None

    def update(self) -> None:
        """The gradient updates this step owes (``config.UpdateSchedule``), each on a fresh replay batch."""
        due = self.schedule.due(self.step)
        for _ in range(due):
            batch = self.replay.sample(self.config.batch_size)
            self.stats, self.last_states = self.agent.update(batch, step=self.step), batch.obs
        if due:  # α or a dual whose exp() is 0 or inf is finite, but makes the next actions NaN
            check_variant(self.agent.variant_state.state_dict(), self.step)

    def log(self, logger: RunLogger, episode: dict | None) -> None:
        """An ended episode's return and length; every ``log_every`` steps the last update's statistics, once they
        are known to be finite, and the policy's entropy on that update's states."""
        if episode is not None:
            logger.log("episodes", self.step, {"return": episode["r"], "length": episode["l"]})
        if self.stats and self.step % self.config.log_every == 0:
            check_updates(self.agent, self.step)
            entropy = self.agent.policy_entropy(self.last_states)
            row = logger.log("train", self.step, {**self.stats, "policy/entropy": entropy})
            self.loss_growth.see(row.get("critic/q_loss", 0.0), self.step)

    def evaluate(self, logger: RunLogger) -> None:
        """``eval_episodes`` episodes of the mode action on seeds of their own; the mean and std to ``eval.csv``."""
        cfg = self.config
        returns = evaluate(self.agent, cfg.env, cfg.eval_episodes, seed=cfg.seed + 10_000 + self.step)
        self.last_eval = float(returns.mean())
        self.best_eval = max(self.best_eval, self.last_eval)
        logger.log("eval", self.step, {"return_mean": returns.mean(), "return_std": returns.std()})

    def finish(self) -> None:
        """After the last step (or a stop): a checkpoint unless this step's is written, and the learning curve."""
        cfg = self.config
        if self.saved_step != self.step:
            self.save()
        if (cfg.run_dir / "eval.csv").exists():
            plot_learning_curve(cfg.run_dir / "eval.csv", cfg.run_dir / "learning_curve.png", f"{cfg.env} — {cfg.algo}")

    def result(self) -> RunResult:
        """The run's summary; ``interrupted`` when a signal stopped it before ``total_steps``."""
        stopped = self.stop_requested and self.step < self.config.total_steps  # a signal in the last step: done
        signum = self.stop_signal if stopped else None
        return RunResult(self.config.run_dir, self.step, self.last_eval, self.best_eval, stopped, signum)

    # --- checkpoints -------------------------------------------------------------------------------------------

    def save(self, path: Path | None = None) -> Path:
        """Write the checkpoint (default ``run_dir/checkpoint.pt``; the one it replaces is kept as
        ``checkpoint.prev.pt``). Refuses (``ConfigError``) after a non-finite update, or to write from an agent
        holding NaN or inf."""
        check_updates(self.agent, self.step)
        path = Path(path) if path is not None else self.config.run_dir / CHECKPOINT
        state = self.state_dict()
        check_state(state["agent"], self.step)
        self.saving = True  # a second signal now waits for the write to finish
        try:
            save_checkpoint(state, path, keep_previous=self.keep_previous)
        finally:
            self.saving = False
        self.saved_step, self.keep_previous = self.step, True
        return path

    def state_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "step": self.step,
            "update_credit": self.schedule.credit,
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
        self.step, self.schedule.credit, self.episodes = state["step"], state["update_credit"], state["episodes"]
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


@contextmanager
def _stop_signals(trainer: Trainer) -> Iterator[None]:
    """For the duration: the first Ctrl-C or SIGTERM asks ``trainer`` to finish its step, checkpoint and stop; a
    second one stops at once, unsaved (:class:`StoppedWithoutCheckpoint`)."""

    def request_stop(signum, frame):
        if not trainer.stop_requested:
            trainer.stop_requested, trainer.stop_signal = True, signum
        elif not trainer.saving and trainer.saved_step != trainer.step:
            raise StoppedWithoutCheckpoint(trainer.config.run_dir, trainer.step, trainer.saved_step, signum)
        # (during a checkpoint write, or once this step's checkpoint is written, the run is about to end anyway)

    # Signal handlers can only be set from the main thread; elsewhere (e.g. a Tune worker thread) the caller's stay.
    signums = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    old_handlers = {signum: signal.signal(signum, request_stop) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)


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

"""``train(config)``: start (or, with ``resume=RUN_DIR``, continue) one run in its directory and return its summary.

A run directory holds ``config.json``, ``train.csv`` (the update's statistics and H(π)), ``eval.csv``,
``episodes.csv``, ``diagnostics.csv`` (ε and the guide's PSIS k̂ at each evaluation, see ``diagnostics.py``),
TensorBoard events, ``learning_curve.png`` and ``checkpoint.pt``. This is the layer that puts a run together: the
loop itself is ``trainer.Trainer`` (which knows nothing of diagnostics), checkpoint files and the rules of a resume
live in ``checkpoints.py``. Ctrl-C or SIGTERM stops at the next step boundary and writes a checkpoint from which
``--resume`` continues exactly as if the run had not stopped (on CPU); a second Ctrl-C stops at once, without one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from pyro.infer.elbo import ELBO

from virel_ppl.analysis.arviz_compat import arviz_version
from virel_ppl.analysis.diagnostics import replay_states, training_diagnostics
from virel_ppl.config import Config, ConfigError
from virel_ppl.inference.actions import ActionBox
from virel_ppl.runtime.checkpoints import (
    CHECKPOINT,
    guard_run_dir,
    load_agent,
    load_checkpoint,
    prepare_run_dir,
    resumed_config,
    saved_config,
    unwritable_run_dir,
)
from virel_ppl.runtime.logger import RunLogger
from virel_ppl.runtime.trainer import Hook, RunResult, StoppedWithoutCheckpoint, Trainer

__all__ = [
    "CHECKPOINT",
    "RunResult",
    "StoppedWithoutCheckpoint",
    "Trainer",
    "load_agent",
    "train",
]


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
    ``ELBO`` object, checked by ``virel_ppl.inference.divergences.make_elbo``) replace ``config.guide`` and
    ``config.elbo`` with objects from code; the run records their classes there (``checkpoints.code_name``:
    ``module:Class``), so config.json and reports say what ran. A resume rebuilds such a guide from its class where
    it can be imported (``Class(obs_dim, box, hidden=config.hidden)``); an ELBO object must be passed again.

    A resume continues from the saved config; ``config`` (if given) and ``overrides`` may change only the fields
    in ``checkpoints.RESUMABLE`` (e.g. a larger ``total_steps``), anything else raises ``CheckpointError``. A new run
    refuses a ``run_dir`` that already holds a run unless ``overwrite`` (which removes that run's files first).
    """
    arviz_version()  # a missing or too-old ArviZ is said now, not at the first evaluation minutes later
    config, state, ckpt_path = _run_config(config, resume, overrides, overwrite)
    trainer = Trainer(config, policy_factory=policy_factory, elbo=elbo)
    if state is not None:
        trainer.load_state_dict(state)
        trainer.keep_previous = ckpt_path.name == CHECKPOINT  # else the next save replaces the unreadable one
    logger = _open_run_dir(trainer, resumed=state is not None, clean=overwrite)
    return trainer.run(logger, hooks, on_evaluate=[log_diagnostics(logger)])


def _run_config(
    config: Config | None, resume: Path | str | None, overrides: dict | None, overwrite: bool
) -> tuple[Config, dict | None, Path | None]:
    """The config to run, and for a resume the checkpoint's state and path (which may be the previous one)."""
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
        state, ckpt_path = None, None
        config = replace(config, **(overrides or {}))
        if config.run_dir is None:
            config = replace(config, run_dir=_default_run_dir(config))
        guard_run_dir(Path(config.run_dir), overwrite)
    return replace(config, run_dir=Path(config.run_dir)), state, ckpt_path


def _open_run_dir(trainer: Trainer, resumed: bool, clean: bool) -> RunLogger:
    """Create (or, with ``clean``, empty) the run directory, write config.json and open the logs; a resumed run's
    logs drop the rows after its checkpoint."""
    run_dir = trainer.config.run_dir
    prepare_run_dir(run_dir, clean=clean)
    try:
        (run_dir / "config.json").write_text(json.dumps(trainer.config.to_dict(), indent=2))  # guides from code too
        return RunLogger(run_dir, trainer.config.tensorboard, resume_step=trainer.step if resumed else None)
    except OSError as err:
        raise unwritable_run_dir(run_dir, err) from None


def log_diagnostics(logger: RunLogger) -> Hook:
    """An evaluation hook that logs the guide's PSIS k̂ and ESS against exp(Q/ε)·prior on 8 replay states, with the
    last update's ε, to ``diagnostics.csv``. It draws from RNGs of its own: the run's numbers are unchanged."""

    def hook(trainer: Trainer, step: int) -> None:
        if not trainer.stats:  # no update yet: no ε to compare with
            return
        seed = trainer.config.seed + step
        states = replay_states(trainer.replay.obs[: len(trainer.replay)], 8, seed=seed)
        diag = training_diagnostics(trainer.agent, states, float(trainer.stats["eps"]), seed=seed)
        logger.log("diagnostics", step, diag)

    return hook


def _default_run_dir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.env}__{cfg.algo}__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"

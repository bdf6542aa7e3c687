"""The Ray trainable of a sweep: one trial is one ordinary ``train()`` run in its run directory, restored from Tune's
copy of it when that is newer, with a hook that reports each evaluation (and hands Tune a copy at a checkpoint)."""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from virel_ppl.config import Config
from virel_ppl.sweep.ray_noise import exit_noise_dropped

if TYPE_CHECKING:  # annotations only: a trial imports the trainer when it runs
    from virel_ppl.runtime.trainer import Hook

#: Prefixes of the train.csv columns a trial reports (``critic/q_loss`` as ``critic_q_loss``, ...).
STAT_PREFIXES = ("critic", "actor", "mpo", "sac")


def last_row(path: Path) -> dict[str, float]:
    """The last row of a logged CSV, read from the file's end (the file can be long)."""
    if not path.exists():
        return {}
    with open(path, "rb") as fh:
        header = fh.readline().decode().strip().split(",")
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 8192))
        text = fh.read().decode(errors="replace")
    if not text.endswith("\n"):  # the last line is being written (or was cut off): the one before is the last row
        text = text[: text.rfind("\n") + 1]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or lines[-1].split(",") == header:
        return {}
    values = lines[-1].split(",")
    if len(values) != len(header):
        return {}
    try:
        return {k: float(v) for k, v in zip(header, values)}
    except ValueError:
        return {}


def metrics(run_dir: Path) -> dict[str, float]:
    """What a trial reports to Tune: the last evaluation and the last training scalars (ε, critic losses)."""
    ev = last_row(run_dir / "eval.csv")
    tr = last_row(run_dir / "train.csv")
    out = {"step": int(ev.get("step", 0)), "return_mean": ev.get("return_mean", math.nan)}
    out["return_std"] = ev.get("return_std", math.nan)
    out.update({k.replace("/", "_"): v for k, v in tr.items() if k != "step"})
    return out


def restore_run_dir(run_dir: Path, source: Path) -> None:
    """Make ``run_dir`` an exact copy of a Tune checkpoint of it."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    shutil.copytree(source, run_dir)


def restore_if_newer(run_dir: Path, source: Path) -> bool:
    """Replace ``run_dir`` with the Tune checkpoint ``source`` only when that holds a later checkpoint (or the run
    directory none): the run's own ``checkpoint.pt`` can be newer than the last checkpoint Tune registered (a
    Ctrl-C between the copy and its registration), and an older copy would delete the steps in between. Returns
    whether it replaced the run directory."""
    from virel_ppl.runtime.checkpoints import checkpoint_step

    theirs = checkpoint_step(source)
    mine = checkpoint_step(run_dir) if run_dir.exists() else None
    if theirs is None or (mine is not None and mine >= theirs):
        return False
    restore_run_dir(run_dir, source)
    return True


def trainable(
    param: dict, specs: Mapping[str, dict], hooks: Sequence[Hook] = (), tune_checkpoints: bool = True
) -> None:
    """One Tune trial: restore the run directory from Tune's checkpoint (or resume/start it), train, report."""
    from ray import tune

    from virel_ppl.baselines import BASELINES, finished, train_sb3_sac
    from virel_ppl.train import CHECKPOINT, train

    sys.unraisablehook = exit_noise_dropped  # this worker process: Ray's actor exit is not an error to print
    spec = specs[param["name"]]
    cfg = Config.from_dict(spec["config"])
    run_dir = Path(spec["run_dir"])
    cfg = replace(cfg, run_dir=run_dir)
    checkpoint = tune.get_checkpoint() if tune_checkpoints else None
    if checkpoint is not None:
        with checkpoint.as_directory() as src:
            restore_if_newer(run_dir, Path(src))  # never an older copy over a newer run directory
    if cfg.algo in BASELINES:  # an external learner: it resumes from its own checkpoint at its last evaluation

        def report_eval(step: int) -> None:
            if step < cfg.total_steps:  # the last one is reported once, below
                ckpt = tune.Checkpoint.from_directory(str(run_dir)) if tune_checkpoints else None
                tune.report(metrics(run_dir), checkpoint=ckpt)

        if not finished(run_dir, cfg.total_steps):
            train_sb3_sac(cfg, on_eval=report_eval)
        tune.report({**metrics(run_dir), "finished": True})
        return
    if not (run_dir / CHECKPOINT).exists() and run_dir.exists():
        shutil.rmtree(run_dir)  # rows from a trial that died before its first checkpoint

    def report(trainer, step: int) -> None:
        c = trainer.config
        if step == c.total_steps or not (step % c.eval_every == 0):
            return  # the last evaluation is reported once train() has written its final checkpoint
        ckpt = None
        if tune_checkpoints and step % c.checkpoint_every == 0:
            ckpt = tune.Checkpoint.from_directory(str(run_dir))  # copied into Tune's storage before this returns
        tune.report(metrics(run_dir), checkpoint=ckpt)

    # train() installs its Ctrl-C/SIGTERM handlers only on the main thread; in Tune's worker thread Tune stops a trial
    if (run_dir / CHECKPOINT).exists():
        result = train(resume=run_dir, hooks=[*hooks, report])
    else:
        result = train(cfg, hooks=[*hooks, report])
    final = tune.Checkpoint.from_directory(str(run_dir)) if tune_checkpoints else None
    tune.report({**metrics(run_dir), "finished": not result.interrupted}, checkpoint=final)
    if result.interrupted:
        raise RuntimeError(f"{run_dir.name} was stopped at step {result.steps}; it resumes from its checkpoint.")

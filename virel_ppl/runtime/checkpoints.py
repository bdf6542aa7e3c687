"""Checkpoints and run directories: save with rotation, load with a fallback, check a resume, guard a run dir.

A run directory ``D`` holds (besides the logs of ``logger.py``):

- ``D/checkpoint.pt``       the latest checkpoint (:data:`CHECKPOINT`): what ``--resume``, ``evaluate``, ``diagnose``
                            and a sweep read;
- ``D/checkpoint.prev.pt``  the one before it (:data:`PREVIOUS`), kept when a new one is written; loading falls back
                            to it, with a warning saying how many steps are lost, when ``checkpoint.pt`` is missing,
                            truncated or corrupt;
- ``D/checkpoint.tmp``      only while a checkpoint is being written (:data:`PARTIAL`): the new file is written here
                            first and renamed into place, so an interrupted write never damages a saved checkpoint.

A checkpoint is ``torch.save`` of ``Trainer.state_dict()``: a dict with (at least) ``config`` (``Config.to_dict()``),
``step`` and ``agent``. It is never written from an agent holding NaN or inf (``nan_policy.check_state``).

On resume only the fields in :data:`RESUMABLE` may change (how long to run, how often to evaluate, log and
checkpoint, and how the run is shown); every other field fixes the task, the algorithm, the networks or the data
already in the replay buffer (which holds rewards times ``reward_scale``), and :func:`check_resume` refuses a change.

This module imports nothing from ``train``, ``trainer`` or ``diagnostics``: all three, the CLI and sweeps use it.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import shutil
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from virel_ppl.config import Config, ConfigError, RunWarning

if TYPE_CHECKING:
    from virel_ppl.agent import VirelAgent

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
PARTIAL = "checkpoint.tmp"

#: Config fields that a resume may change: the budget, the bookkeeping intervals, how the run is shown, and whether a
#: GPU replays the update as a CUDA graph (the same operations either way, see graphs.py).
RESUMABLE: tuple[str, ...] = (
    "total_steps",
    "eval_every",
    "eval_episodes",
    "log_every",
    "checkpoint_every",
    "threads",
    "tensorboard",
    "progress",
    "cuda_graph",
)

#: Files and folders a run writes into its directory (besides ``*.csv``): what ``--overwrite`` removes.
RUN_FILES = (
    "config.json",
    CHECKPOINT,
    PREVIOUS,
    PARTIAL,
    "tb",
    "learning_curve.png",
    "video.gif",
    "posterior",
)


class CheckpointError(ConfigError):
    """A run directory or checkpoint that cannot be used: unwritable, unreadable, holding another run, or not
    compatible with the asked-for resume. The command line prints it as one ``error:`` line."""


class CheckpointWarning(RunWarning):
    """Loading fell back to the previous checkpoint (the latest one was missing or unreadable)."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# --- run directories -----------------------------------------------------------------------------------------------


def holds_run(run_dir: Path) -> list[str]:
    """The names of the run files in ``run_dir`` (empty when it holds no run)."""
    if not run_dir.is_dir():
        return []
    names = [name for name in RUN_FILES if (run_dir / name).exists()]
    return names + sorted(p.name for p in run_dir.glob("*.csv"))


def guard_run_dir(run_dir: Path, overwrite: bool = False) -> None:
    """Refuse to start a new run in a directory that already holds one, unless ``overwrite``. Changes nothing."""
    found = holds_run(run_dir)
    if found and not overwrite:
        raise CheckpointError(
            f"{run_dir} already holds a run ({', '.join(found[:4])}{', ...' if len(found) > 4 else ''}): continue "
            f"it with --resume {run_dir}, choose another --run-dir, or pass --overwrite to replace it."
        )


def prepare_run_dir(run_dir: Path, clean: bool = False) -> None:
    """Create ``run_dir`` (with ``clean``: first remove an earlier run's files) and check it can be written."""
    try:
        if clean:
            for name in holds_run(run_dir):
                path = run_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise unwritable_run_dir(run_dir, err) from None


def unwritable_run_dir(run_dir: Path, err: OSError) -> CheckpointError:
    """The error for a run directory that refused a write (here, or when the trainer writes its first files)."""
    return CheckpointError(f"Cannot write to the run directory {run_dir}: {_reason(err)}.")


def _reason(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


# --- saving --------------------------------------------------------------------------------------------------------


def save_checkpoint(state: dict, path: Path, keep_previous: bool = True) -> Path:
    """Write ``state`` to ``path`` atomically; an existing ``path`` becomes the previous checkpoint
    (``checkpoint.pt`` → ``checkpoint.prev.pt``) unless ``keep_previous`` is False (after a fallback, when ``path``
    is the unreadable one). A failed write raises :class:`CheckpointError` naming the path and leaves every saved
    checkpoint as it was."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(state, tmp)
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)  # between the two renames a reader falls back to the previous checkpoint
    except (OSError, RuntimeError) as err:  # torch reports a full disk as RuntimeError ("file write failed")
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        reason = _reason(err) if isinstance(err, OSError) else _write_failure(err, tmp)
        raise CheckpointError(
            f"Cannot write the checkpoint {path}: {reason}. Checkpoints saved before are intact."
        ) from None
    return path


def _write_failure(err: RuntimeError, tmp: Path) -> str:
    """Why ``torch.save`` failed, in words: its RuntimeError names only the zip record it could not write."""
    try:
        free = shutil.disk_usage(tmp.parent).free
    except OSError:
        free = None
    if free is not None and free < 64 * 1024**2:
        return f"No space left on device ({free // 1024**2} MiB free)"
    return _describe(err)


def previous_path(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``checkpoint.pt`` → ``checkpoint.prev.pt``."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


# --- loading -------------------------------------------------------------------------------------------------------


#: The top-level keys of a checkpoint of ours (a baseline's checkpoint has its own, see ``baselines.SB3_KEYS``).
KEYS = ("config", "step", "agent")


def _read(path: Path, map_location: str | torch.device | None, keys: tuple[str, ...] = KEYS) -> dict:
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or not set(keys) <= set(state):
        raise ValueError("not a virel_ppl checkpoint")
    return state


def load_checkpoint(
    run_dir: Path | str, map_location: str | torch.device | None = "cpu", keys: tuple[str, ...] = KEYS
) -> tuple[dict, Path]:
    """The latest readable checkpoint of ``run_dir`` (a dict with ``keys``) and its path.

    Falls back to ``checkpoint.prev.pt`` when ``checkpoint.pt`` is missing or unreadable, with a
    :class:`CheckpointWarning` saying how many logged steps are lost. Raises ``FileNotFoundError`` when the
    directory holds no checkpoint and :class:`CheckpointError` (one line naming the file) when none can be read.
    """
    run_dir = Path(run_dir)
    latest, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
    if not latest.exists() and not previous.exists():
        raise FileNotFoundError(f"No {CHECKPOINT} in {run_dir}; pass the directory of a training run.")
    problem = "is missing"
    if latest.exists():
        try:
            return _read(latest, map_location, keys), latest
        except Exception as err:  # truncated zip, pickling errors, foreign files: all mean "unreadable"
            problem = f"cannot be read ({_describe(err)})"
            if not previous.exists():
                raise CheckpointError(
                    f"{latest} {problem}: it is truncated or corrupt, and there is no earlier checkpoint to fall "
                    "back on."
                ) from None
    try:
        state = _read(previous, map_location, keys)
    except Exception as err:
        raise CheckpointError(
            f"{latest} {problem} and the previous checkpoint {previous} cannot be read either ({_describe(err)})."
        ) from None
    reached = last_logged_step(run_dir)
    lost = (
        f"the run had logged up to step {reached}, so {reached - state['step']} steps are lost"
        if reached is not None and reached > state["step"]
        else "no logged steps are lost"
    )
    warnings.warn(
        f"{latest} {problem}; using the previous checkpoint {previous} from step {state['step']}: {lost}.",
        CheckpointWarning,
        stacklevel=2,
    )
    return state, previous


def _describe(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def last_logged_step(run_dir: Path) -> int | None:
    """The largest step in the run's CSV logs (None without logs)."""
    from virel_ppl.runtime.logger import read_csv

    last = None
    for path in run_dir.glob("*.csv"):
        try:
            steps = read_csv(path, warn=False).get("step", [])  # a torn last line is no logged step
        except OSError:
            continue
        if steps:
            last = int(max(steps)) if last is None else max(last, int(max(steps)))
    return last


def checkpoint_step(run_dir: Path | str) -> int | None:
    """The step of the checkpoint a resume of ``run_dir`` would load (``checkpoint.pt``, else ``checkpoint.prev.pt``),
    or None when it has no readable one. Read without loading the tensors (memory-mapped), so it is cheap."""
    for path in (Path(run_dir) / CHECKPOINT, Path(run_dir) / PREVIOUS):
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=False, mmap=True)  # torch < 2.2: a str
            return int(state["step"])
        except Exception:  # missing, truncated or foreign: try the previous one
            continue
    return None


def saved_config(state: dict, path: Path) -> Config:
    """The ``Config`` stored in a checkpoint."""
    try:
        return Config.from_dict(state["config"])
    except (TypeError, KeyError, ValueError) as err:
        raise CheckpointError(
            f"{path} holds a config this version cannot read ({_describe(err)}); was it written by another version "
            "of virel_ppl?"
        ) from None


# --- guides and ELBOs from code ------------------------------------------------------------------------------------


def code_name(kind: type) -> str:
    """How a run records a guide or ELBO class given as code (``train(policy_factory=..., elbo=...)``):
    ``module:QualName``, or ``/path/to/script.py:QualName`` for a class of a script run as ``__main__``. Registered
    guides and estimators are recorded by name; a name with a ``:`` is always one of these."""
    module = kind.__module__
    if module == "__main__":
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        module = str(Path(main_file).resolve()) if main_file else module
    return f"{module}:{kind.__qualname__}"


def is_code_name(name: str) -> bool:
    """Whether a recorded ``guide`` or ``elbo`` names a class from code (see :func:`code_name`) rather than a
    registered guide or estimator."""
    return ":" in name


def import_code(name: str, what: str, run_dir: Path | str) -> type:
    """The class a :func:`code_name` names (a script is loaded as a module of its own, so its ``__main__`` block does
    not run); :class:`CheckpointError` in one line when it cannot be imported here."""
    where, _, qualname = name.rpartition(":")
    try:
        if where.endswith(".py"):
            spec = importlib.util.spec_from_file_location(f"_virel_ppl_code_{Path(where).stem}", where)
            if spec is None or not Path(where).exists():
                raise FileNotFoundError(f"no file {where}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        obj: Any = module
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception as err:
        raise CheckpointError(
            f"{run_dir} was trained with the {what} {name} from code, which cannot be imported here "
            f"({_describe(err)}); load it from Python with the same class (train(resume=..., policy_factory=...))."
        ) from None
    return obj


def build_code_guide(config: Config, obs_dim: int, box: Any, run_dir: Path | str) -> torch.nn.Module:
    """Rebuild the guide of a run trained with a guide from code: ``Class(obs_dim, box, hidden=config.hidden)``, as
    the registered guides are built; :class:`CheckpointError` in one line when that cannot be done."""
    cls = import_code(config.guide, "guide", run_dir)
    try:
        return cls(obs_dim, box, hidden=config.hidden)
    except Exception as err:
        raise CheckpointError(
            f"{run_dir} was trained with the guide {config.guide} from code, and Class(obs_dim, box, hidden=...) "
            f"does not rebuild it ({_describe(err)}); load it from Python with the factory it was trained with "
            "(train(resume=..., policy_factory=...))."
        ) from None


def load_agent(run_dir: Path | str, device: str = "cpu") -> tuple[VirelAgent, Config]:
    """The agent saved in ``run_dir`` (``checkpoint.pt``, else ``checkpoint.prev.pt``), with its config."""
    state, path = load_checkpoint(run_dir, map_location=device)
    return agent_from_state(state, path, device)


def agent_from_state(state: dict, path: Path, device: str = "cpu") -> tuple[VirelAgent, Config]:
    """Build the agent of a loaded checkpoint (``path`` is named in errors) on ``device``."""
    from virel_ppl.agent import VirelAgent
    from virel_ppl.runtime.envs import check_spaces, make_env

    config = replace(saved_config(state, path), device=device)
    env = make_env(config.env)
    try:
        obs_dim, box = env.observation_space.shape[0], check_spaces(env).to(device)
        policy = build_code_guide(config, obs_dim, box, path.parent) if is_code_name(config.guide) else None
        # an ELBO object from code is not needed to act or to look at the posterior: any estimator will do
        elbo = "auto" if is_code_name(config.elbo) else None
        agent = VirelAgent(obs_dim, box, config, policy=policy, elbo=elbo)
    finally:
        env.close()
    load_agent_state(agent, state["agent"], path)
    return agent, config


def load_agent_state(agent: VirelAgent, state: dict, path: Path) -> None:
    """``agent.load_state_dict(state)`` (an older layout first mapped by :func:`current_agent_layout`);
    :class:`CheckpointError` in one line when the checkpoint's tensors do not fit the agent (e.g. a guide from code
    rebuilt with other sizes)."""
    try:
        agent.load_state_dict(current_agent_layout(state))
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(
            f"{path} does not fit the agent built from its config ({_describe(err)}); a guide from code must be "
            "rebuilt as it was trained (train(resume=..., policy_factory=...))."
        ) from None


def current_agent_layout(state: dict) -> dict:
    """An agent state in today's layout. Checkpoints written before the variants' state became torch modules keep
    it under ``extras`` as one dict per module (``{"old_policy": {"net": {...}, "updates": 7}, "alpha": {"log_alpha":
    ..., "optim": {...}}, "mpo": {"log_eta": ..., "log_lagrange": ..., "optim": {...}}}``); today it is the modules'
    ``state_dict`` under ``variant`` (``"old_policy.net.<name>"``, ``"old_policy.updates"``, ``"alpha.log_alpha"``,
    ...) and the one Adam of the duals under ``dual_optim`` (each variant had at most one such optimiser)."""
    if "extras" not in state:
        return state
    state = dict(state)
    variant, optims = {}, []
    for name, part in state.pop("extras").items():
        for key, value in part.items():
            if key == "optim":
                optims.append(value)
            elif isinstance(value, dict):  # a submodule's own state dict (π_old's net)
                variant.update({f"{name}.{key}.{k}": v for k, v in value.items()})
            else:  # a tensor, or a count saved as an int
                variant[f"{name}.{key}"] = torch.as_tensor(value)
    state["variant"] = variant
    if optims:
        (state["dual_optim"],) = optims
    return state


# --- resuming ------------------------------------------------------------------------------------------------------


def _comparable(config: Config, name: str) -> Any:
    if name == "reward_scale":
        return config.resolved_reward_scale()  # None means the per-task table: compare what the run uses
    if name == "beta_scale":
        return config.resolved_beta_scale()
    return getattr(config, name)


def check_resume(saved: Config, asked: Config, run_dir: Path) -> None:
    """Refuse (one line) a resume whose config ``asked`` changes a field of ``saved`` that is not in
    :data:`RESUMABLE`. ``run_dir`` is where the run continues; ``asked.run_dir`` must be None or the same."""
    if asked.run_dir is not None and Path(asked.run_dir).resolve() != Path(run_dir).resolve():
        raise CheckpointError(
            f"--run-dir {asked.run_dir} cannot be combined with --resume {run_dir}: a resumed run continues in its "
            "own directory."
        )
    changed = [
        f"{_flag(f.name)} ({_comparable(saved, f.name)!r} → {_comparable(asked, f.name)!r})"
        for f in dataclasses.fields(Config)
        if f.name not in RESUMABLE and f.name != "run_dir" and _comparable(saved, f.name) != _comparable(asked, f.name)
    ]
    if changed:
        raise CheckpointError(
            f"Cannot resume {run_dir} with a changed {', '.join(changed)}: these fix the task, the algorithm, the "
            f"networks or the replayed data. On resume only {', '.join(_flag(n) for n in RESUMABLE)} may change; "
            "start a new run (another --run-dir) for the others."
        )


def resumed_config(saved: Config, asked: Config, run_dir: Path, step: int | None = None) -> Config:
    """The config a resume runs with: ``saved`` with the :data:`RESUMABLE` fields of ``asked``, after
    :func:`check_resume`. ``step`` is the checkpoint's: a budget below it is refused (the run has done more steps
    than that, and its config.json must say what it did)."""
    check_resume(saved, asked, run_dir)
    if step is not None and asked.total_steps < step:
        raise CheckpointError(
            f"--total-steps {asked.total_steps} is below the {step} steps that {run_dir} has already run; a run "
            f"cannot be shortened: pass --total-steps {step} or more, or leave it out."
        )
    return replace(saved, run_dir=Path(run_dir), **{name: getattr(asked, name) for name in RESUMABLE})

"""Sweeps on Ray Tune: a grid of ``Config``s run as Tune trials, locally by default or on a Ray cluster.

``sweep(grid, base, root)`` (the ``virel_ppl sweep`` command) turns the product of ``grid``'s value lists (e.g.
``{"env": [...], "algo": [...], "seed": [0, 1, 2]}``) over ``base`` into one trial per ``Config``. Each trial
is an ordinary training run: ``train()`` writes ``ROOT/<name>/`` (config.json, eval.csv, checkpoint.pt, ...), and
a hook reports every evaluation to Tune (``tune.report``: ``step``, ``return_mean``, ``return_std``, ε and the
critic losses of the last ``train.csv`` row), so Tune's tables, loggers and schedulers (``search="asha"``) work.
At the end the multi-seed report (``virel_ppl.analysis.report.write_report``) is written to ``ROOT/report``.

Checkpoints. A trial hands Tune a copy of its whole run directory whenever ``train()`` has just written
``checkpoint.pt`` (by default the sweep sets ``checkpoint_every = eval_every``: a checkpoint at every evaluation),
so a machine that shares no filesystem with the others can pick up a trial: Tune restores the copy into
the run directory and ``train(resume=...)`` continues exactly. The cost is a copy of ``checkpoint.pt`` (it holds
the replay buffer: ~170 bytes per stored step on HalfCheetah) per checkpoint in Tune's storage, of which Tune keeps
the latest only. ``tune_checkpoints=False`` skips the copies: a restarted trial then resumes from the
``checkpoint.pt`` in its run directory, which must be on a filesystem the machines share.

Ray is imported in this module only, and only when a sweep runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shutil
import socket
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from virel_ppl.config import Config, ConfigError, did_you_mean, field_types

#: Grid fields with their own command-line flag (``--envs``, ``--algos``, ...), in run-name order.
NAMED_AXES = ("env", "algo", "guide", "elbo", "seed")
#: Config fields a sweep owns: the run directory comes from ``root`` and the trial name.
RESERVED = ("run_dir",)
#: Prefixes of the train.csv columns a trial reports (``critic/q_loss`` as ``critic_q_loss``, ...).
STAT_PREFIXES = ("critic", "actor", "mpo", "sac")
SWEEP_FILE = "sweep.json"
EXPERIMENT = "tune"

Hook = Callable[[Any, int], None]


class SweepError(ConfigError):
    """A sweep that cannot start (bad grid, unreachable cluster, a root holding another sweep)."""


# --- the grid ------------------------------------------------------------------------------------------------------


@dataclass
class Trial:
    """One run of the sweep: its name (the run directory's name under ``root``) and its config."""

    name: str
    config: Config


def _split_top_level(text: str) -> list[str]:
    """``"1,[2,3],{"a":1}"`` → ``["1", "[2,3]", '{"a":1}']``: commas inside brackets or braces do not split."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


#: An example value of each type a sweep can set, for the error of a value that does not parse.
_EXAMPLES: dict[Any, str] = {int: "3", float: "0.001", bool: "true", str: "name"}


def _parse_as(kind: Any, text: str) -> Any:
    """``text`` as a value of ``kind`` (one of Config's field types, ``None`` aside); ``ValueError`` or ``TypeError``
    when it is not one, ``NotImplementedError`` for a type a sweep cannot set."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(text)
        return text.lower() in ("true", "1")
    if kind is int:  # 64, 64.0 and 1e4 alike
        value = float(text)
        if not value.is_integer():
            raise ValueError(text)
        return int(value)
    if kind in (float, str):
        return kind(text)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # JSON list, e.g. [64,64]
        value = json.loads(text)
        if not isinstance(value, list) or not all(type(v) is args[0] for v in value):
            raise ValueError(text)
        return tuple(value)
    if origin is dict:  # JSON object, e.g. {"mpo_kl_weight":2}
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(text)
        return {args[0](k): args[1](v) for k, v in value.items()}
    raise NotImplementedError(kind)


def parse_value(name: str, text: str) -> Any:
    """One value of Config field ``name`` from its text (numbers, ``none``, ``true``, JSON lists and dicts), read
    as the field's type (``config.field_types``)."""
    kind = field_types()[name]
    shown = next(f.type for f in dataclasses.fields(Config) if f.name == name)  # as written: "int | None"
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    options = typing.get_args(kind) if union else (kind,)
    (base,) = [k for k in options if k is not type(None)]  # Config's fields are T or T | None
    where = f"--set {name}={text}"
    if text.lower() in ("none", "null"):
        if type(None) not in options:
            raise SweepError(f"{where}: {name} cannot be None.")
        return None
    try:
        return _parse_as(base, text)
    except (ValueError, TypeError):
        pass
    except NotImplementedError:
        raise SweepError(f"{where}: fields of type {shown} cannot be set in a sweep.") from None
    example = _EXAMPLES.get(base, "[64,64]" if typing.get_origin(base) is tuple else "")
    hint = f" (e.g. {name}={example})" if example else ' (JSON, e.g. {"key":1.0})'
    raise SweepError(f"{where}: {text!r} is not a valid {shown}{hint}.")


def parse_set(items: Sequence[str]) -> dict[str, list]:
    """``["batch_size=32,64", "hidden=[64,64],[256,256]"]`` → ``{"batch_size": [32, 64], "hidden": [...]}``."""
    fields = field_types()
    out: dict[str, list] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values.strip():
            raise SweepError(f"--set {item}: write FIELD=VALUE[,VALUE...], e.g. --set batch_size=64,256.")
        if name not in fields:
            raise SweepError(f"--set {item}: Config has no field {name!r}.{did_you_mean(name, fields)}")
        if name in RESERVED:
            raise SweepError(f"--set {item}: a sweep puts each run in ROOT/<trial name>; use --root.")
        if name in out:
            raise SweepError(f"--set {name} is given twice; list all its values once: {name}=v1,v2.")
        out[name] = [parse_value(name, v) for v in _split_top_level(values)]
    return out


def value_label(value: Any) -> str:
    """How a value shows in a run directory's name: ``[64, 64]`` → ``64x64``, ``{"a": 2}`` → ``a2``."""
    if isinstance(value, tuple | list):
        return "x".join(map(str, value))
    if isinstance(value, dict):
        return "-".join(f"{k}{v:g}" for k, v in sorted(value.items()))
    return str(value)


def plan(
    grid: Mapping[str, Sequence], base: Config | None = None, checkpoint_every: int | None = None
) -> tuple[list[Trial], list[str]]:
    """The trials of ``grid`` (field → values) over ``base``, and the fields that make a report group.

    Each run checkpoints every ``checkpoint_every`` steps (None: at every evaluation, ``eval_every``) unless
    ``checkpoint_every`` is in the grid.

    A run is named ``<env>__<algo>[__<guide>][__<elbo>][__<field>=<value>...]__<seed>``: env and algo always, the
    other fields when they take several values. Every config is checked (``Config.validate``) and every
    (env, algo, guide, elbo, ...) combination is built once on the CPU, so a bad name or an incompatible
    combination raises ``ConfigError`` here, before any trial starts.
    """
    base = base or Config()
    fields = field_types()
    for name, values in grid.items():
        if name not in fields:
            raise SweepError(f"Config has no field {name!r}.{did_you_mean(name, fields)}")
        if name in RESERVED:
            raise SweepError("A sweep puts each run in ROOT/<trial name>: run_dir cannot be swept.")
        if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
            raise SweepError(f"The values of {name} must be a non-empty list, got {values!r}.")
        if len({json.dumps(value_label(v)) for v in values}) != len(values):
            raise SweepError(f"{name} lists a value twice: {list(values)}.")
    axes = {k: list(v) for k, v in grid.items()}
    overrides: dict[str, Any] = {"progress": False}
    varying = [k for k, v in axes.items() if len(v) > 1]
    order = [k for k in NAMED_AXES[:-1] if k in axes] + [k for k in axes if k not in NAMED_AXES]
    order += ["seed"] if "seed" in axes else []  # the seeds of a group side by side
    trials: list[Trial] = []
    for combo in itertools.product(*(axes[k] for k in order)):
        values = dict(zip(order, combo))
        cfg = replace(base, **overrides, **values)
        if "checkpoint_every" not in axes:
            cfg = replace(cfg, checkpoint_every=checkpoint_every or cfg.eval_every)
        parts = [cfg.env, cfg.algo]
        parts += [value_label(values[k]) for k in ("guide", "elbo") if k in varying]
        parts += [f"{k}={value_label(values[k])}" for k in order if k in varying and k not in NAMED_AXES]
        parts.append(str(cfg.seed))
        trials.append(Trial("__".join(parts).replace("/", "_"), cfg))
    names = [t.name for t in trials]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise SweepError(f"Two trials would share a run directory ({', '.join(twice[:3])}): make the values distinct.")
    _check(trials)
    group_by = ["env", "algo"] + [k for k in order if k in varying and k not in ("env", "algo", "seed")]
    return trials, group_by


def _check(trials: Sequence[Trial]) -> None:
    """Validate every config and build each distinct one (seed aside) on the CPU: names, spaces, guide × ELBO."""
    import torch

    from virel_ppl.baselines import BASELINES, check_baseline
    from virel_ppl.train import Trainer

    seen: set[str] = set()
    threads = torch.get_num_threads()
    try:
        for trial in trials:
            cfg = trial.config
            cpu = replace(cfg, device="cpu") if cfg.device.startswith("cuda") else cfg
            cpu.validate()
            key = json.dumps({**cpu.to_dict(), "seed": 0, "run_dir": None}, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            # A small buffer: only the construction is checked here, nothing is trained.
            small = replace(cpu, buffer_size=cpu.batch_size, run_dir=None, tensorboard=False, threads=None)
            try:
                if cfg.algo in BASELINES:  # an external learner: its own checks, no agent of ours to build
                    check_baseline(cpu)
                else:
                    Trainer(small).env.close()
            except ConfigError:
                raise
            except Exception as err:  # gymnasium's unknown-env errors and the like
                raise SweepError(f"{trial.name}: {type(err).__name__}: {err}") from None
    finally:
        torch.set_num_threads(threads)


# --- the trial (runs on a Ray worker) -------------------------------------------------------------------------------


def _last_row(path: Path) -> dict[str, float]:
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


def _metrics(run_dir: Path) -> dict[str, float]:
    """What a trial reports to Tune: the last evaluation and the last training scalars (ε, critic losses)."""
    ev = _last_row(run_dir / "eval.csv")
    tr = _last_row(run_dir / "train.csv")
    out = {"step": int(ev.get("step", 0)), "return_mean": ev.get("return_mean", math.nan)}
    out["return_std"] = ev.get("return_std", math.nan)
    out.update({k.replace("/", "_"): v for k, v in tr.items() if k != "step"})
    return out


def _restore_run_dir(run_dir: Path, source: Path) -> None:
    """Make ``run_dir`` an exact copy of a Tune checkpoint of it."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    shutil.copytree(source, run_dir)


def _restore_if_newer(run_dir: Path, source: Path) -> bool:
    """Replace ``run_dir`` with the Tune checkpoint ``source`` only when that holds a later checkpoint (or the run
    directory none): the run's own ``checkpoint.pt`` can be newer than the last checkpoint Tune registered (a
    Ctrl-C between the copy and its registration), and an older copy would delete the steps in between. Returns
    whether it replaced the run directory."""
    from virel_ppl.runtime.checkpoints import checkpoint_step

    theirs = checkpoint_step(source)
    mine = checkpoint_step(run_dir) if run_dir.exists() else None
    if theirs is None or (mine is not None and mine >= theirs):
        return False
    _restore_run_dir(run_dir, source)
    return True


def _trainable(
    param: dict, specs: Mapping[str, dict], hooks: Sequence[Hook] = (), tune_checkpoints: bool = True
) -> None:
    """One Tune trial: restore the run directory from Tune's checkpoint (or resume/start it), train, report."""
    from ray import tune

    from virel_ppl.baselines import BASELINES, finished, train_sb3_sac
    from virel_ppl.train import CHECKPOINT, train

    sys.unraisablehook = _exit_noise_dropped  # this worker process: Ray's actor exit is not an error to print
    spec = specs[param["name"]]
    cfg = Config.from_dict(spec["config"])
    run_dir = Path(spec["run_dir"])
    cfg = replace(cfg, run_dir=run_dir)
    checkpoint = tune.get_checkpoint() if tune_checkpoints else None
    if checkpoint is not None:
        with checkpoint.as_directory() as src:
            _restore_if_newer(run_dir, Path(src))  # never an older copy over a newer run directory
    if cfg.algo in BASELINES:  # an external learner: it resumes from its own checkpoint at its last evaluation

        def report_eval(step: int) -> None:
            if step < cfg.total_steps:  # the last one is reported once, below
                ckpt = tune.Checkpoint.from_directory(str(run_dir)) if tune_checkpoints else None
                tune.report(_metrics(run_dir), checkpoint=ckpt)

        if not finished(run_dir, cfg.total_steps):
            train_sb3_sac(cfg, on_eval=report_eval)
        tune.report({**_metrics(run_dir), "finished": True})
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
        tune.report(_metrics(run_dir), checkpoint=ckpt)

    # train() installs its Ctrl-C/SIGTERM handlers only on the main thread; in Tune's worker thread Tune stops a trial
    if (run_dir / CHECKPOINT).exists():
        result = train(resume=run_dir, hooks=[*hooks, report])
    else:
        result = train(cfg, hooks=[*hooks, report])
    final = tune.Checkpoint.from_directory(str(run_dir)) if tune_checkpoints else None
    tune.report({**_metrics(run_dir), "finished": not result.interrupted}, checkpoint=final)
    if result.interrupted:
        raise RuntimeError(f"{run_dir.name} was stopped at step {result.steps}; it resumes from its checkpoint.")


# --- the driver -----------------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """What a sweep leaves: its run directories, the report and the trials that failed."""

    root: Path
    run_dirs: list[Path]
    report: Path | None
    table: str
    failed: list[str] = field(default_factory=list)
    interrupted: bool = False


def _check_address(address: str) -> None:
    """Fail fast (seconds, not Ray's minutes) when ``HOST:PORT`` or ``ray://HOST:PORT`` does not answer."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise SweepError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT.")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise SweepError(
            f"--address {address}: no Ray cluster answers there ({err.strerror or err}); start one with "
            "`ray start --head` or check the address."
        ) from None


def _package_root() -> str:
    import virel_ppl

    return str(Path(virel_ppl.__file__).resolve().parent.parent)


@contextmanager
def _quiet_ray_core():
    """Hold back what Ray's C++ core writes to stderr while it connects: each unanswered retry of a connection to
    something that is not a Ray head is a line (``Failed to connect to GCS ... within 5 seconds``, ~20 before Ray
    gives up). On success it is written out as it came; on failure it is dropped, and the sweep's ``error:`` line
    says what happened. (Ray's core logs before its log level is set, so only the file descriptor can hold it.)"""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


@contextmanager
def _unhandled_errors_ignored():
    """Ray logs an ``ActorDiedError`` traceback for each result of a stopped trial actor that nobody fetched (Tune
    ends actors whose last calls are still pending) as "Unhandled error". Tune reports a trial's own errors itself
    (``SweepResult.failed``, ROOT/tune/.../error.txt), so these are shutdown noise: Ray's switch
    ``RAY_IGNORE_UNHANDLED_ERRORS`` (read when such an error is seen) turns them off while the trials run."""
    old = os.environ.get("RAY_IGNORE_UNHANDLED_ERRORS")
    os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RAY_IGNORE_UNHANDLED_ERRORS", None)


def _exit_noise_dropped(unraisable) -> None:
    """``sys.unraisablehook`` of a trial's worker: Ray ends an actor by raising ``SystemExit`` in it, which Python
    reports as "Exception ignored in ..." where it cannot propagate (a finished trial's threads); the rest as usual."""
    if isinstance(unraisable.exc_value, SystemExit):
        return
    sys.__unraisablehook__(unraisable)


def start_ray(address: str | None = None, num_cpus: int | None = None, **kwargs) -> None:
    """Connect to the cluster at ``address``, or start Ray on this machine (``num_cpus``: the cores, no dashboard,
    a small object store: trials pass files, not objects). Workers import this copy of ``virel_ppl``."""
    import ray

    if address is not None:
        _check_address(address)
        runtime_env = {"py_modules": [str(Path(_package_root()) / "virel_ppl")]} if address != "local" else None
        try:
            with _quiet_ray_core():
                ray.init(address=address, runtime_env=runtime_env, logging_level="ERROR", **kwargs)
        except (ConnectionError, RuntimeError, TimeoutError) as err:
            first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
            raise SweepError(
                f"--address {address}: something answers there, but Ray cannot connect to it ({first.rstrip('.')}); "
                "check that it is a Ray head's address (`ray status` on the head prints it)."
            ) from None
        return
    pythonpath = os.pathsep.join(p for p in (_package_root(), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=False,
        object_store_memory=kwargs.pop("object_store_memory", 256 * 1024**2),
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        logging_level="ERROR",
        **kwargs,
    )


LOCK_FILE = ".lock"


class _RootLock:
    """An exclusive ``fcntl.flock`` on ``ROOT/.lock``, held while a sweep runs there: a second sweep into the same
    root is refused at once (its check of the root cannot race the first one's sweep.json). The kernel releases it
    when the process ends, however it ends."""

    def __init__(self, root: Path) -> None:
        import fcntl

        self.root, self.created, self.kept = root, not root.exists(), False
        root.mkdir(parents=True, exist_ok=True)
        self.file = open(root / LOCK_FILE, "a+")  # noqa: SIM115 - held for the sweep's life
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise SweepError(
                f"{root} is in use by another sweep ({holder} holds {root / LOCK_FILE}); wait for it to end, or "
                "choose another --root."
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self.file.flush()

    def keep(self) -> None:
        """The sweep has started: the root stays, whatever happens next."""
        self.kept = True

    def release(self) -> None:
        """Unlock; a root this lock created for a sweep that never started is removed again."""
        self.file.close()  # closing the last descriptor drops the flock
        if self.created and not self.kept:
            (self.root / LOCK_FILE).unlink(missing_ok=True)
            try:
                self.root.rmdir()  # only when empty
            except OSError:
                pass


def _lock_root(root: Path) -> _RootLock:
    return _RootLock(root)


def _check_resources(resources: Mapping[str, float], trials: Sequence[Trial], gpus_per_trial: float) -> None:
    """Refuse a trial that the cluster could never place (Tune would wait for it for ever)."""
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    if gpus_per_trial > gpus:
        have = "no GPU" if gpus == 0 else f"{gpus:g} GPU(s)"
        raise SweepError(
            f"--gpus-per-trial {gpus_per_trial:g}: the Ray cluster has {have} (and {cpus:g} CPUs), so no trial "
            "could start; use --gpus-per-trial 0 (CPU trials) or a cluster with GPUs."
        )
    threads = max(t.config.threads or 1 for t in trials)
    if threads > cpus:
        raise SweepError(
            f"--set threads={threads}: each trial needs {threads} CPUs and the Ray cluster has {cpus:g}, so no trial "
            "could start; lower threads."
        )


def _trial_name(trial) -> str:
    return trial.config["name"]


def _spec_of(trials: Sequence[Trial], root: Path) -> list[dict]:
    return [{"name": t.name, "run_dir": str(root / t.name), "config": t.config.to_dict()} for t in trials]


def _same_run(saved: dict, config: dict) -> bool:
    """Whether a run directory's config.json is the trial's config (a baseline records only the fields it uses)."""
    keep = [k for k in saved if k in config and k not in ("run_dir", "progress", "tensorboard")]
    return bool(keep) and all(saved[k] == config[k] for k in keep)


def _check_root(root: Path, specs: list[dict], resume: bool | str) -> None:
    """Check ``root`` against the sweep saved there (nothing is written)."""
    saved_path = root / SWEEP_FILE
    if saved_path.exists():
        saved = json.loads(saved_path.read_text())["trials"]
        if resume is False:
            raise SweepError(f"{root} already holds a sweep: add --resume to continue it, or choose another --root.")
        if [(s["name"], s["config"]) for s in saved] != [(s["name"], s["config"]) for s in specs]:
            names = sorted({s["name"] for s in saved} ^ {s["name"] for s in specs})
            detail = f" (trials in one but not the other: {', '.join(names[:6])})" if names else " (settings differ)"
            raise SweepError(f"The grid differs from the sweep saved in {root}{detail}; choose another --root.")
    elif resume is True:
        raise SweepError(f"--resume: no sweep in {root} ({SWEEP_FILE} is missing).")
    else:
        for s in specs:  # a run directory of the same name must be the same run (then it is continued)
            cfg_path = Path(s["run_dir"]) / "config.json"
            if cfg_path.exists() and not _same_run(json.loads(cfg_path.read_text()), s["config"]):
                raise SweepError(f"{cfg_path.parent} holds a different run; choose another --root.")


def _fetch_run_dir(result, run_dir: Path) -> None:
    """A run directory on another machine: copy it from the trial's last Tune checkpoint, unless the run directory
    here is as new (the same or a later checkpoint, see :func:`_restore_if_newer`)."""
    if result.checkpoint is None:
        return
    with result.checkpoint.as_directory() as src:
        _restore_if_newer(run_dir, Path(src))


def _unfinished(experiment: str, results) -> int:
    """Trials that a Ctrl-C on the driver left running or pending (ASHA's early stops count as finished).

    Read from the experiment state Tune saved: after a Ctrl-C, ``fit()`` returns with the stopped trials marked
    terminated in memory, while the saved state keeps them running (which is what ``Tuner.restore`` resumes)."""
    from ray.tune import ExperimentAnalysis

    try:
        return sum(t.status not in ("TERMINATED", "ERROR") for t in ExperimentAnalysis(experiment).trials)
    except Exception:  # an unreadable state: fall back on the last reports (a finished run reports finished)
        return sum(res.error is None and not (res.metrics or {}).get("finished") for res in results)


def report_table(report_md: Path) -> str:
    """The final-return table of a report (the ``## Final evaluation return`` section of report.md)."""
    lines = report_md.read_text().splitlines()
    start = lines.index("## Final evaluation return")
    table = [ln for ln in itertools.takewhile(lambda ln: not ln.startswith("## ") or ln == lines[start], lines[start:])]
    return "\n".join(ln for ln in table if ln.startswith("|"))


def make_scheduler(search: str, budget: int, grace_steps: int | None = None, reduction_factor: int = 3):
    """None for a grid; for ``asha`` an ASHA scheduler whose clock is the env step (``step`` in the reports)."""
    if search == "grid":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="step",
        max_t=budget,
        grace_period=grace_steps or max(1, budget // 4),
        reduction_factor=reduction_factor,
    )


def sweep(
    grid: Mapping[str, Sequence] | Sequence[Trial],
    base: Config | None = None,
    root: Path | str = "runs/sweep",
    *,
    group_by: Sequence[str] | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
    gpus_per_trial: float = 0.0,
    search: str = "grid",
    metric: str = "return_mean",
    mode: str = "max",
    grace_steps: int | None = None,
    reduction_factor: int = 3,
    max_failures: int = 3,
    checkpoint_every: int | None = None,
    tune_checkpoints: bool = True,
    resume: bool | str = False,
    hooks: Sequence[Hook] = (),
    verbose: int = 1,
    storage: str | None = None,
) -> SweepResult:
    """Run the grid as Ray Tune trials into ``root``; returns the run directories and the report.

    Args:
        grid: Config field → values; the trials are their product over ``base``. Or a list of :class:`Trial`
            (run in that order; ``base`` is then unused), whose report groups by ``group_by`` (default env, algo).
        address: None: start Ray on this machine; ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``: a running
            cluster. A process already connected to Ray (``ray.init``) sweeps there and ignores ``address``.
        max_concurrent: trials at once (None: the cluster's CPUs; each trial takes ``threads`` CPUs, default 1).
        gpus_per_trial: GPUs per trial (fractions share a GPU); > 0 runs trials with ``device=cuda``.
        search: ``grid`` (every trial to the end) or ``asha`` (ASHA stops weak trials early, budget in env steps:
            first decision at ``grace_steps``, default a quarter of the budget; keeps 1/``reduction_factor``).
        max_failures: restarts of a trial whose worker died (each from its last checkpoint).
        checkpoint_every: env steps between checkpoints of each run (None: at every evaluation).
        tune_checkpoints: hand Tune a copy of the run directory at each checkpoint (see the module docstring).
        resume: True: continue the sweep saved in ``root`` (``Tuner.restore``: finished trials are not rerun);
            ``"auto"``: continue it when there is one; False: refuse a root that holds a sweep.
        hooks: extra ``hook(trainer, step)`` for every trial (picklable: they travel to the workers).
        storage: Tune's storage (a shared path or ``s3://...`` on a cluster); default ``root``.

    While it runs the sweep holds a lock on ``root`` (``ROOT/.lock``): a second sweep into the same root is refused.
    """
    root = Path(root).resolve()
    if search not in ("grid", "asha"):
        raise SweepError(f"--search must be grid or asha, got {search!r}.")
    if metric not in ("step", "return_mean", "return_std", "eps") and metric.split("_")[0] not in STAT_PREFIXES:
        raise SweepError(
            f"--metric {metric} is not reported; choose return_mean, return_std, eps or a train.csv column with "
            "/ written as _ (critic_q_loss, actor_loss, sac_alpha, ...)."
        )
    if mode not in ("max", "min"):
        raise SweepError(f"--mode must be max or min, got {mode!r}.")
    if max_concurrent is not None and max_concurrent < 1:
        raise SweepError(f"--max-concurrent must be at least 1, got {max_concurrent}.")
    if gpus_per_trial < 0 or max_failures < 0:
        raise SweepError("--gpus-per-trial and --max-failures must be >= 0.")
    if isinstance(grid, Mapping):
        base = base or Config()
        if gpus_per_trial > 0 and base.device == "cpu" and "device" not in grid:
            base = replace(base, device="cuda")
        trials, group_by = plan(grid, base, checkpoint_every)
    else:  # trials built by the caller (e.g. benchmarks/paper.py: a preset per task, seed-major order)
        trials, group_by = list(grid), list(group_by or ("env", "algo"))
        names = [t.name for t in trials]
        if not trials or len(set(names)) != len(names):
            raise SweepError("A sweep needs at least one trial, and each trial its own name.")
        _check(trials)
    specs = _spec_of(trials, root)

    if address is not None:
        _check_address(address)
    lock = _lock_root(root)  # before the root is checked: a second sweep that starts now waits for nothing
    try:
        _check_root(root, specs, resume)
        return _run(trials, specs, root, group_by, lock, resume=resume, address=address,
                    max_concurrent=max_concurrent, gpus_per_trial=gpus_per_trial, search=search, metric=metric,
                    mode=mode, grace_steps=grace_steps, reduction_factor=reduction_factor, max_failures=max_failures,
                    tune_checkpoints=tune_checkpoints, hooks=hooks, verbose=verbose, storage=storage)  # fmt: skip
    finally:
        lock.release()


def _run(
    trials: Sequence[Trial], specs: list[dict], root: Path, group_by: Sequence[str], lock: _RootLock, *,
    resume: bool | str, address: str | None, max_concurrent: int | None, gpus_per_trial: float, search: str,
    metric: str, mode: str, grace_steps: int | None, reduction_factor: int, max_failures: int,
    tune_checkpoints: bool, hooks: Sequence[Hook], verbose: int, storage: str | None,
) -> SweepResult:  # fmt: skip
    """The sweep after its checks, with ``root`` locked: start (or join) Ray, run the trials, write the report."""
    import ray
    from ray import tune

    from virel_ppl.analysis.report import write_report

    started = False
    if not ray.is_initialized():
        start_ray(address)
        started = True
    try:
        _check_resources(ray.cluster_resources(), trials, gpus_per_trial)
        lock.keep()  # from here on the root holds this sweep: a failure below leaves it for --resume
        (root / SWEEP_FILE).write_text(json.dumps({"trials": specs}, indent=1))
        experiment = f"{storage.rstrip('/')}/{EXPERIMENT}" if storage else str(root / EXPERIMENT)
        restore = resume is not False and tune.Tuner.can_restore(experiment)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        max_concurrent = max_concurrent or cpus
        trainable = tune.with_resources(
            tune.with_parameters(
                _trainable, specs={s["name"]: s for s in specs}, hooks=list(hooks), tune_checkpoints=tune_checkpoints
            ),
            {"cpu": max(t.config.threads or 1 for t in trials), "gpu": gpus_per_trial},
        )
        scheduler = make_scheduler(search, max(t.config.total_steps for t in trials), grace_steps, reduction_factor)
        run_config = tune.RunConfig(
            name=EXPERIMENT,
            storage_path=storage or str(root),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=verbose,
        )
        if restore:
            tuner = tune.Tuner.restore(
                experiment,
                trainable,
                resume_unfinished=True,
                resume_errored=True,
            )
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"name": tune.grid_search([s["name"] for s in specs])},
                tune_config=tune.TuneConfig(
                    metric=metric,
                    mode=mode,
                    scheduler=scheduler,
                    max_concurrent_trials=max_concurrent,
                    trial_name_creator=_trial_name,
                    trial_dirname_creator=_trial_name,
                ),
                run_config=run_config,
            )
        with _unhandled_errors_ignored():
            results = tuner.fit()
        failed = []
        for res in results:
            if not res.config:  # a trial that a Ctrl-C stopped before it started: nothing to fetch
                continue
            run_dir = root / res.config["name"]
            if res.error is not None:
                failed.append(run_dir.name)
            else:
                _fetch_run_dir(res, run_dir)
        interrupted = _unfinished(experiment, results) > 0
    finally:
        if started:
            with _unhandled_errors_ignored():
                ray.shutdown()
    run_dirs = [Path(s["run_dir"]) for s in specs if (Path(s["run_dir"]) / "eval.csv").exists()]
    report, table = None, ""
    if run_dirs and not interrupted:
        report = write_report(run_dirs, root / "report", group_by)
        table = report_table(report)
    return SweepResult(root, run_dirs, report, table, failed, interrupted)

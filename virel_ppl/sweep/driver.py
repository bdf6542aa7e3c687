"""The driver of a sweep: its options (:class:`SweepOptions`, the one declaration that the command line parses and
:func:`sweep` takes), Ray started or joined, the root locked and checked against the sweep saved there (resume), the
trials run by Tune, their run directories fetched and the report written."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import tyro

from virel_ppl.config import Config
from virel_ppl.sweep.grid import SweepError, Trial, check_trials, plan
from virel_ppl.sweep.ray_noise import quiet_ray_core, unhandled_errors_ignored
from virel_ppl.sweep.trainable import STAT_PREFIXES, restore_if_newer, trainable

if TYPE_CHECKING:  # annotations only: the driver imports no trainer
    from virel_ppl.runtime.trainer import Hook

SWEEP_FILE = "sweep.json"
EXPERIMENT = "tune"
#: Tune's log of a trial's reports (ROOT/tune/<trial>/progress.csv): each evaluation's metrics and wall clock.
PROGRESS_FILE = "progress.csv"


@dataclass
class SweepOptions:
    """How a sweep runs (everything but its grid): ``virel_ppl sweep``'s flags and :func:`sweep`'s keywords."""

    root: Path = Path("runs/sweep")
    """Folder of the run directories, the report (ROOT/report) and Tune's state (ROOT/tune)."""
    address: str | None = None
    """None: start Ray on this machine; auto, HOST:PORT or ray://HOST:PORT: a running Ray cluster (a process
    already connected to Ray sweeps there and ignores it)."""
    max_concurrent: int | None = None
    """Trials at once; None: the number of CPUs (each trial takes --set threads CPUs, default 1)."""
    gpus_per_trial: float = 0.0
    """GPUs per trial (fractions share one GPU); > 0 trains on cuda."""
    search: Literal["grid", "asha"] = "grid"
    """grid: every run to the end; asha: ASHA stops weak runs early (decisions at env-step milestones)."""
    metric: str = "return_mean"
    """Metric that ASHA compares (return_mean, return_std, eps, critic_q_loss, ...)."""
    mode: Literal["max", "min"] = "max"
    grace_steps: int | None = None
    """asha: env steps before a run can be stopped; None: a quarter of the budget."""
    reduction_factor: int = 3
    """asha: keep the best 1/reduction-factor at each milestone."""
    max_failures: int = 3
    """Restarts of a trial whose worker dies (each resumes its run directory exactly)."""
    tune_checkpoints: bool = True
    """Hand Tune a copy of the run directory at each checkpoint (needed without a shared filesystem);
    --no-tune-checkpoints keeps checkpoints in the run directories only."""
    storage: str | None = None
    """Tune's storage (a shared path or s3://... on a cluster); None: ROOT."""
    # named apart from the command line's own --resume: tyro < 0.9 still registers a suppressed field's flag
    resume: tyro.conf.Suppress[Annotated[bool | Literal["auto"], tyro.conf.arg(name="resume-mode")]] = False
    """True: continue the sweep saved in ``root`` (finished trials are not rerun); "auto": continue it when there is
    one; False: refuse a root that holds a sweep. (The command line's --resume is True.)"""
    checkpoint_every: tyro.conf.Suppress[int | None] = None
    """Env steps between checkpoints of each run; None: at every evaluation. (The command line: --set
    checkpoint_every=N.)"""
    verbose: tyro.conf.Suppress[int] = 1
    """Tune's verbosity."""

    def check(self) -> None:
        """``SweepError`` in one line for a value a sweep cannot use."""
        if self.search not in ("grid", "asha"):
            raise SweepError(f"--search must be grid or asha, got {self.search!r}.")
        metric = self.metric
        if metric not in ("step", "return_mean", "return_std", "eps") and metric.split("_")[0] not in STAT_PREFIXES:
            raise SweepError(
                f"--metric {metric} is not reported; choose return_mean, return_std, eps or a train.csv column with "
                "/ written as _ (critic_q_loss, actor_loss, sac_alpha, ...)."
            )
        if self.mode not in ("max", "min"):
            raise SweepError(f"--mode must be max or min, got {self.mode!r}.")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise SweepError(f"--max-concurrent must be at least 1, got {self.max_concurrent}.")
        if self.gpus_per_trial < 0 or self.max_failures < 0:
            raise SweepError("--gpus-per-trial and --max-failures must be >= 0.")


@dataclass
class SweepResult:
    """What a sweep leaves: its run directories, the report and the trials that failed."""

    root: Path
    run_dirs: list[Path]
    report: Path | None
    table: str
    failed: list[str] = field(default_factory=list)
    interrupted: bool = False


def check_address(address: str) -> None:
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


def package_root() -> str:
    import virel_ppl

    return str(Path(virel_ppl.__file__).resolve().parent.parent)


def start_ray(address: str | None = None, num_cpus: int | None = None, **kwargs) -> None:
    """Connect to the cluster at ``address``, or start Ray on this machine (``num_cpus``: the cores, no dashboard,
    a small object store: trials pass files, not objects). Workers import this copy of ``virel_ppl``."""
    import ray

    if address is not None:
        check_address(address)
        runtime_env = {"py_modules": [str(Path(package_root()) / "virel_ppl")]} if address != "local" else None
        try:
            with quiet_ray_core():
                ray.init(address=address, runtime_env=runtime_env, logging_level="ERROR", **kwargs)
        except (ConnectionError, RuntimeError, TimeoutError) as err:
            first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
            raise SweepError(
                f"--address {address}: something answers there, but Ray cannot connect to it ({first.rstrip('.')}); "
                "check that it is a Ray head's address (`ray status` on the head prints it)."
            ) from None
        return
    pythonpath = os.pathsep.join(p for p in (package_root(), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=False,
        object_store_memory=kwargs.pop("object_store_memory", 256 * 1024**2),
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        logging_level="ERROR",
        **kwargs,
    )


LOCK_FILE = ".lock"


class RootLock:
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


def check_resources(resources: Mapping[str, float], trials: Sequence[Trial], gpus_per_trial: float) -> None:
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


def trial_name(trial) -> str:
    return trial.config["name"]


def spec_of(trials: Sequence[Trial], root: Path) -> list[dict]:
    return [{"name": t.name, "run_dir": str(root / t.name), "config": t.config.to_dict()} for t in trials]


def same_run(saved: dict, config: dict) -> bool:
    """Whether a run directory's config.json is the trial's config (a baseline records only the fields it uses)."""
    keep = [k for k in saved if k in config and k not in ("run_dir", "progress", "tensorboard")]
    return bool(keep) and all(saved[k] == config[k] for k in keep)


def check_root(root: Path, specs: list[dict], resume: bool | str) -> None:
    """Check ``root`` against the sweep saved there (nothing is written)."""
    saved_path = root / SWEEP_FILE
    if saved_path.exists():
        saved = json.loads(saved_path.read_text())["trials"]
        if resume is False:
            raise SweepError(f"{root} already holds a sweep: add --resume to continue it, or choose another --root.")
        as_now = [(s["name"], Config.from_dict(s["config"]).to_dict()) for s in saved]  # older fields dropped
        if as_now != [(s["name"], s["config"]) for s in specs]:
            names = sorted({s["name"] for s in saved} ^ {s["name"] for s in specs})
            detail = f" (trials in one but not the other: {', '.join(names[:6])})" if names else " (settings differ)"
            raise SweepError(f"The grid differs from the sweep saved in {root}{detail}; choose another --root.")
    elif resume is True:
        raise SweepError(f"--resume: no sweep in {root} ({SWEEP_FILE} is missing).")
    else:
        for s in specs:  # a run directory of the same name must be the same run (then it is continued)
            cfg_path = Path(s["run_dir"]) / "config.json"
            if cfg_path.exists() and not same_run(json.loads(cfg_path.read_text()), s["config"]):
                raise SweepError(f"{cfg_path.parent} holds a different run; choose another --root.")


def fetch_run_dir(result, run_dir: Path) -> None:
    """A run directory on another machine: copy it from the trial's last Tune checkpoint, unless the run directory
    here is as new (the same or a later checkpoint, see :func:`_restore_if_newer`)."""
    if result.checkpoint is None:
        return
    with result.checkpoint.as_directory() as src:
        restore_if_newer(run_dir, Path(src))


def unfinished(experiment: str, results) -> int:
    """Trials that a Ctrl-C on the driver left running or pending (ASHA's early stops count as finished).

    Read from the experiment state Tune saved: after a Ctrl-C, ``fit()`` returns with the stopped trials marked
    terminated in memory, while the saved state keeps them running (which is what ``Tuner.restore`` resumes)."""
    from ray.tune import ExperimentAnalysis

    try:
        return sum(t.status not in ("TERMINATED", "ERROR") for t in ExperimentAnalysis(experiment).trials)
    except Exception:  # an unreadable state: fall back on the last reports (a finished run reports finished)
        return sum(res.error is None and not (res.metrics or {}).get("finished") for res in results)


def _kept_progress(trial_dir: Path) -> list[Path]:
    """The kept copies ``progress.1.csv``, ``progress.2.csv``, ... of a trial's Tune directory, oldest first."""
    kept = [p for p in trial_dir.glob("progress.*.csv") if p.name.split(".")[1].isdigit()]
    return sorted(kept, key=lambda p: int(p.name.split(".")[1]))


def keep_progress(experiment: Path) -> list[Path]:
    """Copy each trial's ``progress.csv`` in the Tune experiment ``experiment`` to ``progress.N.csv`` beside it (N =
    1, 2, ...), before a resumed sweep restarts its trials; returns the copies made.

    When a sweep whose processes were all stopped resumes (a new Ray), Tune starts afresh the ``progress.csv`` of
    each trial that handed it no checkpoint (``tune_checkpoints=False``; seen with Ray 2.60): the rows of the earlier
    drivers, with the wall clock of each evaluation, would be lost. A file without rows, or one already kept, is not
    copied again. :func:`progress_rows` reads them all back."""
    copies = []
    for progress in sorted(experiment.glob(f"*/{PROGRESS_FILE}")):
        text = progress.read_text()
        kept = _kept_progress(progress.parent)
        if len(text.splitlines()) < 2 or any(p.read_text() == text for p in kept):
            continue
        copy = progress.with_name(f"progress.{len(kept) + 1}.csv")
        shutil.copy2(progress, copy)
        copies.append(copy)
    return copies


def progress_rows(trial_dir: Path) -> list[dict[str, str]]:
    """Every report of a trial, oldest first: the rows of its kept ``progress.N.csv`` files (see
    :func:`keep_progress`) and of ``progress.csv``, each row once (a file Tune continued repeats the earlier rows).
    Tune's ``iterations_since_restore`` and ``time_since_restore`` count within one run of the trial."""
    rows: list[dict[str, str]] = []
    seen: set[tuple] = set()
    for path in [*_kept_progress(trial_dir), trial_dir / PROGRESS_FILE]:
        if not path.exists():
            continue
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                key = tuple(sorted(row.items()))
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
    return rows


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
    root: Path | str | None = None,
    *,
    options: SweepOptions | None = None,
    group_by: Sequence[str] | None = None,
    hooks: Sequence[Hook] = (),
    **settings: Any,
) -> SweepResult:
    """Run the grid as Ray Tune trials into ``root``; returns the run directories and the report.

    Args:
        grid: Config field → values; the trials are their product over ``base``. Or a list of :class:`Trial`
            (run in that order; ``base`` is then unused), whose report groups by ``group_by`` (default env, algo).
        root: where the runs go (``options.root`` when None).
        options: how the sweep runs (:class:`SweepOptions`); ``settings`` are fields of it that replace its values,
            e.g. ``sweep(grid, base, root, max_concurrent=2, resume="auto")``.
        hooks: extra ``hook(trainer, step)`` for every trial (picklable: they travel to the workers).

    While it runs the sweep holds a lock on ``root`` (``ROOT/.lock``): a second sweep into the same root is refused.
    """
    options = replace(options or SweepOptions(), **settings, **({"root": Path(root)} if root is not None else {}))
    options.check()
    root = Path(options.root).resolve()
    if isinstance(grid, Mapping):
        base = base or Config()
        if options.gpus_per_trial > 0 and base.device == "cpu" and "device" not in grid:
            base = replace(base, device="cuda")
        trials, group_by = plan(grid, base, options.checkpoint_every)
    else:  # trials built by the caller (e.g. benchmarks/paper.py: a preset per task, seed-major order)
        trials, group_by = list(grid), list(group_by or ("env", "algo"))
        names = [t.name for t in trials]
        if not trials or len(set(names)) != len(names):
            raise SweepError("A sweep needs at least one trial, and each trial its own name.")
        check_trials(trials)
    specs = spec_of(trials, root)

    if options.address is not None:
        check_address(options.address)
    lock = RootLock(root)  # before the root is checked: a second sweep that starts now waits for nothing
    try:
        check_root(root, specs, options.resume)
        return _run(trials, specs, root, group_by, lock, options, hooks)
    finally:
        lock.release()


def make_tuner(
    trials: Sequence[Trial], specs: list[dict], root: Path, experiment: str, o: SweepOptions, hooks: Sequence[Hook]
):
    """The Tune ``Tuner`` of the trials: a new one, or the one saved in ``experiment`` when the sweep resumes."""
    import ray
    from ray import tune

    run_trial = tune.with_resources(
        tune.with_parameters(
            trainable, specs={s["name"]: s for s in specs}, hooks=list(hooks), tune_checkpoints=o.tune_checkpoints
        ),
        {"cpu": max(t.config.threads or 1 for t in trials), "gpu": o.gpus_per_trial},
    )
    if o.resume is not False and "://" not in experiment and Path(experiment).is_dir():
        keep_progress(Path(experiment))  # Tune's storage on this machine: the reports a restart would drop
    if o.resume is not False and tune.Tuner.can_restore(experiment):
        return tune.Tuner.restore(experiment, run_trial, resume_unfinished=True, resume_errored=True)
    budget = max(t.config.total_steps for t in trials)
    return tune.Tuner(
        run_trial,
        param_space={"name": tune.grid_search([s["name"] for s in specs])},
        tune_config=tune.TuneConfig(
            metric=o.metric,
            mode=o.mode,
            scheduler=make_scheduler(o.search, budget, o.grace_steps, o.reduction_factor),
            max_concurrent_trials=o.max_concurrent or int(ray.cluster_resources().get("CPU", 1)),
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=o.storage or str(root),
            failure_config=tune.FailureConfig(max_failures=o.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=o.verbose,
        ),
    )


def _run(
    trials: Sequence[Trial],
    specs: list[dict],
    root: Path,
    group_by: Sequence[str],
    lock: RootLock,
    options: SweepOptions,
    hooks: Sequence[Hook],
) -> SweepResult:
    """The sweep after its checks, with ``root`` locked: start (or join) Ray, run the trials, write the report."""
    import ray

    from virel_ppl.analysis.report import write_report

    o = options
    started = False
    if not ray.is_initialized():
        start_ray(o.address)
        started = True
    try:
        check_resources(ray.cluster_resources(), trials, o.gpus_per_trial)
        lock.keep()  # from here on the root holds this sweep: a failure below leaves it for --resume
        (root / SWEEP_FILE).write_text(json.dumps({"trials": specs}, indent=1))
        experiment = f"{o.storage.rstrip('/')}/{EXPERIMENT}" if o.storage else str(root / EXPERIMENT)
        tuner = make_tuner(trials, specs, root, experiment, o, hooks)
        with unhandled_errors_ignored():
            results = tuner.fit()
        failed = []
        for res in results:
            if not res.config:  # a trial that a Ctrl-C stopped before it started: nothing to fetch
                continue
            run_dir = root / res.config["name"]
            if res.error is not None:
                failed.append(run_dir.name)
            else:
                fetch_run_dir(res, run_dir)
        interrupted = unfinished(experiment, results) > 0
    finally:
        if started:
            with unhandled_errors_ignored():
                ray.shutdown()
    run_dirs = [Path(s["run_dir"]) for s in specs if (Path(s["run_dir"]) / "eval.csv").exists()]
    report, table = None, ""
    if run_dirs and not interrupted:
        report = write_report(run_dirs, root / "report", group_by)
        table = report_table(report)
    return SweepResult(root, run_dirs, report, table, failed, interrupted)

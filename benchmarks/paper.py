"""VIREL against SAC on MuJoCo: the paper's comparison as one sweep.

    python benchmarks/paper.py                                  # 3 tasks x 3 seeds, 100k steps, 2 trials at a time
    python benchmarks/paper.py --table                          # the table and curves from what has finished
    python benchmarks/paper.py --study humanoid                 # Humanoid-v5, 500k steps: beta, SB3's SAC, then virel
    python benchmarks/paper.py --study humanoid --table         # its table, with returns at 100k, 250k and 500k
    python benchmarks/paper.py --budget 1000000 --tasks HalfCheetah-v5 Hopper-v5 Walker2d-v5 Ant-v5 Humanoid-v5 \\
        --seeds 0 1 2 3 4 --address auto --max-concurrent 75    # the paper's scale, on a Ray cluster

Learners, each an ordinary run directory ``ROOT/<env>__<algo>__<seed>`` of one Ray Tune sweep
(``virel_ppl.sweep``, so ``--address`` takes it to a cluster):

- stage 1: ``beta`` and ``virel`` with ``--preset paper`` (VIREL App. I: batch 128, 300-300 networks, Adam 3e-4, the
  reward-scale table, the beta rule's λ from the table), and SB3's SAC (``sb3_sac``: its own defaults,
  ``learning_starts`` = our warm-up; ``pip install -e ".[bench]"``) as the external reference;
- stage 2 (``--then``): ``sac_auto``, our SAC written as a model edit, with the paper preset's networks and batch,
  which tells a gap of the algorithm from a gap of the framework.

Trials run seed-major (every task and learner at seed 0, then seed 1, ...; stage 2 after stage 1), so the table is
balanced whenever the work stops. Running the same command again continues the sweep in ``--root``: finished trials
are kept, the others (ours and SB3's alike) resume from the checkpoint of their last evaluation, exactly as if they
had not stopped. Under a new ``--root`` (the
old one lost), the trials already finished in ``--results`` are left out and only the others run. Every evaluation
uses the mode action, ``--eval-episodes`` episodes on the same seeds at the same steps, for all learners.

As each trial finishes, its ``config.json``, ``eval.csv``, ``train.csv``, ``timing.csv`` (Tune's wall clock at each
evaluation, every run of the trial: a resumed sweep keeps the earlier ones, see ``virel_ppl.sweep.keep_progress``) and
``commits.json`` (the commit of each driver that ran part of it, with the step it started from) are copied to
``--results`` (default ``benchmarks/results/paper/<trial>/``); a trial that failed is copied with its ``error.txt``
and shows in the table as diverged (with the step) or failed, never as a number; the run directory of a finished trial
keeps its latest checkpoint only. ``--table`` prints the Markdown table (return at 25k, 50k and the budget, or at
``--marks``: mean ± sd and IQM with a 95 % bootstrap CI over seeds; env steps/s; ahead, on par or behind SAC), the
training signals behind it (ε, TD-MSE, H(π) and mean Q from ``train.csv`` near the same steps) and writes the curves
(``virel_ppl report``) to ``--results``/report/ (a named study's to ``report/<study>/``, with its tasks only).

A named study (``--study``) is a set of these settings under a name: ``humanoid`` is ``--tasks Humanoid-v5 --budget
500000 --eval-every 10000 --algos beta sb3_sac --then virel --root runs/paper-humanoid --marks 100000 250000 500000``
(App. I gives Humanoid its own λ = 4e-4 for ``beta``, in the paper preset). Flags given with it override its values.

A tuned row is a learner of ours with some fields changed, run and reported apart from the
defaults: ``--tuned virel:alpha=0.2 --tasks Hopper-v5`` runs ``Hopper-v5__virel+alpha=0.2__<seed>`` for the seeds
(its own sweep, under ``runs/paper-tuned``, or a study's root with ``-tuned`` added, unless ``--root`` says
otherwise) into the same ``--results``. The table puts each tuned row under its task's defaults, by its label, and
its curves go to ``report/tuned/``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from virel_ppl.config import Config, ConfigError, preset_config

TASKS = ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"]
STAGE1 = ["beta", "virel", "sb3_sac"]
STAGE2 = ["sac_auto"]
REFERENCE = "sb3_sac"
COPIED = ("config.json", "eval.csv", "train.csv")
#: Named studies (``--study``): the flags each one sets.
STUDIES = {
    "humanoid": dict(
        tasks=["Humanoid-v5"],
        budget=500_000,
        eval_every=10_000,
        algos=["beta", "sb3_sac"],
        then=["virel"],
        root=Path("runs/paper-humanoid"),
        marks=[100_000, 250_000, 500_000],
    ),
}
TRIAL_FIELDS = ("total_steps", "eval_every", "eval_episodes", "checkpoint_every", "threads")  # the study's, every trial
HERE = Path(__file__).resolve().parent


def trial_config(env: str, algo: str, seed: int, args: argparse.Namespace) -> Config:
    """The config of one trial: the paper preset for ours (SB3's SAC reads only env, seed, budget, warm-up and
    evaluation settings from it)."""
    common = dict(
        env=env,
        algo=algo,
        seed=seed,
        total_steps=args.budget,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        checkpoint_every=args.eval_every,
        threads=1,
        progress=False,
        tensorboard=False,
    )
    return replace(preset_config("paper", env=env), **common)


@dataclass(frozen=True)
class Tuned:
    """A tuned learner: ``algo`` with ``fields`` changed, named ``label`` in the trials and the table."""

    label: str
    algo: str
    fields: dict


def parse_tuned(spec: str) -> Tuned:
    """``"virel:alpha=0.2"`` → ``Tuned("virel+alpha=0.2", "virel", {"alpha": 0.2})``; each field is read as its
    Config type (``virel_ppl.sweep.parse_set``), one value each."""
    from virel_ppl.sweep import SweepError, parse_set, value_label
    from virel_ppl.variants import VARIANTS

    algo, _, rest = spec.partition(":")
    if not rest:
        raise ConfigError(f"--tuned {spec}: write ALGO:FIELD=VALUE[:FIELD=VALUE...], e.g. --tuned virel:alpha=0.2.")
    if algo not in VARIANTS:  # SB3's SAC is the reference, run with its own defaults
        raise ConfigError(f"--tuned {spec}: {algo!r} is not one of our learners ({', '.join(sorted(VARIANTS))}).")
    try:
        grid = parse_set(rest.split(":"))
    except SweepError as err:  # its message names --set: say it of --tuned
        raise ConfigError(f"--tuned {spec}: {str(err).split(': ', 1)[-1]}") from None
    for name, values in grid.items():
        if len(values) != 1:
            raise ConfigError(f"--tuned {spec}: one value for {name} (give --tuned again for another row).")
        if name in ("env", "algo", "seed") + TRIAL_FIELDS:
            raise ConfigError(f"--tuned {spec}: {name} is set by the study itself (--tasks, --seeds, --budget...).")
    fields = {name: values[0] for name, values in grid.items()}
    label = algo + "".join(f"+{k}={value_label(v)}" for k, v in fields.items())  # as a sweep names its axes
    if "__" in label or "/" in label or any(c in label for c in "[]*?"):  # a run directory's name, and a glob's
        raise ConfigError(f"--tuned {spec}: its values cannot name a run directory; choose plainer ones.")
    return Tuned(label, algo, fields)


def tuned_in(results: Path, tasks) -> list[str]:
    """The labels of the tuned rows that have trials in ``results`` (on any of ``tasks``), sorted."""
    names = (p.name.split("__") for t in tasks for p in results.glob(f"{t}__*+*__*") if p.is_dir())
    return sorted({parts[1] for parts in names if len(parts) == 3})


def learners(args: argparse.Namespace) -> list[str]:
    """The rows of the table: the defaults, then every tuned row in ``--results`` or on the command line."""
    tuned = [parse_tuned(spec).label for spec in args.tuned]
    return args.algos + args.then + sorted(set(tuned) | set(tuned_in(args.results, args.tasks)))


def plan_trials(args: argparse.Namespace):
    """The trials, seed-major within each stage; with ``--tuned``, only the tuned rows (seed-major too)."""
    from virel_ppl.sweep import Trial

    if args.tuned:
        stages = [[parse_tuned(spec) for spec in args.tuned]]
    else:  # a default learner is one with nothing changed
        stages = [[Tuned(algo, algo, {}) for algo in algos] for algos in (args.algos, args.then)]
    trials = []
    for stage in stages:
        for seed in args.seeds:
            for env in args.tasks:
                for t in stage:
                    cfg = replace(trial_config(env, t.algo, seed, args), **t.fields)
                    trials.append(Trial(f"{env}__{t.label}__{seed}", cfg))
    return trials


def check_args(args: argparse.Namespace) -> None:
    """One line for each bad input, before Ray starts."""
    from virel_ppl.baselines import BASELINES, require_sb3
    from virel_ppl.runtime.envs import check_env_id
    from virel_ppl.variants import VARIANTS

    for env in args.tasks:
        check_env_id(env)

    known = sorted(VARIANTS) + list(BASELINES)
    for algo in args.algos + args.then:
        if algo not in known:
            raise ConfigError(f"Unknown algorithm {algo!r}; choose from {', '.join(known)}.")
    tuned = [parse_tuned(spec) for spec in args.tuned]
    if len({t.label for t in tuned}) != len(tuned):
        raise ConfigError(f"--tuned names a row twice: {' '.join(args.tuned)}.")
    for t in tuned:  # a value out of range (alpha=-1) says so here, in Config's words
        replace(trial_config(args.tasks[0], t.algo, args.seeds[0], args), **t.fields).validate()
    warmup = Config().warmup_steps
    if args.budget <= warmup:
        raise ConfigError(
            f"--budget {args.budget} is not above the warm-up ({warmup} random steps): nothing would train."
        )
    if args.eval_every <= 0 or args.budget % args.eval_every:
        raise ConfigError(f"--eval-every {args.eval_every} must be positive and divide --budget {args.budget}.")
    if not args.tuned and any(a in BASELINES for a in args.algos + args.then):  # --tuned runs only ours
        require_sb3()
    if len(set(args.seeds)) != len(args.seeds) or len(set(args.tasks)) != len(args.tasks):
        raise ConfigError("--tasks and --seeds must not repeat a value.")


def git_commit() -> str:
    """The commit of the code this driver runs (``+dirty`` when the tree has uncommitted changes)."""

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=HERE, capture_output=True, text=True).stdout.strip()

    sha = git("rev-parse", "HEAD") or "unknown"
    return sha + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def _last_step(path: Path) -> int:
    """The last evaluated step in ``path`` (0 without one). A line being written is no step yet (read_csv reads past
    it; no warning, the trial may be running)."""
    from virel_ppl.runtime.logger import read_csv

    steps = read_csv(path, warn=False).get("step", []) if path.exists() else []
    return int(steps[-1]) if steps else 0


def record_commits(root: Path, trials, commit: str) -> None:
    """Append this driver's commit, the step each unfinished trial continues from and the time the driver started
    (not the trial: a trial waits for a free slot) to ROOT/commits.json.

    That step is the one its checkpoint holds (what a resume loads), not the last one it logged: every trial, ours and
    SB3's, loses what it logged after its last checkpoint."""
    from virel_ppl.runtime.checkpoints import checkpoint_step

    path = root / "commits.json"
    seen = json.loads(path.read_text()) if path.exists() else {}
    for t in trials:
        if _last_step(root / t.name / "eval.csv") < t.config.total_steps:
            step = checkpoint_step(root / t.name) or 0
            entry = {"commit": commit, "from_step": step, "started": time.strftime("%F %T")}
            # from scratch, nothing run before counts: the record names only the commits behind the data
            seen[t.name] = [*seen.get(t.name, []), entry] if step else [entry]
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(seen, indent=1))


def _timing(trial_dir: Path) -> list[tuple[int, float, int]]:
    """(step, time_since_restore, iterations_since_restore) of each report in a trial's Tune directory, every run of
    the trial in order (Tune's two clocks restart with each run)."""
    from virel_ppl.sweep import progress_rows

    keys = ("step", "time_since_restore", "iterations_since_restore")
    rows = [r for r in progress_rows(trial_dir) if all(r.get(k) for k in keys)]
    return [(int(float(r["step"])), float(r["time_since_restore"]), int(r["iterations_since_restore"])) for r in rows]


def collect(root: Path, results: Path, trials, *, final: bool = False) -> list[str]:
    """Copy every finished (or failed) trial's small outputs to ``results``; returns the names newly copied. A
    finished trial's ``checkpoint.prev.pt`` is removed (a Humanoid one holds up to 500k transitions).

    A trial writes its last ``eval.csv`` row before Tune records that report, so a finished trial is copied once
    Tune's record reaches its budget too (its ``timing.csv`` would lack the last span otherwise); ``final`` (the
    sweep has ended) copies it with whatever Tune recorded."""
    from virel_ppl.runtime.checkpoints import PREVIOUS

    commits = json.loads((root / "commits.json").read_text()) if (root / "commits.json").exists() else {}
    new = []
    for t in trials:
        run, out = root / t.name, results / t.name
        error = root / "tune" / t.name / "error.txt"
        done = _last_step(run / "eval.csv") == t.config.total_steps
        if done:  # copied once, unless an earlier copy recorded it as failed
            if (out / "eval.csv").exists() and not (out / "error.txt").exists():
                continue
        elif not error.exists() or (out / "error.txt").exists():
            continue  # still running (or its failure is copied already)
        timing = _timing(root / "tune" / t.name)
        if done and not final and (not timing or timing[-1][0] < t.config.total_steps):
            continue  # Tune has not recorded the last report yet
        out.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            if (run / name).exists():
                shutil.copy2(run / name, out / name)
        if done:
            (out / "error.txt").unlink(missing_ok=True)
            (run / PREVIOUS).unlink(missing_ok=True)  # a fallback for a resume, which a finished trial has no use for
        else:
            shutil.copy2(error, out / "error.txt")
        head = "step,time_since_restore,iterations_since_restore\n"
        (out / "timing.csv").write_text(head + "".join(f"{s},{w:.2f},{i}\n" for s, w, i in timing))
        (out / "commits.json").write_text(json.dumps(commits.get(t.name, []), indent=1))
        new.append(t.name)
    return new


def run(args: argparse.Namespace) -> None:
    from virel_ppl.sweep import sweep

    check_args(args)
    trials = plan_trials(args)
    root = args.root.resolve()
    if not (root / "sweep.json").exists():  # a new root: the trials finished under an earlier one are not run again
        kept = [t for t in trials if _status_of(args.results / t.name, t.config.total_steps) != "finished"]
        if len(kept) < len(trials):
            print(f"{len(trials) - len(kept)} trial(s) already finished in {args.results}: not run again")
        trials = kept
        if not trials:
            print(table(args.results, args.tasks, learners(args), args.budget, marks=getattr(args, "marks", None)))
            return
    record_commits(root, trials, git_commit())
    stop = threading.Event()

    def poll() -> None:  # collect each trial as it finishes, not only at the end
        while not stop.wait(60):
            for name in collect(root, args.results, trials):
                print(f"collected {name} into {args.results}", flush=True)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        result = sweep(
            trials,
            root=root,
            address=args.address,
            max_concurrent=args.max_concurrent,
            max_failures=1,
            tune_checkpoints=args.tune_checkpoints,
            resume="auto",
            verbose=1,
        )
    finally:
        stop.set()
        collect(root, args.results, trials, final=True)
    if result.failed:
        print(f"failed: {', '.join(result.failed)} (see {root}/tune/<trial>/error.txt)", file=sys.stderr)
    if result.interrupted:
        raise SystemExit("The study stopped; run the same command again to continue it.")
    print(table(args.results, args.tasks, learners(args), args.budget, marks=getattr(args, "marks", None)))


# --- the table --------------------------------------------------------------------------------------------------


def _status_of(out: Path, budget: int) -> str | None:
    """A copied trial's status, or None when ``out`` holds none that reached ``budget``."""
    if not (out / "eval.csv").exists() or _last_step(out / "eval.csv") != budget:
        return None if not (out / "error.txt").exists() else _status(out)
    return _status(out)


def _status(out: Path) -> str:
    error = (out / "error.txt").read_text() if (out / "error.txt").exists() else ""
    if not error:
        return "finished"
    return "diverged" if ("diverged" in error or "NaN" in error or "non-finite" in error) else "failed"


def _stopped(out: Path) -> str:
    """How a trial that did not finish ended, for the table: ``diverged at step N`` (the step its error names, else
    ``after step N``, its last evaluation) or ``failed``."""
    status = _status(out)
    if status != "diverged":
        return status
    lines = [ln for ln in (out / "error.txt").read_text().splitlines() if "diverged" in ln or "on-finite" in ln]
    found = re.search(r"at step (\d+)", lines[-1]) if lines else None
    if found:
        return f"diverged at step {int(found.group(1))}"
    return f"diverged after step {_last_step(out / 'eval.csv')}"


def _steps_per_s(out: Path) -> float | None:
    """Env steps per second of wall clock between consecutive evaluations after the warm-up, within each run of the
    trial (Tune's clock; the span across a stop and its resume is left out, as is each run's start-up)."""
    from virel_ppl.runtime.logger import read_csv

    if not (out / "timing.csv").exists():
        return None
    warmup = json.loads((out / "config.json").read_text()).get("warmup_steps", 0)
    t = read_csv(out / "timing.csv")
    steps = t.get("step", [])
    if "iterations_since_restore" in t:  # a span is two reports of one run: the second the next iteration
        clock, run = t["time_since_restore"], t["iterations_since_restore"]
        same_run = [b == a + 1 for a, b in zip(run, run[1:])]
    else:  # the older layout, Tune's time_total_s (it restarts from 0 with a run)
        clock = t.get("time_total_s", [])
        same_run = [w1 > w0 > 0 for w0, w1 in zip(clock, clock[1:])]
    spans = [
        (s1 - s0, w1 - w0)
        for (s0, s1, w0, w1, same) in zip(steps, steps[1:], clock, clock[1:], same_run)
        if same and s0 >= warmup and w1 > w0
    ]
    return sum(s for s, _ in spans) / sum(w for _, w in spans) if spans else None


def default_marks(budget: int) -> list[int]:
    """The steps the table reports when a study names none: 25k, 50k and the budget."""
    return sorted({s for s in (25_000, 50_000, budget) if s <= budget})


def table(results: Path, tasks, algos, budget: int, ci: float = 0.95, marks=None) -> str:
    """The Markdown table of the study from ``results``: one row per task and learner, the return at each of
    ``marks`` (default :func:`default_marks`)."""
    from virel_ppl.analysis.report import bootstrap_ci, iqm
    from virel_ppl.runtime.logger import read_csv

    marks = sorted(set(marks or default_marks(budget)))
    head = " | ".join(f"{m // 1000}k mean ± sd | {m // 1000}k IQM [{ci:.0%} CI]" for m in marks)
    lines = [f"| task | learner | seeds | {head} | env steps/s | vs SAC at {budget // 1000}k |"]
    lines.append("|---|---|---|" + "---|---|" * len(marks) + "---|---|")
    for env in tasks:
        finals: dict[str, np.ndarray] = {}
        rows = []
        for algo in algos:
            outs = sorted(results.glob(f"{env}__{algo}__*"), key=lambda p: int(p.name.rsplit("__", 1)[1]))
            if not outs:
                continue
            ok = [o for o in outs if _status(o) == "finished"]
            bad = [f"seed {o.name.rsplit('__', 1)[1]} {_stopped(o)}" for o in outs if _status(o) != "finished"]
            cells = []
            for m in marks:
                vals = []
                for o in ok:
                    ev = read_csv(o / "eval.csv")
                    at = dict(zip(map(int, ev["step"]), ev["return_mean"]))
                    if m in at:
                        vals.append(at[m])
                vals = np.asarray(vals)
                if len(vals) == 0:
                    cells.append("– | –")
                    continue
                lo, hi = bootstrap_ci(vals, iqm, ci)
                cells.append(f"{vals.mean():.0f} ± {vals.std():.0f} | {iqm(vals):.0f} [{lo:.0f}, {hi:.0f}]")
                if m == budget:
                    finals[algo] = vals
            rates = [r for r in (_steps_per_s(o) for o in ok) if r is not None]
            speed = f"{np.median(rates):.1f}" if rates else "–"
            seeds = f"{len(ok)}" + (f" ({'; '.join(bad)})" if bad else "")
            rows.append((algo, seeds, cells, speed))
        for algo, seeds, cells, speed in rows:
            verdict = "–"
            if algo != REFERENCE and algo in finals and REFERENCE in finals:
                if min(len(finals[algo]), len(finals[REFERENCE])) < 2:  # one seed's "CI" is a point: no verdict
                    lines.append(f"| {env} | {algo} | {seeds} | {' | '.join(cells)} | {speed} | – (one seed) |")
                    continue
                a, b = bootstrap_ci(finals[algo], iqm, ci), bootstrap_ci(finals[REFERENCE], iqm, ci)
                verdict = "behind" if a[1] < b[0] else "ahead" if a[0] > b[1] else "on par (CIs overlap)"
            lines.append(f"| {env} | {algo} | {seeds} | {' | '.join(cells)} | {speed} | {verdict} |")
    return "\n".join(lines)


SIGNALS = (("eps", "ε"), ("critic/td_mse", "TD-MSE"), ("policy/entropy", "H(π)"), ("critic/q_mean", "mean Q"))
SB3_SIGNALS = {"eps": "sac/alpha", "critic/td_mse": "critic/q_loss"}  # what SB3's train.csv logs in their place


def signals(results: Path, tasks, algos, budget: int, window: int = 5_000, marks=None) -> str:
    """What the learners' train.csv says near 25k, 50k and the budget: each value the mean of the rows logged in the
    ``window`` steps up to the mark, then the mean over the finished seeds. Ours on their scaled rewards; SB3's SAC
    logs its temperature α (in the ε column; 1/α is its reward scale), its critic loss (the same twin mean of
    E[δ²] as our TD-MSE, on unscaled rewards) and H(π) on the same action box as ours. "–": not logged (older runs
    did not log H(π)); "(1 of 2 seeds)": only so many of the row's seeds logged it."""
    from virel_ppl.runtime.logger import read_csv

    marks = sorted(set(marks or default_marks(budget)))
    lines = ["| task | learner | seeds | step | " + " | ".join(label for _, label in SIGNALS) + " |"]
    lines.append("|---|---|---|---|" + "---|" * len(SIGNALS))
    for env in tasks:
        for algo in algos:
            ok = [o for o in sorted(results.glob(f"{env}__{algo}__*")) if _status(o) == "finished"]
            logs = [read_csv(o / "train.csv") for o in ok if (o / "train.csv").exists()]
            if not logs:
                continue
            for m in marks:
                cells = []
                for column, _ in SIGNALS:
                    if algo == REFERENCE:
                        column = SB3_SIGNALS.get(column, column)
                    means = []
                    for log in logs:
                        vals = [v for s, v in zip(log.get("step", []), log.get(column, [])) if m - window < s <= m]
                        vals = [v for v in vals if np.isfinite(v)]
                        if vals:
                            means.append(np.mean(vals))
                    few = f" ({len(means)} of {len(logs)} seeds)" if 0 < len(means) < len(logs) else ""
                    cells.append(f"{np.mean(means):.3g}{few}" if means else "–")
                lines.append(f"| {env} | {algo} | {len(logs)} | {m // 1000}k | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_curves(results: Path, out: Path, tasks) -> Path | None:
    """Learning curves with HDI bands over seeds (``virel_ppl report``) of the finished trials on ``tasks``: the
    defaults in ``out``, the tuned rows apart in ``out/tuned`` (grouped by the fields they change as well).
    Returns the defaults' report, else the tuned rows', else None."""
    from virel_ppl.analysis.report import write_report

    found = [p for t in tasks for p in results.glob(f"{t}__*__*")]
    done = [p for p in sorted(found) if p.is_dir() and _status(p) == "finished"]
    tuned = [p for p in done if "+" in p.name.split("__")[1]]
    fields = sorted({f.split("=")[0] for p in tuned for f in p.name.split("__")[1].split("+")[1:]})
    tuned_report = write_report(tuned, out / "tuned", by=("env", "algo", *fields)) if tuned else None
    defaults = [p for p in done if p not in tuned]
    return write_report(defaults, out) if defaults else tuned_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--study NAME`` sets the defaults of :data:`STUDIES` [NAME], which other flags override."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=sorted(STUDIES), default=None, help="a named study (its settings)")
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--algos", nargs="+", default=STAGE1, help="stage 1 learners")
    parser.add_argument("--then", nargs="*", default=STAGE2, help="stage 2 learners (after all of stage 1)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=100_000, help="env steps of every trial")
    parser.add_argument("--eval-every", type=int, default=5_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument(
        "--tuned", nargs="*", default=[], metavar="ALGO:FIELD=VALUE",
        help="run only these tuned rows (e.g. virel:alpha=0.2), reported apart from the defaults",
    )  # fmt: skip
    parser.add_argument("--root", type=Path, default=None, help="run directories and Tune's state (default: runs/paper"
                        " or the study's; with --tuned, that name + -tuned)")  # fmt: skip
    parser.add_argument("--results", type=Path, default=HERE / "results" / "paper", help="where finished trials go")
    parser.add_argument("--max-concurrent", type=int, default=2, help="trials at once (each single-threaded)")
    parser.add_argument("--address", default=None, help="a running Ray cluster (auto, HOST:PORT); default: local")
    parser.add_argument(
        "--tune-checkpoints", action="store_true", help="copy run directories into Tune's storage (clusters without a"
        " shared filesystem); default: each trial resumes from the checkpoint.pt in its run directory",
    )  # fmt: skip
    parser.add_argument("--table", action="store_true", help="print the table of --results and write its curves")
    parser.add_argument("--marks", type=int, nargs="+", default=None, help="steps the table reports (default: 25k, 50k"
                        " and the budget)")  # fmt: skip
    study = parser.parse_known_args(argv)[0].study
    settings = dict(STUDIES[study]) if study is not None else {}
    base = settings.pop("root", Path("runs/paper"))
    parser.set_defaults(**settings)
    args = parser.parse_args(argv)
    # tuned rows are a sweep of their own: beside the study's root, never in it (its saved grid would refuse them)
    args.root = args.root or (base.with_name(base.name + "-tuned") if args.tuned else base)
    return args


def main() -> None:
    args = parse_args()
    try:
        if args.table:
            rows = learners(args)
            print(table(args.results, args.tasks, rows, args.budget, marks=getattr(args, "marks", None)))
            print("\nTraining signals (train.csv):\n")
            print(signals(args.results, args.tasks, rows, args.budget, marks=getattr(args, "marks", None)))
            # a named study's curves apart, so that each study's figure shows its own tasks and budget
            out = args.results / "report" / (args.study or "")
            report = write_curves(args.results, out, args.tasks)
            print(f"curves: {report.parent if report else 'none yet'}")
        else:
            run(args)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()

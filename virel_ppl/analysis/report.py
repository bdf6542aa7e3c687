"""Multi-seed experiment reports: learning curves with HDI bands, final-return tables, training diagnostics.

``write_report(run_dirs, out_dir)`` (the ``virel_ppl report RUN_DIR...`` command) reads each run's
``config.json``, ``eval.csv`` and, when present, ``diagnostics.csv``; groups runs by config fields (default
``env`` and ``algo``: the seeds of one experiment); and writes into ``out_dir``:

- ``learning_curves.png``: per group the mean evaluation return over seeds, its HDI band over seeds
  (``az.hdi`` at each step) and each seed as a thin line;
- ``diagnostics.png``: return, the guide's PSIS k̂ and ε against steps (runs that logged diagnostics);
- ``report.md``: both plots, a final-return table in the style of ``az.summary`` (mean, sd, HDI; computed by
  ``az.summary``) with the median and the interquartile mean (IQM) with a percentile-bootstrap CI
  (Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice"), the probability of improvement
  P(X > Y) of every two learners on a task (and over the tasks they share) with a stratified-bootstrap CI, the
  diagnostics at the last evaluation and the list of runs.

Within a group, curves are compared at the evaluation steps all its runs share; the final return of a run is its
mean evaluation return at the last shared step. Two runs of one group with the same seed are not independent
seeds: the report warns (a :class:`ReportWarning`, and a note in ``report.md``) and says which settings tell them
apart. A report that fails leaves no output folder behind.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from virel_ppl.analysis import arviz_compat
from virel_ppl.config import ConfigError, RunWarning
from virel_ppl.runtime.logger import read_csv


class ReportWarning(RunWarning):
    """Something the reader of a report must know, e.g. two runs of one group with the same seed."""


@dataclass
class Run:
    """One training run read from its directory."""

    path: Path
    config: dict
    eval: dict[str, np.ndarray]
    """Columns of ``eval.csv``: ``step``, ``return_mean``, ``return_std``."""
    diagnostics: dict[str, np.ndarray] | None
    """Columns of ``diagnostics.csv`` (``step``, ``eps``, ``khat_mean``, ...) or None."""

    @property
    def seed(self) -> int | str:
        return self.config.get("seed", "?")


def load_run(run_dir: Path | str) -> Run:
    """Read a run directory; raises ``FileNotFoundError``/``ValueError`` naming what is missing."""
    path = Path(run_dir)
    for name in ("config.json", "eval.csv"):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path} has no {name}: pass directories written by `virel_ppl train`.")
    ev = {k: np.asarray(v) for k, v in read_csv(path / "eval.csv").items()}
    if not ev or len(ev["step"]) == 0:
        raise ConfigError(f"{path / 'eval.csv'} holds no evaluations yet.")
    diag_path = path / "diagnostics.csv"
    diag = {k: np.asarray(v) for k, v in read_csv(diag_path).items()} if diag_path.exists() else None
    try:
        config = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path / 'config.json'} is not valid JSON ({err}): was it cut off or edited?") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path / 'config.json'} is not a run's config (a JSON object of Config fields).")
    return Run(path, config, ev, diag or None)


def find_runs(paths: Sequence[Path | str]) -> list[Path]:
    """Run directories among ``paths``: each path that holds an ``eval.csv``, else its sub-directories that do.
    A directory named twice (e.g. itself and through its parent) is read once."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / "eval.csv").exists():
            found.append(p)
        elif p.is_dir():
            found += sorted(d for d in p.iterdir() if (d / "eval.csv").exists())
        else:
            raise FileNotFoundError(f"{p} is not a directory.")
    if not found:
        raise FileNotFoundError(f"No run directories (with eval.csv) in {', '.join(map(str, paths))}.")
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def group_runs(runs: Sequence[Run], by: Sequence[str] = ("env", "algo")) -> dict[str, list[Run]]:
    """Runs grouped by the config fields ``by``; labels like ``"Pendulum-v1 · virel"``, in first-seen order.

    A run trained with a guide or an ELBO from code (recorded as ``module:Class``, see ``checkpoints.code_name``)
    is never pooled with stock runs: its guide and ELBO join its label (``"Pendulum-v1 · virel · guide
    my_guides:SharedStd"``) even when ``by`` leaves them out."""
    from virel_ppl.runtime.checkpoints import is_code_name

    groups: dict[str, list[Run]] = {}
    for run in runs:
        label = [str(run.config.get(k, "?")) for k in by]
        label += [
            f"{k} {run.config[k]}"
            for k in ("guide", "elbo")
            if k not in by and isinstance(run.config.get(k), str) and is_code_name(run.config[k])
        ]
        groups.setdefault(" · ".join(label), []).append(run)
    return groups


#: Config fields that do not change what a run computes; ignored when telling runs of one seed apart.
_BOOKKEEPING = {"run_dir", "progress", "tensorboard", "threads", "log_every", "checkpoint_every", "device"}


def repeated_seeds(groups: dict[str, list[Run]]) -> list[str]:
    """One line per seed that two or more runs of a group share, naming the runs and the config fields they differ
    in (so that ``--group-by`` can separate them); empty when every group's seeds are distinct."""
    notes = []
    for label, runs in groups.items():
        by_seed: dict = {}
        for run in runs:
            if "seed" in run.config:
                by_seed.setdefault(json.dumps(run.seed), []).append(run)
        for same in by_seed.values():
            if len(same) < 2:
                continue
            keys = sorted(set().union(*(r.config for r in same)) - _BOOKKEEPING)
            differ = [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True) for r in same}) > 1]
            why = (
                f"they differ in {', '.join(differ)}: add {'it' if len(differ) == 1 else 'them'} to --group-by"
                if differ
                else "their configs are the same, so they are repeats of one seed, not independent seeds"
            )
            paths = ", ".join(str(r.path) for r in same)
            notes.append(f"{label}: {len(same)} runs have seed {same[0].seed} ({paths}); {why}.")
    return notes


@dataclass
class Curve:
    """A group's evaluation returns over seeds at the steps its runs share."""

    label: str
    runs: list[Run]
    steps: np.ndarray
    """Shared evaluation steps, shape ``(T,)``."""
    returns: np.ndarray
    """Mean evaluation return of each run at each step, shape ``(seeds, T)``."""
    hdi: np.ndarray
    """HDI over seeds at each step, shape ``(T, 2)``."""
    hdi_prob: float
    dropped_steps: int
    """Evaluations that not every run of the group has (left out)."""

    @property
    def mean(self) -> np.ndarray:
        return self.returns.mean(0)

    @property
    def final(self) -> np.ndarray:
        """Each run's return at the last shared step, shape ``(seeds,)``."""
        return self.returns[:, -1]


def _common(runs: Sequence[Run], table: str, column: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Steps shared by all runs' ``table`` and the values of ``column`` there, ``(runs, T)``; plus #dropped."""
    tables = [getattr(r, table) for r in runs]
    steps = sorted(set.intersection(*(set(t["step"].tolist()) for t in tables)))
    values = np.stack([[dict(zip(t["step"].tolist(), t[column].tolist()))[s] for s in steps] for t in tables])
    dropped = sum(len(t["step"]) for t in tables) - len(steps) * len(tables)
    return np.asarray(steps), values.reshape(len(tables), len(steps)), dropped


def hdi_over_seeds(values: np.ndarray, hdi_prob: float) -> np.ndarray:
    """ArviZ's HDI across the first axis (seeds) at each column (step): ``(seeds, T)`` → ``(T, 2)``."""
    if values.shape[0] == 1:  # one seed: the band collapses to the curve
        return np.stack([values[0], values[0]], axis=-1)
    # ArviZ is imported here, not at import: `import virel_ppl.report` should not cost its import (seconds)
    return arviz_compat.hdi(values, hdi_prob)


def learning_curves(groups: dict[str, list[Run]], hdi_prob: float = 0.94) -> list[Curve]:
    """One :class:`Curve` per group; raises ``ValueError`` when a group's runs share no evaluation step."""
    curves = []
    for label, runs in groups.items():
        steps, returns, dropped = _common(runs, "eval", "return_mean")
        if len(steps) == 0:
            raise ConfigError(f"The runs of {label} share no evaluation step: {', '.join(str(r.path) for r in runs)}.")
        curves.append(Curve(label, list(runs), steps, returns, hdi_over_seeds(returns, hdi_prob), hdi_prob, dropped))
    return curves


# --- statistics of final returns -------------------------------------------------------------------------------


def iqm(x: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% (``scipy.stats.trim_mean(x, 0.25)``; the mean when n < 4)."""
    from scipy.stats import trim_mean

    return float(trim_mean(np.asarray(x, dtype=float), 0.25))


def bootstrap_ci(x: np.ndarray, stat=iqm, ci: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of ``stat`` over runs (resampling runs with replacement; seeded)."""
    x = np.asarray(x, dtype=float)
    rng = np.random.default_rng(seed)
    stats = np.array([stat(x[rng.integers(0, len(x), len(x))]) for _ in range(n_boot)])
    lo, hi = np.quantile(stats, [(1 - ci) / 2, (1 + ci) / 2])
    return float(lo), float(hi)


def _per_task(scores) -> list[np.ndarray]:
    """One task's scores as an array, or several tasks' as a sequence of arrays → a list of 1-d float arrays."""
    if isinstance(scores, np.ndarray) and scores.ndim == 1:
        return [scores.astype(float)]
    tasks = [np.asarray(t, dtype=float).ravel() for t in scores]
    if not tasks or any(t.size == 0 for t in tasks):
        raise ConfigError("probability of improvement: every task needs at least one score of each learner.")
    return tasks


def probability_of_improvement(x, y) -> float:
    """P(X > Y): the probability that a run of learner X scores higher than a run of learner Y on the same task,
    ties counted as one half, averaged over tasks (Agarwal et al. 2021, "Deep RL at the edge of the statistical
    precipice", the Mann-Whitney U statistic over N·K pairs of runs).

    ``x`` and ``y`` are one task's final scores (1-d arrays, any numbers of runs) or sequences of them, one entry per
    task in the same order. 0.5 means neither is better; a table whose CIs overlap can still give P(X > Y) near 1.
    """
    xs, ys = _per_task(x), _per_task(y)
    if len(xs) != len(ys):
        raise ConfigError(f"probability of improvement: {len(xs)} task(s) of X against {len(ys)} of Y.")
    per_task = [np.mean((xm[:, None] > ym[None, :]) + 0.5 * (xm[:, None] == ym[None, :])) for xm, ym in zip(xs, ys)]
    return float(np.mean(per_task))


def probability_of_improvement_ci(x, y, ci: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Stratified percentile-bootstrap CI of :func:`probability_of_improvement`: each resample draws, within every
    task, the runs of X and the runs of Y with replacement, apart (the tasks are the strata; seeded)."""
    xs, ys = _per_task(x), _per_task(y)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        xb = [xm[rng.integers(0, len(xm), len(xm))] for xm in xs]
        yb = [ym[rng.integers(0, len(ym), len(ym))] for ym in ys]
        stats[b] = probability_of_improvement(xb, yb)
    lo, hi = np.quantile(stats, [(1 - ci) / 2, (1 + ci) / 2])
    return float(lo), float(hi)


def _task_and_learner(curve: Curve, by: Sequence[str]) -> tuple[str, str]:
    """A group's task (its ``env``, when the report groups by it) and the rest of its label (the learner)."""
    if "env" not in by:
        return "", curve.label
    parts = curve.label.split(" · ")
    i = list(by).index("env")
    return parts[i], " · ".join(parts[:i] + parts[i + 1 :])


def improvement_table(
    curves: Sequence[Curve], by: Sequence[str] = ("env", "algo"), ci: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> list[dict]:
    """P(X > Y) of the final returns, with its bootstrap CI, for every two learners on the same task (in the
    order the groups come), and over all tasks for two learners that share two or more."""
    finals: dict[str, dict[str, np.ndarray]] = {}  # learner → task → final returns
    for c in curves:
        task, learner = _task_and_learner(c, by)
        finals.setdefault(learner, {})[task] = c.final
    learners = list(finals)
    rows = []
    for i, a in enumerate(learners):
        for b in learners[i + 1 :]:
            tasks = [t for t in finals[a] if t in finals[b]]
            scopes = [[t] for t in tasks] + ([tasks] if len(tasks) > 1 else [])
            for scope in scopes:
                x, y = [finals[a][t] for t in scope], [finals[b][t] for t in scope]
                rows.append(
                    {
                        "task": scope[0] if len(scope) == 1 else f"all {len(scope)} tasks",
                        "x": a,
                        "y": b,
                        "p": probability_of_improvement(x, y),
                        "p_ci": probability_of_improvement_ci(x, y, ci, n_boot, seed),
                    }
                )
    return sorted(rows, key=lambda r: (r["task"].startswith("all "), r["task"]))


def final_return_table(curves: Sequence[Curve], ci: float = 0.95, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """One row per group: distinct seeds, runs, final step, ``az.summary`` stats (mean, sd, HDI) of the final
    returns, median, IQM and its bootstrap CI."""
    rows = []
    for c in curves:
        with warnings.catch_warnings():
            if len(c.final) == 1:  # one seed: no spread to estimate; numpy would warn about ddof
                warnings.simplefilter("ignore", RuntimeWarning)
            stats = arviz_compat.summary_stats(c.final, c.hdi_prob)
        sd = stats["sd"] if len(c.final) > 1 else 0.0
        rows.append(
            {
                "group": c.label,
                "seeds": len({json.dumps(r.seed) for r in c.runs}),
                "runs": len(c.runs),
                "step": int(c.steps[-1]),
                "mean": stats["mean"],
                "sd": sd,
                "hdi": stats["hdi"],
                "median": float(np.median(c.final)),
                "iqm": iqm(c.final),
                "iqm_ci": bootstrap_ci(c.final, iqm, ci, n_boot, seed),
            }
        )
    return rows


def diagnostics_table(groups: dict[str, list[Run]]) -> list[dict]:
    """Per group with logged diagnostics: mean over seeds of ε, k̂ (mean and max over states), ESS/n and KL at the
    last diagnosed step all its runs share."""
    rows = []
    for label, runs in groups.items():
        runs = [r for r in runs if r.diagnostics is not None]
        if not runs:
            continue
        row: dict = {"group": label, "seeds": len(runs)}
        for col in ("eps", "khat_mean", "khat_max", "ess_frac", "kl"):
            steps, values, _ = _common(runs, "diagnostics", col)
            if len(steps) == 0:
                break
            row["step"], row[col] = int(steps[-1]), (float(values[:, -1].mean()), float(values[:, -1].std()))
        else:
            rows.append(row)
    return rows


# --- plots ----------------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _by_env(curves: Sequence[Curve]) -> dict[str, list[Curve]]:
    panels: dict[str, list[Curve]] = {}
    for c in curves:
        panels.setdefault(str(c.runs[0].config.get("env", "")), []).append(c)
    return panels


def plot_learning_curves(curves: Sequence[Curve], path: Path | str) -> Path:
    """Mean return over seeds with its HDI band and each seed as a thin line; one panel per environment."""
    plt = _plt()
    panels = _by_env(curves)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (env, group) in zip(axes[0], panels.items()):
        for i, c in enumerate(group):
            color = f"C{i}"
            for r in c.returns:
                ax.plot(c.steps, r, color=color, lw=0.7, alpha=0.35)
            ax.plot(c.steps, c.mean, color=color, lw=2, marker="o", ms=3, label=f"{c.label} (mean of {len(c.runs)})")
            ax.fill_between(c.steps, c.hdi[:, 0], c.hdi[:, 1], color=color, alpha=0.2)
        ax.set_title(f"{env}: evaluation return, {group[0].hdi_prob:.0%} HDI over seeds", fontsize=10)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("return (mode action)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_training_diagnostics(curves: Sequence[Curve], path: Path | str) -> Path | None:
    """Return, k̂ (mean over diagnosed states), ESS/n and ε against steps: mean over seeds with a min–max band.

    Returns None (and writes nothing) when no run logged diagnostics.
    """
    rows = [("return_mean", "eval", "eval return"), ("khat_mean", "diagnostics", "PSIS k̂ (mean over states)")]
    rows += [("ess_frac", "diagnostics", "ESS / draws"), ("eps", "diagnostics", "ε (log scale)")]
    curves = [c for c in curves if all(r.diagnostics is not None for r in c.runs)]
    if not curves:
        return None
    plt = _plt()
    panels = _by_env(curves)
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(5.5 * len(panels), 9), squeeze=False, sharex="col")
    for j, group in enumerate(panels.values()):
        for i, c in enumerate(group):
            for k, (col, table, title) in enumerate(rows):
                steps, values, _ = _common(c.runs, table, col)
                ax = axes[k, j]
                ax.plot(steps, values.mean(0), color=f"C{i}", lw=2, marker="o", ms=3, label=c.label)
                ax.fill_between(steps, values.min(0), values.max(0), color=f"C{i}", alpha=0.2)
                ax.set_ylabel(title, fontsize=9)
                ax.grid(alpha=0.3)
        for thr, style in ((0.5, ":"), (0.7, "--")):
            axes[1, j].axhline(thr, color="gray", ls=style, lw=1)
        axes[-1, j].set_yscale("log")
        axes[0, j].legend(fontsize=8)
        axes[0, j].set_title(f"{group[0].runs[0].config.get('env', '')}: mean over seeds, band min–max", fontsize=10)
        axes[-1, j].set_xlabel("environment steps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# --- the report -------------------------------------------------------------------------------------------------


def _range_seeds(hdi_prob: float) -> int:
    """Largest number of seeds n for which ``az.hdi`` returns [min, max]: floor(p·n) = n − 1."""
    return max(n for n in range(1, 1000) if math.floor(hdi_prob * n + 1e-9) >= n - 1)


def _f(x: float, digits: int = 1) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.{digits}f}"


def _seeds(row: dict) -> str:
    """The seeds cell: the number of distinct seeds, and the number of runs when some share a seed."""
    return str(row["seeds"]) if row["seeds"] == row["runs"] else f"{row['seeds']} ({row['runs']} runs)"


def render_markdown(
    curves: Sequence[Curve],
    final_rows: Sequence[dict],
    diag_rows: Sequence[dict],
    by: Sequence[str],
    ci: float,
    n_boot: int,
    images: dict[str, str],
    notes: Sequence[str] = (),
    improvement_rows: Sequence[dict] = (),
) -> str:
    """The report's Markdown text; ``improvement_rows`` (from :func:`improvement_table`) follow the final-return
    table, ``notes`` (e.g. from :func:`repeated_seeds`) are listed at the end."""
    hdi_prob = curves[0].hdi_prob
    n_runs = sum(len(c.runs) for c in curves)
    out = [
        "# Experiment report",
        "",
        f"{n_runs} runs in {len(curves)} group(s), grouped by {', '.join(by)}. Bands and HDIs are "
        f"{hdi_prob:.0%} highest-density intervals over seeds (`az.hdi`; with up to {_range_seeds(hdi_prob)} seeds "
        "such an HDI is the range of the seeds). "
        f"IQM: interquartile mean of the final returns over seeds (the mean when there are fewer than 4), "
        f"with a {ci:.0%} percentile-bootstrap CI ({n_boot} resamples of the runs).",
        "",
    ]
    if "learning_curves" in images:
        out += [f"![learning curves]({images['learning_curves']})", ""]
    hdi_head = f"{hdi_prob:.0%} HDI"
    out += [
        "## Final evaluation return",
        "",
        f"| group | seeds | step | mean | sd | {hdi_head} | median | IQM | IQM {ci:.0%} CI |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in final_rows:
        out.append(
            f"| {r['group']} | {_seeds(r)} | {r['step']} | {_f(r['mean'])} | {_f(r['sd'])} "
            f"| [{_f(r['hdi'][0])}, {_f(r['hdi'][1])}] | {_f(r['median'])} | {_f(r['iqm'])} "
            f"| [{_f(r['iqm_ci'][0])}, {_f(r['iqm_ci'][1])}] |"
        )
    if improvement_rows:
        out += [
            "",
            "## Probability of improvement",
            "",
            "P(X > Y): the probability that a run of X ends with a higher return than a run of Y on the same task "
            "(ties count one half; over several tasks, the mean of the tasks'), with a "
            f"{ci:.0%} stratified-bootstrap CI (runs resampled within each task and learner). 0.5: neither is better.",
            "",
            f"| task | X | Y | P(X > Y) | {ci:.0%} CI |",
            "|---|---|---|---|---|",
        ]
        out += [
            f"| {r['task']} | {r['x']} | {r['y']} | {r['p']:.2f} | [{r['p_ci'][0]:.2f}, {r['p_ci'][1]:.2f}] |"
            for r in improvement_rows
        ]
    if diag_rows:
        out += [
            "",
            "## Posterior diagnostics at the last evaluation",
            "",
            "The guide π_θ against the Boltzmann target exp(Q/ε)·p(a|s) on replay states (`diagnostics.csv`): "
            "PSIS k̂ < 0.5 good, > 0.7 the guide misses target mass. Mean ± sd over seeds.",
            "",
            "| group | seeds | step | ε | k̂ mean | k̂ max | ESS/n | KL(π‖p) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in diag_rows:
            cells = [f"{r[c][0]:.3g} ± {r[c][1]:.2g}" for c in ("eps",)]
            cells += [f"{r[c][0]:.2f} ± {r[c][1]:.2f}" for c in ("khat_mean", "khat_max", "ess_frac")]
            cells += [f"{r['kl'][0]:.3f} ± {r['kl'][1]:.3f}"]
            out.append(f"| {r['group']} | {r['seeds']} | {r['step']} | " + " | ".join(cells) + " |")
    if "diagnostics" in images:
        out += ["", f"![training diagnostics]({images['diagnostics']})"]
    out += ["", "## Runs", "", "| group | seed | final return | evaluations | run directory |", "|---|---|---|---|---|"]
    for c in curves:
        for run, final in zip(c.runs, c.final):
            out.append(f"| {c.label} | {run.seed} | {_f(final)} | {len(run.eval['step'])} | `{run.path}` |")
    notes = [f"- Repeated seed: {note}" for note in notes]
    notes += [
        f"- {c.label}: {c.dropped_steps} evaluation(s) not shared by all its runs were left out; "
        f"the final return is taken at step {int(c.steps[-1])}."
        for c in curves
        if c.dropped_steps
    ]
    if notes:
        out += ["", "Notes:", "", *notes]
    return "\n".join(out) + "\n"


def write_report(
    run_dirs: Sequence[Path | str],
    out_dir: Path | str,
    by: Sequence[str] = ("env", "algo"),
    hdi_prob: float = 0.94,
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Path:
    """Read the runs in ``run_dirs`` (run directories or folders of them), write plots and ``report.md`` into
    ``out_dir``; returns the path of ``report.md``."""
    if not 0 < hdi_prob < 1 or not 0 < ci < 1:
        raise ConfigError(f"hdi_prob (--hdi-prob) and ci (--ci) must be in (0, 1), got {hdi_prob} and {ci}.")
    groups = group_runs([load_run(p) for p in find_runs(run_dirs)], by)
    repeats = repeated_seeds(groups)
    for note in repeats:
        warnings.warn(note, ReportWarning, stacklevel=2)
    curves = learning_curves(groups, hdi_prob)
    final_rows, diag_rows = final_return_table(curves, ci, n_boot, seed), diagnostics_table(groups)
    improvement_rows = improvement_table(curves, by, ci, n_boot, seed)
    out = Path(out_dir)
    new = out  # the outermost folder this call creates: removed again if writing fails
    while not new.parent.exists():
        new = new.parent
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        images = {"learning_curves": plot_learning_curves(curves, out / "learning_curves.png").name}
        diag_png = plot_training_diagnostics(curves, out / "diagnostics.png")
        if diag_png is not None:
            images["diagnostics"] = diag_png.name
        text = render_markdown(curves, final_rows, diag_rows, by, ci, n_boot, images, repeats, improvement_rows)
        path = out / "report.md"
        path.write_text(text)
    except BaseException:
        if created:
            shutil.rmtree(new, ignore_errors=True)
        raise
    return path

"""Sample efficiency: evaluation return (mode action) at fixed budgets, mean ± std over seeds.

    python benchmarks/sample_efficiency.py                                   # the three tasks below, 3 seeds
    python benchmarks/sample_efficiency.py --tasks Pendulum-v1:10000 --seeds 0 1 2 --algos virel beta
    python benchmarks/sample_efficiency.py --jobs 2                          # two runs at a time (1 thread each)
    python benchmarks/sample_efficiency.py --address auto                    # on a running Ray cluster

Each task is one sweep on Ray Tune (``virel_ppl.sweep``, see docs/sweeps.md) into ``ROOT/<env>__<steps>/``, whose
runs are normal training runs (``<env>__<algo>__<seed>``). Running the same command again continues that sweep
(``Tuner.restore``): finished runs are kept, stopped ones resume exactly. Prints a Markdown table and saves one
learning-curve plot per task. SAC's published sample efficiency is the bar: Pendulum ≥ −200 by 10k steps,
InvertedPendulum ≈ 1000 by 15k, HalfCheetah ≥ 3000 by 50k.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from virel_ppl.config import Config, ConfigError
from virel_ppl.runtime.logger import read_csv

DEFAULT_TASKS = ["InvertedPendulum-v5:20000", "Pendulum-v1:10000", "HalfCheetah-v5:50000"]


def run_task(env: str, steps: int, algos: list[str], seeds: list[int], root: Path, extra: dict, jobs: int | None):
    """One task's sweep (algos × seeds); returns ``{algo: [run_dir per seed]}``."""
    from virel_ppl.sweep import sweep

    eval_every = 2500 if steps >= 25_000 else 1000
    base = Config(env=env, total_steps=steps, eval_every=eval_every, progress=False, threads=1, **extra)
    result = sweep(
        {"env": [env], "algo": algos, "seed": seeds}, base, root / f"{env}__{steps}", max_concurrent=jobs,
        resume="auto", verbose=1,
    )  # fmt: skip
    if result.failed or result.interrupted:
        raise SystemExit(f"{env}: the sweep did not finish ({', '.join(result.failed) or 'stopped'}); run it again.")
    return {algo: [result.root / f"{env}__{algo}__{seed}" for seed in seeds] for algo in algos}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, help="ENV:STEPS budgets")
    parser.add_argument("--algos", nargs="+", default=["virel"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=None, help="runs at once (each single-threaded); default: cores")
    parser.add_argument("--address", default=None, help="a running Ray cluster (auto, HOST:PORT); default: local")
    parser.add_argument("--root", type=Path, default=Path("runs/bench"))
    parser.add_argument(
        "--extra", type=json.loads, default={}, help='Config overrides as JSON, e.g. {"hidden": [64, 64]}'
    )
    args = parser.parse_args()
    if "hidden" in args.extra:
        args.extra["hidden"] = tuple(args.extra["hidden"])
    import ray

    from virel_ppl.sweep import start_ray

    try:
        start_ray(args.address)  # once for all tasks
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    try:
        curves: dict[str, list] = {}
        for env, steps in (t.split(":") for t in args.tasks):
            runs = run_task(env, int(steps), args.algos, args.seeds, args.root, args.extra, args.jobs)
            for algo, run_dirs in runs.items():
                curves[f"{env}|{algo}|{steps}"] = [read_csv(d / "eval.csv") for d in run_dirs]
    finally:
        ray.shutdown()

    print("| env | algo | budget | seeds | final eval return (mean ± std) | best eval (mean) |")
    print("|---|---|---|---|---|---|")
    for key, runs in curves.items():
        env, algo, steps = key.split("|")
        finals = np.array([r["return_mean"][-1] for r in runs])
        bests = np.array([max(r["return_mean"]) for r in runs])
        result = f"{finals.mean():.1f} ± {finals.std():.1f}"
        print(f"| {env} | {algo} | {steps} | {len(runs)} | {result} | {bests.mean():.1f} |")
    plot_curves(curves, args.root)


def plot_curves(curves: dict[str, list], root: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({k.split("|")[0] for k in curves})
    for env in envs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, runs in curves.items():
            if not key.startswith(env + "|"):
                continue
            n = min(len(r["step"]) for r in runs)
            steps = np.array(runs[0]["step"][:n])
            returns = np.array([r["return_mean"][:n] for r in runs])
            mean, std = returns.mean(0), returns.std(0)
            ax.plot(steps, mean, marker="o", label=f"{key.split('|')[1]} ({len(runs)} seeds)")
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        ax.set(xlabel="environment steps", ylabel="eval return (mode action)", title=env)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(root / f"curve_{env}.png", dpi=110)
        plt.close(fig)
        print(f"plot: {root / f'curve_{env}.png'}")


if __name__ == "__main__":
    main()

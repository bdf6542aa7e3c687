"""Sample efficiency: evaluation return (mode action) at fixed budgets, mean ± std over seeds.

    python benchmarks/sample_efficiency.py                                   # the three tasks below, 3 seeds
    python benchmarks/sample_efficiency.py --tasks Pendulum-v1:10000 --seeds 0 1 2 --algos virel beta
    python benchmarks/sample_efficiency.py --jobs 2                          # two runs at a time (1 thread each)

Each run is a normal training run (``runs/bench/<env>__<algo>__<seed>``); a finished run is reused, so the
script can be stopped and restarted. Prints a Markdown table and saves one learning-curve plot per task.
SAC's published sample efficiency is the bar: Pendulum ≥ −200 by 10k steps, InvertedPendulum ≈ 1000 by 15k,
HalfCheetah ≥ 3000 by 50k.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from virel_ppl.config import Config
from virel_ppl.logger import read_csv

DEFAULT_TASKS = ["InvertedPendulum-v5:20000", "Pendulum-v1:10000", "HalfCheetah-v5:50000"]


def run_one(env: str, steps: int, algo: str, seed: int, root: Path, extra: dict) -> Path:
    from virel_ppl.train import train

    run_dir = root / f"{env}__{algo}__{seed}"
    done = run_dir / "done.json"
    if done.exists() and json.loads(done.read_text())["steps"] >= steps:
        return run_dir
    cfg = Config(env=env, algo=algo, seed=seed, total_steps=steps, run_dir=run_dir, progress=False, threads=1, **extra)
    eval_every = 2500 if steps >= 25_000 else 1000
    cfg.eval_every, cfg.checkpoint_every = eval_every, eval_every
    if (run_dir / "checkpoint.pt").exists():
        result = train(resume=run_dir, overrides={"total_steps": steps})
    else:
        result = train(cfg)
    done.write_text(json.dumps({"steps": result.steps, "final": result.final_eval_return}))
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, help="ENV:STEPS budgets")
    parser.add_argument("--algos", nargs="+", default=["virel"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (each single-threaded)")
    parser.add_argument("--root", type=Path, default=Path("runs/bench"))
    parser.add_argument(
        "--extra", type=json.loads, default={}, help='Config overrides as JSON, e.g. {"hidden": [64, 64]}'
    )
    args = parser.parse_args()
    if "hidden" in args.extra:
        args.extra["hidden"] = tuple(args.extra["hidden"])
    jobs = [
        (env, int(steps), algo, seed, args.root, args.extra)
        for env, steps in (t.split(":") for t in args.tasks)
        for algo in args.algos
        for seed in args.seeds
    ]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        run_dirs = list(pool.map(run_one, *zip(*jobs)))

    print("| env | algo | budget | seeds | final eval return (mean ± std) | best eval (mean) |")
    print("|---|---|---|---|---|---|")
    curves: dict[str, list] = {}
    for (env, steps, algo, _, _, _), run_dir in zip(jobs, run_dirs):
        curves.setdefault(f"{env}|{algo}|{steps}", []).append(read_csv(run_dir / "eval.csv"))
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

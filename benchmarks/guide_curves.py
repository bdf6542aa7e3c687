"""Learning curves of several guide × divergence pairs on one task, run one after another, and their plot.

    python benchmarks/guide_curves.py                                   # InvertedPendulum-v5, 8000 steps each
    python benchmarks/guide_curves.py --env Pendulum-v1 --pairs tanh_normal:trace mixture:renyi
    python benchmarks/guide_curves.py --seeds 0 1                       # two seeds of each pair
    python benchmarks/guide_curves.py --plot-only --seeds 0 1           # re-plot finished runs

Each pair is ``guide:elbo`` and trains with ``virel_ppl.train.train`` (the same as ``examples/mujoco_svi.py
--guide G --elbo E``) into ``OUT/<env>__<guide>__<elbo>__<seed>``; runs that already finished are kept. The plot
of the evaluation return (mode action; mean over seeds, thin lines per seed) goes to ``--plot`` and a table of
returns is printed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from virel_ppl.config import Config
from virel_ppl.runtime.logger import read_csv
from virel_ppl.train import train

DEFAULT_PAIRS = ("tanh_normal:trace", "mixture:trace", "tanh_normal:renyi", "mixture:renyi", "flow:trace")


def run_dir(out: Path, env: str, pair: str, seed: int) -> Path:
    guide, elbo = pair.split(":")
    return out / f"{env}__{guide}__{elbo}__{seed}"


def run_pairs(env: str, pairs: list[str], steps: int, seed: int, out: Path) -> None:
    for pair in pairs:
        guide, elbo = pair.split(":")
        if (run_dir(out, env, pair, seed) / "checkpoint.pt").exists():
            continue
        cfg = Config(
            env=env,
            guide=guide,
            elbo=elbo,
            total_steps=steps,
            warmup_steps=1000,
            hidden=(64, 64),
            batch_size=128,
            eval_every=1000,
            eval_episodes=5,
            log_every=500,
            checkpoint_every=10 * steps,
            seed=seed,
            threads=1,
            progress=False,
            tensorboard=False,
            run_dir=run_dir(out, env, pair, seed),
        )
        t0 = time.time()
        result = train(cfg)
        print(f"{pair:22s} best {result.best_eval_return:8.1f}  last {result.final_eval_return:8.1f}  "
              f"({time.time() - t0:.0f} s)", flush=True)  # fmt: skip


def plot(env: str, pairs: list[str], seeds: list[int], out: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    print("\n| guide · elbo | seed | return at each evaluation |\n|---|---|---|")
    for i, pair in enumerate(pairs):
        guide, elbo = pair.split(":")
        curves = []
        for seed in seeds:
            csv = run_dir(out, env, pair, seed) / "eval.csv"
            if csv.exists():
                rows = read_csv(csv)
                curves.append(rows["return_mean"])
                print(f"| {guide} · {elbo} | {seed} | " + ", ".join(f"{r:.0f}" for r in rows["return_mean"]) + " |")
                ax.plot(rows["step"], rows["return_mean"], color=f"C{i}", lw=0.6, alpha=0.4)
        if curves:
            n = min(len(c) for c in curves)
            mean = np.mean([c[:n] for c in curves], axis=0)
            style = "-" if elbo == "trace" else "--"
            ax.plot(rows["step"][:n], mean, style, marker="o", ms=3, color=f"C{i}", label=f"{guide} · {elbo}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return (mode action)")
    ax.set_title(f"{env}: guides × divergences (mean of seeds {', '.join(map(str, seeds))})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="InvertedPendulum-v5")
    parser.add_argument("--pairs", nargs="+", default=list(DEFAULT_PAIRS), help="guide:elbo pairs")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path("runs/guide_curves"))
    parser.add_argument("--plot", type=Path, default=Path("docs/img/guides_learning_curves.png"))
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args()
    if not args.plot_only:
        for seed in args.seeds:
            run_pairs(args.env, args.pairs, args.steps, seed, args.out)
    plot(args.env, args.pairs, args.seeds, args.out, args.plot)


if __name__ == "__main__":
    main()

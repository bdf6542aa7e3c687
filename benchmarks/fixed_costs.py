"""Fixed costs of a short run: ``virel_ppl train`` through the command line against SB3 SAC's ``learn``, same steps.

    python benchmarks/fixed_costs.py                                  # 4,000 HalfCheetah-v5 steps, once each
    python benchmarks/fixed_costs.py --roots /path/to/old/checkout .  # before and after, in the same run
    python benchmarks/fixed_costs.py --repeats 2 --steps 2000
    python benchmarks/fixed_costs.py --per-step 8                     # CPU ms per step, ours and SB3, one process

Each learner runs in a fresh process, one after the other (the order flips at every repeat), with one torch thread
(``--threads 1`` and ``OMP_NUM_THREADS=1``), so both pay what a user pays and see the same machine load:

- **ours**: the ``virel_ppl train`` command (``virel_ppl.cli:main``, as the console script calls it) with
  ``--total-steps N --eval-every N --eval-episodes 1 --checkpoint-every N``: one evaluation episode at the end, its
  PSIS diagnostics (``diagnostics.csv``), one checkpoint, TensorBoard events and the learning-curve plot, all as by
  default. Timed: the whole process (imports included).
- **SB3 SAC**: ``SAC("MlpPolicy", ...)`` with the same task, 256-256 networks, batch 256, learning rate 1e-3, buffer
  1e6, 1,000 warm-up steps (``learning_starts``), one update per step, seed 0 (as ``benchmarks/throughput.py``).
  Timed: ``learn(N)`` (the reference for the ratios below), and beside it the whole process.

``--roots`` times ``virel_ppl`` from each given checkout (through ``PYTHONPATH``; default: the checkout holding this
file), so that before and after share one run. Then, for the last root, a breakdown of our fixed costs in a fresh
process, in the order a run meets them, on the last run's config and checkpoint: importing the command line and the
trainer, building the ``Trainer``, TensorBoard's writer, the evaluation episode, a first and a second call of
``diagnostics.training_diagnostics`` on the trainer's eight replay states (the first pays ArviZ's import), the
checkpoint and the learning-curve plot; it checks that the recomputed diagnostics equal the run's
``diagnostics.csv`` row.

Wall seconds depend on the machine's load; CPU seconds (user + system, all the process's threads) much less, so both
are printed. Ends with ``ratio_vs_sb3_learn X.XX`` and ``cpu_ratio_vs_sb3_learn X.XX``: our command's wall (CPU)
seconds over SB3's ``learn`` wall (CPU) seconds, for the last root, medians over repeats.

``--per-step BLOCKS`` runs instead the per-step comparison, the part of a run that is not fixed: CPU (and wall) ms
per step of both learners in one process, the runners of ``benchmarks/throughput.py`` in alternating blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WARMUP = 1000


def _env(root: Path | None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if root is not None:
        env["PYTHONPATH"] = str(root)
    return env


def ours_command(args, run_dir: Path) -> list[str]:
    """``virel_ppl train ...`` exactly as the console script runs it (``virel_ppl.cli:main``)."""
    n = str(args.steps)
    return [
        sys.executable, "-c", "import sys; from virel_ppl.cli import main; sys.exit(main())", "train",
        "--env", args.env, "--total-steps", n, "--warmup-steps", str(WARMUP), "--eval-every", n,
        "--eval-episodes", "1", "--checkpoint-every", n, "--threads", "1", "--no-progress", "--run-dir", str(run_dir),
    ]  # fmt: skip


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(cmd: list[str], env: dict[str, str], what: str) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd``; its wall seconds and CPU seconds (user + system, all its threads: the work, less the load)."""
    cpu, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if proc.returncode:
        raise SystemExit(f"{what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc, wall, cpu


def run_ours(args, root: Path, run_dir: Path) -> dict[str, float]:
    _, wall, cpu = _timed(ours_command(args, run_dir), _env(root), "virel_ppl train")
    return {"wall_s": wall, "cpu_s": cpu}


def run_sb3(args) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--sb3-child", "--steps", str(args.steps), "--env", args.env]
    proc, wall, cpu = _timed(cmd, _env(None), "SB3 child")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": wall, "cpu_s": cpu}


def sb3_child(args) -> None:
    """In a fresh process: import SB3, build SAC as ``benchmarks/throughput.py`` does, time ``learn(steps)``."""
    t0 = time.perf_counter()
    import gymnasium as gym
    import torch
    from stable_baselines3 import SAC

    t1 = time.perf_counter()
    torch.set_num_threads(1)
    model = SAC(
        "MlpPolicy",
        gym.make(args.env),
        learning_rate=1e-3,
        buffer_size=1_000_000,
        learning_starts=WARMUP,
        batch_size=256,
        tau=0.005,
        gamma=0.99,
        train_freq=1,
        gradient_steps=1,
        policy_kwargs=dict(net_arch=[256, 256]),
        device="cpu",
        seed=0,
        verbose=0,
    )
    t2, c2 = time.perf_counter(), time.process_time()
    model.learn(args.steps, progress_bar=False)
    t3, c3 = time.perf_counter(), time.process_time()
    print(json.dumps({"import_s": t1 - t0, "build_s": t2 - t1, "learn_s": t3 - t2, "learn_cpu_s": c3 - c2}))


def breakdown_child(run_dir: Path) -> None:
    """In a fresh process (``PYTHONPATH`` = the root): our fixed costs one by one, in the order a run meets them,
    on the run's own config and checkpoint (so the diagnostics can be checked against its ``diagnostics.csv``)."""
    out: dict[str, tuple[float, float]] = {}

    def timed(name: str, fn):
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        out[name] = (time.perf_counter() - start, time.process_time() - cpu)
        return result

    timed("import virel_ppl.cli (tyro, config)", lambda: __import__("virel_ppl.cli"))
    timed("import virel_ppl.train (torch, pyro, gymnasium, mujoco)", lambda: __import__("virel_ppl.train"))
    heavy = ("arviz", "xarray", "pandas", "scipy", "matplotlib", "tensorboard", "stable_baselines3", "ray")
    loaded = sorted(m for m in heavy if m in sys.modules)
    import torch

    from virel_ppl.analysis.diagnostics import replay_states, training_diagnostics
    from virel_ppl.runtime.checkpoints import load_checkpoint, saved_config
    from virel_ppl.runtime.evaluation import evaluate
    from virel_ppl.runtime.logger import RunLogger, plot_learning_curve, read_csv
    from virel_ppl.train import Trainer

    state, path = load_checkpoint(run_dir)
    config = saved_config(state, path)
    trainer = timed(
        "Trainer(config): env, agent, replay (its first torch.optim.Adam imports torch._dynamo)",
        lambda: Trainer(config),
    )
    trainer.load_state_dict(state)
    step, seed = trainer.step, config.seed
    with tempfile.TemporaryDirectory() as tmp:
        timed("RunLogger with TensorBoard (import + open)", lambda: RunLogger(Path(tmp), tensorboard=True).close())
    timed("evaluation episode", lambda: evaluate(trainer.agent, config.env, 1, seed=seed + 10_000 + step))
    logged = read_csv(run_dir / "diagnostics.csv")
    eps = logged["eps"][-1]
    states = replay_states(trainer.replay.obs[: len(trainer.replay)], 8, seed=seed + step)
    first = timed(
        "diagnostics at the evaluation, first call",
        lambda: training_diagnostics(trainer.agent, states, eps, seed=seed + step),
    )
    second = timed(
        "diagnostics, second call", lambda: training_diagnostics(trainer.agent, states, eps, seed=seed + step)
    )
    with tempfile.TemporaryDirectory() as tmp:
        timed("checkpoint", lambda: trainer.save(Path(tmp) / "checkpoint.pt"))
        timed("learning-curve plot", lambda: plot_learning_curve(run_dir / "eval.csv", Path(tmp) / "curve.png"))
    same = first == second and all(float(first[k]) == logged[k][-1] for k in first)
    del torch
    print(json.dumps({"times": out, "loaded_by_import": loaded, "diagnostics_match_csv": same}))


def per_step(blocks: int, env: str) -> None:
    """CPU ms per training step (act, env.step, one update), ours against SB3, in this process: the runners of
    ``benchmarks/throughput.py`` in alternating 100-step blocks after the warm-up, timed by ``time.thread_time``."""
    import argparse as ap

    import torch

    sys.path.insert(0, str(HERE))
    import throughput

    torch.set_num_threads(1)
    targs = ap.Namespace(env=env, device="cpu", batch=256, threads=1)
    runners = {"virel_ppl": throughput.Ours(throughput._config(targs)), "SB3 SAC": throughput.SB3(targs)}
    for runner in runners.values():
        runner.run(20)
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    wall: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(blocks):
        for name, runner in runners.items():
            c, w = time.thread_time(), time.perf_counter()
            runner.run(100)
            cpu[name].append(10 * (time.thread_time() - c))
            wall[name].append(10 * (time.perf_counter() - w))
    print(f"\nper step, {blocks} alternating blocks of 100 steps (median); load average {os.getloadavg()[0]:.2f}")
    print("| learner | CPU ms / step | wall ms / step |\n|---|---|---|")
    for name in runners:
        print(f"| {name} | {statistics.median(cpu[name]):.1f} | {statistics.median(wall[name]):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--steps", type=int, default=4000, help="environment steps of each learner")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each learner (median); the order flips")
    parser.add_argument("--roots", nargs="+", type=Path, default=[REPO], help="checkouts of virel_ppl to time")
    parser.add_argument(
        "--per-step", type=int, metavar="BLOCKS", help="instead: CPU ms per step of both, BLOCKS blocks of 100 steps"
    )
    parser.add_argument("--sb3-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--breakdown-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sb3_child:
        return sb3_child(args)
    if args.breakdown_child is not None:
        return breakdown_child(args.breakdown_child)
    if args.per_step:
        return per_step(args.per_step, args.env)

    import torch

    roots = [r.resolve() for r in args.roots]
    labels = {r: f"virel_ppl train ({r})" for r in roots}
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"python {platform.python_version()}, 1 torch thread; load average before: {os.getloadavg()[0]:.2f}"
    )
    ours: dict[Path, list[dict[str, float]]] = {r: [] for r in roots}
    sb3: list[dict[str, float]] = []
    tmp = Path(tempfile.mkdtemp(prefix="fixed_costs_"))
    try:
        for rep in range(args.repeats):
            order = ["sb3", *roots] if rep % 2 else [*roots, "sb3"]
            for who in order:
                if who == "sb3":
                    sb3.append(run_sb3(args))
                    s = sb3[-1]
                    print(
                        f"  SB3 SAC: learn {s['learn_s']:.1f} s ({s['learn_cpu_s']:.1f} s CPU), process "
                        f"{s['wall_s']:.1f} s ({s['cpu_s']:.1f} s CPU); load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
                else:
                    ours[who].append(run_ours(args, who, tmp / f"ours_{roots.index(who)}_{rep}"))
                    o = ours[who][-1]
                    print(
                        f"  {labels[who]}: {o['wall_s']:.1f} s ({o['cpu_s']:.1f} s CPU); load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
        load_after = os.getloadavg()[0]
        last = tmp / f"ours_{len(roots) - 1}_{args.repeats - 1}"
        cmd = [sys.executable, __file__, "--breakdown-child", str(last)]
        proc = subprocess.run(cmd, env=_env(roots[-1]), capture_output=True, text=True)
        breakdown = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
        if breakdown is None:
            print(f"breakdown failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    learn, learn_cpu = med(sb3, "learn_s"), med(sb3, "learn_cpu_s")
    print(
        f"\n{args.env}, {args.steps} steps ({WARMUP} warm-up), 256-256, batch 256, 1 thread; median of {args.repeats}; "
        f"load average after: {load_after:.2f}"
    )
    print("| learner | wall s | CPU s | wall / SB3 `learn` | CPU / SB3 `learn` |\n|---|---|---|---|---|")
    rows = [(f"{labels[r]}, whole command", med(ours[r], "wall_s"), med(ours[r], "cpu_s")) for r in roots]
    rows += [(f"SB3 SAC `learn({args.steps})`", learn, learn_cpu)]
    rows += [("SB3 SAC, whole process (imports, build, learn)", med(sb3, "wall_s"), med(sb3, "cpu_s"))]
    for name, wall, cpu in rows:
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {wall / learn:.2f} | {cpu / learn_cpu:.2f} |")
    if breakdown is not None:
        print(f"\nbreakdown of ours ({roots[-1]}): its fixed costs one by one, in a fresh process, after the runs")
        print("| piece | wall s | CPU s |\n|---|---|---|")
        for name, (sec, cpu) in breakdown["times"].items():
            print(f"| {name} | {sec:.2f} | {cpu:.2f} |")
        fixed = [v for k, v in breakdown["times"].items() if k != "diagnostics, second call"]
        print(
            f"| sum (without the second diagnostics call) | {sum(w for w, _ in fixed):.2f} | "
            f"{sum(c for _, c in fixed):.2f} |"
        )
        heavy = ", ".join(breakdown["loaded_by_import"]) or "none of them"
        print(f"heavy modules loaded by `import virel_ppl.cli, virel_ppl.train`: {heavy}")
        print(f"recomputed diagnostics equal the run's diagnostics.csv: {breakdown['diagnostics_match_csv']}")
    print(f"ratio_vs_sb3_learn {med(ours[roots[-1]], 'wall_s') / learn:.2f}")
    print(f"cpu_ratio_vs_sb3_learn {med(ours[roots[-1]], 'cpu_s') / learn_cpu:.2f}")


if __name__ == "__main__":
    main()

"""The GPU check in one command: the CUDA-graph tests, a training run that resumes and evaluates, and the throughput
against SB3 on the GPU beside the same on the CPU, each step under its own time limit, then a summary table.

    python benchmarks/gpu_check.py                  # on a machine with a GPU: about 6 minutes (at most 8)
    python benchmarks/gpu_check.py --device cpu     # the same steps on the CPU, shortened (checks this script)

Steps (each a child process, stopped at its limit, so one hang costs only its own budget):

1. ``pytest tests/test_cuda_graph.py``: on CUDA this includes capturing and replaying a real graph;
2. ``virel_ppl train --device DEVICE`` on Pendulum-v1, stopped by its step count, ``--resume``\\ d to a larger
   one, then ``virel_ppl evaluate`` on the device;
3. ``benchmarks/throughput.py --vs-sb3 --device DEVICE``, and with ``--device cuda`` the same on the CPU
   (one after the other on the same machine; each alternates virel_ppl and SB3 block by block).

Exits non-zero when a step fails or runs out of time. Needs the ``bench`` extra (SB3) and MuJoCo (HalfCheetah-v5).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, "-m", "virel_ppl.cli"]
#: flags of the short training run: small enough to finish in its budget, with updates from step 500
SHORT_RUN = ["--env", "Pendulum-v1", "--algo", "sac_auto", "--warmup-steps", "500", "--eval-episodes", "2"]
SHORT_RUN += ["--no-progress", "--no-tensorboard", "--threads", "1"]


@dataclass
class Step:
    """One command of the check, its time limit, and what to pull out of its output for the summary."""

    name: str
    command: list[str]
    budget_s: int
    pick: list[str] = field(default_factory=list)  # regexes: the summary shows the lines they match

    def run(self) -> tuple[str, float, str]:
        """Run it; (status, seconds, what it reported)."""
        print(f"\n=== {self.name} (limit {self.budget_s} s): {' '.join(self.command)}", flush=True)
        start = time.perf_counter()
        try:
            done = subprocess.run(
                self.command, cwd=ROOT, capture_output=True, text=True, timeout=self.budget_s, env=_env()
            )
        except subprocess.TimeoutExpired as stopped:
            out = _text(stopped.stdout) + _text(stopped.stderr)
            print(out[-3000:])
            return "TIMEOUT", time.perf_counter() - start, "over its limit"
        took = time.perf_counter() - start
        out = done.stdout + done.stderr
        print(out[-6000:], flush=True)
        lines = [line.strip() for line in out.splitlines()]
        found = [line for pattern in self.pick for line in lines if re.search(pattern, line)]
        status = "ok" if done.returncode == 0 else f"FAIL ({done.returncode})"
        said = "; ".join(found[-4:]) or (lines[-1] if lines else "")
        return status, took, " ".join(said.replace("|", " ").split())  # a table row of its own output, flattened


def _text(out: bytes | str | None) -> str:
    return out.decode(errors="replace") if isinstance(out, bytes) else (out or "")


def _env() -> dict[str, str]:
    """The children import this checkout's virel_ppl and print as they go."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def steps(device: str, run_dir: Path, quick: bool) -> list[Step]:
    """The check's steps on ``device``; ``quick`` shortens the runs (the CPU rehearsal)."""
    total, more, tput, cpu_tput = (600, 700, 200, 200) if quick else (4000, 6000, 2000, 1000)

    def limit(seconds: int) -> int:  # the GPU machine's limits; a rehearsal on a shared CPU gets ten times as long
        return 10 * seconds if quick else seconds

    train = [*TRAIN, "train", *SHORT_RUN, "--device", device, "--run-dir", str(run_dir), "--total-steps", str(total)]
    train += ["--hidden", "32", "32", "--batch-size", "64"] if quick else []  # the default 256-256, batch 256 on a GPU
    train += ["--eval-every", str(total), "--checkpoint-every", str(total)]
    resume = [*TRAIN, "train", "--resume", str(run_dir), "--total-steps", str(more), "--eval-every", str(more)]
    evaluate = [*TRAIN, "evaluate", str(run_dir), "--episodes", "2", "--device", device]
    throughput = [sys.executable, "benchmarks/throughput.py", "--vs-sb3", "--estep-calls", "10" if quick else "40"]
    pytest = [sys.executable, "-m", "pytest", "tests/test_cuda_graph.py", "-q", "-rs", "-p", "no:xdist"]
    picks = [r"^\| virel_ppl \|", r"^\| SB3 SAC \|", r"^virel_ppl: updates ran as", r"^ratio_vs_sb3"]
    out = [
        Step("CUDA-graph tests", pytest, limit(90), [r"\d+ (passed|failed)"]),
        Step(f"train {total} steps on {device}", train, limit(90), [r"step \d+", r"return"]),
        Step(f"resume to {more} steps", resume, limit(60), [r"step \d+", r"return"]),
        Step(f"evaluate on {device}", evaluate, limit(30), [r"\): return"]),
        Step(
            f"throughput vs SB3 on {device}",
            [*throughput, "--steps", str(tput), "--device", device],
            limit(100),
            picks,
        ),
    ]
    if device == "cuda":  # the CPU beside it, on the same machine (the budgets add up to under 8 minutes)
        out.append(
            Step("throughput vs SB3 on cpu", [*throughput, "--steps", str(cpu_tput), "--device", "cpu"], 100, picks)
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit(
                "gpu_check: torch sees no CUDA device here; run with --device cpu to rehearse the steps on the CPU"
            )
        gpu = torch.cuda.get_device_name()
    else:
        gpu = "none (CPU rehearsal)"
    print(f"gpu_check on {platform.node()}: GPU {gpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = [(step, *step.run()) for step in steps(args.device, Path(tmp) / "run", quick=args.device == "cpu")]
    total = time.perf_counter() - start
    print(f"\n## gpu_check summary ({args.device}; GPU {gpu}; load average {os.getloadavg()[0]:.2f})\n")
    print("| step | limit s | took s | status | reported |\n|---|---|---|---|---|")
    for step, status, took, said in results:
        print(f"| {step.name} | {step.budget_s} | {took:.0f} | {status} | {said} |")
    print(f"\ntotal {total:.0f} s")
    sys.exit(0 if all(status == "ok" for _, status, _, _ in results) else 1)


if __name__ == "__main__":
    main()

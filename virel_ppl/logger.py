"""Run logging: CSV files (always) and TensorBoard (optional), plus the learning-curve plot."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import torch


class RunLogger:
    """Writes scalars to ``<run_dir>/<name>.csv`` (one file per stream) and to TensorBoard.

    On resume, rows logged after the checkpoint's step are dropped, so the files match an
    uninterrupted run.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.run_dir = run_dir
        self._files: dict[str, tuple] = {}
        if resume_step is not None:
            for path in run_dir.glob("*.csv"):
                _truncate_after(path, resume_step)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)

    def log(self, stream: str, step: int, scalars: Mapping[str, float | torch.Tensor]) -> dict[str, float]:
        """Append one row ``step, scalars...`` to ``<stream>.csv``; tensors are read here, not in the hot loop."""
        row = {k: float(v) for k, v in scalars.items()}
        if stream not in self._files:
            path = self.run_dir / f"{stream}.csv"
            new = not path.exists() or path.stat().st_size == 0
            fh = open(path, "a", newline="")  # noqa: SIM115 - kept open for the run
            writer = csv.DictWriter(fh, fieldnames=["step", *row])
            if new:
                writer.writeheader()
            self._files[stream] = (fh, writer)
        fh, writer = self._files[stream]
        writer.writerow({"step": step, **{k: v for k, v in row.items() if k in writer.fieldnames}})
        fh.flush()
        if self.writer is not None:
            for k, v in row.items():
                self.writer.add_scalar(f"{stream}/{k}", v, step)
        return row

    def close(self) -> None:
        for fh, _ in self._files.values():
            fh.close()
        if self.writer is not None:
            self.writer.close()


def _truncate_after(path: Path, step: int) -> None:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= step]
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(kept)


def read_csv(path: Path) -> dict[str, list[float]]:
    """Columns of a logged CSV as lists of floats."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}


def plot_learning_curve(eval_csv: Path, out_png: Path, title: str = "") -> Path:
    """Plot mean ± std evaluation return against environment steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = read_csv(eval_csv)
    fig, ax = plt.subplots(figsize=(6, 4))
    if data:
        steps, mean, std = data["step"], data["return_mean"], data["return_std"]
        ax.plot(steps, mean, marker="o")
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.25)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return (mode action)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png

"""Run logging: CSV files (always) and TensorBoard (optional), plus the learning-curve plot."""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from virel_ppl.config import RunWarning


class TornLineWarning(RunWarning):
    """A line of a CSV log was cut off (the run was killed, or the disk filled, while writing it): it is left out."""


class RunLogger:
    """Writes scalars to ``<run_dir>/<name>.csv`` (one file per stream) and to TensorBoard.

    On resume, rows logged after the checkpoint's step and a torn last line (with a :class:`TornLineWarning`) are
    dropped, so the files match an uninterrupted run. TensorBoard's events after that step are purged the same way:
    the new event file starts with a purge at ``resume_step + 1`` (the checkpoint at ``resume_step`` was written
    after that step's scalars), which TensorBoard's readers apply to the older files.
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

            purge = resume_step + 1 if resume_step is not None else None
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=purge)

    def log(self, stream: str, step: int, scalars: Mapping[str, float | torch.Tensor]) -> dict[str, float]:
        """Append one row ``step, scalars...`` to ``<stream>.csv``; tensors are read here, not in the hot loop."""
        row = {k: float(v) for k, v in scalars.items()}
        if stream not in self._files or not row.keys() <= set(self._files[stream][1].fieldnames):
            self._open(stream, row)
        fh, writer = self._files[stream]
        writer.writerow({"step": step, **row})  # by name: a value never lands in another column
        fh.flush()
        if self.writer is not None:
            for k, v in row.items():
                self.writer.add_scalar(f"{stream}/{k}", v, step)
        return row

    def _open(self, stream: str, row: Mapping[str, float]) -> None:
        """Open ``<stream>.csv`` for appending under its own header; columns it lacks (a resume by newer code, a
        statistic that appears later) are added to the header, empty in the rows before."""
        if stream in self._files:
            self._files.pop(stream)[0].close()
        path = self.run_dir / f"{stream}.csv"
        header, rows, torn = _parse(path) if path.exists() else ([], [], [])
        fields = (header or ["step"]) + [k for k in row if k not in header]
        if header and fields != header:
            _warn_torn(path, torn, "dropped when adding the columns " + ", ".join(fields[len(header) :]))
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w", newline="") as fh:
                csv.writer(fh).writerows([fields] + [r + [""] * (len(fields) - len(header)) for r in rows])
            os.replace(tmp, path)  # a kill mid-rewrite leaves the old file whole
        fh = open(path, "a", newline="")  # noqa: SIM115 - kept open for the run
        writer = csv.DictWriter(fh, fieldnames=fields)
        if not header:
            writer.writeheader()
        self._files[stream] = (fh, writer)

    def close(self) -> None:
        for fh, _ in self._files.values():
            fh.close()
        if self.writer is not None:
            self.writer.close()


def _parse(path: Path) -> tuple[list[str], list[list[str]], list[tuple[int, str]]]:
    """A CSV log's header, its complete rows (as written) and its torn lines ``(line number, text)``.

    A row is complete when it has one number per column and, if it is the last line, ends with its line break: a
    last line without one was cut off mid-write, even where what is left of it parses."""
    with open(path, newline="") as fh:
        text = fh.read()
    lines = list(csv.reader(io.StringIO(text)))
    if not lines:
        return [], [], []
    header, rows, torn = lines[0], [], []
    ends_complete = text.endswith("\n")
    for number, row in enumerate(lines[1:], start=2):
        if not row:
            continue
        if _numbers(row) and len(row) == len(header) and (number < len(lines) or ends_complete):
            rows.append(row)
        else:
            torn.append((number, ",".join(row)))
    return header, rows, torn


def _numbers(row: list[str]) -> bool:
    """Every cell a number, or empty (a column added after the row was written, see :meth:`RunLogger._open`)."""
    try:
        for value in row:
            if value:
                float(value)
    except ValueError:
        return False
    return True


def _warn_torn(path: Path, torn: list[tuple[int, str]], what: str) -> None:
    for number, text in torn:
        shown = text if len(text) <= 40 else text[:37] + "..."
        warnings.warn(f"{path}: line {number} ({shown!r}) is cut off; {what}.", TornLineWarning, stacklevel=3)


def _truncate_after(path: Path, step: int) -> None:
    """Keep the header and the complete rows up to ``step``; torn lines are dropped with a warning."""
    header, rows, torn = _parse(path)
    if not header:
        return
    _warn_torn(path, torn, "dropped on resume")
    kept = [header] + [r for r in rows if int(float(r[0])) <= step]
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(kept)


def read_csv(path: Path, warn: bool = True) -> dict[str, list[float]]:
    """Columns of a logged CSV as lists of floats (NaN where a row predates its column). Torn lines (see
    :func:`_parse`) are left out, with a :class:`TornLineWarning` unless ``warn`` is False (e.g. a file that a running
    run is still writing)."""
    header, rows, torn = _parse(path)
    if warn:
        _warn_torn(path, torn, "read past it")
    if not rows:
        return {}
    return {k: [float(r[i]) if r[i] else math.nan for r in rows] for i, k in enumerate(header)}


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

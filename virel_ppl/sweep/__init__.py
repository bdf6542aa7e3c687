"""Sweeps on Ray Tune: a grid of ``Config``s run as Tune trials, locally by default or on a Ray cluster.

``sweep(grid, base, root)`` (the ``virel_ppl sweep`` command) turns the product of ``grid``'s value lists (e.g.
``{"env": [...], "algo": [...], "seed": [0, 1, 2]}``) over ``base`` into one trial per ``Config``. Each trial
is an ordinary training run: ``train()`` writes ``ROOT/<name>/`` (config.json, eval.csv, checkpoint.pt, ...), and
a hook reports every evaluation to Tune (``tune.report``: ``step``, ``return_mean``, ``return_std``, ε and the
critic losses of the last ``train.csv`` row), so Tune's tables, loggers and schedulers (``search="asha"``) work.
At the end the multi-seed report (``virel_ppl.analysis.report.write_report``) is written to ``ROOT/report``.
How it runs is one :class:`SweepOptions`, which the command line parses and ``sweep`` takes.

Checkpoints. A trial hands Tune a copy of its whole run directory whenever ``train()`` has just written
``checkpoint.pt`` (by default the sweep sets ``checkpoint_every = eval_every``: a checkpoint at every evaluation),
so a machine that shares no filesystem with the others can pick up a trial: Tune restores the copy into
the run directory and ``train(resume=...)`` continues exactly. The cost is a copy of ``checkpoint.pt`` (it holds
the replay buffer: ~170 bytes per stored step on HalfCheetah) per checkpoint in Tune's storage, of which Tune keeps
the latest only. ``tune_checkpoints=False`` skips the copies: a restarted trial then resumes from the
``checkpoint.pt`` in its run directory, which must be on a filesystem the machines share.

Tune's reports. Tune logs each trial's reports (with their wall clock) in ``ROOT/tune/<trial>/progress.csv``, and
starts that file afresh when a sweep resumes after all its processes stopped and a trial handed Tune no checkpoint;
the sweep first keeps the earlier rows as ``progress.1.csv``, ``progress.2.csv``, ... (:func:`keep_progress`), and
:func:`progress_rows` reads every report back in order.

The parts, by job: ``grid`` (values from text, the trials of a grid), ``trainable`` (one trial on a Ray worker),
``driver`` (the options, Ray, the root's lock and resume, the report), ``ray_noise`` (Ray's output that is not
the sweep's). Ray is imported only when a sweep runs.
"""

from virel_ppl.sweep.driver import (
    EXPERIMENT,
    LOCK_FILE,
    PROGRESS_FILE,
    SWEEP_FILE,
    SweepOptions,
    SweepResult,
    keep_progress,
    make_scheduler,
    progress_rows,
    report_table,
    start_ray,
    sweep,
)
from virel_ppl.sweep.grid import NAMED_AXES, RESERVED, SweepError, Trial, parse_set, parse_value, plan, value_label
from virel_ppl.sweep.trainable import STAT_PREFIXES

__all__ = [
    "EXPERIMENT",
    "LOCK_FILE",
    "NAMED_AXES",
    "PROGRESS_FILE",
    "RESERVED",
    "STAT_PREFIXES",
    "SWEEP_FILE",
    "SweepError",
    "SweepOptions",
    "SweepResult",
    "Trial",
    "keep_progress",
    "make_scheduler",
    "parse_set",
    "parse_value",
    "plan",
    "progress_rows",
    "report_table",
    "start_ray",
    "sweep",
    "value_label",
]

"""Command line: ``virel_ppl train``, ``virel_ppl evaluate RUN_DIR``, ``virel_ppl diagnose RUN_DIR``,
``virel_ppl report RUN_DIR...``, ``virel_ppl sweep`` (a grid of runs on Ray Tune).

``examples/mujoco_svi.py`` is the same ``train`` command as a script.
"""

from __future__ import annotations

import dataclasses
import functools
import signal
import sys
import typing
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from virel_ppl.config import Config, ConfigError, RunWarning, check_device, field_types, preset_config
from virel_ppl.sweep.driver import SweepOptions


def user_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Print a bad setting, a missing run directory, an unusable checkpoint or a file that cannot be written as one
    ``error:`` line on stderr (exit status 1), not a traceback, and a checkpoint fallback as one ``warning:`` line;
    anything else still raises with its traceback."""

    @functools.wraps(command)
    def wrapped(*args, **kwargs) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("always", RunWarning)  # each one, every time: they are about this command
            warnings.showwarning = _show_warning
            try:
                command(*args, **kwargs)
            except (ConfigError, FileNotFoundError) as err:
                raise SystemExit(f"error: {err}") from None
            except OSError as err:  # a file that cannot be written (full disk, permissions): name it
                if err.filename is None:
                    raise
                raise SystemExit(f"error: cannot write {err.filename}: {err.strerror or err}.") from None

    return wrapped


_python_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, RunWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


@dataclass
class TrainArgs:
    """Train an agent by variational EM (defaults: VIREL on InvertedPendulum-v5, a few minutes on a CPU)."""

    config: Annotated[Config, tyro.conf.arg(name="")] = field(default_factory=Config)
    resume: Path | None = None
    """Continue the run saved in this directory. Every flag given is applied; only --total-steps, --eval-every,
    --eval-episodes, --log-every, --checkpoint-every, --threads, --[no-]tensorboard, --[no-]progress and
    --[no-]cuda-graph may change (--total-steps not below the steps already run), any other flag must repeat the
    saved value."""
    overwrite: bool = False
    """Start a new run in --run-dir even if it holds one: that run's logs and checkpoints are removed first."""


@dataclass
class EvaluateArgs:
    """Load a run's checkpoint, report mode-action returns, and optionally record a video."""

    run_dir: tyro.conf.Positional[Path]
    episodes: int = 10
    """Evaluation episodes."""
    seed: int = 12345
    """Seed of the evaluation episodes."""
    video: bool = False
    """Also render one episode to RUN_DIR/video.gif (needs MuJoCo rendering: EGL or OSMesa)."""
    device: str = "cpu"


def typed_config_fields(argv: Sequence[str]) -> set[str]:
    """The ``Config`` fields whose flags appear in ``argv`` (the arguments of ``train``), including those given
    their default value. tyro returns values only, with no record of which came from the command line, so the flags
    are read off ``argv`` by the names tyro gives them: ``--field-name`` (or ``--field_name``), and ``--no-field-name``
    for a bool; ``--flag value`` or ``--flag=value``."""
    kinds = field_types()
    flags = {name.replace("_", "-"): name for name in kinds}
    flags |= {"no-" + name.replace("_", "-"): name for name, kind in kinds.items() if kind is bool}
    typed = set()
    for arg in argv:
        flag = arg.partition("=")[0].removeprefix("--").replace("_", "-")
        if arg.startswith("--") and flag in flags:
            typed.add(flags[flag])
    return typed


@user_errors
def run_train(args: TrainArgs, argv: Sequence[str] | None = None) -> None:
    """Run ``virel_ppl train``. ``argv`` (the arguments after ``train``) tells a resume which flags were typed; without
    it, the fields of ``args.config`` that differ from their defaults count as typed."""
    from virel_ppl.train import StoppedWithoutCheckpoint, train

    try:
        if args.resume is not None:
            if argv is not None:
                typed = typed_config_fields(argv)
            else:
                typed = {
                    f.name
                    for f in dataclasses.fields(Config)
                    if getattr(args.config, f.name) != getattr(Config(), f.name)
                }
            overrides = {name: getattr(args.config, name) for name in typed}
            result = train(resume=args.resume, overrides=overrides, overwrite=args.overwrite)
        else:
            result = train(args.config, overwrite=args.overwrite)
    except StoppedWithoutCheckpoint as stop:
        print(f"{stop}", file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None
    except KeyboardInterrupt:
        print("Stopped by Ctrl-C outside the training loop: this command saved no checkpoint.", file=sys.stderr)
        raise SystemExit(128 + signal.SIGINT) from None
    how = f" by {signal.Signals(result.signal).name}" if result.signal is not None else ""
    state = f"stopped{how} (resume with --resume {result.run_dir})" if result.interrupted else "finished"
    print(
        f"Run {state} after {result.steps} steps: last eval return {result.final_eval_return:.1f}, "
        f"best {result.best_eval_return:.1f}.\n"
        f"  logs:       {result.run_dir}/train.csv, eval.csv, episodes.csv (TensorBoard: {result.run_dir}/tb)\n"
        f"  plot:       {result.run_dir}/learning_curve.png\n"
        f"  checkpoint: {result.run_dir}/checkpoint.pt"
    )
    if result.interrupted:  # non-zero, so that a scheduler sees the run stopped early (130 Ctrl-C, 143 SIGTERM)
        raise SystemExit(128 + (result.signal or signal.SIGINT))


@user_errors
def run_evaluate(args: EvaluateArgs) -> None:
    from virel_ppl.runtime.checkpoints import load_agent
    from virel_ppl.runtime.evaluation import evaluate
    from virel_ppl.runtime.video import record_video

    if args.episodes < 1:
        raise ConfigError(f"--episodes must be a positive integer, got {args.episodes}.")
    check_device(args.device)
    agent, config = load_agent(args.run_dir, args.device)
    returns = evaluate(agent, config.env, args.episodes, seed=args.seed)
    print(
        f"{config.env} ({config.algo}): return {returns.mean():.1f} ± {returns.std():.1f} over {args.episodes} episodes"
    )
    if args.video:
        try:
            path = record_video(agent, config.env, args.run_dir / "video.gif", seed=args.seed)
            print(f"video: {path}")
        except RuntimeError as err:
            print(f"No video: {err}")


@dataclass
class DiagnoseArgs:
    """Action-posterior diagnostics of a run's agent: guide π_θ vs the Boltzmann target exp(Q/ε)·prior, with
    PSIS k̂ and ESS per state (ArviZ). Writes RUN_DIR/posterior/action_posterior.{png,md,nc}."""

    run_dir: tyro.conf.Positional[Path]
    num_states: int = 4
    """States to look at."""
    states: Literal["rollout", "replay"] = "rollout"
    """rollout: evenly spaced along an episode of the mode policy; replay: drawn from the checkpoint's buffer."""
    num_samples: int = 2000
    """Guide draws (and target draws) per state."""
    eps: float | None = None
    """Temperature ε of the target; None: the ε of train.csv's last complete row (without one: --alpha for virel,
    whose ε is fixed; the other algorithms then need --eps)."""
    seed: int = 0
    out: Path | None = None
    """Output folder; None: RUN_DIR/posterior."""
    device: str = "cpu"


@dataclass
class ReportArgs:
    """Multi-seed report: learning curves with HDI bands over seeds, final-return table (mean, sd, HDI, IQM with
    bootstrap CI) and training diagnostics (k̂, ε), as PNG and Markdown."""

    run_dirs: tyro.conf.Positional[list[Path]]
    """Run directories, or folders holding them."""
    out: Path = Path("report")
    """Output folder for report.md and the PNGs."""
    group_by: tuple[str, ...] = ("env", "algo")
    """Config fields whose values make a group (the runs of a group are its seeds)."""
    hdi_prob: float = 0.94
    """Probability mass of the HDI bands and intervals."""
    ci: float = 0.95
    """Confidence level of the bootstrap CI of the IQM."""
    n_boot: int = 2000
    """Bootstrap resamples."""
    seed: int = 0
    """Seed of the bootstrap."""


@user_errors
def run_diagnose(args: DiagnoseArgs) -> None:
    from virel_ppl.analysis.diagnostics import diagnose_run

    check_device(args.device)
    if args.num_samples < 4 or args.num_samples % 4:  # ArviZ's four chains, each an equal share of the draws
        raise ConfigError(f"--num-samples must be a positive multiple of 4 (four chains), got {args.num_samples}.")
    if args.num_states < 1:
        raise ConfigError(f"--num-states must be a positive integer, got {args.num_states}.")
    post, paths = diagnose_run(
        args.run_dir, args.out, args.num_states, args.states, args.num_samples, args.eps, args.seed, args.device
    )
    print(post.table())
    print("\n".join(f"  {name}: {path}" for name, path in paths.items()))


@user_errors
def run_report(args: ReportArgs) -> None:
    from virel_ppl.analysis.report import write_report

    path = write_report(args.run_dirs, args.out, args.group_by, args.hdi_prob, args.ci, args.n_boot, args.seed)
    print(f"report: {path} (plots beside it)")


def _split_preset(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """``train``'s arguments with ``--preset NAME`` (or ``--preset=NAME``) taken out: ``(NAME, the others)``, NAME
    None without ``--preset`` (and ``""`` for a ``--preset`` that ends the line)."""
    for i, arg in enumerate(args):
        if arg == "--preset":
            return (args[i + 1] if i + 1 < len(args) else ""), [*args[:i], *args[i + 2 :]]
        if arg.startswith("--preset="):
            return arg.partition("=")[2], [*args[:i], *args[i + 1 :]]
    return None, list(args)


def _preset_train_args(name: str, args: list[str]) -> TrainArgs:
    """``virel_ppl train --preset NAME ARGS``: the preset's values (``config.PRESETS``, e.g. ``paper`` = VIREL App. I)
    become the defaults, so the flags in ``args`` still win."""
    env = tyro.cli(TrainArgs, args=args, prog="virel_ppl train").config.env
    try:
        defaults = TrainArgs(config=preset_config(name, env=env))
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    return tyro.cli(TrainArgs, args=args, default=defaults, prog="virel_ppl train")


@dataclass
class SweepArgs:
    """A grid of training runs as Ray Tune trials: on this machine (as many at once as --max-concurrent), or on a
    running Ray cluster with --address. Each trial is an ordinary run directory under --root; at the end the
    report table is printed and its plots written to ROOT/report. See docs/sweeps.md."""

    envs: tuple[str, ...] = ("InvertedPendulum-v5",)
    """Environment ids."""
    algos: tuple[str, ...] = ("virel",)
    """Algorithm presets (virel, beta, virel2, mpo, mpo_np, sac, sac_auto, pseudo_likelihood), and sb3_sac:
    Stable-Baselines3's SAC with its own defaults, as an external reference (pip install -e ".[bench]")."""
    guides: tuple[str, ...] = ("tanh_normal",)
    """Policy families."""
    elbos: tuple[str, ...] = ("auto",)
    """E-step estimators (auto, as in train: enum for the categorical guide, trace otherwise)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds (the runs of one report group)."""
    set: Annotated[tuple[str, ...], tyro.conf.arg(name="set")] = ()
    """Any other Config field: FIELD=V1,V2 (several values join the grid), e.g. --set batch_size=64,256
    hidden=[64,64] tensorboard=false."""
    total_steps: int = 15_000
    """Environment steps of every run (the budget)."""
    options: Annotated[SweepOptions, tyro.conf.arg(name="")] = field(default_factory=SweepOptions)
    resume: bool = False
    """Continue the sweep saved in --root (after Ctrl-C): finished runs are kept, the others resume."""


@user_errors
def run_sweep(args: SweepArgs) -> None:
    from virel_ppl.sweep import parse_set, sweep

    root = args.options.root
    try:
        grid: dict = {"env": list(args.envs), "algo": list(args.algos)}
        grid |= {"guide": list(args.guides), "elbo": list(args.elbos), "seed": list(args.seeds)}
        extra = parse_set(args.set)
        for name in ("env", "algo", "guide", "elbo", "seed", "total_steps"):
            if name in extra:
                flag = {"total_steps": "total-steps"}.get(name, name + "s")
                raise ConfigError(f"--set {name}=...: use --{flag}.")
        every = extra.pop("checkpoint_every") if len(extra.get("checkpoint_every", ())) == 1 else [None]
        grid |= {k: v for k, v in extra.items() if len(v) > 1}
        base = Config(total_steps=args.total_steps, **{k: v[0] for k, v in extra.items() if len(v) == 1})
        options = dataclasses.replace(args.options, resume=args.resume, checkpoint_every=every[0])
        result = sweep(grid, base, options=options)
    except KeyboardInterrupt:
        _sweep_stopped(root)
    if result.table:
        print(result.table)
        print(f"report: {result.report} (plots beside it); runs: {result.root}")
    if result.failed:
        raise SystemExit(
            f"error: {len(result.failed)} trial(s) failed: {', '.join(result.failed)} (see {result.root}/tune)"
        )
    if result.interrupted:
        _sweep_stopped(root)


def _sweep_stopped(root: Path) -> typing.NoReturn:
    """A sweep stopped by Ctrl-C: say how to continue, and exit 130 as ``train`` does (a stop, not an error)."""
    print(f"Sweep stopped; continue it with the same command and --resume (root {root}).", file=sys.stderr)
    raise SystemExit(128 + signal.SIGINT)


def main(argv: list[str] | None = None) -> None:
    commands = {
        "train": TrainArgs,
        "evaluate": EvaluateArgs,
        "diagnose": DiagnoseArgs,
        "report": ReportArgs,
        "sweep": SweepArgs,
    }
    argv = list(sys.argv[1:] if argv is None else argv)
    # train's flags without --preset: the preset's values are defaults, not typed flags
    preset, train_flags = _split_preset(argv[1:]) if argv[:1] == ["train"] else (None, [])
    if preset is not None:
        cmd = _preset_train_args(preset, train_flags)
    else:
        cmd = tyro.extras.subcommand_cli_from_dict(commands, args=argv, prog="virel_ppl")
    if isinstance(cmd, TrainArgs):
        run_train(cmd, train_flags)
    elif isinstance(cmd, DiagnoseArgs):
        run_diagnose(cmd)
    elif isinstance(cmd, ReportArgs):
        run_report(cmd)
    elif isinstance(cmd, SweepArgs):
        run_sweep(cmd)
    else:
        run_evaluate(cmd)


if __name__ == "__main__":
    main()

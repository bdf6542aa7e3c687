"""Command line: ``virel_ppl train``, ``virel_ppl evaluate RUN_DIR``.

``examples/mujoco_svi.py`` is the same ``train`` command as a script.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from virel_ppl.config import Config


@dataclass
class TrainArgs:
    """Train an agent by variational EM (defaults: VIREL on InvertedPendulum-v5, a few minutes on a CPU)."""

    config: Annotated[Config, tyro.conf.arg(name="")] = field(default_factory=Config)
    resume: Path | None = None
    """Continue the run saved in this directory; flags that differ from their defaults override its config."""


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


def run_train(args: TrainArgs) -> None:
    from virel_ppl.train import train

    if args.resume is not None:
        defaults = Config()
        overrides = {
            f.name: getattr(args.config, f.name)
            for f in dataclasses.fields(Config)
            if getattr(args.config, f.name) != getattr(defaults, f.name)
        }
        result = train(resume=args.resume, overrides=overrides)
    else:
        result = train(args.config)
    state = "stopped (resume with --resume " + str(result.run_dir) + ")" if result.interrupted else "finished"
    print(
        f"Run {state} after {result.steps} steps: last eval return {result.final_eval_return:.1f}, "
        f"best {result.best_eval_return:.1f}.\n"
        f"  logs:       {result.run_dir}/train.csv, eval.csv, episodes.csv (TensorBoard: {result.run_dir}/tb)\n"
        f"  plot:       {result.run_dir}/learning_curve.png\n"
        f"  checkpoint: {result.run_dir}/checkpoint.pt"
    )


def run_evaluate(args: EvaluateArgs) -> None:
    from virel_ppl.train import evaluate, load_agent, record_video

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


def main(argv: list[str] | None = None) -> None:
    cmd = tyro.extras.subcommand_cli_from_dict(
        {"train": TrainArgs, "evaluate": EvaluateArgs}, args=argv, prog="virel_ppl"
    )
    if isinstance(cmd, TrainArgs):
        run_train(cmd)
    else:
        run_evaluate(cmd)


if __name__ == "__main__":
    main()

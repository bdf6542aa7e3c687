"""Small known-answer problems shared by the tests."""

from __future__ import annotations

import torch
from torch import nn

#: Config fields for short CPU training runs in tests: small networks, no progress bar, no TensorBoard, one thread.
TINY = dict(
    hidden=(32, 32),
    batch_size=32,
    warmup_steps=100,
    eval_every=200,
    eval_episodes=1,
    log_every=50,
    checkpoint_every=10_000,
    progress=False,
    tensorboard=False,
    threads=1,
)


def state_tensors(state) -> dict[str, torch.Tensor]:
    """Every tensor in a nested state dict (an agent's checkpoint: parameters, optimiser moments and steps, extras),
    by path."""
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix, value):
        if isinstance(value, torch.Tensor):
            flat[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{prefix}/{i}", v)

    walk("", state)
    return flat


# A tiny Pendulum-v1 run through the command line: updates from step 50, train.csv every 20 steps, checkpoints
# every 40 steps.
TINY_ARGS = ["--hidden", "8", "--batch-size", "16", "--warmup-steps", "50", "--eval-episodes", "1", "--log-every", "20"]
TINY_ARGS += ["--checkpoint-every", "40", "--no-progress", "--no-tensorboard", "--threads", "1"]


def tiny_train(run_dir, *extra, env="Pendulum-v1", total=120, eval_every=60) -> None:
    """``virel_ppl train`` of a tiny run into ``run_dir`` (``extra``: more flags)."""
    from virel_ppl.cli import main

    argv = ["train", "--env", env, "--total-steps", str(total), "--eval-every", str(eval_every)]
    main(argv + TINY_ARGS + ["--run-dir", str(run_dir), *extra])


class StopAt:
    """What Ctrl-C does to a run (or a stop to a sweep's trial): ask it to stop after this step; it checkpoints and
    returns. A ``train()`` hook."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, trainer, step: int) -> None:
        if step == self.step:
            trainer.stop_requested = True


class QuadraticQ(nn.Module):
    """Q(s, a) = w · (−Σ_i (a_i − c_i)²) + s·u: a critic with a known maximiser c, and parameters to freeze."""

    def __init__(self, center: list[float], weight: float = 1.0, obs_dim: int = 3) -> None:
        super().__init__()
        self.center = nn.Parameter(torch.tensor(center))
        self.weight = nn.Parameter(torch.tensor(weight))
        self.u = nn.Parameter(torch.linspace(-0.5, 0.5, obs_dim))

    def q(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return -self.weight * (actions - self.center).pow(2).sum(-1) + states @ self.u

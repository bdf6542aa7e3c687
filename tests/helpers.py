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


class QuadraticQ(nn.Module):
    """Q(s, a) = w · (−Σ_i (a_i − c_i)²) + s·u: a critic with a known maximiser c, and parameters to freeze."""

    def __init__(self, center: list[float], weight: float = 1.0, obs_dim: int = 3) -> None:
        super().__init__()
        self.center = nn.Parameter(torch.tensor(center))
        self.weight = nn.Parameter(torch.tensor(weight))
        self.u = nn.Parameter(torch.linspace(-0.5, 0.5, obs_dim))

    def q(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return -self.weight * (actions - self.center).pow(2).sum(-1) + states @ self.u

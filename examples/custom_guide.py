"""A user-defined guide (and divergence) plugged into the trainer in a few lines.

A guide is a ``PolicyGuide``: ``distribution(states)`` and ``mode(states)``; the base class turns it into a Pyro
guide (``pyro.module`` + the ``"states"`` plate + sample site ``"a"``). Here: a tanh-squashed Gaussian whose
log-std is one free parameter per action dimension, shared by all states (as in PPO/TRPO policies), trained
with the Rényi divergence of order α = 0.5 passed as an object.

    python examples/custom_guide.py                        # InvertedPendulum-v5, 3000 steps
    python examples/custom_guide.py --env Pendulum-v1 --total-steps 6000
"""

from __future__ import annotations

import torch
import tyro
from torch import nn

from virel_ppl.config import Config
from virel_ppl.inference.actions import ActionBox, TanhNormal
from virel_ppl.inference.divergences import ScaledRenyiELBO
from virel_ppl.inference.guides import PolicyGuide
from virel_ppl.inference.nets import mlp
from virel_ppl.train import train


class SharedStdTanhNormal(PolicyGuide):
    """π_θ(a|s) = from_unit(tanh(x)), x ~ Normal(μ_θ(s), exp(log_std)): a state-independent exploration scale."""

    def __init__(self, obs_dim: int, box: ActionBox, hidden=(64, 64)) -> None:
        super().__init__()
        self.box = self._require_box(box)  # a clear SpaceError (TypeError) on a Discrete task
        self.mean = mlp(obs_dim, hidden, box.dim)
        self.log_std = nn.Parameter(torch.full((box.dim,), -0.5))

    def distribution(self, states: torch.Tensor) -> TanhNormal:
        loc = self.mean(states)
        return TanhNormal(loc, self.log_std.clamp(-5, 2).exp().expand_as(loc), self.box)

    def mode(self, states: torch.Tensor) -> torch.Tensor:
        return self.box.from_unit(torch.tanh(self.mean(states)))


if __name__ == "__main__":
    config = tyro.cli(Config, default=Config(total_steps=3000, warmup_steps=500, hidden=(64, 64), eval_every=1000))
    result = train(
        config,
        policy_factory=lambda obs_dim, box: SharedStdTanhNormal(obs_dim, box, hidden=config.hidden),
        elbo=ScaledRenyiELBO(alpha=0.5, num_particles=8),  # or config.elbo by name: --elbo renyi
    )
    print(f"{config.env}: best evaluation return {result.best_eval_return:.1f} ({result.run_dir})")

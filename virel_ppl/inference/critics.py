"""The critic Q_ω: twin Q networks, a value network V_ψ and its slowly-updated target copy V_ψ̄ (VIREL App. H)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from virel_ppl.inference.nets import mlp


def _pair(states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Concatenate states ``(..., N, obs)`` with actions ``(..., N, act)``, broadcasting leading particle dims
    (and the ``(n, 1, n)`` one-hot actions that ``TraceEnum_ELBO`` enumerates against ``(N, obs)`` states)."""
    if states.shape[:-1] != actions.shape[:-1]:
        batch = torch.broadcast_shapes(states.shape[:-1], actions.shape[:-1])
        states = states.expand(batch + states.shape[-1:])
        actions = actions.expand(batch + actions.shape[-1:])
    return torch.cat([states, actions], dim=-1)


class Critic(nn.Module):
    """Twin Q_ω1, Q_ω2 over h = (s, a), value V_ψ(s) and the target value V_ψ̄(s).

    ``q(s, a)`` is the minimum of the twins: the likelihood's Q in the E-step and the value target in
    the M-step both use it, which curbs the over-estimation a single Q has (Fujimoto et al., SAC).
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.q1 = mlp(obs_dim + action_dim, hidden, 1)
        self.q2 = mlp(obs_dim + action_dim, hidden, 1)
        self.v = mlp(obs_dim, hidden, 1)
        self.v_target = copy.deepcopy(self.v).requires_grad_(False)

    def twin_q(self, states: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = _pair(states, actions)
        return self.q1(h).squeeze(-1), self.q2(h).squeeze(-1)

    def q(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """min(Q_ω1, Q_ω2)(s, a); broadcasts over leading particle dimensions of ``actions``."""
        q1, q2 = self.twin_q(states, actions)
        return torch.minimum(q1, q2)

    def value(self, states: torch.Tensor) -> torch.Tensor:
        return self.v(states).squeeze(-1)

    def target_value(self, states: torch.Tensor) -> torch.Tensor:
        return self.v_target(states).squeeze(-1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """ω and ψ: what the M-step optimises (not the target copy)."""
        return [p for name, p in self.named_parameters() if not name.startswith("v_target.")]

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """Polyak step ψ̄ ← (1 − τ) ψ̄ + τ ψ."""
        torch._foreach_lerp_(list(self.v_target.parameters()), list(self.v.parameters()), tau)


def bellman_target(
    rewards: torch.Tensor, terminated: torch.Tensor, next_value: torch.Tensor, gamma: float
) -> torch.Tensor:
    """r + γ (1 − terminated) V(s'). Truncated (time-limit) transitions keep bootstrapping."""
    return rewards + gamma * (1.0 - terminated) * next_value

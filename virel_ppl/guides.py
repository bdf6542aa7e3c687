"""Policies π_θ(a|s) as Pyro guides: the variational posterior q(a|s) of VIREL.

Each guide is one ``nn.Module`` with the same small interface:

- ``distribution(states)``: the action distribution for a batch of states (event shape ``(action_dim,)``);
- ``mode(states)``: the deterministic action used for evaluation;
- ``guide(states, **model_kwargs)``: the Pyro guide itself — registers the parameters with
  ``pyro.module`` and samples site ``"a"`` inside the ``"states"`` plate, mirroring the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from virel_ppl.actions import ActionBox, TanhNormal
from virel_ppl.models import check_states
from virel_ppl.nets import mlp

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class PolicyGuide(nn.Module):
    """Base class of all guides. Subclasses implement :meth:`distribution` and :meth:`mode`."""

    #: name under which ``pyro.module`` registers the parameters
    pyro_name: str = "policy"
    #: whether ``distribution(...)`` can be reparameterised (``rsample``)
    has_rsample: bool = True

    def distribution(self, states: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def mode(self, states: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def guide(self, states: torch.Tensor, **model_kwargs) -> torch.Tensor:
        """q(a|s) = π_θ(a|s) for a batch of states: the Pyro guide paired with the models in ``models.py``."""
        check_states(states)
        pyro.module(self.pyro_name, self)
        with pyro.plate("states", states.shape[0], device=states.device):
            return pyro.sample("a", self.distribution(states))

    @torch.no_grad()
    def act(self, states: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """An action per state: a sample of π_θ, or its mode when ``deterministic``."""
        return self.mode(states) if deterministic else self.distribution(states).sample()


class TanhNormalGuide(PolicyGuide):
    """π_θ(a|s) = tanh-squashed diagonal Gaussian on the action box (SAC's policy), exact log-density."""

    def __init__(self, obs_dim: int, box: ActionBox, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.box = box
        self.net = mlp(obs_dim, hidden, 2 * box.dim)

    def _loc_scale(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_std = self.net(states).chunk(2, dim=-1)
        return loc, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()

    def distribution(self, states: torch.Tensor) -> TanhNormal:
        loc, scale = self._loc_scale(states)
        return TanhNormal(loc, scale, self.box)

    def mode(self, states: torch.Tensor) -> torch.Tensor:
        loc, _ = self._loc_scale(states)
        return self.box.from_unit(torch.tanh(loc))


class DiagonalGaussianGuide(PolicyGuide):
    """π_θ(a|s) = Normal(μ_θ(s), σ_θ(s)) with the mean kept in the box; the environment clips samples.

    Its entropy and KL are analytic, so ``TraceMeanField_ELBO`` uses them in closed form.
    """

    def __init__(self, obs_dim: int, box: ActionBox, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.box = box
        self.net = mlp(obs_dim, hidden, 2 * box.dim)

    def _loc_scale(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_loc, log_std = self.net(states).chunk(2, dim=-1)
        scale = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp() * self.box.half_range
        return self.box.from_unit(torch.tanh(raw_loc)), scale

    def distribution(self, states: torch.Tensor) -> dist.Independent:
        loc, scale = self._loc_scale(states)
        return dist.Normal(loc, scale).to_event(1)

    def mode(self, states: torch.Tensor) -> torch.Tensor:
        return self._loc_scale(states)[0]


GUIDES: dict[str, type[PolicyGuide]] = {
    "tanh_normal": TanhNormalGuide,
    "gaussian": DiagonalGaussianGuide,
}

"""The graphical models of RL-as-inference, each a few lines of Pyro over a batch of states.

VIREL's model is one step over h = (s, a), for states s ~ d(s) from the replay buffer::

    p(a|s)        prior over actions (uniform on the action box)
    p(O=1|s, a) = exp(Q_ω(s, a) / ε_ω)

Paired with a guide q(a|s) = π_θ(a|s) from ``guides.py``, Pyro's ``Trace_ELBO`` of this pair is
E_π[Q_ω/ε_ω] − KL(π_θ ‖ p(a|s)) = E_π[Q_ω/ε_ω] + H(π_θ) − log|box|.

Every model takes the same keyword arguments, passed through ``SVI.step(states, **model_kwargs)``:

- ``q``: a callable ``q(states, actions) -> (batch,)`` — the critic, frozen during the E-step;
- ``eps``: the temperature ε_ω > 0 (float or 0-d tensor);
- ``prior``: a callable ``prior(states) -> distribution over actions`` with event shape ``(action_dim,)``.

A variant is an edit of :func:`virel_model`; see ``docs/variants.md``.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro.distributions import Distribution

QFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Prior = Callable[[torch.Tensor], Distribution]


def check_states(states: torch.Tensor) -> None:
    """Models and guides take a batch of flat states; raise ``ValueError`` otherwise."""
    if states.dim() != 2:
        raise ValueError(f"states must have shape (batch, obs_dim), got {tuple(states.shape)}.")


def check_model_inputs(states: torch.Tensor, eps: float | torch.Tensor) -> None:
    """Shape and value checks shared by the models; raise ``ValueError`` with what was wrong."""
    check_states(states)
    if not isinstance(eps, torch.Tensor) and not eps > 0:
        raise ValueError(f"The temperature eps must be > 0, got {eps}.")


def check_log_likelihood(log_lik: torch.Tensor, batch: int) -> torch.Tensor:
    if log_lik.shape[-1:] != (batch,):
        raise ValueError(f"Q(s, a) must have shape (..., {batch}) (one value per state), got {tuple(log_lik.shape)}.")
    return log_lik


def virel_model(states: torch.Tensor, *, q: QFunction, eps: float | torch.Tensor, prior: Prior) -> None:
    """VIREL: a ~ p(a|s), then the optimality likelihood log p(O=1|s, a) = Q_ω(s, a)/ε_ω."""
    check_model_inputs(states, eps)
    with pyro.plate("states", states.shape[0], device=states.device):
        a = pyro.sample("a", prior(states))  # p(a|s): uniform on the box
        pyro.factor("O", check_log_likelihood(q(states, a), states.shape[0]) / eps)  # log p(O=1|h)

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

A model may take more keyword arguments; its variant's ``model_inputs`` supplies them from the batch.

A variant is an edit of :func:`virel_model` (or of the arguments it is given); see ``docs/variants.md``:

- MPO: the same model with the old policy π_old(a|s) as ``prior``; the ELBO carries −KL(π_θ ‖ π_old);
- SAC and VIREL2: the same model with a soft Q (the change is in the M-step's targets);
- :func:`pseudo_likelihood_model`: the policy becomes the prior, sampled returns replace Q.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.poutine as poutine
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


def pseudo_likelihood_model(
    states: torch.Tensor,
    *,
    q: QFunction,
    eps: float | torch.Tensor,
    prior: Prior,
    actions: torch.Tensor,
    returns: torch.Tensor,
) -> None:
    """Pseudo-likelihood (reward-weighted) EM: the policy is the prior p_θ(a|s) and the buffer's actions are data.

    The E-step weighs each transition by its posterior q(τ_i) ∝ exp(R̂_i/ε) — a *sampled* return, where VIREL
    exponentiates the expected one, Q — and the M-step is weighted maximum likelihood of p_θ, which minimises
    KL(posterior ‖ π_θ), the moment-matching direction (Dayan & Hinton 1997; Peters & Schaal 2007; VIREL §2.4).
    ``q`` is not used: nothing here is a Q-function. Pair with a guide that has no sites (SVI is then ML).
    """
    check_model_inputs(states, eps)
    weights = states.shape[0] * torch.softmax(returns / eps, dim=0)  # E-step: q(τ_i) ∝ exp(R̂_i/ε), mean 1
    with pyro.plate("states", states.shape[0]), poutine.scale(scale=weights):
        pyro.sample("a", prior(states), obs=actions)  # M-step: weighted log p_θ(a_i|s_i)

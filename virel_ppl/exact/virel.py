"""VIREL's one-step model on a tabular MDP, solved exactly by Pyro's enumeration, and EM with complete steps.

VIREL's model (``virel_ppl/inference/models.py``) with a discrete action, so every expectation over ``a`` is a
finite sum:

    p(a|s) = Uniform(A),   log p(O=1|s, a) = Q(s, a) / ε,   q(a|s) = π_θ(a|s) = Categorical(logits θ[s])

Enumerating ``a`` (``infer={"enumerate": "parallel"}``) makes ``TraceEnum_ELBO`` exact: its marginals are the
posterior p(a|s, O) = softmax(Q(s, ·)/ε) and its loss is -ELBO with no Monte Carlo error.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO, infer_discrete
from torch import Tensor

from virel_ppl.exact.mdp import (
    Iterates,
    TabularMDP,
    bellman_optimality,
    greedy,
    policy_evaluation,
    uniform_policy,
)

Guide = Callable[[Tensor, Tensor, float], None]


def virel_model(q_values: Tensor, states: Tensor, eps: float) -> None:
    """p(a|s) p(O=1|s, a) for a batch of states drawn from d(s); the batch mean makes the ELBO an E_d(s)."""
    with pyro.plate("states", len(states)), poutine.scale(scale=1.0 / len(states)):
        # uniform action prior p(a|s)
        a = pyro.sample(
            "a",
            dist.Categorical(logits=q_values.new_zeros(q_values.shape[-1])),
            infer={"enumerate": "parallel"},
        )
        # the optimality likelihood: log p(O=1|s, a) = Q(s, a)/ε (+ a constant in a)
        pyro.factor("O", q_values[states, a] / eps)


def tabular_guide(logits: Tensor | None = None) -> Guide:
    """q(a|s) = Categorical(logits θ[s]); θ is ``logits`` if given, else the learnable ``policy_logits``.

    The guide enumerates ``a`` as well, so ``TraceEnum_ELBO`` takes E_{π_θ} as an exact sum.
    """

    def guide(q_values: Tensor, states: Tensor, eps: float) -> None:
        theta = pyro.param("policy_logits", lambda: torch.zeros_like(q_values)) if logits is None else logits
        with pyro.plate("states", len(states)), poutine.scale(scale=1.0 / len(states)):
            pyro.sample("a", dist.Categorical(logits=theta[states]), infer={"enumerate": "parallel"})

    return guide


def _no_guide(q_values: Tensor, states: Tensor, eps: float) -> None:
    """All latent variables are enumerated in the model, so the guide is empty."""


def _elbo() -> TraceEnum_ELBO:
    return TraceEnum_ELBO(max_plate_nesting=1)


def action_posterior(q_values: Tensor, eps: float) -> Tensor:
    """p(a|s, O) for every state, computed by Pyro's exact enumeration (``compute_marginals``).

    ``eps=0`` returns the limit of Lemma 1, the greedy policy (ties to the first action, as in
    ``policy_iteration``); the posterior itself is undefined there.
    """
    if eps == 0:
        return greedy(q_values)
    states = torch.arange(q_values.shape[0])
    marginals = _elbo().compute_marginals(virel_model, _no_guide, q_values, states, eps)
    return marginals["a"].probs


def posterior_mode(q_values: Tensor, eps: float = 1.0) -> Tensor:
    """argmax_a p(a|s, O) by Pyro's max-product enumeration (``infer_discrete`` at temperature 0)."""
    states = torch.arange(q_values.shape[0])
    map_model = infer_discrete(virel_model, first_available_dim=-2, temperature=0)
    return poutine.trace(map_model).get_trace(q_values, states, eps).nodes["a"]["value"]


def log_evidence(q_values: Tensor, states: Tensor, eps: float) -> float:
    """log p(O|s) averaged over the batch: E_d[log (1/A) Σ_a exp(Q(s, a)/ε)], by enumeration."""
    return -_elbo().loss(virel_model, _no_guide, q_values, states, eps)


def elbo(q_values: Tensor, states: Tensor, eps: float, logits: Tensor) -> float:
    """ELBO(θ) of the guide with logits θ, exact (the guide's ``a`` is enumerated too)."""
    return -_elbo().loss(virel_model, tabular_guide(logits), q_values, states, eps)


def expected_kl(q_values: Tensor, states: Tensor, eps: float, logits: Tensor) -> float:
    """E_d(s) KL(π_θ(·|s) ‖ π_ω(·|s)) with π_ω = softmax(Q/ε), in closed form (no Pyro involved)."""
    pi_theta = dist.Categorical(logits=logits[states])
    pi_omega = dist.Categorical(logits=q_values[states] / eps)
    return float(torch.distributions.kl_divergence(pi_theta, pi_omega).mean())


def fit_policy(
    q_values: Tensor, states: Tensor, eps: float, steps: int = 200, lr: float = 0.2
) -> tuple[list[Tensor], list[float]]:
    """The variational E-step: maximise the ELBO over θ with SVI + ``TraceEnum_ELBO`` (Adam, from θ = 0).

    Returns ``(thetas, elbos)`` with ``elbos[i] = ELBO(thetas[i])`` (SVI reports the loss before its update)
    and ``thetas[-1]`` the fitted logits. The critic Q is a constant of the model: only θ moves.
    """
    pyro.clear_param_store()
    theta = pyro.param("policy_logits", torch.zeros_like(q_values))
    svi = SVI(virel_model, tabular_guide(), pyro.optim.Adam({"lr": lr}), loss=_elbo())
    thetas, elbos = [], []
    for _ in range(steps):
        thetas.append(theta.detach().clone())
        elbos.append(-svi.step(q_values, states, eps))
    thetas.append(theta.detach().clone())
    return thetas, elbos


def residual_temperature(mdp: TabularMDP, scale: float = 1.0) -> Callable[[Tensor], float]:
    """ε(Q) = scale · ‖T*Q − Q‖_∞: a temperature that vanishes exactly when Q is optimal.

    The ε_ω of VIREL is a Bellman residual; this uses the optimality operator T*, which the Boltzmann
    posterior's own operator approaches as ε → 0 (Lemma 1), so ε anneals itself as EM converges.
    """
    return lambda q: scale * float((bellman_optimality(mdp, q) - q).abs().max())


def complete_em(
    mdp: TabularMDP,
    eps: float | Callable[[Tensor], float],
    policy: Tensor | None = None,
    max_iters: int = 200,
    tol: float = 1e-12,
) -> Iterates:
    """Variational EM with complete steps (VIREL App. F.5), starting from ``policy`` (default uniform).

    M-step: Q_ω ← Q^{π_k} exactly (the Bellman residual of the critic is driven to zero).
    E-step: π_{k+1} ← p(a|s, O; ω) = softmax(Q_ω/ε), the exact posterior by enumeration.
    ``eps`` is a fixed temperature (0 means the greedy limit) or a function of Q_ω such as
    ``residual_temperature``. Stops when the M-step no longer changes Q (sup norm below ``tol``) or after
    ``max_iters`` E-steps; a fixed ε > 0 converges to a soft fixed point π = softmax(Q^π/ε), not to π*.
    """
    out = Iterates([policy if policy is not None else uniform_policy(mdp)], [])
    out.q_values.append(policy_evaluation(mdp, out.policies[0]))  # M-step for π_0
    for _ in range(max_iters):
        q = out.q_values[-1]
        eps_k = eps(q) if callable(eps) else eps
        out.temperatures.append(eps_k)
        out.policies.append(action_posterior(q, eps_k))  # E-step
        out.q_values.append(policy_evaluation(mdp, out.policies[-1]))  # M-step
        if (out.q_values[-1] - q).abs().max() < tol:
            break
    return out

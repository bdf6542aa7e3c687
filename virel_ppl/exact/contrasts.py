"""The frameworks VIREL is contrasted with, solved exactly: pseudo-likelihood EM and MERLIN soft VI.

Both weight whole trajectories by exp(return/η), i.e. they maximise an exponential utility, which is
risk-seeking for small η. VIREL only exponentiates the *expected* return Q, so it stays risk-neutral.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from virel_ppl.exact.mdp import Iterates, TabularMDP, policy_evaluation, uniform_policy


def log_exp_utility(mdp: TabularMDP, policy: Tensor, eta: float, horizon: int | None = None) -> Tensor:
    """log E[exp(G/η) | s_0 = s, a_0 = a] with G = Σ_t γ^t r_t, following ``policy`` after the first step.

    The discount makes the weight of step t exp(γ^t r_t/η), so the recursion runs backwards in time:
    Ψ_t(s, a) = exp(γ^t R(s, a)/η) E_{s'} E_{a'~π} Ψ_{t+1}(s', a'), Ψ_horizon = 1. ``horizon`` defaults to
    where the truncation error γ^t max|r| / ((1-γ)η) drops below 1e-14.
    """
    r_max = float(mdp.R.abs().max())
    if horizon is None:
        horizon = max(1, math.ceil(math.log(1e-14 * (1 - mdp.gamma) * eta / max(r_max, 1e-300), mdp.gamma)))
    discounts = mdp.gamma ** torch.arange(horizon, dtype=torch.float64)
    weights = torch.exp(discounts[:, None, None] * mdp.R / eta)
    psi, log_scale = torch.ones_like(mdp.R), 0.0
    for t in reversed(range(horizon)):
        psi = weights[t] * (mdp.P @ (policy * psi).sum(-1))
        # Ψ grows like exp(return/η): keep it O(1) and carry the scale in log space
        scale = psi.max()
        psi, log_scale = psi / scale, log_scale + math.log(scale)
    return psi.log() + log_scale


def pseudo_likelihood_em(
    mdp: TabularMDP, eta: float, policy: Tensor | None = None, max_iters: int = 500, tol: float = 1e-10
) -> Iterates:
    """Reward-weighted (pseudo-likelihood) EM with exponentiated returns, complete steps, per state.

    E-step: q(a|s) ∝ π_k(a|s) E_{π_k}[exp(G/η) | s, a]  (the trajectory posterior's action marginal);
    M-step: π_{k+1} = q  (minimises KL(q ‖ π), the moment-matching direction).
    ``q_values`` records the ordinary Q^{π_k}, so one can see what the policy earns in expectation.
    """
    pi = policy if policy is not None else uniform_policy(mdp)
    out = Iterates([pi], [policy_evaluation(mdp, pi)])
    for _ in range(max_iters):
        logits = pi.log() + log_exp_utility(mdp, pi, eta)
        new_pi = torch.softmax(logits, dim=-1)
        out.policies.append(new_pi)
        out.q_values.append(policy_evaluation(mdp, new_pi))
        if (new_pi - pi).abs().max() < tol:
            break
        pi = new_pi
    return out


def soft_value_iteration(
    mdp: TabularMDP, eta: float, optimistic: bool = True, tol: float = 1e-12, max_iters: int = 100_000
) -> Tensor:
    """Soft Q-values at temperature η.

    V(s) = η log Σ_a exp(Q(s, a)/η) (soft max over actions), and the backup over next states is
      optimistic=True  (MERLIN, exact trajectory posterior): Q = r + γ η log E_{s'} exp(V(s')/η)
      optimistic=False (max-ent RL under the true dynamics, soft Q-learning / SAC): Q = r + γ E_{s'} V(s').
    The two agree when transitions are deterministic (lecture notes, "Backward Messages"). Iterates until
    the contraction bound guarantees ‖Q - Q_soft‖_∞ ≤ ``tol``.
    """
    log_p = mdp.P.log()
    q = torch.zeros_like(mdp.R)
    for _ in range(max_iters):
        v = eta * torch.logsumexp(q / eta, dim=-1)
        if optimistic:
            backup = eta * torch.logsumexp(log_p + v / eta, dim=-1)
        else:
            backup = mdp.P @ v
        q_next = mdp.R + mdp.gamma * backup
        if (q_next - q).abs().max() * mdp.gamma / (1 - mdp.gamma) <= tol:  # both backups are γ-contractions
            return q_next
        q = q_next
    raise RuntimeError(f"soft value iteration did not converge in {max_iters} iterations")


def soft_policy(q_soft: Tensor, eta: float) -> Tensor:
    """π(a|s) = exp((Q(s, a) − V(s))/η), the policy that goes with soft Q-values."""
    return torch.softmax(q_soft / eta, dim=-1)

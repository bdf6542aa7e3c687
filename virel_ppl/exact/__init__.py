"""Exact inference on small MDPs: VIREL's claims checked by enumeration, next to the frameworks it criticises.

- ``mdp``: tabular MDPs with known solutions (chain, gridworld, risky lottery) and exact dynamic programming.
- ``virel``: the one-step VIREL model solved with Pyro's enumeration; the SVI E-step; EM with complete steps.
- ``contrasts``: pseudo-likelihood (reward-weighted) EM and MERLIN soft value iteration, both exact.
"""

from virel_ppl.exact.contrasts import log_exp_utility, pseudo_likelihood_em, soft_policy, soft_value_iteration
from virel_ppl.exact.mdp import (
    Iterates,
    TabularMDP,
    bellman_optimality,
    chain_mdp,
    expected_return,
    greedy,
    gridworld_mdp,
    policy_evaluation,
    policy_iteration,
    risky_mdp,
    uniform_policy,
    value_iteration,
)
from virel_ppl.exact.virel import (
    action_posterior,
    complete_em,
    elbo,
    expected_kl,
    fit_policy,
    log_evidence,
    posterior_mode,
    residual_temperature,
    tabular_guide,
    virel_model,
)

__all__ = [
    "Iterates",
    "TabularMDP",
    "action_posterior",
    "bellman_optimality",
    "chain_mdp",
    "complete_em",
    "elbo",
    "expected_kl",
    "expected_return",
    "fit_policy",
    "greedy",
    "gridworld_mdp",
    "log_evidence",
    "log_exp_utility",
    "policy_evaluation",
    "policy_iteration",
    "posterior_mode",
    "pseudo_likelihood_em",
    "residual_temperature",
    "risky_mdp",
    "soft_policy",
    "soft_value_iteration",
    "tabular_guide",
    "uniform_policy",
    "value_iteration",
    "virel_model",
]

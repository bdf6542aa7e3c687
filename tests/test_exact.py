"""Each claim of docs/theory.md as an exact check on a small MDP (float64, tolerances stated per test)."""

import math

import pytest
import torch

from virel_ppl.exact import (
    Iterates,
    action_posterior,
    chain_mdp,
    complete_em,
    elbo,
    expected_kl,
    expected_return,
    fit_policy,
    greedy,
    gridworld_mdp,
    log_evidence,
    log_exp_utility,
    policy_iteration,
    posterior_mode,
    pseudo_likelihood_em,
    residual_temperature,
    risky_mdp,
    soft_policy,
    soft_value_iteration,
    uniform_policy,
    value_iteration,
)

torch.set_num_threads(1)
START, SAFE, RISKY = 0, 0, 1  # risky_mdp: state 0 is the decision, action 0 safe, action 1 risky


def optimal_return(mdp):
    return expected_return(mdp, greedy(value_iteration(mdp)))


# ground truth


def test_dynamic_programming_matches_closed_forms():
    chain = chain_mdp(n=5, gamma=0.9, r_back=0.2, r_end=1.0)
    v_chain = value_iteration(chain).max(-1).values
    expected = torch.tensor([0.9 ** (4 - i) / 0.1 for i in range(5)], dtype=torch.float64)
    torch.testing.assert_close(v_chain, expected, atol=1e-9, rtol=0)

    grid = gridworld_mdp(width=4, height=3, gamma=0.9)
    manhattan = torch.tensor([(2 - r) + (3 - c) for r in range(3) for c in range(4)], dtype=torch.float64)
    torch.testing.assert_close(value_iteration(grid).max(-1).values, 0.9**manhattan / 0.1, atol=1e-9, rtol=0)

    q_risky = value_iteration(risky_mdp())
    assert abs(q_risky[START, SAFE] - 2.0) < 1e-12 and abs(q_risky[START, RISKY] - 0.9) < 1e-12

    for mdp in (chain, grid, gridworld_mdp(5, 5, slip=0.1), risky_mdp()):
        q_pi = policy_iteration(mdp).q_values[-1]
        torch.testing.assert_close(q_pi, value_iteration(mdp), atol=1e-9, rtol=0)


# the exact VIREL posterior (Table 1) by Pyro enumeration


@pytest.mark.parametrize("eps", [0.1, 1.0])
def test_posterior_by_enumeration_is_boltzmann(eps):
    q = torch.cat([value_iteration(gridworld_mdp(4, 4, slip=0.1)), torch.randn(3, 4, dtype=torch.float64)])
    torch.testing.assert_close(action_posterior(q, eps), torch.softmax(q / eps, -1), atol=1e-12, rtol=0)

    states = torch.tensor([0, 0, 3, 7, 7, 7, 18])  # a batch from a non-uniform d(s)
    closed_form = (torch.logsumexp(q[states] / eps, -1) - math.log(4)).mean()
    assert abs(log_evidence(q, states, eps) - float(closed_form)) < 1e-10


def test_posterior_mode_is_greedy_action():
    q = value_iteration(chain_mdp())  # unique optimal action in every state
    assert torch.equal(posterior_mode(q), q.argmax(-1))
    assert torch.equal(posterior_mode(q, eps=0.01), torch.ones(5, dtype=torch.long))  # forward everywhere


# Theorem 3: maximising the ELBO over θ is minimising E_d KL(π_θ ‖ π_ω)


def _theorem3_problem(eps):
    mdp = gridworld_mdp(5, 5, slip=0.1)
    states = torch.arange(mdp.n_states).repeat_interleave(torch.arange(mdp.n_states) % 3 + 1)
    return value_iteration(mdp), states, eps


# several ε: at ε = 1 alone, Q/ε and Q·ε would look the same
@pytest.mark.parametrize("eps", [0.3, 1.0, 3.0])
def test_elbo_is_log_evidence_minus_expected_kl(eps):
    q, states, eps = _theorem3_problem(eps)
    # log Z by hand: E_d log (1/A) Σ_a exp(Q(s, a)/ε)
    hand_log_z = (torch.logsumexp(q[states] / eps, -1) - math.log(q.shape[-1])).mean().item()
    assert abs(log_evidence(q, states, eps) - hand_log_z) < 1e-10
    log_z = log_evidence(q, states, eps)
    generator = torch.Generator().manual_seed(0)
    thetas = [torch.zeros_like(q), q / eps] + [
        3 * torch.randn(q.shape, generator=generator, dtype=torch.float64) for _ in range(4)
    ]
    elbos = [elbo(q, states, eps, theta) for theta in thetas]
    kls = [expected_kl(q, states, eps, theta) for theta in thetas]
    for value, kl in zip(elbos, kls, strict=True):
        assert abs(value - (log_z - kl)) < 1e-10
    assert kls[1] < 1e-12 and abs(elbos[1] - log_z) < 1e-10  # θ = Q/ε is the posterior: the bound is tight
    assert min(kls[2:]) > 0.1  # ... and the others are not, so the identity is not trivially 0 = 0


@pytest.mark.parametrize("eps, final_kl", [(0.3, 2e-3), (1.0, 1e-6)])  # a sharper posterior takes longer
def test_svi_e_step_maximises_elbo_by_minimising_kl(eps, final_kl):
    q, states, eps = _theorem3_problem(eps)
    thetas, elbos = fit_policy(q, states, eps, steps=150, lr=0.3)
    kls = [expected_kl(q, states, eps, theta) for theta in thetas]
    log_z = log_evidence(q, states, eps)
    path_error = max(abs(e - (log_z - k)) for e, k in zip(elbos, kls[:-1], strict=True))
    assert path_error < 1e-10  # the identity holds along the whole SVI path
    assert kls[0] > 0.1 and kls[-1] < final_kl
    assert log_z - elbos[-1] < final_kl


# App. F.5: EM with complete steps is policy iteration


@pytest.mark.parametrize(
    "mdp", [chain_mdp(), gridworld_mdp(5, 5, slip=0.1), risky_mdp()], ids=["chain", "grid-slip", "risky"]
)
def test_complete_em_reproduces_policy_iteration(mdp):
    pi = _howard(mdp)  # written out below, sharing no code with exact/ (greedy, policy_evaluation)
    greedy_em = complete_em(mdp, eps=0.0)
    assert len(greedy_em.policies) == len(pi.policies)
    for a, b, q in zip(greedy_em.policies, pi.policies, [None, *pi.q_values], strict=False):
        # where two actions tie (up to rounding) either is greedy: compare the states with a clear argmax
        clear = torch.ones(len(a), dtype=torch.bool) if q is None else (q.topk(2).values.diff().abs() > 1e-9)[:, 0]
        assert torch.equal(a[clear], b[clear])
    for a, b in zip(greedy_em.q_values, pi.q_values, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    assert len(policy_iteration(mdp).policies) == len(pi.policies)

    # the Pyro posterior at a small temperature follows the same iterates (values; ties split the mass)
    soft_em = complete_em(mdp, eps=1e-6)
    assert len(soft_em.q_values) == len(pi.q_values)
    for a, b in zip(soft_em.q_values, pi.q_values, strict=True):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=0)
    assert abs(expected_return(mdp, soft_em.policies[-1]) - optimal_return(mdp)) < 1e-8


def _howard(mdp):
    """Policy iteration from the uniform policy, by hand: Q^π from V = (I − γP_π)⁻¹ r_π, then argmax with ties
    to the first action; stop when Q^π no longer changes."""
    S, A = mdp.R.shape
    policies, q_values = [torch.full((S, A), 1.0 / A, dtype=torch.float64)], []
    while True:
        pi = policies[-1]
        P_pi = (pi[:, :, None] * mdp.P).sum(1)
        v = torch.linalg.solve(torch.eye(S, dtype=torch.float64) - mdp.gamma * P_pi, (pi * mdp.R).sum(1))
        q_values.append(mdp.R + mdp.gamma * (mdp.P * v).sum(-1))
        if len(q_values) > 1 and (q_values[-1] - q_values[-2]).abs().max() < 1e-12:
            return Iterates(policies, q_values)
        best = torch.zeros(S, A, dtype=torch.float64)
        for s in range(S):
            best[s, max(range(A), key=lambda a: (q_values[-1][s, a].item(), -a))] = 1.0
        policies.append(best)


def test_complete_em_with_residual_temperature_reaches_optimum():
    mdp = gridworld_mdp(5, 5, slip=0.1)
    em = complete_em(mdp, residual_temperature(mdp, scale=1.0))
    assert em.temperatures[0] > 1.0 and em.temperatures[-1] < 1e-8  # starts soft, anneals itself to greedy
    torch.testing.assert_close(em.q_values[-1], value_iteration(mdp), atol=1e-9, rtol=0)


# Lemma 1: as ε → 0 the posterior becomes greedy


@pytest.mark.parametrize(
    "mdp",
    [chain_mdp(), gridworld_mdp(4, 4), gridworld_mdp(5, 5, slip=0.1)],
    ids=["chain", "grid", "grid-slip"],
)
def test_posterior_becomes_greedy_as_eps_vanishes(mdp):
    q = value_iteration(mdp)
    top = q.max(-1, keepdim=True).values
    optimal = (top - q) < 1e-9  # the argmax set (gridworlds have ties)
    gap = torch.where(optimal, torch.inf, top - q).min(-1).values
    masses = []
    for eps in [gap.min().item() * f for f in torch.logspace(1, -2, 7).tolist()]:
        off_greedy = (action_posterior(q, eps) * ~optimal).sum(-1)
        bound = (~optimal).sum(-1) * torch.exp(-gap / eps)  # Σ_{a ∉ argmax} exp(-(Q* - Q)/ε) ≤ this
        assert torch.all(off_greedy <= bound * (1 + 1e-12))
        masses.append(off_greedy.max().item())
    assert masses[0] > 0.05 and masses[-1] < 1e-40  # soft at ε = 10Δ, greedy at ε = Δ/100
    assert all(a > b for a, b in zip(masses, masses[1:], strict=False))


# contrasts on the risky MDP: VIREL is risk-neutral, pseudo-likelihood and MERLIN are not


def test_exp_utility_matches_closed_form():
    mdp = risky_mdp()
    for eta in (0.5, 1.0, 10.0):
        log_psi = log_exp_utility(mdp, uniform_policy(mdp), eta)[START]
        assert abs(log_psi[SAFE] - 2.0 / eta) < 1e-12
        assert abs(log_psi[RISKY] - math.log(0.1 * math.exp(9.0 / eta) + 0.9)) < 1e-12


def test_pseudo_likelihood_em_prefers_the_risky_action():
    mdp = risky_mdp()
    pl = pseudo_likelihood_em(mdp, eta=1.0)
    assert pl.policies[-1][START, RISKY] > 1 - 1e-9
    assert abs(expected_return(mdp, pl.policies[-1]) - 0.9) < 1e-6  # vs J* = 2
    # only an exponential utility with a small η is risk-seeking: at η = 10 it turns to the safe action
    pl_hot = pseudo_likelihood_em(mdp, eta=10.0, max_iters=100)
    assert pl_hot.policies[-1][START, SAFE] > 0.99


def test_merlin_soft_value_iteration_is_optimistic_and_temperature_dependent():
    mdp = risky_mdp()
    for eta in (0.5, 1.0, 10.0):
        q_merlin = soft_value_iteration(mdp, eta, optimistic=True)
        q_soft = soft_value_iteration(mdp, eta, optimistic=False)
        # closed forms: a soft max over next states, vs the expectation (the entropy terms cancel)
        lottery = 0.9 * eta * math.log(0.1 * math.exp(10.0 / eta) + 0.9)
        assert abs((q_merlin[START, RISKY] - q_merlin[START, SAFE]) - (lottery - 2.0)) < 1e-9
        assert abs((q_soft[START, RISKY] - q_soft[START, SAFE]) - (0.9 - 2.0)) < 1e-9
        assert q_merlin[START, RISKY] > q_soft[START, RISKY] + 0.05  # optimism (Jensen gap)
    assert soft_value_iteration(mdp, 1.0)[START].argmax() == RISKY
    assert soft_value_iteration(mdp, 10.0)[START].argmax() == SAFE
    assert soft_policy(soft_value_iteration(mdp, 0.5), 0.5)[START, RISKY] > 0.99

    # with deterministic transitions the soft max over next states is exact: no optimism
    grid = gridworld_mdp(4, 4)
    for eta in (0.3, 3.0):
        torch.testing.assert_close(
            soft_value_iteration(grid, eta, optimistic=True),
            soft_value_iteration(grid, eta, optimistic=False),
            atol=1e-9,
            rtol=0,
        )


def test_virel_recovers_the_risk_neutral_optimum():
    mdp = risky_mdp()
    for eps in (0.1, 1.0, 10.0, 100.0):
        fixed_point = complete_em(mdp, eps).policies[-1]
        assert fixed_point[START, RISKY] < 0.5
        assert abs(fixed_point[START, RISKY] - 1 / (1 + math.exp(1.1 / eps))) < 1e-12  # softmax(Q*/ε)
    greedy_em = complete_em(mdp, residual_temperature(mdp))
    assert abs(expected_return(mdp, greedy_em.policies[-1]) - 2.0) < 1e-12
    assert greedy_em.policies[-1][START, SAFE] == 1.0

"""Known answers for every mathematical term of the update, each worked out independently of the code under test:
numbers by hand in the comments, or a closed form computed here from first principles (never by calling the
function under test). ``benchmarks/mutations.py`` runs this file against mutants of the library.
"""

import copy
import math

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.distributions import constraints

from virel_ppl.agent import VirelAgent
from virel_ppl.config import Config
from virel_ppl.exact import action_posterior, chain_mdp, complete_em, elbo, log_evidence, policy_evaluation
from virel_ppl.exact.mdp import TabularMDP
from virel_ppl.inference.actions import ActionBox
from virel_ppl.inference.critics import Critic, bellman_target
from virel_ppl.inference.em import Batch, beta_epsilon, e_step, hard_value_target, m_step, soft_value_target
from virel_ppl.inference.guides import PolicyGuide
from virel_ppl.inference.models import virel_model
from virel_ppl.variants import HardSoftCritic, NonparametricMPO, policy_kl

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)  # 0.918939


def _set_constant(net: nn.Sequential, value: float) -> None:
    """Make an MLP output the constant ``value`` (last layer: zero weights, bias = value)."""
    with torch.no_grad():
        net[-1].weight.zero_()
        net[-1].bias.fill_(value)


def _constant_critic(q1=1.0, q2=2.0, v=3.0, v_target=5.0, cls=Critic) -> Critic:
    critic = cls(3, 1, hidden=(4,))
    for net, value in ((critic.q1, q1), (critic.q2, q2), (critic.v, v), (critic.v_target, v_target)):
        _set_constant(net, value)
    return critic


class FreeGaussian(PolicyGuide):
    """π_θ(a|s) = Normal(μ, σ) in one dimension, the same for every state, with free parameters μ and log σ."""

    def __init__(self, loc: float, scale: float) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.tensor([loc]))
        self.log_scale = nn.Parameter(torch.tensor([math.log(scale)]))

    def distribution(self, states):
        return dist.Normal(self.loc, self.log_scale.exp()).expand([states.shape[0], 1]).to_event(1)


# A hand-made batch: transition 1 ends the episode (terminated), transition 3 is cut by a time limit (truncated:
# not terminated, so it bootstraps). γ = 0.9, V̄(s') = 5 everywhere.
REWARDS = torch.tensor([1.0, -2.0, 0.5, 3.0])
TERMINATED = torch.tensor([0.0, 1.0, 0.0, 0.0])
GAMMA = 0.9
# r + γ(1 − terminated)·5 = [1 + 4.5, −2 + 0, 0.5 + 4.5, 3 + 4.5]
TARGET = [5.5, -2.0, 5.0, 7.5]
# Q1 ≡ 1: δ = [−4.5, 3, −4, −6.5], E[δ²] = (20.25 + 9 + 16 + 42.25)/4 = 21.875
# Q2 ≡ 2: δ = [−3.5, 4, −3, −5.5], E[δ²] = (12.25 + 16 + 9 + 30.25)/4 = 16.875
TD_MSE = 0.5 * (21.875 + 16.875)  # 19.375, the twins' mean of E[δ²]


def _batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(torch.randn(4, 3, generator=g), torch.zeros(4, 1), REWARDS, torch.randn(4, 3, generator=g), TERMINATED)


# --- the Bellman target and the M-step's residual ---------------------------------------------------------------


def test_bellman_target_by_hand_with_terminated_and_truncated_transitions():
    target = bellman_target(REWARDS, TERMINATED, torch.full((4,), 5.0), GAMMA)
    assert target.tolist() == pytest.approx(TARGET)
    # a different V̄(s') per transition: r + 0.9 (1 − d) V̄ = [1 + 9, −2, 0.5 − 3.6, 3 + 1.8]
    target = bellman_target(REWARDS, TERMINATED, torch.tensor([10.0, 20.0, -4.0, 2.0]), GAMMA)
    assert target.tolist() == pytest.approx([10.0, -2.0, -3.1, 4.8])


def test_m_step_td_mse_q_loss_and_v_loss_by_hand():
    critic = _constant_critic(q1=1.0, q2=2.0, v=3.0, v_target=5.0)
    policy = FreeGaussian(0.0, 0.1)  # log π far from 0, so a soft value target would show
    stats = m_step(critic, torch.optim.SGD(critic.trainable_parameters(), lr=0.0), _batch(), policy, GAMMA)
    assert float(stats["critic/td_mse"]) == pytest.approx(TD_MSE)
    assert float(stats["critic/q_loss"]) == pytest.approx(0.5 * 21.875 + 0.5 * 16.875)  # J_Q1 + J_Q2
    # the hard value target is E_π[min(Q1, Q2)] = 1 whatever the action: J_V = ½ (3 − 1)² = 2
    assert float(stats["critic/v_loss"]) == pytest.approx(2.0)
    assert float(stats["critic/q_mean"]) == pytest.approx(1.0)


def test_m_step_gradient_moves_each_network_towards_its_own_target():
    """One SGD step with lr 1 on constant networks moves each output bias by −∂J/∂b: Q_i by E[target − Q_i],
    V by E[target_V − V] (hand numbers of the batch above), and leaves V̄ alone."""
    critic = _constant_critic(q1=1.0, q2=2.0, v=3.0, v_target=5.0)
    m_step(critic, torch.optim.SGD(critic.trainable_parameters(), lr=1.0), _batch(), FreeGaussian(0.0, 0.1), GAMMA)
    mean_target = sum(TARGET) / 4  # 4.0
    assert critic.q1[-1].bias.item() == pytest.approx(1.0 + (mean_target - 1.0))
    assert critic.q2[-1].bias.item() == pytest.approx(2.0 + (mean_target - 2.0))
    assert critic.v[-1].bias.item() == pytest.approx(3.0 + (1.0 - 3.0))
    assert critic.v_target[-1].bias.item() == 5.0


def test_virel2_m_step_uses_each_values_own_target_by_hand():
    critic = _constant_critic(q1=1.0, q2=2.0, v=3.0, v_target=5.0, cls=HardSoftCritic)
    _set_constant(critic.v_soft_target, 10.0)
    _set_constant(critic.v_soft, 0.0)
    from virel_ppl.variants import hard_soft_value_target

    batch = _batch()
    stats = m_step(
        critic,
        torch.optim.SGD(critic.trainable_parameters(), lr=0.0),
        batch,
        FreeGaussian(0.0, 1.0),
        GAMMA,
        hard_soft_value_target(0.0),
    )
    # Q1 on r + 0.9(1 − d)·5 = [5.5, −2, 5, 7.5]; Q2 on r + 0.9(1 − d)·10 = [10, −2, 9.5, 12]
    # E[(1 − t1)²] = 21.875; E[(2 − t2)²] = (64 + 16 + 56.25 + 100)/4 = 59.0625
    assert float(stats["critic/q_loss"]) == pytest.approx(0.5 * (21.875 + 59.0625))
    # α = 0: V_hard on Q1 = 1 and V_soft on Q2 = 2: ½ mean([(3 − 1)², (0 − 2)²]) = 2
    assert float(stats["critic/v_loss"]) == pytest.approx(2.0)


# --- value targets against closed forms ---------------------------------------------------------------------------


class QuadraticCritic(nn.Module):
    """Q(s, a) = s·u − w (a − c)² in one action dimension."""

    def __init__(self, w: float, c: float) -> None:
        super().__init__()
        self.w, self.c = nn.Parameter(torch.tensor(w)), nn.Parameter(torch.tensor(c))
        self.u = nn.Parameter(torch.tensor([0.5, -1.0, 0.25]))

    def q(self, states, actions):
        return states @ self.u - self.w * (actions[..., 0] - self.c) ** 2


def test_hard_and_soft_value_targets_match_gaussian_closed_forms():
    """π = N(μ, σ), Q = s·u − w(a − c)²: E_π[Q] = s·u − w((μ − c)² + σ²), and the soft target adds α·H(π)
    with H = ½ log(2πe σ²). Averaged over 200k copies of one state (Monte-Carlo error ≈ 0.003)."""
    mu, sigma, w, c, alpha = 0.3, 0.4, 2.0, -0.2, 0.7
    critic, policy = QuadraticCritic(w, c), FreeGaussian(mu, sigma)
    states = torch.tensor([[1.0, 0.5, -2.0]]).expand(200_000, 3)
    su = 1.0 * 0.5 + 0.5 * -1.0 + -2.0 * 0.25  # −0.5
    expected_q = su - w * ((mu - c) ** 2 + sigma**2)  # −0.5 − 2(0.25 + 0.16) = −1.32
    entropy = 0.5 * math.log(2 * math.pi * math.e * sigma**2)  # 0.50270
    with torch.no_grad():
        hard = hard_value_target(critic, policy, states)
        soft = soft_value_target(alpha)(critic, policy, states)
        soft_callable = soft_value_target(lambda: torch.tensor(alpha))(critic, policy, states)
    assert hard.mean().item() == pytest.approx(expected_q, abs=0.01)
    assert soft.mean().item() == pytest.approx(expected_q + alpha * entropy, abs=0.01)
    assert soft_callable.mean().item() == pytest.approx(expected_q + alpha * entropy, abs=0.01)


def test_hard_value_target_is_the_q_of_the_sampled_action_exactly():
    """With a constant Q the hard target is that constant for every sample (no entropy term)."""
    critic = _constant_critic(q1=4.0, q2=-1.5)
    states = torch.randn(64, 3)
    assert torch.equal(hard_value_target(critic, FreeGaussian(0.0, 0.05), states), torch.full((64,), -1.5))


def test_virel_presets_use_the_hard_target_and_sac_the_soft_one():
    box = ActionBox([-1.0], [1.0])

    def target(algo):
        return VirelAgent(3, box, Config(algo=algo, hidden=(4,))).variant.value_target

    assert target("virel") is target("beta") is target("mpo") is hard_value_target
    assert target("sac").__qualname__.startswith("soft_value_target.")


# --- the target network -----------------------------------------------------------------------------------------


def test_polyak_update_with_exact_numbers():
    critic = HardSoftCritic(3, 1, hidden=(2,))
    with torch.no_grad():
        for net, value in (
            (critic.v, 12.0),
            (critic.v_target, 2.0),
            (critic.v_soft, -4.0),
            (critic.v_soft_target, 0.0),
        ):
            for p in net.parameters():
                p.fill_(value)
    critic.update_target(0.25)
    # ψ̄ ← (1 − τ) ψ̄ + τ ψ = 0.75·2 + 0.25·12 = 4.5, and 0.75·0 + 0.25·(−4) = −1
    assert all(torch.all(p == 4.5) for p in critic.v_target.parameters())
    assert all(torch.all(p == -1.0) for p in critic.v_soft_target.parameters())
    assert all(torch.all(p == 12.0) for p in critic.v.parameters())  # the online network is untouched
    critic.update_target(1.0)  # τ = 1 is a hard copy
    assert all(torch.all(p == 12.0) for p in critic.v_target.parameters())


# --- the E-step's ε/N scaling -------------------------------------------------------------------------------------


class RecordingQuadratic(nn.Module):
    """Q(a) = −w (a − c)², recording the actions it is asked about."""

    def __init__(self, w: float, c: float) -> None:
        super().__init__()
        self.w, self.c = nn.Parameter(torch.tensor(w)), nn.Parameter(torch.tensor(c))
        self.seen: list[torch.Tensor] = []

    def q(self, states, actions):
        self.seen.append(actions.detach().clone())
        return -self.w * (actions[..., 0] - self.c) ** 2


def test_e_step_gradient_is_eps_over_n_times_the_elbo_gradient():
    """One SGD step (lr 1) of the E-step on π = N(μ, σ), Q = −w(a − c)², uniform prior on [−2, 2].

    With a = μ + σz the single-sample ELBO is Σ_i [Q(a_i)/ε + ½z_i² + log σ + ½ log 2π − log 4]; the E-step
    minimises L = −(ε/N)·ELBO, so by hand
        ∂L/∂μ     = (2w/N) Σ_i (a_i − c),
        ∂L/∂log σ = (2w/N) Σ_i (a_i − c)(a_i − μ) − ε.
    (With a 1/N scale the first would be 1/ε = 4 times larger.)"""
    mu, sigma, w, c, eps, n = 0.2, 0.5, 1.5, 0.6, 0.25, 16
    box = ActionBox([-2.0], [2.0])
    critic, policy = RecordingQuadratic(w, c), FreeGaussian(mu, sigma)
    svi = SVI(virel_model, policy.guide, pyro.optim.SGD({"lr": 1.0}), Trace_ELBO(max_plate_nesting=1))
    loss = e_step(svi, critic, torch.zeros(n, 3), eps=eps, q=critic.q, prior=lambda s: box.uniform())
    (a,) = [x[:, 0].double() for x in critic.seen]  # the one particle the ELBO was estimated with
    grad_mu = 2 * w / n * (a - c).sum().item()
    grad_log_sigma = 2 * w / n * ((a - c) * (a - mu)).sum().item() - eps
    assert policy.loc.item() == pytest.approx(mu - grad_mu, abs=1e-5)
    assert policy.log_scale.item() == pytest.approx(math.log(sigma) - grad_log_sigma, abs=1e-5)
    z = (a - mu) / sigma
    elbo_sample = (-w * (a - c) ** 2 / eps + 0.5 * z**2 + math.log(sigma) + LOG_SQRT_2PI - math.log(4.0)).sum()
    assert float(loss) == pytest.approx(-eps / n * elbo_sample.item(), rel=1e-5)


# --- the beta rule ----------------------------------------------------------------------------------------------


def test_beta_rule_from_a_known_residual_by_hand():
    # λ = (1 − γ)/mean|r| = 0.1/1.625; ε = λ·19.375 = 1.1923077
    assert beta_epsilon(GAMMA)(torch.tensor(TD_MSE), REWARDS).item() == pytest.approx(0.1 / 1.625 * 19.375)
    assert beta_epsilon(GAMMA, scale=4e-3)(torch.tensor(TD_MSE), REWARDS).item() == pytest.approx(4e-3 * 19.375)
    assert Config(env="Humanoid-v5").resolved_beta_scale() == 4e-4  # App. I's table
    assert Config(env="HalfCheetah-v5").resolved_beta_scale() is None  # the formula


def test_beta_agent_sets_eps_from_the_residual_before_its_m_step():
    """The whole update of ``--algo beta``: ε = (1 − γ)/mean|r| · E[δ²] of the batch, before the critic moves."""
    agent = VirelAgent(3, ActionBox([-1.0], [1.0]), Config(algo="beta", hidden=(4,), gamma=GAMMA, alpha=1.0))
    for net, value in ((agent.critic.q1, 1.0), (agent.critic.q2, 2.0), (agent.critic.v, 3.0)):
        _set_constant(net, value)
    _set_constant(agent.critic.v_target, 5.0)
    stats = agent.update(_batch())
    assert float(stats["eps"]) == pytest.approx(0.1 / 1.625 * TD_MSE, rel=1e-5)
    assert float(stats["critic/td_mse"]) == pytest.approx(TD_MSE, rel=1e-5)


# --- classic MPO: weights, η dual, KL direction, λ step by hand -------------------------------------------------


class Atoms(dist.TorchDistribution):
    """A π_old whose 'samples' are fixed atoms a_j (one per slot of the ``actions`` plate, the same in every state),
    and whose log-density is that of N(loc, scale): the E-step's actions are then known numbers."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, atoms: torch.Tensor, loc: float, scale: float, batch_shape=torch.Size()) -> None:
        self.atoms, self.loc, self.scale = atoms, loc, scale
        super().__init__(torch.Size(batch_shape), torch.Size([1]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return Atoms(self.atoms, self.loc, self.scale, batch_shape)

    def sample(self, sample_shape=torch.Size()):
        m, n = self.batch_shape
        return self.atoms[:, None, None].expand(m, n, 1)

    def log_prob(self, value):
        return dist.Normal(self.loc, self.scale).log_prob(value).sum(-1)


def _mpo_by_hand():
    """Atoms a = (0, 1), Q(a) = 2 ln3 · a, η = 2: exp(Q/η) = (1, 3), so the samples' weights are (1/4, 3/4).
    π_θ = N(0, 1): log π_θ(a) = (−c, −½ − c), c = ½ log 2π. π_old = N(½, ½): log π_old(a) = ln 2 − ½ − c at both."""
    states = torch.zeros(3, 3)
    prior = Atoms(torch.tensor([0.0, 1.0]), 0.5, 0.5)
    q = lambda s, a: 2 * math.log(3) * a[..., 0] + 0 * s.sum(-1)  # noqa: E731
    return states, (lambda s: prior.expand([s.shape[0]])), q


def test_mpo_np_loss_weights_and_kl_by_hand():
    states, prior, q = _mpo_by_hand()
    policy = FreeGaussian(0.0, 1.0)
    mpo = NonparametricMPO(num_actions=2, kl_bound=0.1, eta=2.0, eta_bound=0.1, device="cpu")
    with torch.no_grad():
        mpo.log_lagrange.fill_(math.log(2.0))  # λ = 2
    loss, outputs = mpo(virel_model, policy.guide, states, eps=2.0, q=q, prior=prior)
    weighted_ml = -(0.25 * -LOG_SQRT_2PI + 0.75 * (-0.5 - LOG_SQRT_2PI))  # 1.293939
    # KL(π_old ‖ π_θ) from π_old's samples: mean_j [log π_old(a_j) − log π_θ(a_j)] = mean(ln2 − ½, ln2) = 0.443147
    kl = 0.5 * ((math.log(2) - 0.5) + math.log(2))
    assert loss.item() == pytest.approx(weighted_ml + 2.0 * kl, rel=1e-5)
    assert float(outputs["mpo/lagrange"]) == pytest.approx(2.0)


def test_mpo_np_dual_steps_by_hand():
    """One SGD step (lr 1) on each dual, from the same hand-made weighting.

    λ: ∂/∂log λ [λ(ε_KL − KL)] = 2·(0.1 − 0.443147): log λ rises by 0.686294 (the KL is above its bound).
    η: ∂g/∂log η = η·(ε_η + log mean_j exp(Q_j/η) − Σ_j w_j Q_j/η) = η·(ε_η − KL(w ‖ uniform))
       = 2·(0.1 + ln 2 − ¾ ln 3) = 2·(0.1 − 0.130812): log η rises by 0.061624 (the weights are too peaked)."""
    states, prior, q = _mpo_by_hand()
    mpo = NonparametricMPO(num_actions=2, kl_bound=0.1, eta=2.0, eta_bound=0.1, device="cpu")
    assert mpo.log_lagrange.item() == 0.0 and mpo.log_eta.item() == pytest.approx(math.log(2.0))  # λ = 1, η = eta
    with torch.no_grad():
        mpo.log_lagrange.fill_(math.log(2.0))
    _, outputs = mpo(virel_model, FreeGaussian(0.0, 1.0).guide, states, eps=2.0, q=q, prior=prior)
    outputs["duals"].backward()
    torch.optim.SGD(mpo.parameters(), lr=1.0).step()
    kl = 0.5 * ((math.log(2) - 0.5) + math.log(2))
    assert mpo.log_lagrange.item() == pytest.approx(math.log(2.0) - 2.0 * (0.1 - kl), abs=1e-6)
    kl_weights = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)  # 0.130812
    assert mpo.log_eta.item() == pytest.approx(math.log(2.0) - 2.0 * (0.1 - kl_weights), abs=1e-6)
    assert float(mpo.epsilon_rule(None, None)) == pytest.approx(2.0 * math.exp(2.0 * (kl_weights - 0.1)), rel=1e-6)


def test_policy_kl_is_old_to_new_analytic_and_sampled():
    # KL(N(0,1) ‖ N(1,2)) = ln 2 + (1 + 1)/(2·4) − ½ = 0.443147; the reverse would be −ln 2 + (4 + 1)/2 − ½ = 1.306853
    old = dist.Normal(torch.zeros(2, 3), 1.0)
    new = dist.Normal(torch.ones(2, 3), 2.0)
    assert policy_kl(old, new, torch.zeros(2, 3)).item() == pytest.approx(math.log(2) + 0.25 - 0.5, rel=1e-6)
    # no analytic KL for Atoms: the sampled estimate mean[log π_old(x) − log π_new(x)] on the given x
    atoms = Atoms(torch.tensor([0.0, 1.0]), 0.5, 0.5, (2, 1))
    normal = dist.Normal(torch.zeros(2, 1, 1), 1.0).to_event(1)
    x = atoms.sample()
    assert policy_kl(atoms, normal, x).item() == pytest.approx(0.5 * ((math.log(2) - 0.5) + math.log(2)), rel=1e-5)


# --- repeated M-steps with a fixed policy are policy evaluation -------------------------------------------------


class TableQ(nn.Module):
    """Q(s, a) = W[s, a] on one-hot states and actions (the input is the critic's concatenation [s, a])."""

    def __init__(self, n_states: int, init: torch.Tensor) -> None:
        super().__init__()
        self.n_states, self.W = n_states, nn.Parameter(init.clone())

    def forward(self, h):
        return ((h[..., : self.n_states] @ self.W) * h[..., self.n_states :]).sum(-1, keepdim=True)


class StratifiedPolicy:
    """A fixed stochastic policy whose 'samples' on the batch below come in exact proportions π(a|s), so the
    value target's batch mean is E_π[·] with no Monte-Carlo error; ``log_prob`` is log π(a|s)."""

    def __init__(self, actions: torch.Tensor, log_probs: torch.Tensor) -> None:
        self.actions, self.log_probs = actions, log_probs

    def distribution(self, states):
        return self

    def sample(self):
        return self.actions

    def log_prob(self, actions):
        assert actions is self.actions
        return self.log_probs


def test_repeated_m_steps_with_a_fixed_policy_converge_to_policy_evaluation():
    """Two states, two actions, deterministic: s0 —a0→ s0 (r 1), s0 —a1→ s1 (r 0), s1 —a0→ s0 (r 2),
    s1 —a1→ s1 (r −1); γ = 0.8; π(·|s0) = (¼, ¾), π(·|s1) = (½, ½). The batch holds each (s, a) twice, and
    the policy's actions on the four rows of each state are s0: (a0, a1, a1, a1), s1: (a0, a0, a1, a1).
    Tabular twin Q and V, SGD, τ = 1: the M-steps must reach Q^π of ``exact.policy_evaluation`` (a linear
    solve), which a wrong γ sign, a frozen target network or a soft value target would all miss."""
    P = torch.zeros(2, 2, 2, dtype=torch.float64)
    P[0, 0, 0] = P[0, 1, 1] = P[1, 0, 0] = P[1, 1, 1] = 1.0
    R = torch.tensor([[1.0, 0.0], [2.0, -1.0]], dtype=torch.float64)
    mdp = TabularMDP(P, R, 0.8, torch.tensor([1.0, 0.0], dtype=torch.float64), ("s0", "s1"), ("a0", "a1"))
    pi = torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64)
    q_pi = policy_evaluation(mdp, pi).float()

    eye = torch.eye(2)
    s = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    a = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    next_s = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])  # the deterministic P above
    batch = Batch(eye[s], eye[a], R.float()[s, a], eye[next_s], torch.zeros(8))
    pi_a = torch.tensor([0, 1, 1, 1, 0, 0, 1, 1])
    policy = StratifiedPolicy(eye[pi_a], pi.float().log()[s, pi_a])

    critic = Critic(2, 2, hidden=(2,))
    g = torch.Generator().manual_seed(0)
    critic.q1, critic.q2 = TableQ(2, torch.randn(2, 2, generator=g)), TableQ(2, torch.randn(2, 2, generator=g))
    critic.v = nn.Linear(2, 1, bias=False)
    critic.v_target = copy.deepcopy(critic.v).requires_grad_(False)
    # lr 2: each Q entry moves half-way to its target per step (it holds 2 of 8 rows), V all the way
    optim = torch.optim.SGD(critic.trainable_parameters(), lr=2.0)
    for _ in range(300):
        m_step(critic, optim, batch, policy, mdp.gamma)
        critic.update_target(1.0)
    torch.testing.assert_close(critic.q1.W.detach(), q_pi, atol=1e-4, rtol=0)
    torch.testing.assert_close(critic.q2.W.detach(), q_pi, atol=1e-4, rtol=0)
    v_pi = (pi * policy_evaluation(mdp, pi)).sum(-1).float()
    torch.testing.assert_close(critic.v.weight.detach()[0], v_pi, atol=1e-4, rtol=0)


# --- Theorem 3 at several ε, and Lemma 1, through the exact module ----------------------------------------------


@pytest.mark.parametrize("eps", [0.2, 1.0, 3.0])
def test_theorem3_exact_elbo_equals_a_hand_sum_and_log_z_minus_kl(eps):
    """ELBO(θ) = E_d Σ_a π_θ(a|s)[Q(s, a)/ε − log π_θ(a|s) − log A] and log Z = E_d log (1/A) Σ_a exp(Q/ε),
    both summed here by hand; their difference is E_d KL(π_θ ‖ softmax(Q/ε)), also by hand."""
    q = torch.tensor([[1.0, 0.0, -0.5], [0.3, 0.9, 0.1]], dtype=torch.float64)
    theta = torch.tensor([[0.2, -1.0, 0.4], [1.5, 0.0, -0.3]], dtype=torch.float64)
    states = torch.tensor([0, 1, 1])  # d(s) = (1/3, 2/3)
    pi = theta.softmax(-1)
    hand_elbo = (pi * (q / eps - pi.log() - math.log(3))).sum(-1)[states].mean().item()
    hand_log_z = (torch.log(torch.exp(q / eps).sum(-1) / 3))[states].mean().item()
    posterior = torch.exp(q / eps) / torch.exp(q / eps).sum(-1, keepdim=True)
    hand_kl = (pi * (pi.log() - posterior.log())).sum(-1)[states].mean().item()
    assert elbo(q, states, eps, theta) == pytest.approx(hand_elbo, abs=1e-10)
    assert log_evidence(q, states, eps) == pytest.approx(hand_log_z, abs=1e-10)
    assert hand_elbo == pytest.approx(hand_log_z - hand_kl, abs=1e-12)
    torch.testing.assert_close(action_posterior(q, eps), posterior, atol=1e-12, rtol=0)


def test_lemma1_posterior_of_the_exact_module_goes_greedy_at_the_rate_exp_minus_gap_over_eps():
    """Two actions with Q gap Δ = 0.5: p(worse|s, O) = 1/(1 + exp(Δ/ε)) exactly, → 0 as ε → 0."""
    q = torch.tensor([[0.0, 0.5], [2.0, 1.5]], dtype=torch.float64)
    for eps in (2.0, 0.5, 0.1, 0.02):
        worse = action_posterior(q, eps)[[0, 1], [0, 1]]
        torch.testing.assert_close(worse, torch.full((2,), 1 / (1 + math.exp(0.5 / eps)), dtype=torch.float64))
    assert torch.equal(action_posterior(q, 0), torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64))


def test_complete_em_on_the_chain_reaches_the_hand_optimum():
    """Chain n = 5, γ = 0.9: π* = forward everywhere and V*(i) = 0.9^(4 − i)/0.1 (closed form)."""
    em = complete_em(chain_mdp(), eps=0.0)
    assert torch.equal(em.policies[-1].argmax(-1), torch.ones(5, dtype=torch.long))
    v = (em.policies[-1] * em.q_values[-1]).sum(-1)
    torch.testing.assert_close(v, torch.tensor([0.9 ** (4 - i) / 0.1 for i in range(5)], dtype=torch.float64))


def test_exp_utility_of_a_deterministic_cycle_is_the_return_over_eta():
    """On the chain (deterministic, never ends) with the deterministic policy 'forward', G is not random, so
    log E[exp(G/η)] = G/η = Q^π/η with Q^π(s, forward) = 0.9^(4 − s)/0.1 by hand: the backward recursion must run
    long enough for the discounted tail (the risky MDP ends after two steps and cannot show this)."""
    from virel_ppl.exact import log_exp_utility

    forward = torch.zeros(5, 2, dtype=torch.float64)
    forward[:, 1] = 1.0
    for eta in (0.5, 2.0):
        log_psi = log_exp_utility(chain_mdp(), forward, eta)[:, 1]
        expected = torch.tensor([0.9 ** (4 - s) / 0.1 / eta for s in range(5)], dtype=torch.float64)
        torch.testing.assert_close(log_psi, expected, atol=1e-12, rtol=0)


def test_gridworld_optimal_return_from_its_start_corner_by_hand():
    """4 × 3 grid, start (0, 0), goal (2, 3) paying 1 per step: J* = γ^manhattan/(1 − γ) = 0.9^5/0.1."""
    from virel_ppl.exact import expected_return, greedy, gridworld_mdp, value_iteration

    grid = gridworld_mdp(width=4, height=3, gamma=0.9)
    assert expected_return(grid, greedy(value_iteration(grid))) == pytest.approx(0.9**5 / 0.1, abs=1e-9)


def test_sac_temperature_step_by_hand():
    """min_{log α} −α·E[log π + H̄]: one SGD step (lr 1) moves log α by α·(E[log π] + H̄). With log π on the two
    samples = (log ¼, log ¾), H̄ = −1 (−action_dim) and α = 2: ∂/∂log α = −2·(−0.836988 − 1) = 3.673976."""
    from virel_ppl.variants import SacAuto

    eye = torch.eye(2)
    policy = StratifiedPolicy(eye[[0, 1]], torch.tensor([math.log(0.25), math.log(0.75)]))
    policy.guide = None  # the variant keeps its guide; this step does not use it
    variant = SacAuto(Config(algo="sac_auto", alpha=2.0), policy, None, ActionBox([-1.0], [1.0]))
    temperature = variant.alpha
    batch = Batch(torch.zeros(2, 3), None, None, None, None)
    loss, outputs = variant.dual_loss(batch, {})
    loss.backward()
    torch.optim.SGD(temperature.parameters(), lr=1.0).step()
    stats = variant.after_update(batch, outputs)
    mean_log_pi = 0.5 * (math.log(0.25) + math.log(0.75))  # −0.836988
    assert temperature.log_alpha.item() == pytest.approx(math.log(2.0) + 2.0 * (mean_log_pi - 1.0), abs=1e-6)
    assert float(stats["sac/entropy"]) == pytest.approx(-mean_log_pi)
    assert float(temperature.epsilon_rule(None, None)) == pytest.approx(2.0 * math.exp(2.0 * (mean_log_pi - 1.0)))


def test_old_policy_copies_exactly_every_period_updates():
    from virel_ppl.inference.guides import TanhNormalGuide
    from virel_ppl.variants import OldPolicy

    policy = TanhNormalGuide(3, ActionBox([-1.0], [1.0]), hidden=(4,))
    old = OldPolicy(policy, period=4, tau=1.0)
    copied = []
    for _ in range(8):
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(1.0)  # π_θ moves every update
        old.follow()
        copied.append(all(torch.equal(a, b) for a, b in zip(old.net.parameters(), policy.parameters())))
    assert copied == [k % 4 == 0 for k in range(1, 9)] and old.updates == 8


def test_pseudo_likelihood_advantages_by_hand():
    """R̂ = r + γ(1 − d)V̄(s') − V(s) = [5.5, −2, 5, 7.5] − 3 = [2.5, −5, 2, 4.5]; mean 1, centred [1.5, −6, 1, 3.5],
    sample std √(51.5/3); the model gets R̂ standardised, and the buffer's actions."""

    agent = VirelAgent(3, ActionBox([-1.0], [1.0]), Config(algo="pseudo_likelihood", hidden=(4,), gamma=GAMMA))
    _set_constant(agent.critic.v, 3.0)
    _set_constant(agent.critic.v_target, 5.0)
    batch = _batch()
    inputs = agent.variant.model_inputs(batch)
    std = math.sqrt(51.5 / 3)
    assert inputs["returns"].tolist() == pytest.approx([1.5 / std, -6 / std, 1 / std, 3.5 / std], rel=1e-5)
    assert inputs["actions"] is batch.actions


def test_gridworld_moves_by_hand():
    """4 × 3 grid, state = 4·row + col: from (1, 1) = 5, up → 1, down → 9, left → 4, right → 6; off the grid from
    (0, 0) = 0, up and left stay at 0; the goal (2, 3) = 11 is absorbing."""
    from virel_ppl.exact import gridworld_mdp

    grid = gridworld_mdp(width=4, height=3, gamma=0.9)
    assert grid.action_names == ("up", "down", "left", "right")
    for s, targets in ((5, (1, 9, 4, 6)), (0, (0, 4, 0, 1)), (11, (11, 11, 11, 11))):
        assert [int(grid.P[s, a].argmax()) for a in range(4)] == list(targets)
        assert torch.all(grid.P[s].max(-1).values == 1.0)

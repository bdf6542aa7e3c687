"""The variants as edits of VIREL's model: each objective against its closed form, and every preset trains."""

import math
from dataclasses import replace

import helpers
import pyro
import pyro.optim
import pytest
import torch
from helpers import QuadraticQ
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import Normal, kl_divergence

from virel_ppl.agent import VirelAgent
from virel_ppl.config import Config
from virel_ppl.inference.actions import ActionBox, TanhNormal
from virel_ppl.inference.critics import Critic, bellman_target
from virel_ppl.inference.em import Batch, EStep, m_step, soft_value_target
from virel_ppl.inference.guides import DiagonalGaussianGuide, PolicyGuide, TanhNormalGuide
from virel_ppl.inference.models import pseudo_likelihood_model, virel_model
from virel_ppl.runtime.logger import read_csv
from virel_ppl.train import train
from virel_ppl.variants import (
    VARIANTS,
    HardSoftCritic,
    NonparametricMPO,
    OldPolicy,
    Temperature,
    Variant,
    hard_soft_value_target,
    no_guide,
)


def _elbo(loss_cls, model, guide, states, particles=1, **kw) -> float:
    elbo = loss_cls(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    return -elbo.loss(model, guide, states, **kw)


def _perturbed(policy: PolicyGuide, seed: int) -> PolicyGuide:
    """A copy of ``policy`` with other weights: a π_old that differs from π_θ."""
    torch.manual_seed(seed)
    old = type(policy)(3, policy.box, hidden=(16,))
    return old.requires_grad_(False)


# --- MPO: prior π_old, ELBO = E[Q]/ε − KL(π_θ ‖ π_old) --------------------------------------------------------


def test_mpo_meanfield_elbo_is_expected_q_over_eps_minus_analytic_kl():
    box = ActionBox([-2.0, -1.0], [2.0, 1.0])
    critic = QuadraticQ([0.3, -0.2], weight=1.5)
    guide = DiagonalGaussianGuide(3, box, hidden=(16,))
    old = _perturbed(guide, seed=7)
    states, eps = torch.randn(4, 3), 0.7
    kw = dict(eps=eps, prior=old.distribution)
    with torch.no_grad():
        kl = kl_divergence(guide.distribution(states), old.distribution(states))  # (4,)
        loc, scale = guide._loc_scale(states)
        expected_q = -critic.weight * ((loc - critic.center) ** 2 + scale**2).sum(-1) + states @ critic.u
    assert (kl > 0.05).all()
    # With Q ≡ 0 the mean-field ELBO is −KL exactly: Pyro takes the KL in closed form, no sampling error.
    zero_q = _elbo(TraceMeanField_ELBO, virel_model, guide.guide, states, q=lambda s, a: 0.0 * a.sum(-1), **kw)
    assert zero_q == pytest.approx(-kl.sum().item(), rel=1e-5)
    # With Q only E[Q] is sampled: the ELBO is Σ_s E[Q]/ε − KL up to Monte-Carlo error.
    elbo = _elbo(TraceMeanField_ELBO, virel_model, guide.guide, states, particles=20_000, q=critic.q, **kw)
    assert elbo == pytest.approx((expected_q / eps - kl).sum().item(), abs=0.05)
    # Trace_ELBO samples the KL too and agrees up to its larger Monte-Carlo error.
    sampled = _elbo(Trace_ELBO, virel_model, guide.guide, states, particles=20_000, q=critic.q, **kw)
    assert sampled == pytest.approx(elbo, abs=0.2)


def test_mpo_kl_for_tanh_normal_pairs_is_the_gaussian_kl_and_trace_elbo_samples_it():
    """Both policies squash with the same tanh and box map, so KL(π_θ ‖ π_old) = KL of the Gaussians before
    squashing (a bijection leaves the KL unchanged): torch knows it, and TraceMeanField_ELBO uses it."""
    box = ActionBox([-1.0], [3.0])
    critic = QuadraticQ([1.5], weight=0.8)
    guide = TanhNormalGuide(3, box, hidden=(16,))
    old = _perturbed(guide, seed=11)
    states, eps = torch.randn(3, 3), 0.5
    kw = dict(eps=eps, prior=old.distribution)
    with torch.no_grad():
        p, p_old = guide.distribution(states), old.distribution(states)
        kl = kl_divergence(p, p_old)
        assert torch.allclose(kl, kl_divergence(Normal(p.loc, p.scale), Normal(p_old.loc, p_old.scale)).sum(-1))
        a = p.sample((200_000,))
        assert torch.allclose((p.log_prob(a) - p_old.log_prob(a)).mean(0), kl, atol=0.02)
        expected_q = critic.q(states, a).mean(0)
    zero_q = _elbo(TraceMeanField_ELBO, virel_model, guide.guide, states, q=lambda s, a: 0.0 * a.sum(-1), **kw)
    assert zero_q == pytest.approx(-kl.sum().item(), rel=1e-5)
    # Trace_ELBO samples the KL as well (standard error ≈ 0.05 here): it agrees with E[Q]/ε − KL.
    sampled = _elbo(Trace_ELBO, virel_model, guide.guide, states, particles=20_000, q=critic.q, **kw)
    assert sampled == pytest.approx((expected_q / eps - kl).sum().item(), abs=0.2)


def test_old_policy_hard_copy_every_k_updates_and_polyak():
    box = ActionBox([-1.0], [1.0])
    policy = TanhNormalGuide(3, box, hidden=(8,))
    hard, soft = OldPolicy(policy, period=3, tau=1.0), OldPolicy(policy, period=0, tau=0.25)
    start = [p.clone() for p in policy.parameters()]
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    for k in range(1, 4):
        hard.follow()
        soft.follow()
        same = all(torch.equal(a, b) for a, b in zip(hard.net.parameters(), policy.parameters()))
        assert same == (k == 3)
    for p0, p_old, p in zip(start, soft.net.parameters(), policy.parameters()):
        assert torch.allclose(p_old, p0 + (1 - 0.75**3) * (p - p0), atol=1e-6)  # three Polyak steps
    assert not any(p.requires_grad for p in hard.net.parameters())


# --- SAC: fixed α in place of ε, soft targets, α tuned to a target entropy ------------------------------------


def test_sac_soft_value_target_is_q_minus_alpha_log_pi():
    box = ActionBox([-1.0, -2.0], [1.0, 2.0])
    critic, policy = Critic(3, 2, hidden=(16,)), TanhNormalGuide(3, box, hidden=(16,))
    states, alpha = torch.randn(5, 3), 0.3
    torch.manual_seed(4)
    target = soft_value_target(alpha)(critic, policy, states)
    torch.manual_seed(4)
    d = policy.distribution(states)
    a = d.sample()
    assert torch.allclose(target, critic.q(states, a) - alpha * d.log_prob(a))
    temperature = Temperature(alpha, action_dim=2, target_entropy=None, device="cpu")
    torch.manual_seed(4)
    assert torch.allclose(soft_value_target(temperature)(critic, policy, states), target, atol=1e-6)


def test_sac_actor_loss_is_minus_eps_times_the_elbo_of_virels_model():
    """SAC's actor loss E[α log π(a|s) − Q(s, a)] is −α·ELBO (uniform prior, ε = α) less the constant α log|box|."""
    box = ActionBox([-1.0, -2.0], [1.0, 2.0])
    critic, policy = Critic(3, 2, hidden=(16,)), TanhNormalGuide(3, box, hidden=(16,))
    states, alpha = torch.randn(6, 3), 0.2
    pyro.set_rng_seed(5)
    elbo = _elbo(Trace_ELBO, virel_model, policy.guide, states, q=critic.q, eps=alpha, prior=lambda s: box.uniform())
    pyro.set_rng_seed(5)
    d = policy.distribution(states)
    a = d.rsample()
    sac_actor_loss = (alpha * d.log_prob(a) - critic.q(states, a)).sum()
    assert -alpha * elbo == pytest.approx((sac_actor_loss + alpha * box.log_volume * len(states)).item(), rel=1e-5)


@pytest.mark.parametrize("target, direction", [(-5.0, -1), (5.0, +1)])
def test_sac_temperature_moves_alpha_towards_the_target_entropy(target, direction):
    box = ActionBox([-1.0], [1.0])
    policy = TanhNormalGuide(3, box, hidden=(8,))
    temperature = Temperature(1.0, action_dim=1, target_entropy=target, device="cpu")
    optim = torch.optim.Adam(temperature.parameters(), lr=0.05)
    for _ in range(20):
        with torch.no_grad():
            d = policy.distribution(torch.randn(64, 3))
            log_pi = d.log_prob(d.sample())
        optim.zero_grad()
        temperature.loss(log_pi).backward()
        optim.step()
    assert (temperature().item() - 1.0) * direction > 0.3  # entropy ≈ 0.3 here: above −5, below 5
    assert Temperature(1.0, action_dim=3, target_entropy=None, device="cpu").target_entropy == -3.0


# --- VIREL2: one hard and one soft Q ---------------------------------------------------------------------------


def test_virel2_regresses_q1_on_the_hard_and_q2_on_the_soft_backup():
    box = ActionBox([-1.0, -1.0], [1.0, 1.0])
    critic, policy = HardSoftCritic(3, 2, hidden=(16,)), TanhNormalGuide(3, box, hidden=(16,))
    with torch.no_grad():  # distinct target values, so a mix-up would show
        for p in critic.v_soft_target.parameters():
            p.add_(0.5)
    g = torch.Generator().manual_seed(2)
    batch = Batch(
        torch.randn(32, 3, generator=g),
        torch.rand(32, 2, generator=g) * 2 - 1,
        torch.randn(32, generator=g),
        torch.randn(32, 3, generator=g),
        (torch.rand(32, generator=g) < 0.2).float(),
    )
    alpha, gamma = 0.4, 0.9
    with torch.no_grad():
        hard = bellman_target(batch.rewards, batch.terminated, critic.v_target(batch.next_obs).squeeze(-1), gamma)
        soft = bellman_target(batch.rewards, batch.terminated, critic.v_soft_target(batch.next_obs).squeeze(-1), gamma)
        q1, q2 = critic.twin_q(batch.obs, batch.actions)
        expected_q_loss = 0.5 * ((q1 - hard).pow(2).mean() + (q2 - soft).pow(2).mean())
        torch.manual_seed(9)
        d = policy.distribution(batch.obs)
        a = d.sample()
        qa1, qa2 = critic.twin_q(batch.obs, a)
        v_hard, v_soft = critic.value(batch.obs)
        expected_v_loss = 0.5 * torch.stack([v_hard - qa1, v_soft - (qa2 - alpha * d.log_prob(a))]).pow(2).mean()
    optim = torch.optim.SGD(critic.trainable_parameters(), lr=0.0)
    torch.manual_seed(9)
    stats = m_step(critic, optim, batch, policy, gamma, hard_soft_value_target(alpha))
    assert stats["critic/q_loss"].item() == pytest.approx(expected_q_loss.item(), rel=1e-5)
    assert stats["critic/v_loss"].item() == pytest.approx(expected_v_loss.item(), rel=1e-5)
    names = {n for n, p in critic.named_parameters() if any(p is t for t in critic.trainable_parameters())}
    assert not any(n.startswith(("v_target.", "v_soft_target.")) for n in names) and any("v_soft." in n for n in names)


# --- classic MPO: importance-weighted ML on MPO's model --------------------------------------------------------


class FreeGaussian(PolicyGuide):
    """π_θ(a) = Normal(μ, σ) with free parameters, the same for every state."""

    def __init__(self, loc: float, scale: float) -> None:
        super().__init__()
        self.loc = torch.nn.Parameter(torch.tensor([loc]))
        self.log_scale = torch.nn.Parameter(torch.tensor([math.log(scale)]))

    def distribution(self, states):
        return pyro.distributions.Normal(self.loc, self.log_scale.exp()).expand([states.shape[0], 1]).to_event(1)


def test_nonparametric_mpo_fits_the_gaussian_posterior_of_mpos_model():
    """Prior π_old = N(0, 1), Q(a) = −w (a − c)², η fixed: the posterior ∝ π_old exp(Q/η) is Gaussian with
    precision 1 + 2w/η and mean (2wc/η)/precision. Weighted ML with a loose KL bound matches its moments."""
    critic = QuadraticQ([1.0], weight=1.0)
    with torch.no_grad():
        critic.u.zero_()
    eta, states = 0.5, torch.zeros(8, 3)
    old = FreeGaussian(0.0, 1.0).requires_grad_(False)
    policy = FreeGaussian(0.0, 1.0)
    mpo = NonparametricMPO(num_actions=1024, kl_bound=100.0, eta=eta, eta_bound=None, device="cpu")
    mpo.log_lagrange.data.fill_(-20.0)  # λ ≈ 0: the bound does not bind
    e_step, duals = EStep(virel_model, policy.guide, mpo, lr=0.05), torch.optim.Adam(mpo.parameters(), lr=1e-3)
    for _ in range(120):
        _, outputs = e_step(critic, states, eps=eta, q=critic.q, prior=old.distribution)
        duals.zero_grad()
        outputs["duals"].backward()
        duals.step()
    precision = 1 + 2 * 1.0 / eta
    assert policy.loc.item() == pytest.approx(2 * 1.0 / eta / precision, abs=0.03)
    assert policy.log_scale.exp().item() == pytest.approx(precision**-0.5, abs=0.03)
    far = kl_divergence(old.distribution(states[:1]), policy.distribution(states[:1]))
    assert far.item() > 0.5  # far from π_old: only the loose bound allowed that


def test_nonparametric_mpo_eta_dual_sets_the_kl_of_the_weights_to_its_bound():
    """At the minimum of g(η) the weights of the samples sit at KL(q ‖ π_old) = ε_η."""
    critic = QuadraticQ([0.5], weight=2.0)
    old = FreeGaussian(0.0, 1.0).requires_grad_(False)
    policy = FreeGaussian(0.0, 1.0)
    mpo = NonparametricMPO(num_actions=32, kl_bound=0.01, eta=1.0, eta_bound=0.1, device="cpu")
    states = torch.randn(32, 3)
    e_step, duals = EStep(virel_model, policy.guide, mpo, lr=0.0), torch.optim.Adam(mpo.parameters(), lr=0.1)
    for _ in range(150):
        pyro.set_rng_seed(0)  # the same samples each time: g(η) is then a fixed function
        _, outputs = e_step(critic, states, eps=mpo.epsilon_rule(None, None), q=critic.q, prior=old.distribution)
        duals.zero_grad()
        outputs["duals"].backward()
        duals.step()
    pyro.set_rng_seed(0)
    actions = old.distribution(states).expand([32, 32]).sample()
    q = critic.q(states, actions).detach()
    w = torch.softmax(q / mpo.epsilon_rule(None, None), dim=0)
    kl_weights = (w * (w * 32).log()).sum(0).mean()
    assert kl_weights.item() == pytest.approx(0.1, abs=0.01)


# --- pseudo-likelihood EM: the policy is the prior, sampled returns are exponentiated -------------------------


def test_pseudo_likelihood_objective_is_return_weighted_log_likelihood_and_ml_matches_its_moments():
    policy = FreeGaussian(0.0, 1.0)
    states = torch.zeros(5, 3)
    actions = torch.tensor([[-1.0], [0.0], [0.5], [1.0], [2.0]])
    returns = torch.tensor([0.0, 1.0, 0.5, 2.0, -1.0])
    eps = 0.8
    prior = lambda s: (pyro.module("policy", policy), policy.distribution(s))[1]  # noqa: E731
    kw = dict(q=None, eps=eps, prior=prior, actions=actions, returns=returns)
    w = 5 * torch.softmax(returns / eps, 0)
    with torch.no_grad():
        expected = (w * policy.distribution(states).log_prob(actions)).sum()
    assert _elbo(Trace_ELBO, pseudo_likelihood_model, no_guide, states, **kw) == pytest.approx(expected.item())
    # M-step to convergence: p_θ takes the weighted mean and variance of the buffer's actions (moment matching)
    svi = SVI(pseudo_likelihood_model, no_guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO(max_plate_nesting=1))
    for _ in range(600):
        svi.step(states, **kw)
    p = w / w.sum()
    mean = (p * actions[:, 0]).sum()
    assert policy.loc.item() == pytest.approx(mean.item(), abs=1e-2)
    assert policy.log_scale.exp().item() ** 2 == pytest.approx((p * (actions[:, 0] - mean) ** 2).sum().item(), abs=1e-2)


# --- the registry: every preset trains, resumes exactly, and the trainer never knows which ----------------------

TINY = {**helpers.TINY, "env": "InvertedPendulum-v5", "eval_every": 250}


@pytest.mark.parametrize("algo", sorted(set(VARIANTS) - {"mpo_np", "sac_auto", "virel1"}))
def test_every_preset_trains_a_few_hundred_steps(tmp_path, algo):
    result = train(Config(algo=algo, total_steps=200, run_dir=tmp_path, **TINY))
    assert result.steps == 200 and math.isfinite(result.final_eval_return)


@pytest.mark.parametrize("algo", ["mpo_np", "sac_auto"])
def test_resume_after_ctrl_c_is_exact_for_variants_with_extra_state(tmp_path, algo):
    import os
    import signal

    def interrupt(trainer, step):
        if step == 150:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = Config(algo=algo, total_steps=200, seed=2, **TINY)
    train(replace(cfg, run_dir=tmp_path / "straight"))
    assert train(replace(cfg, run_dir=tmp_path / "resumed"), hooks=[interrupt]).interrupted
    train(resume=tmp_path / "resumed")
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["agent"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["agent"]
    assert {key.split(".")[0] for key in a["variant"]} == {"mpo_np": {"old_policy", "mpo"}, "sac_auto": {"alpha"}}[algo]
    for part in ("policy", "critic", "variant", "dual_optim"):
        _assert_same(a[part], b[part], part)
    assert (tmp_path / "straight" / "train.csv").read_text() == (tmp_path / "resumed" / "train.csv").read_text()


def _assert_same(a, b, where: str) -> None:
    """Nested dicts/lists of tensors and numbers are equal, bit for bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def _state_of(modules) -> list[torch.Tensor]:
    return [t.detach().clone() for m in modules for t in [*m.parameters(), *m.buffers()]]


@pytest.mark.parametrize("algo", ["sac_auto", "mpo_np"])
def test_each_loss_only_computes_called_twice_it_gives_the_same_value_and_moves_no_state(algo):
    """The E-step's loss and the duals' loss, each called twice from the same random state: the same values, and no
    parameter, buffer or gradient of the agent changed (nothing steps inside a loss)."""
    box = ActionBox([-2.0], [2.0])
    agent = VirelAgent(3, box, Config(algo=algo, hidden=(8,)))
    variant, states = agent.variant, torch.randn(5, 3)
    batch = Batch(states, torch.rand(5, 1), torch.randn(5), torch.randn(5, 3), torch.zeros(5))
    modules = [agent.policy, agent.critic, agent.variant_state]
    kwargs = dict(eps=torch.tensor(0.3), q=agent.q_on_box, prior=variant.prior)

    def losses() -> list[torch.Tensor]:
        pyro.set_rng_seed(3)
        values, e_outputs = [], {}
        if variant.replaces_elbo:  # classic MPO's own E-step loss
            loss, e_outputs = variant.loss(variant.model, variant.guide, states, **kwargs)
            values.append(loss)
        dual_loss, outputs = variant.dual_loss(batch, e_outputs)
        return [*values, dual_loss, *outputs.values()]

    before = _state_of(modules)
    first, second = losses(), losses()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(before, _state_of(modules), strict=True))
    assert all(p.grad is None for m in modules for p in m.parameters())


def test_a_checkpoint_without_the_variants_state_is_refused():
    box = ActionBox([-3.0], [3.0])
    agent = VirelAgent(4, box, Config(algo="mpo", hidden=(8,)))
    state = agent.state_dict()
    state["variant"] = {k: v for k, v in state["variant"].items() if not k.startswith("old_policy.")}
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*old_policy\.updates"):
        VirelAgent(4, box, Config(algo="mpo", hidden=(8,))).load_state_dict(state)


def test_registry_presets_are_described_and_named_in_errors():
    assert {"virel", "virel1", "virel2", "beta", "mpo", "mpo_np", "sac", "sac_auto", "pseudo_likelihood"} <= set(
        VARIANTS
    )
    assert all(issubclass(v, Variant) and v.description for v in VARIANTS.values())
    with pytest.raises(ValueError, match="Unknown algo 'sax'.*Did you mean sac"):
        VirelAgent(4, ActionBox([-1.0], [1.0]), Config(algo="sax", hidden=(8,)))


def test_mpo_prior_is_the_frozen_old_policy_and_gets_no_gradient():
    agent = VirelAgent(4, ActionBox([-3.0], [3.0]), Config(algo="mpo", hidden=(8,)))
    old = agent.variant.old_policy
    states = torch.randn(5, 4)
    a = agent.policy.distribution(states).rsample()
    agent.variant.prior(states).log_prob(a).sum().backward()
    assert all(p.grad is None for p in old.net.parameters())
    assert any(p.grad is not None for p in agent.policy.parameters())  # through the action, as the ELBO needs
    assert isinstance(agent.variant.prior(states), TanhNormal)


def test_the_custom_variant_example_is_one_model_edit_and_trains(tmp_path):
    import runpy
    from pathlib import Path

    example = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "custom_variant.py"), run_name="example")
    assert VARIANTS["virel_cost"].model is example["control_cost_model"]
    box = ActionBox([-2.0], [2.0])
    critic, guide = QuadraticQ([0.5]), TanhNormalGuide(3, box, hidden=(8,))
    states, kw = torch.randn(4, 3), dict(q=critic.q, eps=0.5, prior=lambda s: box.uniform())
    pyro.set_rng_seed(1)
    edited = _elbo(Trace_ELBO, example["control_cost_model"], guide.guide, states, **kw)
    pyro.set_rng_seed(1)
    plain = _elbo(Trace_ELBO, virel_model, guide.guide, states, **kw)
    pyro.set_rng_seed(1)
    a = guide.distribution(states).rsample()
    assert edited - plain == pytest.approx((-example["COST"] * a.pow(2).sum() / 0.5).item(), rel=1e-4)
    try:
        assert train(Config(algo="virel_cost", total_steps=150, run_dir=tmp_path, **TINY)).steps == 150
        # the stateful example: ε_k = α · 0.999^k, and the count travels in the agent's state
        batch = Batch(torch.randn(6, 3), torch.rand(6, 1), torch.randn(6), torch.randn(6, 3), torch.zeros(6))
        config = Config(algo="virel_anneal", alpha=0.5, hidden=(8,))
        agent = VirelAgent(3, box, config)
        assert [float(agent.update(batch)["eps"]) for _ in range(3)] == pytest.approx([0.5, 0.4995, 0.5 * 0.999**2])
        resumed = VirelAgent(3, box, config)
        resumed.load_state_dict(agent.state_dict())
        assert float(resumed.update(batch)["eps"]) == pytest.approx(0.5 * 0.999**3)
    finally:
        del VARIANTS["virel_cost"], VARIANTS["virel_anneal"]


def test_pseudo_likelihood_prefers_a_lottery_that_virel_declines():
    """A one-step version of docs/theory.md's risky MDP with a continuous action: a < 0 is safe (pays 2), a > 0 a
    lottery (pays 10 w.p. 0.1, 1 on average). The pseudo-likelihood E-step exponentiates *sampled* returns and
    puts nearly all weight on the lottery; VIREL's posterior exponentiates Q = E[r|a] and prefers safe."""
    g = torch.Generator().manual_seed(0)
    n, eps = 4000, 1.0
    actions = torch.rand(n, 1, generator=g) * 2 - 1
    risky = actions[:, 0] > 0
    rewards = torch.where(risky, 10.0 * (torch.rand(n, generator=g) < 0.1).float(), torch.full((n,), 2.0))
    trace = pyro.poutine.trace(pseudo_likelihood_model).get_trace(
        torch.zeros(n, 3),
        q=None,
        eps=eps,
        prior=lambda s: FreeGaussian(0.0, 1.0).distribution(s),
        actions=actions,
        returns=rewards,
    )
    weights = trace.nodes["a"]["scale"]
    assert weights[risky].sum() / weights.sum() > 0.99  # ≈ (0.1 e^10 + 0.9) / (0.1 e^10 + 0.9 + e^2)
    q = torch.where(risky, 1.0, 2.0)  # E[r | a]
    assert torch.softmax(q / eps, 0)[risky].sum() < 0.3  # VIREL's posterior mass on the lottery


def test_each_mpo_preset_has_its_own_old_policy_period_unless_given():
    box = ActionBox([-3.0], [3.0])
    periods = {
        (algo, given): VirelAgent(
            4, box, Config(algo=algo, hidden=(8,), old_policy_period=given)
        ).variant.old_policy.period
        for algo in ("mpo", "mpo_np")
        for given in (None, 0)
    }
    assert periods == {("mpo", None): 1000, ("mpo_np", None): 100, ("mpo", 0): 0, ("mpo_np", 0): 0}


def test_mpo_np_logs_the_kl_after_its_step_not_the_zero_before_it(tmp_path):
    """Logged rows fall right after π_old's copy (period 100 divides log_every 250): the KL must be the one after
    the step, which is > 0, and stays small under the bound."""
    train(Config(algo="mpo_np", total_steps=220, run_dir=tmp_path, **{**TINY, "log_every": 20}))
    kl = read_csv(tmp_path / "train.csv")["mpo/kl"]
    assert all(0 < k < 0.5 for k in kl)

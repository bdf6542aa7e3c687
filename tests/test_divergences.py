"""Divergences as plug-ins: every estimator by name, start-up errors for pairs that cannot work, the Rényi /
IWAE / tail-adaptive estimators checked against hand computations and known bounds, closed-form KLs, exact
enumeration for a Categorical guide, and the trainer running the combinations that make sense."""

import importlib.util
import math
import sys
from pathlib import Path

import helpers
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import (
    RenyiELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
    TraceTailAdaptive_ELBO,
)
from torch.distributions import kl_divergence

from virel_ppl.cli import main
from virel_ppl.config import Config
from virel_ppl.inference.actions import ActionBox, DiscreteActions
from virel_ppl.inference.divergences import (
    DIVERGENCES,
    ELBOS,
    EnumELBO,
    ScaledRenyiELBO,
    ScaledTailAdaptiveELBO,
    make_elbo,
)
from virel_ppl.inference.guides import GUIDES, BetaGuide, CategoricalGuide, DiagonalGaussianGuide, TanhNormalGuide
from virel_ppl.inference.models import virel_model
from virel_ppl.runtime.logger import read_csv
from virel_ppl.train import Trainer, train

torch.set_num_threads(1)

BOX = ActionBox([-1.0], [1.0])
TINY = {**helpers.TINY, "hidden": (16,), "batch_size": 16, "eval_every": 150}


def _known_answer():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "known_answer_kl.py"
    spec = importlib.util.spec_from_file_location("known_answer_kl", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def quadratic_q(states, actions):
    """Q(a)/ε = −4 (a − 0.3)², one value per state (and per particle)."""
    value = -4.0 * (actions - 0.3).pow(2).sum(-1)
    return value.expand(torch.broadcast_shapes(value.shape, states.shape[:-1]))


def _kw(box=BOX):
    return dict(q=quadratic_q, eps=1.0, prior=lambda s: box.uniform())


# --- the registry and start-up checks ---------------------------------------------------------------------------


def test_every_named_estimator_builds_with_its_default_particles():
    guide = TanhNormalGuide(3, BOX, hidden=(8,))
    expected = {
        "trace": (Trace_ELBO, 1),
        "meanfield": (TraceMeanField_ELBO, 1),
        "renyi": (ScaledRenyiELBO, 8),
        "iwae": (ScaledRenyiELBO, 8),
        "tail_adaptive": (ScaledTailAdaptiveELBO, 8),
        "graph": (TraceGraph_ELBO, 1),
    }
    for name, (cls, particles) in expected.items():
        elbo = make_elbo(name, guide)
        assert isinstance(elbo, cls) and elbo.num_particles == particles, name
    assert make_elbo("renyi", guide, 4, renyi_alpha=0.2).alpha == 0.2 and make_elbo("iwae", guide).alpha == 0.0
    assert isinstance(make_elbo("enum", CategoricalGuide(3, DiscreteActions(3), hidden=(8,))), EnumELBO)
    assert set(DIVERGENCES) == set(ELBOS) and isinstance(ELBOS["trace"](2), Trace_ELBO)  # agent's old registry


@pytest.mark.parametrize(
    "guide, elbo, particles, match",
    [
        ("categorical", "trace", None, r"needs reparameterised samples.*--elbo enum.*--elbo graph"),
        ("categorical", "tail_adaptive", None, "rsample"),
        ("categorical", "renyi", None, "rsample"),
        ("tanh_normal", "enum", None, "enumerates a discrete action set"),
        ("tanh_normal", "renyi", 1, "Rényi bound is exactly the ELBO"),
        ("mixture", "iwae", 1, "--num-particles >= 2"),
        ("flow", "tail_adaptive", 1, "--num-particles >= 2"),
        ("categorical", "enum", 4, "exact"),
        ("tanh_normal", "trac", None, "Unknown elbo 'trac'.*Did you mean trace"),
    ],
)
def test_impossible_combinations_fail_with_a_clear_message(guide, elbo, particles, match):
    actions = DiscreteActions(3) if guide == "categorical" else BOX
    policy = GUIDES[guide](3, actions, hidden=(8,))
    with pytest.raises(ValueError, match=match):
        make_elbo(elbo, policy, particles)


def test_elbo_objects_passed_in_code_are_checked_too():
    continuous, categorical = TanhNormalGuide(3, BOX, hidden=(8,)), CategoricalGuide(3, DiscreteActions(3), hidden=(8,))
    ok = ScaledRenyiELBO(alpha=0.5, num_particles=4)
    assert make_elbo(ok, continuous) is ok
    with pytest.raises(ValueError, match="ScaledRenyiELBO"):
        make_elbo(RenyiELBO(alpha=0.5, num_particles=4, vectorize_particles=True, max_plate_nesting=1), continuous)
    with pytest.raises(ValueError, match="ScaledTailAdaptiveELBO"):
        make_elbo(TraceTailAdaptive_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1), continuous)
    with pytest.raises(ValueError, match="EnumELBO"):
        make_elbo(TraceEnum_ELBO(max_plate_nesting=1), categorical)
    with pytest.raises(ValueError, match="Rényi bound is exactly the ELBO"):
        make_elbo(ScaledRenyiELBO(num_particles=1), continuous)
    with pytest.raises(ValueError, match="--elbo graph"):
        make_elbo(Trace_ELBO(max_plate_nesting=1), categorical)
    assert make_elbo(TraceGraph_ELBO(max_plate_nesting=1), categorical) is not None


def test_trainer_rejects_bad_pairs_before_any_step(tmp_path):
    with pytest.raises(ValueError, match="--elbo graph"):
        Trainer(Config(env="CartPole-v1", guide="categorical", elbo="trace", run_dir=tmp_path, **TINY))
    with pytest.raises(ValueError, match="--num-particles >= 2"):
        Trainer(Config(env="Pendulum-v1", guide="mixture", elbo="renyi", num_particles=1, run_dir=tmp_path, **TINY))
    with pytest.raises(ValueError, match="renyi-alpha 1"):
        Config(elbo="renyi", renyi_alpha=1.0).validate()


# --- the estimators against hand computations and known bounds ------------------------------------------------


def test_scaled_renyi_is_the_per_state_bound_and_ignores_poutine_scale():
    guide = TanhNormalGuide(3, BOX, hidden=(8,))
    states = torch.randn(5, 3)
    alpha, k = 0.3, 6
    elbo = ScaledRenyiELBO(alpha=alpha, num_particles=k)

    def run(scale):
        pyro.set_rng_seed(1)
        guide.zero_grad()
        with poutine.scale(scale=scale):
            loss = elbo.loss_and_grads(virel_model, guide.guide, states, **_kw())
        return loss, [p.grad.clone() for p in guide.parameters()]

    loss_1, grads_1 = run(1.0)
    loss_c, grads_c = run(0.1)
    assert loss_c == pytest.approx(0.1 * loss_1, rel=1e-5)
    assert all(torch.allclose(0.1 * a, b, atol=1e-6) for a, b in zip(grads_1, grads_c))

    pyro.set_rng_seed(1)  # the same particles, by hand: Σ_s 1/(1−α) log mean_k w_sk^(1−α)
    guide.zero_grad()
    d = guide.distribution(states)
    a = d.rsample((k,))
    log_w = quadratic_q(states, a) - BOX.log_volume - d.log_prob(a)
    bound = ((torch.logsumexp((1 - alpha) * log_w, 0) - math.log(k)) / (1 - alpha)).sum()
    (-bound).backward()
    assert loss_1 == pytest.approx(-bound.item(), rel=1e-5)
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(grads_1, guide.parameters()))


def test_tail_adaptive_ranks_particles_per_state_and_reports_the_elbo():
    guide = TanhNormalGuide(3, BOX, hidden=(8,))
    states = torch.randn(5, 3)
    k, beta = 6, -1.0
    elbo = ScaledTailAdaptiveELBO(num_particles=k, tail_adaptive_beta=beta)
    pyro.set_rng_seed(2)
    guide.zero_grad()
    loss = elbo.loss_and_grads(virel_model, guide.guide, states, **_kw())
    grads = [p.grad.clone() for p in guide.parameters()]

    pyro.set_rng_seed(2)
    guide.zero_grad()
    d = guide.distribution(states)
    a = d.rsample((k,))
    log_w = quadratic_q(states, a) - BOX.log_volume - d.log_prob(a)  # (particles, states)
    tail = (log_w.detach()[None, :, :] >= log_w.detach()[:, None, :]).float().mean(1)  # F̄(w_k) = #{j: w_j ≥ w_k}/K
    gamma = tail**beta  # Wang et al. (2018), Alg. 1
    assert torch.equal(gamma.argmax(0), log_w.argmax(0))  # β < 0: the largest weight counts most
    (-((gamma * log_w).sum(0) / gamma.sum(0)).sum()).backward()
    assert math.isfinite(loss) and loss == pytest.approx(-log_w.mean(0).sum().item(), rel=1e-5)
    assert all(torch.allclose(g, p.grad, atol=1e-5) for g, p in zip(grads, guide.parameters()))


def test_bounds_are_ordered_elbo_renyi_iwae_log_z():
    """For a fixed, mismatched guide: E[ELBO] ≤ E[Rényi_0.5] ≤ E[IWAE_8] ≤ log Z (Li & Turner; Burda et al.)."""
    guide = TanhNormalGuide(3, BOX, hidden=(8,))
    states = torch.randn(1, 3).expand(2000, 3)  # 2000 independent per-state estimates in one call
    grid = torch.linspace(-1, 1, 20_001)[:, None]
    log_z = (torch.logsumexp(quadratic_q(torch.zeros(1, 3), grid), 0) + math.log(2 / 20_000) - math.log(2.0)).item()
    per_state = {
        name: -make_elbo(name, guide, 8).loss(virel_model, guide.guide, states, **_kw()) / 2000
        for name in ("trace", "renyi", "iwae")
    }
    print("per-state bounds:", per_state, "log Z:", log_z)
    assert per_state["trace"] + 0.05 < per_state["renyi"] < per_state["iwae"] - 0.02 < log_z


def test_meanfield_uses_closed_form_kls_for_gaussian_and_beta():
    states = torch.randn(4, 3)
    prior = BOX.uniform().expand((4,))
    for guide in (DiagonalGaussianGuide(3, BOX, hidden=(8,)), BetaGuide(3, BOX, hidden=(8,))):
        with torch.no_grad():
            d = guide.distribution(states)
            a = d.sample((100_000,))
            monte_carlo = (d.log_prob(a) - prior.log_prob(a)).mean(0)
            assert torch.allclose(kl_divergence(d, prior), monte_carlo, atol=0.02), type(guide).__name__
        # with a flat Q the loss is the prior KL alone: Monte Carlo under trace, exact (no noise) under meanfield
        flat = dict(q=lambda s, a: torch.zeros(a.shape[:-1]), eps=1.0, prior=lambda s: BOX.uniform())
        losses = {
            name: torch.tensor(
                [make_elbo(name, guide).loss(virel_model, guide.guide, states, **flat) for _ in range(30)]
            )
            for name in ("trace", "meanfield")
        }
        assert losses["meanfield"].std() < 1e-4 < 1e-2 < losses["trace"].std()
        exact = kl_divergence(guide.distribution(states), prior).sum().item()
        assert losses["meanfield"][0].item() == pytest.approx(exact, rel=1e-5)
        assert losses["trace"].mean().item() == pytest.approx(exact, abs=4 * losses["trace"].std().item())


def test_enum_is_exact_and_reaches_the_exact_posterior_for_a_categorical_guide():
    ka = _known_answer()
    problem = ka.PROBLEMS["discrete_6"]
    actions = problem.actions()
    guide = CategoricalGuide(ka.OBS_DIM, actions, hidden=(16,))
    states = ka.fixed_states()
    kw = dict(q=problem.q, eps=1.0, prior=lambda s: actions.uniform())
    # the loss is an exact sum over the 6 actions: −Σ_s Σ_a q(a|s) [Q(a)/ε − log 6 − log q(a|s)]
    with torch.no_grad():
        log_q = guide.net(states).log_softmax(-1)
        exact = -(log_q.exp() * (ka.DISCRETE_Q - math.log(6) - log_q)).sum().item()
    enum = EnumELBO()
    assert enum.loss(virel_model, guide.guide, states, **kw) == pytest.approx(exact, rel=1e-5)
    assert enum.loss(virel_model, guide.guide, states, **kw) == enum.loss(virel_model, guide.guide, states, **kw)

    fitted = ka.fit(problem, "categorical", "enum", steps=150, lr=5e-2, hidden=(16,))
    reverse, forward = ka.kl_divergences(problem, fitted)
    print(f"Categorical + TraceEnum_ELBO: KL(q‖p) = {reverse:.2e}, KL(p‖q) = {forward:.2e}")
    assert reverse < 1e-3 and forward < 1e-3


# --- the trainer with --guide / --elbo ---------------------------------------------------------------------------


def test_cli_trains_a_mixture_guide_with_the_renyi_divergence(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "--env", "Pendulum-v1", "--guide", "mixture", "--elbo", "renyi", "--renyi-alpha", "0.5"]
    args += ["--num-particles", "4", "--total-steps", "150", "--warmup-steps", "100", "--batch-size", "16"]
    args += ["--hidden", "16", "--eval-every", "150", "--eval-episodes", "1", "--log-every", "50", "--threads", "1"]
    args += ["--no-progress", "--no-tensorboard", "--run-dir", str(run_dir)]
    main(args)
    assert "finished after 150 steps" in capsys.readouterr().out
    train_log = read_csv(run_dir / "train.csv")
    assert all(math.isfinite(v) for v in train_log["actor/loss"])


def test_cartpole_trains_with_the_categorical_guide_and_exact_enumeration(tmp_path):
    cfg = Config(env="CartPole-v1", guide="categorical", elbo="enum", total_steps=150, run_dir=tmp_path, **TINY)
    trainer = Trainer(cfg)
    assert trainer.agent.critic.q1[0].in_features == 4 + 2  # Q(s, one_hot(a))
    result = train(cfg)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    actions = state["replay"]["actions"]
    assert actions.shape == (150, 2) and torch.equal(actions.sum(-1), torch.ones(150))  # one-hot in the buffer
    assert result.steps == 150 and math.isfinite(result.final_eval_return)

"""Policy families as guides: one interface, valid actions, exact and finite log-densities, exact pathwise
gradients of the mixture, the right action space, and what the multimodal guides buy on a bimodal posterior."""

import importlib.util
import math
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch

from virel_ppl.config import Config
from virel_ppl.inference.actions import ActionBox, DiscreteActions
from virel_ppl.inference.guides import (
    GUIDES,
    BoxBeta,
    CategoricalGuide,
    DiagNormalMixture,
    MixtureGuide,
    TanhNormalGuide,
    check_guide_fits,
)
from virel_ppl.runtime.envs import OneHot, make_env
from virel_ppl.train import Trainer

torch.set_num_threads(1)

CONTINUOUS = ["tanh_normal", "gaussian", "beta", "mixture", "flow"]
BOUNDED = ["tanh_normal", "beta", "mixture", "flow"]  # densities supported on the box


def _known_answer():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "known_answer_kl.py"
    spec = importlib.util.spec_from_file_location("known_answer_kl", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _edges_and_replay_actions(box: ActionBox, n: int = 64) -> torch.Tensor:
    """Uniform actions (as warm-up fills the replay buffer) plus the box corners and centre, exactly."""
    uniform = box.low + (box.high - box.low) * torch.rand(n, box.dim)
    return torch.cat([uniform, box.low[None], box.high[None], box.center[None]])


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("name", CONTINUOUS)
def test_every_continuous_guide_has_the_same_small_interface(name, dim):
    box = ActionBox([-2.0, 0.0][:dim], [1.0, 3.0][:dim])
    guide = GUIDES[name](3, box, hidden=(16, 16))
    states = torch.randn(5, 3)

    d = guide.distribution(states)
    assert d.batch_shape == (5,) and d.event_shape == (dim,)
    a = d.rsample()
    assert a.shape == (5, dim) and a.requires_grad  # reparameterised
    d.log_prob(a).sum().backward()
    assert all(p.grad is not None for p in guide.parameters() if p.requires_grad)

    # act() and mode() always give actions inside the box
    for deterministic in (False, True):
        act = guide.act(torch.randn(200, 3), deterministic=deterministic)
        assert act.shape == (200, dim) and (act >= box.low).all() and (act <= box.high).all()

    # log_prob is finite for any action of the replay buffer, edges included, and for fresh samples
    replay = _edges_and_replay_actions(box)
    log_q = guide.distribution(torch.randn(len(replay), 3)).log_prob(replay)
    assert log_q.shape == (len(replay),) and torch.isfinite(log_q).all()
    with torch.no_grad():
        d = guide.distribution(states)
        assert torch.isfinite(d.log_prob(d.sample((7,)))).all()

    # the Pyro guide registers every parameter with pyro.module and samples "a" in the "states" plate;
    # vectorised particles expand the batch to (particles, states)
    with pyro.plate("particles", 4, dim=-2):
        trace = poutine.trace(guide.guide).get_trace(states)
    assert trace.nodes["a"]["value"].shape == (4, 5, dim)
    assert trace.nodes["a"]["fn"].batch_shape == (4, 5)
    registered = {name for name in pyro.get_param_store().keys() if name.startswith("policy$$$")}
    assert registered == {f"policy$$${n}" for n, _ in guide.named_parameters()}


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("name", BOUNDED)
def test_log_prob_is_a_normalised_density_on_the_box(name, dim):
    box = ActionBox([-1.0, -0.5][:dim], [2.0, 1.5][:dim])
    guide = GUIDES[name](3, box, hidden=(16,))
    n = 3000 if dim == 1 else 300
    axes = [(torch.arange(n) + 0.5) / n * (hi - lo) + lo for lo, hi in zip(box.low.tolist(), box.high.tolist())]
    points = torch.cartesian_prod(*axes).reshape(-1, dim)
    cell = math.prod((hi - lo) / n for lo, hi in zip(box.low.tolist(), box.high.tolist()))
    with torch.no_grad():
        log_q = guide.distribution(torch.randn(1, 3)).log_prob(points[:, None, :])[:, 0]
    assert (log_q.exp().sum() * cell).item() == pytest.approx(1.0, abs=0.02)


def test_mixture_pathwise_gradients_are_exact():
    """∇ E_q[f(x)] by the mixture's implicit reparameterisation equals the closed form (weights included)."""
    logits = torch.tensor([0.3, -0.5, 0.1], requires_grad=True)
    locs = torch.tensor([[-1.0, 0.5], [0.8, -0.3], [0.2, 1.2]], requires_grad=True)
    scales = torch.tensor([[0.5, 0.7], [0.3, 0.4], [0.6, 0.2]], requires_grad=True)
    params = (logits, locs, scales)

    def closed_form():  # E[x1² + x0 x1 + x0³] under the mixture
        w, m, s = logits.softmax(-1), locs, scales
        return (w * (m[:, 1] ** 2 + s[:, 1] ** 2 + m[:, 0] * m[:, 1] + m[:, 0] ** 3 + 3 * m[:, 0] * s[:, 0] ** 2)).sum()

    exact = torch.autograd.grad(closed_form(), params)
    x = DiagNormalMixture(logits, locs, scales).rsample((200_000,))
    estimate = torch.autograd.grad((x[:, 1] ** 2 + x[:, 0] * x[:, 1] + x[:, 0] ** 3).mean(), params)
    for e, g in zip(exact, estimate):
        assert torch.allclose(e, g, atol=0.03), (e, g)
    assert exact[0].abs().max() > 0.1  # the weights' gradient is not trivially zero


def test_beta_guide_mode_and_edges():
    box = ActionBox([-2.0], [2.0])
    c1, c0 = torch.tensor([[3.0]]), torch.tensor([[1.5]])
    d = BoxBeta(c1, c0, box)
    grid = torch.linspace(-1.999, 1.999, 40_001)[:, None, None]
    argmax = grid[d.log_prob(grid).argmax()].item()
    assert d.mode.item() == pytest.approx(argmax, abs=1e-3)  # (α−1)/(α+β−2) mapped to the box
    assert torch.isfinite(d.log_prob(torch.tensor([[[-2.0]], [[2.0]]]))).all()
    assert d.entropy().item() == pytest.approx(torch.distributions.Beta(3.0, 1.5).entropy().item() + math.log(4.0))


def test_mixture_components_start_apart():
    guide = MixtureGuide(3, ActionBox([-1.0], [1.0]), hidden=(16,), components=4)
    _, locs, _ = guide._params(torch.zeros(1, 3))
    assert locs[0, :, 0].diff().min() > 0.3


def test_guides_and_action_spaces_must_match():
    box, discrete = ActionBox([-1.0], [1.0]), DiscreteActions(3)
    with pytest.raises(TypeError, match="continuous Box.*--guide categorical"):
        TanhNormalGuide(4, discrete)
    with pytest.raises(TypeError, match="needs a Discrete action space"):
        CategoricalGuide(4, box)
    with pytest.raises(TypeError, match="Discrete action space"):
        check_guide_fits(CategoricalGuide(4, discrete), box)
    # in the trainer, at start-up
    tiny = dict(hidden=(8,), batch_size=8, warmup_steps=10, progress=False, tensorboard=False, threads=1)
    with pytest.raises(TypeError, match="continuous Box"):
        Trainer(Config(env="CartPole-v1", **tiny))
    with pytest.raises(TypeError, match="needs a Discrete action space"):
        Trainer(Config(env="Pendulum-v1", guide="categorical", elbo="enum", **tiny))


def test_discrete_env_takes_one_hot_actions():
    env = make_env("CartPole-v1", seed=0)
    assert isinstance(env.action_space, OneHot) and env.action_space.n == 2
    sample = env.action_space.sample()
    assert sample.sum() == 1.0 and set(np.unique(sample)) <= {0.0, 1.0}
    obs, *_ = env.step(np.array([0.0, 1.0], dtype=np.float32))  # action 1
    assert env.observation_space.contains(obs)
    assert not isinstance(make_env("Pendulum-v1").action_space, OneHot)  # continuous envs untouched
    assert isinstance(gym.make("CartPole-v1").action_space, gym.spaces.Discrete)


def test_categorical_guide_is_one_hot_and_its_mode_is_the_argmax():
    guide = CategoricalGuide(3, DiscreteActions(4), hidden=(8,))
    states = torch.randn(6, 3)
    a = guide.act(states)
    assert a.shape == (6, 4) and torch.equal(a.sum(-1), torch.ones(6))
    logits = guide.net(states)
    assert torch.equal(guide.mode(states).argmax(-1), logits.argmax(-1))
    assert not guide.has_rsample and guide.discrete


def test_mixture_and_flow_beat_the_single_gaussian_on_the_bimodal_posterior():
    """Reverse KL makes a Gaussian sit on the heavier mode (KL(q‖p) ≈ −log 0.65, KL(p‖q) huge); the mixture and
    the flow put mass on both modes."""
    ka = _known_answer()
    problem = ka.PROBLEMS["bimodal_1d"]
    kl = {}
    for name in ("gaussian", "mixture", "flow"):
        guide = ka.fit(problem, name, "trace", steps=150, lr=5e-2, num_particles=4, hidden=(16, 16))
        kl[name] = ka.kl_divergences(problem, guide, samples=4000)
    print("KL(q‖p), KL(p‖q) after 150 steps:", {k: tuple(round(x, 3) for x in v) for k, v in kl.items()})
    reverse_g, forward_g = kl["gaussian"]
    assert reverse_g > 0.3 and forward_g > 2.0  # the single Gaussian misses the lighter mode
    for name in ("mixture", "flow"):
        reverse, forward = kl[name]
        assert reverse < 0.5 * reverse_g and forward < 0.1 * forward_g, name


def test_the_custom_guide_example_plugs_into_the_trainer(tmp_path):
    path = Path(__file__).resolve().parents[1] / "examples" / "custom_guide.py"
    spec = importlib.util.spec_from_file_location("custom_guide", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    from virel_ppl.inference.divergences import ScaledRenyiELBO
    from virel_ppl.train import train

    cfg = Config(
        env="Pendulum-v1", total_steps=130, warmup_steps=100, batch_size=16, hidden=(16,), eval_every=10_000,
        log_every=10, progress=False, tensorboard=False, threads=1, run_dir=tmp_path,
    )  # fmt: skip
    elbo = ScaledRenyiELBO(alpha=0.5, num_particles=4)
    result = train(cfg, policy_factory=lambda o, b: example.SharedStdTanhNormal(o, b, hidden=(16,)), elbo=elbo)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert result.steps == 130 and "log_std" in state["agent"]["policy"]
    assert not torch.equal(state["agent"]["policy"]["log_std"], torch.full((1,), -0.5))  # the E-step trained it

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from virel_ppl.inference.actions import ActionBox, TanhNormal, UniformBox


def test_unit_box_round_trip_and_edges():
    box = ActionBox([-2.0, 0.0], [1.0, 4.0])
    a = torch.tensor([[-2.0, 0.0], [1.0, 4.0], [-0.5, 2.0]])
    u = box.to_unit(a)
    assert torch.allclose(u, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))
    assert torch.allclose(box.from_unit(u), a)
    assert torch.allclose(box.clip(torch.tensor([5.0, -3.0])), torch.tensor([1.0, 0.0]))
    assert math.isclose(box.log_volume.item(), math.log(3.0) + math.log(4.0), rel_tol=1e-6)


def test_tanh_normal_density_integrates_to_one_on_asymmetric_box():
    box = ActionBox([-2.0], [1.0])
    d = TanhNormal(torch.tensor([0.7]), torch.tensor([0.8]), box)
    grid = torch.linspace(-2.0, 1.0, 200_001)[1:-1].unsqueeze(-1)
    density = d.log_prob(grid).exp()
    assert torch.trapezoid(density, grid.squeeze(-1)).item() == pytest.approx(1.0, abs=2e-3)
    # mode is the squashed mean
    assert d.mode.item() == pytest.approx(-0.5 + 1.5 * math.tanh(0.7), abs=1e-6)


def test_tanh_normal_log_prob_matches_change_of_variables_and_is_finite_at_edges():
    box = ActionBox([-3.0, -1.0], [3.0, 1.0])
    loc, scale = torch.tensor([0.2, -0.4]), torch.tensor([0.5, 1.3])
    d = TanhNormal(loc, scale, box)
    x = torch.tensor([0.3, -1.1])
    a = box.from_unit(torch.tanh(x))
    by_hand = (
        torch.distributions.Normal(loc, scale).log_prob(x) - torch.log1p(-(torch.tanh(x) ** 2)) - box.half_range.log()
    ).sum()
    assert d.log_prob(a).item() == pytest.approx(by_hand.item(), abs=1e-4)
    edges = torch.stack([box.low, box.high])
    assert torch.isfinite(d.log_prob(edges)).all()
    samples = d.sample((20_000,))
    assert (samples >= box.low).all() and (samples <= box.high).all()


def test_uniform_box_prior():
    box = ActionBox([-1.0, 0.0], [1.0, 0.5])
    prior = UniformBox(box).expand([5])
    assert prior.batch_shape == (5,) and prior.event_shape == (2,)
    s = prior.sample((1000,))
    assert (s >= box.low).all() and (s <= box.high).all()
    assert torch.allclose(prior.log_prob(s), torch.full((1000, 5), -math.log(2.0 * 0.5)))


def test_bad_spaces_are_rejected_with_clear_errors():
    with pytest.raises(TypeError, match="continuous Box"):
        ActionBox.from_space(spaces.Discrete(3))
    with pytest.raises(ValueError, match="bounded"):
        ActionBox.from_space(spaces.Box(-np.inf, np.inf, (2,)))
    with pytest.raises(ValueError, match="high > low"):
        ActionBox([1.0], [1.0])
    with pytest.raises(ValueError, match="shape"):
        ActionBox([0.0, 0.0], [1.0])


def _generic_tanh_normal(loc, scale, box):
    """The same distribution from torch's generic parts: a Gaussian pushed through tanh and the box's affine map."""
    from torch.distributions import AffineTransform, Independent, Normal, TanhTransform, TransformedDistribution

    transforms = [TanhTransform(cache_size=1), AffineTransform(box.center, box.half_range, event_dim=1, cache_size=1)]
    return TransformedDistribution(Independent(Normal(loc, scale), 1), transforms)


def test_tanh_normal_gives_the_numbers_of_torchs_generic_transformed_distribution_bit_for_bit():
    """TanhNormal writes construction, rsample and log_prob out by hand for speed: every number (samples, densities
    of its own and of other actions, gradients) must be the generic composition's, exactly."""
    box = ActionBox([-2.0, 0.0, -1.0], [1.0, 4.0, 1.0])
    torch.manual_seed(3)
    loc = torch.randn(64, 3, requires_grad=True)
    scale = (torch.rand(64, 3) + 0.1).requires_grad_()
    ours, generic = TanhNormal(loc, scale, box), _generic_tanh_normal(loc, scale, box)
    assert ours.batch_shape == generic.batch_shape == (64,) and ours.event_shape == generic.event_shape == (3,)

    torch.manual_seed(0)
    a_ours = ours.rsample()
    torch.manual_seed(0)
    a_generic = generic.rsample()
    assert torch.equal(a_ours, a_generic)
    lp_ours, lp_generic = ours.log_prob(a_ours), generic.log_prob(a_generic)  # each from its cached pre-image
    assert torch.equal(lp_ours, lp_generic)
    grads_ours = torch.autograd.grad((lp_ours - a_ours.sum(-1)).sum(), [loc, scale])
    grads_generic = torch.autograd.grad((lp_generic - a_generic.sum(-1)).sum(), [loc, scale])
    assert all(torch.equal(g, h) for g, h in zip(grads_ours, grads_generic))

    torch.manual_seed(1)
    s_ours = ours.sample((5,))
    torch.manual_seed(1)
    s_generic = generic.sample((5,))
    assert torch.equal(s_ours, s_generic) and s_ours.shape == (5, 64, 3) and not s_ours.requires_grad
    actions = box.from_unit(torch.rand(5, 64, 3) * 1.8 - 0.9)  # not a sample: log_prob inverts tanh itself
    assert torch.equal(ours.log_prob(actions), generic.log_prob(actions))


def test_tanh_normal_expand_and_kl_behave_like_a_transformed_distribution():
    box = ActionBox([-1.0, -3.0], [1.0, 1.0])
    loc1, scale1 = torch.tensor([[0.3, -0.2]]), torch.tensor([[0.5, 1.5]])
    loc2, scale2 = torch.tensor([[-0.1, 0.4]]), torch.tensor([[0.8, 1.0]])
    d1, d2 = TanhNormal(loc1, scale1, box), TanhNormal(loc2, scale2, box)
    # pyro.plate expands to the shape a site already has: the same distribution
    assert d1.expand([1]) is d1
    wide = d1.expand([4, 1])
    assert wide.batch_shape == (4, 1) and torch.equal(wide.log_prob(d1.mode), d1.log_prob(d1.mode).expand(4, 1))
    # both on one box: the KL is that of the Gaussians, Σ log(σ2/σ1) + (σ1² + (μ1 − μ2)²)/(2σ2²) − ½
    by_hand = sum(
        math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
        for m1, s1, m2, s2 in zip(loc1[0].tolist(), scale1[0].tolist(), loc2[0].tolist(), scale2[0].tolist())
    )
    assert torch.distributions.kl_divergence(d1, d2).item() == pytest.approx(by_hand, rel=1e-5)
    with pytest.raises(NotImplementedError):  # another box: no closed form
        torch.distributions.kl_divergence(d1, TanhNormal(loc2, scale2, ActionBox([-2.0, -3.0], [2.0, 1.0])))

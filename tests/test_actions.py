import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from virel_ppl.actions import ActionBox, TanhNormal, UniformBox


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

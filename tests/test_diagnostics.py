"""Action-posterior diagnostics: PSIS k̂ against known answers, the InferenceData layout, and the trainer's log."""

import math

import helpers
import numpy as np
import pytest
import torch
from torch import nn

from virel_ppl.analysis import arviz_compat
from virel_ppl.analysis.diagnostics import (
    BoltzmannTarget,
    action_posterior,
    importance_diagnostics,
    plot_action_posterior,
    psis,
)
from virel_ppl.cli import main
from virel_ppl.config import Config
from virel_ppl.inference.actions import ActionBox, TanhNormal
from virel_ppl.runtime.logger import read_csv
from virel_ppl.train import train

BOX = ActionBox([-1.0, -2.0], [1.0, 2.0])


class FixedTanhGuide(nn.Module):
    """π(a|s) = TanhNormal(loc + s·W, scale) on BOX: a guide whose density we know exactly."""

    def __init__(self, loc, scale):
        super().__init__()
        self.loc, self.scale = torch.tensor(loc), torch.tensor(scale)
        self.w = torch.linspace(-0.5, 0.5, 6).reshape(3, 2)

    def distribution(self, states):
        return TanhNormal(self.loc + states @ self.w, self.scale.expand(len(states), 2), BOX)


def uniform_prior(states):
    return BOX.uniform()


def target_equal_to(guide: FixedTanhGuide, eps: float) -> BoltzmannTarget:
    """Q = ε·log π(a|s): with the uniform prior, exp(Q/ε)·prior ∝ π, so the target *is* ``guide``."""
    return BoltzmannTarget(lambda s, a: eps * guide.distribution(s).log_prob(a), uniform_prior, eps)


def quadratic_target(center, width: float, eps: float = 1.0) -> BoltzmannTarget:
    """exp(Q/ε) = exp(−|a − center|²/(2 width²)): a Gaussian bump (cut to the box)."""
    c = torch.tensor(center)
    return BoltzmannTarget(lambda s, a: -eps * (a - c).pow(2).sum(-1) / (2 * width**2), uniform_prior, eps)


@pytest.fixture
def states():
    return torch.randn(8, 3, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("eps", [0.1, 1.0, 5.0])
def test_guide_equal_to_target_has_low_khat_full_ess_and_zero_kl(states, eps):
    guide = FixedTanhGuide([0.2, -0.3], [0.5, 0.8])
    d = importance_diagnostics(guide, target_equal_to(guide, eps), states, num_samples=256)
    assert (d.khat < 0.5).all(), d.khat
    np.testing.assert_allclose(d.ess, 256, rtol=1e-6)
    assert np.abs(d.kl).max() < 1e-6


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7, 0.9])
def test_khat_matches_the_known_tail_of_a_too_narrow_guide(states, ratio):
    """Guide TanhNormal(μ, rσ) against target TanhNormal(μ, σ): log w = z²(1 − r²)/2 for z ~ N(0, 1), so the
    weights have a Pareto tail of shape k = 1 − r² (the tanh and box Jacobians cancel)."""
    target = target_equal_to(FixedTanhGuide([0.2, -0.3], [0.4, 0.6]), eps=0.5)
    guide = FixedTanhGuide([0.2, -0.3], [0.4 * ratio, 0.6 * ratio])
    khat = importance_diagnostics(guide, target, states, num_samples=2000).khat
    assert abs(khat.mean() - (1 - ratio**2)) < 0.15, khat


def test_khat_is_negative_when_the_guide_is_wider_than_the_target(states):
    target = target_equal_to(FixedTanhGuide([0.2, -0.3], [0.4, 0.6]), eps=0.5)
    d = importance_diagnostics(FixedTanhGuide([0.2, -0.3], [0.5, 0.75]), target, states, num_samples=2000)
    assert (d.khat < 0).all(), d.khat  # bounded weights
    assert (d.ess > 0.8 * 2000).all()  # E_π[w²] = Π_dims r²/√(2r² − 1) ≈ 1.15 for r = 1.25: ESS ≈ 0.87 n


def test_khat_is_high_for_a_narrow_guide_far_from_a_broad_target(states):
    guide = FixedTanhGuide([math.atanh(0.8), math.atanh(0.8)], [0.05, 0.05])  # near a = (0.8, 1.6)
    d = importance_diagnostics(guide, quadratic_target([-0.5, -1.0], width=1.0), states, num_samples=2000)
    assert (d.khat > 0.7).all(), d.khat
    assert d.summary()["khat_bad_frac"] == 1.0
    assert (d.ess < 0.1 * 2000).all() and (d.kl > 1.0).all()


def test_psis_recovers_the_shape_of_generalised_pareto_weights():
    rng = np.random.default_rng(0)
    for k in (0.3, 0.6, 0.9):
        w = 1 + (rng.uniform(size=(8, 4000)) ** -k - 1) / k  # 1 + GPD(ξ = k), by inversion
        _, khat = psis(np.log(w))
        assert abs(khat.mean() - k) < 0.1, (k, khat)
    smoothed, khat = psis(np.zeros((2, 100)))
    assert np.all(khat == -np.inf) and np.allclose(np.exp(smoothed).sum(-1), 1.0)


def test_target_draws_recover_a_known_posterior_even_when_the_guide_misses_it(states):
    """Target ∝ N(center, 0.15²) inside the box. Resampling from ½π + ½prior finds it from a broad guide and from
    a narrow guide far away alike (resampling from the guide alone could not)."""
    center = [0.3, -0.4]
    target = quadratic_target(center, width=0.15, eps=0.5)
    for guide in (FixedTanhGuide([0.0, 0.0], [1.0, 1.0]), FixedTanhGuide([1.5, 1.5], [0.05, 0.05])):
        post = action_posterior(guide, target, states[:3], num_samples=2000, seed=0)
        a = post.idata["target"]["a"]
        np.testing.assert_allclose(a.mean(("chain", "draw")).values, [center] * 3, atol=0.03)
        np.testing.assert_allclose(a.std(("chain", "draw")).values, 0.15, atol=0.03)
        # the prior half alone gives ≈ n × (bump area 2πσ² / box area 8) ≈ 35 effective draws
        assert (post.target_ess > 25).all(), post.target_ess
    far = post.idata.posterior["a"].mean(("chain", "draw")).values
    assert (far[:, 0] > 0.8).all()  # the guide draws themselves stay where the guide is


def test_action_posterior_is_inference_data_with_named_dims(states, tmp_path):
    guide = FixedTanhGuide([0.2, -0.3], [0.5, 0.8])
    post = action_posterior(guide, quadratic_target([0.3, -0.4], 0.5), states[:3], num_samples=400, num_chains=4)
    idata = post.idata
    assert {"posterior", "target", "sample_stats", "constant_data", "psis"} <= set(arviz_compat.group_names(idata))
    for group in ("posterior", "target"):
        assert idata[group]["a"].dims == ("chain", "draw", "state", "action_dim")
        assert idata[group]["a"].shape == (4, 100, 3, 2)
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw", "state")
    assert float(idata.constant_data["eps"]) == 1.0
    np.testing.assert_allclose(idata.constant_data["obs"].values, states[:3].numpy())
    np.testing.assert_allclose(idata["psis"]["khat"].values, post.diagnostics.khat)
    # the guide group really holds π draws: its mean matches the guide's
    mean = guide.distribution(states[:3]).sample((20_000,)).mean(0).numpy()
    np.testing.assert_allclose(idata.posterior["a"].mean(("chain", "draw")).values, mean, atol=0.06)
    summary = arviz_compat.import_arviz().summary(idata, kind="stats")  # the ArviZ object works with ArviZ
    assert list(summary.index)[:2] == ["a[0, 0]", "a[0, 1]"] and len(summary) == 6
    assert "| 2 | 1 |" in post.table()
    fig = plot_action_posterior(post, tmp_path / "p.png")
    assert len(fig.axes) == 6 and (tmp_path / "p.png").stat().st_size > 10_000
    assert "k̂" in fig.axes[0].get_title()


def test_diagnostics_are_seeded_and_leave_the_global_rng_alone(states):
    guide = FixedTanhGuide([0.2, -0.3], [0.3, 0.8])
    target = quadratic_target([0.3, -0.4], 0.5)
    before = torch.get_rng_state()
    a = importance_diagnostics(guide, target, states, seed=7)
    action_posterior(guide, target, states[:2], num_samples=100, seed=7)
    assert torch.equal(before, torch.get_rng_state())
    b = importance_diagnostics(guide, target, states, seed=7)
    c = importance_diagnostics(guide, target, states, seed=8)
    assert np.array_equal(a.khat, b.khat) and not np.array_equal(a.khat, c.khat)


def test_bad_inputs_are_rejected(states):
    with pytest.raises(ValueError, match="eps must be > 0"):
        quadratic_target([0.0, 0.0], 1.0, eps=0.0)
    with pytest.raises(ValueError, match="multiple of num_chains"):
        action_posterior(FixedTanhGuide([0.0, 0.0], [1.0, 1.0]), quadratic_target([0, 0], 1.0), states, 10, 4)
    with pytest.raises(ValueError, match="NaN/inf"):
        psis(np.array([[0.0, np.nan, 1.0]]))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("run")
    cfg = Config(**{**helpers.TINY, "eval_every": 100}, env="Pendulum-v1", total_steps=300, alpha=0.5, run_dir=run_dir)
    train(cfg)
    return run_dir


def test_training_logs_khat_and_eps_next_to_returns(tiny_run):
    diag, ev = read_csv(tiny_run / "diagnostics.csv"), read_csv(tiny_run / "eval.csv")
    assert diag["step"] == ev["step"] == [100.0, 200.0, 300.0]
    assert diag["eps"] == [0.5, 0.5, 0.5]
    for col in ("khat_mean", "khat_max", "khat_bad_frac", "ess_frac", "kl"):
        assert all(math.isfinite(v) for v in diag[col]), col
    assert all(m <= x for m, x in zip(diag["khat_mean"], diag["khat_max"]))
    assert all(0 < f <= 1 for f in diag["ess_frac"]) and all(k >= 0 for k in diag["kl"])


def test_cli_diagnose_writes_plot_table_and_inference_data(tiny_run, capsys):
    main(["diagnose", str(tiny_run), "--num-states", "3", "--num-samples", "400", "--states", "replay"])
    out = capsys.readouterr().out
    assert "k̂" in out
    for name in ("action_posterior.png", "action_posterior.md", "action_posterior.nc"):
        assert (tiny_run / "posterior" / name).exists(), name
    idata = arviz_compat.from_netcdf(str(tiny_run / "posterior" / "action_posterior.nc"))
    assert idata.posterior["a"].shape == (4, 100, 3, 1)
    assert float(idata.constant_data["eps"]) == 0.5  # the last ε of train.csv

"""Wiring: every setting that changes what an update computes, checked where it takes effect.

The known answers (``test_known_answers.py``) check each helper's value; these tests check that the value reaches its
point of use. Each sets one ``Config`` field to a non-default value and checks its effect on one ``agent.update``
from a fixed state (or on a run through ``train()`` or the command line) against a number worked out by hand here.
They go through the public seams only — ``VirelAgent(...)``, ``agent.update``, ``agent.state_dict()``, ``train()``,
``virel_ppl train`` and ``examples/mujoco_svi.py`` — so that they hold across a restructuring of the package.

The fixed state: a critic whose networks output constants (Q1 ≡ 1, Q2 ≡ 2, V ≡ 3, V̄ ≡ 5; last layer zero weights),
the hand-made batch of ``test_known_answers`` (γ = 0.9: TD-MSE 19.375), and, where a density must be known by hand, a
guide that is uniform on a sub-interval of the action box (log π constant).
"""

from __future__ import annotations

import json
import math
import runpy
import sys

import gymnasium as gym
import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import TINY
from torch import nn

from virel_ppl.agent import VirelAgent
from virel_ppl.config import Config
from virel_ppl.inference.actions import ActionBox
from virel_ppl.inference.em import Batch
from virel_ppl.inference.guides import DiagonalGaussianGuide, PolicyGuide
from virel_ppl.runtime.logger import read_csv
from virel_ppl.train import Trainer, train

BOX = ActionBox([-1.0], [1.0])
LOG2 = math.log(2.0)
REWARDS = torch.tensor([1.0, -2.0, 0.5, 3.0])
TERMINATED = torch.tensor([0.0, 1.0, 0.0, 0.0])
# With Q1 ≡ 1, Q2 ≡ 2, V̄ ≡ 5 and γ = 0.9: targets r + γ(1 − d)·5 = [5.5, −2, 5, 7.5];
# E[δ1²] = (4.5² + 3² + 4² + 6.5²)/4 = 21.875, E[δ2²] = (3.5² + 4² + 3² + 5.5²)/4 = 16.875, TD-MSE = their mean.
TD_MSE_GAMMA_09 = 19.375
# With the default γ = 0.99: targets [5.95, −2, 5.45, 7.95]; E[δ1²] = (4.95² + 3² + 4.45² + 6.95²)/4 = 25.401875,
# E[δ2²] = (3.95² + 4² + 3.45² + 5.95²)/4 = 19.726875.
TD_MSE_GAMMA_099 = 0.5 * (25.401875 + 19.726875)


def batch(obs_dim: int = 3) -> Batch:
    g = torch.Generator().manual_seed(0)
    obs, next_obs = torch.randn(4, obs_dim, generator=g), torch.randn(4, obs_dim, generator=g)
    return Batch(obs, torch.zeros(4, 1), REWARDS, next_obs, TERMINATED)


class UniformGuide(PolicyGuide):
    """π(a|s) uniform on [low, high] (1-d), whatever the state: log π = −log(high − low) for every action. Its one
    parameter enters multiplied by zero, so that Pyro registers a parameter and the E-step has one to step."""

    def __init__(self, low: float, high: float, box: ActionBox = BOX) -> None:
        super().__init__()
        self.box, self.low, self.high = box, low, high
        self.unused = nn.Parameter(torch.zeros(()))

    def distribution(self, states):
        low = torch.full((states.shape[0], 1), self.low) + 0.0 * self.unused
        return dist.Uniform(low, torch.full_like(low, self.high)).to_event(1)

    def mode(self, states):
        return torch.full((states.shape[0], 1), 0.5 * (self.low + self.high))


def constant(net: nn.Sequential, value: float) -> None:
    with torch.no_grad():
        net[-1].weight.zero_()
        net[-1].bias.fill_(value)


def agent_at_fixed_state(policy: PolicyGuide | None = None, **cfg) -> VirelAgent:
    """An agent whose critic outputs Q1 ≡ 1, Q2 ≡ 2, V ≡ 3, V̄ ≡ 5, on a 1-d box [−1, 1], 3-d states."""
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    agent = VirelAgent(3, BOX, Config(**{"hidden": (4,), **cfg}), policy=policy)
    critic = agent.critic
    for net, value in ((critic.q1, 1.0), (critic.q2, 2.0), (critic.v, 3.0), (critic.v_target, 5.0)):
        constant(net, value)
    return agent


def update(agent: VirelAgent, b: Batch | None = None) -> dict[str, float]:
    with pyro.validation_enabled(False):
        stats = agent.update(batch() if b is None else b)
    return {k: float(v) for k, v in stats.items()}


# --- the M-step: γ, τ, the value target ---------------------------------------------------------------------------


@pytest.mark.parametrize(("gamma", "td_mse"), [(0.9, TD_MSE_GAMMA_09), (None, TD_MSE_GAMMA_099)])
def test_gamma_reaches_the_bellman_target_of_the_update(gamma, td_mse):
    agent = agent_at_fixed_state(**({} if gamma is None else {"gamma": gamma}))
    stats = update(agent)
    assert stats["critic/td_mse"] == pytest.approx(td_mse, rel=1e-6)
    assert stats["critic/q_loss"] == pytest.approx(td_mse, rel=1e-6)


def test_tau_is_the_rate_of_the_target_value_update():
    """ψ̄ ← (1 − τ) ψ̄ + τ ψ, with τ = 0.3 and ψ as the M-step left it."""
    agent = agent_at_fixed_state(tau=0.3)
    before = {k: v.clone() for k, v in agent.state_dict()["critic"].items()}
    update(agent)
    after = agent.state_dict()["critic"]
    targets = [k for k in after if k.startswith("v_target.")]
    assert targets
    for k in targets:
        expected = 0.7 * before[k] + 0.3 * after[k.replace("v_target.", "v.", 1)]
        assert torch.allclose(after[k], expected, atol=1e-7), k


@pytest.mark.parametrize(("algo", "alpha", "v_target"), [("virel", 0.37, 1.0), ("sac", 0.37, 1.0 - 0.37 * LOG2)])
def test_alpha_reaches_the_value_target(algo, alpha, v_target):
    """Hard target E_π[Q] = 1; SAC's soft target E_π[Q − α log π] with π uniform on [−¼, ¼]: log π = log 2, so
    1 − α log 2. V ≡ 3, so J_V = ½ (3 − target)²."""
    agent = agent_at_fixed_state(UniformGuide(-0.25, 0.25), algo=algo, alpha=alpha)
    stats = update(agent)
    assert stats["critic/v_loss"] == pytest.approx(0.5 * (3.0 - v_target) ** 2, rel=1e-6)


# --- ε and the E-step ---------------------------------------------------------------------------------------------

# With π uniform on [−½, ½] (log π = 0), the prior uniform on [−1, 1] (log p = −log 2) and Q = min(Q1, Q2) = 1, the
# ELBO of a state is Q/ε + log p − log π = 1/ε − log 2, and the E-step minimises −ε·ELBO/N summed over the N states:
# actor/loss = −ε (1/ε − log 2) = −1 + ε log 2. So the loss shows the ε the E-step was given. (The E-step sees the
# critic after the M-step's step: a critic rate of 1e-10 keeps Q at 1 to 1e-9.)


def e_step_loss(eps: float) -> float:
    return -1.0 + eps * LOG2


def test_alpha_is_the_fixed_temperature_of_the_e_step():
    stats = update(agent_at_fixed_state(UniformGuide(-0.5, 0.5), alpha=0.37, critic_lr=1e-10))
    assert stats["eps"] == pytest.approx(0.37)
    assert stats["actor/loss"] == pytest.approx(e_step_loss(0.37), rel=1e-6)


@pytest.mark.parametrize(
    ("cfg", "lam"),
    [
        ({"beta_scale": 0.01}, 0.01),  # λ given
        ({"env": "Humanoid-v5"}, 4e-4),  # App. I's per-task value
        ({"env": "HalfCheetah-v5"}, 0.1 / 1.625),  # no table value: (1 − γ)/mean|r| = 0.1/1.625
    ],
)
def test_beta_lambda_reaches_the_e_step(cfg, lam):
    agent = agent_at_fixed_state(UniformGuide(-0.5, 0.5), algo="beta", gamma=0.9, critic_lr=1e-10, **cfg)
    stats = update(agent)
    eps = lam * TD_MSE_GAMMA_09
    assert stats["eps"] == pytest.approx(eps, rel=1e-5)
    assert stats["actor/loss"] == pytest.approx(e_step_loss(eps), rel=1e-5)


# --- learning rates, networks, batch ---------------------------------------------------------------------------


def max_change(before: dict, after: dict, prefix: str = "") -> float:
    return max((after[k] - before[k]).abs().max().item() for k in before if k.startswith(prefix))


def test_each_learning_rate_is_the_first_adam_step_of_its_own_network():
    """Adam's first step moves each weight by lr · g/(|g| + 1e-8) ≈ lr: the largest move is the learning rate."""
    agent = VirelAgent(3, BOX, Config(hidden=(8,), critic_lr=3e-3, policy_lr=2e-2))
    before = {k: {n: t.clone() for n, t in agent.state_dict()[k].items()} for k in ("critic", "policy")}
    update(agent)
    after = agent.state_dict()
    trainable = {k: v for k, v in before["critic"].items() if not k.startswith("v_target.")}
    assert max_change(trainable, after["critic"]) == pytest.approx(3e-3, rel=1e-3)
    assert max_change(before["policy"], after["policy"]) == pytest.approx(2e-2, rel=1e-3)


def widths(net: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]


def test_hidden_sizes_shape_every_network():
    agent = VirelAgent(3, ActionBox([-1.0] * 2, [1.0] * 2), Config(hidden=(7, 5)))
    assert widths(agent.policy) == [(3, 7), (7, 5), (5, 4)]  # mean and log-std of 2 actions
    for net in (agent.critic.q1, agent.critic.q2):
        assert widths(net) == [(5, 7), (7, 5), (5, 1)]
    for net in (agent.critic.v, agent.critic.v_target):
        assert widths(net) == [(3, 7), (7, 5), (5, 1)]


def test_batch_size_and_update_schedule_through_train(tmp_path):
    """Updates start at step max(warmup, batch) = 100 and come one per step: steps 100..130 make 31 updates, each on
    a batch of 24 transitions."""
    sizes: list[int] = []

    def spy(trainer, step):
        if step == 1:
            inner = trainer.agent.update

            def recorded(b, step=None):
                sizes.append(b.obs.shape[0])
                return inner(b, step=step)

            trainer.agent.update = recorded

    cfg = Config(env="Pendulum-v1", **{**TINY, "batch_size": 24}, total_steps=130, run_dir=tmp_path / "r")
    train(cfg, hooks=[spy])
    assert sizes == [24] * 31


# --- the reward scale ---------------------------------------------------------------------------------------------


def env_rewards(env_id: str, seed: int, actions) -> list[float]:
    """The task's own rewards for ``actions`` from a fresh copy reset with ``seed`` (the trainer's first episode)."""
    env = gym.make(env_id)
    env.reset(seed=seed)
    rewards = [float(env.step(a.numpy())[1]) for a in actions]
    env.close()
    return rewards


@pytest.mark.parametrize(("env_id", "reward_scale", "scale"), [("Pendulum-v1", 2.5, 2.5), ("Pendulum-v1", None, 1.0)])
def test_reward_scale_multiplies_the_stored_rewards(env_id, reward_scale, scale):
    trainer = Trainer(Config(env=env_id, reward_scale=reward_scale, seed=3, **TINY))
    for _ in range(5):
        trainer.collect()
    raw = env_rewards(env_id, 3, trainer.replay.actions[:5])
    assert trainer.replay.rewards[:5].tolist() == pytest.approx([scale * r for r in raw], rel=1e-5)


# --- presets through the command line ---------------------------------------------------------------------------

ENTRY_POINTS = ["virel_ppl train", "examples/mujoco_svi.py"]


def run_command(entry: str, args: list[str], monkeypatch) -> None:
    from virel_ppl import cli

    if entry == "virel_ppl train":
        cli.main(["train", *args])
    else:
        monkeypatch.setattr(sys, "argv", ["mujoco_svi.py", *args])
        runpy.run_path("examples/mujoco_svi.py", run_name="__main__")


SHORT = ["--total-steps", "4", "--warmup-steps", "0", "--batch-size", "2", "--hidden", "8", "8", "--eval-every", "4"]
SHORT += ["--eval-episodes", "1", "--log-every", "1", "--no-progress", "--no-tensorboard"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(("env_id", "scale"), [("HalfCheetah-v5", 5.0), ("Walker2d-v5", 3.0), ("Hopper-v5", 5.0)])
def test_paper_preset_reward_scale_of_each_task_through_the_command_line(entry, env_id, scale, tmp_path, monkeypatch):
    """App. I's reward scales (HalfCheetah 5, Walker2d 3, Hopper 5): the checkpoint's replay holds scale × the task's
    own rewards for the actions the run took."""
    run_dir = tmp_path / "run"
    run_command(entry, ["--preset", "paper", "--env", env_id, "--run-dir", str(run_dir), *SHORT], monkeypatch)
    replay = torch.load(run_dir / "checkpoint.pt", weights_only=False)["replay"]
    n = 2  # the first episode is longer than this
    raw = env_rewards(env_id, 0, replay["actions"][:n])
    assert replay["rewards"][:n].tolist() == pytest.approx([scale * r for r in raw], rel=1e-5)
    assert json.loads((run_dir / "config.json").read_text())["hidden"] == [8, 8]  # the typed flag beat the preset


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(("preset", "lam"), [(True, 4e-4), (False, 4e-4)])
def test_humanoid_beta_lambda_through_the_command_line(entry, preset, lam, tmp_path, monkeypatch):
    """Humanoid's λ = 4e-4 (App. I), with the paper preset and without: every logged ε is λ × the TD-MSE of the same
    update."""
    run_dir = tmp_path / "run"
    args = (["--preset", "paper"] if preset else []) + ["--env", "Humanoid-v5", "--algo", "beta"]
    run_command(entry, [*args, "--run-dir", str(run_dir), *SHORT], monkeypatch)
    rows = (run_dir / "train.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged = [dict(zip(header, map(float, r.split(",")))) for r in rows[1:]]
    assert logged
    for row in logged:
        assert row["eps"] == pytest.approx(max(lam * row["critic/td_mse"], 1e-6), rel=1e-5)


# --- MPO's old policy -------------------------------------------------------------------------------------------


def old_policy_net(agent: VirelAgent) -> dict[str, torch.Tensor]:
    prefix = "old_policy.net."
    return {k.removeprefix(prefix): v.clone() for k, v in agent.state_dict()["variant"].items() if k.startswith(prefix)}


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("algo", ["mpo", "mpo_np"])
def test_old_policy_period_is_the_number_of_updates_between_copies(algo):
    agent = VirelAgent(3, BOX, Config(algo=algo, hidden=(8,), old_policy_period=3))
    copied = []
    for _ in range(6):
        update(agent)
        copied.append(same(old_policy_net(agent), agent.state_dict()["policy"]))
    assert copied == [False, False, True, False, False, True]


@pytest.mark.parametrize("algo", ["mpo", "mpo_np"])
def test_old_policy_tau_is_the_rate_of_the_polyak_update(algo):
    agent = VirelAgent(3, BOX, Config(algo=algo, hidden=(8,), old_policy_period=0, old_policy_tau=0.25))
    before = old_policy_net(agent)
    update(agent)
    after, policy = old_policy_net(agent), agent.state_dict()["policy"]
    for k in before:
        assert torch.allclose(after[k], 0.75 * before[k] + 0.25 * policy[k], atol=1e-7), k


# --- SAC's temperature ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("target_entropy", "direction"), [(None, -1.0), (-0.2, 1.0)])
def test_target_entropy_and_dual_lr_set_the_temperature_step(target_entropy, direction):
    """π uniform on [−¼, ¼]: log π = log 2 = 0.693. ∂/∂log α of −α(log π + H̄) is −α(0.693 + H̄): positive for the
    default H̄ = −action_dim = −1 (α goes down), negative for H̄ = −0.2 (α goes up). Adam's first step moves log α by
    the dual learning rate 0.05; ε of the update is α before its step."""
    agent = agent_at_fixed_state(
        UniformGuide(-0.25, 0.25), algo="sac_auto", alpha=0.5, dual_lr=0.05, target_entropy=target_entropy
    )
    stats = update(agent)
    assert stats["eps"] == pytest.approx(0.5)
    assert stats["sac/alpha"] == pytest.approx(0.5 * math.exp(direction * 0.05), rel=1e-5)
    assert stats["sac/entropy"] == pytest.approx(-LOG2, rel=1e-6)


# --- non-parametric MPO: η's bound, the KL bound, the sample count ------------------------------------------------


@pytest.mark.parametrize(("eta_bound", "direction"), [(10.0, -1.0), (1e-8, 1.0), (None, 0.0)])
def test_mpo_eta_bound_sets_the_direction_of_the_temperature_dual(eta_bound, direction):
    """g(η) = η ε_η + η E log mean_j exp(Q_j/η) has dg/dη = ε_η − E KL(w ‖ uniform), and 0 ≤ KL ≤ log M = log 20 =
    3.0: with ε_η = 10 η goes down, with ε_η = 1e-8 (below the KL of any non-constant Q) it goes up, by Adam's first
    step exp(±dual_lr); without a bound η stays alpha."""
    agent = VirelAgent(3, BOX, Config(algo="mpo_np", hidden=(8,), alpha=0.5, dual_lr=0.05, mpo_eta_bound=eta_bound))
    stats = update(agent)
    assert stats["eps"] == pytest.approx(0.5)
    assert stats["mpo/eta"] == pytest.approx(0.5 * math.exp(direction * 0.05), rel=1e-5)


@pytest.mark.parametrize(("kl_bound", "up"), [(1e-12, True), (1.0, False)])
def test_mpo_kl_bound_sets_the_direction_of_the_lagrange_dual(kl_bound, up):
    """The λ dual min λ (ε_KL − KL): at the first update KL(π_old ‖ π_θ) = 0 (π_old is π_θ), so λ goes down by Adam's
    first step; at the second, KL > 0 is the KL logged after the first, and λ goes up exactly when the bound is
    below it."""
    agent = VirelAgent(3, BOX, Config(algo="mpo_np", hidden=(8,), dual_lr=0.05, mpo_kl_bound=kl_bound))
    first, second, third = (update(agent) for _ in range(3))
    assert first["mpo/lagrange"] == 1.0
    assert second["mpo/lagrange"] < 1.0  # by exp(−0.05) where the gradient λ ε_KL is ≫ Adam's 1e-8
    if kl_bound == 1.0:
        assert second["mpo/lagrange"] == pytest.approx(math.exp(-0.05), rel=1e-5)
    assert 1e-12 < first["mpo/kl"] < 1.0
    assert (third["mpo/lagrange"] > second["mpo/lagrange"]) == up


def recording_q(agent: VirelAgent) -> list[tuple[torch.Size, torch.Tensor, torch.Tensor]]:
    """Wrap the critic's Q(s, a) to record every batch of actions it scores: (shape, actions, Q values)."""
    seen: list[tuple[torch.Size, torch.Tensor, torch.Tensor]] = []
    inner = agent.critic.q

    def q(states, actions):
        out = inner(states, actions)
        seen.append((actions.shape, actions.detach().clone(), out.detach().clone()))
        return out

    agent.critic.q = q
    return seen


def test_mpo_num_actions_is_the_number_of_prior_samples_per_state():
    agent = VirelAgent(3, BOX, Config(algo="mpo_np", hidden=(8,), mpo_num_actions=7))
    seen = recording_q(agent)
    update(agent)
    shapes = {s for s, *_ in seen}
    assert torch.Size([7, 4, 1]) in shapes and torch.Size([20, 4, 1]) not in shapes


# --- particles and Rényi's α ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("elbo", "particles", "expected"), [("trace", 3, 3), ("trace", None, 1), ("renyi", 5, 5)])
def test_num_particles_is_the_number_of_e_step_samples_per_state(elbo, particles, expected):
    agent = VirelAgent(3, BOX, Config(hidden=(8,), elbo=elbo, num_particles=particles))
    seen = recording_q(agent)
    update(agent)
    e_step_shapes = {s for s, *_ in seen} - {torch.Size([4, 1])}  # the value target scores one action per state
    assert e_step_shapes == ({torch.Size([expected, 4, 1])} if expected > 1 else set())
    assert len(seen) == 2  # the value target's call, then the E-step's


@pytest.mark.parametrize("renyi_alpha", [0.3, -1.0])
def test_renyi_alpha_is_the_order_of_the_bound_the_e_step_minimises(renyi_alpha):
    """With π uniform on [−½, ½] and the prior uniform on [−1, 1], the weight of particle k at state s is
    log w_sk = Q(s, a_sk)/ε − log 2 (ε = 1). The E-step reports −(ε/N) Σ_s 1/(1−α) log (1/K) Σ_k w_sk^{1−α},
    computed here from the Q values the critic returned for the E-step's particles."""
    config = Config(hidden=(8,), elbo="renyi", num_particles=6, renyi_alpha=renyi_alpha)
    agent = VirelAgent(3, BOX, config, policy=UniformGuide(-0.5, 0.5))
    inner = agent.critic.q
    agent.critic.q = lambda s, a: inner(s, a) + 3.0 * a.sum(-1)  # a Q that varies a lot with the action
    seen = recording_q(agent)
    stats = update(agent)
    (q,) = [out for shape, _, out in seen if shape == torch.Size([6, 4, 1])]
    log_w = q - LOG2  # (K, N)
    one_minus = 1.0 - renyi_alpha
    bound = (torch.logsumexp(one_minus * log_w, 0) - math.log(6)) / one_minus
    assert stats["actor/loss"] == pytest.approx(-(1.0 / 4) * bound.sum().item(), rel=1e-5)


# --- twins: every code path of a computation meets the same known answer ----------------------------------------

PATHS = ["fast", "fast, sync-free", "SVI.step", "graph-ready"]


def on_path(path: str, policy: PolicyGuide | None = None, **cfg) -> VirelAgent:
    """The agent at the fixed state, updating through one of its code paths: the fast E-step (on the CPU Pyro's
    per-site floats; sync-free: ``DeviceTrace_ELBO``, as a captured update on a GPU), ``SVI.step``, or the code a CUDA
    graph captures (``graphs.CudaGraph``'s static buffers), run without capturing."""
    from virel_ppl.inference.em import DeviceTrace_ELBO

    agent = agent_at_fixed_state(policy, **cfg, **({"fast_update": False} if path == "SVI.step" else {}))
    if path == "fast, sync-free":  # what a captured update runs for --elbo trace
        agent.e_step.loss = DeviceTrace_ELBO(num_particles=1, vectorize_particles=True, max_plate_nesting=1)
    elif path == "graph-ready":
        agent.use_graph(capture=False)
    return agent


@pytest.mark.parametrize("path", PATHS)
def test_every_update_path_meets_the_beta_and_e_step_known_answers(path):
    """ε = λ · TD-MSE = 0.01 · 19.375 before the critic moves; the E-step loss −1 + ε log 2; ψ̄ ← 0.7 ψ̄ + 0.3 ψ."""
    agent = on_path(path, UniformGuide(-0.5, 0.5), algo="beta", gamma=0.9, beta_scale=0.01, tau=0.3, critic_lr=1e-10)
    before = {k: v.clone() for k, v in agent.state_dict()["critic"].items()}
    stats = update(agent)
    assert stats["critic/td_mse"] == pytest.approx(TD_MSE_GAMMA_09, rel=1e-6)
    assert stats["eps"] == pytest.approx(0.01 * TD_MSE_GAMMA_09, rel=1e-6)
    assert stats["actor/loss"] == pytest.approx(e_step_loss(0.01 * TD_MSE_GAMMA_09), rel=1e-6)
    after = agent.state_dict()["critic"]
    for k in (k for k in after if k.startswith("v_target.")):
        assert torch.allclose(after[k], 0.7 * before[k] + 0.3 * after[k.replace("v_target.", "v.", 1)], atol=1e-7)


@pytest.mark.parametrize("path", PATHS)
def test_every_update_path_meets_the_sac_temperature_known_answer(path):
    agent = on_path(path, UniformGuide(-0.25, 0.25), algo="sac_auto", alpha=0.5, dual_lr=0.05, target_entropy=-0.2)
    stats = update(agent)
    assert stats["sac/alpha"] == pytest.approx(0.5 * math.exp(0.05), rel=1e-5)
    assert stats["critic/v_loss"] == pytest.approx(0.5 * (3.0 - (1.0 - 0.5 * LOG2)) ** 2, rel=1e-6)


@pytest.mark.parametrize("path", PATHS)
def test_every_update_path_copies_the_old_policy_on_its_period(path):
    agent = on_path(path, algo="mpo", old_policy_period=2)
    copied = []
    for _ in range(4):
        update(agent)
        copied.append(same(old_policy_net(agent), agent.state_dict()["policy"]))
    assert copied == [False, True, False, True]


@pytest.mark.parametrize("same_box", [True, False])
def test_both_kl_paths_give_the_closed_form_gaussian_kl(same_box):
    """KL of two tanh-normals on one box is the KL of their Gaussians (tanh and the affine map are one bijection):
    per dimension log(σ2/σ1) + (σ1² + (μ1 − μ2)²)/(2σ2²) − ½ = log 2 + 2/8 − ½ with μ = 0, 1 and σ = 1, 2. The
    same box object takes the sync-free path (no comparison of the transforms), equal boxes torch's own."""
    from virel_ppl.inference.actions import TanhNormal
    from virel_ppl.variants import policy_kl

    box = ActionBox([-1.0, -2.0], [1.0, 2.0])
    other = box if same_box else ActionBox([-1.0, -2.0], [1.0, 2.0])
    old = TanhNormal(torch.zeros(2, 3, 2), torch.ones(2, 3, 2), box)
    new = TanhNormal(torch.ones(2, 3, 2), torch.full((2, 3, 2), 2.0), other)
    assert policy_kl(old, new, old.sample()).item() == pytest.approx(2 * (LOG2 + 0.25 - 0.5), rel=1e-6)


# --- clipping: the critic scores the actions the environment would execute --------------------------------------


@pytest.mark.parametrize("algo", ["virel", "sac", "virel2", "mpo_np"])
def test_an_unbounded_guides_samples_are_scored_clipped_to_the_box(algo):
    """A Gaussian guide with mean 0 and σ = e² ≈ 7.4 on the box [−1, 1] puts ~90 % of its mass outside the box; the
    environment clips such actions, so every action the critic scores (value target, E-step) lies in the box."""
    torch.manual_seed(0)
    guide = DiagonalGaussianGuide(3, BOX, hidden=(4,))
    constant(guide.net, 0.0)
    with torch.no_grad():
        guide.net[-1].bias[1:] = 10.0  # log σ clamped at LOG_STD_MAX = 2
    agent = VirelAgent(3, BOX, Config(algo=algo, guide="gaussian", hidden=(4,)), policy=guide)
    assert (agent.policy.distribution(batch().obs).sample((100,)).abs() > 1).float().mean() > 0.5
    scored: list[torch.Tensor] = []
    for net in ("q1", "q2"):  # every Q evaluation goes through the twins
        inner = getattr(agent.critic, net).forward
        getattr(agent.critic, net).forward = lambda h, inner=inner: scored.append(h[..., 3:].detach()) or inner(h)
    update(agent)
    actions = torch.cat([a.reshape(-1) for a in scored])
    assert actions.numel() > 8 and actions.abs().max() <= 1.0


# --- what train.csv reads out -------------------------------------------------------------------------------------


def test_train_csv_logs_the_entropy_of_the_policy_being_trained(tmp_path):
    """A guide uniform on [−0.5, 0.25] whatever the state has H(π) = log 0.75 exactly: every train.csv row says so."""
    cfg = Config(env="Pendulum-v1", **TINY, total_steps=160, run_dir=tmp_path / "r")
    train(cfg, policy_factory=lambda obs_dim, box: UniformGuide(-0.5, 0.25, box=box))
    rows = read_csv(tmp_path / "r" / "train.csv")
    assert len(rows["policy/entropy"]) >= 2
    assert rows["policy/entropy"] == pytest.approx([math.log(0.75)] * len(rows["step"]), abs=1e-6)


def test_the_entropy_read_out_is_a_monte_carlo_estimate_that_leaves_trainings_random_stream_alone():
    """For a Gaussian guide H = Σ log σ + d/2 · log(2πe) per state; one sample on each of 20,000 states estimates
    its mean to ≈ 0.005 (the sd of −log π is √(d/2) = 0.71 for d = 1)."""
    torch.manual_seed(0)
    agent = VirelAgent(3, BOX, Config(hidden=(4,)), policy=DiagonalGaussianGuide(3, BOX, hidden=(4,)))
    states = torch.randn(20_000, 3)
    with torch.no_grad():
        scale = agent.policy.distribution(states).base_dist.scale
    exact = (scale.log().sum(-1) + 0.5 * math.log(2 * math.pi * math.e)).mean()
    before = torch.get_rng_state()
    assert float(agent.policy_entropy(states)) == pytest.approx(float(exact), abs=0.03)
    assert torch.equal(torch.get_rng_state(), before)

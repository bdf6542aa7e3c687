"""The fast update (``Config.fast_update``: the ELBO's differentiable_loss and one torch Adam) against the
plain ``SVI.step`` path: same gradients for every algo, guide and ELBO; bit-identical training runs; and the
on-device record of the first non-finite update."""

from __future__ import annotations

import warnings
from dataclasses import replace

import gymnasium as gym
import helpers
import numpy as np
import pyro
import pytest
import torch

from virel_ppl.agent import VirelAgent
from virel_ppl.config import Config, ConfigError
from virel_ppl.inference.actions import ActionBox, DiscreteActions
from virel_ppl.inference.em import Batch, DeviceTrace_ELBO, EStep
from virel_ppl.inference.guides import CONTINUOUS_GUIDES
from virel_ppl.runtime.logger import read_csv
from virel_ppl.train import train
from virel_ppl.variants import VARIANTS

OBS_DIM, N = 3, 16
CONTINUOUS_ELBOS = ("trace", "meanfield", "renyi", "iwae", "tail_adaptive", "graph")
DISCRETE_ELBOS = ("graph", "enum")


def _batch(actions: ActionBox | DiscreteActions) -> Batch:
    g = torch.Generator().manual_seed(123)
    if isinstance(actions, DiscreteActions):
        a = actions.one_hot(torch.randint(actions.n, (N,), generator=g))
    else:
        a = torch.rand(N, actions.dim, generator=g) * 2 - 1
    return Batch(
        torch.randn(N, OBS_DIM, generator=g),
        a,
        torch.randn(N, generator=g),
        torch.randn(N, OBS_DIM, generator=g),
        (torch.rand(N, generator=g) < 0.2).float(),
    )


def _recording(params) -> dict[int, torch.Tensor]:
    """Record each parameter's gradient as it stands after every accumulation (the last one is the step's)."""
    grads: dict[int, torch.Tensor] = {}
    for i, p in enumerate(params):
        p.register_post_accumulate_grad_hook(lambda p, i=i: grads.__setitem__(i, p.grad.detach().clone()))
    return grads


def _run(algo: str, guide: str, elbo: str, fast: bool, updates: int = 2):
    """Two updates on fixed batches and seeds; the gradients of each update, the parameters and statistics."""
    actions = DiscreteActions(3) if guide == "categorical" else ActionBox([-1.0, -2.0], [1.0, 0.5])
    cfg = Config(algo=algo, guide=guide, elbo=elbo, hidden=(8, 8), fast_update=fast, mpo_num_actions=4)
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    agent = VirelAgent(OBS_DIM, actions, cfg)
    policy_grads = _recording(list(agent.policy.parameters()))
    critic_grads = _recording(agent.critic.trainable_parameters())
    batch = _batch(actions)
    out = []
    with pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the note that an ELBO uses loss_and_grads
        for k in range(updates):
            policy_grads.clear(), critic_grads.clear()
            pyro.set_rng_seed(10 + k)
            stats = agent.update(batch)
            out.append((dict(policy_grads), dict(critic_grads), {n: float(v) for n, v in stats.items()}))
    params = {k: v.clone() for k, v in agent.state_dict()["policy"].items()}
    return out, params, agent


CASES = sorted(
    {(algo, "tanh_normal", elbo) for algo in VARIANTS for elbo in CONTINUOUS_ELBOS}
    | {(algo, guide, "trace" if guide != "categorical" else "enum") for algo in VARIANTS for guide in CONTINUOUS_GUIDES}
    | {("virel", guide, elbo) for guide in CONTINUOUS_GUIDES for elbo in CONTINUOUS_ELBOS}
    | {(algo, "categorical", elbo) for algo in ("virel", "beta", "mpo", "sac") for elbo in DISCRETE_ELBOS}
)


@pytest.mark.parametrize("algo, guide, elbo", CASES)
def test_fast_update_has_the_gradients_of_svi_step(algo, guide, elbo):
    try:
        plain, plain_params, _ = _run(algo, guide, elbo, fast=False)
    except (ConfigError, ValueError) as err:  # a combination that cannot work fails alike on both paths
        with pytest.raises(type(err)) as fast_err:
            _run(algo, guide, elbo, fast=True)
        assert str(fast_err.value) == str(err)
        return
    fast, fast_params, agent = _run(algo, guide, elbo, fast=True)
    assert isinstance(agent.e_step, EStep) and agent.e_step.optim is not None
    for (pg, cg, ps), (fg, fcg, fs) in zip(plain, fast, strict=True):
        assert pg.keys() == fg.keys() and len(pg) > 0, "the E-step reached no guide parameter"
        assert cg.keys() == fcg.keys() and len(cg) > 0
        for i in pg:
            torch.testing.assert_close(fg[i], pg[i], rtol=1e-5, atol=1e-6)
        for i in cg:
            torch.testing.assert_close(fcg[i], cg[i], rtol=1e-5, atol=1e-6)
        assert fs.keys() == ps.keys()
        for name in ps:
            assert fs[name] == pytest.approx(ps[name], rel=1e-5, abs=1e-5), name
    for k in plain_params:  # after the updates: one multi-tensor Adam steps as the per-tensor Adams do
        torch.testing.assert_close(fast_params[k], plain_params[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("guide", ["tanh_normal", "gaussian", "mixture"])
def test_the_gpu_path_without_host_floats_has_the_same_gradients(guide, monkeypatch):
    """A captured update runs --elbo trace as ``DeviceTrace_ELBO`` (no float per site, no device sync); forced here
    on CPU against SVI.step with Pyro's Trace_ELBO."""
    plain, _, _ = _run("virel", guide, "trace", fast=False)
    original = VirelAgent.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.e_step.loss = DeviceTrace_ELBO(num_particles=1, vectorize_particles=True, max_plate_nesting=1)

    monkeypatch.setattr(VirelAgent, "__init__", init)
    fast, _, agent = _run("virel", guide, "trace", fast=True)
    assert isinstance(agent.e_step.loss, DeviceTrace_ELBO)
    for (pg, _, ps), (fg, _, fs) in zip(plain, fast, strict=True):
        for i in pg:
            torch.testing.assert_close(fg[i], pg[i], rtol=1e-5, atol=1e-6)
        assert fs["actor/loss"] == pytest.approx(ps["actor/loss"], rel=1e-5)


def test_optimiser_state_moves_between_the_fast_and_the_plain_path():
    """Both paths save pyro.optim's format, so a checkpoint of one resumes on the other with the same Adam moments."""
    _, _, fast_agent = _run("virel", "tanh_normal", "trace", fast=True, updates=3)
    _, _, plain_agent = _run("virel", "tanh_normal", "trace", fast=False, updates=3)
    fast_state, plain_state = fast_agent.state_dict()["policy_optim"], plain_agent.state_dict()["policy_optim"]
    assert fast_state.keys() == plain_state.keys() and len(fast_state) == 6
    for name in plain_state:
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(fast_state[name]["state"][0][key], plain_state[name]["state"][0][key])
        assert float(fast_state[name]["state"][0]["step"]) == 3.0
    # load the plain path's state into a fresh fast agent: its optimiser takes it on its first step
    cfg = Config(hidden=(8, 8))
    fresh = VirelAgent(OBS_DIM, ActionBox([-1.0, -2.0], [1.0, 0.5]), cfg)
    fresh.load_state_dict(plain_agent.state_dict())
    with pyro.validation_enabled(False):
        fresh.update(_batch(fresh.box))
    moved = fresh.state_dict()["policy_optim"]
    assert all(float(moved[name]["state"][0]["step"]) == 4.0 for name in moved)


class _Pendulumish(gym.Env):
    """1-D task whose reward jumps to ``big`` from step ``start`` on: a critic that must diverge."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, start: int = 130, big: float = 1e30) -> None:
        self.t, self.start, self.big = 0, start, big

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        reward = self.big if self.t > self.start else float(action[0])
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), reward, False, False, {}


gym.register("VirelTestBlowUp-v0", entry_point=_Pendulumish, max_episode_steps=10_000)
gym.register(
    "VirelTestGrowth-v0", entry_point=_Pendulumish, kwargs={"start": 200, "big": 1e5}, max_episode_steps=10_000
)


def test_divergence_names_the_first_non_finite_update_and_writes_no_checkpoint(tmp_path):
    # rewards of 1e30 from step 131 on: their squares overflow float32, so q_loss is inf at the first update
    # whose batch holds one; logged every 100 steps, checkpointed every 50
    cfg = Config(env="VirelTestBlowUp-v0", total_steps=400, run_dir=tmp_path, **{**helpers.TINY, "log_every": 100})
    cfg = replace(cfg, checkpoint_every=50, eval_every=10_000)
    with pytest.raises(ConfigError) as info:
        train(cfg)
    message = str(info.value)
    bad = int(message.split("NaN/inf at step ")[1].split(" ")[0])
    assert 131 < bad <= 150, message  # the first update that sampled a huge reward, not a logging step
    assert "seen at step 150" in message  # the checkpoint at 150 checked first, and refused
    assert "--resume cannot change it" in message
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 100  # the last finite state
    assert all(torch.isfinite(v).all() for v in saved["agent"]["critic"].values())


def test_a_critic_loss_growing_a_thousandfold_warns_once(tmp_path):
    # rewards in [-1, 1] while the first three rows are logged (steps 100, 125, 150), then 1e5 from step 201
    cfg = Config(env="VirelTestGrowth-v0", total_steps=300, run_dir=tmp_path, **{**helpers.TINY, "log_every": 25})
    with pytest.warns(RuntimeWarning, match="grew more than 1000-fold") as record:
        train(cfg)
    assert sum("1000-fold" in str(w.message) for w in record) == 1


@pytest.mark.parametrize("fused_adam", [False, True])
def test_fast_and_plain_training_runs_are_bit_identical(tmp_path, fused_adam):
    """The fast update changes no number of a run, with either Adam kernel (SVI.step's per-tensor Adams take the same
    kernel): same parameters, same logged statistics."""
    cfg = Config(env="Pendulum-v1", total_steps=200, fused_adam=fused_adam, **{**helpers.TINY, "eval_every": 10_000})
    fast = train(replace(cfg, run_dir=tmp_path / "fast"))
    plain = train(replace(cfg, run_dir=tmp_path / "plain", fast_update=False))
    a = torch.load(fast.run_dir / "checkpoint.pt", weights_only=False)["agent"]
    b = torch.load(plain.run_dir / "checkpoint.pt", weights_only=False)["agent"]
    for part in ("policy", "critic"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), (part, k)
    fast_rows, plain_rows = read_csv(tmp_path / "fast" / "train.csv"), read_csv(tmp_path / "plain" / "train.csv")
    assert fast_rows.keys() == plain_rows.keys() and len(fast_rows["step"]) == 3
    for name in plain_rows:  # SVI.step adds the loss's terms as Python floats, differentiable_loss in float32
        expected = pytest.approx(plain_rows[name], rel=1e-6) if name == "actor/loss" else plain_rows[name]
        assert fast_rows[name] == expected, name


def test_command_line_names_the_divergence_step_in_one_line(tmp_path):
    from virel_ppl.cli import main

    argv = ["train", "--env", "VirelTestBlowUp-v0", "--total-steps", "300", "--hidden", "16", "16"]
    argv += ["--batch-size", "32", "--warmup-steps", "100", "--log-every", "100", "--eval-every", "10000"]
    argv += ["--no-progress", "--no-tensorboard", "--run-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit, match=r"error: The critic diverged: .*NaN/inf at step 1[3-9]\d \(seen at step 200"):
        main(argv)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # checkpoint_every 5000: nothing finite to keep


def test_a_checkpoint_keeps_the_optimisers_kernel_choice_of_the_running_config():
    """A checkpoint from before foreach/fused (torch's default single-tensor Adam) loads with the same moments,
    and the critic's optimiser stays what the running config asks for."""
    box = ActionBox([-1.0, -2.0], [1.0, 0.5])
    old = VirelAgent(OBS_DIM, box, Config(hidden=(8, 8)))
    old.critic_optim = torch.optim.Adam(old.critic.trainable_parameters(), lr=1e-3)  # as checkpoints were written
    with pyro.validation_enabled(False):
        old.update(_batch(box))
    saved = old.state_dict()
    assert saved["critic_optim"]["param_groups"][0]["foreach"] is None
    for fused in (False, True):
        agent = VirelAgent(OBS_DIM, box, Config(hidden=(8, 8), fused_adam=fused))
        agent.load_state_dict(saved)
        group = agent.critic_optim.param_groups[0]
        assert (group["fused"], group["foreach"]) == ((True, None) if fused else (None, True))
        moments = [s["exp_avg"] for s in agent.critic_optim.state_dict()["state"].values()]
        expected = [s["exp_avg"] for s in saved["critic_optim"]["state"].values()]
        assert len(moments) == len(expected) > 0 and all(torch.equal(a, b) for a, b in zip(moments, expected))


def test_two_agents_loaded_from_one_in_memory_state_do_not_share_adam_moments():
    """Loading one ``state_dict`` into two agents gives each its own optimiser state: stepping one leaves the
    other's Adam moments (critic, guide, SAC's temperature) as they were loaded."""
    box = ActionBox([-1.0, -2.0], [1.0, 0.5])
    cfg = Config(hidden=(8, 8), algo="sac_auto")
    source = VirelAgent(OBS_DIM, box, cfg)
    with pyro.validation_enabled(False):
        source.update(_batch(box))
    saved = source.state_dict()
    first, second = VirelAgent(OBS_DIM, box, cfg), VirelAgent(OBS_DIM, box, cfg)
    first.load_state_dict(saved)
    second.load_state_dict(saved)
    optimisers = ("critic_optim", "policy_optim", "variant", "dual_optim")
    loaded = {part: helpers.state_tensors(second.state_dict()[part]) for part in optimisers}
    before = {part: {k: t.clone() for k, t in tensors.items()} for part, tensors in loaded.items()}
    with pyro.validation_enabled(False):
        first.update(_batch(box))
    for part in optimisers:
        mine = helpers.state_tensors(second.state_dict()[part])
        theirs = helpers.state_tensors(first.state_dict()[part])
        assert mine.keys() == before[part].keys() == theirs.keys() and len(mine) > 0
        assert all(torch.equal(mine[k], before[part][k]) for k in mine), part  # untouched by the other's step
        assert not all(torch.equal(mine[k], theirs[k]) for k in mine), part  # ... which did move its own

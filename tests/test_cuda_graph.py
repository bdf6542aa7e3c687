"""The CUDA-graph update (``virel_ppl/graphs.py``), checked on CPU without a graph.

``agent.use_graph(capture=False)`` runs the very code a graph captures (``graphs.CudaGraph`` around
``agent.update_step``: static input buffers, the update, stacked static outputs) eagerly, on any device. Against the
plain ``agent.update_step``:

- with the same optimisers it is bit-identical (same operations in the same order, same RNG draws);
- with capturable Adam (what a GPU run uses; allowed on CPU here by patching torch's list of devices) it agrees to
  float tolerance: capturable Adam computes its bias corrections in float32 tensors, the plain one in Python floats;
- its body reads no device value on the host: ``Tensor.item``, ``__bool__``, ``__float__``, ... raise inside it.

The last test captures and replays a real graph; it needs a GPU and is skipped here (it has never run).
"""

from __future__ import annotations

import sys
import warnings
from contextlib import ExitStack, contextmanager
from unittest import mock

import helpers
import pyro
import pytest
import torch

from virel_ppl import agent as agent_module
from virel_ppl import graphs
from virel_ppl.agent import VirelAgent
from virel_ppl.config import Config
from virel_ppl.graphs import CudaGraphWarning
from virel_ppl.inference.actions import ActionBox, DiscreteActions
from virel_ppl.inference.divergences import make_elbo
from virel_ppl.inference.em import Batch, DeviceTrace_ELBO
from virel_ppl.runtime.checkpoints import RESUMABLE
from virel_ppl.variants import VARIANTS, Variant

OBS_DIM, N, UPDATES = 3, 16, 6
BOX = ActionBox([-1.0, -2.0], [1.0, 0.5])
ALGOS = ("virel", "beta", "virel2", "mpo", "mpo_np", "sac", "sac_auto", "pseudo_likelihood")
CASES = [(algo, "tanh_normal", "auto") for algo in ALGOS] + [
    ("virel", "gaussian", "meanfield"),
    ("virel", "beta", "auto"),
    ("sac_auto", "mixture", "auto"),
    ("virel", "flow", "auto"),
    ("mpo_np", "gaussian", "auto"),
    ("virel", "tanh_normal", "tail_adaptive"),
]


def _batches(actions, n: int = UPDATES) -> list[Batch]:
    g = torch.Generator().manual_seed(123)
    out = []
    for _ in range(n):
        if isinstance(actions, DiscreteActions):
            a = actions.one_hot(torch.randint(actions.n, (N,), generator=g))
        else:
            a = torch.rand(N, actions.dim, generator=g) * 2 - 1
        out.append(
            Batch(
                torch.randn(N, OBS_DIM, generator=g),
                a,
                torch.randn(N, generator=g),
                torch.randn(N, OBS_DIM, generator=g),
                (torch.rand(N, generator=g) < 0.2).float(),
            )
        )
    return out


def _agent(algo: str, guide: str, elbo: str, static: bool, **cfg) -> VirelAgent:
    actions = DiscreteActions(3) if guide == "categorical" else BOX
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    agent = VirelAgent(
        OBS_DIM, actions, Config(algo=algo, guide=guide, elbo=elbo, hidden=(8, 8), mpo_num_actions=4, **cfg)
    )
    if static:
        agent.use_graph(capture=False)
    return agent


def _run(agent: VirelAgent, batches: list[Batch], seed: int = 1) -> list[dict]:
    pyro.set_rng_seed(seed)  # both paths draw the same numbers from here on
    with pyro.validation_enabled(False):
        return [agent.update(b) for b in batches]


def _tensors(agent: VirelAgent) -> dict[str, torch.Tensor]:
    """Every tensor of the agent's checkpoint (parameters, targets, optimiser moments, variant state), by path."""
    return helpers.state_tensors(agent.state_dict())


@contextmanager
def _capturable_adam_on_cpu():
    """Let torch build capturable Adam on CPU (the GPU's optimisers) and let the agent believe it will capture."""
    adam_module = sys.modules["torch.optim.adam"]
    with (
        mock.patch.object(adam_module, "_get_capturable_supported_devices", lambda supports_xla=True: ["cuda", "cpu"]),
        mock.patch.object(agent_module, "why_not_captured", lambda config, device, elbo, policy: None),
    ):
        yield


def _raise(name):
    def f(*args, **kwargs):
        raise AssertionError(f"host synchronisation inside the captured region: {name}")

    return f


@contextmanager
def _no_host_reads():
    """Every way Python reads a device value on the host raises, and so do the torch ops known to sync inside
    (``torch.normal`` checks its scale tensor on the host; ``nonzero``, ``masked_select``, ``unique`` have
    data-dependent shapes)."""
    with ExitStack() as stack:
        for name in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu", "nonzero"):
            stack.enter_context(mock.patch.object(torch.Tensor, name, _raise(f"Tensor.{name}")))
        for name in ("normal", "nonzero", "masked_select", "unique"):
            stack.enter_context(mock.patch.object(torch, name, _raise(f"torch.{name}")))
        yield


def _guard_body(graphed: graphs.CudaGraph) -> list[int]:
    """Run the graph's body (the captured region) under ``_no_host_reads``; returns a list counting its runs."""
    body, runs = graphed._body, []

    def guarded():
        with _no_host_reads():
            out = body()
        runs.append(1)
        return out

    graphed._body = guarded
    return runs


@pytest.mark.parametrize("algo, guide, elbo", CASES)
def test_static_graph_update_is_bit_identical_to_the_eager_update(algo, guide, elbo):
    """Same optimisers, same batches, same seeds: every statistic (values and order) and every tensor of the
    checkpoint equal bit for bit, over warm-up, "capture" and replays (the body runs the same ops in the same order)."""
    batches = _batches(BOX)
    eager, static = _agent(algo, guide, elbo, static=False), _agent(algo, guide, elbo, static=True)
    assert eager.graph is None
    plain_stats, static_stats = _run(eager, batches), _run(static, batches)
    assert static.graph.replaying and static.graph.failed is None
    for p, s in zip(plain_stats, static_stats, strict=True):
        assert list(s) == list(p)
        for name in p:
            assert torch.equal(s[name], p[name]), name
    plain, graph = _tensors(eager), _tensors(static)
    assert plain.keys() == graph.keys() and len(plain) > 10
    for k in plain:
        assert torch.equal(graph[k], plain[k]), k
    assert static.updates == eager.updates == UPDATES
    assert static.first_nonfinite_step() is None


def test_statistics_kept_by_the_caller_are_not_overwritten_by_the_next_update():
    static = _agent("virel", "tanh_normal", "auto", static=True)
    stats = _run(static, _batches(BOX))
    q_losses = [float(s["critic/q_loss"]) for s in stats]
    assert len(set(q_losses)) == UPDATES  # each update's own value, not the last one six times


@pytest.mark.parametrize("algo, guide", [("virel", "tanh_normal"), ("sac_auto", "tanh_normal"), ("mpo_np", "gaussian")])
def test_capturable_optimisers_agree_with_the_plain_ones_to_float_tolerance(algo, guide):
    batches = _batches(BOX)
    eager = _agent(algo, guide, "auto", static=False)
    with _capturable_adam_on_cpu():
        static = _agent(algo, guide, "auto", static=True)
        assert static.capturable and not static.graph.capture
        optims = [static.critic_optim] + ([static.dual_optim] if static.dual_optim is not None else [])
        assert all(g["capturable"] for o in optims for g in o.param_groups)
        static_stats = _run(static, batches)
    plain_stats = _run(eager, batches)
    for p, s in zip(plain_stats, static_stats, strict=True):
        assert list(s) == list(p)
        for name in p:
            torch.testing.assert_close(s[name], p[name], rtol=1e-5, atol=1e-6)
    plain, graph = _tensors(eager), _tensors(static)
    for k in plain:
        torch.testing.assert_close(graph[k].float(), plain[k].float(), rtol=1e-5, atol=1e-6, msg=k)


CAPTURED = [case for case in CASES if case[2] not in ("meanfield", "tail_adaptive")]  # refused, see below


@pytest.mark.parametrize("algo, guide, elbo", CAPTURED)
def test_the_captured_region_reads_no_device_value_on_the_host(algo, guide, elbo):
    batches = _batches(BOX)
    with _capturable_adam_on_cpu():
        agent = _agent(algo, guide, elbo, static=True)
        assert algo == "mpo_np" or isinstance(agent.elbo, DeviceTrace_ELBO)
        _run(agent, batches[:3])  # the eager warm-ups may read the host (optimiser set-up, Pyro's first trace)
        runs = _guard_body(agent.graph)
        stats = _run(agent, batches[3:])
    assert len(runs) == 3 and agent.graph.replaying
    assert all(torch.isfinite(v) for s in stats for v in s.values())


def test_the_host_read_guard_catches_an_item_in_the_update(monkeypatch):
    """The guard of the test above can fail: an ε rule that reads its statistic on the host is caught."""
    with _capturable_adam_on_cpu():
        agent = _agent("virel", "tanh_normal", "auto", static=True)
        _run(agent, _batches(BOX, 3))
        _guard_body(agent.graph)
        rule = agent.variant.eps
        monkeypatch.setattr(agent.variant, "eps", lambda td, r: rule(td, r) * (1.0 if td.item() >= 0 else 1.0))
        with pytest.raises(AssertionError, match="Tensor.item"):
            _run(agent, _batches(BOX, 1))


def test_a_statistic_the_graph_cannot_hold_runs_eagerly_with_one_warning(monkeypatch):
    """A hook returning a host float: the first warm-up finds it, says so once, and every update runs eagerly with
    the eager path's numbers."""

    class FloatHook(Variant):
        def after_update(self, batch, outputs):
            return {"host/value": 1.5}

    monkeypatch.setitem(VARIANTS, "virel_float_hook", FloatHook)
    batches = _batches(BOX)
    eager = _agent("virel_float_hook", "tanh_normal", "auto", static=False)
    with pytest.warns(CudaGraphWarning) as record:
        static = _agent("virel_float_hook", "tanh_normal", "auto", static=True)
        static_stats = _run(static, batches)
    assert len(record) == 1 and "'host/value' is not a 0-d tensor" in str(record[0].message)
    assert static.graph.failed is not None and not static.graph.replaying
    plain_stats = _run(eager, batches)
    for p, s in zip(plain_stats, static_stats, strict=True):
        assert list(s) == list(p) and s["host/value"] == 1.5
        assert all(torch.equal(s[k], p[k]) for k in p if k != "host/value")


@pytest.mark.parametrize(
    "cfg, reason",
    [
        (dict(elbo="renyi"), "no differentiable_loss"),
        (dict(elbo="iwae"), "no differentiable_loss"),
        (dict(elbo="graph"), "no differentiable_loss"),
        (dict(guide="categorical", elbo="enum"), "enumerates"),
        (dict(elbo="meanfield"), "host floats"),
        (dict(elbo="tail_adaptive"), "host floats"),
        (dict(fast_update=False), "--no-fast-update"),
        (dict(cuda_graph=False), "--no-cuda-graph"),
    ],
)
def test_what_cannot_be_captured_is_refused_before_the_first_update(cfg, reason):
    config = Config(**{"hidden": (8, 8), **cfg})
    actions = DiscreteActions(3) if config.guide == "categorical" else BOX
    policy = VirelAgent(OBS_DIM, actions, config).policy
    refusal = agent_module.why_not_captured
    assert reason in refusal(config, torch.device("cuda"), make_elbo(config.elbo, policy), policy)
    policy = VirelAgent(OBS_DIM, BOX, Config(hidden=(8, 8))).policy
    trace = make_elbo("trace", policy)
    assert refusal(Config(hidden=(8, 8)), torch.device("cuda"), trace, policy) is None
    assert "CUDA" in refusal(Config(), torch.device("cpu"), trace, policy)


def test_the_eager_announcement_is_one_cuda_graph_warning():
    policy = VirelAgent(OBS_DIM, BOX, Config(hidden=(8, 8))).policy
    renyi = make_elbo("renyi", policy)
    with pytest.warns(CudaGraphWarning, match="--elbo renyi") as record:
        graphs.announce_eager(agent_module.why_not_captured(Config(elbo="renyi"), torch.device("cuda"), renyi, policy))
    assert len(record) == 1


def test_on_cpu_the_default_update_is_unchanged():
    """No graph, plain (non-capturable) optimisers, no warning: the CPU's update is the eager one."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CudaGraphWarning)
        agent = _agent("sac_auto", "tanh_normal", "auto", static=False)
        _run(agent, _batches(BOX, 2))
    assert agent.graph is None and not agent.capturable and Config().cuda_graph
    optims = [agent.critic_optim, agent.e_step.optim, agent.dual_optim]
    assert all(not g["capturable"] for o in optims for g in o.param_groups)
    assert all(s["step"].device.type == "cpu" for s in agent.critic_optim.state.values())


def test_loading_a_checkpoint_recaptures_and_continues_as_the_eager_path():
    """After ``load_state_dict`` the optimisers hold new state tensors: the graph is dropped (never replayed stale),
    warmed up and captured again; the continued updates equal the eager path's bit for bit."""
    batches = _batches(BOX, 10)
    source = _agent("sac_auto", "tanh_normal", "auto", static=False)
    _run(source, batches[:4])
    saved = source.state_dict()
    eager, static = (
        _agent("sac_auto", "tanh_normal", "auto", static=False),
        _agent("sac_auto", "tanh_normal", "auto", static=True),
    )
    _run(static, batches[:5]), _run(eager, batches[:5])  # both past their first E-step (Pyro's plate-nesting guess)
    assert static.graph.replaying
    for agent in (eager, static):  # each copies the state it loads
        agent.load_state_dict(saved)
    assert not static.graph.replaying and static.graph.warmed == 0 and static.graph.static_args is None
    plain_stats, static_stats = _run(eager, batches[4:], seed=7), _run(static, batches[4:], seed=7)
    assert static.graph.replaying
    for p, s in zip(plain_stats, static_stats, strict=True):
        assert all(torch.equal(s[k], p[k]) for k in p)
    plain, graph = _tensors(eager), _tensors(static)
    assert all(torch.equal(graph[k], plain[k]) for k in plain)


def test_checkpoints_move_between_capturable_and_plain_optimisers():
    """A capturable run's checkpoint (steps as device tensors) loads into plain optimisers (steps back on the host,
    kernels and capturable kept as configured) and back, with the same moments and step counts."""
    batches = _batches(BOX, 3)
    with _capturable_adam_on_cpu():
        graph_agent = _agent("sac_auto", "tanh_normal", "auto", static=True)
        _run(graph_agent, batches)
        graph_state = graph_agent.state_dict()
    plain = _agent("sac_auto", "tanh_normal", "auto", static=False)
    assert not plain.capturable
    plain.load_state_dict(graph_state)
    for optim in (plain.critic_optim, plain.dual_optim):
        assert not optim.param_groups[0]["capturable"]
        assert all(float(s["step"]) == 3.0 for s in optim.state.values())
    _run(plain, _batches(BOX, 1))  # the policy's optimiser takes the pending state at its first step
    assert all(float(s["step"]) == 4.0 for s in plain.e_step.optim.state.values())
    with _capturable_adam_on_cpu():
        back = _agent("sac_auto", "tanh_normal", "auto", static=True)
        back.load_state_dict(plain.state_dict())
        group = back.critic_optim.param_groups[0]
        assert group["capturable"] and group["fused"] is (True if back.config.fused_adam else None)
        moments = {k: v for k, v in _tensors(plain).items() if "critic_optim" in k}
        for k, v in moments.items():
            assert torch.equal(_tensors(back)[k].float(), v.float()), k
        _run(back, _batches(BOX, 1))
    assert all(float(s["step"]) == 5.0 for s in back.critic_optim.state.values())


def test_no_cuda_graph_is_a_flag_that_a_resume_may_change():
    import tyro

    from virel_ppl.cli import TrainArgs

    assert tyro.cli(TrainArgs, args=["--no-cuda-graph"]).config.cuda_graph is False
    assert tyro.cli(TrainArgs, args=[]).config.cuda_graph is True
    assert "cuda_graph" in RESUMABLE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="captures a real CUDA graph: needs a GPU")
@pytest.mark.parametrize("algo", ["virel", "sac_auto", "mpo"])
def test_a_captured_graph_replays_the_eager_update_on_cuda(algo):
    """On a GPU: warm-up, capture and replays against the same agent run eagerly (capturable optimisers on both, so
    only the graph differs), on the same batches and seeds; no host synchronisation in a replay."""
    box = ActionBox([-1.0, -2.0], [1.0, 0.5], device="cuda")
    batches = [Batch(*(t.cuda() for t in b)) for b in _batches(BOX, 8)]
    out = []
    for graphed in (True, False):
        torch.manual_seed(0)
        pyro.set_rng_seed(0)
        agent = VirelAgent(OBS_DIM, box, Config(algo=algo, hidden=(8, 8), device="cuda"))
        assert agent.capturable and agent.graph is not None and agent.graph.capture
        if not graphed:
            agent.graph = None
        with pyro.validation_enabled(False):
            stats = [agent.update(b) for b in batches[:5]]
            if graphed:
                assert agent.graph.replaying, agent.graph.failed
                torch.cuda.set_sync_debug_mode("error")
            try:
                stats += [agent.update(b) for b in batches[5:]]
            finally:
                torch.cuda.set_sync_debug_mode("default")
        out.append((stats, _tensors(agent)))
    (g_stats, g_tensors), (e_stats, e_tensors) = out
    for g, e in zip(g_stats, e_stats, strict=True):
        assert list(g) == list(e)
        for name in e:
            torch.testing.assert_close(g[name], e[name], rtol=1e-4, atol=1e-5)
    for k in e_tensors:
        torch.testing.assert_close(g_tensors[k], e_tensors[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("guide", ["tanh_normal", "gaussian", "beta", "mixture", "flow"])
@pytest.mark.parametrize("particles", [1, 3])
def test_the_device_resident_elbo_is_pyros_trace_elbo(guide, particles):
    """``DeviceTrace_ELBO`` (what a captured update runs for --elbo trace) against Pyro's own ``Trace_ELBO`` on the
    same model, guide and draws: the same gradient bit for bit, the same loss to float rounding."""
    agent = VirelAgent(OBS_DIM, BOX, Config(guide=guide, hidden=(8, 8)))
    batch = _batches(BOX, 1)[0]
    kwargs = dict(eps=torch.tensor(0.7), q=agent.q_on_box, prior=agent.variant.prior)
    results = []
    for elbo in (
        pyro.infer.Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1),
        DeviceTrace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1),
    ):
        pyro.set_rng_seed(5)
        agent.policy.zero_grad(set_to_none=True)
        with pyro.get_param_store().scope(agent.e_step.param_state):
            loss = elbo.differentiable_loss(agent.variant.model, agent.variant.guide, batch.obs, **kwargs)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in agent.policy.parameters()]))
    (pyro_loss, pyro_grads), (loss, grads) = results
    assert all(torch.equal(g, p) for g, p in zip(grads, pyro_grads, strict=True))
    torch.testing.assert_close(loss, pyro_loss)
    assert not torch.equal(pyro_grads[0], torch.zeros_like(pyro_grads[0]))

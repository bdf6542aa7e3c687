"""Where one training step's time goes, and what the alternatives for its parts cost, measured side by side.

    python benchmarks/update_profile.py                   # HalfCheetah-v5, 256-256, batch 256, 1 thread, CPU
    python benchmarks/update_profile.py --compile         # also torch.compile'd networks (≈ 1 min to compile)

Two tables, each row the median over ``--blocks`` blocks that alternate between the rows, so every row sees the
same machine load:

1. **One step, part by part**, exactly as ``agent.update`` runs it (act + env.step, replay sample, the M-step
   split into its forward passes, backward and Adam, the ε rule, the E-step, the target update, the NaN record).
2. **Alternatives** for the parts that dominate, on the same shapes: twin Q as two MLPs (ours) or one batched
   ensemble (``torch.func.stack_module_state`` + ``vmap``), eager or ``torch.compile``'d networks, foreach or
   fused Adam over the critic's parameters, and ``TanhNormal`` against torch's generic ``TransformedDistribution``.
3. **Pyro's part of the E-step**: the same loss in plain torch and as ``Trace_ELBO.differentiable_loss`` of the
   model and guide, and the traces it is made of.

The numbers chose the implementation (``docs/results.md``): this benchmark keeps the choice checkable.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
from throughput import WARMUP, _config, machine_line  # benchmarks/throughput.py (this folder is on sys.path)
from torch.func import functional_call, stack_module_state

from virel_ppl.inference.actions import SafeTanhTransform, TanhNormal
from virel_ppl.inference.critics import bellman_target
from virel_ppl.inference.em import adam, frozen
from virel_ppl.train import Trainer


def agent_scope(trainer: Trainer):
    """The agent's own Pyro param store, as the trainer's E-step runs in it."""
    return pyro.get_param_store().scope(trainer.agent.e_step.param_state)


def _trainer(args) -> Trainer:
    trainer = Trainer(_config(args))
    for _ in range(WARMUP + 10):
        trainer.collect()
    return trainer


def step_parts(trainer: Trainer, steps: int) -> dict[str, list[float]]:
    """ms of each part of ``steps`` training steps; the parts are agent.update's, in its order."""
    times: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable):
        start = time.perf_counter()
        out = fn()
        times.setdefault(name, []).append(1000 * (time.perf_counter() - start))
        return out

    for _ in range(steps):
        _one_step(trainer, timed)
    return times


def _one_step(trainer: Trainer, timed: Callable) -> None:
    agent, critic, gamma = trainer.agent, trainer.agent.critic, trainer.config.gamma
    timed("act + env.step + replay.add", trainer.collect)
    batch = timed("replay.sample", lambda: trainer.replay.sample(trainer.config.batch_size))
    with torch.no_grad():
        v_next = timed("M: V̄(s') (target value, no grad)", lambda: critic.target_value(batch.next_obs))
        q_target = bellman_target(batch.rewards, batch.terminated, v_next, gamma)
        v_target = timed(
            "M: value target π(s), Q(s, a~π) (no grad)",
            lambda: agent.variant.value_target(critic, agent.policy, batch.obs),
        )
    q1, q2 = timed("M: twin Q(s, a) forward", lambda: critic.twin_q(batch.obs, batch.actions))
    v = timed("M: V(s) forward", lambda: critic.value(batch.obs))

    def losses():
        target1, target2 = q_target.expand(2, q_target.shape[-1])
        q_loss = 0.5 * ((q1 - target1).pow(2).mean() + (q2 - target2).pow(2).mean())
        agent.critic_optim.zero_grad(set_to_none=True)
        return q_loss, q_loss + 0.5 * (v - v_target).pow(2).mean()

    q_loss, loss = timed("M: losses", losses)
    timed("M: backward", loss.backward)
    timed("M: Adam step", agent.critic_optim.step)
    eps = timed("ε rule", lambda: agent.variant.eps(q_loss.detach(), batch.rewards))
    kwargs = dict(eps=eps, q=agent.q_on_box, prior=agent.variant.prior)
    e_loss, _ = timed("E-step (Pyro ELBO, backward, Adam)", lambda: agent.e_step(critic, batch.obs, **kwargs))
    timed("target update (Polyak)", lambda: critic.update_target(trainer.config.tau))
    stats = {"critic/q_loss": q_loss.detach(), "actor/loss": e_loss, "eps": eps}
    timed("NaN record", lambda: agent.nonfinite.record(stats.values(), trainer.step))


class TwinEnsemble(torch.nn.Module):
    """The twin Q networks as one batched ensemble: parameters stacked, one vmapped call for both twins."""

    def __init__(self, q1: torch.nn.Module, q2: torch.nn.Module) -> None:
        super().__init__()
        params, buffers = stack_module_state([q1, q2])
        self.params = torch.nn.ParameterDict({k.replace(".", "_"): torch.nn.Parameter(v) for k, v in params.items()})
        self.names = list(params)
        self.base = copy.deepcopy(q1).to("meta")
        self.buffers_ = buffers

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        params = {name: self.params[name.replace(".", "_")] for name in self.names}

        def one(p, b, x):
            return functional_call(self.base, (p, b), (x,))

        return torch.vmap(one, in_dims=(0, 0, None))(params, self.buffers_, h)


def alternatives(trainer: Trainer, args) -> dict[str, Callable[[], object]]:
    """Each alternative as a zero-argument call on one fixed batch of the run's shapes."""
    critic, box = trainer.agent.critic, trainer.agent.box
    batch = trainer.replay.sample(args.batch)
    h = torch.cat([batch.obs, batch.actions], dim=-1)
    q1, q2 = copy.deepcopy(critic.q1).requires_grad_(True), copy.deepcopy(critic.q2).requires_grad_(True)
    ensemble = TwinEnsemble(q1, q2)
    foreach = adam(critic.trainable_parameters(), 1e-3)
    fused = adam([p.detach().clone().requires_grad_() for p in critic.trainable_parameters()], 1e-3, fused=True)
    for opt in (foreach, fused):
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.randn_like(p) * 1e-3
    loc = torch.randn(args.batch, box.dim, requires_grad=True)
    scale = (torch.rand(args.batch, box.dim) + 0.1).requires_grad_()

    def generic_tanh_normal():
        base = pyro.distributions.Normal(loc, scale).to_event(1)
        d = pyro.distributions.TransformedDistribution(
            base, [SafeTanhTransform(cache_size=1), box.unit_transform()], validate_args=False
        )
        d = d.expand(d.batch_shape)  # what pyro.plate does at the site
        return d.log_prob(d.rsample())

    def tanh_normal():
        d = TanhNormal(loc, scale, box).expand(torch.Size([args.batch]))
        return d.log_prob(d.rsample())

    rows: dict[str, Callable[[], object]] = {
        "twin Q fwd+bwd: two MLPs (ours)": lambda: (q1(h).sum() + q2(h).sum()).backward(),
        "twin Q fwd+bwd: one vmapped ensemble": lambda: ensemble(h).sum().backward(),
        "critic Adam step: foreach (default, bit-identical to per-tensor)": foreach.step,
        "critic Adam step: fused (--fused-adam)": fused.step,
        "policy distribution, rsample + log_prob: TanhNormal (ours)": tanh_normal,
        "policy distribution, rsample + log_prob: generic TransformedDistribution": generic_tanh_normal,
    }
    if args.compile:
        compiled = torch.compile(copy.deepcopy(q1))
        rows["one Q MLP fwd+bwd: eager"] = lambda: q1(h).sum().backward()
        rows["one Q MLP fwd+bwd: torch.compile"] = lambda: compiled(h).sum().backward()
    return rows


def pyro_parts(trainer: Trainer, args) -> dict[str, Callable[[], object]]:
    """The E-step's loss with and without Pyro's machinery, on one fixed batch (forward only, then with backward)."""
    agent = trainer.agent
    fe, policy, states = agent.e_step, agent.policy, trainer.replay.sample(args.batch).obs
    eps = torch.ones((), device=states.device)
    kw = dict(eps=eps, q=agent.q_on_box, prior=agent.variant.prior)
    guide_trace = poutine.trace(fe.guide).get_trace(states, **kw)

    def torch_loss():  # the same loss as plain torch: E[ε log π(a|s) − Q(s, clip a)] by rsample
        d = policy.distribution(states)
        a = d.rsample()
        return (eps * d.log_prob(a) - agent.q_on_box(states, a)).mean()

    def elbo_loss():
        with poutine.scale(scale=eps / states.shape[0]):
            return fe.loss.differentiable_loss(fe.model, fe.guide, states, **kw)

    return {
        "plain torch loss, forward": torch_loss,
        "Trace_ELBO differentiable_loss, forward": elbo_loss,
        "  of which: guide, traced": lambda: poutine.trace(fe.guide).get_trace(states, **kw),
        "  of which: model, traced against the guide's trace": lambda: poutine.trace(
            poutine.replay(fe.model, trace=guide_trace)
        ).get_trace(states, **kw),
        "  guide called without a trace": lambda: fe.guide(states, **kw),
        "  model called without a trace": lambda: fe.model(states, **kw),
        "plain torch loss, forward + backward": lambda: torch_loss().backward(),
        "Trace_ELBO differentiable_loss, forward + backward": lambda: elbo_loss().backward(),
    }


def alternate(rows: dict[str, Callable[[], object]], blocks: int, calls: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in rows}
    for fn in rows.values():  # warm-up (and compilation)
        for _ in range(3):
            fn()
    for _ in range(blocks):
        for name, fn in rows.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append(1000 * (time.perf_counter() - start) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300, help="training steps timed part by part")
    parser.add_argument("--blocks", type=int, default=9, help="alternating blocks of the alternatives table")
    parser.add_argument("--calls", type=int, default=20, help="calls per block")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd networks")
    parser.set_defaults(device="cpu")  # the parts are timed without device synchronisation: CPU only
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args))
    trainer = _trainer(args)
    with pyro.validation_enabled(False):
        parts = step_parts(trainer, args.steps)
        medians = {name: statistics.median(t[10:]) for name, t in parts.items()}
        total = sum(medians.values())
        print(f"\n{args.env}, 256-256, batch {args.batch}: one training step, part by part (median ms of {args.steps})")
        print("| part | ms | share |\n|---|---|---|")
        for name, ms in medians.items():
            print(f"| {name} | {ms:.2f} | {100 * ms / total:.0f} % |")
        print(f"| sum of the medians | {total:.2f} | |")
        costs = alternate(alternatives(trainer, args), args.blocks, args.calls)
        with agent_scope(trainer), frozen(trainer.agent.critic):
            pyro_costs = alternate(pyro_parts(trainer, args), args.blocks, args.calls)
    print(f"\nalternatives, ms / call (median of {args.blocks} alternating blocks of {args.calls} calls)")
    print("| alternative | ms |\n|---|---|")
    for name, ms in costs.items():
        print(f"| {name} | {ms:.3f} |")
    print("\nPyro's part of the E-step's loss, ms / call (alternating blocks as above; critic frozen)")
    print("| computation | ms |\n|---|---|")
    for name, ms in pyro_costs.items():
        print(f"| {name} | {ms:.3f} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Throughput: environment steps per second with updates, and the cost of Pyro's E-step vs plain torch.

    python benchmarks/throughput.py                       # HalfCheetah-v5, 256-256 networks, batch 256
    python benchmarks/throughput.py --env InvertedPendulum-v5 --steps 300

Prints two tables:
1. env steps/s of the full training step (act + env.step + M-step + E-step + target update) per thread count;
2. milliseconds per E-step: Pyro SVI with Trace_ELBO and JitTrace_ELBO vs the same loss written as plain
   torch (E[ε log π − Q] with rsample and torch.optim.Adam), and the M-step for scale.
"""

from __future__ import annotations

import argparse
import platform
import time

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, JitTrace_ELBO

from virel_ppl.config import Config
from virel_ppl.em import e_step, frozen, m_step
from virel_ppl.models import virel_model
from virel_ppl.train import Trainer


def time_it(fn, n: int, warmup: int = 20) -> float:
    """Median-free simple timing: mean seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def steps_per_second(env: str, threads: int, steps: int, batch: int) -> float:
    torch.set_num_threads(threads)
    cfg = Config(env=env, warmup_steps=1000, batch_size=batch, progress=False, tensorboard=False, threads=threads)
    trainer = Trainer(cfg)
    for _ in range(cfg.warmup_steps):
        trainer.env_step()

    def one_step():
        trainer.env_step()
        for _ in range(trainer.updates_due()):
            trainer.agent.update(trainer.replay.sample(batch))

    return 1.0 / time_it(one_step, steps)


def e_step_costs(env: str, threads: int, n: int, batch: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    trainer = Trainer(Config(env=env, batch_size=batch, progress=False, tensorboard=False))
    for _ in range(1000):
        trainer.env_step()
    agent = trainer.agent
    batch_data = trainer.replay.sample(batch)
    states, eps = batch_data.obs, torch.tensor(agent.config.alpha)
    prior = agent.prior
    costs = {}

    def pyro_step(svi):
        return lambda: agent._pyro_scoped(
            lambda: e_step(svi, agent.critic, states, eps=eps, q=agent.critic.q, prior=prior)
        )

    costs["Pyro SVI + Trace_ELBO"] = time_it(pyro_step(agent.svi), n)
    jit_svi = SVI(
        virel_model,
        agent.policy.guide,
        pyro.optim.Adam({"lr": 3e-4}),
        JitTrace_ELBO(max_plate_nesting=1, ignore_jit_warnings=True),
    )
    try:
        costs["Pyro SVI + JitTrace_ELBO"] = time_it(pyro_step(jit_svi), n)
    except Exception as err:  # report, don't hide: JIT tracing of closures can fail
        print(f"JitTrace_ELBO failed: {type(err).__name__}: {str(err).splitlines()[0]}")
        costs["Pyro SVI + JitTrace_ELBO"] = float("nan")
    with pyro.validation_enabled(False):
        costs["Pyro SVI + Trace_ELBO, validation off"] = time_it(pyro_step(agent.svi), n)
    opt = torch.optim.Adam(agent.policy.parameters(), lr=3e-4)

    def torch_step():
        with frozen(agent.critic):
            d = agent.policy.distribution(states)
            a = d.rsample()
            loss = (eps * d.log_prob(a) - agent.critic.q(states, a)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    costs["plain torch (same loss)"] = time_it(torch_step, n)
    costs["M-step (critic), for scale"] = time_it(
        lambda: m_step(agent.critic, agent.critic_optim, batch_data, agent.policy, 0.99, agent.value_target), n
    )
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--steps", type=int, default=500, help="timed environment steps per thread count")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, pyro {pyro.__version__}")
    print(f"\n{args.env}, networks 256-256, batch {args.batch}: full training step (1 M-step + 1 E-step per env step)")
    print("| threads | env steps/s |\n|---|---|")
    for t in args.threads:
        print(f"| {t} | {steps_per_second(args.env, t, args.steps, args.batch):.1f} |")
    t = args.threads[0]
    costs = e_step_costs(args.env, t, args.steps, args.batch)
    base = costs["plain torch (same loss)"]
    print(f"\nE-step cost, {t} thread(s): ms per step and ratio to plain torch")
    print("| implementation | ms / step | ratio |\n|---|---|---|")
    for name, sec in costs.items():
        print(f"| {name} | {1000 * sec:.2f} | {sec / base:.2f} |")


if __name__ == "__main__":
    main()

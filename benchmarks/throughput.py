"""Throughput: env steps/s of training against SB3's SAC, and the cost of Pyro's E-step against plain torch.

    python benchmarks/throughput.py --vs-sb3                        # HalfCheetah-v5, 256-256, batch 256, CPU
    python benchmarks/throughput.py --vs-sb3 --device cuda --steps 2000
    python benchmarks/throughput.py --steps 200                     # no SB3: our step and the E-step only

On ``--device cuda`` the trainer's update is one replayed CUDA graph (``virel_ppl/graphs.py``; ``--no-cuda-graph`` in
training turns it off); the output says which update ran (graph, or eager and why). Not yet run on a GPU.

Everything runs in one process, one torch thread (``--threads``), on one device, so that both sides see the same
machine load: the timed environment steps are cut into blocks that alternate between virel_ppl and SB3 (and, for
the E-step table, between the implementations), and each figure is the median over blocks. Both learners use the
same task, 256-256 networks, batch 256, learning rate 1e-3, 1,000 warm-up steps (``learning_starts``), one
gradient update per environment step (``train_freq=1, gradient_steps=1``) and the same device; SB3 keeps its other
SAC defaults (twin Q with target Q copies, automatic entropy tuning). Beside them run virel_ppl with the other Adam
kernel (``--fused-adam``) and the same update written out in plain torch (``PlainTorch``: what Pyro and the agent
cost on top of the arithmetic). SB3 is an optional extra:
``pip install stable-baselines3`` (or ``pip install -e ".[bench]"``).

Prints tables, then (with ``--vs-sb3``) ends with exactly two lines::

    ratio_vs_sb3 X.XX        virel_ppl env steps/s / SB3 SAC env steps/s
    estep_overhead X.XX      ms of the trainer's E-step (Pyro ELBO) / ms of the same loss in plain torch
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import replace

import pyro
import torch

from virel_ppl.config import Config
from virel_ppl.inference.em import SVIStep, adam, frozen, m_step
from virel_ppl.train import Trainer

WARMUP = 1000
# the Adam kernel training uses by default, and the flag that switches to the other one
KERNEL, OTHER_KERNEL = ("fused", "--no-fused-adam") if Config.fused_adam else ("foreach", "--fused-adam")
SVI_KERNEL = "fused" if Config.fused_adam else "single-tensor"  # what pyro.optim.Adam keeps per parameter
OURS_E_STEP = f"E-step, trainer's (differentiable_loss + one {KERNEL} Adam)"
TORCH_E_STEP = "E-step, plain torch (same loss)"


def _config(args, **overrides) -> Config:
    return Config(
        env=args.env,
        hidden=(256, 256),
        batch_size=args.batch,
        warmup_steps=WARMUP,
        policy_lr=1e-3,
        critic_lr=1e-3,
        updates_per_step=1.0,
        device=args.device,
        threads=args.threads,
        progress=False,
        tensorboard=False,
        **overrides,
    )


def machine_line(args) -> str:
    """The machine, the software and the load, printed first by each benchmark."""
    return (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"pyro {pyro.__version__}, device {args.device}, {args.threads} thread(s), "
        f"load average before: {os.getloadavg()[0]:.2f}"
    )


class Ours:
    """virel_ppl's training step exactly as ``Trainer.run`` runs it (act, env.step, replay, update), minus logging."""

    def __init__(self, cfg: Config) -> None:
        self.trainer = Trainer(cfg)
        self.batch = cfg.batch_size
        for _ in range(WARMUP):
            self.trainer.collect()

    def run(self, steps: int) -> None:
        trainer = self.trainer
        with pyro.validation_enabled(False):
            for _ in range(steps):
                trainer.collect()
                trainer.update()
        trainer.agent.first_nonfinite_step()  # the trainer reads its NaN record once per log_every
        float(trainer.stats["critic/q_loss"])  # ... and its statistics: wait for the device here, as the logger does


class PlainTorch(Ours):
    """The same training step with the update written out in plain torch, as a CleanRL script would: no Pyro, no
    agent, one function. Same networks, ``TanhNormal``, batch, learning rates and Adam kernel as ``Ours``; it
    computes the same update (M-step, then E-step, then the target update) up to rounding. It shows what removing
    every abstraction (Pyro's traces, the agent, the variant hooks) would gain on this machine."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        agent = self.trainer.agent
        self.critic_optim = adam(agent.critic.trainable_parameters(), cfg.critic_lr, cfg.fused_adam)
        self.policy_optim = adam(agent.policy.parameters(), cfg.policy_lr, cfg.fused_adam)

    def update(self, batch) -> None:
        agent, cfg = self.trainer.agent, self.trainer.config
        critic, policy, obs = agent.critic, agent.policy, batch.obs
        with torch.no_grad():  # M-step targets: r + γ(1 − d) V̄(s′) and E_π[min Q(s, a)]
            q_target = batch.rewards + cfg.gamma * (1.0 - batch.terminated) * critic.target_value(batch.next_obs)
            v_target = critic.q(obs, policy.distribution(obs).rsample())
        q1, q2 = critic.twin_q(obs, batch.actions)
        q_loss = 0.5 * ((q1 - q_target).pow(2).mean() + (q2 - q_target).pow(2).mean())
        v_loss = 0.5 * (critic.value(obs) - v_target).pow(2).mean()
        self.critic_optim.zero_grad(set_to_none=True)
        (q_loss + v_loss).backward()
        self.critic_optim.step()
        with frozen(critic):  # E-step: minimise E_π[ε log π(a|s) − Q(s, a)] over θ
            d = policy.distribution(obs)
            a = d.rsample()
            loss = (cfg.alpha * d.log_prob(a) - critic.q(obs, a)).mean()
            self.policy_optim.zero_grad(set_to_none=True)
            loss.backward()
            self.policy_optim.step()
        critic.update_target(cfg.tau)

    def run(self, steps: int) -> None:
        trainer = self.trainer
        for _ in range(steps):
            trainer.collect()
            for _ in range(trainer.schedule.due(trainer.step)):
                self.update(trainer.replay.sample(self.batch))


class SB3:
    """Stable-Baselines3 SAC with the same task, networks, batch, learning rate, warm-up and update ratio."""

    def __init__(self, args) -> None:
        import gymnasium as gym
        from stable_baselines3 import SAC

        self.model = SAC(
            "MlpPolicy",
            gym.make(args.env),
            learning_rate=1e-3,
            buffer_size=1_000_000,
            learning_starts=WARMUP,
            batch_size=args.batch,
            tau=0.005,
            gamma=0.99,
            train_freq=1,
            gradient_steps=1,
            policy_kwargs=dict(net_arch=[256, 256]),
            device=args.device,
            seed=0,
            verbose=0,
        )
        self.model.learn(WARMUP, progress_bar=False)

    def run(self, steps: int) -> None:
        self.model.learn(steps, reset_num_timesteps=False, progress_bar=False)


def alternate(runners: dict, steps: int, block: int) -> dict[str, float]:
    """Env steps/s of each runner: blocks of ``block`` steps, taken in turn, median over blocks."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for runner in runners.values():  # one untimed block each: allocator, caches, lazy optimisers
        runner.run(min(block, 20))
    for _ in range(max(1, steps // block)):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner.run(block)
            times[name].append(block / (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def e_step_costs(args, n: int, blocks: int = 9) -> dict[str, float]:
    """ms per E-step (and other parts of an update) on one fixed replay batch; blocks alternate between them."""
    ours = Ours(_config(args))
    agent = ours.trainer.agent
    batch = ours.trainer.replay.sample(args.batch)
    states = batch.obs
    eps = agent.variant.eps(torch.zeros((), device=agent.device), batch.rewards)
    kw = dict(eps=eps, q=agent.q_on_box, prior=agent.variant.prior)
    svi = SVIStep(agent.variant.model, agent.variant.guide, agent.elbo, 1e-3, agent.config.fused_adam)
    other = Ours(_config(args, fused_adam=not Config.fused_adam)).trainer.agent
    torch_opt = adam(agent.policy.parameters(), 1e-3, agent.config.fused_adam)

    def plain_torch():  # the same loss, E[ε log π(a|s) − Q(s, clip(a))] + const, by rsample, the same Adam kernel
        with frozen(agent.critic):
            d = agent.policy.distribution(states)
            a = d.rsample()
            loss = (eps * d.log_prob(a) - agent.q_on_box(states, a)).mean()
            torch_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch_opt.step()

    parts = {
        OURS_E_STEP: lambda: agent.e_step(agent.critic, states, **kw),
        f"E-step, same with the other Adam kernel ({OTHER_KERNEL})": lambda: other.e_step(
            other.critic, states, eps=eps, q=other.q_on_box, prior=other.variant.prior
        ),
        f"E-step, Pyro SVI.step (--no-fast-update: one {SVI_KERNEL} Adam per tensor)": lambda: svi(
            agent.critic, states, **kw
        ),
        TORCH_E_STEP: plain_torch,
        "M-step (critic), for scale": lambda: m_step(
            agent.critic, agent.critic_optim, batch, agent.policy, 0.99, agent.variant.value_target
        ),
        "whole update (M + E + target + NaN record)": lambda: agent.update(batch),
    }
    times: dict[str, list[float]] = {name: [] for name in parts}
    with pyro.validation_enabled(False):
        for fn in parts.values():
            for _ in range(10):
                fn()
        for _ in range(blocks):
            for name, fn in parts.items():
                _sync(args.device)
                start = time.perf_counter()
                for _ in range(n):
                    fn()
                _sync(args.device)
                times[name].append((time.perf_counter() - start) / n)
    print(f"whole update ran as: {agent.update_path}")
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--steps", type=int, default=1000, help="timed environment steps per learner")
    parser.add_argument("--block", type=int, default=100, help="environment steps per alternating block")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both learners)")
    parser.add_argument("--estep-calls", type=int, default=40, help="E-steps per timed block of the E-step table")
    parser.add_argument("--vs-sb3", action="store_true", help="also run SB3's SAC, side by side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args))
    costs = e_step_costs(args, args.estep_calls)
    base = costs[TORCH_E_STEP]
    print(f"\n{args.env}, 256-256 networks, batch {args.batch}: ms per call on one replay batch")
    print("(median of 9 blocks, alternating between the rows)")
    print("| part | ms / call | ratio to plain-torch E-step |\n|---|---|---|")
    for name, sec in costs.items():
        print(f"| {name} | {1000 * sec:.2f} | {sec / base:.2f} |")

    runners = {"virel_ppl": Ours(_config(args))}
    runners[f"virel_ppl {OTHER_KERNEL}"] = Ours(replace(_config(args), fused_adam=not Config.fused_adam))
    runners["same update in plain torch (no Pyro, no agent)"] = PlainTorch(_config(args))
    if args.vs_sb3:
        runners["SB3 SAC"] = SB3(args)
    rates = alternate(runners, args.steps, args.block)
    print(
        f"\nenv steps/s, act + env.step + one update per step, {args.steps} steps each in alternating blocks of "
        f"{args.block} (median); load average after: {os.getloadavg()[0]:.2f}"
    )
    if args.vs_sb3:
        print("| learner | env steps/s | ratio to SB3 SAC |\n|---|---|---|")
        for name, rate in rates.items():
            print(f"| {name} | {rate:.1f} | {rate / rates['SB3 SAC']:.2f} |")
    else:
        print("| learner | env steps/s |\n|---|---|")
        for name, rate in rates.items():
            print(f"| {name} | {rate:.1f} |")
    for name, runner in runners.items():
        if isinstance(runner, Ours):
            print(f"{name}: updates ran as {runner.trainer.agent.update_path}")
    if args.vs_sb3:
        print(f"ratio_vs_sb3 {rates['virel_ppl'] / rates['SB3 SAC']:.2f}")
    print(f"estep_overhead {costs[OURS_E_STEP] / base:.2f}")


if __name__ == "__main__":
    main()

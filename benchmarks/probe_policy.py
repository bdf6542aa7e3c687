"""What a trained policy does, from its run's checkpoint: how wide it is, how the critic sees its actions, and what
its samples earn beside its mode: why a learner stalls.

    python benchmarks/probe_policy.py runs/paper/Hopper-v5__virel__0 runs/paper/Hopper-v5__beta__0

Per run, on ``--states`` states drawn from its replay buffer (a fixed seed): H(π) (``agent.policy_entropy``: one
sample per state), the share of the mode's components within 1 % of the box's edge, the critic's Q at the mode and
its mean and spread over 8 samples of π per state (in units of the run's last ε: how peaked exp(Q/ε) is over what
the policy tries), and the return of ``--episodes`` episodes of the mode action (as every evaluation of the study)
beside that of sampled actions, on the same seeds. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from virel_ppl.analysis.diagnostics import last_logged_eps
from virel_ppl.runtime.checkpoints import agent_from_state, load_checkpoint
from virel_ppl.runtime.evaluation import evaluate


class Sampling:
    """An agent whose every action is a sample of π (what :func:`evaluate` asks of an actor, never the mode)."""

    def __init__(self, agent) -> None:
        self.agent, self.device = agent, agent.device

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return self.agent.act(obs, deterministic=False)


@torch.no_grad()
def probe(run_dir: Path, num_states: int, episodes: int, samples: int = 8) -> dict[str, float]:
    state, path = load_checkpoint(run_dir)
    agent, cfg = agent_from_state(state, path)
    replay = state["replay"]
    pick = torch.randperm(int(replay["size"]), generator=torch.Generator().manual_seed(0))[:num_states]
    obs = torch.as_tensor(replay["obs"][pick], dtype=torch.float32)
    torch.manual_seed(0)
    eps = last_logged_eps(run_dir) or cfg.alpha
    mode = agent.policy.mode(obs)
    edge = (mode - agent.box.low).abs().minimum((agent.box.high - mode).abs()) < 0.01 * (agent.box.high - agent.box.low)
    sampled = agent.policy.distribution(obs).sample((samples,))  # (samples, states, action_dim)
    q = torch.stack([agent.q_on_box(obs, a) for a in sampled])
    q_mode = agent.q_on_box(obs, mode)
    seed = cfg.seed + 20_000  # seeds of their own: not those of the run's evaluations
    return {
        "step": state["step"],
        "eps": eps,
        "entropy": float(agent.policy_entropy(obs)),
        "at_edge": float(edge.float().mean()),
        "q_mode_minus_mean": float((q_mode - q.mean(0)).mean() / eps),
        "q_spread": float(q.std(0).mean() / eps),
        "mode_return": float(evaluate(agent, cfg.env, episodes, seed).mean()),
        "sampled_return": float(evaluate(Sampling(agent), cfg.env, episodes, seed).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories with a checkpoint")
    parser.add_argument("--states", type=int, default=4096)
    parser.add_argument("--episodes", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        "| run | step | ε | H(π) | mode at the box edge | (Q(mode) − mean Q(a~π))/ε | sd of Q(a~π)/ε | "
        "return: mode | return: samples |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        p = probe(run, args.states, args.episodes)
        print(
            f"| {run.name} | {p['step']} | {p['eps']:.3g} | {p['entropy']:.2f} | {p['at_edge']:.1%} | "
            f"{p['q_mode_minus_mean']:.2f} | {p['q_spread']:.2f} | {p['mode_return']:.0f} | "
            f"{p['sampled_return']:.0f} |"
        )


if __name__ == "__main__":
    main()

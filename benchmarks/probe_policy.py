"""What a trained policy does, from its run's checkpoint: how wide it is, how the critic sees its actions, and what
its samples earn beside its mode: why a learner stalls.

    python benchmarks/probe_policy.py runs/paper/Hopper-v5__virel__0 runs/paper/Hopper-v5__beta__0

Per run, on ``--states`` states drawn from its replay buffer (a fixed seed): H(π) (``agent.policy_entropy``: one
sample per state), the share of the mode's components within 1 % of the box's edge, the critic's Q at the mode and
its mean and spread over 8 samples of π per state (in units of the run's last ε: how peaked exp(Q/ε) is over what
the policy tries), and the return of ``--episodes`` episodes of the mode action (as every evaluation of the study)
beside that of sampled actions, on the same seeds. Prints a Markdown table.

SB3's SAC runs (``algo = "sb3_sac"``) are probed the same way: its policy is a tanh-squashed Gaussian on the box
as ours is, its critic the min of twin Qs, and its ε the temperature α of the checkpoint. A finished SB3 run keeps
no replay buffer: ``--states-from RUN`` takes the states from another run's buffer (for every run given, so that all
are probed on the same states).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from virel_ppl.agent import VirelAgent
from virel_ppl.analysis.diagnostics import last_logged_eps
from virel_ppl.baselines import _ModeActor
from virel_ppl.config import ConfigError
from virel_ppl.inference.actions import ActionBox, TanhNormal
from virel_ppl.runtime.checkpoints import agent_from_state, load_checkpoint
from virel_ppl.runtime.evaluation import evaluate


class Sampling:
    """An agent whose every action is a sample of π (what :func:`evaluate` asks of an actor, never the mode)."""

    def __init__(self, agent) -> None:
        self.agent, self.device = agent, agent.device

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return self.agent.act(obs, deterministic=False)


class SB3Policy:
    """SB3's SAC actor as the probe reads a guide: ``distribution`` and ``mode`` on the env's box (SB3's actor
    squashes a Gaussian into [-1, 1] and its ``predict`` rescales that to the box)."""

    def __init__(self, actor, box: ActionBox) -> None:
        self.actor, self.box = actor, box

    def distribution(self, obs: torch.Tensor) -> TanhNormal:
        mean, log_std, _ = self.actor.get_action_dist_params(obs)  # log_std already clamped as SB3 acts
        return TanhNormal(mean, log_std.exp(), self.box)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.box.from_unit(torch.tanh(self.actor.get_action_dist_params(obs)[0]))


class SB3Agent:
    """What :func:`probe` reads of an agent, for an SB3 SAC model: its policy, its critic (min of the twins, on
    actions rescaled to [-1, 1] as SB3 stores them), its actions (SB3's own ``predict``, as the study evaluates it)."""

    policy_entropy = VirelAgent.policy_entropy  # the same estimate, from a fork of torch's random state

    def __init__(self, model, box: ActionBox) -> None:
        self.model, self.box, self.device = model, box, torch.device("cpu")
        self.policy = SB3Policy(model.actor, box)
        self.act = _ModeActor(model).act  # SB3's own predict, as the study evaluates it

    def q_on_box(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        q1, q2 = self.model.critic(obs, self.box.to_unit(self.box.clip(actions)))
        return torch.minimum(q1, q2).squeeze(-1)


def sb3_agent(state: dict) -> SB3Agent:
    """The SB3 SAC model of a checkpoint written by ``virel_ppl.baselines``: its networks only (no buffer)."""
    from stable_baselines3 import SAC

    from virel_ppl.runtime.envs import make_env

    env = make_env(state["config"]["env"])
    model = SAC("MlpPolicy", env, buffer_size=1, device="cpu")  # the buffer is not needed to act or score
    model.policy.load_state_dict(state["sb3"]["policy"])
    return SB3Agent(model, ActionBox.from_space(env.action_space))


def buffer_states(state: dict, run_dir: Path) -> torch.Tensor:
    """The observations of the replay buffer in ``run_dir``'s checkpoint ``state`` (ours or SB3's)."""
    if "sb3" not in state:
        return torch.as_tensor(state["replay"]["obs"][: int(state["replay"]["size"])])
    if state["sb3"]["replay"] is None:
        raise ConfigError(
            f"The checkpoint of {run_dir} keeps no replay buffer (a finished SB3 run): give --states-from RUN, a run "
            "whose buffer holds the states to probe on."
        )
    return torch.as_tensor(state["sb3"]["replay"]["observations"]).flatten(1)


def states_of(run_dir: Path) -> torch.Tensor:
    """The observations of ``run_dir``'s replay buffer (``--states-from``), read once for every run probed."""
    return buffer_states(load_checkpoint(run_dir, keys=("config", "step"))[0], run_dir)


@torch.no_grad()
def probe(
    run_dir: Path, num_states: int, episodes: int, samples: int = 8, states: torch.Tensor | None = None
) -> dict[str, float]:
    """The probe's values for the run in ``run_dir``, on ``num_states`` of ``states`` (default: its own buffer's)."""
    state, path = load_checkpoint(run_dir, keys=("config", "step"))
    if "sb3" in state:
        agent, env_id, seed = sb3_agent(state), state["config"]["env"], state["config"]["seed"]
        eps = float(state["sb3"]["log_ent_coef"].exp())
    else:
        agent, cfg = agent_from_state(state, path)
        env_id, seed, eps = cfg.env, cfg.seed, last_logged_eps(run_dir) or cfg.alpha
    if states is None:
        states = buffer_states(state, run_dir)
    pick = torch.randperm(len(states), generator=torch.Generator().manual_seed(0))[:num_states]
    obs = states[pick].float()
    torch.manual_seed(0)
    mode = agent.policy.mode(obs)
    edge = (mode - agent.box.low).abs().minimum((agent.box.high - mode).abs()) < 0.01 * (agent.box.high - agent.box.low)
    sampled = agent.policy.distribution(obs).sample((samples,))  # (samples, states, action_dim)
    q = torch.stack([agent.q_on_box(obs, a) for a in sampled])
    q_mode = agent.q_on_box(obs, mode)
    seed += 20_000  # seeds of their own: not those of the run's evaluations
    return {
        "step": state["step"],
        "eps": eps,
        "entropy": float(agent.policy_entropy(obs)),
        "at_edge": float(edge.float().mean()),
        "q_mode_minus_mean": float((q_mode - q.mean(0)).mean() / eps),
        "q_spread": float(q.std(0).mean() / eps),
        "mode_return": float(evaluate(agent, env_id, episodes, seed).mean()),
        "sampled_return": float(evaluate(Sampling(agent), env_id, episodes, seed).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories with a checkpoint")
    parser.add_argument("--states", type=int, default=4096)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--states-from", type=Path, help="a run whose replay buffer gives every run's states")
    args = parser.parse_args()
    torch.set_num_threads(1)
    states = states_of(args.states_from) if args.states_from else None
    print(
        "| run | step | ε | H(π) | mode at the box edge | (Q(mode) − mean Q(a~π))/ε | sd of Q(a~π)/ε | "
        "return: mode | return: samples |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        p = probe(run, args.states, args.episodes, states=states)
        print(
            f"| {run.name} | {p['step']} | {p['eps']:.3g} | {p['entropy']:.2f} | {p['at_edge']:.1%} | "
            f"{p['q_mode_minus_mean']:.2f} | {p['q_spread']:.2f} | {p['mode_return']:.0f} | "
            f"{p['sampled_return']:.0f} |"
        )


if __name__ == "__main__":
    main()

"""Look at a trained agent's action posterior with ArviZ: guide π_θ vs VIREL's target exp(Q/ε)·prior.

    python examples/diagnose_agent.py runs/<run>                              # 4 states along an episode
    python examples/diagnose_agent.py runs/<run> --states replay --num-states 6
    virel_ppl diagnose runs/<run>                                             # the same as a command

The steps, each one call: load the agent, pick states, draw guide and (importance-resampled) target actions into
an ``arviz.InferenceData``, then read k̂/ESS and compare the two groups with ``az.summary`` and a density plot.
"""

from pathlib import Path

import arviz as az
import torch
import tyro

from virel_ppl.analysis.diagnostics import (
    KHAT_BAD,
    agent_action_posterior,
    last_logged_eps,
    plot_action_posterior,
    replay_states,
    rollout_states,
)
from virel_ppl.cli import DiagnoseArgs
from virel_ppl.runtime.checkpoints import CHECKPOINT, load_agent


def main(args: DiagnoseArgs) -> None:
    torch.set_num_threads(1)
    agent, config = load_agent(args.run_dir, args.device)
    if args.states == "rollout":
        states = rollout_states(agent, config.env, args.num_states, seed=args.seed)
    else:
        replay = torch.load(Path(args.run_dir) / CHECKPOINT, weights_only=False)["replay"]
        states = replay_states(replay["obs"], args.num_states, seed=args.seed)
    eps = args.eps if args.eps is not None else (last_logged_eps(args.run_dir) or config.alpha)

    post = agent_action_posterior(agent, states, eps=eps, num_samples=args.num_samples, seed=args.seed)
    idata = post.idata
    print(idata)  # posterior (guide), target, sample_stats (log weights), constant_data, psis
    print("\nguide π_θ:\n", az.summary(idata, kind="stats"))
    print("\ntarget ∝ exp(Q/ε)·prior:\n", az.summary(idata, group="target", kind="stats"))
    print(f"\n{post.table()}\n")
    bad = post.diagnostics.khat >= KHAT_BAD
    print(
        f"ε = {eps:.3g}: {bad.sum()} of {len(bad)} states have k̂ ≥ {KHAT_BAD} (the guide misses target mass there); "
        f"mean KL(π‖p) = {post.diagnostics.kl.mean():.3f} nats."
    )
    out = args.out or Path(args.run_dir) / "posterior"
    out.mkdir(parents=True, exist_ok=True)
    plot_action_posterior(post, out / "action_posterior.png")
    print(f"plot: {out / 'action_posterior.png'}")


if __name__ == "__main__":
    main(tyro.cli(DiagnoseArgs))

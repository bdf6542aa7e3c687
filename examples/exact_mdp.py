"""VIREL's claims checked exactly on small MDPs: one table per claim, one figure per claim.

    python examples/exact_mdp.py [--out-dir docs/img]

Sections follow docs/theory.md: ground truth, EM = policy iteration (App. F.5), ELBO ↔ KL (Theorem 3),
the greedy limit (Lemma 1), and the risky MDP where pseudo-likelihood EM and MERLIN are risk-seeking.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from virel_ppl.exact import (  # noqa: E402
    TabularMDP,
    action_posterior,
    chain_mdp,
    complete_em,
    elbo,
    expected_kl,
    expected_return,
    fit_policy,
    greedy,
    gridworld_mdp,
    log_evidence,
    log_exp_utility,
    policy_iteration,
    pseudo_likelihood_em,
    residual_temperature,
    risky_mdp,
    soft_policy,
    soft_value_iteration,
    uniform_policy,
    value_iteration,
)

START, SAFE, RISKY = 0, 0, 1  # risky_mdp: the decision state, the sure action and the lottery


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [header] + [[f"{c:.6g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n## {title}")
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def optimal_return(mdp: TabularMDP) -> float:
    """J* as the exact value of the greedy policy of Q* (VI's own estimate is only within its tolerance)."""
    return expected_return(mdp, greedy(value_iteration(mdp)))


def max_difference(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
    """Largest entry-wise gap between two runs' iterates; inf when they take different numbers of steps."""
    if len(xs) != len(ys):
        return math.inf
    return max(float((x - y).abs().max()) for x, y in zip(xs, ys, strict=True))


def ground_truth(mdps: dict[str, TabularMDP]) -> None:
    rows = []
    for name, mdp in mdps.items():
        pi = policy_iteration(mdp)
        error = float((pi.q_values[-1] - value_iteration(mdp)).abs().max())
        steps = len(pi.policies) - 1
        rows.append([name, mdp.n_states, mdp.n_actions, mdp.gamma, optimal_return(mdp), steps, error])
    print_table(
        "Ground truth: value iteration vs policy iteration",
        ["MDP", "S", "A", "gamma", "J*", "PI steps", "max|Q_PI - Q_VI|"],
        rows,
    )


def em_is_policy_iteration(mdps: dict[str, TabularMDP], out_dir: Path) -> None:
    """App. F.5: complete M-step = policy evaluation, complete E-step with ε → 0 = greedy improvement."""
    rows = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    plotted = iter(axes)
    for name, mdp in mdps.items():
        j_star = optimal_return(mdp)
        runs = {
            "policy iteration": policy_iteration(mdp),
            "EM, eps = 0 (greedy E-step)": complete_em(mdp, 0.0),
            "EM, eps = 1e-6 (Pyro posterior)": complete_em(mdp, 1e-6),
            "EM, eps = residual": complete_em(mdp, residual_temperature(mdp)),
            "EM, eps = 0.3 fixed": complete_em(mdp, 0.3),
        }
        pi, em0, em6, emr, em3 = runs.values()
        rows.append(
            [
                name,
                len(pi.policies) - 1,
                len(em0.policies) - 1,
                f"{max_difference(em0.policies, pi.policies):.1e}",
                f"{max_difference(em6.q_values, pi.q_values):.1e}",
                len(emr.policies) - 1,
                f"{abs(j_star - expected_return(mdp, emr.policies[-1])):.1e}",
                j_star - expected_return(mdp, em3.policies[-1]),
            ]
        )
        if name == "risky":
            continue  # one improvement step: nothing to see in a plot
        ax = next(plotted)
        for (label, run), style in zip(runs.items(), ["o-", "x", "+", "s--", "^:"], strict=True):
            returns = [expected_return(mdp, p) for p in run.policies]
            ax.plot(returns, style, label=label, markersize=8 if len(style) == 1 else 5, mfc="none")
        ax.axhline(j_star, color="k", lw=0.8, ls="--", label="J* (value iteration)")
        ax.set(title=name, xlabel="iteration k", ylabel="J(pi_k)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Complete-step EM is policy iteration (VIREL App. F.5)")
    fig.tight_layout()
    fig.savefig(out_dir / "exact_em_policy_iteration.png", dpi=120)
    plt.close(fig)
    print_table(
        "App. F.5: EM with complete steps vs policy iteration (iterations = improvement steps)",
        [
            "MDP",
            "PI",
            "EM eps=0",
            "max_k|pi_k EM(0) - pi_k PI|",
            "max_k|Q_k EM(1e-6) - Q_k PI|",
            "EM residual",
            "|J - J*|",
            "J* - J, eps=0.3",
        ],
        rows,
    )


def elbo_and_kl(mdp: TabularMDP, eps: float, out_dir: Path) -> None:
    """Theorem 3: ELBO(θ) = log Z − E_d KL(π_θ ‖ π_ω) for every θ, so argmax ELBO = argmin KL."""
    q = value_iteration(mdp)
    states = torch.arange(mdp.n_states).repeat_interleave(torch.arange(mdp.n_states) % 3 + 1)  # non-uniform d
    log_z = log_evidence(q, states, eps)
    thetas, elbos = fit_policy(q, states, eps, steps=150, lr=0.3)
    kls = [expected_kl(q, states, eps, theta) for theta in thetas]
    generator = torch.Generator().manual_seed(0)
    named = {
        "uniform (theta = 0)": torch.zeros_like(q),
        "random (seed 0)": 3 * torch.randn(q.shape, generator=generator, dtype=torch.float64),
        "greedy-ish (theta = 10 Q)": 10 * q,
        "SVI, 50 steps": thetas[50],
        "SVI, 150 steps": thetas[-1],
        "posterior (theta = Q/eps)": q / eps,
    }
    rows = []
    for label, theta in named.items():
        value, kl = elbo(q, states, eps, theta), expected_kl(q, states, eps, theta)
        rows.append([label, value, log_z - kl, f"{value - (log_z - kl):.1e}", kl])
    print_table(
        f"Theorem 3 on the slippery gridworld, eps = {eps}, log Z = E_d log p(O|s) = {log_z:.6f}",
        ["theta", "ELBO (TraceEnum_ELBO)", "log Z - E_d KL", "difference", "E_d KL(pi_theta||pi_omega)"],
        rows,
    )

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(elbos, label="ELBO(theta_t), Pyro TraceEnum_ELBO")
    steps = range(0, len(elbos), 5)
    left.plot(steps, [log_z - kls[t] for t in steps], "o", mfc="none", label="log Z - E_d KL")
    left.axhline(log_z, color="k", lw=0.8, ls="--", label="log Z")
    left.set(xlabel="SVI step t", ylabel="nats", title="E-step by SVI: ELBO and log Z - KL coincide")
    left.legend(fontsize=8)
    right.semilogy(kls)
    right.set(xlabel="SVI step t", ylabel="E_d KL(pi_theta || pi_omega)", title="...so SVI minimises the KL")
    fig.suptitle("max_theta ELBO = min_theta E_d(s) KL(pi_theta || pi_omega) (VIREL Theorem 3)")
    fig.tight_layout()
    fig.savefig(out_dir / "exact_elbo_kl.png", dpi=120)
    plt.close(fig)


def greedy_limit(mdps: dict[str, TabularMDP], out_dir: Path) -> None:
    """Lemma 1: mass off argmax_a Q*(s, a) is at most (A-1) exp(-Δ/ε), Δ the action gap."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    rows = []
    for name, mdp in mdps.items():
        q, j_star = value_iteration(mdp), optimal_return(mdp)
        top = q.max(-1, keepdim=True).values
        optimal = (top - q) < 1e-9
        gap = torch.where(optimal, torch.inf, top - q).min(-1).values
        epsilons = torch.logspace(1, -6, 22, dtype=torch.float64).tolist()
        off, bound, j_gap, em_gap = [], [], [], []
        for eps in epsilons:
            posterior = action_posterior(q, eps)
            off.append(float((posterior * ~optimal).sum(-1).max()))
            bound.append(float(((~optimal).sum(-1) * torch.exp(-gap / eps)).clamp(max=1).max()))
            j_gap.append(j_star - expected_return(mdp, posterior))
            em_gap.append(j_star - expected_return(mdp, complete_em(mdp, eps).policies[-1]))
        left.loglog(epsilons, off, "o-", ms=3, label=f"{name}: posterior mass off argmax Q*")
        left.loglog(
            epsilons,
            bound,
            ":",
            color=left.lines[-1].get_color(),
            label=f"{name}: bound #(a not optimal) exp(-gap/eps)",
        )
        right.loglog(epsilons, [max(g, 1e-17) for g in j_gap], "o-", ms=3, label=f"{name}: softmax(Q*/eps)")
        right.loglog(epsilons, [max(g, 1e-17) for g in em_gap], "x--", ms=4, label=f"{name}: EM fixed point")
        for eps, o, jg, eg in zip(epsilons, off, j_gap, em_gap, strict=True):
            if any(math.isclose(eps, e, rel_tol=1e-9) for e in (1.0, 1e-1, 1e-2, 1e-4, 1e-6)):
                rows.append([name, f"{gap.min():.3g}", f"{eps:g}", f"{o:.2e}", f"{jg:.2e}", f"{eg:.2e}"])
    left.set(xlabel="eps", ylabel="max_s p(a not optimal|s,O)", ylim=(1e-30, 2), title="posterior -> greedy")
    right.set(
        xlabel="eps",
        ylabel="J* - J(pi)  (floored at 1e-17)",
        ylim=(1e-17, 10),
        title="...and its return -> J*",
    )
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.suptitle("As eps -> 0 the Boltzmann posterior becomes greedy (VIREL Lemma 1)")
    fig.tight_layout()
    fig.savefig(out_dir / "exact_greedy_limit.png", dpi=120)
    plt.close(fig)
    print_table(
        "Lemma 1: posterior softmax(Q*/eps) and the complete-EM fixed point as eps -> 0",
        ["MDP", "min action gap", "eps", "max off-argmax mass", "J* - J(softmax)", "J* - J(EM fixed pt)"],
        rows,
    )


def flip_temperature(prefers_risky: Callable[[float], bool], low: float = 0.1, high: float = 100.0) -> float:
    """Bisection in log-temperature for where a method's preferred action flips from risky to safe."""
    for _ in range(20):  # the bracket shrinks to a factor 1000 ** (2 ** -20) ≈ 1 + 7e-6
        mid = math.sqrt(low * high)
        low, high = (mid, high) if prefers_risky(mid) else (low, mid)
    return math.sqrt(low * high)


def risky_contrasts(out_dir: Path) -> None:
    """Pseudo-likelihood EM and MERLIN weight trajectories by exp(G/η) and gamble; VIREL does not."""
    mdp = risky_mdp()
    j_star, temps = optimal_return(mdp), torch.logspace(-0.5, 2, 16, dtype=torch.float64).tolist()
    uniform = uniform_policy(mdp)
    curves: dict[str, list[tuple[float, float]]] = {k: [] for k in ("pl", "merlin", "soft", "virel")}
    merlin_q, soft_q = [], []
    for t in temps:
        pl_posterior = torch.softmax(uniform.log() + log_exp_utility(mdp, uniform, t), -1)
        q_m, q_s = soft_value_iteration(mdp, t), soft_value_iteration(mdp, t, optimistic=False)
        merlin_q.append(float(q_m[START, RISKY] - q_m[START, SAFE]))
        soft_q.append(float(q_s[START, RISKY] - q_s[START, SAFE]))
        policies = {
            "pl": pl_posterior,
            "merlin": soft_policy(q_m, t),
            "soft": soft_policy(q_s, t),
            "virel": complete_em(mdp, t).policies[-1],
        }
        for key, policy in policies.items():
            curves[key].append((float(policy[START, RISKY]), expected_return(mdp, policy)))
    labels = {
        "pl": "pseudo-likelihood posterior (1 E-step, eta)",
        "merlin": "MERLIN soft VI policy (eta)",
        "virel": "VIREL complete-EM fixed point (eps)",
        "soft": "max-ent RL, expected backup (eta); = VIREL here",
    }
    table_temps = (0.5, 1.0, 2.0, 10.0)
    pl_runs = {eta: pseudo_likelihood_em(mdp, eta, max_iters=100) for eta in table_temps}
    virel_runs = {eps: complete_em(mdp, eps) for eps in (1.0, 10.0)}

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    (a, b), (c, d) = axes
    for (key, label), style in zip(labels.items(), ["o-", "s-", "x--", "o:"], strict=True):
        a.semilogx(temps, [p for p, _ in curves[key]], style, ms=4, mfc="none", label=label)
        b.semilogx(temps, [j for _, j in curves[key]], style, ms=4, mfc="none", label=label)
    a.axhline(0.5, color="k", lw=0.5, ls=":")
    a.set(xlabel="temperature (eta or eps)", ylabel="pi(risky | start)", title="who takes the lottery?")
    b.axhline(j_star, color="k", lw=0.8, ls="--", label="J* = 2 (always safe)")
    b.axhline(0.9, color="r", lw=0.8, ls="--", label="J = 0.9 (always risky)")
    b.set(xlabel="temperature (eta or eps)", ylabel="J(pi) (risk-neutral return)", title="what it earns")
    c.semilogx(temps, merlin_q, "o-", ms=3, label="MERLIN: r + g eta log E exp(V(s')/eta)")
    c.semilogx(temps, soft_q, "o-", ms=3, label="expected backup: r + g E V(s')")
    c.axhline(0, color="k", lw=0.5)
    c.set(xlabel="eta", ylabel="Q(start, risky) - Q(start, safe)", title="optimism of the soft max over s'")
    for eta, run in pl_runs.items():
        d.plot([float(p[START, RISKY]) for p in run.policies], label=f"pseudo-likelihood EM, eta = {eta:g}")
    for (eps, run), color in zip(virel_runs.items(), ["k", "gray"], strict=True):
        risky = [float(p[START, RISKY]) for p in run.policies]
        d.plot(risky, "--", color=color, marker="o", ms=4, label=f"VIREL EM, eps = {eps:g}")
    d.set(xlabel="EM iteration", ylabel="pi_k(risky | start)", title="EM iterates from the uniform policy")
    for ax in (a, b, c, d):
        ax.legend(fontsize=7)
    fig.suptitle("Risky MDP: safe pays 2; the lottery pays 0.9 on average (9 w.p. 0.1)")
    fig.tight_layout()
    fig.savefig(out_dir / "exact_risky.png", dpi=120)
    plt.close(fig)

    rows = []
    for t in table_temps:
        pl, q_merlin = pl_runs[t], soft_value_iteration(mdp, t)
        virel = complete_em(mdp, t).policies[-1]
        row: list[object] = [t, len(pl.policies) - 1]
        for policy in (pl.policies[-1], soft_policy(q_merlin, t), virel):
            row += [f"{float(policy[START, RISKY]):.4f}", expected_return(mdp, policy)]
        rows.append(row + [float(q_merlin[START, RISKY] - q_merlin[START, SAFE])])
    print_table(
        "Risky MDP (J* = 2 by always playing safe; the lottery's mean is 0.9; PL-EM capped at 100 steps)",
        [
            "temp",
            "PL-EM iters",
            "PL-EM p(risky)",
            "PL-EM J",
            "MERLIN p(risky)",
            "MERLIN J",
            "VIREL p(risky)",
            "VIREL J",
            "MERLIN Q(risky)-Q(safe)",
        ],
        rows,
    )
    annealed = complete_em(mdp, residual_temperature(mdp)).policies[-1]
    print(
        f"VIREL EM with the residual temperature: p(risky|start) = {float(annealed[START, RISKY]):g}, "
        f"J = {expected_return(mdp, annealed):.6g} (J* = {j_star:g})"
    )
    merlin_flip = flip_temperature(lambda t: bool(soft_value_iteration(mdp, t)[START].argmax() == RISKY))
    pl_flip = flip_temperature(lambda t: bool(log_exp_utility(mdp, uniform, t)[START].argmax() == RISKY))
    virel_max = max(p for p, _ in curves["virel"])
    print(
        f"preferred action at start flips from risky to safe at: MERLIN eta = {merlin_flip:.4f}, "
        f"pseudo-likelihood eta = {pl_flip:.4f}; VIREL: max p(risky|start) over eps in "
        f"[{temps[0]:.3g}, {temps[-1]:g}] = {virel_max:.4f} < 0.5"
    )


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--out-dir", type=Path, default=Path("docs/img"), help="where the PNGs go")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead

    mdps = {
        "chain": chain_mdp(),
        "gridworld 5x5 slip 0.1": gridworld_mdp(5, 5, slip=0.1),
        "risky": risky_mdp(),
    }
    ground_truth(mdps)
    em_is_policy_iteration(mdps, args.out_dir)
    elbo_and_kl(mdps["gridworld 5x5 slip 0.1"], eps=1.0, out_dir=args.out_dir)
    greedy_limit({"chain": mdps["chain"], "gridworld": mdps["gridworld 5x5 slip 0.1"]}, args.out_dir)
    risky_contrasts(args.out_dir)
    print(f"\nfigures written to {args.out_dir}/exact_*.png")


if __name__ == "__main__":
    main()

"""Known-answer checks of every guide × divergence: how close does the E-step get to the exact posterior?

With a fixed critic Q (no environment), VIREL's E-step targets the Boltzmann posterior

    p(a|s, O) = exp(Q(s, a)/ε) / Z      on the action box (uniform prior),

which on a 1-D or 2-D box we can normalise on a grid. Each guide is fitted with ``virel_ppl.inference.em.e_step`` (SVI,
the same call the trainer makes, ε/N scaling included) on a batch of states, then scored at those states by

- KL(q‖p) = E_q[log q − log p]   (Monte Carlo with the guide's exact log-density; what the ELBO minimises),
- KL(p‖q) = ∫ p (log p − log q)  (quadrature on the grid; large when q misses a mode of p).

Problems: a unimodal 1-D posterior, a bimodal 1-D posterior (unequal modes), a bimodal 2-D posterior with
correlated modes, and a 6-action discrete posterior (Categorical guide; exact: softmax(Q/ε)).

    python benchmarks/known_answer_kl.py                        # the full table (≈ 15-30 min on one core)
    python benchmarks/known_answer_kl.py --problems bimodal_1d --guides gaussian mixture flow --elbos trace
    python benchmarks/known_answer_kl.py --plots docs/img        # also the posterior plots for the docs

Fitted guides are cached in ``--cache`` (default ``runs/known_answer_cache``), one file per problem × guide ×
divergence × steps, so a second run only fits what is missing; ``--fresh`` refits everything.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyro
import pyro.optim
import torch
from pyro.infer import SVI
from torch import nn

from virel_ppl.inference.actions import ActionBox, DiscreteActions
from virel_ppl.inference.divergences import make_elbo
from virel_ppl.inference.em import e_step
from virel_ppl.inference.guides import GUIDES, PolicyGuide
from virel_ppl.inference.models import virel_model

OBS_DIM = 3
NUM_STATES = 4
EPS = 1.0


def _log_gauss_mixture(a: torch.Tensor, weights, means, covs) -> torch.Tensor:
    """log Σ_k w_k N(a; m_k, C_k) for a of shape (..., D)."""
    comps = [
        math.log(w) + torch.distributions.MultivariateNormal(torch.tensor(m), torch.tensor(c)).log_prob(a)
        for w, m, c in zip(weights, means, covs)
    ]
    return torch.logsumexp(torch.stack(comps, -1), -1)


@dataclass(frozen=True)
class Problem:
    """A fixed critic: ``log_target(a) = Q(a)/ε`` on the unit box ``[-1, 1]^dim`` (or one value per action)."""

    name: str
    description: str
    dim: int
    log_target: Callable[[torch.Tensor], torch.Tensor]
    n_actions: int | None = None

    @property
    def discrete(self) -> bool:
        return self.n_actions is not None

    def actions(self) -> ActionBox | DiscreteActions:
        return DiscreteActions(self.n_actions) if self.discrete else ActionBox([-1.0] * self.dim, [1.0] * self.dim)

    def q(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q(s, a)/ε·ε, independent of s, broadcast to one value per state (and per particle / enumerated a)."""
        value = self.log_target(actions) * EPS
        return value.expand(torch.broadcast_shapes(value.shape, states.shape[:-1]))


DISCRETE_Q = torch.tensor([1.0, 2.5, 0.0, 2.2, -1.0, 1.5])

PROBLEMS: dict[str, Problem] = {
    "unimodal_1d": Problem(
        "unimodal_1d",
        "Q(a)/ε = −(a − 0.3)²/(2·0.2²): a (barely) truncated Gaussian",
        1,
        lambda a: -0.5 * ((a[..., 0] - 0.3) / 0.2) ** 2,
    ),
    "bimodal_1d": Problem(
        "bimodal_1d",
        "exp(Q/ε) = 0.35 N(−0.5, 0.12²) + 0.65 N(0.45, 0.15²)",
        1,
        lambda a: _log_gauss_mixture(a, [0.35, 0.65], [[-0.5], [0.45]], [[[0.12**2]], [[0.15**2]]]),
    ),
    "bimodal_2d": Problem(
        "bimodal_2d",
        "exp(Q/ε) = ½ N((−.45, .4), Σ₊) + ½ N((.45, −.4), Σ₋), correlations ±0.7",
        2,
        lambda a: _log_gauss_mixture(
            a,
            [0.5, 0.5],
            [[-0.45, 0.4], [0.45, -0.4]],
            [[[0.03, 0.021], [0.021, 0.03]], [[0.03, -0.021], [-0.021, 0.03]]],
        ),
    ),
    "discrete_6": Problem(
        "discrete_6",
        "6 actions, Q = (1, 2.5, 0, 2.2, −1, 1.5): p = softmax(Q/ε)",
        6,
        lambda a: (a * DISCRETE_Q).sum(-1),
        n_actions=6,
    ),
}

CONTINUOUS_GUIDES = ("tanh_normal", "gaussian", "beta", "mixture", "flow")
CONTINUOUS_ELBOS = ("trace", "meanfield", "renyi", "iwae", "tail_adaptive", "graph")
DISCRETE_GUIDES = ("categorical",)
DISCRETE_ELBOS = ("enum", "graph")


def fixed_states(seed: int = 0) -> torch.Tensor:
    return torch.randn(NUM_STATES, OBS_DIM, generator=torch.Generator().manual_seed(seed))


# --- fitting ------------------------------------------------------------------------------------------------------


def fit(
    problem: Problem,
    guide_name: str,
    elbo_name: str,
    steps: int = 1500,
    lr: float = 1e-2,
    num_particles: int = 8,
    hidden: Sequence[int] = (64, 64),
    seed: int = 0,
    guide_factory: Callable[[int, ActionBox | DiscreteActions], PolicyGuide] | None = None,
) -> PolicyGuide:
    """Fit ``GUIDES[guide_name]`` to the problem's posterior by ``steps`` E-steps with estimator ``elbo_name``.

    Every estimator uses ``num_particles`` particles (so differences come from the divergence, not variance);
    the learning rate decays tenfold over the run.
    """
    pyro.clear_param_store()
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    actions = problem.actions()
    guide = (guide_factory or GUIDES[guide_name])(OBS_DIM, actions, hidden=hidden)
    elbo = make_elbo(elbo_name, guide, None if elbo_name == "enum" else num_particles)
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1.0 / steps), "clip_norm": 10.0})
    svi = SVI(virel_model, guide.guide, optim, elbo)
    states, critic = fixed_states(), nn.Module()  # the critic is a fixed function: nothing to freeze
    for _ in range(steps):
        e_step(svi, critic, states, eps=EPS, q=problem.q, prior=lambda s: actions.uniform())
    return guide


# --- exact posterior and KLs -------------------------------------------------------------------------------------


def grid(problem: Problem, per_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Grid points on the box (midpoints), the exact log-posterior there, and the cell volume."""
    if problem.discrete:
        points = torch.eye(problem.n_actions)
        log_t = problem.log_target(points)
        return points, log_t - torch.logsumexp(log_t, 0), 1.0
    n = per_dim or (4000 if problem.dim == 1 else 300)
    axis = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 - 1
    points = torch.cartesian_prod(*[axis] * problem.dim).reshape(-1, problem.dim)
    cell = (2.0 / n) ** problem.dim
    log_t = problem.log_target(points.float()).double()
    log_z = torch.logsumexp(log_t, 0) + math.log(cell)
    return points.float(), log_t - log_z, cell


@torch.no_grad()
def kl_divergences(problem: Problem, guide: PolicyGuide, samples: int = 20_000) -> tuple[float, float]:
    """(KL(q‖p), KL(p‖q)), averaged over the fitted states."""
    points, log_p, cell = grid(problem)
    states = fixed_states()
    log_z = torch.logsumexp(problem.log_target(points).double() + math.log(cell), 0)
    reverse, forward = [], []
    for s in states:
        d = guide.distribution(s[None])
        if problem.discrete:
            log_q = d.log_prob(points[:, None, :])[:, 0].double()
            reverse.append((log_q.exp() * (log_q - log_p)).sum().item())
        else:
            a = d.sample((samples,))[:, 0]
            log_q_a = d.log_prob(a[:, None, :])[:, 0].double()
            log_p_a = problem.log_target(a).double() - log_z
            reverse.append((log_q_a - log_p_a).mean().item())
            log_q = torch.cat([d.log_prob(chunk[:, None, :])[:, 0] for chunk in points.split(50_000)]).double()
        p = log_p.exp()
        forward.append((p * (log_p - log_q)).sum().item() * cell)
    return sum(reverse) / len(reverse), sum(forward) / len(forward)


# --- the table and the plots --------------------------------------------------------------------------------------


def run(
    problems: Sequence[str],
    guides: Sequence[str],
    elbos: Sequence[str],
    steps: int,
    plots: Path | None = None,
    cache: Path | None = None,
) -> dict[tuple[str, str, str], tuple[float, float]]:
    results: dict[tuple[str, str, str], tuple[float, float]] = {}
    for pname in problems:
        problem = PROBLEMS[pname]
        g_names = [g for g in guides if (g in DISCRETE_GUIDES) == problem.discrete]
        e_names = [e for e in elbos if e in (DISCRETE_ELBOS if problem.discrete else CONTINUOUS_ELBOS)]
        fitted: dict[tuple[str, str], PolicyGuide] = {}
        for g in g_names:
            for e in e_names:
                t0 = time.time()
                path = cache / f"{pname}__{g}__{e}__{steps}.pt" if cache is not None else None
                if path is not None and path.exists():
                    saved = torch.load(path, weights_only=False)
                    guide = GUIDES[g](OBS_DIM, problem.actions(), hidden=(64, 64))
                    guide.load_state_dict(saved["guide"])
                    results[pname, g, e] = saved["kl"]
                else:
                    guide = fit(problem, g, e, steps=steps)
                    results[pname, g, e] = kl_divergences(problem, guide)
                    if path is not None:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        torch.save({"guide": guide.state_dict(), "kl": results[pname, g, e]}, path)
                fitted[g, e] = guide
                rev, fwd = results[pname, g, e]
                print(
                    f"  {pname:12s} {g:12s} {e:14s} KL(q‖p) {rev:7.4f}  KL(p‖q) {fwd:7.4f}  ({time.time() - t0:.0f} s)"
                )
        if plots is not None and fitted:
            plot_problem(problem, fitted, results, plots / f"guides_{pname}.png")
    return results


def _nats(x: float) -> str:
    return f"{x:.3f}".replace("-0.000", "0.000")  # round-off below the quadrature's precision


def format_table(results: dict[tuple[str, str, str], tuple[float, float]]) -> str:
    """One markdown table per problem: rows = guides, columns = divergences, cells = KL(q‖p) / KL(p‖q)."""
    out = []
    for pname in dict.fromkeys(k[0] for k in results):
        problem = PROBLEMS[pname]
        gs = list(dict.fromkeys(k[1] for k in results if k[0] == pname))
        es = list(dict.fromkeys(k[2] for k in results if k[0] == pname))
        out.append(f"**{pname}** — {problem.description}. Cells: KL(q‖p) / KL(p‖q) in nats.\n")
        out.append("| guide | " + " | ".join(es) + " |")
        out.append("|---" * (len(es) + 1) + "|")
        for g in gs:
            cells = [" / ".join(_nats(x) for x in results[pname, g, e]) for e in es]
            out.append(f"| {g} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plot_problem(problem: Problem, fitted: dict, results: dict, path: Path) -> Path:
    """A grid of panels (rows: guides, columns: divergences): each fitted π_θ(a|s) against the exact posterior."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gs = list(dict.fromkeys(g for g, _ in fitted))
    es = list(dict.fromkeys(e for _, e in fitted))
    points, log_p, _ = grid(problem, per_dim=None if problem.dim == 1 or problem.discrete else 120)
    s0 = fixed_states()[:1]
    size = (2.4 * len(es) + 0.6, 1.9 * len(gs) + 0.6) if problem.dim == 1 else (2.3 * len(es), 2.3 * len(gs) + 0.4)
    fig, axes = plt.subplots(len(gs), len(es), figsize=size, squeeze=False, sharex=True, sharey=True)
    for i, g in enumerate(gs):
        for j, e in enumerate(es):
            ax = axes[i, j]
            with torch.no_grad():
                log_q = torch.cat(
                    [fitted[g, e].distribution(s0).log_prob(c[:, None, :])[:, 0] for c in points.split(50_000)]
                )
            rev, fwd = results[problem.name, g, e]
            if problem.discrete:
                x = torch.arange(problem.n_actions)
                ax.bar(x - 0.2, log_p.exp(), 0.4, color="0.7", label="exact")
                ax.bar(x + 0.2, log_q.exp(), 0.4, color="C0", label="π_θ")
            elif problem.dim == 1:
                x = points[:, 0]
                ax.fill_between(x, log_p.exp(), color="0.8", label="exact")
                ax.plot(x, log_q.exp(), color="C0", lw=1.5, label="π_θ")
                ax.set_ylim(0, 1.15 * log_p.exp().max().item())
            else:
                n = int(round(math.sqrt(points.shape[0])))
                ax.imshow(log_q.exp().reshape(n, n).T, origin="lower", extent=(-1, 1, -1, 1), cmap="Blues")
                ax.contour(
                    points[:, 0].reshape(n, n), points[:, 1].reshape(n, n), log_p.exp().reshape(n, n),
                    levels=4, colors="k", linewidths=0.6,
                )  # fmt: skip
            ax.set_title(f"{g} · {e}\nKL(q‖p) {_nats(rev)}  KL(p‖q) {_nats(fwd)}", fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6) if problem.dim == 1 or problem.discrete else None
    fig.suptitle(f"{problem.name}: {problem.description}", fontsize=8 if len(es) > 2 else 6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--guides", nargs="+", default=list(CONTINUOUS_GUIDES + DISCRETE_GUIDES), choices=list(GUIDES))
    parser.add_argument("--elbos", nargs="+", default=list(CONTINUOUS_ELBOS + ("enum",)))
    parser.add_argument("--steps", type=int, default=1500, help="E-steps per fit")
    parser.add_argument("--plots", type=Path, default=None, help="write guides_<problem>.png here")
    parser.add_argument("--cache", type=Path, default=Path("runs/known_answer_cache"), help="fitted guides")
    parser.add_argument("--fresh", action="store_true", help="ignore the cache and refit")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = run(args.problems, args.guides, args.elbos, args.steps, args.plots, None if args.fresh else args.cache)
    print()
    print(format_table(results))


if __name__ == "__main__":
    main()

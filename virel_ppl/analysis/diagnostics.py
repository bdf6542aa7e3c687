"""Action-posterior diagnostics with ArviZ: how well does the guide π_θ cover VIREL's Boltzmann posterior?

At a state s the E-step fits the guide π_θ(a|s) to the target

    p(a|s, O) ∝ exp(Q_ω(s, a)/ε) · p(a|s)              (p(a|s): the model's prior, uniform on the box for VIREL).

Draw a_i ~ π_θ(·|s) and weight each draw by

    log w_i = Q_ω(s, a_i)/ε + log p(a_i|s) − log π_θ(a_i|s):

the self-normalised weights w_i / Σ_j w_j are importance samples of the target. Pareto-smoothed importance
sampling (PSIS, Vehtari et al. 2024; ArviZ's ``psislw``) fits a generalised Pareto distribution to the largest
weights; its shape k̂ says how heavy their tail is, i.e. how much of the target the guide misses:

    k̂ < 0.5       the guide covers the target (importance estimates converge quickly);
    0.5 ≤ k̂ < 0.7 usable, slower;
    k̂ ≥ 0.7       the target has mass where the guide has (almost) none — the mode-seeking KL(π_θ‖p) of
                  the ELBO at work; expectations under the target estimated from π_θ are unreliable.

Alongside k̂: the importance-sampling effective sample size ESS = 1/Σ w̃_i² of the smoothed, normalised
weights, and KL(π_θ‖p(a|s,O)) ≈ log mean_i w_i − mean_i log w_i (the gap between log Z and the ELBO).

:func:`action_posterior` packs guide draws and importance-resampled target draws into one
``arviz.InferenceData`` (an ``xarray.DataTree`` under ArviZ 1.x; dims ``chain, draw, state, action_dim``);
:func:`plot_action_posterior` draws their densities side by side; :func:`importance_diagnostics` is the cheap part
the trainer logs at each evaluation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pyro.distributions import Distribution

from virel_ppl.analysis import arviz_compat
from virel_ppl.config import RunWarning
from virel_ppl.inference.models import Prior, QFunction

if TYPE_CHECKING:  # ArviZ is imported where it is used: `import virel_ppl.train` stays fast
    import matplotlib.figure

    from virel_ppl.agent import VirelAgent

#: k̂ thresholds of Vehtari et al. (2024): below GOOD fine, above BAD unreliable.
KHAT_GOOD, KHAT_BAD = 0.5, 0.7


@dataclass(frozen=True)
class BoltzmannTarget:
    """VIREL's action posterior p(a|s, O) ∝ exp(Q(s, a)/ε) · p(a|s), known up to its normaliser.

    Args:
        q: ``q(states, actions) -> (..., batch)``, broadcasting leading particle dims of ``actions``.
        prior: ``prior(states)`` -> distribution with event shape ``(action_dim,)``.
        eps: the temperature ε > 0.
    """

    q: QFunction
    prior: Prior
    eps: float

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise ValueError(f"The temperature eps must be > 0, got {self.eps}.")

    @classmethod
    def of_agent(cls, agent: VirelAgent, eps: float | None = None) -> BoltzmannTarget:
        """The target of ``agent``'s E-step; ``eps`` defaults to the variant's fixed ε (``Variant.fixed_eps``).

        For ε rules that move (``beta``, ``sac_auto``) pass the ε to look at, e.g. :func:`last_logged_eps`.
        """
        if eps is None:
            eps = agent.variant.fixed_eps
            if eps is None:
                raise ValueError(
                    f"algo {agent.config.algo!r} sets ε from the data; pass eps= (e.g. last_logged_eps(run_dir))."
                )
        q = getattr(agent, "q_on_box", agent.critic.q)  # Q(s, clip(a)), as the E-step scores actions
        return cls(q, agent.variant.prior, float(eps))

    def prior_distribution(self, states: torch.Tensor) -> Distribution:
        """p(a|s) with batch shape ``(len(states),)``."""
        d = self.prior(states)
        return d if tuple(d.batch_shape) == (states.shape[0],) else d.expand((states.shape[0],))

    def log_density(self, states: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q(s, a), unnormalised log p(a|s, O) = Q/ε + log p(a|s)) for actions ``(n, batch, action_dim)``."""
        q = self.q(states, actions)
        return q, q / self.eps + self.prior_distribution(states).log_prob(actions)


# --- PSIS ---------------------------------------------------------------------------------------------------------


def psis(log_weights: np.ndarray, atol: float | np.ndarray = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed importance sampling over the last axis: (normalised smoothed log weights, k̂).

    A thin wrapper of ArviZ's ``psislw`` (:func:`arviz_compat.psislw`, either ArviZ generation). Log weights whose
    spread is at most ``atol`` (per leading index; e.g. the float rounding error of computing them) are constant: they
    have no tail to fit (ArviZ would return k̂ = inf), so they get k̂ = −inf (bounded weights have k < 0) and uniform
    weights.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    if not np.isfinite(lw).all():
        raise ValueError("log importance weights hold NaN/inf: check Q, ε and the guide's log-density.")
    flat = np.ptp(lw, axis=-1) <= atol
    lw = np.where(flat[..., None], 0.0, lw - lw.max(axis=-1, keepdims=True))  # no tail to fit in constant ones
    with np.errstate(over="ignore"):  # ArviZ's Pareto fit overflows harmlessly on very heavy tails
        smoothed, khat = arviz_compat.psislw(lw)
    khat = np.where(flat, -np.inf, khat)
    smoothed = np.where(flat[..., None], -math.log(lw.shape[-1]), smoothed)
    return smoothed, khat


@dataclass(frozen=True)
class ImportanceDiagnostics:
    """Per-state diagnostics of π_θ as an importance sampler of the target (arrays of shape ``(states,)``).

    Attributes:
        khat: PSIS Pareto shape k̂ (lower is better; ≥ 0.7 means the guide misses target mass).
        ess: effective sample size 1/Σ w̃² of the smoothed normalised weights, out of ``num_samples``.
        kl: KL(π_θ ‖ p(a|s,O)) estimate, log mean w − mean log w (≥ 0; 0 when guide = target).
        log_z: log E_π[w], an estimate of log ∫ exp(Q/ε) p(a|s) da.
        num_samples: guide draws per state.
    """

    khat: np.ndarray
    ess: np.ndarray
    kl: np.ndarray
    log_z: np.ndarray
    num_samples: int

    @classmethod
    def from_log_weights(cls, log_w: np.ndarray, atol: float | np.ndarray = 0.0) -> ImportanceDiagnostics:
        """From raw log weights of shape ``(num_samples, states)``; ``atol``: see :func:`psis`."""
        lw = np.asarray(log_w, dtype=np.float64).T  # (states, n): PSIS runs over the last axis
        n = lw.shape[-1]
        smoothed, khat = psis(lw, atol)
        ess = 1.0 / np.exp(2 * smoothed).sum(-1)
        log_z = np.logaddexp.reduce(lw, axis=-1) - math.log(n)
        return cls(khat=khat, ess=ess, kl=log_z - lw.mean(-1), log_z=log_z, num_samples=n)

    def summary(self) -> dict[str, float]:
        """Scalars to log: mean and max k̂, share of states with k̂ ≥ 0.7, mean ESS/n and mean KL.

        k̂ = −inf (constant weights) counts as −1, the shape of a uniform tail, so the scalars stay finite.
        """
        khat = np.maximum(self.khat, -1.0)
        return {
            "khat_mean": float(np.mean(khat)),
            "khat_max": float(np.max(khat)),
            "khat_bad_frac": float(np.mean(self.khat >= KHAT_BAD)),
            "ess_frac": float(np.mean(self.ess) / self.num_samples),
            "kl": float(np.mean(self.kl)),
        }


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global RNG seeded to ``seed`` and restored afterwards (training is not perturbed)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def guide_log_weights(
    policy, target: BoltzmannTarget, states: torch.Tensor, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Draws a ~ π_θ(·|s) of shape ``(num_samples, states, action_dim)`` and their log weights ``(num_samples,
    states)``; the third item holds the parts ``q``, ``log_guide``, ``log_prior``."""
    guide = policy.distribution(states)
    actions = guide.sample((num_samples,))
    log_guide = guide.log_prob(actions)
    q, log_target = target.log_density(states, actions)
    parts = {"q": q, "log_guide": log_guide, "log_prior": log_target - q / target.eps}
    return actions, log_target - log_guide, parts


def rounding_tolerance(parts: dict[str, torch.Tensor], eps: float) -> np.ndarray:
    """Per state, the float rounding error of log w = Q/ε + log p(a|s) − log π_θ(a|s) given its parts from
    :func:`guide_log_weights`: spreads of log w below it are noise, not a difference between guide and target."""
    scale = (parts["q"].abs() / eps + parts["log_prior"].abs() + parts["log_guide"].abs()).amax(0)
    return (64 * torch.finfo(parts["q"].dtype).eps * scale).double().cpu().numpy()


def importance_diagnostics(
    policy, target: BoltzmannTarget, states: torch.Tensor, num_samples: int = 256, seed: int = 0
) -> ImportanceDiagnostics:
    """k̂, ESS and KL of the guide π_θ against ``target`` at ``states``; deterministic given ``seed`` and
    without side effects on torch's global RNG. About a millisecond per state at 256 draws; the first call in a
    process also pays for importing ArviZ (which imports SciPy's stats, pandas, xarray and matplotlib): seconds,
    nearly all of what the diagnostics of a short run cost (docs/results.md, "Fixed costs of a short run").

    ``policy`` is anything with ``.distribution(states)`` (a :class:`~virel_ppl.inference.guides.PolicyGuide`).
    """
    with _seeded(seed):
        _, log_w, parts = guide_log_weights(policy, target, states, num_samples)
    return ImportanceDiagnostics.from_log_weights(log_w.cpu().numpy(), rounding_tolerance(parts, target.eps))


# --- the action posterior as InferenceData --------------------------------------------------------------------


@dataclass
class ActionPosterior:
    """Guide and target draws at a few states, as ``arviz.InferenceData``, with the importance diagnostics.

    ``idata`` groups (dims ``chain, draw, state, action_dim``):

    - ``posterior``: ``a`` ~ π_θ(a|s), the guide (the variational posterior);
    - ``target``: ``a`` ~ p(a|s, O), by importance resampling from the defensive mixture ½π_θ + ½p(a|s),
      which stays valid where the guide misses target mass;
    - ``sample_stats``: ``log_weight`` (of the guide draws), ``q``, ``log_guide``, ``log_prior``;
    - ``constant_data``: ``obs`` (the states) and ``eps``;
    - ``psis``: per state ``khat``, ``ess``, ``kl`` (guide as proposal) and ``target_khat``, ``target_ess``
      (the mixture as proposal: how many effectively distinct draws the ``target`` group rests on).
    """

    idata: Any
    """``arviz.InferenceData`` (ArviZ 0.x) or ``xarray.DataTree`` (1.x): read alike, see ``arviz_compat``."""
    diagnostics: ImportanceDiagnostics
    target_khat: np.ndarray
    target_ess: np.ndarray

    def table(self) -> str:
        """A Markdown table: per state and action dimension, guide vs target mean and HDI, plus k̂ and ESS."""
        post, tgt = self.idata.posterior["a"], self.idata["target"]["a"]
        hdi_prob = 0.94
        g_hdi, t_hdi = (_hdi_over_draws(x, hdi_prob) for x in (post, tgt))  # (state, action_dim, 2)
        g_mean, t_mean = post.mean(("chain", "draw")), tgt.mean(("chain", "draw"))
        d, n = self.diagnostics, self.diagnostics.num_samples
        lines = [
            f"| state | action dim | guide mean | guide {hdi_prob:.0%} HDI | target mean | target {hdi_prob:.0%} HDI "
            "| k̂ | ESS | KL(π‖p) | target ESS |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for i, s in enumerate(post.coords["state"].values):
            for jj, j in enumerate(post.coords["action_dim"].values):
                (gl, gh), (tl, th) = g_hdi[i, jj], t_hdi[i, jj]
                lines.append(
                    f"| {s} | {j} | {float(g_mean.sel(state=s, action_dim=j)):.3f} | [{gl:.3f}, {gh:.3f}] "
                    f"| {float(t_mean.sel(state=s, action_dim=j)):.3f} | [{tl:.3f}, {th:.3f}] "
                    f"| {d.khat[i]:.2f} | {d.ess[i]:.0f}/{n} | {d.kl[i]:.3f} | {self.target_ess[i]:.0f}/{2 * n} |"
                )
        return "\n".join(lines)


def _hdi_over_draws(draws, prob: float) -> np.ndarray:
    """HDI of ``(chain, draw, state, action_dim)`` draws over chains and draws: ``(state, action_dim, 2)``."""
    x = np.asarray(draws.values)
    return arviz_compat.hdi(x.reshape(-1, *x.shape[2:]), prob)


def _chains(x: np.ndarray, num_chains: int) -> np.ndarray:
    """``(n, ...)`` draws → ``(chain, draw, ...)``."""
    return x.reshape(num_chains, x.shape[0] // num_chains, *x.shape[1:])


@torch.no_grad()
def action_posterior(
    policy,
    target: BoltzmannTarget,
    states: torch.Tensor,
    num_samples: int = 2000,
    num_chains: int = 4,
    seed: int = 0,
    state_labels: Sequence[str | int] | None = None,
) -> ActionPosterior:
    """Guide draws and importance-resampled target draws at ``states`` as ``arviz.InferenceData``.

    Args:
        policy: the guide π_θ (anything with ``.distribution(states)``).
        target: the Boltzmann posterior, e.g. ``BoltzmannTarget.of_agent(agent)``.
        states: ``(num_states, obs_dim)``.
        num_samples: draws per state, of the guide and of the target each; a multiple of ``num_chains``.
        num_chains: the independent draws are split into this many chains (the shape ``az.summary`` expects).
        seed: makes the draws reproducible; torch's global RNG is left as it was.
        state_labels: coordinates of the ``state`` dim (default ``0..num_states-1``).
    """
    import xarray as xr

    if num_samples % num_chains:
        raise ValueError(f"num_samples ({num_samples}) must be a multiple of num_chains ({num_chains}).")
    n, n_states = num_samples, states.shape[0]
    with _seeded(seed):
        actions, log_w, parts = guide_log_weights(policy, target, states, n)
        # Target draws: resample from the defensive mixture ½π_θ + ½p(a|s) (Hesterberg 1995), whose weights stay
        # bounded by 2·exp(Q/ε) wherever the guide is too narrow.
        prior_draws = target.prior_distribution(states).sample((n,))
        mix = torch.cat([actions, prior_draws])
        _, log_target = target.log_density(states, mix)
        log_guide = policy.distribution(states).log_prob(mix)
        log_prior = target.prior_distribution(states).log_prob(mix)
        log_mix_w = log_target - (torch.logaddexp(log_guide, log_prior) - math.log(2.0))
    diag = ImportanceDiagnostics.from_log_weights(log_w.cpu().numpy(), rounding_tolerance(parts, target.eps))
    smoothed, target_khat = psis(log_mix_w.double().cpu().numpy().T)  # (states, 2n)
    target_ess = 1.0 / np.exp(2 * smoothed).sum(-1)
    rng = np.random.default_rng(seed)
    mix_np = mix.cpu().numpy()
    idx = np.stack(
        [rng.choice(2 * n, size=n, p=np.exp(smoothed[s]) / np.exp(smoothed[s]).sum()) for s in range(n_states)]
    )
    target_draws = mix_np[idx.T, np.arange(n_states)[None, :]]  # (n, states, action_dim)

    coords = {
        "state": list(state_labels) if state_labels is not None else list(range(n_states)),
        "action_dim": list(range(actions.shape[-1])),
        "obs_dim": list(range(states.shape[-1])),
    }
    action_coords = {k: coords[k] for k in ("state", "action_dim")}
    action_dims = {"a": ["state", "action_dim"]}
    stats = {k: _chains(v.cpu().numpy(), num_chains) for k, v in parts.items()}
    stats["log_weight"] = _chains(log_w.cpu().numpy(), num_chains)
    groups = {
        "posterior": arviz_compat.dataset(
            {"a": _chains(actions.cpu().numpy(), num_chains)}, action_coords, action_dims
        ),
        "target": arviz_compat.dataset({"a": _chains(target_draws, num_chains)}, action_coords, action_dims),
        "sample_stats": arviz_compat.dataset(stats, {"state": coords["state"]}, {k: ["state"] for k in stats}),
        "constant_data": xr.Dataset(
            {"obs": (("state", "obs_dim"), states.cpu().numpy()), "eps": float(target.eps)},
            coords={k: coords[k] for k in ("state", "obs_dim")},
        ),
        "psis": xr.Dataset(
            {
                "khat": ("state", diag.khat),
                "ess": ("state", diag.ess),
                "kl": ("state", diag.kl),
                "target_khat": ("state", target_khat),
                "target_ess": ("state", target_ess),
            },
            coords={"state": coords["state"]},
            attrs={"num_samples": n},
        ),
    }
    idata = arviz_compat.inference_data(groups)
    return ActionPosterior(idata, diag, target_khat, target_ess)


def agent_action_posterior(
    agent: VirelAgent, states: torch.Tensor, eps: float | None = None, **kwargs
) -> ActionPosterior:
    """:func:`action_posterior` of a trained agent: its guide against its own Boltzmann target."""
    states = states.to(agent.device)
    return action_posterior(agent.policy, BoltzmannTarget.of_agent(agent, eps), states, **kwargs)


# --- plots --------------------------------------------------------------------------------------------------------


def plot_action_posterior(post: ActionPosterior, path: Path | str | None = None) -> matplotlib.figure.Figure:
    """Density of each action dimension at each state: guide π_θ vs the Boltzmann target (ArviZ's KDE with Scott's
    bandwidth, drawn with matplotlib: the same figure under ArviZ 0.x and 1.x, without importing ArviZ's plotting).

    One panel per (state, action dim), titled with the state's k̂ and ESS; saved to ``path`` when given.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idata, d = post.idata, post.diagnostics
    states, dims = list(idata.posterior.coords["state"].values), list(idata.posterior.coords["action_dim"].values)
    fig, axes = plt.subplots(
        len(states), len(dims), figsize=(max(6.0, 3.6 * len(dims)), 2.3 * len(states)), squeeze=False
    )
    sources = {"guide π_θ": idata.posterior["a"], "target ∝ exp(Q/ε)·p(a|s)": idata["target"]["a"]}
    for i, s in enumerate(states):
        for j, a in enumerate(dims):
            ax = axes[i, j]
            for k, (label, draws) in enumerate(sources.items()):
                # Scott's bandwidth: resampled target draws repeat, which makes adaptive bandwidths spiky
                grid, pdf = arviz_compat.kde(draws.sel(state=s, action_dim=a).values)
                ax.plot(grid, pdf, color=f"C{k}", lw=1.5, label=label)
                ax.fill_between(grid, pdf, color=f"C{k}", alpha=0.15)
            ax.set_title(
                f"state {s}, action {a}: k̂ = {d.khat[i]:.2f}, ESS = {d.ess[i]:.0f}/{d.num_samples}", fontsize=9
            )
            ax.tick_params(labelsize=8)
            ax.set_yticks([])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, fontsize=9, frameon=False, bbox_to_anchor=(0.5, 0.965))
    eps = float(idata.constant_data["eps"])
    fig.suptitle(f"Action posterior at {len(states)} states: guide vs target (ε = {eps:.3g})", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


# --- states to look at --------------------------------------------------------------------------------------------


@torch.no_grad()
def rollout_states(
    agent: VirelAgent, env_id: str, num_states: int, seed: int = 0, max_steps: int = 1000
) -> torch.Tensor:
    """``num_states`` states evenly spaced along one episode of the agent's mode policy (starting at reset)."""
    from virel_ppl.runtime.envs import make_env

    env = make_env(env_id)
    obs, _ = env.reset(seed=seed)
    visited = [obs]
    for _ in range(max_steps - 1):
        action = agent.act(torch.as_tensor(obs, dtype=torch.float32, device=agent.device)[None], deterministic=True)
        obs, _, terminated, truncated, _ = env.step(action[0].cpu().numpy())
        if terminated or truncated:
            break
        visited.append(obs)
    env.close()
    idx = np.unique(np.linspace(0, len(visited) - 1, num_states).round().astype(int))
    return torch.as_tensor(np.stack([visited[i] for i in idx]), dtype=torch.float32)


def replay_states(obs: torch.Tensor, num_states: int, seed: int) -> torch.Tensor:
    """``num_states`` rows of replay observations ``obs`` (the filled part of the buffer), chosen by a dedicated
    generator seeded with ``seed``: states from the E-step's state distribution d(s), reproducibly."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(obs.shape[0], (num_states,), generator=g)
    return obs[idx.to(obs.device)]


def last_logged_eps(run_dir: Path | str) -> float | None:
    """The ε of the last complete row of the run's ``train.csv`` (None if it logged none). A torn last line (the run
    was killed mid-write) is read past, with a ``TornLineWarning``."""
    from virel_ppl.runtime.logger import read_csv

    path = Path(run_dir) / "train.csv"
    if not path.exists():
        return None
    eps = read_csv(path).get("eps", [])
    return eps[-1] if eps else None


def training_diagnostics(
    agent: VirelAgent, states: torch.Tensor, eps: float, num_samples: int = 256, seed: int = 0
) -> dict[str, float]:
    """What the trainer logs at an evaluation: ε and the :meth:`ImportanceDiagnostics.summary` at ``states``."""
    diag = importance_diagnostics(agent.policy, BoltzmannTarget.of_agent(agent, eps), states, num_samples, seed)
    return {"eps": float(eps), **diag.summary()}


def _run_eps(run_dir: Path, config, fixed_eps: float | None) -> float:
    """The ε that ``diagnose`` looks at when none is given (see :func:`diagnose_run`); ``fixed_eps``: the variant's."""
    from virel_ppl.config import ConfigError

    logged = last_logged_eps(run_dir)
    if logged is None and fixed_eps is not None:
        return fixed_eps  # its ε is fixed: nothing logged yet changes nothing
    if logged is None:
        raise ConfigError(
            f"Cannot tell the run's ε: {run_dir / 'train.csv'} holds no complete row with ε, and {config.algo} sets "
            "ε from the data; pass --eps."
        )
    if not logged > 0:
        raise ConfigError(
            f"The last ε logged in {run_dir / 'train.csv'} is {logged:g}: the target exp(Q/ε) needs ε > 0; pass --eps."
        )
    return logged


def diagnose_run(
    run_dir: Path | str,
    out_dir: Path | str | None = None,
    num_states: int = 4,
    states: str = "rollout",
    num_samples: int = 2000,
    eps: float | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[ActionPosterior, dict[str, Path]]:
    """Action-posterior diagnostics of the agent saved in ``run_dir``; writes into ``out_dir`` (default
    ``run_dir/posterior``) ``action_posterior.png``, ``action_posterior.md`` and ``action_posterior.nc``.

    ``states``: ``"rollout"`` (evenly spaced along an episode of the mode policy) or ``"replay"`` (drawn from the
    checkpoint's replay buffer). ``eps`` defaults to the ε of the last complete row of ``train.csv``; without one,
    to ``config.alpha`` for ``virel`` (whose ε is fixed), and for the other algorithms ``ConfigError`` says to pass it.
    """
    from virel_ppl.runtime.checkpoints import agent_from_state, load_checkpoint

    run_dir = Path(run_dir)
    state, path = load_checkpoint(run_dir, map_location=device)
    agent, config = agent_from_state(state, path, device)
    if states == "rollout":
        s = rollout_states(agent, config.env, num_states, seed=seed)
    elif states == "replay":
        s = replay_states(state["replay"]["obs"].cpu(), num_states, seed)
    else:
        raise ValueError(f"states must be 'rollout' or 'replay', got {states!r}.")
    if eps is None:
        eps = _run_eps(run_dir, config, agent.variant.fixed_eps)
    post = agent_action_posterior(agent, s, eps=eps, num_samples=num_samples, seed=seed)
    out = Path(out_dir) if out_dir is not None else run_dir / "posterior"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"plot": out / "action_posterior.png", "table": out / "action_posterior.md"}
    fig = plot_action_posterior(post, paths["plot"])
    import matplotlib.pyplot as plt

    plt.close(fig)
    paths["table"].write_text(
        f"# Action posterior of `{run_dir}`\n\n{config.env}, {config.algo}, ε = {eps:.4g}, {len(s)} {states} states, "
        f"{num_samples} draws each (guide and target).\n\n{post.table()}\n"
    )
    try:
        paths["idata"] = Path(arviz_compat.to_netcdf(post.idata, str(out / "action_posterior.nc")))
    except (ImportError, ValueError) as err:  # no netCDF backend: keep the plot and table, and say so
        nc = out / "action_posterior.nc"
        warnings.warn(f"{nc} not written ({err}): pip install h5netcdf h5py.", RunWarning, stacklevel=2)
    return post, paths

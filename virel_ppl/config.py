"""Every hyper-parameter of a training run in one typed place, with its default and meaning."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# VIREL App. I, Table 1: the temperature is fixed (c = 1) and rewards are scaled per task instead.
REWARD_SCALES: dict[str, float] = {"HalfCheetah": 5.0, "Hopper": 5.0, "Walker2d": 3.0}
# λ of the beta rule. App. I's table gives λ ≈ (1 − γ)/r_avg as 4e-4 for Humanoid and 4e-3 for all other tasks. By
# default only Humanoid takes its table value; every other task uses the formula, with r_avg the mean |r| of each
# batch (about 3e-4 on scaled HalfCheetah, 1e-2 on InvertedPendulum). ``--preset paper`` uses the whole table.
BETA_SCALES: dict[str, float] = {"Humanoid": 4e-4}
PAPER_BETA_SCALE = 4e-3  # App. I's λ for "all other" tasks

# Named sets of defaults (``virel_ppl train --preset NAME``; flags given with it still win). See docs/math.md.
PRESETS: dict[str, dict] = {
    # VIREL App. I, Table 1 (MuJoCo-v2): batch 128, 300-wide networks (rlkit's layout: two hidden layers), Adam
    # rates 3e-4 for value function and policy, γ = 0.99, c = 1 with the reward-scale table, evaluation every 1000
    # steps; the beta rule's λ from the table (``beta_scale`` is filled in per task by :func:`preset_config`).
    "paper": dict(
        batch_size=128,
        hidden=(300, 300),
        policy_lr=3e-4,
        critic_lr=3e-4,
        gamma=0.99,
        alpha=1.0,
        reward_scale=None,
        eval_every=1000,
    ),
}


def _task(env_id: str) -> str:
    return env_id.split("-v")[0]


class ConfigError(ValueError):
    """A bad setting or input (a config value, an environment, NaN from the environment or a diverged critic),
    named together with what to do about it. The command line prints it without a traceback; in code it is a
    ``ValueError``."""


def close_names(
    name: str, names: Iterable[str], n: int = 3, cutoff: float = 0.6, keep: Callable[[str], bool] | None = None
) -> list[str]:
    """Up to ``n`` of ``names`` closest to ``name`` (``difflib``), best first. ``keep``, when given, is a test each
    suggestion must pass (e.g. that the environment builds here); it is tried on the 8 closest names at most."""
    if keep is None:
        return difflib.get_close_matches(name, list(names), n=n, cutoff=cutoff)
    close: list[str] = []
    for candidate in difflib.get_close_matches(name, list(names), n=max(n, 8), cutoff=cutoff):
        if len(close) == n:
            break
        if keep(candidate):
            close.append(candidate)
    return close


def did_you_mean(name: str, names: Iterable[str], **kwargs) -> str:
    """``" Did you mean a, b?"`` with the :func:`close_names` of ``name`` (same keywords), or ``""`` without any."""
    close = close_names(name, names, **kwargs)
    return f" Did you mean {', '.join(close)}?" if close else ""


def lookup(registry: Mapping[str, T], name: str, what: str, choices: Iterable[str] | None = None) -> T:
    """``registry[name]``, or a ``ConfigError`` that names the unknown ``what`` (algo, guide, elbo, preset, ...),
    lists the choices (``choices``, default the registry's names) and suggests close ones."""
    if name in registry:
        return registry[name]
    choices = sorted(registry if choices is None else choices)
    raise ConfigError(f"Unknown {what} {name!r}; choose from {', '.join(choices)}.{did_you_mean(name, choices)}")


class RunWarning(UserWarning):
    """Something the user must know that does not stop the command (e.g. a checkpoint fallback, repeated seeds
    in a report). The command line prints it as one ``warning:`` line; in code it is a ``UserWarning``."""


def check_device(device: str) -> None:
    """Raise ``ConfigError`` unless torch can use ``device`` here (cpu, cuda[:N] or mps)."""
    import torch

    if device == "cpu":
        return
    kind, colon, index = device.partition(":")
    if kind not in ("cuda", "mps") or (colon and not index.isdigit()):
        raise ConfigError(f"--device must be cpu, cuda[:N] or mps, got {device!r}.")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device} was asked for but torch sees no CUDA device; use --device cpu.")
        if int(index or 0) >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                f"numbered from 0; use --device cuda:0."
            )
    elif not torch.backends.mps.is_available():
        raise ConfigError(
            f"--device {device} was asked for but torch sees no MPS device (Apple-silicon GPU); use --device cpu."
        )


def check_renyi_alpha(alpha: float) -> float:
    """``alpha``, or ``ConfigError`` for α = 1, where the Rényi bound is the ELBO (``--elbo trace``)."""
    if alpha == 1.0:
        raise ConfigError("--renyi-alpha 1 is the KL divergence: use --elbo trace (Rényi needs α ≠ 1).")
    return alpha


class SpaceError(ConfigError, TypeError):
    """An environment space the chosen guide or action set cannot handle (e.g. Discrete where a Box is needed);
    also a ``TypeError``."""


@dataclass
class Config:
    """A training run: environment, algorithm, networks, optimisation, evaluation and bookkeeping."""

    env: str = "InvertedPendulum-v5"
    """Gymnasium environment id: a Box action space (MuJoCo v5 tasks, Pendulum-v1, ...), or Discrete with
    --guide categorical (CartPole-v1, ...)."""
    algo: str = "virel"
    """Algorithm preset from ``virel_ppl.variants.VARIANTS``: virel (= virel1), beta, virel2, mpo, mpo_np, sac,
    sac_auto, pseudo_likelihood; see docs/variants.md."""
    guide: str = "tanh_normal"
    """Policy family (``virel_ppl.inference.guides.GUIDES``): tanh_normal, gaussian, beta, mixture, flow,
    categorical."""
    elbo: str = "auto"
    """E-step estimator (``virel_ppl.inference.divergences.DIVERGENCES``): trace, meanfield, renyi, iwae, tail_adaptive,
    graph, enum; auto (the default) is enum for a discrete guide (--guide categorical) and trace otherwise."""
    num_particles: int | None = None
    """Particles per state in the ELBO estimate (vectorised); None: the estimator's default (1; renyi, iwae,
    tail_adaptive: 8)."""
    renyi_alpha: float = 0.5
    """Order α ≠ 1 of --elbo renyi (α = 0: the IWAE bound; α → 1: the ELBO)."""
    total_steps: int = 15_000
    """Environment steps of the whole run."""
    warmup_steps: int = 1_000
    """Uniformly random actions before learning starts; updates start at step max(warmup_steps, batch_size)."""
    batch_size: int = 256
    """Transitions per gradient step."""
    buffer_size: int = 1_000_000
    """Replay capacity."""
    updates_per_step: float = 1.0
    """Gradient updates (one M-step + one E-step each) per environment step; fractions accumulate."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target value network."""
    policy_lr: float = 1e-3
    """Adam learning rate of the guide (E-step)."""
    critic_lr: float = 1e-3
    """Adam learning rate of the critic (M-step)."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of policy, Q and V networks."""
    alpha: float = 1.0
    """Fixed temperature ε = α of ``virel`` (and the entropy weight of soft targets)."""
    beta_scale: float | None = None
    """λ of the ``beta`` rule ε = λ·TD-MSE; None uses (1 − γ)/r_avg from the batch (Humanoid: 4e-4)."""
    old_policy_period: int | None = None
    """mpo, mpo_np: copy π_θ into the old policy π_old (the prior) every this many updates; 0 uses old_policy_tau;
    None takes the preset's own (mpo 1000, mpo_np 100)."""
    old_policy_tau: float = 0.005
    """mpo, mpo_np with old_policy_period 0: Polyak rate of π_old ← (1 − τ) π_old + τ π_θ."""
    target_entropy: float | None = None
    """sac_auto: the entropy that α is tuned to; None uses SAC's −action_dim."""
    mpo_num_actions: int = 20
    """mpo_np: actions drawn from π_old per state for the non-parametric E-step."""
    mpo_eta_bound: float | None = 0.1
    """mpo_np: ε_η of the temperature's dual (KL of the E-step's weights from π_old); None keeps η = alpha."""
    mpo_kl_bound: float = 0.01
    """mpo_np: bound on KL(π_old ‖ π_θ) in the weighted maximum-likelihood step."""
    dual_lr: float = 1e-3
    """Adam rate of dual variables: mpo_np's η and KL multiplier, sac_auto's log α."""
    reward_scale: float | None = None
    """Reward multiplier; None takes VIREL's per-task table (HalfCheetah/Hopper 5, Walker2d 3, others 1)."""
    eval_every: int = 2_000
    """Environment steps between evaluations with the guide's mode action."""
    eval_episodes: int = 5
    """Episodes per evaluation (run in parallel on a vector env)."""
    log_every: int = 250
    """Environment steps between logged training scalars."""
    checkpoint_every: int = 5_000
    """Environment steps between checkpoints (one is also written at the end and on Ctrl-C)."""
    seed: int = 0
    """Seed of networks, replay sampling, environment and warm-up actions."""
    device: str = "cpu"
    """Torch device: cpu, cuda[:N] or mps (each only where torch sees it)."""
    threads: int | None = 1
    """torch intra-op threads (None: torch's default). One is fastest for 256-wide networks on a 2-core machine and
    never oversubscribes it; see docs/results.md."""
    run_dir: Path | None = None
    """Where logs, plots and checkpoints go; None makes runs/<env>__<algo>__<seed>__<time>."""
    tensorboard: bool = True
    """Also write TensorBoard event files."""
    progress: bool = True
    """Show a progress bar."""
    fast_update: bool = True
    """E-step as the ELBO's differentiable_loss with one torch Adam over the guide's parameters (the same
    gradients and numbers as SVI.step); --no-fast-update runs pyro.infer.SVI.step, for debugging."""
    fused_adam: bool = False
    """Fused Adam kernels for the critic and the guide: about 3x cheaper than multi-tensor Adam on a CPU core, but
    they round differently in the last bit, so runs no longer repeat the recorded ones (see docs/results.md); off,
    multi-tensor (foreach) Adam, bit-identical to per-tensor Adam."""
    cuda_graph: bool = True
    """On a CUDA device, capture the whole update (M-step, ε, E-step, target update) once as a CUDA graph and replay
    it (one launch per update; virel_ppl/graphs.py); what cannot be captured runs eagerly with a warning. No effect
    on CPU. --no-cuda-graph runs every update eagerly, for debugging."""

    def resolved_reward_scale(self) -> float:
        return self.reward_scale if self.reward_scale is not None else REWARD_SCALES.get(_task(self.env), 1.0)

    def resolved_beta_scale(self) -> float | None:
        return self.beta_scale if self.beta_scale is not None else BETA_SCALES.get(_task(self.env))

    def validate(self) -> None:
        """Raise ``ConfigError`` naming each bad value and what to do about it."""
        positive_ints = {
            "total_steps": self.total_steps,
            "batch_size": self.batch_size,
            "buffer_size": self.buffer_size,
            "eval_every": self.eval_every,
            "eval_episodes": self.eval_episodes,
            "log_every": self.log_every,
            "checkpoint_every": self.checkpoint_every,
            "num_particles": 1 if self.num_particles is None else self.num_particles,
        }
        check_renyi_alpha(self.renyi_alpha)
        if self.algo == "pseudo_likelihood" and self.elbo in ("renyi", "iwae"):
            raise ConfigError(
                f"--algo pseudo_likelihood with --elbo {self.elbo}: that model has no latent action to bound (the "
                "policy is its prior, the buffer's actions are observed, each weighted by exp(R/ε)), and Rényi/IWAE "
                "bounds need one scale for every site, not one weight per transition. Without latent sites every "
                "estimator is the same weighted log-likelihood: use --elbo trace (the default)."
            )
        for name, value in positive_ints.items():
            if value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}.")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be a positive integer (or None: torch's default), got {self.threads}.")
        if not 0 <= self.seed < 2**32:  # numpy's seeds
            raise ConfigError(f"--seed must be in [0, 2**32), got {self.seed}.")
        if self.warmup_steps < 0:
            raise ConfigError(f"--warmup-steps must be >= 0, got {self.warmup_steps}.")
        if self.batch_size > self.buffer_size:
            raise ConfigError(
                f"--batch-size {self.batch_size} is larger than --buffer-size {self.buffer_size}; "
                "make the buffer at least as large as a batch."
            )
        if not 0.0 <= self.gamma < 1.0:
            raise ConfigError(f"--gamma must be in [0, 1), got {self.gamma}.")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"--tau must be in (0, 1], got {self.tau}.")
        for name in ("policy_lr", "critic_lr", "alpha", "updates_per_step"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}.")
        if (self.old_policy_period or 0) < 0 or not 0.0 < self.old_policy_tau <= 1.0:
            raise ConfigError(
                f"--old-policy-period must be >= 0 and --old-policy-tau in (0, 1], got {self.old_policy_period} "
                f"and {self.old_policy_tau}."
            )
        if self.mpo_num_actions < 2:
            raise ConfigError(f"--mpo-num-actions must be at least 2, got {self.mpo_num_actions}.")
        for name in ("mpo_kl_bound", "dual_lr") + (("mpo_eta_bound",) if self.mpo_eta_bound is not None else ()):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}.")
        if self.beta_scale is not None and not self.beta_scale > 0:
            raise ConfigError(f"--beta-scale must be > 0, got {self.beta_scale}.")
        if self.reward_scale is not None and not self.reward_scale > 0:
            raise ConfigError(f"--reward-scale must be > 0, got {self.reward_scale}.")
        if not self.hidden or min(self.hidden) <= 0:
            raise ConfigError(f"--hidden needs positive layer widths, got {self.hidden}.")
        check_device(self.device)
        self._check_updates_happen()

    def first_update_step(self) -> int | None:
        """The environment step of the run's first gradient update, or None when the run ends before it: the
        trainer's own schedule (:class:`UpdateSchedule`), played forward."""
        return UpdateSchedule.of(self).first_update(self.total_steps)

    def _check_updates_happen(self) -> None:
        if self.first_update_step() is not None:
            return
        start = max(self.warmup_steps, self.batch_size)
        why = "updates start at step max(--warmup-steps, --batch-size)"
        if self.updates_per_step < 1:
            why += f" = {start}, and --updates-per-step {self.updates_per_step} takes more steps to make one"
            longer = dataclasses.replace(self, total_steps=start + math.ceil(1 / self.updates_per_step) + 1)
            start = longer.first_update_step()  # as the schedule adds it up, float rounding included
        raise ConfigError(
            f"No gradient update would happen: --total-steps {self.total_steps} ends before the first update at "
            f"step {start} ({why}). Raise --total-steps to at least {start}, or lower --warmup-steps "
            f"({self.warmup_steps}) and --batch-size ({self.batch_size})."
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["run_dir"] = str(self.run_dir) if self.run_dir is not None else None
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        d = dict(d)
        d.pop("extra", None)  # a field of older runs that nothing read
        d["hidden"] = tuple(d["hidden"])
        d["run_dir"] = Path(d["run_dir"]) if d.get("run_dir") else None
        return cls(**d)


@functools.cache
def field_types() -> Mapping[str, Any]:
    """Each :class:`Config` field's type, resolved from its annotation (``int | None``, ``tuple[int, ...]``, ...):
    what the command line (``cli``) and sweeps (``sweep.parse_value``) read values as."""
    return types.MappingProxyType(typing.get_type_hints(Config))


def preset_config(name: str, **overrides) -> Config:
    """The :class:`Config` of preset ``name`` (``PRESETS``) with ``overrides`` on top. For ``paper`` the beta rule's
    λ comes from App. I's table for the task (``BETA_SCALES``, else ``PAPER_BETA_SCALE``) unless overridden."""
    values = {**lookup(PRESETS, name, "preset"), **overrides}
    if name == "paper" and values.get("beta_scale") is None:
        values["beta_scale"] = BETA_SCALES.get(_task(values.get("env", Config.env)), PAPER_BETA_SCALE)
    return Config(**values)


@dataclass
class UpdateSchedule:
    """When gradient updates happen: the one schedule that the trainer follows and ``Config`` checks a run against.

    After the step counter reaches ``max(warmup_steps, batch_size)``, every environment step adds ``updates_per_step``
    to a credit, and the whole updates in the credit are due (``updates_per_step`` = 0.25: one update every 4 steps;
    = 2: two per step). The credit is part of a checkpoint, so a resumed run keeps the same rhythm.
    """

    start: int
    """The first step counter at which updates accrue: ``max(warmup_steps, batch_size)``."""
    per_step: float
    """``updates_per_step``."""
    credit: float = 0.0
    """The fraction of an update accrued and not yet made."""

    @classmethod
    def of(cls, config: Config) -> UpdateSchedule:
        """The schedule of a run's config, with no credit yet."""
        # Updates need a full batch in the replay, and none run during the random warm-up.
        return cls(start=max(config.warmup_steps, config.batch_size), per_step=config.updates_per_step)

    def due(self, step: int) -> int:
        """How many updates are due now that the step counter is ``step``; call it once per environment step."""
        if step < self.start:
            return 0
        self.credit += self.per_step
        n = int(self.credit)
        self.credit -= n
        return n

    def first_update(self, total_steps: int) -> int | None:
        """The step of the first update of a fresh run of ``total_steps`` steps (counted from 1), or None when the
        run ends before it. Adds the credit up exactly as :meth:`due` does, float rounding included."""
        fresh = UpdateSchedule(self.start, self.per_step)
        return next((step for step in range(max(self.start, 1), total_steps + 1) if fresh.due(step) > 0), None)

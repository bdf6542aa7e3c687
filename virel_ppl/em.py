"""Variational EM on the VIREL ELBO: the E-step (actor, via Pyro SVI) and the M-step (critic, via torch).

``e_step`` maximises the ELBO over the guide's parameters θ with ``pyro.infer.SVI``; the critic sits inside
the model as a fixed function and receives neither gradient nor update. ``m_step`` shrinks the Bellman
residual over the critic's parameters ω with its own torch optimiser. The ε rules turn the residual into
the temperature ε_ω of the likelihood exp(Q_ω/ε_ω).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import pyro.poutine as poutine
import torch
from pyro.infer import SVI

from virel_ppl.critics import Critic, bellman_target
from virel_ppl.guides import PolicyGuide


class Batch(NamedTuple):
    """A batch of transitions (s, a, r, s', terminated) as tensors on one device."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor


@contextmanager
def frozen(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Turn off gradients of ``module`` for the duration: the E-step must not touch the critic."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def e_step(svi: SVI, critic: Critic, states: torch.Tensor, eps: float | torch.Tensor, **model_kwargs) -> float:
    """One SVI step on the guide: maximise ε · ELBO / N over θ (VIREL App. E.1 scales by ε so that the
    gradient stays finite as ε → 0; dividing by the batch size N makes it a per-state mean).

    Returns the loss −ε·ELBO/N that SVI minimised; raises ``ValueError`` when it is NaN or infinite.
    """
    nan_help = (
        "Q(s, a), ε or the states hold NaN/inf. Check rewards and observations for NaN/inf, "
        "and lower --policy-lr or --critic-lr if the critic diverged."
    )
    try:
        with frozen(critic), poutine.scale(scale=eps / states.shape[0]):
            loss = svi.step(states, eps=eps, **model_kwargs)
    except ValueError as err:  # Pyro's argument validation met NaN/inf first
        if "invalid values" not in str(err):
            raise
        raise ValueError(f"The E-step met NaN/inf: {nan_help}\n{err}") from err
    if not math.isfinite(loss):  # a float already: SVI synchronised, so this check is free
        raise ValueError(f"The E-step loss is {loss}: {nan_help}")
    return loss


# --- value targets: what V_ψ(s) regresses to (a choice, not a fork) -------------------------------------------

ValueTarget = Callable[[Critic, PolicyGuide, torch.Tensor], torch.Tensor]


def hard_value_target(critic: Critic, policy: PolicyGuide, states: torch.Tensor) -> torch.Tensor:
    """V(s) ← E_{a~π}[Q(s, a)] (VIREL App. H, J_V), one action sample per state."""
    return critic.q(states, policy.distribution(states).sample())


def soft_value_target(alpha: float | Callable[[], torch.Tensor]) -> ValueTarget:
    """V(s) ← E_{a~π}[Q(s, a) − α log π(a|s)]: the entropy inside the backup (SAC).

    ``alpha`` is a number, or a callable giving the current α (SAC's automatic temperature).
    """

    def target(critic: Critic, policy: PolicyGuide, states: torch.Tensor) -> torch.Tensor:
        d = policy.distribution(states)
        a = d.sample()
        return critic.q(states, a) - (alpha() if callable(alpha) else alpha) * d.log_prob(a)

    return target


def m_step(
    critic: Critic,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    policy: PolicyGuide,
    gamma: float,
    value_target: ValueTarget = hard_value_target,
) -> dict[str, torch.Tensor]:
    """One gradient step on the critic's Bellman residual over ω (twin Q) and ψ (value):

        J_Q = ½ E[(r + γ(1 − terminated) V_ψ̄(s') − Q_ω(s, a))²],   J_V = ½ E[(V_ψ(s) − target(s))²].

    Returns detached statistics, among them ``td_mse`` — the mean squared Bellman error of the batch
    before the step, which the ``beta`` rule turns into ε_ω.
    """
    with torch.no_grad():
        q_target = bellman_target(batch.rewards, batch.terminated, critic.target_value(batch.next_obs), gamma)
        v_target = value_target(critic, policy, batch.obs)
    q1, q2 = critic.twin_q(batch.obs, batch.actions)
    # one target for both twins, or one per twin when the critic keeps two values (VIREL2: hard and soft)
    target1, target2 = q_target.expand(2, q_target.shape[-1])
    td1, td2 = q1 - target1, q2 - target2
    q_loss = 0.5 * (td1.pow(2).mean() + td2.pow(2).mean())
    v_loss = 0.5 * (critic.value(batch.obs) - v_target).pow(2).mean()
    optimizer.zero_grad(set_to_none=True)
    (q_loss + v_loss).backward()
    optimizer.step()
    return {
        "critic/q_loss": q_loss.detach(),
        "critic/v_loss": v_loss.detach(),
        "critic/td_mse": 0.5 * (td1.pow(2).mean() + td2.pow(2).mean()).detach(),
        "critic/q_mean": q1.mean().detach(),
    }


# --- ε rules: the temperature of the likelihood exp(Q/ε) ----------------------------------------------------

EpsilonRule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fixed_epsilon(alpha: float) -> EpsilonRule:
    """``virel``: ε = α, a fixed temperature."""
    if not alpha > 0:
        raise ValueError(f"The fixed temperature alpha must be > 0, got {alpha}.")

    def rule(td_mse: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        return torch.full_like(td_mse, alpha)

    return rule


def beta_epsilon(gamma: float, scale: float | None = None, floor: float = 1e-6) -> EpsilonRule:
    """``beta``: ε_ω = λ · E[(r + γ V̄(s') − Q(h))²] with λ = (1 − γ)/r_avg (VIREL App. H, Alg. 2).

    ``r_avg`` is the mean absolute reward of the batch unless ``scale`` fixes λ (the paper's table uses
    λ = 4e-3, and 4e-4 for Humanoid). ``floor`` keeps ε > 0 when the residual vanishes.
    """
    if scale is not None and not scale > 0:
        raise ValueError(f"The beta scale lambda must be > 0, got {scale}.")

    def rule(td_mse: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        lam = scale if scale is not None else (1.0 - gamma) / rewards.abs().mean().clamp_min(1e-3)
        return (lam * td_mse).clamp_min(floor)

    return rule

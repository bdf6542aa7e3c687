"""An agent ties a model, a guide, a critic and an ε rule into one ``update(batch)``; presets by name.

A preset (:class:`Variant`) names which model, value target and ε rule to use. The trainer never knows
which one it runs: it calls :meth:`VirelAgent.update` and :meth:`VirelAgent.act`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.elbo import ELBO

from virel_ppl.actions import ActionBox
from virel_ppl.config import Config
from virel_ppl.critics import Critic
from virel_ppl.em import (
    Batch,
    EpsilonRule,
    ValueTarget,
    beta_epsilon,
    e_step,
    fixed_epsilon,
    hard_value_target,
    m_step,
)
from virel_ppl.guides import GUIDES, PolicyGuide
from virel_ppl.models import Prior, virel_model


@dataclass(frozen=True)
class Variant:
    """A named algorithm: which model, value target and ε rule; optional hooks for extra state.

    ``prior(agent)`` gives p(a|s) for the model; ``after_update(agent)`` runs after each update
    (e.g. MPO's slow update of its old policy).
    """

    model: Callable
    value_target: Callable[[Config], ValueTarget]
    eps_rule: Callable[[Config], EpsilonRule]
    prior: Callable[[VirelAgent], Prior] = lambda agent: lambda states: agent.box.uniform()
    after_update: Callable[[VirelAgent], None] | None = None
    description: str = ""


VARIANTS: dict[str, Variant] = {
    "virel": Variant(
        virel_model,
        value_target=lambda cfg: hard_value_target,
        eps_rule=lambda cfg: fixed_epsilon(cfg.alpha),
        description="VIREL Alg. 1: uniform prior, fixed ε = α, hard value target E_π[Q].",
    ),
    "beta": Variant(
        virel_model,
        value_target=lambda cfg: hard_value_target,
        eps_rule=lambda cfg: beta_epsilon(cfg.gamma, cfg.resolved_beta_scale()),
        description="VIREL Alg. 2: ε_ω = (1 − γ)/r_avg · TD-MSE from the critic's residual.",
    ),
}


def _elbo_trace(num_particles: int) -> ELBO:
    return Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)


def _elbo_meanfield(num_particles: int) -> ELBO:
    return TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)


#: ELBO estimators by name; each factory takes ``num_particles``.
ELBOS: dict[str, Callable[[int], ELBO]] = {"trace": _elbo_trace, "meanfield": _elbo_meanfield}


def lookup(registry: dict, name: str, what: str):
    """``registry[name]``, or a ``ValueError`` that lists the choices and suggests close names."""
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, list(registry), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"Unknown {what} {name!r}; choose from {', '.join(sorted(registry))}.{hint}")


class VirelAgent:
    """Guide π_θ + critic (twin Q, V, target V) + ε rule, updated by variational EM.

    Args:
        obs_dim: size of the flat observation.
        box: the action box.
        config: the run's :class:`~virel_ppl.config.Config`.
        policy: a guide to use instead of ``GUIDES[config.guide]`` (e.g. a user-defined one).
    """

    def __init__(self, obs_dim: int, box: ActionBox, config: Config, policy: PolicyGuide | None = None) -> None:
        self.config, self.box = config, box
        self.device = torch.device(config.device)
        self.variant: Variant = lookup(VARIANTS, config.algo, "algo")
        if policy is None:
            policy = lookup(GUIDES, config.guide, "guide")(obs_dim, box, hidden=config.hidden)
        self.policy = policy.to(self.device)
        self.critic = Critic(obs_dim, box.dim, hidden=config.hidden).to(self.device)
        self.critic_optim = torch.optim.Adam(self.critic.trainable_parameters(), lr=config.critic_lr)
        self.elbo = lookup(ELBOS, config.elbo, "elbo")(config.num_particles)
        self.svi = SVI(self.variant.model, self.policy.guide, pyro.optim.Adam({"lr": config.policy_lr}), self.elbo)
        self.value_target = self.variant.value_target(config)
        self.eps_rule = self.variant.eps_rule(config)
        self.prior = self.variant.prior(self)
        # Each agent keeps its own Pyro param store, so agents in one process never share parameters.
        self.param_state: dict = {"params": {}, "constraints": {}}

    def update(self, batch: Batch) -> dict[str, torch.Tensor | float]:
        """One variational-EM update on a batch: M-step (critic), E-step (guide), target update."""
        stats: dict[str, torch.Tensor | float] = m_step(
            self.critic, self.critic_optim, batch, self.policy, self.config.gamma, self.value_target
        )
        eps = self.eps_rule(stats["critic/td_mse"], batch.rewards)
        loss = self._pyro_scoped(
            lambda: e_step(self.svi, self.critic, batch.obs, eps=eps, q=self.q_on_box, prior=self.prior)
        )
        self.critic.update_target(self.config.tau)
        if self.variant.after_update is not None:
            self.variant.after_update(self)
        stats["actor/loss"] = loss
        stats["eps"] = eps
        return stats

    def q_on_box(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q(s, clip(a)): the environment clips actions, so an unbounded guide's samples are scored as clipped."""
        return self.critic.q(states, self.box.clip(actions))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions on the box for a batch of observations: π_θ samples, or the mode when ``deterministic``."""
        return self.box.clip(self.policy.act(obs, deterministic))

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "policy_optim": self._pyro_scoped(self.svi.optim.get_state),  # keyed by param-store names
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.critic_optim.load_state_dict(state["critic_optim"])
        self._pyro_scoped(self.svi.optim.set_state, state["policy_optim"])

    def _pyro_scoped(self, fn: Callable, *args):
        """Call ``fn`` inside this agent's own Pyro param store."""
        with pyro.get_param_store().scope(self.param_state):
            return fn(*args)

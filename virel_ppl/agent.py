"""An agent ties a model, a guide, a critic and an ε rule into one ``update(batch)``; presets by name.

A preset (:class:`Variant`) names which model, value target and ε rule to use. The trainer never knows
which one it runs: it calls :meth:`VirelAgent.update` and :meth:`VirelAgent.act`.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.optim
import torch
from pyro.infer import SVI
from pyro.infer.elbo import ELBO

from virel_ppl import graphs, variants
from virel_ppl.actions import ActionBox
from virel_ppl.config import Config, ConfigError
from virel_ppl.critics import Critic
from virel_ppl.divergences import ELBOS as ELBOS  # re-exported: estimators by name, see divergences.py
from virel_ppl.divergences import make_elbo
from virel_ppl.em import (
    Batch,
    EpsilonRule,
    FastEStep,
    ValueTarget,
    adam,
    beta_epsilon,
    e_step,
    fixed_epsilon,
    hard_value_target,
    load_optimizer_state,
    m_step,
    soft_value_target,
)
from virel_ppl.guides import GUIDES, PolicyGuide, check_guide_fits
from virel_ppl.models import Prior, pseudo_likelihood_model, virel_model


def _uniform_prior(agent: VirelAgent) -> Prior:
    return lambda states: agent.box.uniform()


@dataclass(frozen=True)
class Variant:
    """A named algorithm: a model and what it is combined with. Every field but ``model`` defaults to VIREL's
    choice, so a variant names only what it changes (``docs/variants.md`` shows each as a diff):

    - ``value_target(agent)``: what V regresses to in the M-step (hard: E_π[Q]);
    - ``eps_rule(agent)``: the temperature ε of the likelihood exp(Q/ε) (fixed α);
    - ``prior(agent)``: p(a|s) for the model (uniform on the box; MPO: the old policy);
    - ``guide(agent)``: the Pyro guide paired with the model (π_θ);
    - ``loss(agent)``: what SVI minimises instead of the ``--elbo`` estimator (None: that ELBO);
    - ``model_inputs(agent, batch)``: extra keyword arguments of the model, from the batch (none);
    - ``critic(obs_dim, action_dim, hidden=...)``: the critic (twin hard Q);
    - ``extras(agent)``: extra state, built first and kept in ``agent.extras`` (old policy, log α, duals);
      each value has ``state_dict``/``load_state_dict`` and is saved in checkpoints;
    - ``after_update(agent, batch)``: runs after each update (MPO's slow prior update, SAC's α step) and may
      return statistics to log;
    - ``after_update_in_graph``: whether the CUDA-graph update (``graphs.py``) captures ``after_update`` with the
      rest of the update (True), or runs it eagerly after each replay (False: the hook branches on host-side state,
      such as MPO's count of updates between copies of π_old, which a captured graph would freeze).
    """

    model: Callable
    value_target: Callable[[VirelAgent], ValueTarget] = lambda agent: hard_value_target
    eps_rule: Callable[[VirelAgent], EpsilonRule] = lambda agent: fixed_epsilon(agent.config.alpha)
    prior: Callable[[VirelAgent], Prior] = _uniform_prior
    guide: Callable[[VirelAgent], Callable] = lambda agent: agent.policy.guide
    loss: Callable[[VirelAgent], ELBO | Callable] | None = None
    model_inputs: Callable[[VirelAgent, Batch], dict] | None = None
    critic: Callable[..., Critic] = Critic
    extras: Callable[[VirelAgent], dict] = lambda agent: {}
    after_update: Callable[[VirelAgent, Batch], dict | None] | None = None
    after_update_in_graph: bool = True
    description: str = ""


_virel = Variant(
    virel_model,
    description="VIREL Alg. 1 (VIREL1): uniform prior, fixed ε = α, twin hard Q, hard value target E_π[Q].",
)


def _step_old_policy(agent: VirelAgent, batch: Batch) -> None:
    agent.extras["old_policy"].step()


def _sac_auto_update(agent: VirelAgent, batch: Batch) -> dict:
    return agent.extras["alpha"].update(agent.policy, batch.obs)


VARIANTS: dict[str, Variant] = {
    "virel": _virel,
    "virel1": _virel,
    "beta": Variant(
        virel_model,
        eps_rule=lambda agent: beta_epsilon(agent.config.gamma, agent.config.resolved_beta_scale()),
        description="VIREL Alg. 2: ε_ω = (1 − γ)/r_avg · TD-MSE from the critic's residual.",
    ),
    "virel2": Variant(
        virel_model,
        critic=variants.HardSoftCritic,
        value_target=lambda agent: variants.hard_soft_value_target(agent.config.alpha),
        description="VIREL2 (AISTATS §5): one hard and one soft Q, each with its own value; min of the two in Q/ε.",
    ),
    "mpo": Variant(
        virel_model,
        prior=lambda agent: agent.extras["old_policy"].distribution,
        extras=lambda agent: {"old_policy": variants.old_policy(agent, period=1000)},
        after_update=_step_old_policy,
        after_update_in_graph=False,  # OldPolicy.step counts updates on the host
        description="MPO (VIREL App. G): prior π_old, so the ELBO is E[Q]/ε − KL(π_θ‖π_old); π_old follows π_θ slowly.",
    ),
    "mpo_np": Variant(
        virel_model,
        prior=lambda agent: agent.extras["old_policy"].distribution,
        eps_rule=lambda agent: agent.extras["mpo"].epsilon_rule,
        loss=lambda agent: agent.extras["mpo"],
        extras=lambda agent: {
            "old_policy": variants.old_policy(agent, period=100),
            "mpo": variants.nonparametric_mpo(agent),
        },
        after_update=variants.nonparametric_mpo_after_update,
        after_update_in_graph=False,  # OldPolicy.step counts updates on the host
        description="Classic MPO: MPO's model, but importance-weighted ML (η and KL bound by duals) in place of SVI.",
    ),
    "sac": Variant(
        virel_model,
        value_target=lambda agent: soft_value_target(agent.config.alpha),
        description="SAC: fixed α = ε, soft value target E_π[Q − α log π] (entropy inside the backup), twin Q.",
    ),
    "sac_auto": Variant(
        virel_model,
        value_target=lambda agent: soft_value_target(agent.extras["alpha"]),
        eps_rule=lambda agent: agent.extras["alpha"].epsilon_rule,
        extras=lambda agent: {
            "alpha": variants.Temperature(
                agent.config.alpha,
                agent.box.dim,
                agent.config.target_entropy,
                agent.config.dual_lr,
                agent.device,
                capturable=agent.capturable,
            )
        },
        after_update=_sac_auto_update,
        description="SAC with α tuned to a target entropy (--target-entropy, default −action_dim).",
    ),
    "pseudo_likelihood": Variant(
        pseudo_likelihood_model,
        prior=lambda agent: variants.policy_prior(agent.policy),
        guide=lambda agent: variants.no_guide,
        model_inputs=variants.sampled_advantages,
        description="Reward-weighted EM: π_θ is the prior, weighted ML of buffer actions by exp(sampled return/ε).",
    ),
}


def lookup(registry: dict, name: str, what: str):
    """``registry[name]``, or a ``ConfigError`` that lists the choices and suggests close names."""
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, list(registry), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"Unknown {what} {name!r}; choose from {', '.join(sorted(registry))}.{hint}")


class NonFiniteRecord:
    """The step of the first update whose statistics held NaN/inf, kept on the device (-1: none so far).

    ``record`` costs a few small device ops and no host synchronisation; ``first`` reads it (one sync). It updates
    ``self.step`` in place, and ``step`` may be a 0-d device tensor: a CUDA graph that captured ``record`` keeps
    reading and writing the same tensor at every replay, with the step of each replay.
    """

    def __init__(self, device: torch.device) -> None:
        self.step = torch.full((), -1, dtype=torch.long, device=device)

    @torch.no_grad()
    def record(self, values, step: int | torch.Tensor) -> None:
        scalars, others, finite_floats = [], [], True
        for v in values:
            if not isinstance(v, torch.Tensor):
                finite_floats = finite_floats and math.isfinite(v)  # a float (the plain E-step's loss): on the host
            else:
                (scalars if v.dim() == 0 else others).append(v)
        finite = torch.stack(scalars + [v.float().sum() for v in others]).isfinite().all()
        if not finite_floats:
            finite = torch.zeros_like(finite)
        self.step.copy_(torch.where(finite | (self.step >= 0), self.step, step))

    def first(self) -> int | None:
        step = int(self.step)
        return None if step < 0 else step


class VirelAgent:
    """Guide π_θ + critic (twin Q, V, target V) + ε rule, updated by variational EM.

    Args:
        obs_dim: size of the flat observation.
        box: the action box.
        config: the run's :class:`~virel_ppl.config.Config`.
        policy: a guide to use instead of ``GUIDES[config.guide]`` (e.g. a user-defined one).
        elbo: an estimator name or ``ELBO`` object to use instead of ``config.elbo`` (checked by ``make_elbo``).
    """

    def __init__(
        self,
        obs_dim: int,
        box: ActionBox,
        config: Config,
        policy: PolicyGuide | None = None,
        elbo: str | ELBO | None = None,
    ) -> None:
        self.config, self.box = config, box
        self.device = torch.device(config.device)
        self.variant: Variant = lookup(VARIANTS, config.algo, "algo")
        if policy is None:
            policy = lookup(GUIDES, config.guide, "guide")(obs_dim, box, hidden=config.hidden)
        self.policy = policy.to(self.device)
        self.critic = self.variant.critic(obs_dim, box.dim, hidden=config.hidden).to(self.device)
        check_guide_fits(self.policy, box)  # continuous guide ↔ Box, categorical ↔ Discrete
        estimator = None
        if self.variant.loss is None:  # fails here, at start-up, for guide × estimator pairs that cannot work
            estimator = make_elbo(
                elbo if elbo is not None else config.elbo, self.policy, config.num_particles, config.renyi_alpha
            )
        # Why the whole update cannot be one CUDA graph here (None: it will be). Known before any optimiser is
        # built, so that they keep their step counters on the device exactly when the update is captured (em.adam).
        self.graph_refusal = graphs.refusal(config, self.device, estimator)
        self.capturable = self.graph_refusal is None
        self.critic_optim = adam(
            self.critic.trainable_parameters(), config.critic_lr, config.fused_adam, capturable=self.capturable
        )
        self.extras: dict = self.variant.extras(self)  # the variant's own state, saved with the agent
        self.elbo = self.variant.loss(self) if self.variant.loss is not None else estimator
        guide = self.variant.guide(self)
        # one Adam per parameter tensor (pyro.optim's way); the same kernel as the fast E-step, hence the same numbers
        adam_args = {"lr": config.policy_lr, "fused": config.fused_adam}
        self.svi = SVI(self.variant.model, guide, pyro.optim.Adam(adam_args), self.elbo)
        # the E-step the trainer runs: the same model, guide and loss without SVI.step's overheads (em.FastEStep)
        self.fast_e_step = (
            FastEStep(
                self.variant.model, guide, self.elbo, config.policy_lr, config.fused_adam, capturable=self.capturable
            )
            if config.fast_update
            else None
        )
        self.nonfinite = NonFiniteRecord(self.device)
        self.updates = 0
        self.value_target = self.variant.value_target(self)
        self.eps_rule = self.variant.eps_rule(self)
        self.prior = self.variant.prior(self)
        # Each agent keeps its own Pyro param store, so agents in one process never share parameters.
        self.param_state: dict = {"params": {}, "constraints": {}}
        # On a GPU, the whole update as one CUDA graph (graphs.py); None: every update runs eagerly (the CPU).
        self.graphed: graphs.GraphedUpdate | None = None
        if self.graph_refusal is None:
            self.graphed = graphs.GraphedUpdate(self, capture=self.device.type == "cuda")
        elif config.cuda_graph and self.device.type == "cuda":
            graphs.announce_eager(self.graph_refusal)

    def update(self, batch: Batch, step: int | None = None) -> dict[str, torch.Tensor | float]:
        """One variational-EM update on a batch: M-step (critic), E-step (guide), target update.

        Statistics stay tensors (read them when logging). Whether any is NaN/inf is recorded on the device under
        ``step`` (the trainer's environment step; default: the count of updates), see :meth:`first_nonfinite_step`.
        On a GPU the update is one replay of a CUDA graph (``self.graphed``, ``graphs.py``): the same operations.
        """
        if self.graphed is not None:
            return self.graphed(batch, step)
        return self.eager_update(batch, step)

    def eager_update(self, batch: Batch, step: int | None = None) -> dict[str, torch.Tensor | float]:
        """:meth:`update` run op by op from Python (the CPU's path, and the GPU's without a graph)."""
        stats = self.update_body(batch, self.updates + 1 if step is None else step)
        self.updates += 1
        return stats

    def update_body(
        self, batch: Batch, step: int | torch.Tensor, after_update: bool = True
    ) -> dict[str, torch.Tensor | float]:
        """The operations of one update, in order, recorded under ``step``; the CUDA graph captures exactly this
        (with ``after_update=False`` when the variant's hook must run on the host after each replay)."""
        stats: dict[str, torch.Tensor | float] = m_step(
            self.critic, self.critic_optim, batch, self.policy, self.config.gamma, self.value_target
        )
        eps = self.eps_rule(stats["critic/td_mse"], batch.rewards)
        inputs = self.variant.model_inputs(self, batch) if self.variant.model_inputs is not None else {}
        kwargs = dict(eps=eps, q=self.q_on_box, prior=self.prior, **inputs)
        if self.fast_e_step is not None:
            loss = self._pyro_scoped(lambda: self.fast_e_step.step(self.critic, batch.obs, **kwargs))
        else:
            loss = self._pyro_scoped(lambda: e_step(self.svi, self.critic, batch.obs, **kwargs))
        self.critic.update_target(self.config.tau)
        if after_update and self.variant.after_update is not None:
            stats.update(self.variant.after_update(self, batch) or {})
        stats["actor/loss"] = loss
        stats["eps"] = eps
        self.nonfinite.record(stats.values(), step)
        return stats

    def first_nonfinite_step(self) -> int | None:
        """The step of the first update with a NaN/inf statistic (losses, ε, the variant's own), or None.

        Recorded on the device at every update; reading it here is the one host synchronisation. A parameter that
        an update makes non-finite shows up in the losses of the next update.
        """
        return self.nonfinite.first()

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
            "policy_optim": self._policy_optim_state(),  # keyed by param-store names (pyro.optim's format)
            "extras": {name: extra.state_dict() for name, extra in self.extras.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        # torch optimisers keep the tensors they are given: without a copy, two agents loaded from one in-memory
        # state would step the same Adam moments (a checkpoint read from disk is a copy already)
        state = copy.deepcopy(state)
        if self.graphed is not None:  # optimisers get new state tensors: a captured graph would update the old ones
            self.graphed.reset()
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        load_optimizer_state(self.critic_optim, state["critic_optim"])
        if self.fast_e_step is not None:
            self.fast_e_step.load_state_dict(state["policy_optim"])
        else:
            self._pyro_scoped(self.svi.optim.set_state, state["policy_optim"])
        saved = state.get("extras", {})
        for name, extra in self.extras.items():
            if name not in saved:
                raise KeyError(f"The checkpoint has no {name!r} state of the {self.config.algo!r} variant.")
            extra.load_state_dict(saved[name])

    def _policy_optim_state(self) -> dict:
        if self.fast_e_step is not None:
            return self.fast_e_step.state_dict()
        return self._pyro_scoped(self.svi.optim.get_state)

    def _pyro_scoped(self, fn: Callable, *args):
        """Call ``fn`` inside this agent's own Pyro param store."""
        with pyro.get_param_store().scope(self.param_state):
            return fn(*args)

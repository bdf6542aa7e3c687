"""Every algorithm of the package as a :class:`Variant` of VIREL, and the registry ``VARIANTS`` that names them.

A variant is a small class: :class:`Variant` itself is VIREL (Alg. 1: uniform prior, ε = α, twin hard Q, the hard
value target E_π[Q]); every other one subclasses it and sets only what it changes, so each algorithm reads as a
diff of VIREL (``docs/variants.md``). What the agent's update uses of it:

- ``model``, ``guide``, ``prior(states)``, ``model_inputs(batch)``: the Pyro model, its guide and their inputs;
- ``loss``: what the E-step minimises instead of the ``--elbo`` estimator (None: that ELBO);
- ``eps(td_mse, rewards)``: the temperature ε of the likelihood exp(Q/ε);
- ``value_target(critic, policy, states)``: what V regresses to in the M-step;
- ``critic_class``: the critic it needs (twin hard Q);
- ``dual_loss(batch, e_outputs)``: the loss of its own trainable state (SAC's log α, classic MPO's log η and log λ),
  which the agent minimises with one Adam step after the E-step; None when it has none;
- ``after_update(batch)``: what it does after each update without an optimiser (MPO's π_old follows π_θ), returning
  statistics to log.

A stateful variant keeps its state in small ``torch.nn.Module`` s (SAC's :class:`Temperature`, MPO's
:class:`OldPolicy`, classic MPO's :class:`NonparametricMPO`), stored as attributes and named in ``state``: their
parameters and buffers are saved with the agent's ``state_dict`` and their trainable parameters are what the agent's
dual optimiser steps. Every loss here only computes: calling it twice changes nothing. Nothing here reads host-side
values in the update, so a CUDA graph can hold any variant whole. ``examples/custom_variant.py`` adds one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions import Distribution
from pyro.infer.elbo import ELBO
from torch.distributions import kl_divergence

from virel_ppl.config import Config
from virel_ppl.inference.actions import ActionBox, TanhNormal
from virel_ppl.inference.critics import Critic, bellman_target
from virel_ppl.inference.em import (
    Batch,
    EpsilonRule,
    Stats,
    ValueTarget,
    beta_epsilon,
    clip_to_box,
    detached_sample,
    fixed_epsilon,
    hard_value_target,
    soft_value_target,
)
from virel_ppl.inference.models import pseudo_likelihood_model, virel_model
from virel_ppl.inference.nets import mlp

if TYPE_CHECKING:  # annotations only
    from virel_ppl.inference.guides import PolicyGuide


# --- MPO: the old policy as the prior ---------------------------------------------------------------------------


class OldPolicy(torch.nn.Module):
    """π_old(a|s): the prior of MPO's model (VIREL App. G), a frozen copy of the guide π_θ.

    Maximising the ELBO over the prior's parameters would set π_old = π_θ; MPO lets π_old follow π_θ slowly, after
    each EM update (:meth:`follow`): a hard copy every ``period`` updates, or with ``period = 0`` a Polyak step
    π_old ← (1 − τ) π_old + τ π_θ. Its state is the copy ``net`` and the count of updates ``updates`` (a buffer).
    """

    def __init__(self, policy: PolicyGuide, period: int, tau: float) -> None:
        if period < 0 or not 0.0 < tau <= 1.0:
            raise ValueError(f"OldPolicy needs period >= 0 and 0 < tau <= 1, got period={period}, tau={tau}.")
        super().__init__()
        self.period, self.tau = period, tau
        self.net = copy.deepcopy(policy).requires_grad_(False)
        if hasattr(policy, "box"):  # the same action box object, not a copy (policy_kl relies on it; it never changes)
            self.net.box = policy.box
        # the count of updates stays on the device, and the copy is a select on it: no host branch, so a CUDA
        # graph holds the whole step
        device = next(policy.parameters()).device
        self.register_buffer("updates", torch.zeros((), dtype=torch.long, device=device))
        # what follow() reads and writes, listed once (plain lists: the policy is not part of this module's state)
        self._params = (list(self.net.parameters()), list(policy.parameters()))
        self._pairs = list(zip(self.net.state_dict().values(), policy.state_dict().values(), strict=True))

    def distribution(self, states: torch.Tensor) -> Distribution:
        """π_old(·|s). Its parameters carry no gradient; its log-density stays differentiable in the action."""
        with torch.no_grad():
            return self.net.distribution(states)

    @torch.no_grad()
    def follow(self) -> None:
        """π_old's slow move towards π_θ, once per EM update."""
        self.updates += 1
        if self.period == 0:
            torch._foreach_lerp_(*self._params, self.tau)
            return
        due = self.updates % self.period == 0
        for old, new in self._pairs:
            old.copy_(torch.where(due, new, old))


# --- SAC: the temperature tuned to a target entropy -------------------------------------------------------------


class Temperature(torch.nn.Module):
    """SAC's temperature α (= ε of the model), tuned so that the policy's entropy tracks H̄:

        min_{log α}  E_{s~D, a~π}[−α (log π(a|s) + H̄)]        (Haarnoja et al. 2018, "SAC: algorithms and
                                                                 applications", Eq. 18)

    Its state is the parameter ``log_alpha``; :meth:`loss` is the objective above, which the agent's dual optimiser
    minimises. ``target_entropy`` None uses SAC's −action_dim (entropy on the environment's action scale).
    """

    def __init__(self, alpha: float, action_dim: int, target_entropy: float | None, device: torch.device | str) -> None:
        super().__init__()
        self.log_alpha = torch.nn.Parameter(torch.tensor(math.log(alpha), device=device))
        self.target_entropy = -float(action_dim) if target_entropy is None else target_entropy

    def forward(self) -> torch.Tensor:
        """The current α (detached)."""
        return self.log_alpha.detach().exp()

    def epsilon_rule(self, td_mse: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """As an ε rule: ε = α."""
        return self()

    def loss(self, log_pi: torch.Tensor) -> torch.Tensor:
        """−E[α (log π(a|s) + H̄)] at ``log_pi`` = log π_θ(a|s) of fresh actions (no gradient reaches θ)."""
        return -(self.log_alpha.exp() * (log_pi + self.target_entropy)).mean()


# --- VIREL2: one hard and one soft Q ----------------------------------------------------------------------------


class HardSoftCritic(Critic):
    """VIREL2's critic (VIREL, AISTATS preprint §5): Q1 is a hard Q, Q2 a soft Q, each with its own value.

        Q1(s, a) ← r + γ V̄_hard(s'),   V_hard(s) ← E_{a~π}[Q1(s, a)]
        Q2(s, a) ← r + γ V̄_soft(s'),   V_soft(s) ← E_{a~π}[Q2(s, a) − α log π(a|s)]

    The likelihood uses min(Q1, Q2), as with twin hard Qs. ``value`` and ``target_value`` return both values
    stacked, shape ``(2, batch)``, so the M-step regresses each twin on its own target.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__(obs_dim, action_dim, hidden)
        self.v_soft = mlp(obs_dim, hidden, 1)
        self.v_soft_target = copy.deepcopy(self.v_soft).requires_grad_(False)

    def value(self, states: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.v(states).squeeze(-1), self.v_soft(states).squeeze(-1)])

    def target_value(self, states: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.v_target(states).squeeze(-1), self.v_soft_target(states).squeeze(-1)])

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith(("v_target.", "v_soft_target."))]

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        super().update_target(tau)
        torch._foreach_lerp_(list(self.v_soft_target.parameters()), list(self.v_soft.parameters()), tau)


def hard_soft_value_target(alpha: float) -> ValueTarget:
    """VIREL2's value targets, stacked: (E_π[Q1], E_π[Q2 − α log π]), one action sample per state."""

    def target(critic: Critic, policy: PolicyGuide, states: torch.Tensor) -> torch.Tensor:
        d = policy.distribution(states)
        a = detached_sample(d)  # rsample where there is one: no host check of the scale
        q_hard, q_soft = critic.twin_q(states, clip_to_box(policy, a))
        return torch.stack([q_hard, q_soft - alpha * d.log_prob(a)])

    return target


# --- classic (non-parametric) MPO: same model and guide, another inference step ------------------------------


class NonparametricMPO(torch.nn.Module):
    """The classic MPO policy step (Abdolmaleki et al. 2018) as an SVI loss on MPO's model and guide.

    Weighting (MPO's non-parametric step): draw ``num_actions`` actions a_j per state from the model's prior π_old
    and weight them by q_j = softmax_j(Q(s, a_j)/η) — self-normalised importance sampling of the model's posterior
    p(a|s, O) ∝ π_old(a|s) exp(Q(s, a)/η), with the prior as proposal. η is the model's ε (``eps``).

    Fit (MPO's parametric step): maximise Σ_j q_j log π_θ(a_j|s) subject to KL(π_old ‖ π_θ) ≤ ``kl_bound``, through
    the Lagrangian −Σ_j q_j log π_θ(a_j|s) + λ KL; λ follows its dual, min_λ λ (ε_KL − KL).

    With ``eta_bound`` η follows MPO's dual instead of staying fixed,
        min_η  g(η) = η ε_η + η E_s log (1/M) Σ_j exp(Q(s, a_j)/η),
    and :meth:`epsilon_rule` hands the current η to the model as its ε. Its state is the parameters ``log_eta`` and
    ``log_lagrange``. A call returns the loss of θ and, among its outputs, the duals' loss (:meth:`dual_loss`) of the
    same draws, which the agent's dual optimiser minimises. The KL is analytic where torch knows it (Normal‖Normal,
    and TanhNormal pairs on the same box), else sampled.
    """

    def __init__(
        self, num_actions: int, kl_bound: float, eta: float, eta_bound: float | None, device: torch.device | str
    ) -> None:
        if num_actions < 2 or not kl_bound > 0 or not eta > 0 or (eta_bound is not None and not eta_bound > 0):
            raise ValueError(
                "NonparametricMPO needs num_actions >= 2 and positive kl_bound, eta and eta_bound, got "
                f"num_actions={num_actions}, kl_bound={kl_bound}, eta={eta}, eta_bound={eta_bound}."
            )
        super().__init__()
        self.num_actions, self.kl_bound, self.eta_bound = num_actions, kl_bound, eta_bound
        self.log_eta = torch.nn.Parameter(torch.tensor(math.log(eta), device=device))
        self.log_lagrange = torch.nn.Parameter(torch.tensor(0.0, device=device))  # λ = 1 to start

    def epsilon_rule(self, td_mse: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """As an ε rule: the current η of the dual."""
        return self.log_eta.detach().exp()

    def forward(
        self, model: Callable, guide: Callable, states: torch.Tensor, *, eps, **kwargs
    ) -> tuple[torch.Tensor, Stats]:
        """The loss of θ, and outputs: the duals' loss ``"duals"`` and the λ it used (to log)."""
        with torch.no_grad(), pyro.plate("actions", self.num_actions, dim=-2):
            # the model at ε = 1: a_j ~ π_old(·|s) and log p(O|s, a_j) = Q(s, a_j)
            model_trace = poutine.trace(model).get_trace(states, eps=1.0, **kwargs)
        actions, old = model_trace.nodes["a"]["value"], model_trace.nodes["a"]["fn"]
        q = model_trace.nodes["O"]["fn"].log_prob(model_trace.nodes["O"]["value"])  # (M, N)
        weights = torch.softmax(q / eps, dim=0)  # the weighting: q(a_j|s) on the prior's samples
        with pyro.plate("actions", self.num_actions, dim=-2):
            guide_trace = poutine.trace(poutine.condition(guide, data={"a": actions})).get_trace(
                states, eps=eps, **kwargs
            )
        new = guide_trace.nodes["a"]["fn"]
        log_pi = new.log_prob(actions)  # log π_θ(a_j|s), differentiable in θ
        kl = policy_kl(old, new, actions, log_pi)
        lagrange = self.log_lagrange.detach().exp()
        loss = -(weights * log_pi).sum(0).mean() + lagrange * kl
        return loss, {"duals": self.dual_loss(q, kl.detach()), "mpo/lagrange": lagrange}

    def dual_loss(self, q: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        """The duals' objective at Q(s, a_j) (shape ``(M, N)``) and KL(π_old ‖ π_θ): λ's, and η's with a bound."""
        loss = self.log_lagrange.exp() * (self.kl_bound - kl)
        if self.eta_bound is not None:
            eta = self.log_eta.exp()
            log_mean_exp = torch.logsumexp(q / eta, dim=0) - math.log(self.num_actions)
            loss = loss + eta * self.eta_bound + eta * log_mean_exp.mean()
        return loss


def policy_kl(
    old: Distribution, new: Distribution, samples: torch.Tensor, new_log_prob: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(π_old ‖ π_θ) averaged over states: analytic where torch knows it, else from ``samples`` of π_old
    (shape ``(M, N, action_dim)``, with ``old``/``new`` batched as ``(M, N)``)."""
    if isinstance(old, TanhNormal) and isinstance(new, TanhNormal) and old.box is new.box:
        # what torch's KL of two transformed distributions returns, without comparing the transforms' tensors on
        # the host (a device sync, which a CUDA graph cannot hold): the same box object means the same transforms
        return kl_divergence(old.base_dist, new.base_dist)[0].mean()
    try:
        return kl_divergence(old, new)[0].mean()
    except NotImplementedError:
        log_new = new.log_prob(samples) if new_log_prob is None else new_log_prob
        return (old.log_prob(samples) - log_new).mean()


# --- pseudo-likelihood EM: the policy is the model's prior ----------------------------------------------------


def no_guide(states: torch.Tensor, **model_kwargs) -> None:
    """The guide of a model without latent sites: SVI on it is maximum likelihood."""


def sampled_advantages(critic: Critic, gamma: float, batch: Batch) -> dict[str, torch.Tensor]:
    """Pseudo-likelihood inputs: the buffer's actions and their sampled one-step returns less a baseline,
    R̂ = r + γ(1 − terminated) V̄(s') − V(s), standardised over the batch — so ε = alpha is in units of the
    batch's spread of R̂ (reward-weighted regression with an adaptive temperature η = alpha · std R̂)."""
    with torch.no_grad():
        next_value = critic.target_value(batch.next_obs)
        advantage = bellman_target(batch.rewards, batch.terminated, next_value, gamma)
        advantage = advantage - critic.value(batch.obs)
        return {"actions": batch.actions, "returns": (advantage - advantage.mean()) / advantage.std().clamp_min(1e-6)}


# --- the variants --------------------------------------------------------------------------------------------


class Variant:
    """VIREL Alg. 1 (VIREL1): uniform prior, fixed ε = α, twin hard Q, hard value target E_π[Q].

    The base of every variant. Built by the agent once its policy and critic exist; ``capturable``: the agent will
    capture its update as a CUDA graph.
    """

    description = "VIREL Alg. 1 (VIREL1): uniform prior, fixed ε = α, twin hard Q, hard value target E_π[Q]."
    model: Callable = staticmethod(virel_model)
    critic_class: type[Critic] = Critic
    replaces_elbo = False  #: whether ``loss`` replaces the --elbo estimator (known before the variant is built)
    state: tuple[str, ...] = ()  #: attributes that hold its state: ``torch.nn.Module`` s saved with the agent

    def __init__(
        self, config: Config, policy: PolicyGuide, critic: Critic, box: ActionBox, capturable: bool = False
    ) -> None:
        self.config, self.policy, self.critic, self.box = config, policy, critic, box
        self.device, self.capturable = torch.device(config.device), capturable
        self.guide: Callable = policy.guide
        self.loss: ELBO | Callable | None = None
        self.eps: EpsilonRule = fixed_epsilon(config.alpha)
        self.value_target: ValueTarget = hard_value_target

    @property
    def fixed_eps(self) -> float | None:
        """The ε of every update when it is a constant of the run (here ``config.alpha``), None when ε moves: what
        analysis uses for a run that logged no ε."""
        return self.config.alpha

    def prior(self, states: torch.Tensor) -> Distribution:
        """p(a|s): uniform on the action box."""
        return self.box.uniform()

    def model_inputs(self, batch: Batch) -> dict:
        """Keyword arguments of the model beyond q, eps and prior (none)."""
        return {}

    def dual_loss(self, batch: Batch, e_outputs: Stats) -> tuple[torch.Tensor | None, Stats]:
        """The loss of the variant's duals, which the agent minimises by one Adam step after the E-step (None: it has
        none), and outputs for :meth:`after_update`. ``e_outputs``: what the E-step's loss returned besides its value
        (classic MPO's duals' loss)."""
        return None, {}

    def after_update(self, batch: Batch, outputs: Stats) -> Stats:
        """What the variant does after each update without an optimiser (nothing), and its statistics to log;
        ``outputs``: those of :meth:`dual_loss`."""
        return {}


class Beta(Variant):
    description = "VIREL Alg. 2: ε_ω = (1 − γ)/r_avg · TD-MSE from the critic's residual."
    fixed_eps = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = beta_epsilon(self.config.gamma, self.config.resolved_beta_scale())


class Sac(Variant):
    description = "SAC: fixed α = ε, soft value target E_π[Q − α log π] (entropy inside the backup), twin Q."

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.value_target = soft_value_target(self.config.alpha)


class SacAuto(Variant):
    description = "SAC with α tuned to a target entropy (--target-entropy, default −action_dim)."
    fixed_eps = None
    state = ("alpha",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.alpha = Temperature(self.config.alpha, self.box.dim, self.config.target_entropy, self.device)
        self.value_target = soft_value_target(self.alpha)
        self.eps = self.alpha.epsilon_rule

    def dual_loss(self, batch: Batch, e_outputs: Stats) -> tuple[torch.Tensor, Stats]:
        """α's loss at fresh actions of π_θ (after its E-step), and the entropy estimate."""
        with torch.no_grad():
            d = self.policy.distribution(batch.obs)
            log_pi = d.log_prob(detached_sample(d))  # rsample where there is one: no host check of the scale
        return self.alpha.loss(log_pi), {"sac/entropy": -log_pi.mean()}

    def after_update(self, batch: Batch, outputs: Stats) -> Stats:
        return {"sac/alpha": self.alpha(), **outputs}  # α after its step


class Mpo(Variant):
    description = "MPO (VIREL App. G): prior π_old, so the ELBO is E[Q]/ε − KL(π_θ‖π_old); π_old follows π_θ slowly."
    state = ("old_policy",)
    period = 1000  #: updates between copies of π_θ into π_old, unless --old-policy-period says otherwise

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        period = self.period if cfg.old_policy_period is None else cfg.old_policy_period
        self.old_policy = OldPolicy(self.policy, period, cfg.old_policy_tau)

    def prior(self, states: torch.Tensor) -> Distribution:
        return self.old_policy.distribution(states)

    def after_update(self, batch: Batch, outputs: Stats) -> Stats:
        self.old_policy.follow()
        return {}


class NonparametricMpo(Mpo):
    description = "Classic MPO: MPO's model, but importance-weighted ML (η and KL bound by duals) in place of SVI."
    state = ("old_policy", "mpo")
    period = 100
    replaces_elbo = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        self.mpo = NonparametricMPO(cfg.mpo_num_actions, cfg.mpo_kl_bound, cfg.alpha, cfg.mpo_eta_bound, self.device)
        self.loss, self.eps = self.mpo, self.mpo.epsilon_rule

    @property
    def fixed_eps(self) -> float | None:
        """η, when no dual moves it (no --mpo-eta-bound)."""
        return float(self.mpo.epsilon_rule(None, None)) if self.config.mpo_eta_bound is None else None

    def dual_loss(self, batch: Batch, e_outputs: Stats) -> tuple[torch.Tensor, Stats]:
        """The duals' loss of the E-step's own draws, and the λ that step used."""
        return e_outputs["duals"], {"mpo/lagrange": e_outputs["mpo/lagrange"]}

    def after_update(self, batch: Batch, outputs: Stats) -> Stats:
        """Log KL(π_old ‖ π_θ) as it stands after the step, then π_old follows π_θ."""
        with torch.no_grad():
            old = self.old_policy.distribution(batch.obs).expand([2, batch.obs.shape[0]])
            kl = policy_kl(old, self.policy.distribution(batch.obs).expand(old.batch_shape), detached_sample(old))
        self.old_policy.follow()
        return {"mpo/kl": kl, **outputs, "mpo/eta": self.mpo.log_eta.detach().exp()}  # η after its step


class Virel2(Variant):
    description = "VIREL2 (AISTATS §5): one hard and one soft Q, each with its own value; min of the two in Q/ε."

    critic_class = HardSoftCritic

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.value_target = hard_soft_value_target(self.config.alpha)


class PseudoLikelihood(Variant):
    description = "Reward-weighted EM: π_θ is the prior, weighted ML of buffer actions by exp(sampled return/ε)."
    model = staticmethod(pseudo_likelihood_model)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.guide = no_guide

    def prior(self, states: torch.Tensor) -> Distribution:
        """p_θ(a|s) = π_θ(a|s), its parameters registered with Pyro (learnt by maximum likelihood)."""
        pyro.module(self.policy.pyro_name, self.policy)
        return self.policy.distribution(states)

    def model_inputs(self, batch: Batch) -> dict:
        return sampled_advantages(self.critic, self.config.gamma, batch)


#: ``--algo`` name → variant class.
VARIANTS: dict[str, type[Variant]] = {
    "virel": Variant,
    "virel1": Variant,
    "beta": Beta,
    "virel2": Virel2,
    "mpo": Mpo,
    "mpo_np": NonparametricMpo,
    "sac": Sac,
    "sac_auto": SacAuto,
    "pseudo_likelihood": PseudoLikelihood,
}

"""What the variants in ``agent.VARIANTS`` need beyond a model function: extra state and inference steps.

- :class:`OldPolicy`: MPO's prior π_old(a|s), a frozen copy of π_θ with its slow update (its M-step);
- :class:`Temperature`: SAC's α, tuned to a target entropy;
- :class:`HardSoftCritic` and :func:`hard_soft_value_target`: VIREL2's one hard and one soft Q;
- :class:`NonparametricMPO`: the classic MPO policy step as an SVI loss on MPO's model and guide;
- :func:`policy_prior`, :func:`no_guide` and :func:`sampled_advantages`: pseudo-likelihood EM, where the
  policy is the model's prior and the E-step weights come from sampled returns.

Each stateful piece has ``state_dict``/``load_state_dict``; the agent saves them in its checkpoint
(``VirelAgent.extras``), so a resumed run continues exactly.
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
from torch.distributions import kl_divergence

from virel_ppl.actions import TanhNormal
from virel_ppl.critics import Critic, bellman_target
from virel_ppl.em import Batch, ValueTarget, _sample, executed, load_optimizer_state
from virel_ppl.guides import PolicyGuide
from virel_ppl.models import Prior
from virel_ppl.nets import mlp

if TYPE_CHECKING:
    from virel_ppl.agent import VirelAgent


# --- MPO: the old policy as the prior ---------------------------------------------------------------------------


class OldPolicy:
    """π_old(a|s): the prior of MPO's model (VIREL App. G), a frozen copy of the guide π_θ.

    Its M-step (maximising the ELBO over the prior's parameters) would set π_old = π_θ; MPO takes it slowly,
    after each EM update: a hard copy every ``period`` updates, or with ``period = 0`` a Polyak step
    π_old ← (1 − τ) π_old + τ π_θ.
    """

    def __init__(self, policy: PolicyGuide, period: int, tau: float) -> None:
        if period < 0 or not 0.0 < tau <= 1.0:
            raise ValueError(f"OldPolicy needs period >= 0 and 0 < tau <= 1, got period={period}, tau={tau}.")
        self.policy, self.period, self.tau = policy, period, tau
        self.net = copy.deepcopy(policy).requires_grad_(False)
        if hasattr(policy, "box"):  # the same action box object, not a copy (policy_kl relies on it; it never changes)
            self.net.box = policy.box
        self.updates = 0

    def distribution(self, states: torch.Tensor) -> Distribution:
        """π_old(·|s). Its parameters carry no gradient; its log-density stays differentiable in the action."""
        with torch.no_grad():
            return self.net.distribution(states)

    @torch.no_grad()
    def step(self) -> None:
        """The slow M-step of the prior, called once per EM update."""
        self.updates += 1
        if self.period == 0:
            torch._foreach_lerp_(list(self.net.parameters()), list(self.policy.parameters()), self.tau)
        elif self.updates % self.period == 0:
            self.net.load_state_dict(self.policy.state_dict())

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.updates = state["updates"]


def old_policy(agent: VirelAgent, period: int) -> OldPolicy:
    """The agent's π_old: ``--old-policy-period`` (or the preset's ``period`` when that is None) and
    ``--old-policy-tau``."""
    cfg = agent.config
    return OldPolicy(
        agent.policy, period if cfg.old_policy_period is None else cfg.old_policy_period, cfg.old_policy_tau
    )


# --- SAC: the temperature tuned to a target entropy -------------------------------------------------------------


class Temperature:
    """SAC's temperature α (= ε of the model), tuned so that the policy's entropy tracks H̄:

        min_{log α}  E_{s~D, a~π}[−α (log π(a|s) + H̄)]        (Haarnoja et al. 2018, "SAC: algorithms and
                                                                 applications", Eq. 18)

    ``target_entropy`` None uses SAC's −action_dim (entropy on the environment's action scale). ``capturable``: its
    Adam keeps the step on the device (the CUDA-graph update, ``graphs.py``).
    """

    def __init__(
        self,
        alpha: float,
        action_dim: int,
        target_entropy: float | None,
        lr: float,
        device: torch.device | str,
        capturable: bool = False,
    ) -> None:
        self.log_alpha = torch.tensor(math.log(alpha), device=device, requires_grad=True)
        self.target_entropy = -float(action_dim) if target_entropy is None else target_entropy
        self.optim = torch.optim.Adam([self.log_alpha], lr=lr, capturable=capturable)

    def __call__(self) -> torch.Tensor:
        """The current α (detached)."""
        return self.log_alpha.detach().exp()

    def epsilon_rule(self, td_mse: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """As an ε rule: ε = α."""
        return self()

    def update(self, policy: PolicyGuide, states: torch.Tensor) -> dict[str, torch.Tensor]:
        """One gradient step on log α from fresh actions of π_θ; returns α and the entropy estimate."""
        with torch.no_grad():
            d = policy.distribution(states)
            log_pi = d.log_prob(_sample(d))  # rsample where there is one: no host check of the scale
        loss = -(self.log_alpha.exp() * (log_pi + self.target_entropy)).mean()
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        return {"sac/alpha": self(), "sac/entropy": -log_pi.mean()}

    def state_dict(self) -> dict:
        return {"log_alpha": self.log_alpha.detach().clone(), "optim": self.optim.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        load_optimizer_state(self.optim, state["optim"])  # keeps this run's capturable (and kernel) choice


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
        a = _sample(d)  # rsample where there is one: no host check of the scale
        q_hard, q_soft = critic.twin_q(states, executed(policy, a))
        return torch.stack([q_hard, q_soft - alpha * d.log_prob(a)])

    return target


# --- classic (non-parametric) MPO: same model and guide, another inference step ------------------------------


class NonparametricMPO:
    """The classic MPO policy step (Abdolmaleki et al. 2018) as an SVI loss on MPO's model and guide.

    E-step (non-parametric): draw ``num_actions`` actions a_j per state from the model's prior π_old and weight
    them by q_j = softmax_j(Q(s, a_j)/η) — self-normalised importance sampling of the model's posterior
    p(a|s, O) ∝ π_old(a|s) exp(Q(s, a)/η), with the prior as proposal. η is the model's ε (``eps``).

    M-step (parametric): maximise Σ_j q_j log π_θ(a_j|s) subject to KL(π_old ‖ π_θ) ≤ ``kl_bound``, through
    the Lagrangian −Σ_j q_j log π_θ(a_j|s) + λ KL; λ follows its dual, min_λ λ (ε_KL − KL).

    With ``eta_bound`` η follows MPO's dual instead of staying fixed,
        min_η  g(η) = η ε_η + η E_s log (1/M) Σ_j exp(Q(s, a_j)/η),
    and :meth:`epsilon_rule` hands the current η to the model as its ε. Both duals take one Adam step per call.
    The KL is analytic where torch knows it (Normal‖Normal, and TanhNormal pairs on the same box), else sampled.
    ``capturable``: the duals' Adam keeps its step on the device (the CUDA-graph update, ``graphs.py``).
    """

    def __init__(
        self,
        num_actions: int,
        kl_bound: float,
        eta: float,
        eta_bound: float | None,
        lr: float,
        device: torch.device | str,
        capturable: bool = False,
    ) -> None:
        if num_actions < 2 or not kl_bound > 0 or not eta > 0 or (eta_bound is not None and not eta_bound > 0):
            raise ValueError(
                "NonparametricMPO needs num_actions >= 2 and positive kl_bound, eta and eta_bound, got "
                f"num_actions={num_actions}, kl_bound={kl_bound}, eta={eta}, eta_bound={eta_bound}."
            )
        self.num_actions, self.kl_bound, self.eta_bound = num_actions, kl_bound, eta_bound
        self.log_eta = torch.tensor(math.log(eta), device=device, requires_grad=True)
        self.log_lagrange = torch.tensor(0.0, device=device, requires_grad=True)  # λ = 1 to start
        self.optim = torch.optim.Adam([self.log_eta, self.log_lagrange], lr=lr, capturable=capturable)
        self.last: dict[str, torch.Tensor] = {}

    def epsilon_rule(self, td_mse: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """As an ε rule: the current η of the dual."""
        return self.log_eta.detach().exp()

    def __call__(self, model: Callable, guide: Callable, states: torch.Tensor, *, eps, **kwargs) -> torch.Tensor:
        """The loss of θ (SVI steps on it); also steps the duals and keeps statistics in ``self.last``."""
        with torch.no_grad(), pyro.plate("actions", self.num_actions, dim=-2):
            # the model at ε = 1: a_j ~ π_old(·|s) and log p(O|s, a_j) = Q(s, a_j)
            model_trace = poutine.trace(model).get_trace(states, eps=1.0, **kwargs)
        actions, old = model_trace.nodes["a"]["value"], model_trace.nodes["a"]["fn"]
        q = model_trace.nodes["O"]["fn"].log_prob(model_trace.nodes["O"]["value"])  # (M, N)
        weights = torch.softmax(q / eps, dim=0)  # E-step: q(a_j|s) on the prior's samples
        with pyro.plate("actions", self.num_actions, dim=-2):
            guide_trace = poutine.trace(poutine.condition(guide, data={"a": actions})).get_trace(
                states, eps=eps, **kwargs
            )
        new = guide_trace.nodes["a"]["fn"]
        log_pi = new.log_prob(actions)  # log π_θ(a_j|s), differentiable in θ
        kl = policy_kl(old, new, actions, log_pi)
        lagrange = self.log_lagrange.detach().exp()
        loss = -(weights * log_pi).sum(0).mean() + lagrange * kl
        self._dual_step(q, kl.detach())
        self.last = {"mpo/lagrange": lagrange, "mpo/eta": self.log_eta.detach().exp()}
        return loss

    def _dual_step(self, q: torch.Tensor, kl: torch.Tensor) -> None:
        loss = self.log_lagrange.exp() * (self.kl_bound - kl)
        if self.eta_bound is not None:
            eta = self.log_eta.exp()
            log_mean_exp = torch.logsumexp(q / eta, dim=0) - math.log(self.num_actions)
            loss = loss + eta * self.eta_bound + eta * log_mean_exp.mean()
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()

    def state_dict(self) -> dict:
        return {
            "log_eta": self.log_eta.detach().clone(),
            "log_lagrange": self.log_lagrange.detach().clone(),
            "optim": self.optim.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.log_eta.copy_(state["log_eta"])
            self.log_lagrange.copy_(state["log_lagrange"])
        load_optimizer_state(self.optim, state["optim"])  # keeps this run's capturable (and kernel) choice


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


def nonparametric_mpo_after_update(agent: VirelAgent, batch: Batch) -> dict[str, torch.Tensor]:
    """After an ``mpo_np`` update: log KL(π_old ‖ π_θ) as it stands after the step, then π_old's slow update."""
    old_policy = agent.extras["old_policy"]
    with torch.no_grad():
        old = old_policy.distribution(batch.obs).expand([2, batch.obs.shape[0]])
        kl = policy_kl(old, agent.policy.distribution(batch.obs).expand(old.batch_shape), _sample(old))
    old_policy.step()
    return {"mpo/kl": kl, **agent.extras["mpo"].last}


def nonparametric_mpo(agent: VirelAgent) -> NonparametricMPO:
    """The agent's non-parametric MPO step, built from its config."""
    cfg = agent.config
    return NonparametricMPO(
        cfg.mpo_num_actions,
        cfg.mpo_kl_bound,
        cfg.alpha,
        cfg.mpo_eta_bound,
        cfg.dual_lr,
        agent.device,
        capturable=agent.capturable,
    )


# --- pseudo-likelihood EM: the policy is the model's prior ----------------------------------------------------


def policy_prior(policy: PolicyGuide) -> Prior:
    """p_θ(a|s) = π_θ(a|s) as the model's prior, its parameters registered with Pyro (learnt by ML)."""

    def prior(states: torch.Tensor) -> Distribution:
        pyro.module(policy.pyro_name, policy)
        return policy.distribution(states)

    return prior


def no_guide(states: torch.Tensor, **model_kwargs) -> None:
    """The guide of a model without latent sites: SVI on it is maximum likelihood."""


def sampled_advantages(agent: VirelAgent, batch: Batch) -> dict[str, torch.Tensor]:
    """Pseudo-likelihood inputs: the buffer's actions and their sampled one-step returns less a baseline,
    R̂ = r + γ(1 − terminated) V̄(s') − V(s), standardised over the batch — so ε = alpha is in units of the
    batch's spread of R̂ (reward-weighted regression with an adaptive temperature η = alpha · std R̂)."""
    with torch.no_grad():
        next_value = agent.critic.target_value(batch.next_obs)
        advantage = bellman_target(batch.rewards, batch.terminated, next_value, agent.config.gamma)
        advantage = advantage - agent.critic.value(batch.obs)
        return {"actions": batch.actions, "returns": (advantage - advantage.mean()) / advantage.std().clamp_min(1e-6)}

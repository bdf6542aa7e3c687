"""The agent: a guide π_θ, a critic and a variant of VIREL, trained by one variational-EM ``update(batch)``.

:meth:`VirelAgent.update_step` is the whole training step on one screen: M-step, ε, E-step, target update, the
variant's own step. The trainer calls :meth:`VirelAgent.update` and :meth:`VirelAgent.act` and never learns which
variant runs. On a GPU, ``update`` replays ``update_step`` as one CUDA graph (``graphs.CudaGraph``, a wrapper that
knows nothing of the agent); everywhere else it calls it directly.
"""

from __future__ import annotations

import copy
import math

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.infer.elbo import ELBO

from virel_ppl.config import Config, lookup
from virel_ppl.graphs import CudaGraph, announce_eager
from virel_ppl.inference.actions import ActionBox
from virel_ppl.inference.divergences import make_elbo
from virel_ppl.inference.em import Batch, DeviceTrace_ELBO, EStep, Stats, SVIStep, adam, m_step
from virel_ppl.inference.guides import GUIDES, PolicyGuide, check_guide_fits
from virel_ppl.variants import VARIANTS, Variant


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
    """Guide π_θ + critic (twin Q, V, target V) + a variant's ε rule and value target, updated by variational EM.

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
        variant_class: type[Variant] = lookup(VARIANTS, config.algo, "algo")
        if policy is None:
            policy = lookup(GUIDES, config.guide, "guide")(obs_dim, box, hidden=config.hidden)
        self.policy = policy.to(self.device)
        self.critic = variant_class.critic_class(obs_dim, box.dim, hidden=config.hidden).to(self.device)
        check_guide_fits(self.policy, box)  # continuous guide ↔ Box, categorical ↔ Discrete
        estimator = None
        if not variant_class.replaces_elbo:  # fails here, at start-up, for guide × estimator pairs that cannot work
            estimator = make_elbo(
                elbo if elbo is not None else config.elbo, self.policy, config.num_particles, config.renyi_alpha
            )
        # Why the update cannot be one CUDA graph (None: it will be), known before any optimiser is built, so that
        # they keep their step counters on the device exactly when the update is captured (em.adam).
        self.graph_refusal = why_not_captured(config, self.device, estimator, self.policy)
        self.capturable = capturable = self.graph_refusal is None
        if capturable and type(estimator) is Trace_ELBO:  # the same loss, without a host read per site
            estimator = DeviceTrace_ELBO(
                num_particles=estimator.num_particles,
                vectorize_particles=estimator.vectorize_particles,
                max_plate_nesting=estimator.max_plate_nesting,
            )
        self.critic_optim = adam(
            self.critic.trainable_parameters(), config.critic_lr, config.fused_adam, capturable=capturable
        )
        self.variant = variant_class(config, self.policy, self.critic, box, capturable=capturable)
        # the variant's state (log α, π_old, duals): torch modules, saved with the agent; their trainable parameters
        # are the duals, one Adam at --dual-lr
        self.variant_state = torch.nn.ModuleDict({name: getattr(self.variant, name) for name in self.variant.state})
        duals = [p for p in self.variant_state.parameters() if p.requires_grad]
        self.dual_optim = adam(duals, config.dual_lr, capturable=capturable) if duals else None
        self.elbo = self.variant.loss if self.variant.replaces_elbo else estimator
        if config.fast_update:  # the ELBO's differentiable_loss and one torch Adam (em.EStep)
            self.e_step = EStep(
                self.variant.model, self.variant.guide, self.elbo, config.policy_lr, config.fused_adam, capturable
            )
        else:  # the reference: pyro.infer.SVI.step
            self.e_step = SVIStep(
                self.variant.model, self.variant.guide, self.elbo, config.policy_lr, config.fused_adam
            )
        self.nonfinite = NonFiniteRecord(self.device)
        self.updates = 0
        # Speed is a wrapper from outside: on a GPU the whole update_step as one CUDA graph (graphs.py).
        self.graph: CudaGraph | None = None
        if capturable:
            self.use_graph()
        elif config.cuda_graph and self.device.type == "cuda":
            announce_eager(self.graph_refusal)

    def update_step(self, batch: Batch, step: int | torch.Tensor) -> Stats:
        """One variational-EM update on a batch, recorded under ``step``: the whole training step, in order."""
        variant, cfg = self.variant, self.config
        # M-step: shrink the critic's Bellman residual (value target drawn from the guide)
        stats: Stats = m_step(self.critic, self.critic_optim, batch, self.policy, cfg.gamma, variant.value_target)
        # ε_ω: the temperature of the likelihood exp(Q/ε), from the residual
        eps = variant.eps(stats["critic/td_mse"], batch.rewards)
        # E-step: maximise the ELBO over the guide's parameters (the critic frozen inside the model)
        inputs = dict(eps=eps, q=self.q_on_box, prior=variant.prior, **variant.model_inputs(batch))
        loss, e_outputs = self.e_step(self.critic, batch.obs, **inputs)
        # the target value network follows V slowly
        self.critic.update_target(cfg.tau)
        # the variant's duals (SAC's log α, classic MPO's log η and log λ): one Adam step on their loss
        dual_loss, outputs = variant.dual_loss(batch, e_outputs)
        if dual_loss is not None:
            self.dual_optim.zero_grad(set_to_none=True)
            dual_loss.backward()
            self.dual_optim.step()
        # the variant's step without an optimiser (MPO's π_old follows π_θ), and its statistics
        stats.update(variant.after_update(batch, outputs))
        stats["actor/loss"], stats["eps"] = loss, eps
        self.nonfinite.record(stats.values(), step)
        return stats

    def update(self, batch: Batch, step: int | None = None) -> Stats:
        """:meth:`update_step`, as one CUDA-graph replay where the update is captured; ``step`` is the trainer's
        environment step (default: the count of updates). Statistics stay tensors (read them when logging);
        whether any is NaN/inf is recorded on the device, see :meth:`first_nonfinite_step`."""
        self.updates += 1
        step = self.updates if step is None else step
        if self.graph is None:
            return self.update_step(batch, step)
        self._step.fill_(step)  # a kernel argument, not a host read
        return self.graph(batch, self._step)

    def use_graph(self, capture: bool = True) -> None:
        """Run :meth:`update` through ``graphs.CudaGraph`` from now on (done at start-up where the update can be
        captured); ``capture=False`` runs the same static-buffer calls without a graph, on any device (the tests)."""

        def update_without_checks(batch: Batch, step: torch.Tensor) -> Stats:
            with pyro.validation_enabled(False):  # argument checks read device values on the host (a sync each)
                return self.update_step(batch, step)

        self.graph = CudaGraph(update_without_checks, capture=capture)
        self._step = torch.zeros((), dtype=torch.long, device=self.device)

    @property
    def update_path(self) -> str:
        """Which update runs now, in words: the CUDA graph, or eager and why (for benchmarks and logs)."""
        return self.graph.describe() if self.graph is not None else f"eager ({self.graph_refusal})"

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
        """Actions on the box for a batch of observations: π_θ samples (clipped by the guide), or the mode when
        ``deterministic``."""
        return self.policy.act(obs, deterministic)

    @torch.no_grad()
    def policy_entropy(self, states: torch.Tensor) -> torch.Tensor:
        """H(π_θ(·|s)) averaged over ``states``: −log π_θ(a|s) at one a ~ π_θ(·|s) per state, a diagnostic read when
        logging (0-d tensor). It draws from a fork of torch's random state, so training draws what it would without."""
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            pi = self.policy.distribution(states)
            return -pi.log_prob(pi.sample()).mean()

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "policy_optim": self.e_step.state_dict(),  # keyed by param-store names (pyro.optim's format)
            "variant": self.variant_state.state_dict(),  # the variant's own state (log α, π_old, duals)
            **({"dual_optim": self.dual_optim.state_dict()} if self.dual_optim is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        # torch optimisers keep the tensors they are given: without a copy, two agents loaded from one in-memory
        # state would step the same Adam moments (a checkpoint read from disk is a copy already)
        state = copy.deepcopy(state)
        if self.graph is not None:  # optimisers get new state tensors: a captured graph would update the old ones
            self.graph.reset()
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.critic_optim.load_state_dict(state["critic_optim"])
        self.e_step.load_state_dict(state["policy_optim"])
        self.variant_state.load_state_dict(state.get("variant", {}))
        if self.dual_optim is not None:
            self.dual_optim.load_state_dict(state["dual_optim"])


def why_not_captured(config: Config, device: torch.device, elbo: ELBO | None, policy: PolicyGuide) -> str | None:
    """Why this run's update will not be captured as a CUDA graph (None: it will be), known at start-up."""
    if device.type != "cuda":
        return "CUDA graphs exist only on CUDA devices"
    if not config.cuda_graph:
        return "--no-cuda-graph"
    if not config.fast_update:
        return "--no-fast-update runs pyro.infer.SVI.step, whose loss is a host float every step"
    if elbo is None:
        return None
    name = f"{type(elbo).__name__} (--elbo {config.elbo})"
    if not hasattr(elbo, "differentiable_loss"):
        return f"{name} has no differentiable_loss: its loss_and_grads returns a host float every step"
    if isinstance(elbo, TraceEnum_ELBO):
        return (
            f"{name} enumerates: Pyro's Dice estimator tests its probabilities on the host and drops the zero ones "
            "(a device sync and a data-dependent shape)"
        )
    if type(elbo) is not Trace_ELBO:
        return (
            f"{name} adds its loss up in host floats (one .item() per site); of Pyro's ELBOs only trace has a "
            "device-resident version here (em.DeviceTrace_ELBO)"
        )
    if not policy.has_rsample:
        return f"{type(policy).__name__} has no rsample: the device-resident ELBO needs a reparameterised guide"
    return None

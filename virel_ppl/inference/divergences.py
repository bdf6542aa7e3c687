"""Divergences and their estimators for the E-step, by name, with start-up checks of what each guide can use.

The E-step fits q(a|s) = π_θ(a|s) to the Boltzmann posterior p(a|s, O) ∝ p(a|s) exp(Q(s, a)/ε). Which
divergence it minimises — and how its gradient is estimated — is one Pyro ``ELBO`` object:

=============  ==========================================  ====================================  =========
name           objective                                   gradient estimator                    particles
=============  ==========================================  ====================================  =========
trace          KL(q‖p) (the ELBO)                          reparameterised (``Trace_ELBO``)      1
meanfield      KL(q‖p), entropy/KL in closed form          reparameterised                       1
renyi          Rényi α-divergence bound, α = renyi_alpha   reparameterised, self-normalised IS   8 (≥ 2)
iwae           Rényi with α = 0: the IWAE bound            reparameterised, self-normalised IS   8 (≥ 2)
tail_adaptive  tail-adaptive f-divergence (Wang et al.)    reparameterised, rank weights         8 (≥ 2)
graph          KL(q‖p)                                     score function (``TraceGraph_ELBO``)  1
enum           KL(q‖p), exact sum over a discrete action   exact (``TraceEnum_ELBO``)            1
=============  ==========================================  ====================================  =========

``--elbo auto`` (the default) is ``enum`` for a discrete guide and ``trace`` for a continuous one.
``make_elbo(name_or_elbo, guide, num_particles)`` builds (or checks) the estimator and raises ``ValueError`` at
start-up, with what to do instead, for combinations that cannot work: a reparameterised estimator with a guide
that has no ``rsample``, Rényi/IWAE/tail-adaptive with one particle (Rényi's bound with one particle *is* the
ELBO), enumeration with a continuous guide.

Two estimators are subclasses of Pyro's, for the E-step's ``poutine.scale(ε/N)``: Pyro's ``RenyiELBO`` forms
its importance weights from *scaled* log-densities, so a scale c turns order α into 1 − c(1 − α) (c = ε/N ≈ 0.004
makes it the ELBO); :class:`ScaledRenyiELBO` forms the weights unscaled and scales only the objective.
Pyro's ``TraceTailAdaptive_ELBO`` pairs particles with the wrong ranks (pyro-ppl/pyro#3170: it uses the sorting
permutation, not its inverse, and ranks in ascending order, which weights the *smallest* importance weights
most), ranks by the joint weight of the whole batch and reports an infinite loss; :class:`ScaledTailAdaptiveELBO`
follows Wang et al. (2018, Alg. 1): per state, γ_i = F̄(w_i)^β with F̄ the empirical tail probability, and it
reports the ELBO of the same particles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist
import pyro.infer.trace_elbo as trace_elbo
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import (
    RenyiELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
    TraceTailAdaptive_ELBO,
    config_enumerate,
)
from pyro.infer.elbo import ELBO
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from torch.distributions.kl import register_kl

from virel_ppl.config import ConfigError, check_renyi_alpha, lookup
from virel_ppl.inference.actions import UniformBox
from virel_ppl.inference.guides import BoxBeta, PolicyGuide

#: Rényi order used when none is given (``Config.renyi_alpha``): mass-covering, between IWAE (0) and KL (1).
DEFAULT_RENYI_ALPHA = 0.5
#: Particles of the multi-sample estimators when ``num_particles`` is None.
DEFAULT_MULTI_PARTICLES = 8


# --- scale-aware Rényi / IWAE and per-state tail-adaptive estimators ---------------------------------------------


def _unscale_weights(*traces) -> float:
    """Give every sample site a ``log_prob`` whose *value* is unscaled but whose *gradient* is scaled.

    Returns the common scale of the sites (e.g. the E-step's ε/N); raises ``ValueError`` if they differ.
    """
    scales = set()
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            scale = float(site["scale"])
            scales.add(scale)
            if scale != 1.0:
                unscaled = scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])
                site["log_prob"] = site["log_prob"] + (unscaled - site["log_prob"]).detach()
    if len(scales) > 1:
        raise ValueError(
            f"ScaledRenyiELBO needs one scale for every site (the E-step's ε/N), got {sorted(scales)}; "
            "Rényi bounds do not decompose over differently scaled sites."
        )
    scale = scales.pop() if scales else 1.0
    if not scale > 0:
        raise ValueError(f"ScaledRenyiELBO needs a positive scale, got {scale}.")
    return scale


class ScaledRenyiELBO(RenyiELBO):
    """Pyro's ``RenyiELBO`` (one bound per state of the ``"states"`` plate), invariant to ``poutine.scale``.

    Under ``poutine.scale(c)`` it returns c · L_α and the gradient c · ∇L_α, where
    L_α = Σ_s 1/(1−α) log 1/K Σ_k w_sk^{1−α} with w_sk = p(a_sk, O|s)/q(a_sk|s) computed *without* the scale.
    α = 0 is the IWAE bound. Needs ``num_particles`` ≥ 2 (with one particle the bound is the ELBO).
    """

    def __init__(self, alpha: float = 0.0, num_particles: int = 2, max_plate_nesting: int = 1) -> None:
        super().__init__(
            alpha=alpha, num_particles=num_particles, max_plate_nesting=max_plate_nesting, vectorize_particles=True
        )
        self._scale = 1.0

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        self._scale = _unscale_weights(model_trace, guide_trace)
        return model_trace, guide_trace

    def loss(self, model, guide, *args, **kwargs) -> float:
        return super().loss(model, guide, *args, **kwargs) * self._scale

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        return super().loss_and_grads(model, guide, *args, **kwargs) * self._scale


class ScaledTailAdaptiveELBO(TraceTailAdaptive_ELBO):
    """Tail-adaptive f-divergence (Wang, Liu & Liu, 2018) with the particles ranked *per state*.

    For each state s, the K reparameterised particles a_sk have weights w_sk = p(a_sk, O|s)/q(a_sk|s); the
    gradient is −Σ_k γ_sk ∇log w_sk / Σ_k γ_sk with γ_sk = F̄(w_sk)^β, F̄(t) = #{j: w_sj ≥ t}/K the empirical
    tail probability, i.e. γ ∝ (rank from the largest weight)^β. β = ``tail_adaptive_beta`` = −1 (the paper's
    choice) weights the largest w most — mass-covering, like Rényi with α < 1 but with bounded weights.
    Ranks ignore ``poutine.scale``; the gradient
    and the reported loss carry it. The reported loss is the plain ELBO of the same particles (the tail-adaptive
    divergence has no cheap value), so it can be logged and checked for NaN like the others.
    """

    def __init__(self, num_particles: int = 8, tail_adaptive_beta: float = -1.0, max_plate_nesting: int = 1) -> None:
        super().__init__(
            num_particles=num_particles,
            vectorize_particles=True,
            max_plate_nesting=max_plate_nesting,
            tail_adaptive_beta=tail_adaptive_beta,
        )

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return Trace_ELBO.loss(self, model, guide, *args, **kwargs)

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
        log_pq = 0.0
        for sign, trace in ((1.0, model_trace), (-1.0, guide_trace)):
            for site in trace.nodes.values():
                if site["type"] == "sample":
                    log_pq = log_pq + sign * torch_sum(site["log_prob"], sum_dims)
        log_pq = torch.as_tensor(log_pq).reshape(self.num_particles, -1)  # (particles, states)
        # K·F̄(w) = #{j: w_j ≥ w} = rank counted from the largest weight (1 = largest)
        tail_count = (-log_pq.detach()).argsort(0).argsort(0).to(log_pq.dtype) + 1.0
        gamma = tail_count.pow(self.tail_adaptive_beta)
        per_state = (log_pq * gamma).sum(0) / gamma.sum(0)
        # Trace_ELBO divides both by num_particles: the loss is the particle-mean ELBO, the gradient ∇Σ_s per_state
        # the loss as trace_elbo's torch_item gives it: a float, or a device tensor in the fast E-step (no host sync)
        return trace_elbo.torch_item(-log_pq.detach().sum()), -self.num_particles * per_state.sum()


class EnumELBO(TraceEnum_ELBO):
    """``TraceEnum_ELBO`` that enumerates the guide's discrete action site in parallel (``config_enumerate``):
    the expectation over q(a|s) is an exact sum over the action set, so the loss and gradient are exact."""

    def __init__(self, max_plate_nesting: int = 1) -> None:
        super().__init__(max_plate_nesting=max_plate_nesting)

    def _get_traces(self, model, guide, args, kwargs):
        return super()._get_traces(model, config_enumerate(guide, default="parallel"), args, kwargs)


# --- closed-form KL terms used by TraceMeanField_ELBO -------------------------------------------------------------


@register_kl(dist.Independent, UniformBox)
def _kl_independent_uniform_box(q: dist.Independent, p: UniformBox) -> torch.Tensor:
    """KL(q‖Uniform(box)) = log|box| − H(q), with the prior's convention that its log-density is −log|box| for
    every value (the env clips): the same expectation Trace_ELBO estimates, in closed form (e.g. a Gaussian)."""
    return p.box.log_volume - q.entropy()


@register_kl(BoxBeta, UniformBox)
def _kl_box_beta_uniform_box(q: BoxBeta, p: UniformBox) -> torch.Tensor:
    """KL(Beta on the box ‖ Uniform(box)) = log|box| − H(q) = −Σ_i H(Beta(α_i, β_i)), exact."""
    return p.box.log_volume - q.entropy()


# --- the registry ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Divergence:
    """How to build one named estimator, and what it needs from the guide.

    ``build(num_particles, renyi_alpha)`` returns the ELBO, an instance of ``elbo_class`` (which tells an ``ELBO``
    object passed in code to :func:`check_elbo` by its estimator); ``default_particles`` is used when the run gives
    none; ``min_particles``/``max_particles`` bound what makes sense.
    """

    build: Callable[[int, float], ELBO]
    elbo_class: type[ELBO]
    description: str
    default_particles: int = 1
    min_particles: int = 1
    max_particles: int | None = None
    needs_rsample: bool = True
    needs_discrete: bool = False


def _vectorised(cls: type[ELBO]) -> Callable[[int, float], ELBO]:
    return lambda n, alpha: cls(num_particles=n, vectorize_particles=True, max_plate_nesting=1)


DIVERGENCES: dict[str, Divergence] = {
    "trace": Divergence(_vectorised(Trace_ELBO), Trace_ELBO, "KL(q‖p), reparameterised gradients (Trace_ELBO)"),
    "meanfield": Divergence(
        _vectorised(TraceMeanField_ELBO),
        TraceMeanField_ELBO,
        "KL(q‖p) with the prior KL in closed form where it exists (Gaussian, Beta) (TraceMeanField_ELBO)",
    ),
    "renyi": Divergence(
        lambda n, alpha: ScaledRenyiELBO(alpha=check_renyi_alpha(alpha), num_particles=n),
        ScaledRenyiELBO,
        "Rényi α-divergence bound, α = --renyi-alpha (RenyiELBO)",
        default_particles=DEFAULT_MULTI_PARTICLES,
        min_particles=2,
    ),
    "iwae": Divergence(
        lambda n, alpha: ScaledRenyiELBO(alpha=0.0, num_particles=n),
        ScaledRenyiELBO,
        "importance-weighted bound: Rényi α = 0 with num_particles samples (RenyiELBO)",
        default_particles=DEFAULT_MULTI_PARTICLES,
        min_particles=2,
    ),
    "tail_adaptive": Divergence(
        lambda n, alpha: ScaledTailAdaptiveELBO(num_particles=n),
        ScaledTailAdaptiveELBO,
        "tail-adaptive f-divergence, per-state rank weights (TraceTailAdaptive_ELBO)",
        default_particles=DEFAULT_MULTI_PARTICLES,
        min_particles=2,
    ),
    "graph": Divergence(
        _vectorised(TraceGraph_ELBO),
        TraceGraph_ELBO,
        "KL(q‖p), score-function gradients for guides without rsample (TraceGraph_ELBO)",
        needs_rsample=False,
    ),
    "enum": Divergence(
        lambda n, alpha: EnumELBO(),
        EnumELBO,
        "KL(q‖p), exact sum over a discrete action set (TraceEnum_ELBO)",
        max_particles=1,
        needs_rsample=False,
        needs_discrete=True,
    ),
}

#: Compatibility view of :data:`DIVERGENCES`: name → ``factory(num_particles) -> ELBO``.
ELBOS: dict[str, Callable[[int], ELBO]] = {
    name: (lambda n, _d=d: _d.build(n, DEFAULT_RENYI_ALPHA)) for name, d in DIVERGENCES.items()
}


def _guide_name(guide: PolicyGuide) -> str:
    return type(guide).__name__


def _check_guide(what: str, spec: Divergence, guide: PolicyGuide) -> None:
    discrete = getattr(guide, "discrete", False)
    if spec.needs_discrete and not discrete:
        raise ConfigError(
            f"--elbo {what} enumerates a discrete action set, but {_guide_name(guide)} is continuous; "
            "use --elbo trace (or renyi, iwae, tail_adaptive, graph) with a continuous guide."
        )
    if spec.needs_rsample and not getattr(guide, "has_rsample", True):
        alternatives = (
            "--elbo enum (exact enumeration; what the default --elbo auto picks) or --elbo graph"
            if discrete
            else "--elbo graph"
        )
        raise ConfigError(
            f"--elbo {what} needs reparameterised samples (rsample), but {_guide_name(guide)} cannot "
            f"reparameterise its actions. Use {alternatives} (TraceGraph_ELBO: score-function gradients)."
        )


#: Why a multi-sample estimator needs two particles at least, by name.
_ONE_PARTICLE = {
    "renyi": "with one particle the Rényi bound is exactly the ELBO (use --elbo trace)",
    "iwae": "with one particle the importance-weighted bound is exactly the ELBO (use --elbo trace)",
    "tail_adaptive": "its weights rank particles against each other; one particle is Trace_ELBO",
}


def _check_particles(what: str, name: str, spec: Divergence, n: int) -> None:
    low, high = spec.min_particles, spec.max_particles
    if n < low:
        why = _ONE_PARTICLE.get(name, "")
        raise ConfigError(f"--elbo {what} needs --num-particles >= {low} (e.g. 8), got {n}: {why}.")
    if high is not None and n > high:
        raise ConfigError(
            f"--elbo {what} is exact (a sum over every action), so more particles change nothing; "
            f"use --num-particles {high} (or leave it unset), got {n}."
        )


def _check_spec(what: str, name: str, guide: PolicyGuide, n: int) -> Divergence:
    """Check estimator ``name`` (shown as ``what``) with ``n`` particles against ``guide``, as DIVERGENCES declares."""
    spec = DIVERGENCES[name]
    _check_guide(what, spec, guide)
    _check_particles(what, name, spec, n)
    return spec


#: Pyro estimators the E-step cannot use as they are, each with the one of ours to use instead.
_PYRO_ONLY: tuple[tuple[type[ELBO], type[ELBO], str], ...] = (
    (
        TraceEnum_ELBO,
        EnumELBO,
        "A plain TraceEnum_ELBO does not know which site to enumerate; "
        "use virel_ppl.inference.divergences.EnumELBO(), which enumerates the guide's action site.",
    ),
    (
        RenyiELBO,
        ScaledRenyiELBO,
        "pyro.infer.RenyiELBO computes its weights from scaled log-densities, so the E-step's "
        "poutine.scale(ε/N) would change α; use virel_ppl.inference.divergences.ScaledRenyiELBO(alpha, num_particles).",
    ),
    (
        TraceTailAdaptive_ELBO,
        ScaledTailAdaptiveELBO,
        "pyro.infer.TraceTailAdaptive_ELBO reports an infinite loss (which the E-step rejects) and mis-ranks "
        "its particles (pyro-ppl/pyro#3170); use "
        "virel_ppl.inference.divergences.ScaledTailAdaptiveELBO(num_particles).",
    ),
)


def _name_of(elbo: ELBO) -> str | None:
    """The first DIVERGENCES name whose ``elbo_class`` is the closest base of ``elbo``'s class (None: none is)."""
    for cls in type(elbo).__mro__:
        for name, spec in DIVERGENCES.items():
            if spec.elbo_class is cls:
                return name
    return None


def check_elbo(elbo: ELBO, guide: PolicyGuide) -> ELBO:
    """Check an ``ELBO`` object passed in code against a guide, by the DIVERGENCES entry of its class; returns it,
    or raises ``ValueError``. An ELBO of no listed class is returned unchecked."""
    for pyro_cls, ours, why in _PYRO_ONLY:
        if isinstance(elbo, pyro_cls) and not isinstance(elbo, ours):
            raise ValueError(why)
    if isinstance(elbo, (ScaledRenyiELBO, ScaledTailAdaptiveELBO)) and not elbo.vectorize_particles:
        raise ValueError(f"{type(elbo).__name__} must vectorise its particles (vectorize_particles=True).")
    name = _name_of(elbo)
    if name is not None:
        what = name if type(elbo) is DIVERGENCES[name].elbo_class else type(elbo).__name__
        _check_spec(what, name, guide, elbo.num_particles)
    return elbo


#: The ``--elbo`` default: :data:`AUTO_ELBOS` picks the estimator from the guide.
AUTO = "auto"
#: What ``auto`` resolves to: exact enumeration for a discrete guide, the reparameterised ELBO otherwise.
AUTO_ELBOS = {"discrete": "enum", "continuous": "trace"}


def resolve_elbo_name(name: str, guide: PolicyGuide) -> str:
    """``name``, or for ``auto`` the estimator that fits ``guide``: enum when it is discrete, else trace."""
    if name != AUTO:
        return name
    return AUTO_ELBOS["discrete" if getattr(guide, "discrete", False) else "continuous"]


def make_elbo(
    elbo: str | ELBO, guide: PolicyGuide, num_particles: int | None = None, renyi_alpha: float = DEFAULT_RENYI_ALPHA
) -> ELBO:
    """The E-step's estimator: by name (``DIVERGENCES``) or an ``ELBO`` object, checked against ``guide``.

    Args:
        elbo: a name (trace, meanfield, renyi, iwae, tail_adaptive, graph, enum), ``auto`` (enum for a discrete
            guide, trace otherwise; see :func:`resolve_elbo_name`) or an ELBO object.
        guide: the policy it will train; its ``has_rsample`` and ``discrete`` decide what can work.
        num_particles: particles per state; None takes the estimator's default (1, or 8 for the
            multi-sample ones). Ignored for an ELBO object (it has its own).
        renyi_alpha: the order α ≠ 1 of ``renyi``.

    Raises:
        ValueError: at start-up, for an unknown name or a combination that cannot work, saying what to use.
    """
    if isinstance(elbo, ELBO):
        return check_elbo(elbo, guide)
    name = resolve_elbo_name(elbo, guide)
    what = name if name == elbo else f"{elbo} (here {name})"
    spec = lookup(DIVERGENCES, name, "elbo", choices=[*DIVERGENCES, AUTO])
    n = spec.default_particles if num_particles is None else num_particles
    _check_spec(what, name, guide, n)
    return spec.build(n, renyi_alpha)  # renyi's build checks α ≠ 1 (config.check_renyi_alpha)

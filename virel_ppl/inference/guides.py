"""Policies π_θ(a|s) as Pyro guides: the variational posterior q(a|s) of VIREL.

Each guide is one ``nn.Module`` with the same small interface:

- ``distribution(states)``: the action distribution for a batch of states (event shape ``(action_dim,)``);
- ``mode(states)``: the deterministic action used for evaluation;
- ``guide(states, **model_kwargs)``: the Pyro guide itself — registers the parameters with
  ``pyro.module`` and samples site ``"a"`` inside the ``"states"`` plate, mirroring the model.

Two class attributes tell the estimators in ``virel_ppl.inference.divergences`` what a guide can do: ``has_rsample``
(reparameterised samples, needed by every estimator but ``graph`` and ``enum``) and ``discrete`` (a finite
action set that ``TraceEnum_ELBO`` can enumerate). The families:

==============  ===============================================  =========  ==========================
name            π_θ(a|s)                                         rsample    analytic KL to the prior
==============  ===============================================  =========  ==========================
tanh_normal     tanh-squashed diagonal Gaussian (SAC)            yes        no (Monte Carlo)
gaussian        diagonal Gaussian, env clips                     yes        yes (``meanfield``)
beta            Beta on each coordinate of the box               yes        yes (``meanfield``)
mixture         K tanh-squashed diagonal Gaussians (multimodal)  yes        no
flow            conditional spline flow, tanh, box               yes        no
categorical     one-hot Categorical on a ``Discrete`` space      no         (enumerated exactly)
==============  ===============================================  =========  ==========================

A new family is one subclass of :class:`PolicyGuide`; ``examples/custom_guide.py`` plugs one into the trainer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.distributions import constraints
from pyro.distributions.conditional import ConditionalTransform
from torch import nn
from torch.nn import functional as F

from virel_ppl.config import SpaceError
from virel_ppl.inference.actions import ActionBox, DiscreteActions, SafeTanhTransform, TanhNormal
from virel_ppl.inference.models import check_states
from virel_ppl.inference.nets import mlp

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
# Beta samples are kept this far inside the unit interval, so log-densities stay finite at the box edges.
_BETA_EDGE = 1e-6

Actions = ActionBox | DiscreteActions


class PolicyGuide(nn.Module):
    """Base class of all guides. Subclasses implement :meth:`distribution` and :meth:`mode`."""

    #: name under which ``pyro.module`` registers the parameters
    pyro_name: str = "policy"
    #: whether ``distribution(...)`` can be reparameterised (``rsample``)
    has_rsample: bool = True
    #: whether the guide is over a finite action set (one-hot actions, enumerable by ``TraceEnum_ELBO``)
    discrete: bool = False
    box: Actions

    def distribution(self, states: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def mode(self, states: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def guide(self, states: torch.Tensor, **model_kwargs) -> torch.Tensor:
        """q(a|s) = π_θ(a|s) for a batch of states: the Pyro guide paired with the models in ``models.py``."""
        check_states(states)
        pyro.module(self.pyro_name, self)
        with pyro.plate("states", states.shape[0]):
            return pyro.sample("a", self.distribution(states))

    @torch.no_grad()
    def act(self, states: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """An action per state, always a valid action: a sample of π_θ (clipped to the box), or its mode."""
        action = self.mode(states) if deterministic else self.distribution(states).sample()
        box = getattr(self, "box", None)
        return box.clip(action) if box is not None else action

    def _require_box(self, box: Actions) -> ActionBox:
        """``box`` when it is a continuous :class:`ActionBox`; ``SpaceError`` (a ``TypeError``) otherwise."""
        if not isinstance(box, ActionBox):
            raise SpaceError(
                f"{type(self).__name__} needs a continuous Box action space, got {box!r}. "
                "For a Discrete action space use --guide categorical (CategoricalGuide)."
            )
        return box


def check_guide_fits(policy: PolicyGuide, actions: Actions) -> None:
    """Raise ``SpaceError`` (a ``TypeError``) when a guide and an action space do not go together (continuous
    vs discrete)."""
    discrete_space = isinstance(actions, DiscreteActions)
    if getattr(policy, "discrete", False) and not discrete_space:
        raise SpaceError(
            f"{type(policy).__name__} is a guide over a Discrete action space, but the task has a continuous "
            f"Box action space {actions!r}; use a continuous guide ({', '.join(CONTINUOUS_GUIDES)})."
        )
    if discrete_space and not getattr(policy, "discrete", False):
        raise SpaceError(
            f"{type(policy).__name__} needs a continuous Box action space, but the task's actions are "
            f"{actions!r}; use --guide categorical (CategoricalGuide)."
        )


# --- tanh-normal and Gaussian ---------------------------------------------------------------------------------


class TanhNormalGuide(PolicyGuide):
    """π_θ(a|s) = tanh-squashed diagonal Gaussian on the action box (SAC's policy), exact log-density."""

    def __init__(self, obs_dim: int, box: ActionBox, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.box = self._require_box(box)
        self.net = mlp(obs_dim, hidden, 2 * box.dim)

    def _loc_scale(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_std = self.net(states).chunk(2, dim=-1)
        return loc, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()

    def distribution(self, states: torch.Tensor) -> TanhNormal:
        loc, scale = self._loc_scale(states)
        return TanhNormal(loc, scale, self.box)

    def mode(self, states: torch.Tensor) -> torch.Tensor:
        loc, _ = self._loc_scale(states)
        return self.box.from_unit(torch.tanh(loc))


class DiagonalGaussianGuide(PolicyGuide):
    """π_θ(a|s) = Normal(μ_θ(s), σ_θ(s)) with the mean kept in the box; ``act`` and the env clip samples.

    Its entropy and KL are analytic, so ``TraceMeanField_ELBO`` uses them in closed form.
    """

    def __init__(self, obs_dim: int, box: ActionBox, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.box = self._require_box(box)
        self.net = mlp(obs_dim, hidden, 2 * box.dim)

    def _loc_scale(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_loc, log_std = self.net(states).chunk(2, dim=-1)
        scale = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp() * self.box.half_range
        return self.box.from_unit(torch.tanh(raw_loc)), scale

    def distribution(self, states: torch.Tensor) -> dist.Independent:
        loc, scale = self._loc_scale(states)
        return dist.Normal(loc, scale).to_event(1)

    def mode(self, states: torch.Tensor) -> torch.Tensor:
        return self._loc_scale(states)[0]


# --- Beta on the box --------------------------------------------------------------------------------------------


class BoxBeta(dist.TorchDistribution):
    """Independent ``Beta(α_i, β_i)`` on each unit interval, mapped affinely onto the box: ``a = low + (high − low) u``.

    Reparameterised (torch's implicit Beta gradients). Samples and the values given to ``log_prob`` are kept
    ``1e-6`` inside the unit interval, so ``log_prob`` is finite for every action of the box, edges included.
    """

    arg_constraints = {"concentration1": constraints.positive, "concentration0": constraints.positive}
    has_rsample = True

    def __init__(self, concentration1: torch.Tensor, concentration0: torch.Tensor, box: ActionBox) -> None:
        self.concentration1, self.concentration0, self.box = concentration1, concentration0, box
        self.unit = dist.Beta(concentration1, concentration0)
        super().__init__(concentration1.shape[:-1], concentration1.shape[-1:], validate_args=False)

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self):
        return constraints.independent(constraints.interval(self.box.low, self.box.high), 1)

    def expand(self, batch_shape, _instance=None) -> BoxBeta:
        shape = torch.Size(batch_shape) + self.event_shape
        return BoxBeta(self.concentration1.expand(shape), self.concentration0.expand(shape), self.box)

    def _from_unit_interval(self, u: torch.Tensor) -> torch.Tensor:
        return self.box.from_unit(2.0 * u - 1.0)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self._from_unit_interval(self.unit.rsample(sample_shape).clamp(_BETA_EDGE, 1 - _BETA_EDGE))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        u = ((self.box.to_unit(value) + 1.0) / 2.0).clamp(_BETA_EDGE, 1 - _BETA_EDGE)
        return self.unit.log_prob(u).sum(-1) - self.box.log_volume

    def entropy(self) -> torch.Tensor:
        return self.unit.entropy().sum(-1) + self.box.log_volume

    @property
    def mean(self) -> torch.Tensor:
        return self._from_unit_interval(self.unit.mean)

    @property
    def mode(self) -> torch.Tensor:
        """``(α − 1)/(α + β − 2)`` on each unit interval (α, β > 1 here), clipped to ``[0, 1]``, then to the box."""
        c1, c0 = self.concentration1, self.concentration0
        return self._from_unit_interval(((c1 - 1) / (c1 + c0 - 2).clamp_min(1e-6)).clamp(0.0, 1.0))


class BetaGuide(PolicyGuide):
    """π_θ(a|s) = Beta on each coordinate of the box (Chou et al., 2017): bounded support, no squashing.

    The concentrations are ``1 + softplus(·)``, so α, β > 1: the density is unimodal and vanishes at the box edges,
    and the mode ``(α − 1)/(α + β − 2)`` exists. Its entropy is analytic (``meanfield`` uses it).
    """

    def __init__(self, obs_dim: int, box: ActionBox, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.box = self._require_box(box)
        self.net = mlp(obs_dim, hidden, 2 * box.dim)

    def _concentrations(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw1, raw0 = self.net(states).chunk(2, dim=-1)
        return 1.0 + F.softplus(raw1), 1.0 + F.softplus(raw0)

    def distribution(self, states: torch.Tensor) -> BoxBeta:
        return BoxBeta(*self._concentrations(states), self.box)

    def mode(self, states: torch.Tensor) -> torch.Tensor:
        return self.distribution(states).mode


# --- mixture of K tanh-normals ----------------------------------------------------------------------------------


class DiagNormalMixture(dist.TorchDistribution):
    """Mixture of K diagonal Normals on R^D, batched, with *pathwise* (implicitly reparameterised) samples.

    ``rsample`` draws the component k and the point x without gradient, then attaches the exact pathwise
    gradient of the mixture through its distributional transform (Graves, 2016; Figurnov et al., 2018): with
    F_d the CDF of x_d given x_<d — itself a mixture whose weights are the component responsibilities of
    x_<d — the sample satisfies F_d(x_d; θ, x_<d) = u_d for a fixed uniform u_d, so
    dx_d = −(∂F_d/∂θ dθ + Σ_{j<d} ∂F_d/∂x_j dx_j) / q_d(x_d | x_<d). The surrogate
    ``x_d − (F_d − stop_grad(F_d)) / stop_grad(q_d)`` has value x_d and exactly this gradient.
    This works for any D, D = 1 included (Pyro's ``MixtureOfDiagNormals`` needs D ≥ 2).

    Args:
        logits: mixture logits, shape ``(..., K)``.
        locs: component means, ``(..., K, D)``.
        scales: component standard deviations, ``(..., K, D)``.
    """

    arg_constraints = {"logits": constraints.real, "locs": constraints.real, "scales": constraints.positive}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, logits: torch.Tensor, locs: torch.Tensor, scales: torch.Tensor) -> None:
        if locs.shape != scales.shape or locs.shape[:-1] != logits.shape:
            raise ValueError(
                f"DiagNormalMixture: need logits (..., K), locs and scales (..., K, D); got "
                f"{tuple(logits.shape)}, {tuple(locs.shape)}, {tuple(scales.shape)}."
            )
        self.logits, self.locs, self.scales = logits, locs, scales
        super().__init__(logits.shape[:-1], locs.shape[-1:], validate_args=False)

    def expand(self, batch_shape, _instance=None) -> DiagNormalMixture:
        b = torch.Size(batch_shape)
        k_d = self.locs.shape[-2:]
        return DiagNormalMixture(
            self.logits.expand(b + k_d[:1]), self.locs.expand(b + k_d), self.scales.expand(b + k_d)
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        comp = dist.Normal(self.locs, self.scales).log_prob(value.unsqueeze(-2)).sum(-1)  # (..., K)
        return torch.logsumexp(self.logits.log_softmax(-1) + comp, dim=-1)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)  # (..., D)
        locs = self.locs.expand(shape[:-1] + self.locs.shape[-2:])
        scales = self.scales.expand(shape[:-1] + self.scales.shape[-2:])
        log_w = self.logits.log_softmax(-1).expand(shape[:-1] + self.logits.shape[-1:])
        with torch.no_grad():
            k = torch.distributions.Categorical(logits=log_w).sample()
            idx = k[..., None, None].expand(shape[:-1] + (1,) + shape[-1:])
            x0 = locs.gather(-2, idx).squeeze(-2) + scales.gather(-2, idx).squeeze(-2) * torch.randn(
                shape, dtype=locs.dtype, device=locs.device
            )
        if not torch.is_grad_enabled() or not (locs.requires_grad or scales.requires_grad or log_w.requires_grad):
            return x0
        coords = []
        for d in range(shape[-1]):
            mu, sd = locs[..., d], scales[..., d]  # (..., K)
            w = log_w.softmax(-1)  # responsibilities of x_<d (the mixture weights for d = 0)
            z = (x0[..., d : d + 1] - mu) / sd
            cdf = (w * torch.special.ndtr(z)).sum(-1)
            dens = (w * torch.exp(-0.5 * z.pow(2)) / (sd * math.sqrt(2 * math.pi))).sum(-1)
            x_d = x0[..., d] - (cdf - cdf.detach()) / dens.detach().clamp_min(1e-30)
            coords.append(x_d)
            log_w = log_w + dist.Normal(mu, sd).log_prob(x_d.unsqueeze(-1))  # responsibilities given x_≤d
        return torch.stack(coords, dim=-1)


class TanhNormalMixture(dist.TransformedDistribution):
    """``a = from_unit(tanh(x))`` with ``x`` a :class:`DiagNormalMixture`: K squashed Gaussians on the box.

    ``log_prob`` is the exact marginal log-density (log-sum-exp over components, tanh and box Jacobians).
    """

    arg_constraints: dict = {}

    def __init__(self, logits: torch.Tensor, locs: torch.Tensor, scales: torch.Tensor, box: ActionBox) -> None:
        self.box = box
        base = DiagNormalMixture(logits, locs, scales)
        super().__init__(base, [SafeTanhTransform(cache_size=1), box.unit_transform()], validate_args=False)

    def expand(self, batch_shape, _instance=None) -> TanhNormalMixture:
        base = self.base_dist.expand(batch_shape)
        return TanhNormalMixture(base.logits, base.locs, base.scales, self.box)

    @property
    def mode(self) -> torch.Tensor:
        """The squashed mean of the heaviest component (the mixture's exact mode has no closed form)."""
        base = self.base_dist
        k = base.logits.argmax(-1)[..., None, None].expand(base.locs.shape[:-2] + (1,) + base.locs.shape[-1:])
        return self.box.from_unit(torch.tanh(base.locs.gather(-2, k).squeeze(-2)))


class MixtureGuide(PolicyGuide):
    """π_θ(a|s) = Σ_k w_k(s) TanhNormal(μ_k(s), σ_k(s)): a multimodal policy with K components.

    Choice of estimator: ``MixtureSameFamily`` has no ``rsample``, and scoring the discrete component with
    ``TraceGraph_ELBO`` adds variance, while a relaxed (Gumbel-softmax) component biases the gradient. We keep
    the mixture *fully* reparameterised instead: :class:`DiagNormalMixture` samples the component without
    gradient and differentiates the sample implicitly through the mixture's CDF (exact, unbiased pathwise
    gradients for the weights, means and scales). So the mixture works with every estimator — ``trace``,
    ``renyi``, ``iwae``, ``tail_adaptive``, ``graph`` — and ``log_prob`` is the exact marginal density.

    Args:
        components: K. Component means start spread over the box so that they can take different modes.
    """

    def __init__(self, obs_dim: int, box: ActionBox, hidden: Sequence[int] = (256, 256), components: int = 4) -> None:
        super().__init__()
        self.box = self._require_box(box)
        if components < 1:
            raise ValueError(f"MixtureGuide needs components >= 1, got {components}.")
        self.k, self.dim = components, box.dim
        self.net = mlp(obs_dim, hidden, components * (1 + 2 * box.dim))
        with torch.no_grad():  # spread the initial component means over the box (pre-tanh ±1 ↦ ±0.76)
            last = self.net[-1]
            last.weight.mul_(0.1)
            spread = torch.linspace(-1.0, 1.0, components) if components > 1 else torch.zeros(1)
            loc_bias = spread[:, None].expand(components, box.dim)
            last.bias[components : components * (1 + box.dim)] = loc_bias.reshape(-1)
            last.bias[components * (1 + box.dim) :] = math.log(0.5)

    def _params(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(states)
        k, d = self.k, self.dim
        logits = out[..., :k]
        locs = out[..., k : k * (1 + d)].unflatten(-1, (k, d))
        log_std = out[..., k * (1 + d) :].unflatten(-1, (k, d))
        return logits, locs, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()

    def distribution(self, states: torch.Tensor) -> TanhNormalMixture:
        return TanhNormalMixture(*self._params(states), self.box)

    def mode(self, states: torch.Tensor) -> torch.Tensor:
        return self.distribution(states).mode


# --- conditional normalizing flow ------------------------------------------------------------------------------


class ConditionalFlow(dist.TransformedDistribution):
    """``a = from_unit(tanh(f_s(z)))``, ``z ~ Normal(0, I)``, with ``f_s`` a stack of Pyro conditional transforms
    conditioned on the state ``s``. Expanding the batch (e.g. Pyro's vectorised particles) expands the context,
    so every conditioned transform sees matching shapes.
    """

    arg_constraints: dict = {}

    def __init__(self, layers: Sequence, context: torch.Tensor, box: ActionBox) -> None:
        self.layers, self.context, self.box = layers, context, box
        zeros = context.new_zeros(context.shape[:-1] + (box.dim,))
        base = dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)
        conditioned = [t.condition(context) if isinstance(t, ConditionalTransform) else t for t in layers]
        transforms = conditioned + [SafeTanhTransform(cache_size=1), box.unit_transform()]
        super().__init__(base, transforms, validate_args=False)

    def expand(self, batch_shape, _instance=None) -> ConditionalFlow:
        context = self.context.expand(torch.Size(batch_shape) + self.context.shape[-1:])
        return ConditionalFlow(self.layers, context, self.box)


class FlowGuide(PolicyGuide):
    """π_θ(a|s): a conditional normalizing flow in pre-squash space, then tanh and the box map.

    Layers from ``pyro.distributions.transforms``, each conditioned on the state: for 1-D actions,
    ``conditional_spline`` (monotone rational-quadratic splines, Durkan et al. 2019) whose knots are functions
    of s; for D ≥ 2, ``conditional_spline_autoregressive`` layers with a ``Permute`` between them, so that the
    coordinates are coupled. Splines act on ``[-bound, bound]`` and are the identity outside; ``bound = 5``
    leaves only 6e-7 of the base mass to the fixed tails (with 3, the 0.3 % beyond would pile up as spikes at
    the box edges after the tanh). ``pyro.module`` on the guide registers every layer's network.

    Args:
        layers: number of spline layers.
        count_bins: spline segments per layer.
        bound: half-width of the spline's active region in pre-tanh space.
    """

    def __init__(
        self,
        obs_dim: int,
        box: ActionBox,
        hidden: Sequence[int] = (256, 256),
        layers: int = 2,
        count_bins: int = 8,
        bound: float = 5.0,
    ) -> None:
        super().__init__()
        self.box = self._require_box(box)
        d, hidden = box.dim, list(hidden)
        make = T.conditional_spline if d == 1 else T.conditional_spline_autoregressive
        self.flow = nn.ModuleList(
            [make(d, obs_dim, hidden_dims=hidden, count_bins=count_bins, bound=bound) for _ in range(layers)]
        )
        self.register_buffer("reverse", torch.arange(d - 1, -1, -1), persistent=False)

    def layers(self) -> list:
        """The flow's transforms, with a ``Permute`` (reversal) between autoregressive layers when D ≥ 2."""
        out: list = []
        for i, layer in enumerate(self.flow):
            if i > 0 and self.box.dim > 1:
                out.append(T.Permute(self.reverse))
            out.append(layer)
        return out

    def distribution(self, states: torch.Tensor) -> ConditionalFlow:
        return ConditionalFlow(self.layers(), states, self.box)

    def mode(self, states: torch.Tensor) -> torch.Tensor:
        """The image of the base mode z = 0: the flow's median action (its exact mode has no closed form)."""
        d = self.distribution(states)
        x = d.base_dist.mean
        for t in d.transforms:
            x = t(x)
        return x


# --- Categorical on a Discrete action space ---------------------------------------------------------------------


class CategoricalGuide(PolicyGuide):
    """π_θ(a|s) = Categorical(softmax(logits_θ(s))) over a ``Discrete(n)`` task, as one-hot actions.

    Not reparameterisable: train it with ``enum`` (``TraceEnum_ELBO`` sums over the n actions exactly) or
    ``graph`` (``TraceGraph_ELBO``, score-function gradients Rao-Blackwellised per state). With the uniform
    prior, the optimum is exactly π(a|s) = softmax(Q(s, ·)/ε).
    """

    has_rsample = False
    discrete = True

    def __init__(self, obs_dim: int, box: DiscreteActions, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        if not isinstance(box, DiscreteActions):
            raise SpaceError(
                f"CategoricalGuide needs a Discrete action space, got {box!r}; for a continuous Box use "
                f"--guide {' or '.join(CONTINUOUS_GUIDES)}."
            )
        self.box = box
        self.net = mlp(obs_dim, hidden, box.n)

    def distribution(self, states: torch.Tensor) -> dist.OneHotCategorical:
        return dist.OneHotCategorical(logits=self.net(states))

    def mode(self, states: torch.Tensor) -> torch.Tensor:
        return self.box.one_hot(self.net(states).argmax(-1))


GUIDES: dict[str, type[PolicyGuide]] = {
    "tanh_normal": TanhNormalGuide,
    "gaussian": DiagonalGaussianGuide,
    "beta": BetaGuide,
    "mixture": MixtureGuide,
    "flow": FlowGuide,
    "categorical": CategoricalGuide,
}
CONTINUOUS_GUIDES = tuple(name for name, cls in GUIDES.items() if not cls.discrete)

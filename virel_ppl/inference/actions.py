"""Action boxes and the distributions that live on them.

Every continuous action in virel_ppl lives on a Gymnasium ``Box`` ``[low, high]``. Policies work on the
unit box ``[-1, 1]``; :class:`ActionBox` is the one place that maps between the two.
"""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import torch
from gymnasium import spaces
from pyro.distributions import constraints
from torch.distributions.transforms import AffineTransform, TanhTransform
from torch.nn import functional as F

from virel_ppl.config import SpaceError

# Keep tanh pre-images finite: atanh(1 - 1e-6) ≈ 7.25 in float32.
_UNIT_EDGE = 1e-6
_LOG2 = math.log(2.0)
_HALF_LOG_2PI = math.log(math.sqrt(2 * math.pi))  # as torch's Normal.log_prob


class ActionBox:
    """A bounded action box ``[low, high]`` and its affine map to and from the unit box ``[-1, 1]``.

    Args:
        low: lower bounds, shape ``(action_dim,)``.
        high: upper bounds, same shape; every entry must be finite and ``> low``.
        device: where the bound tensors live.
    """

    def __init__(
        self,
        low: np.ndarray | torch.Tensor | list[float],
        high: np.ndarray | torch.Tensor | list[float],
        device: torch.device | str = "cpu",
    ) -> None:
        low_t = torch.as_tensor(np.asarray(low, dtype=np.float32), device=device).reshape(-1)
        high_t = torch.as_tensor(np.asarray(high, dtype=np.float32), device=device).reshape(-1)
        if low_t.shape != high_t.shape:
            raise ValueError(f"ActionBox: low has shape {tuple(low_t.shape)} but high {tuple(high_t.shape)}.")
        if not (torch.isfinite(low_t).all() and torch.isfinite(high_t).all()):
            raise SpaceError(
                f"ActionBox: the action space must be bounded, got low={low_t.tolist()}, high={high_t.tolist()}. "
                "VIREL's prior is uniform on the box, so declare the range of actions that matters with "
                "virel_ppl.runtime.envs.BoundedActions(env, low, high) (ClipAction keeps the space infinite and "
                "RescaleAction refuses it); on the command line: gym.register('MyTask-bounded-v0', "
                "entry_point=lambda **kw: BoundedActions(gym.make('MyTask-v0', **kw), -1.0, 1.0)) in a module "
                "of yours, then --env yourmodule:MyTask-bounded-v0."
            )
        if not (high_t > low_t).all():
            raise ValueError(
                f"ActionBox: need high > low everywhere, got low={low_t.tolist()}, high={high_t.tolist()}."
            )
        self.low, self.high = low_t, high_t
        self.center = (high_t + low_t) / 2
        self.half_range = (high_t - low_t) / 2

    def __repr__(self) -> str:
        return f"ActionBox(dim={self.dim}, low={self.low.tolist()}, high={self.high.tolist()})"

    @classmethod
    def from_space(cls, space: spaces.Space, device: torch.device | str = "cpu") -> ActionBox:
        """Build the box of a Gymnasium space; raises ``SpaceError`` (a ``TypeError``) unless it is a 1-D ``Box``."""
        if not isinstance(space, spaces.Box):
            raise SpaceError(
                f"ActionBox needs a continuous Box action space, got {space!r}. For Discrete actions use "
                "DiscreteActions (virel_ppl.runtime.envs.make_env does this) and the CategoricalGuide "
                "(--guide categorical)."
            )
        if len(space.shape) != 1:
            raise SpaceError(f"Expected a flat Box action space (action_dim,), got shape {space.shape}.")
        return cls(space.low, space.high, device=device)

    @property
    def dim(self) -> int:
        return int(self.low.shape[0])

    @property
    def log_volume(self) -> torch.Tensor:
        """``log |box|``: minus the log-density of the uniform prior."""
        return torch.log(self.high - self.low).sum()

    def to(self, device: torch.device | str) -> ActionBox:
        return ActionBox(self.low.cpu(), self.high.cpu(), device=device)

    def to_unit(self, action: torch.Tensor) -> torch.Tensor:
        """Map actions on ``[low, high]`` to ``[-1, 1]``."""
        return (action - self.center) / self.half_range

    def from_unit(self, unit: torch.Tensor) -> torch.Tensor:
        """Map ``[-1, 1]`` to ``[low, high]``."""
        return self.center + self.half_range * unit

    def unit_transform(self) -> AffineTransform:
        """:meth:`from_unit` as a torch ``Transform`` on events of shape ``(action_dim,)``, for flows and squashes."""
        return AffineTransform(self.center, self.half_range, event_dim=1, cache_size=1)

    def clip(self, action: torch.Tensor) -> torch.Tensor:
        """Clip to the box, as the environment does with out-of-range actions."""
        return torch.maximum(torch.minimum(action, self.high), self.low)

    def uniform(self) -> UniformBox:
        """VIREL's prior p(a|s): uniform on the box."""
        return UniformBox(self)


class UniformBox(dist.TorchDistribution):
    """Uniform prior on an :class:`ActionBox` with event shape ``(action_dim,)``.

    Its log-density is the constant ``-log|box|`` for every value: samples of an unbounded guide
    (e.g. a plain Gaussian) that fall outside the box are clipped by the environment, so their
    mass belongs to the box and the prior term of the ELBO is still the same constant.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, box: ActionBox, batch_shape: torch.Size = torch.Size()) -> None:
        self.box = box
        super().__init__(batch_shape, torch.Size([box.dim]), validate_args=False)

    def expand(self, batch_shape, _instance=None) -> UniformBox:
        return UniformBox(self.box, torch.Size(batch_shape))

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.box.low.dtype, device=self.box.low.device)
        return self.box.low + (self.box.high - self.box.low) * u

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return (-self.box.log_volume).expand(value.shape[:-1])

    def entropy(self) -> torch.Tensor:
        return self.box.log_volume.expand(self.batch_shape)


class SafeTanhTransform(TanhTransform):
    """``tanh`` whose inverse clamps to the open interval, so ``log_prob`` stays finite at the box edges.

    The log-Jacobian is torch's stable ``2 (log 2 - x - softplus(-2x))``.
    """

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return torch.atanh(y.clamp(-1 + _UNIT_EDGE, 1 - _UNIT_EDGE))


class TanhNormal(dist.TransformedDistribution):
    """``a = center + half_range * tanh(x)``, ``x ~ Normal(loc, scale)``: a squashed Gaussian on a box.

    Batch shape is that of ``loc`` without its last dimension; event shape ``(action_dim,)``.
    ``log_prob`` is exact (change of variables with the tanh and affine Jacobians):

        log π(a) = Σ_i [log N(x_i; loc_i, scale_i) − log(1 − tanh²(x_i)) − log half_range_i],  a = from_unit(tanh(x)).

    It is a ``TransformedDistribution`` (so torch's KL between two of them on one box is the KL of their Gaussians),
    but one built and evaluated per update in the hot loop: construction, ``rsample`` and ``log_prob`` are written
    out here in a few tensor ops, where the generic machinery costs ≈ 1 ms per E-step on a CPU (``docs/results.md``).
    ``rsample``, ``sample`` and ``log_prob`` give bit for bit the numbers of the generic path. The base
    distribution and the transforms are built only when something asks for them (KL, support, entropy checks).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, box: ActionBox) -> None:
        if loc.shape != scale.shape:
            loc, scale = torch.broadcast_tensors(loc, scale)
        self.loc, self.scale, self.box = loc, scale, box
        self._pair: tuple[torch.Tensor, torch.Tensor] | None = None  # (a, x) of the last rsample: exact log_prob
        torch.distributions.Distribution.__init__(self, loc.shape[:-1], loc.shape[-1:], validate_args=False)

    # The generic parts, built on demand (the hot loop never needs them).
    @property
    def base_dist(self) -> dist.Independent:
        return dist.Normal(self.loc, self.scale, validate_args=False).to_event(1)

    @property
    def transforms(self) -> list:
        return [SafeTanhTransform(), AffineTransform(self.box.center, self.box.half_range, event_dim=1)]

    def expand(self, batch_shape, _instance=None) -> TanhNormal:
        shape = torch.Size(batch_shape) + self.event_shape
        if shape == self.loc.shape:  # what pyro.plate asks for at every site: nothing to do
            return self
        return TanhNormal(self.loc.expand(shape), self.scale.expand(shape), self.box)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        noise = torch.empty(shape, dtype=self.loc.dtype, device=self.loc.device).normal_()  # as Normal.rsample
        x = self.loc + noise * self.scale
        a = self.box.center + self.box.half_range * torch.tanh(x)
        self._pair = (a, x)
        return a

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._pair is not None and value is self._pair[0]:
            x = self._pair[1]  # the pre-image of our own sample: exact, also where tanh saturates
        else:
            x = torch.atanh(self.box.to_unit(value).clamp(-1 + _UNIT_EDGE, 1 - _UNIT_EDGE))
        # The generic path's operations in its order (affine, then tanh Jacobian, then the Gaussian), so that the
        # numbers are bit for bit the same: log|half_range|, 2 (log 2 − x − softplus(−2x)) = log(1 − tanh²x).
        log_prob = -self.box.half_range.log().expand(x.shape).sum(-1)
        log_prob = log_prob - (2.0 * (_LOG2 - x - F.softplus(-2.0 * x))).sum(-1)
        gauss = -((x - self.loc) ** 2) / (2 * self.scale**2) - self.scale.log() - _HALF_LOG_2PI
        return log_prob + gauss.sum(-1)

    @property
    def mode(self) -> torch.Tensor:
        """``from_unit(tanh(loc))``: the squashed mean, used as the deterministic action."""
        return self.box.from_unit(torch.tanh(self.loc))


class DiscreteActions:
    """A finite action set ``{0, …, n−1}`` (Gymnasium ``Discrete``) seen as one-hot vectors of length ``n``.

    It plays the role of :class:`ActionBox` for discrete tasks: the replay buffer stores one-hot actions,
    the critic reads them as ``(s, one_hot(a))`` and the prior p(a|s) is uniform over the ``n`` actions.
    ``virel_ppl.runtime.envs.make_env`` wraps a ``Discrete`` env so that it accepts these one-hot vectors.
    """

    def __init__(self, n: int, device: torch.device | str = "cpu") -> None:
        if int(n) < 2:
            raise ValueError(f"DiscreteActions needs at least 2 actions, got {n}.")
        self.n = int(n)
        self.device = torch.device(device)

    def __repr__(self) -> str:
        return f"DiscreteActions({self.n})"

    @property
    def dim(self) -> int:
        """Width of a one-hot action."""
        return self.n

    def to(self, device: torch.device | str) -> DiscreteActions:
        return DiscreteActions(self.n, device=device)

    def clip(self, action: torch.Tensor) -> torch.Tensor:
        """One-hot actions are always valid: nothing to clip."""
        return action

    def one_hot(self, index: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(index.long(), self.n).float()

    def index(self, one_hot: torch.Tensor) -> torch.Tensor:
        return one_hot.argmax(-1)

    def uniform(self) -> dist.OneHotCategorical:
        """VIREL's prior p(a|s) on a discrete task: uniform over the ``n`` actions."""
        return dist.OneHotCategorical(logits=torch.zeros(self.n, device=self.device))

"""Variational EM on the VIREL ELBO: the E-step (actor, via Pyro) and the M-step (critic, via torch).

``e_step`` maximises the ELBO over the guide's parameters θ with ``pyro.infer.SVI``; :class:`EStep` takes
the same step as the ELBO's ``differentiable_loss`` and one multi-tensor torch Adam over the same parameters
(the default in training; ``docs/math.md`` shows why the two are one E-step). The critic sits inside the model
as a fixed function and receives neither gradient nor update. ``m_step`` shrinks the Bellman residual over the
critic's parameters ω with its own torch optimiser. The ε rules turn the residual into the temperature ε_ω of
the likelihood exp(Q_ω/ε_ω).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, NamedTuple

import pyro
import pyro.optim
import pyro.poutine as poutine
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.elbo import ELBO

from virel_ppl.inference.critics import Critic, bellman_target

if TYPE_CHECKING:  # annotations only: the E-step and M-step take any guide
    from virel_ppl.inference.guides import PolicyGuide


Stats = dict[str, torch.Tensor | float]  #: named values to log or hand on: 0-d tensors (a float: SVI.step's loss)


class Batch(NamedTuple):
    """A batch of transitions (s, a, r, s', terminated) as tensors on one device."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor


@contextmanager
def frozen(module: torch.nn.Module, params: list[torch.nn.Parameter] | None = None) -> Iterator[torch.nn.Module]:
    """Turn off gradients of ``module`` for the duration: the E-step must not touch the critic.

    ``params``: ``list(module.parameters())`` when the caller keeps it (walking the module costs ~1 ms per step).
    """
    params = list(module.parameters()) if params is None else params
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(params, flags, strict=True):
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


def adam(params, lr: float, fused: bool = False, capturable: bool = False) -> torch.optim.Adam:
    """One torch Adam over all ``params``: multi-tensor (``foreach``, the trainer's default) or ``fused`` (one kernel,
    ``Config.fused_adam``). Either gives bit for bit what one Adam per parameter of the same kind gives (what
    ``pyro.optim.Adam`` keeps); the two kinds round differently from each other in the last bit.

    ``capturable`` (CUDA only; the CUDA-graph update, ``graphs.py``) keeps Adam's step counters on the device and
    computes its bias corrections there, so that a captured ``step()`` reads no host number; it rounds the bias
    corrections differently from the host's float arithmetic (last bits).

    Its ``load_state_dict`` keeps these choices (see :func:`keep_own_kernel`)."""
    kernel = {"fused": True} if fused else {"foreach": True}
    optim = torch.optim.Adam(params, lr=lr, capturable=capturable, **kernel)
    optim.register_load_state_dict_pre_hook(keep_own_kernel)
    return optim


def keep_own_kernel(optim: torch.optim.Optimizer, state: dict) -> dict:
    """A load-state-dict pre-hook: the saved ``state`` with ``optim``'s own kernel choice (foreach/fused) and
    ``capturable``. torch's ``load_state_dict`` adopts the saved choices, so a checkpoint written with another choice
    (a capturable one from a CUDA-graph run, or one from before there was a choice) would switch the optimiser to it.
    Step counters go where ``optim`` keeps them: on the parameters' device when capturable or fused (torch moves them),
    on the host otherwise."""
    own = {k: optim.defaults.get(k) for k in ("foreach", "fused", "capturable")}
    saved = state["state"]
    if not (own["capturable"] or own["fused"]):
        saved = {i: {**s, "step": s["step"].cpu()} if torch.is_tensor(s.get("step")) else s for i, s in saved.items()}
    return {**state, "state": saved, "param_groups": [{**g, **own} for g in state["param_groups"]]}


class DeviceTrace_ELBO(Trace_ELBO):
    """``Trace_ELBO`` whose ``differentiable_loss`` never reads a device value on the host, for a CUDA graph.

    Pyro's ``Trace_ELBO`` adds up its loss as Python floats (one ``.item()`` per site) and tests it for NaN on the
    host: a device synchronisation each, which a captured graph cannot hold. For a reparameterised guide (every
    guide site has ``rsample``; the agent checks this before it chooses this class) the surrogate loss *is* the
    loss, so this returns it as it stands: the same gradient, the value up to float rounding. NaN is caught by the
    agent's on-device record instead. Pyro's guide for custom objectives writes the ELBO the same way.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss = loss - (model_trace.log_prob_sum() - guide_trace.log_prob_sum()) / self.num_particles
        return loss


class EStep:
    """The E-step in training: the ELBO's ``differentiable_loss`` and one torch Adam over the guide's parameters.

    One call maximises ε · ELBO / N over θ, as :func:`e_step` does with ``SVI.step`` (the same numbers, bit for bit;
    ``tests/test_fast_update.py``): the loss under ``poutine.scale(ε/N)`` with the critic frozen, its backward, one
    Adam step. The loss is

    - an ``ELBO`` with ``differentiable_loss`` (trace, meanfield, tail_adaptive, enum): that loss;
    - any other ``ELBO`` (Rényi/IWAE, TraceGraph): its ``loss_and_grads``, as ``SVI.step`` calls it (a float per
      step); announced once with a ``RuntimeWarning``;
    - a loss callable ``loss(model, guide, *args, **kwargs)`` (mpo_np): called and back-propagated, as ``SVI`` does
      with a callable. It returns the loss, or a pair (the loss, named outputs for the variant's own step); the
      E-step hands the outputs back with the loss.

    The parameters are those of the ``param`` sites that the first step's trace records (``pyro.module`` in the
    guide, or in the model when the policy is the prior, as in pseudo_likelihood), in name order; the set is
    fixed from then on. ``SVI.step`` keeps one Adam per parameter, of the same kind (the per-tensor loop, or
    fused); the one Adam here (multi-tensor, or fused) computes the same update bit for bit. ``state_dict`` uses
    ``pyro.optim``'s format (parameter name → one single-parameter Adam state), so a checkpoint of either E-step
    resumes on the other. Each E-step keeps its own Pyro param store: agents in one process share nothing.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        loss: ELBO | Callable,
        lr: float,
        fused: bool = False,
        capturable: bool = False,
    ) -> None:
        self.model, self.guide, self.loss, self.lr, self.fused = model, guide, loss, lr, fused
        self.capturable = capturable  # Adam's step counters on the device (CUDA-graph update, see ``adam``)
        self.param_state: dict = {"params": {}, "constraints": {}}
        self.names: list[str] = []
        self.optim: torch.optim.Adam | None = None
        self._pending: dict | None = None
        self._critic, self._critic_params = None, []
        if isinstance(loss, ELBO):
            self.kind = "differentiable_loss" if hasattr(loss, "differentiable_loss") else "loss_and_grads"
        else:
            self.kind = "callable"
        if self.kind == "loss_and_grads":
            warnings.warn(
                f"{type(loss).__name__} has no differentiable_loss: the E-step calls its loss_and_grads "
                "(as SVI.step does; its loss is a float, a device sync per step on a GPU) and steps one torch Adam.",
                RuntimeWarning,
                stacklevel=2,
            )

    def _loss_and_backward(self, states: torch.Tensor, kwargs: dict) -> tuple[torch.Tensor | float, Stats]:
        outputs: Stats = {}
        if self.kind == "differentiable_loss":
            loss = self.loss.differentiable_loss(self.model, self.guide, states, **kwargs)
        elif self.kind == "loss_and_grads":
            return self.loss.loss_and_grads(self.model, self.guide, states, **kwargs), outputs
        else:
            loss, outputs = with_outputs(self.loss(self.model, self.guide, states, **kwargs))
        loss.backward()
        return loss.detach(), outputs

    def __call__(
        self, critic: Critic, states: torch.Tensor, eps: float | torch.Tensor, **model_kwargs
    ) -> tuple[torch.Tensor | float, Stats]:
        """One E-step; returns the loss −ε·ELBO/N (a 0-d tensor, or a float from ``loss_and_grads``) and the loss's
        outputs (empty but for a loss callable that returns some).

        Unlike :func:`e_step` it does not test the loss for NaN: the agent records non-finite updates on the
        device and the trainer reads that record once per logging interval.
        """
        kwargs = dict(eps=eps, **model_kwargs)
        if self._critic is not critic:
            self._critic, self._critic_params = critic, list(critic.parameters())
        if self.optim is not None:  # before the backward: whatever an aborted graph capture left is dropped
            self.optim.zero_grad(set_to_none=True)
        # first step only: find the parameters Pyro registers (SVI.step traces them at every step)
        params = poutine.trace(param_only=True) if self.optim is None else nullcontext()
        with pyro.get_param_store().scope(self.param_state):
            with params as capture, frozen(critic, self._critic_params), poutine.scale(scale=eps / states.shape[0]):
                loss, outputs = self._loss_and_backward(states, kwargs)
            if self.optim is None:
                self._build({name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()})
        self.optim.step()
        return loss, outputs

    def _build(self, params: dict[str, torch.Tensor]) -> None:
        if not params:
            raise ValueError("The E-step found no parameters: the guide (or model) registers none with pyro.module.")
        self.names = sorted(params)
        self.optim = adam([params[name] for name in self.names], self.lr, self.fused, self.capturable)
        if self._pending is not None:
            self._load(self._pending)
            self._pending = None

    def state_dict(self) -> dict:
        """Parameter name → the state of a single-parameter torch Adam (``pyro.optim.PyroOptim.get_state``'s format)."""
        if self.optim is None:
            return dict(self._pending or {})
        full = self.optim.state_dict()
        group = {k: v for k, v in full["param_groups"][0].items() if k != "params"}
        # as pyro.optim.Adam's own optimisers have them (SVI.step's path loads these groups as they are)
        group.update(foreach=None, fused=self.fused or None, capturable=False)
        return {
            name: {
                "state": {0: full["state"][i]} if i in full["state"] else {},
                "param_groups": [{**group, "params": [0]}],
            }
            for i, name in enumerate(self.names)
        }

    def load_state_dict(self, state: dict) -> None:
        if self.optim is None:
            self._pending = dict(state)
        else:
            self._load(state)

    def _load(self, state: dict) -> None:
        unknown = set(state) - set(self.names)
        if unknown:
            raise KeyError(f"The optimiser state names parameters this guide does not have: {sorted(unknown)}.")
        full = self.optim.state_dict()
        full["state"] = {i: state[n]["state"][0] for i, n in enumerate(self.names) if n in state and state[n]["state"]}
        self.optim.load_state_dict(full)


class SVIStep:
    """The reference E-step, ``pyro.infer.SVI.step`` with ``pyro.optim.Adam`` (``--no-fast-update``): called as
    :class:`EStep` is, with its own Pyro param store. :class:`EStep` is proven equal to it, bit for bit."""

    def __init__(self, model: Callable, guide: Callable, loss: ELBO | Callable, lr: float, fused: bool = False) -> None:
        self.outputs: Stats = {}
        if not isinstance(
            loss, ELBO
        ):  # SVI back-propagates a tensor: hand it the loss, keep the outputs for the caller
            loss_and_outputs = loss

            def loss(*args, **kwargs) -> torch.Tensor:
                value, self.outputs = with_outputs(loss_and_outputs(*args, **kwargs))
                return value

        # one Adam per parameter tensor (pyro.optim's way); the same kernel as EStep's, hence the same numbers
        self.svi = SVI(model, guide, pyro.optim.Adam({"lr": lr, "fused": fused}), loss)
        self.param_state: dict = {"params": {}, "constraints": {}}

    def __call__(
        self, critic: Critic, states: torch.Tensor, eps: float | torch.Tensor, **model_kwargs
    ) -> tuple[float, Stats]:
        with pyro.get_param_store().scope(self.param_state):
            return e_step(self.svi, critic, states, eps, **model_kwargs), self.outputs

    def state_dict(self) -> dict:
        with pyro.get_param_store().scope(self.param_state):
            return self.svi.optim.get_state()

    def load_state_dict(self, state: dict) -> None:
        with pyro.get_param_store().scope(self.param_state):
            self.svi.optim.set_state(state)


def with_outputs(value: torch.Tensor | tuple[torch.Tensor, Stats]) -> tuple[torch.Tensor, Stats]:
    """A loss callable's return value as (loss, outputs): a bare loss has none."""
    return (value, {}) if isinstance(value, torch.Tensor) else value


# --- value targets: what V_ψ(s) regresses to (a choice, not a fork) -------------------------------------------

ValueTarget = Callable[[Critic, "PolicyGuide", torch.Tensor], torch.Tensor]


def hard_value_target(critic: Critic, policy: PolicyGuide, states: torch.Tensor) -> torch.Tensor:
    """V(s) ← E_{a~π}[Q(s, a)] (VIREL App. H, J_V), one action sample per state, scored as the env executes it."""
    return critic.q(states, clip_to_box(policy, detached_sample(policy.distribution(states))))


def clip_to_box(policy: PolicyGuide, actions: torch.Tensor) -> torch.Tensor:
    """Samples of ``policy`` clipped to its box, as the environment executes them. An unbounded guide's samples (a
    Gaussian) can fall outside; a tanh-normal's cannot, and for those the clip changes no bit."""
    box = getattr(policy, "box", None)
    return box.clip(actions) if box is not None else actions


def detached_sample(d) -> torch.Tensor:
    """A sample without gradient. ``rsample`` where there is one: the same numbers as ``sample`` on CPU, without
    ``torch.normal``'s host-side check of the scale (a device synchronisation on a GPU)."""
    with torch.no_grad():
        return d.rsample() if getattr(d, "has_rsample", False) else d.sample()


def soft_value_target(alpha: float | Callable[[], torch.Tensor]) -> ValueTarget:
    """V(s) ← E_{a~π}[Q(s, a) − α log π(a|s)]: the entropy inside the backup (SAC).

    ``alpha`` is a number, or a callable giving the current α (SAC's automatic temperature).
    """

    def target(critic: Critic, policy: PolicyGuide, states: torch.Tensor) -> torch.Tensor:
        d = policy.distribution(states)
        a = detached_sample(d)
        return critic.q(states, clip_to_box(policy, a)) - (alpha() if callable(alpha) else alpha) * d.log_prob(a)

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
        "critic/td_mse": q_loss.detach(),  # ½ (mean td1² + mean td2²): J_Q itself, before the step
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

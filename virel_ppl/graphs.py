"""The whole update as one CUDA graph on a GPU: the same operations as ``VirelAgent.eager_update``, launched at once.

One update is a few hundred small kernels (M-step, ε, the E-step's ELBO and its backward, two Adam steps, the
target update, the variant's hook, the NaN record); at batch 256 launching them from Python costs more than running
them. :class:`GraphedUpdate` runs the first ``warmup`` updates eagerly, captures the next one in a
``torch.cuda.CUDAGraph`` and from then on replays it: one launch per update. The recipe and why each part exists:

- **static inputs**: a graph reads fixed addresses, so each sampled batch (and the step number, for the NaN record)
  is copied into tensors allocated once (``copy_``); the replay buffer draws its indices outside the graph, with its
  own generator. Inside, only the default CUDA generator is used (Pyro's and torch's samplers): a captured graph
  advances its Philox offset at every replay, so each replay draws new numbers.
- **static outputs**: the statistics are stacked into one tensor per dtype, written by every replay; each update
  returns views of a copy of it (one small copy), so statistics kept by a caller are not overwritten by the next one.
- **no host synchronisation inside**: a graph cannot read a device value on the host. The update keeps Pyro's
  per-site log-densities as tensors (``em._no_host_syncs``), runs with Pyro's and torch.distributions' argument
  checks off (each is a device sync; the NaN record replaces them), and samples with ``rsample`` (``torch.normal``
  checks its scale on the host). The last warm-up runs under ``torch.cuda.set_sync_debug_mode("warn")``: any
  synchronising operation left turns the graph off, with a warning naming it.
- **capturable optimisers**: torch's Adam keeps its step counter on the host unless ``capturable=True``; the agent
  builds every optimiser capturable when it will capture (``em.adam``). A checkpoint moves freely between capturable
  and plain optimisers (``em.load_optimizer_state``).
- **warm-up on a side stream**: optimiser states, autograd's and cuBLAS's lazy set-up happen before capture, as
  torch's documentation prescribes.
- **host-side state stays on the host**: the count of updates is kept by Python; a variant hook that branches on
  host-side state (MPO's π_old copy period, ``Variant.after_update_in_graph=False``) runs eagerly after each replay.
- **re-capture after loading**: ``VirelAgent.load_state_dict`` gives the optimisers new state tensors, which a
  captured graph would not see; it calls :meth:`GraphedUpdate.reset`, so the next updates warm up and capture again.

What cannot be captured runs eagerly, announced once by a :class:`CudaGraphWarning` (the command line prints it as
one ``warning:`` line): ``--no-fast-update`` (``SVI.step``), an ELBO without ``differentiable_loss`` (renyi, iwae,
graph: their loss is a host float), enumeration (``--elbo enum``, the default of ``--guide categorical``: Pyro's
Dice estimator tests probabilities on the host), a statistic that is not a 0-d tensor on the device, a synchronising
operation found in the warm-up, or an error while capturing. ``--no-cuda-graph`` turns the graph off without a
warning. On a CPU nothing changes: the agent updates eagerly. ``GraphedUpdate(agent, capture=False)`` runs the same
static-buffer update without a graph on any device; the tests use it on CPU.

Not yet run on GPU hardware: its speed and its capture on a real device are still to be measured.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pyro
import torch
from pyro.infer import TraceEnum_ELBO
from pyro.infer.elbo import ELBO

from virel_ppl.config import Config, RunWarning
from virel_ppl.em import Batch

if TYPE_CHECKING:
    from virel_ppl.agent import VirelAgent

Stats = dict[str, torch.Tensor | float]


class CudaGraphWarning(RunWarning):
    """The update runs eagerly on a GPU although ``--cuda-graph`` asked for a CUDA graph (same numbers, slower)."""


class Uncapturable(RuntimeError):
    """Something in the update that a CUDA graph cannot hold; the message says what."""


def refusal(config: Config, device: torch.device, elbo: ELBO | None) -> str | None:
    """Why this run's update will not be captured (None: it will be), from what is known before it runs."""
    if device.type != "cuda":
        return "CUDA graphs exist only on CUDA devices"
    if not config.cuda_graph:
        return "--no-cuda-graph"
    if not config.fast_update:
        return "--no-fast-update runs pyro.infer.SVI.step, whose loss is a host float every step"
    if elbo is not None and not hasattr(elbo, "differentiable_loss"):
        return (
            f"{type(elbo).__name__} (--elbo {config.elbo}) has no differentiable_loss: its loss_and_grads returns a "
            "host float every step"
        )
    if isinstance(elbo, TraceEnum_ELBO):
        return (
            f"{type(elbo).__name__} (--elbo {config.elbo}) enumerates: Pyro's Dice estimator tests its "
            "probabilities on the host and drops the zero ones (a device sync and a data-dependent shape)"
        )
    return None


def announce_eager(reason: str, from_update: int | None = None, stacklevel: int = 3) -> None:
    """Say once that the update runs eagerly and why: from the start (where the update is built), or ``from_update``
    on (when a graph is given up)."""
    since = f" from update {from_update} on" if from_update is not None else ""
    warnings.warn(
        f"The update runs eagerly{since}, not as one CUDA graph: {reason}. Same numbers, more kernel launches; "
        "--no-cuda-graph silences this.",
        CudaGraphWarning,
        stacklevel=stacklevel,
    )


def update_path(agent: VirelAgent) -> str:
    """Which update ``agent`` runs now, in words: the CUDA graph, or eager and why (for benchmarks and logs)."""
    graphed = agent.graphed
    if graphed is not None and graphed.replaying:
        return "CUDA graph (captured once, replayed)" if graphed.capture else "static buffers, no graph"
    if graphed is not None and graphed.failed is None:
        return f"eager warm-up ({graphed.warmed} of {graphed.warmup} before capture)"
    return f"eager ({graphed.failed if graphed is not None else agent.graph_refusal})"


class GraphedUpdate:
    """``agent.update`` as one replay of a captured CUDA graph (``capture=True``, CUDA only), or the same
    static-buffer update run eagerly (``capture=False``: any device; what the CPU tests check).

    Call it as ``agent.update``: ``graphed(batch, step)``. The first ``warmup`` calls run the update eagerly, the
    next one captures it and every later one replays it. A batch of another shape runs eagerly (the graph holds one
    shape). After :meth:`reset` the next calls warm up and capture again.

    Args:
        agent: the agent whose update is captured; its optimisers must be capturable when ``capture``.
        capture: capture a CUDA graph (True), or run the static-buffer update eagerly (False).
        warmup: eager updates before the capture (on a side stream on CUDA).
    """

    def __init__(self, agent: VirelAgent, capture: bool = True, warmup: int = 3) -> None:
        if agent.fast_e_step is None:
            raise ValueError("The graph update needs the fast E-step (--fast-update): SVI.step returns host floats.")
        if capture and agent.device.type != "cuda":
            raise ValueError(f"A CUDA graph needs a CUDA device, the agent is on {agent.device}.")
        self.agent, self.capture, self.warmup = agent, capture, max(int(warmup), 1)
        # Pyro's per-site floats are host syncs; keep them as device tensors (the GPU's default, forced on CPU too)
        agent.fast_e_step.sync_free = True
        self.hook_in_graph = agent.variant.after_update is None or agent.variant.after_update_in_graph
        self.failed: str | None = None  # why capture was given up; every later update runs eagerly
        self.reset()

    def reset(self) -> None:
        """Forget the graph and the static buffers (parameters or optimiser states were replaced): the next updates
        warm up and capture again, so a stale graph is never replayed."""
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captured = False
        self.warmed = 0
        self.static_batch: Batch | None = None
        self.static_step: torch.Tensor | None = None
        self.static_out: list[torch.Tensor] = []  # the statistics, one stacked tensor per dtype
        self.layout: list[tuple[str, int, int]] = []  # (name, tensor in static_out, index in it), in update order

    @property
    def replaying(self) -> bool:
        """Whether updates are now replays of the captured graph (or, with ``capture=False``, of the static body)."""
        return self.captured and self.failed is None

    def __call__(self, batch: Batch, step: int | None = None) -> Stats:
        agent = self.agent
        step = agent.updates + 1 if step is None else step
        if self.failed is not None or not self._fits(batch):
            return agent.eager_update(batch, step)
        self._load(batch, step)
        if self.warmed < self.warmup:
            stats = self._warm_up()
            if stats is not None:  # the update is done (eagerly); the graph is off from now on
                agent.updates += 1
                return stats
        elif not self.captured:
            if not self._capture():
                return agent.eager_update(batch, step)
        else:
            self._replay()
        agent.updates += 1
        return self._outputs()

    # --- the captured region ---------------------------------------------------------------------------------

    def _body(self) -> Stats:
        """One update on the static buffers, its statistics stacked into ``static_out``: what the graph holds."""
        with pyro.validation_enabled(False):  # argument checks read device values on the host (a sync each)
            stats = self.agent.update_body(self.static_batch, self.static_step, after_update=self.hook_in_graph)
        self._eager_stats = stats  # what a warm-up returns if the graph is given up after it
        self._pack(stats)
        return stats

    def _pack(self, stats: Stats) -> None:
        layout, groups, dtypes = [], [], []
        for name, value in stats.items():
            if not (isinstance(value, torch.Tensor) and value.dim() == 0 and value.device == self.agent.device):
                raise Uncapturable(f"the statistic {name!r} is not a 0-d tensor on {self.agent.device} ({value!r})")
            if value.dtype not in dtypes:
                dtypes.append(value.dtype)
                groups.append([])
            g = dtypes.index(value.dtype)
            layout.append((name, g, len(groups[g])))
            groups[g].append(value)
        if self.layout and layout != self.layout:
            raise Uncapturable("the update returns other statistics from one update to the next")
        stacked = [torch.stack(values) for values in groups]
        if self.layout:  # written into the same tensors at every run, as a replay writes its outputs
            for out, values in zip(self.static_out, stacked, strict=True):
                out.copy_(values)
        else:
            self.static_out = stacked
        self.layout = layout

    # --- around it -------------------------------------------------------------------------------------------

    def _fits(self, batch: Batch) -> bool:
        if self.static_batch is None:
            return True
        return all(
            s.shape == b.shape and s.dtype == b.dtype and s.device == b.device
            for s, b in zip(self.static_batch, batch, strict=True)
        )

    def _load(self, batch: Batch, step: int) -> None:
        """Copy the batch and the step into the static inputs (allocated at the first call)."""
        if self.static_batch is None:
            self.static_batch = Batch(*(t.detach().clone() for t in batch))
            self.static_step = torch.zeros((), dtype=torch.long, device=self.agent.device)
        else:
            for static, value in zip(self.static_batch, batch, strict=True):
                static.copy_(value)
        self.static_step.fill_(step)  # a kernel argument, not a host read

    def _warm_up(self) -> Stats | None:
        """One eager update through the static buffers; None on success, else its statistics after turning the
        graph off (the update itself is complete either way)."""
        last = self.warmed + 1 == self.warmup
        self._eager_stats: Stats = {}
        try:
            if self.capture:
                side = torch.cuda.Stream(self.agent.device)
                side.wait_stream(torch.cuda.current_stream(self.agent.device))
                with torch.cuda.stream(side), _sync_check(last) as syncs:
                    self._body()
                torch.cuda.current_stream(self.agent.device).wait_stream(side)
                if syncs:
                    raise Uncapturable(f"a synchronising CUDA operation in the update ({syncs[0]})")
            else:
                self._body()
        except Uncapturable as err:
            self._give_up(str(err))
            return self._with_host_hook(self._eager_stats)
        self.warmed += 1
        return None

    def _capture(self) -> bool:
        """Capture the update and replay it once (this call's update); False, after turning the graph off, when
        capture fails (the caller then runs this update eagerly)."""
        if not self.capture:
            self.captured = True
            self._body()
            return True
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._body()
        except Exception as err:  # noqa: BLE001 - any failure to capture means: run eagerly, and say so
            self._clear_grads()  # capture records kernels without running them: grads hold garbage
            self._give_up(f"capture failed ({type(err).__name__}: {err})")
            return False
        self.graph, self.captured = graph, True
        graph.replay()  # capture only recorded the kernels: run them for this update
        return True

    def _replay(self) -> None:
        if self.capture:
            self.graph.replay()
        else:
            self._body()

    def _outputs(self) -> Stats:
        flat = [out.clone() for out in self.static_out]  # one copy per dtype; the next replay overwrites static_out
        return self._with_host_hook({name: flat[g][i] for name, g, i in self.layout})

    def _with_host_hook(self, stats: Stats) -> Stats:
        """Run the variant's hook eagerly when it is not in the graph, in the place ``update_body`` gives it."""
        agent = self.agent
        if self.hook_in_graph:
            return stats
        extra = agent.variant.after_update(agent, self.static_batch) or {}
        extra = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in extra.items()}  # may alias the graph
        if extra:
            agent.nonfinite.record(extra.values(), self.static_step)
        tail = ("actor/loss", "eps")
        return {
            **{k: v for k, v in stats.items() if k not in tail},
            **extra,
            **{k: stats[k] for k in tail if k in stats},
        }

    def _give_up(self, reason: str) -> None:
        self.failed, self.graph, self.captured = reason, None, False
        announce_eager(reason, from_update=self.agent.updates + 1, stacklevel=5)

    def _clear_grads(self) -> None:
        agent = self.agent
        params = [*agent.critic.parameters(), *agent.policy.parameters()]
        optims = [agent.critic_optim, agent.fast_e_step.optim]
        optims += [getattr(extra, "optim", None) for extra in agent.extras.values()]
        params += [p for o in optims if o is not None for g in o.param_groups for p in g["params"]]
        for p in params:
            p.grad = None


@contextmanager
def _sync_check(active: bool) -> Iterator[list[str]]:
    """Collect torch's warnings about synchronising CUDA operations (``set_sync_debug_mode("warn")``) when
    ``active``; other warnings are passed on."""
    found: list[str] = []
    if not active:
        yield found
        return
    old = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(old)
    for w in caught:
        if "synchroniz" in str(w.message):
            found.append(f"{w.filename}:{w.lineno}: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

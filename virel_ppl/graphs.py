"""Speed as a wrapper: a function of tensors captured once as a CUDA graph and replayed, one launch per call.

One update is a few hundred small kernels (M-step, ε, the E-step's ELBO and its backward, two Adam steps, the
target update, the variant's step, the NaN record); at batch 256 launching them from Python costs more than running
them. :class:`CudaGraph` wraps any such function ``fn(*tensors) -> {name: 0-d tensor}`` the way LeanRL wraps its SAC
update: it runs the first ``warmup`` calls eagerly, captures the next one in a ``torch.cuda.CUDAGraph`` and from then
on replays it. It knows nothing of agents or variants; the agent wraps its own ``update`` in it. The recipe:

- **static inputs**: a graph reads fixed addresses, so every call's tensors (a batch, the step number) are copied
  into tensors allocated once (``copy_``). A call with other shapes runs ``fn`` eagerly. Inside, only the default
  CUDA generator is used (Pyro's and torch's samplers): a captured graph advances its Philox offset at every replay.
- **static outputs**: the 0-d outputs are stacked into one tensor per dtype inside the graph; each call returns views
  of one copy of it, so outputs kept by a caller are not overwritten by the next replay.
- **no host synchronisation inside**: a graph cannot read a device value on the host. The caller keeps ``fn`` free
  of them (the agent: Pyro's argument checks off, a device-resident ELBO, ``rsample``, no host-side counters). The
  last warm-up runs under ``torch.cuda.set_sync_debug_mode("warn")``: a synchronising operation left turns the graph
  off, with a warning naming it.
- **capturable optimisers**: torch's Adam keeps its step on the host unless ``capturable=True``; the caller builds
  its optimisers so when it will capture (``em.adam``), and zeroes gradients before each backward, so that the
  garbage an aborted capture leaves in them is never used.
- **warm-up on a side stream**: optimiser states, autograd's and cuBLAS's lazy set-up happen before capture, as
  torch's documentation prescribes.
- **re-capture**: :meth:`CudaGraph.reset` after the caller replaces tensors the graph reads (loading a checkpoint
  gives optimisers new state tensors): the next calls warm up and capture again.

What cannot be captured runs eagerly, said once by a :class:`CudaGraphWarning` (the command line prints it as one
``warning:`` line). ``CudaGraph(fn, capture=False)`` runs the same static-buffer calls without a graph on any
device; the CPU tests use it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from virel_ppl.config import RunWarning

Outputs = dict[str, torch.Tensor]


class CudaGraphWarning(RunWarning):
    """The update runs eagerly on a GPU although ``--cuda-graph`` asked for a CUDA graph (same numbers, slower)."""


class Uncapturable(RuntimeError):
    """Something in the wrapped function that a CUDA graph cannot hold; the message says what."""


def announce_eager(reason: str, from_call: int | None = None, stacklevel: int = 3) -> None:
    """Say once that the update runs eagerly and why: from the start, or from call ``from_call`` on."""
    since = f" from update {from_call} on" if from_call is not None else ""
    warnings.warn(
        f"The update runs eagerly{since}, not as one CUDA graph: {reason}. Same numbers, more kernel launches; "
        "--no-cuda-graph silences this.",
        CudaGraphWarning,
        stacklevel=stacklevel,
    )


def _flat(args: tuple) -> list[torch.Tensor]:
    return [t for a in args for t in (a if isinstance(a, tuple) else (a,))]


def _rebuild(args: tuple, tensors: list[torch.Tensor]) -> tuple:
    out, i = [], 0
    for a in args:
        if isinstance(a, tuple):
            part = tensors[i : i + len(a)]
            out.append(type(a)(*part) if hasattr(a, "_fields") else tuple(part))  # a NamedTuple, or a plain tuple
            i += len(a)
        else:
            out.append(tensors[i])
            i += 1
    return tuple(out)


class CudaGraph:
    """``fn(*args)`` as one replay of a captured CUDA graph (``capture=True``, CUDA only), or the same static-buffer
    calls run eagerly (``capture=False``: any device; what the CPU tests check).

    ``args`` are tensors or tuples (NamedTuples) of tensors; ``fn`` returns a dict of 0-d tensors on their device.
    The first ``warmup`` calls run ``fn`` eagerly on the static inputs, the next one captures it and every later
    one replays it. ``calls`` counts the calls made through it.
    """

    def __init__(self, fn: Callable[..., Outputs], capture: bool = True, warmup: int = 3) -> None:
        self.fn, self.capture, self.warmup = fn, capture, max(int(warmup), 1)
        self.failed: str | None = None  # why capture was given up; every later call runs eagerly
        self.calls = 0
        self.reset()

    def reset(self) -> None:
        """Forget the graph and the static buffers: the next calls warm up and capture again."""
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captured = False
        self.warmed = 0
        self.static_args: tuple | None = None
        self.static_out: list[torch.Tensor] = []  # the outputs, one stacked tensor per dtype
        self.layout: list[tuple[str, int, int]] = []  # (name, tensor in static_out, index in it), in output order

    @property
    def replaying(self) -> bool:
        """Whether calls are now replays of the captured graph (or, with ``capture=False``, of the static body)."""
        return self.captured and self.failed is None

    def describe(self) -> str:
        """Which path calls take now, in words (for benchmarks and logs)."""
        if self.replaying:
            return "CUDA graph (captured once, replayed)" if self.capture else "static buffers, no graph"
        if self.failed is None:
            return f"eager warm-up ({self.warmed} of {self.warmup} before capture)"
        return f"eager ({self.failed})"

    def __call__(self, *args) -> Outputs:
        self.calls += 1
        if self.failed is not None or not self._fits(args):
            return self.fn(*args)
        self._load(args)
        if self.warmed < self.warmup:
            out = self._warm_up()
            if out is not None:  # the call is done (eagerly); the graph is off from now on
                return out
        elif not self.captured:
            if not self._capture():
                return self.fn(*args)
        elif self.capture:
            self.graph.replay()
        else:
            self._body()
        flat = [out.clone() for out in self.static_out]  # one copy per dtype; the next replay overwrites static_out
        return {name: flat[g][i] for name, g, i in self.layout}

    # --- the captured region ---------------------------------------------------------------------------------

    def _body(self) -> Outputs:
        """One call on the static inputs, its outputs stacked into ``static_out``: what the graph holds."""
        out = self.fn(*self.static_args)
        self._eager_out = out  # what a warm-up returns if the graph is given up after it
        self._pack(out)
        return out

    def _pack(self, out: Outputs) -> None:
        device = _flat(self.static_args)[0].device
        layout, groups, dtypes = [], [], []
        for name, value in out.items():
            if not (isinstance(value, torch.Tensor) and value.dim() == 0 and value.device == device):
                raise Uncapturable(f"the output {name!r} is not a 0-d tensor on {device} ({value!r})")
            if value.dtype not in dtypes:
                dtypes.append(value.dtype)
                groups.append([])
            g = dtypes.index(value.dtype)
            layout.append((name, g, len(groups[g])))
            groups[g].append(value)
        if self.layout and layout != self.layout:
            raise Uncapturable("the function returns other outputs from one call to the next")
        stacked = [torch.stack(values) for values in groups]
        if self.layout:  # written into the same tensors at every run, as a replay writes its outputs
            for static, values in zip(self.static_out, stacked, strict=True):
                static.copy_(values)
        else:
            self.static_out = stacked
        self.layout = layout

    # --- around it -------------------------------------------------------------------------------------------

    def _fits(self, args: tuple) -> bool:
        if self.static_args is None:
            return True
        new, old = _flat(args), _flat(self.static_args)
        return len(new) == len(old) and all(
            s.shape == t.shape and s.dtype == t.dtype and s.device == t.device for s, t in zip(old, new, strict=True)
        )

    def _load(self, args: tuple) -> None:
        """Copy the call's tensors into the static inputs (allocated at the first call)."""
        if self.static_args is None:
            self.static_args = _rebuild(args, [t.detach().clone() for t in _flat(args)])
        else:
            for static, value in zip(_flat(self.static_args), _flat(args), strict=True):
                static.copy_(value)

    def _warm_up(self) -> Outputs | None:
        """One eager call through the static buffers; None on success, else its outputs after turning the graph off
        (the call itself is complete either way)."""
        last = self.warmed + 1 == self.warmup
        self._eager_out: Outputs = {}
        try:
            if self.capture:
                device = _flat(self.static_args)[0].device
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side), _sync_check(last) as syncs:
                    self._body()
                torch.cuda.current_stream(device).wait_stream(side)
                if syncs:
                    raise Uncapturable(f"a synchronising CUDA operation in the update ({syncs[0]})")
            else:
                self._body()
        except Uncapturable as err:
            self._give_up(str(err))
            return self._eager_out
        self.warmed += 1
        return None

    def _capture(self) -> bool:
        """Capture ``fn`` and replay it once (this call's work); False, after turning the graph off, when capture
        fails (the caller then runs this call eagerly)."""
        if not self.capture:
            self.captured = True
            self._body()
            return True
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._body()
        except Exception as err:  # noqa: BLE001 - any failure to capture means: run eagerly, and say so
            self._give_up(f"capture failed ({type(err).__name__}: {err})")
            return False
        self.graph, self.captured = graph, True
        graph.replay()  # capture only recorded the kernels: run them for this call
        return True

    def _give_up(self, reason: str) -> None:
        self.failed, self.graph, self.captured = reason, None, False
        announce_eager(reason, from_call=self.calls, stacklevel=5)


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

"""A seeded replay buffer of transitions, kept as tensors on the training device.

A checkpoint holds its filled rows only, and ``next_obs`` packed (:func:`pack_next_obs`): within an episode s'_i is
s_{i+1}, so only each episode's last next-observation is stored apart, which halves a checkpoint of a task with large
observations (Humanoid: 348 floats of a 715-float transition are kept once instead of twice).
"""

from __future__ import annotations

import numpy as np
import torch

from virel_ppl.config import ConfigError
from virel_ppl.inference.em import Batch

#: the per-transition tensors, in ``Batch`` order
FIELDS = Batch._fields
#: rows compared at a time when packing (bounds the temporary memory of a large buffer)
_CHUNK = 65_536


def pack_next_obs(obs: torch.Tensor, next_obs: torch.Tensor) -> dict[str, torch.Tensor]:
    """``next_obs`` without the rows that equal the next row of ``obs`` (within an episode s'_i is s_{i+1}): only
    the others are kept, with their indices, so a checkpoint holds the observations about once instead of twice.

    Lossless for any data: rows are compared bit for bit, and every row that differs (an episode's last transition,
    the buffer's newest row, -0.0 against 0.0) is kept as it is. :func:`unpack_next_obs` undoes it."""
    n = len(obs)
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[obs.element_size()]
    same = torch.zeros(n, dtype=torch.bool)
    for i in range(0, n - 1, _CHUNK):
        j = min(i + _CHUNK, n - 1)
        a, b = next_obs[i:j].reshape(j - i, -1), obs[i + 1 : j + 1].reshape(j - i, -1)
        same[i:j] = (a.view(bits) == b.view(bits)).all(dim=1)
    index = torch.nonzero(~same).squeeze(1)
    return {"index": index, "rows": next_obs[index].clone()}


def unpack_next_obs(obs: torch.Tensor, packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """The ``next_obs`` that :func:`pack_next_obs` packed, from ``obs`` and the rows it kept."""
    next_obs = torch.empty_like(obs)
    next_obs[:-1] = obs[1:]
    next_obs[packed["index"]] = packed["rows"]
    return next_obs


class ReplayBuffer:
    """A ring buffer of (s, a, r, s', terminated) that samples uniform minibatches.

    Sampling draws indices from its own ``torch.Generator`` (seeded), so a run is reproducible and a
    checkpoint (``state_dict``) restores the exact stream of batches.
    """

    def __init__(
        self, obs_dim: int, action_dim: int, capacity: int, device: torch.device | str = "cpu", seed: int = 0
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"Replay capacity must be > 0, got {capacity}.")
        self.capacity, self.device = capacity, torch.device(device)
        # empty, not zeros: the rows past ``size`` are never read, and on the CPU the memory of rows not yet written
        # stays uncommitted (1M rows of Humanoid's 348-dim obs and next_obs are 2.8 GB, used as they fill)
        self.obs = torch.empty(capacity, obs_dim, device=self.device)
        self.actions = torch.empty(capacity, action_dim, device=self.device)
        self.rewards = torch.empty(capacity, device=self.device)
        self.next_obs = torch.empty(capacity, obs_dim, device=self.device)
        self.terminated = torch.empty(capacity, device=self.device)
        self.size, self.pos = 0, 0
        # indices are drawn where the data lives: on a GPU no host-to-device copy per batch (CPU: as before)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray, terminated: bool) -> None:
        """Store one transition. ``terminated`` (not ``truncated``) stops bootstrapping."""
        i = self.pos
        self.obs[i] = torch.as_tensor(obs, dtype=torch.float32)
        self.actions[i] = torch.as_tensor(action, dtype=torch.float32)
        self.rewards[i] = float(reward)
        self.next_obs[i] = torch.as_tensor(next_obs, dtype=torch.float32)
        self.terminated[i] = float(terminated)
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> Batch:
        if batch_size > self.size:
            raise ValueError(f"Cannot sample {batch_size} transitions from a buffer holding {self.size}.")
        idx = torch.randint(self.size, (batch_size,), generator=self.generator, device=self.device)
        return Batch(self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminated[idx])

    def state_dict(self) -> dict:
        """The filled rows (copies, not views: ``torch.save`` writes a view's whole storage, i.e. the full
        preallocated capacity), with ``next_obs`` packed (:func:`pack_next_obs`) as ``next_obs_packed``."""
        rows = {name: getattr(self, name)[: self.size].to("cpu", copy=True) for name in FIELDS if name != "next_obs"}
        return {
            **rows,
            "next_obs_packed": pack_next_obs(rows["obs"], self.next_obs[: self.size].cpu()),
            "size": self.size,
            "pos": self.pos,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Load :meth:`state_dict`'s output, or a checkpoint that holds ``next_obs`` whole (as earlier versions
        wrote it)."""
        n = state["size"]
        if n > self.capacity:
            raise ConfigError(
                f"Checkpoint holds {n} transitions but the buffer capacity is {self.capacity}; "
                f"resume with --buffer-size {n} or more."
            )
        if "next_obs" not in state:
            state = {**state, "next_obs": unpack_next_obs(state["obs"], state["next_obs_packed"])}
        for name in FIELDS:
            getattr(self, name)[:n] = state[name].to(self.device)
        self.size, self.pos = n, state["pos"]
        try:
            self.generator.set_state(state["generator"])
        except RuntimeError:  # saved on another device type (CPU ↔ GPU): a stream seeded from it, not the same one
            self.generator.manual_seed(int(state["generator"].long().sum()))

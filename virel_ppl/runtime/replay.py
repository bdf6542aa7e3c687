"""A seeded replay buffer of transitions, kept as tensors on the training device."""

from __future__ import annotations

import numpy as np
import torch

from virel_ppl.config import ConfigError
from virel_ppl.inference.em import Batch

#: the per-transition tensors, in ``Batch`` order
FIELDS = Batch._fields


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
        self.obs = torch.zeros(capacity, obs_dim, device=self.device)
        self.actions = torch.zeros(capacity, action_dim, device=self.device)
        self.rewards = torch.zeros(capacity, device=self.device)
        self.next_obs = torch.zeros(capacity, obs_dim, device=self.device)
        self.terminated = torch.zeros(capacity, device=self.device)
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
        # copies, not views: torch.save writes a view's whole storage, i.e. the full preallocated capacity
        return {
            **{name: getattr(self, name)[: self.size].to("cpu", copy=True) for name in FIELDS},
            "size": self.size,
            "pos": self.pos,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        n = state["size"]
        if n > self.capacity:
            raise ConfigError(
                f"Checkpoint holds {n} transitions but the buffer capacity is {self.capacity}; "
                f"resume with --buffer-size {n} or more."
            )
        for name in FIELDS:
            getattr(self, name)[:n] = state[name].to(self.device)
        self.size, self.pos = n, state["pos"]
        try:
            self.generator.set_state(state["generator"])
        except RuntimeError:  # saved on another device type (CPU ↔ GPU): a stream seeded from it, not the same one
            self.generator.manual_seed(int(state["generator"].long().sum()))

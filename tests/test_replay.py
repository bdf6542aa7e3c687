"""The replay buffer: ring order, seeded sampling, and checkpoints that hold only what was stored."""

import io

import numpy as np
import pytest
import torch

from virel_ppl.runtime.replay import ReplayBuffer


def _filled(n: int, capacity: int = 1000, seed: int = 0) -> ReplayBuffer:
    buf = ReplayBuffer(obs_dim=3, action_dim=2, capacity=capacity, seed=seed)
    for i in range(n):
        buf.add(np.full(3, i), np.full(2, -i), float(i), np.full(3, i + 1), terminated=i % 7 == 0)
    return buf


def test_ring_buffer_overwrites_the_oldest_transition():
    buf = _filled(12, capacity=10)
    assert len(buf) == 10 and buf.pos == 2
    assert buf.rewards.tolist() == [10.0, 11.0] + [float(i) for i in range(2, 10)]
    assert buf.terminated[0] == 0.0 and buf.terminated[7] == 1.0  # 10 % 7 != 0; 7 % 7 == 0


def test_checkpoint_holds_only_the_stored_transitions():
    buf = _filled(50, capacity=100_000)
    state = buf.state_dict()
    # a slice of the preallocated arrays would carry the whole 100k-row storage into torch.save
    assert state["obs"].untyped_storage().nbytes() == 50 * 3 * 4
    file = io.BytesIO()
    torch.save(state, file)
    assert file.tell() < 50_000  # 50 transitions, not 100k rows of zeros (≈ 3.6 MB)


def test_restored_buffer_samples_the_same_batches():
    buf = _filled(200)
    buf.sample(32)  # advance the generator: the checkpoint must carry its state
    restored = ReplayBuffer(obs_dim=3, action_dim=2, capacity=1000, seed=99)
    restored.load_state_dict(buf.state_dict())
    for _ in range(3):
        a, b = buf.sample(32), restored.sample(32)
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="capacity must be > 0"):
        ReplayBuffer(3, 2, capacity=0)
    with pytest.raises(ValueError, match="Cannot sample 64 transitions from a buffer holding 10"):
        _filled(10).sample(64)
    with pytest.raises(ValueError, match="capacity is 100"):
        ReplayBuffer(3, 2, capacity=100).load_state_dict(_filled(200).state_dict())

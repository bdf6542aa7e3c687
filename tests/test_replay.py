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


def _episodes(n: int, length: int, capacity: int = 1000) -> ReplayBuffer:
    """Episodes of ``length`` steps whose observations count up (step t of episode e: e * 100 + t); the last
    transition of each ends in a terminal observation -1 that no episode starts from."""
    buf = ReplayBuffer(obs_dim=3, action_dim=2, capacity=capacity)
    for i in range(n):
        e, t = divmod(i, length)
        last = t == length - 1
        buf.add(np.full(3, e * 100 + t), np.zeros(2), 0.0, np.full(3, -1 if last else e * 100 + t + 1), last)
    return buf


def test_a_checkpoint_keeps_next_obs_only_where_it_is_not_the_next_rows_obs():
    state = _episodes(23, length=5).state_dict()
    assert state["next_obs_packed"]["index"].tolist() == [4, 9, 14, 19, 22]  # each episode's end, and the last row
    assert state["next_obs_packed"]["rows"][:, 0].tolist() == [-1, -1, -1, -1, 4 * 100 + 3]  # row 22: episode 4, step 2
    assert "next_obs" not in state


@pytest.mark.parametrize("n", [1, 23, 1200])  # one row; a partial episode; a ring that wrapped (capacity 1000)
def test_a_packed_checkpoint_restores_next_obs_bit_for_bit(n):
    buf = _episodes(n, length=5)
    buf.next_obs[:1] = -0.0  # equal to 0.0 as a float but not as bits: kept apart, as it was
    buf.obs[1:2] = 0.0
    restored = ReplayBuffer(obs_dim=3, action_dim=2, capacity=1000)
    restored.load_state_dict(buf.state_dict())
    size = len(buf)
    assert torch.equal(restored.next_obs[:size].view(torch.int32), buf.next_obs[:size].view(torch.int32))
    assert torch.equal(restored.obs[:size], buf.obs[:size]) and restored.pos == buf.pos


def test_a_checkpoint_with_next_obs_whole_still_loads():
    """As earlier versions wrote it: every field's filled rows, next_obs among them."""
    buf = _filled(40)
    old = {name: getattr(buf, name)[:40].clone() for name in ("obs", "actions", "rewards", "next_obs", "terminated")}
    old |= {"size": 40, "pos": 40, "generator": buf.generator.get_state()}
    restored = ReplayBuffer(obs_dim=3, action_dim=2, capacity=1000)
    restored.load_state_dict(old)
    assert torch.equal(restored.next_obs[:40], buf.next_obs[:40])
    assert torch.equal(restored.sample(8).next_obs, buf.sample(8).next_obs)

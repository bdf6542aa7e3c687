"""What a checkpoint of a Humanoid run costs to write, on disk and in time: the replay buffer dominates it.

    python benchmarks/checkpoint_cost.py                          # 100k and 500k transitions, episodes of 25 steps
    python benchmarks/checkpoint_cost.py --sizes 500000 --episode-length 1000 --dir /path/on/the/runs/disk

Humanoid-v5 has 348-dim observations and 17-dim actions. The buffer is filled with episodes of ``--episode-length``
steps (within an episode s'_i = s_{i+1}; each episode ends in a terminal observation of its own), then written with
``torch.save`` as a checkpoint holds it, in two formats:

- ``whole``: every field's filled rows, ``next_obs`` among them (what checkpoints held before);
- ``packed``: ``next_obs`` only where it is not the next row's ``obs`` (``ReplayBuffer.state_dict`` now).

and SB3's SAC buffer as ``virel_ppl.baselines`` checkpoints it (SB3 keeps MuJoCo's float64 observations; packed too).
Each row: the file's size, the time of ``torch.save`` (to the page cache) and of the ``fsync`` after it (to the
disk), and the time to load it back into a buffer. The files are written under ``--dir`` and removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from virel_ppl.baselines import _replay_state
from virel_ppl.runtime.replay import FIELDS, ReplayBuffer

OBS, ACT = 348, 17


def filled(n: int, length: int, seed: int = 0) -> ReplayBuffer:
    """A buffer of ``n`` transitions in episodes of ``length`` steps (random observations, chained as an env's)."""
    g = torch.Generator().manual_seed(seed)
    buf = ReplayBuffer(OBS, ACT, n)
    buf.obs[:n] = torch.randn(n, OBS, generator=g)
    buf.next_obs[: n - 1] = buf.obs[1:n]
    ends = torch.arange(length - 1, n, length)
    buf.next_obs[ends] = torch.randn(len(ends), OBS, generator=g)  # terminal observations
    buf.next_obs[n - 1] = torch.randn(OBS, generator=g)
    buf.actions[:n] = torch.rand(n, ACT, generator=g) * 0.8 - 0.4
    buf.rewards[:n] = torch.randn(n, generator=g)
    buf.terminated[:n] = 0.0
    buf.size, buf.pos = n, 0
    return buf


def whole(buf: ReplayBuffer) -> dict:
    n = len(buf)
    rows = {name: getattr(buf, name)[:n].clone() for name in FIELDS}
    return {**rows, "size": n, "pos": buf.pos, "generator": buf.generator.get_state()}


def sb3_buffer(buf: ReplayBuffer):
    """SB3's buffer of the same transitions (SB3 keeps MuJoCo's float64 observations)."""
    from gymnasium import spaces
    from stable_baselines3.common.buffers import ReplayBuffer as SB3Buffer

    n = len(buf)
    box = spaces.Box(-np.inf, np.inf, (OBS,), np.float64)
    sb3 = SB3Buffer(n, box, spaces.Box(-0.4, 0.4, (ACT,), np.float32), device="cpu", n_envs=1)
    sb3.observations[:n, 0] = buf.obs[:n].double().numpy()
    sb3.next_observations[:n, 0] = buf.next_obs[:n].double().numpy()
    sb3.actions[:n, 0] = buf.actions[:n].numpy()
    sb3.pos, sb3.full = 0, True
    return sb3


def measure(state_of, path: Path, load=None) -> tuple[float, float, float, float, float]:
    """(MB on disk, state s, save s, fsync s, load s) of one checkpoint: building its dict (copies of the filled
    rows, packing), ``torch.save``, ``fsync``, and ``torch.load`` with the restore into a buffer."""
    t0 = time.perf_counter()
    state = state_of()
    t1 = time.perf_counter()
    torch.save(state, path)
    t2 = time.perf_counter()
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    t3 = time.perf_counter()
    del state
    state = torch.load(path, weights_only=False)
    if load is not None:
        load(state)
    t4 = time.perf_counter()
    size = path.stat().st_size / 1e6
    path.unlink()
    return size, t1 - t0, t2 - t1, t3 - t2, t4 - t3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000], help="transitions in the buffer")
    parser.add_argument("--episode-length", type=int, default=25, help="steps per episode (Humanoid falls early)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: the temp dir)")
    parser.add_argument("--no-sb3", action="store_true", help="skip SB3's buffer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(dir=args.dir))
    print(f"| transitions (episodes of {args.episode_length}) | format | MB | state s | save s | fsync s | load s |")
    print("|---|---|---|---|---|---|---|")
    try:
        for n in args.sizes:
            buf = filled(n, args.episode_length)

            def load(state, n=n):
                ReplayBuffer(OBS, ACT, n).load_state_dict(state)

            rows = [("ours, whole", partial(whole, buf), load), ("ours, packed", buf.state_dict, load)]
            if not args.no_sb3:
                rows.append(("SB3 (float64), packed", partial(_replay_state, sb3_buffer(buf)), None))
            for name, state_of, loader in rows:
                mb, state, save, sync, back = measure(state_of, out / "checkpoint.pt", loader)
                cells = f"{mb:,.0f} | {state:.2f} | {save:.2f} | {sync:.2f} | {back:.2f}"
                print(f"| {n:,} | {name} | {cells} |", flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()

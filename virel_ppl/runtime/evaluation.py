"""Evaluation: the returns of the guide's mode action, the same for every run (ours, and the SB3 baseline's)."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from virel_ppl.config import ConfigError
from virel_ppl.runtime.envs import make_eval_envs
from virel_ppl.runtime.nan_policy import check_eval_env_step, check_mode_action


class Actor(Protocol):
    """What :func:`evaluate` needs of an agent: its device and ``act(obs, deterministic=True)``."""

    device: torch.device

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor: ...


@torch.no_grad()
def evaluate(agent: Actor, env_id: str, episodes: int, seed: int) -> np.ndarray:
    """Returns of ``episodes`` episodes with the guide's mode action, run side by side on a vector env.

    Raises ``ConfigError`` when ``episodes`` < 1, or when an action, reward or observation is not finite.
    """
    if episodes < 1:
        raise ConfigError(f"Evaluation needs at least one episode, got {episodes}.")
    envs = make_eval_envs(env_id, episodes)
    try:
        obs, _ = envs.reset(seed=seed)
        returns = np.zeros(episodes)
        done = np.zeros(episodes, dtype=bool)
        t = 0
        while not done.all():
            action = agent.act(torch.as_tensor(obs, dtype=torch.float32, device=agent.device), deterministic=True)
            action = action.cpu().numpy()
            check_mode_action(action, ~done, t, seed)
            obs, reward, terminated, truncated, _ = envs.step(action)
            check_eval_env_step(env_id, reward, obs, ~done, t, seed)
            returns += np.where(done, 0.0, reward)
            done |= terminated | truncated  # the first episode of each copy is the one that counts
            t += 1
    finally:
        envs.close()
    return returns

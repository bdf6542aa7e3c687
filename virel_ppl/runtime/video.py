"""An episode of the mode policy rendered to an animated GIF (``virel_ppl evaluate --video``)."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from virel_ppl.runtime.envs import make_env
from virel_ppl.runtime.evaluation import Actor


def record_video(agent: Actor, env_id: str, path: Path, seed: int = 0, max_frames: int = 1000) -> Path:
    """Render one episode with the mode action to an animated GIF.

    Raises ``RuntimeError`` naming the cause and its fix when the env cannot render here (MuJoCo without
    OpenGL/EGL, classic-control tasks without pygame); the env is closed first, so nothing is printed after it.
    """
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before the first render
    import imageio.v2 as imageio

    with _unraisable_silenced():  # a viewer that failed half-way complains in __del__: let it do so here, quietly
        env = None
        try:
            env = make_env(env_id, render_mode="rgb_array")
            obs, _ = env.reset(seed=seed)
            frames = [env.render()]
            message = None
        except Exception as err:  # rendering back-ends fail in many ways: report the cause with the fix
            message = _render_failure(env_id, env, err)
        if message is not None:
            if env is not None:
                try:
                    env.close()
                except Exception:
                    pass
            env = None
            gc.collect()
    if message is not None:
        raise RuntimeError(message)
    done = False
    while not done and len(frames) < max_frames:
        action = agent.act(torch.as_tensor(obs, dtype=torch.float32, device=agent.device)[None], deterministic=True)
        obs, _, terminated, truncated, _ = env.step(action[0].cpu().numpy())
        frames.append(env.render())
        done = terminated or truncated
    env.close()
    imageio.mimsave(path, frames[::2], duration=1 / 30)
    return path


def _render_failure(env_id: str, env, err: Exception) -> str:
    from gymnasium.error import DependencyNotInstalled

    cause = f"{type(err).__name__}: {err}"
    if isinstance(err, (DependencyNotInstalled, ImportError)):  # e.g. pygame for Pendulum-v1, CartPole-v1
        missing = getattr(err, "name", None) or ("pygame" if "pygame" in str(err) else None)
        what = f"{missing} is not installed" if missing else "a rendering package is missing"
        return f"Cannot render {env_id} here: {what} ({cause}). Returns are still reported."
    mujoco_task = env is None or hasattr(env.unwrapped, "mujoco_renderer")
    if mujoco_task:
        return (
            f"Cannot render {env_id} here ({cause}). MuJoCo needs OpenGL: install EGL (e.g. libegl1) and set "
            "MUJOCO_GL=egl, or OSMesa with MUJOCO_GL=osmesa. Returns are still reported."
        )
    return f"Cannot render {env_id} here ({cause}). Returns are still reported."


@contextmanager
def _unraisable_silenced() -> Iterator[None]:
    """Drop "Exception ignored in ..." reports (``sys.unraisablehook``) for the duration."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        sys.unraisablehook = hook

"""The trainer: config validation, clear errors, exact resume after Ctrl-C, the CLI, and a short learning run."""

import os
import signal
from dataclasses import replace

import gymnasium as gym
import helpers
import numpy as np
import pytest
import torch

from virel_ppl.cli import main
from virel_ppl.config import Config, ConfigError, SpaceError
from virel_ppl.runtime.logger import read_csv
from virel_ppl.train import Trainer, train

TINY = {**helpers.TINY, "eval_episodes": 2}


class NaNRewardEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), float("nan"), False, False, {}


gym.register("NaNReward-v0", entry_point=NaNRewardEnv, max_episode_steps=50)


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(env="HalfCheetah-v9"), ConfigError, "Did you mean HalfCheetah-v5"),
        (dict(env="CartPole-v1"), SpaceError, "continuous Box"),
        (dict(total_steps=0), ConfigError, "--total-steps must be a positive integer"),
        (dict(warmup_steps=-5), ConfigError, "--warmup-steps"),
        (dict(batch_size=512, buffer_size=100), ConfigError, "larger than --buffer-size"),
        (dict(algo="virl"), ConfigError, "Unknown algo 'virl'.*Did you mean virel"),
        (dict(guide="tanh"), ConfigError, "Unknown guide"),
        (dict(elbo="nope"), ConfigError, "Unknown elbo"),
        (dict(gamma=1.0), ConfigError, "--gamma"),
        (dict(alpha=0.0), ConfigError, "--alpha must be > 0"),
    ],
)
def test_bad_config_is_rejected_before_training(tmp_path, overrides, error, match):
    with pytest.raises(error, match=match):
        Trainer(replace(Config(**TINY), run_dir=tmp_path, **overrides))


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--env", "HalfCheeta-v5"], "error: Unknown Gymnasium environment 'HalfCheeta-v5'.*HalfCheetah-v5"),
        (["train", "--env", "CartPole-v1"], "error: TanhNormalGuide needs a continuous Box"),
        (["train", "--total-steps", "0"], "error: --total-steps must be a positive integer"),
        (["evaluate", "{tmp}"], "error: No checkpoint.pt in"),
        (["train", "--resume", "{tmp}"], "error: No checkpoint.pt in"),
        (
            ["train", "--env", "NaNReward-v0", "--total-steps", "10", "--warmup-steps", "5", "--batch-size", "4"]
            + ["--no-progress", "--no-tensorboard", "--run-dir", "{tmp}/run"],
            "error: NaNReward-v0 returned a non-finite reward",
        ),
    ],
)
def test_command_line_reports_bad_input_as_one_line(tmp_path, argv, match):
    # SystemExit with a message (not the ConfigError itself): Python prints it as one line and exits with 1
    with pytest.raises(SystemExit, match=match) as exit_info:
        main([arg.format(tmp=tmp_path) for arg in argv])
    assert isinstance(exit_info.value.code, str)


@pytest.mark.parametrize("warmup, batch, per_step", [(10, 8, 0.3), (4, 10, 0.25), (8, 8, 2.0), (0, 12, 1 / 3)])
def test_the_config_and_the_trainer_follow_one_update_schedule(warmup, batch, per_step):
    """Config.first_update_step (which validation uses) names the step of the trainer's first update, and the
    trainer makes updates_per_step updates per step from max(warmup, batch) on."""
    total = 50
    cfg = Config(env="Pendulum-v1", total_steps=total, **{**TINY, "hidden": (8, 8)})
    cfg = replace(cfg, warmup_steps=warmup, batch_size=batch, updates_per_step=per_step)
    trainer = Trainer(cfg)
    steps: list[int] = []
    inner = trainer.agent.update
    trainer.agent.update = lambda b, step: steps.append(step) or inner(b, step=step)
    for _ in range(total):
        trainer.collect()
        trainer.update()
    start = max(warmup, batch)
    assert steps[0] == cfg.first_update_step() >= start
    assert len(steps) == int((total - start + 1) * per_step + 1e-9)


def test_nan_reward_stops_with_a_clear_error(tmp_path):
    cfg = Config(env="NaNReward-v0", total_steps=10, run_dir=tmp_path, **{**TINY, "warmup_steps": 5, "batch_size": 4})
    with pytest.raises(ValueError, match="non-finite reward"):
        train(cfg)


def _interrupt_at(step):
    def hook(trainer, s):
        if s == step:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    return hook


def test_resume_after_ctrl_c_matches_an_uninterrupted_run(tmp_path):
    cfg = Config(env="InvertedPendulum-v5", total_steps=450, seed=3, **TINY)
    straight = train(replace(cfg, run_dir=tmp_path / "straight"))
    assert straight.steps == 450 and not straight.interrupted
    stopped = train(replace(cfg, run_dir=tmp_path / "resumed"), hooks=[_interrupt_at(275)])
    assert stopped.interrupted and stopped.steps == 275
    resumed = train(resume=tmp_path / "resumed")
    assert not resumed.interrupted and resumed.steps == 450

    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    for part in ("policy", "critic"):
        for k, v in a["agent"][part].items():
            assert torch.equal(v, b["agent"][part][k]), (part, k)
    for k in ("obs", "actions", "rewards", "terminated"):
        assert torch.equal(a["replay"][k], b["replay"][k]), k
    for k in ("index", "rows"):  # next_obs, where it is not the next row's obs
        assert torch.equal(a["replay"]["next_obs_packed"][k], b["replay"]["next_obs_packed"][k]), k
    assert np.array_equal(a["obs"], b["obs"]) and a["episodes"] == b["episodes"]
    for stream in ("eval", "train", "episodes"):
        assert read_csv(tmp_path / "straight" / f"{stream}.csv") == read_csv(tmp_path / "resumed" / f"{stream}.csv")


def test_same_seed_same_run_and_different_seed_different_run(tmp_path):
    cfg = Config(env="Pendulum-v1", total_steps=250, **TINY)
    r1 = train(replace(cfg, run_dir=tmp_path / "a"))
    r2 = train(replace(cfg, run_dir=tmp_path / "b"))
    r3 = train(replace(cfg, run_dir=tmp_path / "c", seed=1))
    assert read_csv(r1.run_dir / "train.csv") == read_csv(r2.run_dir / "train.csv")
    assert read_csv(r1.run_dir / "train.csv") != read_csv(r3.run_dir / "train.csv")


def test_cli_train_then_evaluate(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "--env", "Pendulum-v1", "--total-steps", "300", "--run-dir", str(run_dir)]
    args += ["--hidden", "32", "32", "--batch-size", "32", "--warmup-steps", "100", "--eval-every", "150"]
    args += ["--eval-episodes", "2", "--no-progress", "--no-tensorboard"]
    main(args)
    out = capsys.readouterr().out
    assert "finished after 300 steps" in out and "learning_curve.png" in out
    for name in ("config.json", "train.csv", "eval.csv", "episodes.csv", "learning_curve.png", "checkpoint.pt"):
        assert (run_dir / name).exists(), name
    assert [row for row in read_csv(run_dir / "eval.csv")["step"]] == [150.0, 300.0]
    main(["evaluate", str(run_dir), "--episodes", "2"])
    assert "Pendulum-v1 (virel): return" in capsys.readouterr().out
    # resume with a larger budget continues the same run directory
    main(["train", "--resume", str(run_dir), "--total-steps", "450", "--no-progress"])
    assert read_csv(run_dir / "eval.csv")["step"] == [150.0, 300.0, 450.0]


@pytest.mark.slow
def test_short_run_learns_pendulum(tmp_path):
    """Swing-up return rises from a random policy's (≈ −1200 to −1600) to well above it within 5000 steps."""
    cfg = Config(
        env="Pendulum-v1",
        total_steps=5000,
        warmup_steps=500,
        hidden=(64, 64),
        batch_size=128,
        eval_every=1000,
        eval_episodes=3,
        progress=False,
        tensorboard=False,
        run_dir=tmp_path,
    )
    train(cfg)
    returns = read_csv(tmp_path / "eval.csv")["return_mean"]
    print("eval returns:", returns)
    assert returns[-1] > returns[0] + 500 and returns[-1] > -700

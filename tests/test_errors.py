"""Bad input through the command line: one ``error:`` line that says why and what to change, never a silent
wrong result or a traceback; and advice in messages that works when followed."""

import importlib.util
import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from virel_ppl.cli import main
from virel_ppl.runtime.logger import read_csv

#: Flags of a short CPU run (as helpers.TINY): updates start at step max(--warmup-steps, --batch-size) = 20.
TINY_ARGS = ["--hidden", "16", "--batch-size", "8", "--warmup-steps", "20", "--eval-episodes", "1"]
TINY_ARGS += ["--log-every", "10", "--eval-every", "10000", "--no-progress", "--no-tensorboard", "--threads", "1"]


def cli_error(argv: list[str]) -> str:
    """The message ``main(argv)`` exits with; fails unless it is one ``error:`` line (exit status 1)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message


class NaNInEvaluationEnv(gym.Env):
    """Finite during training; a NaN reward in episodes reset with an evaluation seed (≥ 10 000)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    evaluating = False

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:  # the vector env's automatic resets pass none: keep the mode
            self.evaluating = seed >= 10_000
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), float("nan") if self.evaluating else 0.0, False, False, {}


class UnboundedActionEnv(gym.Env):
    """A Box action space (−inf, inf): reward −(a − 0.5)², so the action that matters lies in [−1, 1]."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        assert np.isfinite(action).all()
        return np.zeros(2, np.float32), -float((action[0] - 0.5) ** 2), False, False, {}


gym.register("NaNInEvaluation-v0", entry_point=NaNInEvaluationEnv, max_episode_steps=10)
gym.register("UnboundedAction-v0", entry_point=UnboundedActionEnv, max_episode_steps=10)


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory):
    """A finished 40-step Pendulum run with a checkpoint."""
    run_dir = tmp_path_factory.mktemp("errors") / "pendulum"
    main(["train", "--env", "Pendulum-v1", "--total-steps", "40", "--run-dir", str(run_dir), *TINY_ARGS])
    return run_dir


# --- runs that could never learn ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, first_update",
    [
        (["--batch-size", "5000", "--total-steps", "1500"], 5000),  # batch larger than the run
        (["--warmup-steps", "100", "--batch-size", "32", "--total-steps", "99"], 100),  # run shorter than warm-up
        # 0.25 updates per step from step 100 on: credit 0.25, 0.5, 0.75, 1 → the first update at step 103
        (["--warmup-steps", "100", "--batch-size", "32", "--updates-per-step", "0.25", "--total-steps", "102"], 103),
    ],
)
def test_a_run_that_can_never_update_is_refused_at_start_up(tmp_path, flags, first_update):
    run_dir = tmp_path / "run"
    args = ["train", "--env", "Pendulum-v1", "--hidden", "16", "--eval-episodes", "1", "--no-progress"]
    message = cli_error(args + ["--no-tensorboard", "--run-dir", str(run_dir), *flags])
    assert "No gradient update would happen" in message
    assert f"first update at step {first_update}" in message and f"--total-steps to at least {first_update}" in message
    assert not run_dir.exists()  # refused before anything is written


def test_a_run_that_ends_at_its_first_update_is_accepted(tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "--env", "Pendulum-v1", "--total-steps", "103", "--run-dir", str(run_dir), *TINY_ARGS]
    main(args + ["--warmup-steps", "100", "--updates-per-step", "0.25", "--log-every", "103"])
    assert read_csv(run_dir / "train.csv")["step"] == [103.0]  # exactly one update, at the last step


# --- NaN in evaluation ----------------------------------------------------------------------------------------


def test_nan_during_evaluation_in_training_is_an_error_not_a_nan_in_eval_csv(tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "--env", "NaNInEvaluation-v0", "--total-steps", "30", "--run-dir", str(run_dir), *TINY_ARGS]
    message = cli_error(args)
    assert "NaNInEvaluation-v0 returned a non-finite reward" in message and "evaluation step 0" in message
    evals = read_csv(run_dir / "eval.csv") if (run_dir / "eval.csv").exists() else {}
    assert not any(math.isnan(v) for v in evals.get("return_mean", []))


def test_nan_during_evaluate_command_is_an_error(pendulum_run, tmp_path, capsys):
    diverged = tmp_path / "diverged"
    diverged.mkdir()
    state = torch.load(pendulum_run / "checkpoint.pt", weights_only=False)
    for tensor in state["agent"]["policy"].values():
        tensor.fill_(float("nan"))  # what a diverged guide looks like
    torch.save(state, diverged / "checkpoint.pt")
    message = cli_error(["evaluate", str(diverged), "--episodes", "2"])
    assert "mode action is not finite" in message and "--policy-lr" in message
    assert "nan" not in capsys.readouterr().out


# --- tracebacks that are one line now ---------------------------------------------------------------------------


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_device_mps_without_mps_is_one_line(pendulum_run, tmp_path):
    args = ["train", "--env", "Pendulum-v1", "--total-steps", "40", "--device", "mps", *TINY_ARGS]
    message = cli_error(args + ["--run-dir", str(tmp_path / "run")])
    assert "--device mps" in message and "no MPS device" in message and "--device cpu" in message
    message = cli_error(["evaluate", str(pendulum_run), "--device", "mps", "--episodes", "1"])
    assert "no MPS device" in message
    message = cli_error(["diagnose", str(pendulum_run), "--device", "mps", "--num-samples", "10"])
    assert "no MPS device" in message


def test_evaluate_zero_episodes_is_one_line(pendulum_run):
    message = cli_error(["evaluate", str(pendulum_run), "--episodes", "0"])
    assert "--episodes must be a positive integer, got 0" in message


@pytest.mark.parametrize(
    "env_id, module, names, instead",
    [
        ("InvertedPendulum-v2", "mujoco_py", "mujoco-py", "InvertedPendulum-v5"),
        ("Pusher-v4", None, "mujoco<3", "Pusher-v5"),
        ("LunarLanderContinuous-v3", "Box2D", "Box2D", None),
    ],
)
def test_an_env_whose_dependency_is_missing_names_the_package(tmp_path, env_id, module, names, instead):
    if module is not None and importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    if module is None and int(importlib.metadata.version("mujoco").split(".")[0]) < 3:
        pytest.skip("mujoco<3 is installed here")
    message = cli_error(["train", "--env", env_id, *TINY_ARGS, "--run-dir", str(tmp_path / "run")])
    assert f"Cannot build {env_id} here" in message and names in message
    if instead is not None:
        assert f"Use {instead}, which builds here." in message


def test_typo_hint_suggests_only_envs_that_build_here(tmp_path):
    message = cli_error(["train", "--env", "InvertedPendulm-v5", *TINY_ARGS, "--run-dir", str(tmp_path / "run")])
    assert "Did you mean InvertedPendulum-v5" in message
    assert "InvertedPendulum-v2" not in message  # needs mujoco-py


# --- advice that works ----------------------------------------------------------------------------------------


def test_unbounded_action_space_advice_works_when_followed(tmp_path, monkeypatch, capsys):
    args = ["train", "--total-steps", "30", *TINY_ARGS]
    message = cli_error(args + ["--env", "UnboundedAction-v0", "--run-dir", str(tmp_path / "refused")])
    assert "must be bounded" in message and "virel_ppl.runtime.envs.BoundedActions(env, low, high)" in message
    # Follow the advice word for word: register the wrapped env in a module of one's own, pass module:id.
    (tmp_path / "my_bounded_tasks.py").write_text(
        "import gymnasium as gym\n"
        "from virel_ppl.runtime.envs import BoundedActions\n"
        "gym.register('MyTask-bounded-v0',\n"
        "             entry_point=lambda **kw: BoundedActions(gym.make('UnboundedAction-v0', **kw), -1.0, 1.0))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "run"
    main(args + ["--env", "my_bounded_tasks:MyTask-bounded-v0", "--run-dir", str(run_dir)])
    assert "Run finished after 30 steps" in capsys.readouterr().out
    assert read_csv(run_dir / "train.csv")["step"] == [20.0, 30.0]  # updates from step 20
    actions = torch.load(run_dir / "checkpoint.pt", weights_only=False)["replay"]["actions"]
    assert actions.abs().max() <= 1.0  # acted inside the declared bounds


def test_categorical_guide_picks_exact_enumeration_unless_told_otherwise(tmp_path, capsys):
    args = ["train", "--env", "CartPole-v1", "--guide", "categorical", "--total-steps", "30", *TINY_ARGS]
    main(args + ["--run-dir", str(tmp_path / "auto")])
    assert "Run finished after 30 steps" in capsys.readouterr().out
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["elbo"] == "auto"
    assert read_csv(tmp_path / "auto" / "train.csv")["step"] == [20.0, 30.0]
    # an explicit choice is kept: trace cannot train a categorical guide, and the message says what can
    message = cli_error(args + ["--elbo", "trace", "--run-dir", str(tmp_path / "trace")])
    assert "--elbo trace needs reparameterised samples" in message and "--elbo enum" in message
    # --help says what the default does
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.replace("│", " ").split())  # tyro < 0.9 wraps inside its box
    assert "auto (the default) is enum for a discrete guide (--guide categorical) and trace otherwise" in help_text


@pytest.mark.parametrize("elbo", ["renyi", "iwae"])
def test_pseudo_likelihood_with_a_renyi_bound_is_refused_and_the_advice_trains(tmp_path, elbo):
    """pseudo_likelihood weighs each observed action by its own exp(R/ε): a Rényi/IWAE bound, which needs one scale
    for all sites, crashed at the first update; now one line at start-up, and its advice (--elbo trace) trains."""
    args = ["train", "--env", "Pendulum-v1", "--algo", "pseudo_likelihood", "--total-steps", "30", *TINY_ARGS]
    message = cli_error(args + ["--elbo", elbo, "--run-dir", str(tmp_path / elbo)])
    assert f"--elbo {elbo}" in message and "use --elbo trace" in message
    assert not (tmp_path / elbo).exists()  # refused before anything is written
    main(args + ["--elbo", "trace", "--run-dir", str(tmp_path / "trace")])
    rows = read_csv(tmp_path / "trace" / "train.csv")
    assert rows["step"] == [20, 30] and all(math.isfinite(v) for v in rows["actor/loss"])

"""Nothing lost, nothing mislabelled: what a run records is what it did, across stops, resumes, torn files
and guides from code. Every case goes through the command line or the entry point a user calls."""

from __future__ import annotations

import csv
import json
import re
import runpy
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import TINY_ARGS, StopAt, tiny_train

from virel_ppl.cli import main
from virel_ppl.config import Config
from virel_ppl.runtime.checkpoints import CHECKPOINT, CheckpointError
from virel_ppl.runtime.logger import read_csv
from virel_ppl.train import train

REPO = Path(__file__).resolve().parents[1]


def cli_error(argv) -> str:
    """The message ``main(argv)`` exits with; fails unless it is one ``error:`` line."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    message = info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message


# --- TensorBoard across resumes ---------------------------------------------------------------------------------------


def tb_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for a run (``EventAccumulator`` applies the purges of a resumed writer)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


class DieAt:
    """What a kill does: the run ends at this step, after its logs, without a checkpoint of this step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, trainer, step: int) -> None:
        if step == self.step:
            raise RuntimeError("killed")


def test_tensorboard_after_a_stop_a_kill_and_two_resumes_holds_what_an_uninterrupted_run_holds(tmp_path):
    cfg = Config(
        env="Pendulum-v1", total_steps=300, hidden=(8,), batch_size=16, warmup_steps=50, eval_every=60,
        eval_episodes=1, log_every=20, checkpoint_every=100, progress=False, tensorboard=True, threads=1,
    )  # fmt: skip
    train(replace(cfg, run_dir=tmp_path / "straight"))
    run_dir = tmp_path / "stopped"
    assert train(replace(cfg, run_dir=run_dir), hooks=[StopAt(140)]).steps == 140  # checkpoint at 140
    with pytest.raises(RuntimeError, match="killed"):
        train(resume=run_dir, hooks=[DieAt(260)])  # logged up to 260, checkpoint at 200
    train(resume=run_dir)
    want, got = tb_scalars(tmp_path / "straight"), tb_scalars(run_dir)
    assert sorted(want) == sorted(got) and "eval/return_mean" in want
    for tag in want:
        assert got[tag] == want[tag], tag  # no step missing (140, 200 were) and none twice (201..260)
    steps = [s for s, _ in want["train/critic/q_loss"]]
    assert steps == list(range(60, 301, 20))  # the log_every grid from the first update on: worked out by hand
    assert read_csv(run_dir / "train.csv") == read_csv(tmp_path / "straight" / "train.csv")


# --- the recorded budget is the run's ---------------------------------------------------------------------------------


def test_a_budget_below_the_steps_already_run_is_refused_and_config_json_stays_true(run_copy):
    before = (run_copy / "config.json").read_text()
    message = cli_error(["train", "--resume", run_copy, "--total-steps", "60"])
    assert "--total-steps 60 is below the 120 steps" in message and "--total-steps 120 or more" in message
    assert (run_copy / "config.json").read_text() == before
    assert json.loads(before)["total_steps"] == 120


# --- torn CSV lines ---------------------------------------------------------------------------------------------------


def test_a_torn_last_line_is_dropped_on_resume_with_a_warning(pendulum_run, run_copy, tmp_path, capsys):
    with open(run_copy / "eval.csv", "a", newline="") as fh:
        fh.write("12")  # the start of a row, cut off by a kill or a full disk
    main(["train", "--resume", str(run_copy), "--total-steps", "180"])
    err = capsys.readouterr().err
    assert re.search(r"warning: .*eval\.csv: line 4 \('12'\) is cut off; dropped on resume", err), err
    ref = tmp_path / "ref"
    tiny_train(ref, total=180)
    assert (run_copy / "eval.csv").read_bytes() == (ref / "eval.csv").read_bytes()
    with open(run_copy / "eval.csv", newline="") as fh:
        assert [row[0] for row in csv.reader(fh)] == ["step", "60", "120", "180"]


def test_a_resume_by_code_that_logs_more_columns_keeps_every_value_under_its_name(run_copy, tmp_path):
    """train.csv as older code wrote it (no policy/entropy, columns in another order); resumed to 180 steps, each
    column holds what a straight run holds, and the new column is empty (NaN) in the rows written before it."""
    with open(run_copy / "train.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    older = [k for k in reversed(list(rows[0])) if k != "policy/entropy"]
    older.remove("step")
    with open(run_copy / "train.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", *older], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    main(["train", "--resume", str(run_copy), "--total-steps", "180"])
    ref = tmp_path / "ref"
    tiny_train(ref, total=180)
    resumed, straight = read_csv(run_copy / "train.csv"), read_csv(ref / "train.csv")
    assert list(resumed) == ["step", *older, "policy/entropy"]
    assert {k: resumed[k] for k in straight if k != "policy/entropy"} == {
        k: v for k, v in straight.items() if k != "policy/entropy"
    }
    before = [s <= 120 for s in straight["step"]]  # the checkpoint the resume loads is at 120
    assert [np.isnan(h) for h in resumed["policy/entropy"]] == before
    assert [h for h, old in zip(resumed["policy/entropy"], before) if not old] == [
        h for h, old in zip(straight["policy/entropy"], before) if not old
    ]


@pytest.mark.parametrize("torn", ["12", "120,-1200.5", "120,-1200.5,0.0"])  # the last: digits may be missing
def test_report_and_diagnose_read_past_a_torn_last_line(run_copy, tmp_path, capsys, torn):
    with open(run_copy / "eval.csv", newline="") as fh:
        final = float(list(csv.DictReader(fh))[-1]["return_mean"])  # the last complete row's
    with open(run_copy / "eval.csv", "a", newline="") as fh:
        fh.write(torn)  # no line break: the write was cut off
    out = tmp_path / "report"
    main(["report", str(run_copy), "--out", str(out), "--n-boot", "50"])
    err = capsys.readouterr().err
    assert "warning: " in err and "is cut off; read past it" in err and "Traceback" not in err
    assert f"| Pendulum-v1 · virel | 1 | 120 | {final:.1f} |" in (out / "report.md").read_text()


# --- diagnose's ε -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def beta_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("beta") / "run"
    tiny_train(run_dir, "--algo", "beta")
    return run_dir


def _train_csv_eps(run_dir: Path) -> list[str]:
    with open(run_dir / "train.csv", newline="") as fh:
        return [row["eps"] for row in csv.DictReader(fh)]


def test_diagnose_uses_the_last_complete_row_or_says_it_cannot_tell(beta_run, tmp_path, capsys):
    run = Path(shutil.copytree(beta_run, tmp_path / "run"))
    eps = _train_csv_eps(run)
    args = ["diagnose", str(run), "--num-samples", "100", "--num-states", "1", "--states", "replay"]
    with open(run / "train.csv", "a", newline="") as fh:
        fh.write("140,0.5")  # torn
    main(args)
    table = (run / "posterior" / "action_posterior.md").read_text()
    assert f"ε = {float(eps[-1]):.4g}," in table  # the last complete row's, not 1 (config.alpha)
    assert "is cut off; read past it" in capsys.readouterr().err
    # a logged ε of 0 (an underflow) is not replaced by 1: one line that says to pass --eps
    lines = (run / "train.csv").read_text().splitlines()[:-1]
    header = lines[0].split(",")
    last = lines[-1].split(",")
    last[header.index("eps")] = "0.0"
    (run / "train.csv").write_text("\r\n".join([*lines[:-1], ",".join(last)]) + "\r\n")
    message = cli_error(args)
    assert "The last ε logged" in message and "is 0" in message and "--eps" in message
    # no row at all: beta sets ε from the data, so diagnose cannot tell it
    (run / "train.csv").write_text(lines[0] + "\r\n")
    message = cli_error(args)
    assert "Cannot tell the run's ε" in message and "beta" in message and "--eps" in message
    main([*args, "--eps", "0.25"])
    assert "ε = 0.25," in (run / "posterior" / "action_posterior.md").read_text()


# --- a guide and an ELBO from code ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def custom_guide_run(tmp_path_factory):
    """examples/custom_guide.py as a user runs it (``python examples/custom_guide.py ...``), 120 steps."""
    run_dir = tmp_path_factory.mktemp("custom") / "G"
    argv = ["custom_guide.py", "--env", "Pendulum-v1", "--total-steps", "120", "--eval-every", "60", *TINY_ARGS]
    saved = sys.argv
    sys.argv = [*argv, "--run-dir", str(run_dir)]
    try:
        with pytest.warns(RuntimeWarning, match="ScaledRenyiELBO has no differentiable_loss"):
            runpy.run_path(str(REPO / "examples" / "custom_guide.py"), run_name="__main__")
    finally:
        sys.argv = saved
    return run_dir


def test_a_run_with_a_guide_and_elbo_from_code_records_them(custom_guide_run):
    config = json.loads((custom_guide_run / "config.json").read_text())
    assert config["guide"] == f"{REPO / 'examples' / 'custom_guide.py'}:SharedStdTanhNormal"
    assert config["elbo"] == "virel_ppl.inference.divergences:ScaledRenyiELBO"
    saved = torch.load(custom_guide_run / CHECKPOINT, weights_only=False)
    assert saved["config"]["guide"] == config["guide"] and "log_std" in saved["agent"]["policy"]


def test_evaluate_and_diagnose_rebuild_a_guide_from_code(custom_guide_run, tmp_path, capsys):
    run = Path(shutil.copytree(custom_guide_run, tmp_path / "G"))
    main(["evaluate", str(run), "--episodes", "1"])
    assert "Pendulum-v1 (virel): return" in capsys.readouterr().out
    main(["diagnose", str(run), "--num-samples", "100", "--num-states", "1"])
    assert (run / "posterior" / "action_posterior.md").exists()
    from virel_ppl.runtime.checkpoints import load_agent

    agent, _ = load_agent(run)  # the rebuilt guide holds the trained parameters
    saved = torch.load(run / CHECKPOINT, weights_only=False)["agent"]["policy"]
    assert type(agent.policy).__name__ == "SharedStdTanhNormal"
    assert torch.equal(agent.policy.log_std.detach(), saved["log_std"])


def test_the_command_line_cannot_resume_an_elbo_object_and_says_so_in_one_line(custom_guide_run, tmp_path):
    run = Path(shutil.copytree(custom_guide_run, tmp_path / "G"))
    before = (run / "config.json").read_text()
    message = cli_error(["train", "--resume", run, "--total-steps", "160"])
    assert "ELBO object virel_ppl.inference.divergences:ScaledRenyiELBO from code" in message
    assert "train(resume=" in message
    assert (run / "config.json").read_text() == before


def test_python_resumes_a_run_from_code_with_the_same_objects(custom_guide_run, tmp_path):
    from virel_ppl.inference.divergences import ScaledRenyiELBO

    run = Path(shutil.copytree(custom_guide_run, tmp_path / "G"))
    module = runpy.run_path(str(REPO / "examples" / "custom_guide.py"))  # not as __main__: only the class
    guide = module["SharedStdTanhNormal"]
    with pytest.raises(CheckpointError, match="trained with the guide .*SharedStdTanhNormal, not"):
        train(
            resume=run, overrides={"total_steps": 160}, policy_factory=lambda o, b: _Other(),
            elbo=ScaledRenyiELBO(alpha=0.5, num_particles=8),
        )  # fmt: skip
    with pytest.warns(RuntimeWarning):
        result = train(
            resume=run, overrides={"total_steps": 160}, policy_factory=lambda o, b: guide(o, b, hidden=(8,)),
            elbo=ScaledRenyiELBO(alpha=0.5, num_particles=8),
        )  # fmt: skip
    assert result.steps == 160 and read_csv(run / "eval.csv")["step"] == [60.0, 120.0, 160.0]


class _Other(torch.nn.Module):
    """Some other guide class (never built: the resume refuses it first)."""


def test_a_guide_that_cannot_be_imported_is_one_line(custom_guide_run, tmp_path):
    run = Path(shutil.copytree(custom_guide_run, tmp_path / "G"))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "guide": "no_such_module_here:Guide"}))
    state = torch.load(run / CHECKPOINT, weights_only=False)
    state["config"]["guide"] = "no_such_module_here:Guide"
    torch.save(state, run / CHECKPOINT)
    message = cli_error(["evaluate", run, "--episodes", "1"])
    assert "trained with the guide no_such_module_here:Guide from code, which cannot be imported here" in message


def test_report_keeps_a_run_with_a_guide_from_code_apart_from_stock_runs(custom_guide_run, pendulum_run, tmp_path):
    out = tmp_path / "report"
    main(["report", str(custom_guide_run), str(pendulum_run), "--out", str(out), "--n-boot", "50"])
    md = (out / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| Pendulum-v1")]
    groups = {line.split("|")[1].strip() for line in rows}
    assert "Pendulum-v1 · virel" in groups  # the stock run alone
    custom = f"Pendulum-v1 · virel · guide {REPO / 'examples' / 'custom_guide.py'}:SharedStdTanhNormal"
    assert custom + " · elbo virel_ppl.inference.divergences:ScaledRenyiELBO" in groups
    assert "| Pendulum-v1 · virel | 1 |" in md  # one seed each, not two seeds of one group


# --- one line, not a traceback ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, says", [(["--threads", "0"], "--threads must be a positive integer"), (["--seed", "-1"], "--seed must be")]
)
def test_bad_threads_or_seed_is_one_line(tmp_path, flags, says):
    argv = ["train", "--env", "Pendulum-v1", "--total-steps", "60", *TINY_ARGS, *flags, "--run-dir", tmp_path / "r"]
    assert says in cli_error(argv)
    assert not (tmp_path / "r").exists()


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    save, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):  # what torch.save does when the disk fills: RuntimeError, a partial file
        calls.append(f)
        if len(calls) == 2:
            Path(f).write_bytes(b"PK partial")
            raise RuntimeError(
                "[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file data/7: file "
                "write failed"
            )
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    run_dir = tmp_path / "run"
    message = cli_error(["train", "--env", "Pendulum-v1", "--total-steps", "120", *TINY_ARGS, "--run-dir", run_dir])
    monkeypatch.undo()
    assert f"Cannot write the checkpoint {run_dir / CHECKPOINT}" in message and "file write failed" in message
    assert not (run_dir / "checkpoint.tmp").exists()
    assert torch.load(run_dir / CHECKPOINT, weights_only=False)["step"] == 40  # the one before is intact


def test_report_on_an_invalid_config_json_is_one_line(run_copy, tmp_path):
    (run_copy / "config.json").write_text('{"env": "Pendulum-v1", "alg')  # cut off
    message = cli_error(["report", run_copy, "--out", tmp_path / "out"])
    assert f"{run_copy / 'config.json'} is not valid JSON" in message
    assert not (tmp_path / "out").exists()


# --- the NaN message says what was not finite -------------------------------------------------------------------------


class NaNObservationEnv(gym.Env):
    """Reward 0 (finite) and a NaN in entry 1 of the observation from the third step on."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.zeros(3, np.float32)
        if self.t >= 3:
            obs[1] = np.nan
        return obs, 0.0, False, False, {}


gym.register("NaNObservation-v0", entry_point=NaNObservationEnv, max_episode_steps=50)


def test_a_non_finite_observation_is_named_not_the_reward(tmp_path):
    argv = ["train", "--env", "NaNObservation-v0", "--total-steps", "60", *TINY_ARGS, "--run-dir", tmp_path / "r"]
    message = cli_error(argv)
    assert "returned a non-finite observation (entry [1] = nan) at step 2" in message
    assert "reward" not in message


def test_the_first_code_block_of_the_readme_runs(capsys):
    text = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # as a reader would paste it
    printed = capsys.readouterr().out
    mean = float(re.search(r"tensor\(([-0-9.e]+)\)", printed).group(1))
    assert abs(mean - 0.5) < 0.1  # the critic's best action, which the target exp(Q/ε) concentrates on (ε = 0.01)


# --- one command line, one set of flags -------------------------------------------------------------------------------


def test_the_main_job_takes_the_flags_of_virel_ppl_train(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    argv = ["mujoco_svi.py", "--preset", "paper", "--env", "Pendulum-v1", "--total-steps", "60", "--eval-every", "60"]
    monkeypatch.setattr(sys, "argv", [*argv, *TINY_ARGS, "--run-dir", str(run_dir)])
    runpy.run_path(str(REPO / "examples" / "mujoco_svi.py"), run_name="__main__")
    assert "finished after 60 steps" in capsys.readouterr().out
    config = json.loads((run_dir / "config.json").read_text())
    # App. I's values from the preset (learning rates 3e-4, beta's λ = 4e-3 for Pendulum), typed flags on top
    assert (config["policy_lr"], config["critic_lr"], config["beta_scale"]) == (3e-4, 3e-4, 4e-3)
    assert (config["hidden"], config["batch_size"], config["eval_every"]) == ([8], 16, 60)

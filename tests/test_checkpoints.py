"""Nothing lost on any stop or mistake: run-directory guard, checkpoint rotation and errors, resume rules, SIGTERM and
double Ctrl-C, unwritable directories, rendering failures, and no import circle. Every case goes through the command
line (``main([...])`` or a subprocess running it)."""

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_ARGS, tiny_train

from virel_ppl.cli import main
from virel_ppl.runtime import envs
from virel_ppl.runtime.checkpoints import CHECKPOINT, PREVIOUS, RESUMABLE
from virel_ppl.runtime.logger import read_csv

ROOT = Path(__file__).parents[1]


def step_of(path):
    return torch.load(path, weights_only=False)["step"]


def run_cli_subprocess(argv, prelude="", env=None):
    """``virel_ppl.cli.main(argv)`` in a fresh interpreter after running ``prelude``; returns the CompletedProcess."""
    code = f"{prelude}\nfrom virel_ppl.cli import main\nmain({[str(a) for a in argv]!r})\n"
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, cwd=ROOT)


# --- 1. a new run into a directory that holds one --------------------------------------------------------------------


def test_new_run_into_a_run_directory_is_refused_and_overwrite_starts_clean(run_copy, capsys):
    before = read_csv(run_copy / "eval.csv")
    assert before["step"] == [60.0, 120.0]
    with pytest.raises(SystemExit, match=r"error: .* already holds a run .*--resume .*--run-dir.*--overwrite"):
        tiny_train(run_copy, env="InvertedPendulum-v5", total=90, eval_every=45)
    assert read_csv(run_copy / "eval.csv") == before  # nothing touched
    assert step_of(run_copy / CHECKPOINT) == 120

    tiny_train(run_copy, "--overwrite", env="InvertedPendulum-v5", total=90, eval_every=45)
    assert read_csv(run_copy / "eval.csv")["step"] == [45.0, 90.0]  # no Pendulum rows survive
    assert torch.load(run_copy / CHECKPOINT, weights_only=False)["config"]["env"] == "InvertedPendulum-v5"
    assert step_of(run_copy / PREVIOUS) == 80  # of the new run: checkpoints at 40, 80 and the end, 90
    assert "finished after 90 steps" in capsys.readouterr().out


# --- 2. corrupt checkpoints: one line, rotation, fallback -------------------------------------------------------------


def test_checkpoints_rotate(pendulum_run):
    assert step_of(pendulum_run / CHECKPOINT) == 120 and step_of(pendulum_run / PREVIOUS) == 80
    assert not (pendulum_run / "checkpoint.tmp").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "{run}", "--episodes", "1"],
        ["diagnose", "{run}", "--num-samples", "48"],
        ["train", "--resume", "{run}"],
    ],
)
def test_a_corrupt_checkpoint_without_a_previous_one_is_one_error_line(run_copy, command):
    (run_copy / PREVIOUS).unlink()
    data = (run_copy / CHECKPOINT).read_bytes()
    (run_copy / CHECKPOINT).write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    with pytest.raises(SystemExit, match=r"error: .*checkpoint\.pt cannot be read .*truncated or corrupt") as info:
        main([arg.format(run=run_copy) for arg in command])
    assert isinstance(info.value.code, str) and "\n" not in info.value.code


def test_resume_falls_back_to_the_previous_checkpoint_and_says_how_many_steps_are_lost(run_copy, capsys):
    (run_copy / CHECKPOINT).write_bytes(b"PK\x03\x04 not really a zip")
    main(["train", "--resume", str(run_copy), "--total-steps", "160"])
    captured = capsys.readouterr()
    # checkpoints at 40, 80, 120: the run logged up to step 120 and falls back to step 80
    assert "warning: " in captured.err and "from step 80" in captured.err and "40 steps are lost" in captured.err
    assert "finished after 160 steps" in captured.out
    assert read_csv(run_copy / "train.csv")["step"] == [60.0, 80.0, 100.0, 120.0, 140.0, 160.0]
    assert step_of(run_copy / CHECKPOINT) == 160


def test_after_a_fallback_the_unreadable_checkpoint_is_replaced_not_kept_as_the_previous_one(run_copy, capsys):
    (run_copy / CHECKPOINT).write_bytes(b"garbage")
    main(["train", "--resume", str(run_copy), "--total-steps", "120"])  # from step 80; one checkpoint, at 120
    assert step_of(run_copy / CHECKPOINT) == 120 and step_of(run_copy / PREVIOUS) == 80


def test_evaluate_falls_back_to_the_previous_checkpoint_with_a_warning(run_copy, capsys):
    (run_copy / CHECKPOINT).write_bytes(b"garbage")
    main(["evaluate", str(run_copy), "--episodes", "1"])
    captured = capsys.readouterr()
    assert "Pendulum-v1 (virel): return" in captured.out
    assert "warning: " in captured.err and "checkpoint.prev.pt from step 80" in captured.err


def test_train_with_a_config_and_resume_applies_only_resumable_fields(run_copy):
    """What a sweep does on restoring a trial: ``train(config, resume=run_dir)``."""
    from dataclasses import replace

    from virel_ppl.config import Config
    from virel_ppl.runtime.checkpoints import CheckpointError
    from virel_ppl.train import train

    config = Config.from_dict(torch.load(run_copy / CHECKPOINT, weights_only=False)["config"])
    with pytest.raises(CheckpointError, match=r"--critic-lr \(0\.001 → 0\.01\)"):
        train(replace(config, critic_lr=0.01, total_steps=160), resume=run_copy)
    result = train(replace(config, total_steps=160, run_dir=None), resume=run_copy)
    assert result.steps == 160 and not result.interrupted


# --- 3. resume: every typed flag applied, changes to the task, algorithm or networks refused ------------------------


def test_resume_applies_typed_flags_even_when_they_equal_the_default(run_copy):
    # 250 is --log-every's default; the run was made with 20. Repeating the saved --env is allowed.
    main(["train", "--resume", str(run_copy), "--total-steps", "200", "--log-every", "250", "--env", "Pendulum-v1"])
    assert read_csv(run_copy / "train.csv")["step"] == [60.0, 80.0, 100.0, 120.0]  # none at 140, 160, 180, 200
    saved = torch.load(run_copy / CHECKPOINT, weights_only=False)
    assert saved["step"] == 200 and saved["config"]["log_every"] == 250 and saved["config"]["total_steps"] == 200


@pytest.mark.parametrize(
    "argv, typed",
    [
        (["--log-every", "250", "--resume", "runs/x", "--overwrite"], {"log_every"}),  # not Config's: not counted
        (["--total_steps=5", "--hidden", "8", "8"], {"total_steps", "hidden"}),  # underscores, =, several values
        (["--no-progress", "--cuda-graph", "--alpha", "0.2"], {"progress", "cuda_graph", "alpha"}),  # bools both ways
        (["--", "8", "--env=Hopper-v5"], {"env"}),
    ],
)
def test_the_typed_flags_of_a_command_line_are_the_config_fields_it_names(argv, typed):
    from virel_ppl.cli import typed_config_fields

    assert typed_config_fields(argv) == typed


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--env", "InvertedPendulum-v5"], "--env"),  # the default env: dropped silently before
        (["--algo", "sac"], "--algo"),
        (["--guide", "gaussian"], "--guide"),
        (["--hidden", "16", "16"], "--hidden"),
        (["--reward-scale", "5"], "--reward-scale"),
        (["--batch-size", "256"], "--batch-size"),  # the default, but the run used 16
    ],
)
def test_resume_refuses_a_changed_task_algorithm_or_network(pendulum_run, flags, named):
    before = (pendulum_run / CHECKPOINT).read_bytes()
    with pytest.raises(SystemExit, match=r"^error: Cannot resume ") as info:
        main(["train", "--resume", str(pendulum_run), *flags])
    message = info.value.code
    assert "\n" not in message and f"{named} (" in message
    assert all(f"--{name.replace('_', '-')}" in message.split("only")[1] for name in RESUMABLE)
    assert (pendulum_run / CHECKPOINT).read_bytes() == before


@pytest.mark.parametrize(
    "flags, match",
    [(["--run-dir", "{tmp}/elsewhere"], "cannot be combined with --resume"), (["--overwrite"], "--overwrite starts")],
)
def test_resume_refuses_another_run_dir_or_overwrite(pendulum_run, tmp_path, flags, match):
    with pytest.raises(SystemExit, match=match):
        main(["train", "--resume", str(pendulum_run), *[f.format(tmp=tmp_path) for f in flags]])


# --- 4. signals: SIGTERM and Ctrl-C checkpoint and exit non-zero; a second one stops at once, plainly -------------


def signals_at(step, *signums):
    """Python run before the CLI in the subprocess: send ``signums`` to itself right after environment step ``step``."""
    return (
        "import os\nfrom virel_ppl import train as t\n_step = t.Trainer.collect\n"
        "def collect(self):\n    out = _step(self)\n"
        f"    if self.step == {step}:\n"
        + "".join(f"        os.kill(os.getpid(), {int(s)})\n" for s in signums)
        + "    return out\n"
        "t.Trainer.collect = collect\n"
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_finish_the_step_checkpoint_and_exit_non_zero(tmp_path, signum):
    run_dir = tmp_path / "run"
    argv = ["train", "--env", "Pendulum-v1", "--total-steps", "300", "--eval-every", "1000", *TINY_ARGS]
    proc = run_cli_subprocess([*argv, "--run-dir", run_dir], prelude=signals_at(70, signum))
    assert proc.returncode == 128 + signum, proc.stderr
    assert f"stopped by {signal.Signals(signum).name}" in proc.stdout and "Traceback" not in proc.stderr
    assert step_of(run_dir / CHECKPOINT) == 70 and step_of(run_dir / PREVIOUS) == 40
    main(["train", "--resume", str(run_dir), "--total-steps", "100"])
    assert step_of(run_dir / CHECKPOINT) == 100


def test_two_ctrl_c_within_milliseconds_say_plainly_that_no_checkpoint_was_written(tmp_path):
    run_dir = tmp_path / "run"
    argv = ["train", "--env", "Pendulum-v1", "--total-steps", "300", "--eval-every", "1000", *TINY_ARGS]
    proc = run_cli_subprocess([*argv, "--run-dir", run_dir], prelude=signals_at(70, signal.SIGINT, signal.SIGINT))
    assert proc.returncode == 130
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    assert "without writing a checkpoint" in proc.stderr and "from step 40 is intact" in proc.stderr
    assert step_of(run_dir / CHECKPOINT) == 40


def test_training_in_a_worker_thread_runs(tmp_path):
    """Signal handlers can only be set in the main thread: a run in another thread (e.g. a Tune trial) keeps the
    caller's handlers instead of failing."""
    import threading

    errors = []

    def run():
        try:
            tiny_train(tmp_path / "run", total=60, eval_every=60)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert errors == [] and step_of(tmp_path / "run" / CHECKPOINT) == 60


# --- unwritable run directory, failing checkpoint write, non-finite state --------------------------------------------


def test_a_run_dir_that_cannot_be_written_is_one_error_line(tmp_path, monkeypatch):
    run_dir = tmp_path / "locked"
    mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self == run_dir:
            raise PermissionError(13, "Permission denied", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)  # what chmod 555 on the parent does (root ignores chmod)
    with pytest.raises(SystemExit, match=rf"^error: Cannot write to the run directory {run_dir}: Permission denied"):
        tiny_train(run_dir)


def test_a_checkpoint_write_that_fails_mid_run_is_one_error_line_and_damages_nothing(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    save, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:  # the checkpoint at step 80
            Path(f).write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit, match=rf"^error: Cannot write the checkpoint {run_dir / CHECKPOINT}: No space left"):
        tiny_train(run_dir)
    monkeypatch.undo()
    assert step_of(run_dir / CHECKPOINT) == 40 and not (run_dir / "checkpoint.tmp").exists()


def test_a_log_write_that_fails_mid_run_is_one_error_line(tmp_path, monkeypatch):
    import builtins

    from virel_ppl.runtime import logger

    def full_disk(path, *args, **kwargs):
        if str(path).endswith("eval.csv"):
            raise OSError(28, "No space left on device", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(logger, "open", full_disk, raising=False)
    with pytest.raises(SystemExit, match=r"^error: cannot write .*eval\.csv: No space left on device\.$"):
        tiny_train(tmp_path / "run")
    assert step_of(tmp_path / "run" / CHECKPOINT) == 40  # written before the first evaluation, at 60


def _poison_optimiser_state(agent):
    """Set Adam's second moments to inf through the agent's state dict: parameters stay finite (the update is
    m/√v = 0), so only a check of the optimiser states can see it."""
    state = agent.state_dict()
    poisoned = []

    def walk(obj, path):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if isinstance(v, torch.Tensor) and k == "exp_avg_sq":
                    v.fill_(float("inf"))
                    poisoned.append(path)
                else:
                    walk(v, path + (k,))

    walk(state, ())
    assert poisoned
    agent.load_state_dict(state)


def test_no_checkpoint_is_written_from_a_non_finite_state(tmp_path, monkeypatch):
    from virel_ppl import train as train_module

    collect = train_module.Trainer.collect

    def poison_at_70(self):
        out = collect(self)
        if self.step == 70:
            _poison_optimiser_state(self.agent)
        return out

    monkeypatch.setattr(train_module.Trainer, "collect", poison_at_70)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit, match=r"^error: Non-finite values in agent\..* at step 80") as info:
        tiny_train(run_dir, "--log-every", "1000", eval_every=1000)
    assert "\n" not in info.value.code
    saved = torch.load(run_dir / CHECKPOINT, weights_only=False)
    assert saved["step"] == 40 and not (run_dir / PREVIOUS).exists()


# --- 5. rendering failures end with the clear line; 6. ActionBox repr; 7. settotalmass once -------------------------


def test_a_failed_mujoco_render_prints_nothing_after_the_clear_line(tmp_path):
    run_dir = tmp_path / "run"
    tiny_train(run_dir, env="InvertedPendulum-v5", total=60, eval_every=60)
    # an OpenGL back-end that cannot be made: Gymnasium's viewer fails half-way, as without EGL
    prelude = "import os, virel_ppl.runtime.envs\nos.environ['MUJOCO_GL'] = 'no-such-backend'\n"
    proc = run_cli_subprocess(["evaluate", run_dir, "--episodes", "1", "--video"], prelude=prelude)
    assert proc.returncode == 0, proc.stderr
    assert "No video: Cannot render InvertedPendulum-v5" in proc.stdout and "OpenGL" in proc.stdout
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_pendulum_video_without_pygame_names_pygame(pendulum_run, capsys):
    try:
        import pygame  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pygame is installed here: Pendulum-v1 renders")
    main(["evaluate", str(pendulum_run), "--episodes", "1", "--video"])
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("No video:") and "pygame is not installed" in line and "OpenGL" not in line


def test_a_guide_that_does_not_fit_names_the_box_readably(tmp_path):
    with pytest.raises(SystemExit, match=r"ActionBox\(dim=1, low=\[-2\.0\], high=\[2\.0\]\)") as info:
        tiny_train(tmp_path / "run", "--guide", "categorical")
    assert "object at" not in info.value.code


def test_the_settotalmass_warning_is_shown_once_per_process(tmp_path):
    # HalfCheetah's XML warns at every compile: one training env, then two evaluations of two copies each
    argv = ["train", "--env", "HalfCheetah-v5", "--total-steps", "20", "--warmup-steps", "10", "--batch-size", "8"]
    argv += ["--hidden", "8", "--eval-every", "10", "--eval-episodes", "2", "--no-progress", "--no-tensorboard"]
    proc = run_cli_subprocess([*argv, "--run-dir", tmp_path / "run"])
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout + proc.stderr).count("attribute 'settotalmass' is deprecated") == 1


def test_other_mujoco_warnings_are_all_shown(capsys):
    envs._mujoco_warning("Nan, Inf or huge value in QACC at DOF 0.")
    envs._mujoco_warning("Nan, Inf or huge value in QACC at DOF 0.")
    assert capsys.readouterr().err.count("WARNING: Nan, Inf or huge value in QACC") == 2


# --- code layout: no runtime import circle --------------------------------------------------------------------------


def _runtime_imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that ``path`` imports at run time (module level or inside functions), leaving out imports
    under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(package))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from virel_ppl import variants`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_no_runtime_import_circle():
    package_dir = ROOT / "virel_ppl"
    modules = {
        ".".join(("virel_ppl", *p.relative_to(package_dir).with_suffix("").parts)).removesuffix(".__init__"): p
        for p in package_dir.rglob("*.py")
    }
    graph = {m: {i for i in _runtime_imports(p, "virel_ppl") if i in modules and i != m} for m, p in modules.items()}
    for module in graph:  # a package's submodule does not import the package back through __init__ here
        graph[module].discard("virel_ppl")
    cycles = []

    def dfs(node, stack):
        for nxt in graph[node]:
            if nxt in stack:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in done:
                dfs(nxt, stack + [nxt])
        done.add(node)

    done: set[str] = set()
    for module in graph:
        if module not in done:
            dfs(module, [module])
    assert cycles == []
    assert (
        "virel_ppl.train" not in graph["virel_ppl.analysis.diagnostics"]
        and "virel_ppl.runtime.checkpoints" in graph["virel_ppl.train"]
    )


def test_the_loop_imports_no_diagnostics_and_evaluation_no_training():
    """The trainer's diagnostics come in as a hook (train.py plugs them in); the SB3 baseline evaluates as ours do
    without importing the training loop."""
    paths = {"trainer": "runtime/trainer.py", "baselines": "baselines.py"}
    imports = {m: _runtime_imports(ROOT / "virel_ppl" / path, "virel_ppl") for m, path in paths.items()}
    assert not {"virel_ppl.analysis.diagnostics", "virel_ppl.train"} & imports["trainer"]
    assert not {"virel_ppl.train", "virel_ppl.runtime.trainer"} & imports["baselines"]
    assert "virel_ppl.runtime.evaluation" in imports["baselines"]


@pytest.mark.parametrize("env_id", ["Humanoid-v5", "Ant-v5"])
def test_a_restored_mujoco_env_gives_the_same_next_rewards(env_id):
    """Humanoid's reward reads the centre of mass (xipos) and Ant's the torso (xpos) before stepping, as mj_step left
    them: a restore that recomputed them from the restored positions changed the first reward after a resume."""
    import numpy as np

    from virel_ppl.runtime.envs import get_env_state, make_env, set_env_state

    env, rng = make_env(env_id, seed=0), np.random.default_rng(0)
    low, high = env.action_space.low, env.action_space.high
    for _ in range(12):
        env.step(rng.uniform(low, high) * 0.3)
    restored = make_env(env_id, seed=1)
    set_env_state(restored, get_env_state(env))
    for _ in range(3):
        action = rng.uniform(low, high) * 0.3
        (obs_a, r_a, *_), (obs_b, r_b, *_) = env.step(action), restored.step(action)
        assert r_a == r_b and np.array_equal(obs_a, obs_b)

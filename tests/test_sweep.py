"""Sweeps on Ray Tune: the grid, bad input, a local sweep with its report, a trial killed mid-run, Ctrl-C + --resume.

Ray starts once for the module (2 CPUs, no dashboard); the sweeps are tiny (Pendulum-v1, 600 steps, helpers.TINY).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import helpers
import numpy as np
import pytest
import ray
import torch

from virel_ppl.cli import SweepArgs, main
from virel_ppl.config import Config
from virel_ppl.runtime.logger import read_csv
from virel_ppl.sweep import keep_progress, make_scheduler, parse_set, plan, progress_rows, sweep

REPO = Path(__file__).resolve().parent.parent
STEPS = 600
BASE = Config(env="Pendulum-v1", total_steps=STEPS, **helpers.TINY)
#: The same base as command-line flags.
CLI_BASE = [
    "--envs", "Pendulum-v1", "--total-steps", str(STEPS), "--set",
    *(f"{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "") for k, v in helpers.TINY.items()
      if k != "checkpoint_every"),
]  # fmt: skip


# --- hooks that travel to the trials (pickled by value: the workers cannot import this module) --------------------


class RecordStart:
    """Appends ``pid, first step, virel_ppl's path`` to a file when a trial process takes its first step."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, False

    def __call__(self, trainer, step: int) -> None:
        if not self.seen:
            import virel_ppl

            self.seen = True
            with open(self.path, "a") as fh:
                fh.write(f"{os.getpid()},{step},{Path(virel_ppl.__file__).resolve().parent}\n")


class KillOnce:
    """SIGKILLs the trial's own process at ``step``, the first time only (a marker file remembers)."""

    def __init__(self, step: int, marker: Path) -> None:
        self.step, self.marker = step, marker

    def __call__(self, trainer, step: int) -> None:
        if step == self.step and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


def _by_value() -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the module: 2 CPUs, no dashboard, a small object store; workers import this checkout."""
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024**2,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        logging_level="ERROR",
    )
    _by_value()
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _eval(run_dir: Path) -> dict[str, list[float]]:
    return read_csv(run_dir / "eval.csv")


# --- the grid and bad input (no Ray) -------------------------------------------------------------------------------


def test_plan_names_groups_and_checkpoints():
    trials, group_by = plan({"algo": ["virel", "beta"], "seed": [0, 1], "batch_size": [32, 64]}, BASE)
    names = [t.name for t in trials]
    assert names[:2] == ["Pendulum-v1__virel__batch_size=32__0", "Pendulum-v1__virel__batch_size=32__1"]
    assert len(set(names)) == 8
    assert group_by == ["env", "algo", "batch_size"]
    t = trials[-1].config
    assert (t.algo, t.seed, t.batch_size, t.progress) == ("beta", 1, 64, False)
    assert t.checkpoint_every == t.eval_every == 200  # a Tune checkpoint at every evaluation


def test_a_sweep_without_axis_flags_runs_trains_defaults():
    """--algos, --guides and --elbos default to what `virel_ppl train` runs (the E-step estimator is `auto`: enum for
    the categorical guide, so `sweep --envs CartPole-v1 --guides categorical` needs no --elbos)."""
    args, cfg = SweepArgs(), Config()
    assert (args.algos, args.guides, args.elbos) == ((cfg.algo,), (cfg.guide,), (cfg.elbo,)) == (
        ("virel",), ("tanh_normal",), ("auto",))  # fmt: skip


def test_parse_set_values():
    got = parse_set(["hidden=[64,64],[32,32]", "num_particles=none,4", "gamma=0.9"])
    assert got == {"hidden": [(64, 64), (32, 32)], "num_particles": [None, 4], "gamma": [0.9]}


def test_asha_scheduler_counts_env_steps():
    asha = make_scheduler("asha", budget=10_000, grace_steps=None, reduction_factor=3)
    assert asha._time_attr == "step" and asha._max_t == 10_000
    assert make_scheduler("grid", 10_000) is None


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--set", "batch_sise=64"], "Config has no field 'batch_sise'. Did you mean batch_size?"),
        (["--set", "batch_size=abc"], "'abc' is not a valid int"),
        (["--set", "gamma=1.5"], "--gamma must be in [0, 1)"),
        (["--set", "run_dir=x"], "use --root"),
        (["--set", "seed=3"], "use --seeds"),
        (["--algos", "virel", "nope"], "Unknown"),
        (["--envs", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
        (["--max-concurrent", "0"], "--max-concurrent must be at least 1"),
        (["--search", "asha", "--metric", "reward"], "--metric reward is not reported"),
        (["--address", "127.0.0.1:{port}"], "no Ray cluster answers there"),
        (["--address", "ray://127.0.0.1:{port}"], "no Ray cluster answers there"),
        (["--address", "nohostport"], "expected auto, HOST:PORT or ray://HOST:PORT"),
        (["--set", "threads=0"], "--threads must be a positive integer"),
    ],
)
def test_bad_input_is_one_error_line_before_any_trial(tmp_path, flags, says):
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "root"
    argv = ["sweep", "--total-steps", "1200", "--seeds", "0", "--root", str(root)]  # past the default warm-up
    argv += [] if "--envs" in flags else ["--envs", "Pendulum-v1"]
    argv += [f.format(port=port) for f in flags]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    message = str(exc.value.code)
    assert message.startswith("error: ") and "\n" not in message and says in message
    assert not root.exists()  # nothing started, nothing written


@pytest.mark.slow
def test_an_address_that_is_not_a_ray_head_is_one_error_line_without_rays_retries(tmp_path):
    """Something listens at the address but never answers as Ray: Ray's core logs each retry (a line every few
    seconds) before it gives up; the sweep shows none of them, only its error line. One retry here
    (``RAY_gcs_server_port_wait_time_s=1``, Ray's own knob) keeps the test to Ray's one connection timeout."""
    with socket.socket() as listener:  # the kernel accepts connections; nothing ever replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        argv = [sys.executable, "-m", "virel_ppl.cli", "sweep", *CLI_BASE, "--seeds", "0"]
        argv += ["--root", str(tmp_path / "root"), "--address", f"127.0.0.1:{port}"]
        env = {**os.environ, "RAY_gcs_server_port_wait_time_s": "1", "PYTHONPATH": str(REPO)}
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"error: --address 127.0.0.1:{port}: something answers there, but Ray cannot connect")
    assert not (tmp_path / "root").exists()


# --- sweeps on local Ray ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_sweep(ray_local, tmp_path_factory):
    """2 algos × 2 seeds × 600 steps on Pendulum-v1, 2 trials at once."""
    root = tmp_path_factory.mktemp("sweep")
    starts = root.parent / "starts.csv"
    result = sweep(
        {"algo": ["virel", "beta"], "seed": [0, 1]}, BASE, root, max_concurrent=2, hooks=[RecordStart(starts)],
        verbose=0,
    )  # fmt: skip
    return result, starts


def test_local_sweep_runs_ordinary_run_dirs_and_reports(local_sweep, tmp_path):
    result, starts = local_sweep
    names = ["Pendulum-v1__virel__0", "Pendulum-v1__virel__1", "Pendulum-v1__beta__0", "Pendulum-v1__beta__1"]
    assert not result.failed and not result.interrupted
    assert sorted(p.name for p in result.run_dirs) == sorted(names)
    for run_dir in result.run_dirs:
        for f in ("config.json", "eval.csv", "checkpoint.pt", "train.csv"):
            assert (run_dir / f).exists(), (run_dir, f)
        assert _eval(run_dir)["step"] == [200.0, 400.0, 600.0]
    # each trial ran this checkout's virel_ppl, in a process of its own
    rows = [line.split(",") for line in starts.read_text().splitlines()]
    assert len(rows) == 4 and len({r[0] for r in rows}) == 4
    assert {Path(r[2]) for r in rows} == {REPO / "virel_ppl"}
    # a trial's run is the run train() makes on its own
    from virel_ppl.train import train

    ref = train(replace(BASE, seed=1, checkpoint_every=200, progress=False, run_dir=tmp_path / "ref"))
    assert _eval(result.root / "Pendulum-v1__virel__1") == _eval(ref.run_dir)
    # the report table: one row per algo over its 2 seeds, mean of the final returns (IQM = mean below 4 seeds)
    rows = [r for r in result.table.splitlines() if r.startswith("| Pendulum-v1")]
    assert len(rows) == 2
    for row, algo in zip(rows, ["virel", "beta"]):
        finals = [_eval(result.root / f"Pendulum-v1__{algo}__{s}")["return_mean"][-1] for s in (0, 1)]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[:3] == [f"Pendulum-v1 · {algo}", "2", "600"]
        assert cells[3] == f"{np.mean(finals):.1f}" and cells[7] == f"{np.mean(finals):.1f}"
    assert result.report == result.root / "report" / "report.md"
    assert (result.root / "report" / "learning_curves.png").exists()


def test_trial_killed_mid_run_restarts_and_ends_as_if_never_killed(local_sweep, tmp_path):
    result, _ = local_sweep
    marker, starts = tmp_path / "killed", tmp_path / "starts.csv"
    killed = sweep(
        {"algo": ["virel"], "seed": [0]}, BASE, tmp_path / "root", hooks=[KillOnce(500, marker), RecordStart(starts)],
        max_failures=2, verbose=0,
    )  # fmt: skip
    assert marker.exists() and not killed.failed
    first_steps = [int(line.split(",")[1]) for line in starts.read_text().splitlines()]
    assert first_steps == [1, 401]  # restarted from the Tune checkpoint at step 400, not from scratch
    run_dir = tmp_path / "root" / "Pendulum-v1__virel__0"
    ref = result.root / "Pendulum-v1__virel__0"
    assert _eval(run_dir) == _eval(ref)
    assert read_csv(run_dir / "train.csv") == read_csv(ref / "train.csv")


def test_ctrl_c_stops_the_sweep_and_resume_reruns_no_finished_trial(local_sweep, ray_local, tmp_path):
    """Two trials one at a time through the CLI (a second driver on the module's Ray): Ctrl-C while the second runs,
    then the same command with --resume."""
    result, _ = local_sweep
    root = tmp_path / "root"
    argv = [sys.executable, "-m", "virel_ppl.cli", "sweep", *CLI_BASE, "--algos", "virel", "beta", "--seeds", "1"]
    argv += ["--root", str(root), "--max-concurrent", "1", "--address", ray_local]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    first, second = root / "Pendulum-v1__virel__1", root / "Pendulum-v1__beta__1"
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        first_done = (first / "eval.csv").exists() and _eval(first).get("step", [0])[-1] == STEPS
        if first_done and (second / "config.json").exists():
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130 and "--resume" in out, out[-3000:]  # a stop, as train's Ctrl-C: not an error
    finished = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in first.iterdir() if p.is_file()}

    done = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert finished == {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in first.iterdir() if p.is_file()}
    assert _eval(second) == _eval(result.root / "Pendulum-v1__beta__1")  # continued exactly
    assert "| Pendulum-v1 · virel | 1 | 600 |" in done.stdout and "| Pendulum-v1 · beta | 1 | 600 |" in done.stdout


def test_asha_stops_weak_trials_at_env_step_milestones(ray_local, tmp_path):
    """One trial at a time, so ASHA's decisions follow from the returns at its milestone (step 200) alone: a trial
    stops there when its return is below the top third of those recorded before it."""
    result = sweep(
        {"algo": ["virel", "beta", "mpo"], "seed": [0]}, BASE, tmp_path / "root", search="asha", grace_steps=200,
        reduction_factor=3, max_concurrent=1, verbose=0,
    )  # fmt: skip
    assert not result.failed and not result.interrupted  # early stops are not a Ctrl-C
    recorded: list[float] = []
    for algo in ["virel", "beta", "mpo"]:
        ev = _eval(tmp_path / "root" / f"Pendulum-v1__{algo}__0")
        at_200 = ev["return_mean"][0]
        stopped = bool(recorded) and at_200 < np.percentile(recorded, 100 * (1 - 1 / 3))
        assert ev["step"] == ([200.0] if stopped else [200.0, 400.0, 600.0]), (algo, recorded, at_200)
        recorded.append(at_200)
    assert result.report is not None and len([r for r in result.table.splitlines() if "Pendulum-v1 ·" in r]) == 3


# --- a root is one sweep's; a trial the cluster cannot place is refused -------------------------------------------


def test_a_second_sweep_into_a_locked_root_is_one_error_line(tmp_path):
    import fcntl

    root = tmp_path / "root"
    root.mkdir()
    with open(root / ".lock", "w") as held:  # what a running sweep holds for its whole life
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        argv = ["sweep", *CLI_BASE, "--seeds", "0", "--root", str(root)]
        with pytest.raises(SystemExit) as exc:
            main(argv)
    message = str(exc.value.code)
    assert message.startswith("error: ") and "\n" not in message and "in use by another sweep" in message
    assert sorted(p.name for p in root.iterdir()) == [".lock"]  # no sweep.json, no Tune state: nothing started


def test_gpus_per_trial_on_a_cluster_without_a_gpu_is_refused_at_start_up(ray_local, tmp_path):
    root = tmp_path / "root"
    argv = ["sweep", *CLI_BASE, "--seeds", "0", "--root", str(root), "--gpus-per-trial", "1"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--address", ray_local])
    message = str(exc.value.code)
    gpus = ray.cluster_resources().get("GPU", 0)
    assert gpus == 0  # the module's Ray has 2 CPUs and no GPU
    assert message.startswith("error: --gpus-per-trial 1: the Ray cluster has no GPU (and 2 CPUs)"), message
    assert not root.exists()  # refused before anything was written


# --- never an older copy over a newer run directory -----------------------------------------------------------------


def _newer_and_older(tmp_path):
    """A run directory with its checkpoint at step 200 and a Tune checkpoint of it (a copy) from step 100."""
    from virel_ppl.train import train

    cfg = replace(BASE, total_steps=300, checkpoint_every=100, run_dir=tmp_path / "root" / "run")
    train(cfg, hooks=[helpers.StopAt(100)])
    older = Path(shutil.copytree(cfg.run_dir, tmp_path / "tune_copy"))
    train(resume=cfg.run_dir, hooks=[helpers.StopAt(200)])
    return cfg, older


def _files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


def test_the_driver_never_replaces_a_newer_run_directory_with_an_older_tune_copy(tmp_path):
    from ray import tune

    from virel_ppl.sweep import driver

    cfg, older = _newer_and_older(tmp_path)
    newer = _files(cfg.run_dir)
    result = type("Result", (), {"checkpoint": tune.Checkpoint.from_directory(str(older)), "metrics": {"step": 100}})
    driver.fetch_run_dir(result, cfg.run_dir)  # what sweep() does with each trial after fit() returns
    assert _files(cfg.run_dir) == newer
    assert _eval(cfg.run_dir)["step"] == [200.0]
    shutil.rmtree(cfg.run_dir)  # a run directory that is not here (it ran on another machine) is fetched
    driver.fetch_run_dir(result, cfg.run_dir)
    assert _files(cfg.run_dir) == _files(older)


def test_a_restored_trial_resumes_its_newer_run_directory_not_the_older_tune_copy(tmp_path, monkeypatch):
    from ray import tune

    from virel_ppl.sweep import trainable
    from virel_ppl.train import train

    cfg, older = _newer_and_older(tmp_path)
    reported: list[dict] = []
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(older)))
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reported.append(metrics))
    starts = tmp_path / "starts.csv"
    spec = {"name": "run", "run_dir": str(cfg.run_dir), "config": cfg.to_dict()}
    trainable.trainable({"name": "run"}, {"run": spec}, hooks=[RecordStart(starts)], tune_checkpoints=True)
    assert int(starts.read_text().split(",")[1]) == 201  # continued from its own checkpoint at 200, not from 100
    ref = train(replace(cfg, run_dir=tmp_path / "ref"))
    assert _eval(cfg.run_dir) == _eval(ref.run_dir) and reported[-1]["finished"] is True
    assert read_csv(cfg.run_dir / "train.csv") == read_csv(ref.run_dir / "train.csv")


# --- fault injection: a kill and a Ctrl-C at random points, then --resume ---------------------------------------


def _tb_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows for a run: its scalars by tag (``EventAccumulator`` applies a resumed writer's purge)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _holders(run_dir: Path) -> list[int]:
    """The processes that hold a file of ``run_dir`` open: the Ray worker running that trial (its logs stay open)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd).startswith(f"{run_dir}/") for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def _logged_steps(path: Path) -> list[float]:
    """The steps of a CSV log that a running trial is writing (a line being written is not counted)."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    steps = []
    for row in rows[1:]:
        try:
            steps.append(float(row[0]))
        except (ValueError, IndexError):
            continue
    return steps


@pytest.mark.slow
def test_a_sweep_killed_and_stopped_at_random_points_resumes_to_what_an_uninterrupted_sweep_writes(ray_local, tmp_path):
    """Two trials, one at a time, TensorBoard on: SIGKILL the first trial's worker after a random step, SIGINT the
    driver at a random later point, then the same command with --resume. Every run directory ends as the
    uninterrupted sweep's: the same files, byte-equal CSVs, the same config, checkpoint and TensorBoard scalars."""
    import random

    steps = 400  # train.csv rows at 100, 150, ..., 400: 7 per trial
    base = replace(BASE, total_steps=steps, tensorboard=True)
    ref = sweep({"algo": ["virel", "beta"], "seed": [2]}, base, tmp_path / "ref", max_concurrent=1, verbose=0)
    assert not ref.failed and not ref.interrupted

    rng = random.Random()
    seed = rng.randrange(10**6)
    rng.seed(seed)
    # the kill follows the first train.csv row at or past kill_step: never the last row (400), after which the
    # worker may already have let the run directory go
    kill_step, stop_rows = rng.randrange(101, steps - 49), rng.randrange(9, 13)  # stop: after 9..12 of 14 rows
    note = f"random seed {seed}: SIGKILL after step {kill_step}, SIGINT after {stop_rows} train.csv rows"
    root = tmp_path / "root"
    cli = [a.replace("tensorboard=False", "tensorboard=true") for a in CLI_BASE]
    cli[cli.index("--total-steps") + 1] = str(steps)
    argv = [sys.executable, "-m", "virel_ppl.cli", "sweep", *cli, "--algos", "virel", "beta", "--seeds", "2"]
    argv += ["--root", str(root), "--max-concurrent", "1", "--address", ray_local]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    first, second = root / "Pendulum-v1__virel__2", root / "Pendulum-v1__beta__2"
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 1200  # a guard against a hang, not a timed assertion
    killed = []
    while proc.poll() is None and time.monotonic() < deadline:
        if not killed and max(_logged_steps(first / "train.csv"), default=0) >= kill_step:
            killed = _holders(first)
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
        if killed and len(_logged_steps(first / "train.csv")) + len(_logged_steps(second / "train.csv")) >= stop_rows:
            break
        time.sleep(0.2)
    assert killed, (note, proc.communicate()[0][-3000:] if proc.poll() is not None else "")
    stopped = proc.poll() is None
    if stopped:
        proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=600)[0]
    stop_status = proc.returncode  # checked last: first what the stops did to the data

    done = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (note, (done.stdout + done.stderr)[-3000:])
    for name in ("Pendulum-v1__virel__2", "Pendulum-v1__beta__2"):
        got, want = root / name, ref.root / name
        assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir()), (note, name)
        for csv_file in sorted(want.glob("*.csv")):
            assert (got / csv_file.name).read_bytes() == csv_file.read_bytes(), (note, name, csv_file.name)
        configs = [{k: v for k, v in json.loads((d / "config.json").read_text()).items() if k != "run_dir"}
                   for d in (got, want)]  # fmt: skip
        assert configs[0] == configs[1], (note, name)
        a, b = (torch.load(d / "checkpoint.pt", weights_only=False) for d in (got, want))
        assert a["step"] == b["step"] == steps, note
        ta, tb = helpers.state_tensors(a["agent"]), helpers.state_tensors(b["agent"])
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in tb), (note, name)
        assert _tb_scalars(got) == _tb_scalars(want), (note, name)
    assert [r for r in done.stdout.splitlines() if r.startswith("| Pendulum")] == [
        r for r in ref.table.splitlines() if r.startswith("| Pendulum")
    ], note
    assert stop_status == (130 if stopped else 0), (note, out[-3000:])  # Ctrl-C is a stop (as train's), not an error
    for noise in ("Traceback", "Exception ignored", "ActorDiedError"):  # Ray's shutdown noise, on a sweep that worked
        assert noise not in done.stderr, done.stderr[-3000:]


# --- Tune's reports across drivers ----------------------------------------------------------------------------------


def test_each_drivers_reports_are_kept_once_and_read_back_once(tmp_path):
    trial = tmp_path / "tune" / "Pendulum-v1__virel__0"
    trial.mkdir(parents=True)
    head = "step,time_since_restore,iterations_since_restore\n"
    (trial / "progress.csv").write_text(head)  # a trial that has reported nothing
    assert keep_progress(tmp_path / "tune") == []
    (trial / "progress.csv").write_text(head + "200,5.0,1\n400,9.0,2\n")
    assert keep_progress(tmp_path / "tune") == [trial / "progress.1.csv"]
    assert keep_progress(tmp_path / "tune") == []  # kept already
    # a file Tune continued (a trial restored from a Tune checkpoint) repeats the kept rows: each is read once
    (trial / "progress.csv").write_text(head + "200,5.0,1\n400,9.0,2\n600,3.0,1\n")
    assert keep_progress(tmp_path / "tune") == [trial / "progress.2.csv"]
    (trial / "progress.old.csv").write_text(head + "999,1.0,1\n")  # not a kept copy
    rows = progress_rows(trial)
    assert [(r["step"], r["iterations_since_restore"]) for r in rows] == [("200", "1"), ("400", "2"), ("600", "1")]


def _session(sid: int) -> list[int]:
    """The processes of session ``sid``: a driver started in a session of its own, with the Ray it started."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getsid(int(proc.name)) == sid:
                pids.append(int(proc.name))
        except OSError:  # gone
            continue
    return pids


def test_a_sweep_killed_and_resumed_keeps_the_reports_of_the_driver_before(tmp_path):
    """Every process of a sweep killed at once (its driver, the Ray it started and the trial's worker), then the same
    command with --resume and no Tune checkpoints, as the study runs: Tune starts the trial's progress.csv afresh, and
    the first driver's reports survive as progress.1.csv, read back before the second driver's."""
    import held_pendulum

    # the trial's environment stands still at step 700 while `hold` exists: the kill lands after Tune has recorded
    # the reports of 200, 400 and 600 and before 800, however slowly the driver or this test runs
    root, steps, hold = tmp_path / "root", 1000, tmp_path / "hold"
    env_id = "held_pendulum:HeldPendulum-v0"
    cli = [*CLI_BASE]
    cli[cli.index("--envs") + 1] = env_id
    cli[cli.index("--total-steps") + 1] = str(steps)
    argv = [sys.executable, "-m", "virel_ppl.cli", "sweep", *cli, "--algos", "virel", "--seeds", "4"]
    argv += ["--root", str(root), "--max-concurrent", "1", "--no-tune-checkpoints"]
    path = os.pathsep.join(p for p in (str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, held_pendulum.HOLD_FILE: str(hold)}
    hold.touch()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 900  # a guard against a hang, not a timed assertion
    tune_dir = root / "tune" / "?"  # Tune names it after the trial, with the ":" of the env id replaced
    while proc.poll() is None and time.monotonic() < deadline and len(_logged_steps(tune_dir / "progress.csv")) < 3:
        tune_dir = next((root / "tune").glob("*__virel__4"), tune_dir)
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    for pid in _session(proc.pid):
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    before = _logged_steps(tune_dir / "progress.csv")
    assert before == [200, 400, 600]

    hold.unlink()
    done = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    after = _logged_steps(tune_dir / "progress.csv")
    assert after == [800, steps]  # resumed from the checkpoint of 600; Tune kept none of the first driver's rows
    assert _logged_steps(tune_dir / "progress.1.csv") == before
    assert [float(r["step"]) for r in progress_rows(tune_dir)] == before + after

"""SB3's SAC as an external reference run (``virel_ppl/baselines.py``), the study driver ``benchmarks/paper.py`` and
its policy probe ``benchmarks/probe_policy.py``."""

from __future__ import annotations

import argparse
import builtins
import csv
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from virel_ppl.config import Config, ConfigError, preset_config
from virel_ppl.runtime.logger import read_csv

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import paper  # noqa: E402

SMALL = dict(env="Pendulum-v1", algo="sb3_sac", total_steps=300, warmup_steps=100, eval_every=100, eval_episodes=2)
SMALL |= dict(log_every=50, tensorboard=False, progress=False)


def test_an_sb3_run_is_an_ordinary_run_directory_evaluated_as_ours(tmp_path, monkeypatch):
    """eval.csv at every eval_every steps and at the end; each evaluation is the mode action on the seeds ours use
    (seed + 10000 + step), which a plain loop over the same episode with SB3's own deterministic ``predict`` repeats."""
    from virel_ppl import baselines

    models = []
    real_sac = __import__("stable_baselines3").SAC

    def keep(*args, **kwargs):
        models.append(real_sac(*args, **kwargs))
        return models[-1]

    monkeypatch.setattr("stable_baselines3.SAC", keep)
    run_dir = baselines.train_sb3_sac(Config(**SMALL, run_dir=tmp_path / "sb3"))
    ev = read_csv(run_dir / "eval.csv")
    assert ev["step"] == [100.0, 200.0, 300.0]
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["algo"] == "sb3_sac" and saved["sb3"]["learning_starts"] == 100
    assert saved["sb3"]["batch_size"] == 256 and saved["sb3"]["learning_rate"] == 3e-4  # SB3's own defaults
    assert "hidden" not in saved  # our network settings do not apply to it, so they are not recorded
    assert read_csv(run_dir / "train.csv")["step"][0] >= 100
    # the last evaluation, by hand: 2 episodes of the final policy's mode action from seed 0 + 10000 + 300
    model, returns = models[0], []
    for k in range(2):
        env = gym.make("Pendulum-v1")
        obs, _ = env.reset(seed=10_300 + k)  # gymnasium's vector env seeds copy k with seed + k
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, r, terminated, truncated, _ = env.step(action)
            total, done = total + r, terminated or truncated
        returns.append(total)
    assert ev["return_mean"][-1] == pytest.approx(np.mean(returns), rel=1e-5)


@pytest.fixture(scope="module")
def sb3_straight(tmp_path_factory) -> Path:
    """SMALL run of SB3's SAC from start to end, never stopped."""
    from virel_ppl.baselines import train_sb3_sac

    return train_sb3_sac(Config(**SMALL, threads=1, run_dir=tmp_path_factory.mktemp("sb3") / "straight"))


def _same_run(a: Path, b: Path) -> None:
    """The two run directories logged the same rows (train.csv's wall clock aside) and ended with the same SB3."""
    assert read_csv(a / "eval.csv") == read_csv(b / "eval.csv")
    for stream in ("train", "episodes"):
        x, y = read_csv(a / f"{stream}.csv"), read_csv(b / f"{stream}.csv")
        x.pop("wall_s", None), y.pop("wall_s", None)
        assert x == y, stream
    x, y = (torch.load(d / "checkpoint.pt", weights_only=False)["sb3"] for d in (a, b))
    for k, v in x["policy"].items():
        assert torch.equal(v, y["policy"][k]), k
    assert torch.equal(x["log_ent_coef"], y["log_ent_coef"])
    assert x["counters"]["_n_updates"] == y["counters"]["_n_updates"] == 200  # one update a step after the warm-up


class _Stop(Exception):
    pass


def test_an_sb3_run_stopped_at_a_checkpoint_continues_as_if_never_stopped(sb3_straight, tmp_path):
    """Stopped right after its checkpoint at step 200 (the previous one, step 100, kept), started again: the same
    evaluations, rows and final networks as the run never stopped. The finished run keeps one checkpoint, without
    its replay buffer."""
    from virel_ppl.baselines import train_sb3_sac
    from virel_ppl.runtime.checkpoints import PREVIOUS, checkpoint_step

    def stop(step: int) -> None:
        if step == 200:
            raise _Stop

    cfg = Config(**SMALL, threads=1, run_dir=tmp_path / "resumed")
    with pytest.raises(_Stop):
        train_sb3_sac(cfg, on_eval=stop)
    assert checkpoint_step(tmp_path / "resumed") == 200
    assert torch.load(tmp_path / "resumed" / PREVIOUS, weights_only=False)["step"] == 100
    train_sb3_sac(cfg)
    _same_run(sb3_straight, tmp_path / "resumed")
    final = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert final["step"] == 300 and final["sb3"]["replay"] is None and not (tmp_path / "resumed" / PREVIOUS).exists()


KILLED_AT_250 = """
import os, signal, sys
from pathlib import Path
from virel_ppl.baselines import train_sb3_sac
from virel_ppl.config import Config
from virel_ppl.runtime.logger import RunLogger

log = RunLogger.log
def log_then_die(self, stream, step, scalars):
    row = log(self, stream, step, scalars)
    if stream == "train" and step == 250:
        os.kill(os.getpid(), signal.SIGKILL)
    return row
RunLogger.log = log_then_die
train_sb3_sac(Config(**{small!r}, threads=1, run_dir=Path({run_dir!r})))
"""


def test_an_sb3_run_killed_mid_way_loses_only_the_steps_since_its_checkpoint(sb3_straight, tmp_path):
    """kill -9 at step 250, between the checkpoints of steps 200 and 300: started again, the run continues from step
    200 (the rows it logged after it are dropped) and ends as the run never stopped."""
    import os
    import signal
    import subprocess

    from virel_ppl.baselines import train_sb3_sac
    from virel_ppl.runtime.checkpoints import checkpoint_step

    run_dir = tmp_path / "killed"
    script = KILLED_AT_250.format(small=SMALL, run_dir=str(run_dir))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert read_csv(run_dir / "train.csv")["step"][-1] == 250 and checkpoint_step(run_dir) == 200
    train_sb3_sac(Config(**SMALL, threads=1, run_dir=run_dir))
    _same_run(sb3_straight, run_dir)


def test_a_diverged_sb3_run_says_so_with_the_step_and_keeps_its_last_good_checkpoint(tmp_path, monkeypatch):
    """The actor's weights set to NaN once its checkpoint at step 100 is written: SB3's next action fails torch's
    check of the Gaussian's mean, which the run reports as SB3's divergence at that step."""
    from virel_ppl.baselines import train_sb3_sac
    from virel_ppl.runtime.checkpoints import checkpoint_step

    models = []
    real_sac = __import__("stable_baselines3").SAC
    monkeypatch.setattr("stable_baselines3.SAC", lambda *a, **kw: models.append(real_sac(*a, **kw)) or models[-1])

    def poison(step: int) -> None:
        with torch.no_grad():
            models[0].actor.mu.weight.fill_(float("nan"))

    with pytest.raises(ConfigError, match=r"^sb3: SB3's SAC diverged at step 100 \(Expected parameter loc"):
        train_sb3_sac(Config(**SMALL, threads=1, run_dir=tmp_path / "sb3"), on_eval=poison)
    assert checkpoint_step(tmp_path / "sb3") == 100


def test_a_finished_baseline_is_told_from_a_stopped_one(tmp_path):
    from virel_ppl.baselines import finished

    run = tmp_path / "r"
    run.mkdir()
    (run / "eval.csv").write_text("step,return_mean,return_std\n100,1,0\n200,2,0\n")
    assert not finished(run, 300) and finished(run, 200) and not finished(tmp_path / "none", 200)


def test_sb3_missing_says_which_extra_to_install(monkeypatch):
    from virel_ppl.baselines import require_sb3

    real_import = builtins.__import__

    def no_sb3(name, *args, **kwargs):
        if name == "stable_baselines3":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sb3)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[bench\]"'):
        require_sb3()


def test_a_sweep_runs_sb3_beside_ours_and_reports_them_apart(tmp_path):
    from virel_ppl.sweep import sweep

    base = Config(**{**SMALL, "algo": "virel", "hidden": (16, 16), "batch_size": 32})
    result = sweep({"env": ["Pendulum-v1"], "algo": ["virel", "sb3_sac"], "seed": [0]}, base, tmp_path / "sw")
    assert not result.failed and not result.interrupted
    for name in ("Pendulum-v1__virel__0", "Pendulum-v1__sb3_sac__0"):
        assert read_csv(tmp_path / "sw" / name / "eval.csv")["step"] == [100.0, 200.0, 300.0]
    assert "Pendulum-v1 · sb3_sac" in result.table and "Pendulum-v1 · virel" in result.table


# --- benchmarks/paper.py ------------------------------------------------------------------------------------------


def args(**kw) -> argparse.Namespace:
    defaults = dict(tasks=["HalfCheetah-v5", "Hopper-v5"], algos=["beta", "sb3_sac"], then=["sac_auto"], seeds=[0, 1])
    defaults |= dict(tuned=[])
    defaults |= dict(budget=10_000, eval_every=5_000, eval_episodes=10)
    return argparse.Namespace(**{**defaults, **kw})


def test_the_study_runs_seed_major_with_stage_two_last_and_the_paper_preset():
    trials = paper.plan_trials(args())
    names = [t.name for t in trials]
    first = ["HalfCheetah-v5__beta__0", "HalfCheetah-v5__sb3_sac__0", "Hopper-v5__beta__0", "Hopper-v5__sb3_sac__0"]
    assert names[:4] == first
    assert names[4:8] == [n.replace("__0", "__1") for n in names[:4]]
    assert names[8:] == ["HalfCheetah-v5__sac_auto__0", "Hopper-v5__sac_auto__0"] + [
        "HalfCheetah-v5__sac_auto__1", "Hopper-v5__sac_auto__1"
    ]  # fmt: skip
    cfg = trials[0].config
    paper_cfg = preset_config("paper", env="HalfCheetah-v5")
    assert (cfg.batch_size, cfg.hidden, cfg.policy_lr, cfg.beta_scale) == (128, (300, 300), 3e-4, 4e-3)
    assert (cfg.batch_size, cfg.hidden, cfg.beta_scale) == (paper_cfg.batch_size, paper_cfg.hidden, 4e-3)
    assert (cfg.total_steps, cfg.eval_every, cfg.eval_episodes, cfg.seed) == (10_000, 5_000, 10, 0)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"algos": ["virel", "sacc"]}, "Unknown algorithm 'sacc'"),
        ({"budget": 1000}, "not above the warm-up"),
        ({"budget": 12_000}, "must be positive and divide"),
    ],
)
def test_bad_study_input_is_one_line(kw, message):
    with pytest.raises(ConfigError, match=message):
        paper.check_args(args(**kw))


def test_an_unknown_task_stops_the_study_before_any_trial(tmp_path, capsys, monkeypatch):
    argv = ["paper.py", "--tasks", "HalfCheeta-v5", "--budget", "2000", "--eval-every", "1000"]
    argv += ["--root", str(tmp_path / "root"), "--results", str(tmp_path / "res")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="error: .*HalfCheeta-v5"):
        paper.main()
    assert not (tmp_path / "res").exists()


def test_the_commit_record_gives_the_step_a_resume_loads_not_the_last_logged(tmp_path):
    import torch

    plan = paper.plan_trials(args(tasks=["Hopper-v5"], algos=["beta", "sb3_sac"], then=[], seeds=[0], budget=30_000))
    for t in plan:  # both stopped after logging 25k; only ours has a checkpoint, from 20k
        (tmp_path / t.name).mkdir()
        (tmp_path / t.name / "eval.csv").write_text("step,return_mean,return_std\n20000,1,0\n25000,2,0\n")
    torch.save({"config": {}, "step": 20_000, "agent": {}}, tmp_path / "Hopper-v5__beta__0" / "checkpoint.pt")
    paper.record_commits(tmp_path, plan, "abc")
    paper.record_commits(tmp_path, plan, "def")  # a second driver: ours continues, SB3's starts again
    seen = json.loads((tmp_path / "commits.json").read_text())
    assert [(r["commit"], r["from_step"]) for r in seen["Hopper-v5__beta__0"]] == [("abc", 20_000), ("def", 20_000)]
    assert [(r["commit"], r["from_step"]) for r in seen["Hopper-v5__sb3_sac__0"]] == [("def", 0)]


def _result(root: Path, name: str, returns: dict[int, float], error: str | None = None) -> None:
    out = root / name
    out.mkdir(parents=True)
    rows = "".join(f"{s},{r},0\n" for s, r in returns.items())
    out.joinpath("eval.csv").write_text("step,return_mean,return_std\n" + rows)
    out.joinpath("config.json").write_text(json.dumps({"env": name.split("__")[0], "algo": name.split("__")[1]}))
    out.joinpath("timing.csv").write_text("step,time_total_s\n5000,100\n10000,200\n")
    if error:
        out.joinpath("error.txt").write_text(error)


def test_the_table_reports_a_diverged_trial_as_diverged_and_compares_with_sac(tmp_path):
    for seed, (a, b) in enumerate([(100.0, 10.0), (200.0, 20.0), (300.0, 30.0)]):
        _result(tmp_path, f"Hopper-v5__beta__{seed}", {5000: 0.0, 10_000: a})
        _result(tmp_path, f"Hopper-v5__sb3_sac__{seed}", {5000: 0.0, 10_000: b})
    _result(tmp_path, "Hopper-v5__beta__3", {5000: 0.0}, error="ConfigError: The critic diverged: NaN at step 7000")
    table = paper.table(tmp_path, ["Hopper-v5"], ["beta", "sb3_sac"], 10_000)
    beta = next(line for line in table.splitlines() if "| beta |" in line)
    # mean ± sd (population) of 100, 200, 300: 200 ± 81.6; IQM of three = their mean; 50 steps/s from timing.csv
    assert "| 3 (seed 3 diverged at step 7000) |" in beta and "200 ± 82" in beta and "| 50.0 |" in beta
    assert beta.endswith("| ahead |")  # every resampled IQM of beta (≥ 100) is above every one of SAC (≤ 30)


def test_a_diverged_trial_shows_the_step_its_error_names_else_its_last_evaluation(tmp_path):
    """Tune's error.txt is a traceback: the step is read from the line that says what diverged."""
    trace = "Traceback (most recent call last):\n  File ..., line 3, in <module>\nvirel_ppl.config.ConfigError: "
    errors = {
        0: trace + "The temperature α diverged at step 256: log_alpha = -1e+09, so α = 0 ...",
        1: trace + "Hopper-v5__sb3_sac__1: SB3's SAC diverged at step 12000 (non-finite actor.mu.weight); ...",
        2: trace + "The guide's mode action is not finite at evaluation step 3 (seed 10): the networks diverged",
        3: "RuntimeError: worker died",
    }
    for seed, error in errors.items():
        _result(tmp_path, f"Hopper-v5__beta__{seed}", {5000: 0.0, 10_000: 1.0}, error=error)
    beta = next(ln for ln in paper.table(tmp_path, ["Hopper-v5"], ["beta"], 20_000).splitlines() if "| beta |" in ln)
    expected = (
        "seed 0 diverged at step 256; seed 1 diverged at step 12000; seed 2 diverged after step 10000; seed 3 failed"
    )
    assert f"| 0 ({expected}) |" in beta
    assert not any(c.isdigit() for c in beta.split(") |")[1])  # no number from a trial that did not finish


def test_one_seed_gives_no_verdict_against_sac(tmp_path):
    """A single seed's bootstrap interval is a point: the table says so instead of calling 100 "ahead" of 10."""
    _result(tmp_path, "Hopper-v5__beta__0", {5000: 0.0, 10_000: 100.0})
    _result(tmp_path, "Hopper-v5__sb3_sac__0", {5000: 0.0, 10_000: 10.0})
    table = paper.table(tmp_path, ["Hopper-v5"], ["beta", "sb3_sac"], 10_000)
    beta = next(line for line in table.splitlines() if "| beta |" in line)
    assert beta.endswith("| – (one seed) |") and "| 100 ± 0 |" in beta


def test_the_signals_table_averages_the_window_before_each_mark_then_the_seeds(tmp_path):
    """ε at 10k: seed 0 logs 0.2 and 0.4 in (5k, 10k] (its 0.9 at 5k is outside): 0.3; seed 1 logs 0.5: the mean
    0.4. H(π) was not logged by seed 1 and is NaN in a row of seed 0: 1.5 from seed 0's other row. SB3's ε is α."""
    train = {
        "Hopper-v5__beta__0": "step,eps,critic/td_mse,policy/entropy\n5000,0.9,9,9\n7500,0.2,1,nan\n10000,0.4,3,1.5\n",
        "Hopper-v5__beta__1": "step,eps,critic/td_mse\n10000,0.5,5\n",
        "Hopper-v5__sb3_sac__0": "step,critic/q_loss,sac/alpha\n10000,7,0.05\n",
    }
    for name, text in train.items():
        _result(tmp_path, name, {5000: 0.0, 10_000: 1.0})
        (tmp_path / name / "train.csv").write_text(text)
    rows = paper.signals(tmp_path, ["Hopper-v5"], ["beta", "sb3_sac"], 10_000, window=5_000).splitlines()
    assert "| Hopper-v5 | beta | 2 | 10k | 0.4 | 3.5 | 1.5 (1 of 2 seeds) | – |" in rows
    assert "| Hopper-v5 | sb3_sac | 1 | 10k | 0.05 | 7 | – | – |" in rows


def test_under_a_new_root_only_the_trials_not_yet_finished_run(tmp_path, monkeypatch):
    """A lost root: the trials finished in --results are left out; with none left the table is printed."""
    results = tmp_path / "res"
    for algo in ("beta", "sb3_sac"):
        _result(results, f"Hopper-v5__{algo}__0", {5000: 1.0, 10_000: 2.0})
    ran = []
    done = argparse.Namespace(failed=[], interrupted=False)
    monkeypatch.setattr("virel_ppl.sweep.sweep", lambda trials, **kw: ran.append([t.name for t in trials]) or done)
    a = args(tasks=["Hopper-v5"], seeds=[0], then=[], root=tmp_path / "root", results=results)
    a.max_concurrent, a.address, a.tune_checkpoints = 1, None, False
    paper.run(a)
    assert ran == []  # both finished: nothing to run
    paper.run(argparse.Namespace(**{**vars(a), "algos": ["beta", "virel", "sb3_sac"]}))
    assert ran == [["Hopper-v5__virel__0"]]


def test_a_tuned_row_is_our_learner_with_the_given_fields_and_only_it_runs():
    tuned = paper.parse_tuned("virel:alpha=0.2:hidden=[64,64]")
    assert (tuned.label, tuned.algo, tuned.fields) == (
        "virel+alpha=0.2+hidden=64x64",
        "virel",
        {"alpha": 0.2, "hidden": (64, 64)},
    )
    trials = paper.plan_trials(args(tasks=["Hopper-v5"], tuned=["virel:alpha=0.2"]))
    assert [t.name for t in trials] == ["Hopper-v5__virel+alpha=0.2__0", "Hopper-v5__virel+alpha=0.2__1"]
    cfg, default = trials[1].config, paper.trial_config("Hopper-v5", "virel", 1, args())
    assert cfg.alpha == 0.2 and default.alpha == 1.0  # the paper preset's c = 1, changed in the tuned row only
    assert replace(cfg, alpha=1.0) == default  # nothing else differs from the default row


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("virel", "write ALGO:FIELD=VALUE"),
        ("sb3_sac:alpha=0.2", "'sb3_sac' is not one of our learners"),
        ("virel:alpha=0.1,0.2", "one value for alpha"),
        ("virel:total_steps=5000", "total_steps is set by the study itself"),
        ("virel:alpah=0.2", "no field 'alpah'"),
        ("virel:alpha=low", "'low' is not a valid float"),
        ("virel:alpha=-1", "--alpha must be > 0"),
    ],
)
def test_a_bad_tuned_row_is_one_line(spec, message):
    with pytest.raises(ConfigError, match=message):
        paper.check_args(args(tuned=[spec]))


def test_the_table_puts_a_tuned_row_under_its_task_with_a_verdict_against_sac(tmp_path, capsys, monkeypatch):
    """Through ``paper.py --table``: the tuned row found in --results is printed after the defaults of its task."""
    for seed, (tuned, default, sac) in enumerate([(700.0, 300.0, 500.0), (800.0, 310.0, 550.0), (900.0, 320.0, 600.0)]):
        _result(tmp_path, f"Hopper-v5__virel+alpha=0.2__{seed}", {5000: 0.0, 10_000: tuned})
        _result(tmp_path, f"Hopper-v5__virel__{seed}", {5000: 0.0, 10_000: default})
        _result(tmp_path, f"Hopper-v5__sb3_sac__{seed}", {5000: 0.0, 10_000: sac})
    curves = []
    monkeypatch.setattr(paper, "write_curves", lambda results, out, tasks: curves.append((out, tasks)))
    argv = ["paper.py", "--table", "--tasks", "Hopper-v5", "--algos", "virel", "sb3_sac", "--then"]
    monkeypatch.setattr(sys, "argv", [*argv, "--budget", "10000", "--results", str(tmp_path)])
    paper.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| Hopper-v5 |")]
    assert [r.split(" | ")[1] for r in rows[:3]] == ["virel", "sb3_sac", "virel+alpha=0.2"]
    # every resampled IQM of the tuned row (≥ 700) is above every one of SAC (≤ 600); the default's (≤ 320) below
    assert rows[2].endswith("| ahead |") and "800 ± 82" in rows[2] and rows[0].endswith("| behind |")
    # a named study draws its own tasks' curves in a folder of its own, beside the first study's
    monkeypatch.setattr(sys, "argv", ["paper.py", "--study", "humanoid", "--table", "--results", str(tmp_path)])
    paper.main()
    assert curves == [(tmp_path / "report", ["Hopper-v5"]), (tmp_path / "report" / "humanoid", ["Humanoid-v5"])]


def test_a_tuned_study_runs_under_its_own_root_and_skips_what_is_finished(tmp_path, monkeypatch):
    results = tmp_path / "res"
    _result(results, "Hopper-v5__virel+alpha=0.2__0", {5000: 1.0, 10_000: 2.0})
    ran, roots = [], []
    done = argparse.Namespace(failed=[], interrupted=False)

    def sweep(trials, root, **kw):
        ran.append([t.name for t in trials])
        roots.append(root)
        return done

    monkeypatch.setattr("virel_ppl.sweep.sweep", sweep)
    monkeypatch.chdir(tmp_path)
    argv = ["paper.py", "--tuned", "virel:alpha=0.2", "--tasks", "Hopper-v5", "--seeds", "0", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--budget", "10000", "--results", str(results)])
    paper.main()
    assert ran == [["Hopper-v5__virel+alpha=0.2__1"]] and roots == [tmp_path / "runs" / "paper-tuned"]
    # a named study's tuned rows go beside its root, not into it (the study's saved grid would refuse them)
    study = ["paper.py", "--study", "humanoid", "--tuned", "beta:beta_scale=0.004", "--seeds", "0"]
    monkeypatch.setattr(sys, "argv", [*study, "--results", str(results)])
    paper.main()
    assert ran[-1] == ["Humanoid-v5__beta+beta_scale=0.004__0"] and roots[-1] == tmp_path / "runs/paper-humanoid-tuned"


def test_tuned_curves_are_drawn_apart_from_the_defaults(pendulum_run, tmp_path):
    for name in ("Pendulum-v1__virel__0", "Pendulum-v1__virel+alpha=0.5__0"):
        shutil.copytree(pendulum_run, tmp_path / name)
    cfg = tmp_path / "Pendulum-v1__virel+alpha=0.5__0" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "alpha": 0.5}))
    budget = paper._last_step(pendulum_run / "eval.csv")
    assert paper._status_of(tmp_path / "Pendulum-v1__virel__0", budget) == "finished"
    shutil.copytree(pendulum_run, tmp_path / "Hopper-v5__virel__0")  # another task's trial: not in these curves
    assert paper.write_curves(tmp_path, tmp_path / "report", ["Pendulum-v1"]) == tmp_path / "report" / "report.md"
    defaults, tuned = (tmp_path / "report" / "report.md").read_text(), (tmp_path / "report/tuned/report.md").read_text()
    assert "1 runs in 1 group(s), grouped by env, algo." in defaults and "virel+alpha" not in defaults
    assert "grouped by env, algo, alpha." in tuned and "| Pendulum-v1 · virel · 0.5 | 1 |" in tuned
    # tuned rows alone (a study of them, in a --results of its own): their report is the one written
    shutil.rmtree(tmp_path / "Pendulum-v1__virel__0")
    assert paper.write_curves(tmp_path, tmp_path / "only", ["Pendulum-v1"]) == tmp_path / "only/tuned/report.md"


# --- benchmarks/probe_policy.py -----------------------------------------------------------------------------------


def test_the_policy_probe_reads_the_run_it_is_given(pendulum_run):
    """On the tiny Pendulum run: its checkpoint's step, the ε of its last train.csv row (virel: α = 1), the mode's
    return as the evaluation loop gives it on the probe's seeds, and a different return from sampled actions."""
    import probe_policy

    from virel_ppl.runtime.checkpoints import load_agent
    from virel_ppl.runtime.evaluation import evaluate

    p = probe_policy.probe(pendulum_run, num_states=64, episodes=2)
    with open(pendulum_run / "train.csv", newline="") as fh:
        last_eps = float(list(csv.DictReader(fh))[-1]["eps"])
    agent, _ = load_agent(pendulum_run)
    assert (p["step"], p["eps"]) == (120, last_eps) == (120, 1.0)
    assert p["mode_return"] == pytest.approx(evaluate(agent, "Pendulum-v1", 2, seed=20_000).mean())
    assert p["sampled_return"] != p["mode_return"] and 0.0 <= p["at_edge"] <= 1.0


def test_the_policy_probe_reads_a_finished_sb3_run_on_another_runs_states(sb3_straight, pendulum_run, tmp_path):
    """A finished SB3 run keeps no buffer: the probe says to give --states-from, and with it probes SB3's policy on
    that run's states: ε is the checkpoint's α, the mode at the edge is what SB3's own ``predict`` does on those
    states (its mean pushed towards the upper edge, so that some modes are there), and the mode's return is SB3's
    ``predict`` played on the probe's seeds."""
    import probe_policy
    from stable_baselines3 import SAC

    with pytest.raises(ConfigError, match="keeps no replay buffer .a finished SB3 run.: give --states-from RUN"):
        probe_policy.probe(sb3_straight, num_states=64, episodes=2)
    run = shutil.copytree(sb3_straight, tmp_path / "pushed")
    saved = torch.load(run / "checkpoint.pt", weights_only=False)
    saved["sb3"]["policy"]["actor.mu.bias"] += 2.5
    torch.save(saved, run / "checkpoint.pt")
    p = probe_policy.probe(run, num_states=64, episodes=2, states=probe_policy.states_of(pendulum_run))

    model = SAC("MlpPolicy", gym.make("Pendulum-v1"))
    model.policy.load_state_dict(saved["sb3"]["policy"])
    buffer = torch.load(pendulum_run / "checkpoint.pt", weights_only=False)["replay"]
    pick = torch.randperm(int(buffer["size"]), generator=torch.Generator().manual_seed(0))[:64]
    mode, _ = model.predict(buffer["obs"][pick].numpy(), deterministic=True)
    at_edge = np.mean(2.0 - np.abs(mode) < 0.01 * 4.0)  # Pendulum's box is [-2, 2]
    returns = []
    for k in range(2):  # the probe's seeds: the run's seed 0 + 20000, copy k of the vector env with + k
        env, total, done = gym.make("Pendulum-v1"), 0.0, False
        obs, _ = env.reset(seed=20_000 + k)
        while not done:
            obs, r, terminated, truncated, _ = env.step(model.predict(obs, deterministic=True)[0])
            total, done = total + r, terminated or truncated
        returns.append(total)
    assert (p["step"], p["eps"]) == (300, pytest.approx(float(saved["sb3"]["log_ent_coef"].exp())))
    assert 0.0 < at_edge < 1.0 and p["at_edge"] == pytest.approx(at_edge)
    assert p["mode_return"] == pytest.approx(np.mean(returns), rel=1e-5)


def test_the_humanoid_study_is_the_explicit_command_and_reports_100k_250k_500k(tmp_path):
    """``--study humanoid`` plans the trials (names and configs) of the command that started its root, so that root
    continues; a flag given with it wins; its table reports the returns at 100k, 250k and 500k."""
    explicit = "--tasks Humanoid-v5 --budget 500000 --eval-every 10000 --algos beta sb3_sac --then virel"
    explicit += " --root runs/paper-humanoid"
    study, plain = paper.parse_args(["--study", "humanoid"]), paper.parse_args(explicit.split())
    assert [(t.name, t.config) for t in paper.plan_trials(study)] == [
        (t.name, t.config) for t in paper.plan_trials(plain)
    ]
    assert study.root == plain.root and len(paper.plan_trials(study)) == 9
    assert paper.parse_args(["--study", "humanoid", "--seeds", "0"]).seeds == [0]
    head = paper.table(tmp_path, ["Humanoid-v5"], ["beta"], 500_000, marks=study.marks).splitlines()[0]
    assert "100k mean ± sd" in head and "250k IQM" in head and "500k IQM" in head and "25k" not in head


def test_a_finished_trial_keeps_only_its_latest_checkpoint(tmp_path):
    root, results = tmp_path / "root", tmp_path / "results"
    trial = paper.plan_trials(args(tasks=["Hopper-v5"], algos=["beta"], then=[], seeds=[0]))[0]
    run = root / trial.name
    run.mkdir(parents=True)
    (run / "eval.csv").write_text("step,return_mean,return_std\n5000,1,0\n10000,2,0\n")
    (run / "checkpoint.pt").write_bytes(b"latest")
    (run / "checkpoint.prev.pt").write_bytes(b"previous")
    assert paper.collect(root, results, [trial], final=True) == [trial.name]
    assert (run / "checkpoint.pt").exists() and not (run / "checkpoint.prev.pt").exists()


def _progress(path: Path, rows: list[tuple[int, float, int]]) -> None:
    """A Tune progress.csv: (step, time_since_restore, iterations_since_restore) per report, with a time_total_s."""
    lines = [f"{s},{w},{i},{w},{1000 + s}" for s, w, i in rows]
    head = "step,time_since_restore,iterations_since_restore,time_total_s,timestamp\n"
    path.write_text(head + "\n".join(lines) + "\n")


def test_a_trial_run_by_three_drivers_keeps_the_wall_clock_of_each(tmp_path):
    """Tune restarts progress.csv when a resumed sweep restarts a trial; the collected timing.csv holds the reports of
    every driver, oldest first, and steps/s counts only the spans within one run (not a run's start-up, nor the gap
    between runs): 10k steps in 500 s in the first, none in the second (one report), 10k in 250 s in the third."""
    from virel_ppl.sweep import keep_progress

    root, results = tmp_path / "root", tmp_path / "results"
    trial = paper.plan_trials(args(tasks=["Hopper-v5"], algos=["beta"], then=[], seeds=[0], budget=50_000))[0]
    tune_dir = root / "tune" / trial.name
    tune_dir.mkdir(parents=True)
    _progress(tune_dir / "progress.csv", [(10_000, 100.0, 1), (20_000, 600.0, 2)])  # the first driver
    assert [p.name for p in keep_progress(root / "tune")] == ["progress.1.csv"]
    _progress(tune_dir / "progress.csv", [(30_000, 900.0, 1)])  # the second: one report, then stopped
    assert [p.name for p in keep_progress(root / "tune")] == ["progress.2.csv"]
    assert keep_progress(root / "tune") == []  # a driver that stopped before the trial started keeps nothing new
    _progress(tune_dir / "progress.csv", [(40_000, 40.0, 1), (50_000, 290.0, 2)])  # the third, from 30k
    run = root / trial.name
    run.mkdir(parents=True)
    (run / "eval.csv").write_text("step,return_mean,return_std\n" + "".join(f"{s}0000,1,0\n" for s in range(1, 6)))
    (run / "config.json").write_text(json.dumps({"env": "Hopper-v5", "algo": "beta", "warmup_steps": 5000}))
    assert paper.collect(root, results, [trial]) == [trial.name]
    timing = read_csv(results / trial.name / "timing.csv")
    assert timing["step"] == [10_000, 20_000, 30_000, 40_000, 50_000]
    assert timing["iterations_since_restore"] == [1, 2, 1, 1, 2]
    assert paper._steps_per_s(results / trial.name) == pytest.approx(20_000 / 750)


def test_a_finished_trial_waits_for_tunes_record_of_its_last_report(tmp_path):
    """The trial writes its last eval.csv row (20k) before Tune records that report: a poll in between copies
    nothing, the next one copies a timing.csv that ends at 20k; at the sweep's end, whatever Tune recorded is copied."""
    root, results = tmp_path / "root", tmp_path / "results"
    first, second = paper.plan_trials(
        args(tasks=["Hopper-v5"], algos=["beta"], then=[], seeds=[0, 1], budget=20_000, eval_every=10_000)
    )
    for t in (first, second):
        (root / "tune" / t.name).mkdir(parents=True)
        (root / t.name).mkdir(parents=True)
        (root / t.name / "eval.csv").write_text("step,return_mean,return_std\n10000,1,0\n20000,2,0\n")
        _progress(root / "tune" / t.name / "progress.csv", [(10_000, 100.0, 1)])
    assert paper.collect(root, results, [first]) == [] and not (results / first.name).exists()
    _progress(root / "tune" / first.name / "progress.csv", [(10_000, 100.0, 1), (20_000, 300.0, 2)])
    assert paper.collect(root, results, [first, second]) == [first.name]
    assert read_csv(results / first.name / "timing.csv")["step"] == [10_000, 20_000]
    assert paper.collect(root, results, [first, second], final=True) == [second.name]
    assert read_csv(results / second.name / "timing.csv")["step"] == [10_000]


def test_the_sweeps_end_copies_a_finished_trial_that_tune_recorded_in_part(tmp_path, monkeypatch):
    """``paper.run``: the sweep returns with the last report unrecorded by Tune; the trial is copied all the same."""
    results = tmp_path / "res"

    def sweep(trials, root, **kw):
        (t,) = trials
        (root / t.name).mkdir(parents=True)
        (root / t.name / "eval.csv").write_text("step,return_mean,return_std\n5000,1,0\n10000,2,0\n")
        (root / t.name / "config.json").write_text(json.dumps({"env": "Hopper-v5", "algo": "beta"}))
        (root / "tune" / t.name).mkdir(parents=True)
        _progress(root / "tune" / t.name / "progress.csv", [(5_000, 50.0, 1)])
        return argparse.Namespace(failed=[], interrupted=False)

    monkeypatch.setattr("virel_ppl.sweep.sweep", sweep)
    a = args(tasks=["Hopper-v5"], algos=["beta"], then=[], seeds=[0], root=tmp_path / "root", results=results)
    a.max_concurrent, a.address, a.tune_checkpoints = 1, None, False
    paper.run(a)
    assert read_csv(results / "Hopper-v5__beta__0" / "eval.csv")["step"] == [5_000, 10_000]
    assert read_csv(results / "Hopper-v5__beta__0" / "timing.csv")["step"] == [5_000]


def test_steps_per_s_of_the_older_timing_layout_skips_where_the_clock_restarted(tmp_path):
    """timing.csv from before the runs were told apart: Tune's time_total_s, which restarts at a resume."""
    out = tmp_path / "trial"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"warmup_steps": 0}))
    (out / "timing.csv").write_text("step,time_total_s\n10000,100\n20000,300\n30000,50\n40000,150\n")
    assert paper._steps_per_s(out) == pytest.approx(20_000 / 300)


def test_the_entropy_read_off_alphas_loss_by_hand():
    """α = 0.5, target −1, H on [−1, 1] of 2.5: SB3's α-loss is −log 0.5 · (−2.5 − 1) = −2.4260; Pendulum's box
    [−2, 2] adds log 2, so H = 3.1931. α = 1 (log α = 0), a fixed α (no α-loss) and two gradient steps tell nothing."""
    from gymnasium.spaces import Box

    from virel_ppl.baselines import sac_entropy

    model = argparse.Namespace(action_space=Box(-2.0, 2.0, (1,)), target_entropy=-1.0, gradient_steps=1)
    loss = -np.log(0.5) * (-2.5 - 1.0)
    assert sac_entropy({"train/ent_coef": 0.5, "train/ent_coef_loss": loss}, model) == pytest.approx(3.1931, abs=1e-4)
    assert sac_entropy({"train/ent_coef": 1.0, "train/ent_coef_loss": 0.0}, model) is None
    assert sac_entropy({"train/ent_coef": 0.2}, model) is None
    several = argparse.Namespace(**{**vars(model), "gradient_steps": 2})  # logged means: the algebra does not hold
    assert sac_entropy({"train/ent_coef": 0.5, "train/ent_coef_loss": loss}, several) is None


def test_an_sb3_runs_logged_entropy_is_its_policys_on_that_updates_batch(tmp_path, monkeypatch):
    """train.csv's policy/entropy of an SB3 run against −E[log π] that SB3's own action_log_prob returned for the batch
    of the update before the row (the call that feeds α's loss), plus log 2 for Pendulum's box [−2, 2]."""
    from stable_baselines3.sac.policies import Actor

    from virel_ppl import baselines

    models, calls = [], []  # calls: (num_timesteps, mean log π) of every action_log_prob
    real_sac, real_log_prob = __import__("stable_baselines3").SAC, Actor.action_log_prob

    def keep(*args, **kwargs):
        models.append(real_sac(*args, **kwargs))
        return models[-1]

    def record(self, obs):
        actions, log_prob = real_log_prob(self, obs)
        calls.append((models[0].num_timesteps, float(log_prob.detach().mean())))
        return actions, log_prob

    monkeypatch.setattr("stable_baselines3.SAC", keep)
    monkeypatch.setattr(Actor, "action_log_prob", record)
    log = read_csv(baselines.train_sb3_sac(Config(**SMALL, run_dir=tmp_path / "sb3")) / "train.csv")
    assert len(log["policy/entropy"]) == len(log["step"]) >= 4
    for step, entropy in zip(log["step"], log["policy/entropy"]):
        first = next(m for ts, m in calls if ts == step - 1)  # the update after step - 1: its batch's log π first
        assert entropy == pytest.approx(-first + np.log(2.0), abs=1e-4)

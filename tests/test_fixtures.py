"""Today's numbers, held fixed: short runs per algorithm, guide and ELBO against recorded digests, and a run directory
written by earlier code that must still resume, evaluate and diagnose (``tests/fixtures/record.py`` made both).

The digests are bits of floating-point arithmetic, so they are compared only where torch's build and CPU kernels are
those of the recording (``runs.json``'s ``machine``); elsewhere those tests skip and say why.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))

import record  # noqa: E402

RECORDED = json.loads((FIXTURES / "runs.json").read_text())
SAME_MACHINE = RECORDED["machine"] == record.machine()
WHY = f"recorded with {RECORDED['machine']}, this machine has {record.machine()}: other floating-point bits"


@pytest.mark.skipif(not SAME_MACHINE, reason=WHY)
@pytest.mark.parametrize("name", sorted(RECORDED["runs"]))
def test_a_short_run_is_bit_identical_to_the_recorded_one(name, tmp_path):
    from virel_ppl.train import train

    train(record.fixture_config(name, tmp_path / "run"))
    assert record.digest(tmp_path / "run") == RECORDED["runs"][name]


def test_the_recorded_runs_cover_every_algorithm_guide_and_elbo():
    from virel_ppl.inference.divergences import DIVERGENCES
    from virel_ppl.inference.guides import GUIDES
    from virel_ppl.variants import VARIANTS

    names = set(RECORDED["runs"])
    assert set(VARIANTS) - {"virel1"} <= names  # virel1 is virel
    assert {f"guide={g}" for g in GUIDES} - {"guide=tanh_normal"} <= names
    # trace is the default of every other run; enum is what auto picks for the categorical guide
    assert {f"elbo={e}" for e in DIVERGENCES} - {"elbo=trace", "elbo=enum"} <= names


def test_an_old_run_directory_resumes_exactly_evaluates_and_diagnoses(tmp_path, capsys):
    """The run in fixtures/old_run stopped at step 200; resumed to 300 it must equal a fresh 300-step run of the same
    config, bit for bit where the machine is the recording's, and evaluate and diagnose from its checkpoint."""
    from virel_ppl import cli
    from virel_ppl.config import Config
    from virel_ppl.train import train

    old = tmp_path / "old_run"
    shutil.copytree(FIXTURES / "old_run", old)
    cli.main(["train", "--resume", str(old), "--total-steps", "300"])
    fresh = tmp_path / "fresh"
    train(Config(**{"env": "Pendulum-v1", **record.BASE, **record.OLD_RUN, "total_steps": 300}, run_dir=fresh))
    if SAME_MACHINE:
        assert record.digest(old) == record.digest(fresh)
    assert (old / "eval.csv").read_text().splitlines()[0] == "step,return_mean,return_std"
    capsys.readouterr()
    cli.main(["evaluate", str(old), "--episodes", "1"])
    assert "Pendulum-v1 (sac_auto): return" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--num-samples must be a positive multiple of 4"):
        cli.main(["diagnose", str(old), "--num-states", "1", "--num-samples", "50"])
    cli.main(["diagnose", str(old), "--num-states", "1", "--num-samples", "48"])
    assert (old / "posterior" / "action_posterior.md").exists()

"""Today's numbers, held fixed: short runs per algorithm, guide and ELBO against recorded digests, and a run directory
written by earlier code that must still resume, evaluate and diagnose (``tests/fixtures/record.py`` made both).

The digests are bits of floating-point arithmetic. Each run here goes through a child process whose CPU kernels are
pinned to a recorded kernel set (``record.pinned_env``: ATen's, MKL's branch, numpy's loops, one thread), the
richest this CPU can run, so any x86-64 CPU (AVX2 or AVX-512) computes the recorded bits. Another torch than the
recording's has other kernels: those tests skip and say so. Each test's id names the kernel set and torch compared.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))

import record  # noqa: E402

RECORDED = json.loads((FIXTURES / "runs.json").read_text())
TORCH = RECORDED["stack"]["torch"]
KERNELS = record.kernel_set_here(list(RECORDED["runs"]))
AGAINST = f"{KERNELS}-kernels-torch-{TORCH}"  # in every test id: what the run is compared against
if torch.__version__ != TORCH:
    WHY = f"the digests were recorded with torch {TORCH}, this is torch {torch.__version__}: other kernels, other bits"
elif KERNELS is None:
    WHY = f"the digests were recorded on x86-64 with the {' and '.join(RECORDED['runs'])} kernels; this CPU runs none"
else:
    WHY = ""
same_bits = pytest.mark.skipif(bool(WHY), reason=WHY)
NAMES = sorted(RECORDED["runs"][KERNELS or RECORDED["old_run"]])


@pytest.fixture(scope="module")
def child():
    """A child process with this CPU's recorded kernel set pinned (imports paid once per test process)."""
    child = record.PinnedChild(KERNELS or "default")
    yield child
    child.close()


def differs() -> str:
    """What else differs from the recording, for a failure's message (a numpy or Pyro release may change bits)."""
    other = {k: v for k, v in record.stack().items() if RECORDED["stack"].get(k) != v and k != "python"}
    return f"; versions other than the recording's: {other}" if other else ""


@same_bits
@pytest.mark.parametrize("name", [pytest.param(n, id=f"{n}@{AGAINST}") for n in NAMES])
def test_a_short_run_is_bit_identical_to_the_recorded_one(name, child):
    ran = child.ask(digests=[name])
    assert ran["kernels"] == KERNELS.upper()  # the pin took: ATen ran the recorded kernel set
    print(f"{name}: compared with the {KERNELS} kernels' recording under torch {TORCH}")
    assert ran["runs"][name] == RECORDED["runs"][KERNELS][name], f"{name} under {AGAINST}{differs()}"


@same_bits
@pytest.mark.parametrize("name", [pytest.param("virel", id=f"virel@{AGAINST}")])
def test_one_ulp_on_one_weight_after_one_update_changes_the_digests(name, child):
    """The net's resolution: one critic weight one ulp up after step 150's update (of 300) must show (the same run
    unchanged is the recorded one: the test above)."""
    ran = child.ask(digests=[name], nudge_at=150)
    assert ran["nudged"] == 1  # the hook moved a weight by exactly one ulp, once
    recorded = RECORDED["runs"][KERNELS][name]
    assert ran["runs"][name]["agent"] != recorded["agent"]
    assert ran["runs"][name]["train.csv"] != recorded["train.csv"]


def test_the_recorded_runs_cover_every_algorithm_guide_and_elbo():
    from virel_ppl.inference.divergences import DIVERGENCES
    from virel_ppl.inference.guides import GUIDES
    from virel_ppl.variants import VARIANTS

    assert set(RECORDED["runs"]) <= set(record.KERNEL_SETS)
    for runs in RECORDED["runs"].values():
        names = set(runs)
        assert set(VARIANTS) - {"virel1"} <= names  # virel1 is virel
        assert {f"guide={g}" for g in GUIDES} - {"guide=tanh_normal"} <= names
        # trace is the default of every other run; enum is what auto picks for the categorical guide
        assert {f"elbo={e}" for e in DIVERGENCES} - {"elbo=trace", "elbo=enum"} <= names


def test_an_old_run_directory_resumes_exactly_evaluates_and_diagnoses(tmp_path, capsys, child):
    """The run in fixtures/old_run stopped at step 200; resumed to 300 it must equal a fresh 300-step run of the same
    config, bit for bit under the kernels it was recorded with, and evaluate and diagnose from its checkpoint."""
    from virel_ppl import cli

    old = tmp_path / "old_run"
    shutil.copytree(FIXTURES / "old_run", old)
    ran = child.ask(resume_old=[str(old), str(tmp_path / "fresh")])
    if not WHY and KERNELS == RECORDED["old_run"]:
        assert ran["old"] == ran["fresh"], f"resumed ≠ fresh under {AGAINST}{differs()}"
    assert (old / "eval.csv").read_text().splitlines()[0] == "step,return_mean,return_std"
    capsys.readouterr()
    cli.main(["evaluate", str(old), "--episodes", "1"])
    assert "Pendulum-v1 (sac_auto): return" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--num-samples must be a positive multiple of 4"):
        cli.main(["diagnose", str(old), "--num-states", "1", "--num-samples", "50"])
    cli.main(["diagnose", str(old), "--num-states", "1", "--num-samples", "48"])
    assert (old / "posterior" / "action_posterior.md").exists()

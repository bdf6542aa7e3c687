import shutil
from pathlib import Path

import pyro
import pytest
import torch
from helpers import tiny_train

from virel_ppl.analysis import import_arviz

# before any test module imports ArviZ: pytest-xdist's workers collect at the same moment (see import_arviz)
import_arviz()


@pytest.fixture(autouse=True)
def _seed_and_clear():
    """Every test starts from the same seeds and an empty Pyro param store."""
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory):
    """A finished 120-step Pendulum-v1 run (``helpers.tiny_train``: evaluations at 60 and 120, checkpoints at 40, 80,
    120). Copy it before changing it."""
    run_dir = tmp_path_factory.mktemp("pendulum") / "run"
    tiny_train(run_dir)
    return run_dir


@pytest.fixture
def run_copy(pendulum_run, tmp_path):
    """A copy of ``pendulum_run`` to change."""
    return Path(shutil.copytree(pendulum_run, tmp_path / "run"))

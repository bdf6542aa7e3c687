"""ArviZ imported by several processes at once: its once-a-day stamp must not fail the import (CI failed on it)."""

import datetime
import os
import subprocess
import sys
import textwrap

import pytest

# Runs in a fresh interpreter with an empty cache directory, so ArviZ's first import of the day writes its stamp.
# Path.replace is patched to lose the race the way a second process loses it: the other process renames its own
# temporary file onto the stamp first (the stamp now holds today's date), so this one's temporary file is gone.
RACE = textwrap.dedent(
    """
    import pathlib, sys
    real_replace = pathlib.Path.replace
    raced = []

    def replace_after_losing_the_race(self, target):
        if self.name == "daily_warning.tmp" and not raced:
            raced.append(self)
            real_replace(self, target)
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return real_replace(self, target)

    pathlib.Path.replace = replace_after_losing_the_race
    try:
        {call}
    except FileNotFoundError as e:
        print("import failed:", e)
        sys.exit(3)
    print("raced" if raced else "no stamp written")
    """
)

CALLS = {
    "import_arviz": "from virel_ppl.analysis import import_arviz; import_arviz().hdi",
    # what train() calls at its first evaluation (k̂ of the guide)
    "psis": "import numpy as np; from virel_ppl.analysis.diagnostics import psis; "
    "psis(np.random.default_rng(0).normal(size=(2, 200)))",
    # what a sweep's report calls (HDI bands over seeds)
    "hdi_over_seeds": "import numpy as np; from virel_ppl.analysis.report import hdi_over_seeds; "
    "hdi_over_seeds(np.random.default_rng(0).normal(size=(3, 4)), 0.9)",
}


def _run(call: str, cache) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-c", RACE.format(call=call)], env=env, capture_output=True, text=True)


def test_plain_import_fails_when_it_loses_the_race(tmp_path):
    """The control: without the retry, losing the race fails ``import arviz`` (this ArviZ has the race)."""
    out = _run("import arviz", tmp_path)
    if "no stamp written" in out.stdout:
        pytest.skip("this ArviZ writes no daily stamp: there is no race to lose")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "daily_warning.tmp" in out.stdout


@pytest.mark.parametrize("site", sorted(CALLS))
def test_arviz_is_imported_after_losing_the_race(site, tmp_path):
    out = _run(CALLS[site], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    if out.stdout.strip().endswith("no stamp written"):
        pytest.skip("this ArviZ writes no daily stamp: there is no race to lose")
    assert out.stdout.strip().endswith("raced"), out.stdout
    # the process that won the race wrote today's stamp, which the second import read
    assert (tmp_path / "arviz" / "daily_warning").read_text().strip() == datetime.date.today().isoformat()

"""``diagnose`` of a run that logged no ε: the variant says whether its ε is a constant of the run
(``Variant.fixed_eps``), and diagnose uses that constant; a variant whose ε moves makes it ask for ``--eps``."""

from __future__ import annotations

import pytest
from helpers import tiny_train

from virel_ppl.cli import main
from virel_ppl.variants import VARIANTS


def _diagnose_without_logged_eps(run_dir) -> list[str]:
    """Drop every row of train.csv (no ε logged), run diagnose, return its command line."""
    header = (run_dir / "train.csv").read_text().splitlines()[0]
    (run_dir / "train.csv").write_text(header + "\r\n")
    return ["diagnose", str(run_dir), "--num-samples", "48", "--num-states", "1", "--states", "replay"]


@pytest.mark.parametrize("algo", ["virel1", "sac", "virel2", "mpo"])
def test_diagnose_of_a_fixed_eps_run_without_logged_eps_uses_its_alpha(algo, tmp_path):
    run_dir = tmp_path / "run"
    tiny_train(run_dir, "--algo", algo, "--alpha", "0.37", total=60, eval_every=60)
    main(_diagnose_without_logged_eps(run_dir))
    assert "ε = 0.37," in (run_dir / "posterior" / "action_posterior.md").read_text()


@pytest.mark.parametrize("algo", ["sac_auto", "mpo_np"])
def test_diagnose_of_a_moving_eps_run_without_logged_eps_asks_for_it(algo, tmp_path):
    run_dir = tmp_path / "run"
    tiny_train(run_dir, "--algo", algo, total=60, eval_every=60)
    with pytest.raises(SystemExit, match="Cannot tell the run's ε.*pass --eps"):
        main(_diagnose_without_logged_eps(run_dir))


def test_which_variants_have_a_fixed_eps():
    from virel_ppl.agent import VirelAgent
    from virel_ppl.config import Config
    from virel_ppl.inference.actions import ActionBox

    fixed = {
        algo
        for algo in VARIANTS
        if VirelAgent(3, ActionBox([-1.0], [1.0]), Config(algo=algo, hidden=(4,), alpha=0.37)).variant.fixed_eps == 0.37
    }
    assert fixed == {"virel", "virel1", "virel2", "mpo", "sac", "pseudo_likelihood"}

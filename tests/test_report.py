"""Multi-seed reports built from small fake run directories with known numbers."""

import csv
import json

import numpy as np
import pytest

from virel_ppl.analysis.report import (
    bootstrap_ci,
    find_runs,
    group_runs,
    iqm,
    learning_curves,
    load_run,
    probability_of_improvement,
    probability_of_improvement_ci,
    write_report,
)
from virel_ppl.cli import main


def fake_run(root, name, algo, seed, returns, steps=(100, 200, 300), diag=None, env="Fake-v0"):
    """A run directory as `virel_ppl train` writes it: config.json, eval.csv and optionally diagnostics.csv."""
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"env": env, "algo": algo, "seed": seed, "alpha": 1.0}))
    with open(d / "eval.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "return_mean", "return_std"])
        w.writerows([s, r, 1.0] for s, r in zip(steps, returns))
    if diag is not None:
        with open(d / "diagnostics.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["step", "eps", "khat_mean", "khat_max", "khat_bad_frac", "ess_frac", "kl"])
            w.writerows([s, 0.5, k, k + 0.5, 0.0, 0.9, 0.01] for s, k in zip(steps, diag))
    return d


# Group "virel": final returns 0, 10, 20, 100 (seed 3 also has a 4th evaluation, at step 400, that the others lack).
# Group "beta":  final returns 0, 1, 2, 10, 20.
VIREL = {0: [-5, 0, 0], 1: [-5, 5, 10], 2: [-5, 10, 20], 3: [-5, 50, 100, 999]}
BETA = {0: [0, 0, 0], 1: [1, 1, 1], 2: [2, 2, 2], 3: [10, 10, 10], 4: [20, 20, 20]}


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    for seed, rets in VIREL.items():
        steps = (100, 200, 300, 400) if len(rets) == 4 else (100, 200, 300)
        fake_run(
            root, f"virel_{seed}", "virel", seed, rets, steps, diag=[0.9, 0.5, 0.2 + 0.2 * (seed % 2)][: len(rets)]
        )
    for seed, rets in BETA.items():
        fake_run(root, f"beta_{seed}", "beta", seed, rets)
    return root


def test_curves_align_steps_and_band_is_the_hdi_over_seeds(runs_root):
    groups = group_runs([load_run(p) for p in find_runs([runs_root])])
    assert sorted(groups) == ["Fake-v0 · beta", "Fake-v0 · virel"]
    virel = next(c for c in learning_curves(groups, hdi_prob=0.5) if c.label.endswith("virel"))
    assert virel.steps.tolist() == [100, 200, 300] and virel.dropped_steps == 1
    np.testing.assert_allclose(virel.mean, [-5.0, 16.25, 32.5])
    np.testing.assert_allclose(virel.final, [0, 10, 20, 100])
    # HDI 50% of 4 values: the narrowest window of 3 sorted values → [0, 20] at the last step
    np.testing.assert_allclose(virel.hdi[-1], [0, 20])
    np.testing.assert_allclose(virel.hdi[0], [-5, -5])
    beta = next(c for c in learning_curves(groups, hdi_prob=0.5) if c.label.endswith("beta"))
    np.testing.assert_allclose(beta.hdi[-1], [0, 2])  # windows [0,2], [1,10], [2,20]


def test_iqm_and_bootstrap_ci():
    assert iqm(np.array([0, 10, 20, 100])) == 15.0
    assert iqm(np.array([0, 1, 2, 10, 20])) == pytest.approx(13 / 3)
    assert iqm(np.array([3.0, 7.0])) == 5.0  # fewer than 4: the mean
    x = np.array([0.0, 10, 20, 100, 30, 40, 50, 60])
    lo, hi = bootstrap_ci(x, iqm, ci=0.95, n_boot=500, seed=0)
    assert x.min() <= lo < iqm(x) < hi <= x.max()
    assert (lo, hi) == bootstrap_ci(x, iqm, ci=0.95, n_boot=500, seed=0)
    assert bootstrap_ci(np.full(5, 7.0)) == (7.0, 7.0)


def test_probability_of_improvement_counts_the_pairs_of_runs():
    x, y = np.array([0.0, 10, 20, 100]), np.array([0.0, 1, 2, 10, 20])
    # 20 pairs: x=0 ties y=0 (1/2); x=10 beats 0, 1, 2 and ties 10 (3.5); x=20 beats four and ties 20 (4.5);
    # x=100 beats all five (5): 13.5 / 20
    assert probability_of_improvement(x, y) == pytest.approx(0.675)
    assert probability_of_improvement(y, x) == pytest.approx(0.325)  # ties split, so the two add up to 1
    # over tasks, the mean of the tasks': task 1 wins 2 of 4 pairs, task 2 all 4
    assert probability_of_improvement([[1.0, 2.0], [5.0]], [[0.0, 3.0], [1.0, 2.0, 3.0, 4.0]]) == pytest.approx(0.75)


def test_probability_of_improvement_ci_resamples_within_each_task():
    x, y = np.array([0.0, 10, 20, 100]), np.array([0.0, 1, 2, 10, 20])
    lo, hi = probability_of_improvement_ci(x, y, n_boot=500, seed=0)
    assert 0.0 <= lo < 0.675 < hi <= 1.0
    assert (lo, hi) == probability_of_improvement_ci(x, y, n_boot=500, seed=0)
    # every run of X above every run of Y on both tasks: every resample says 1
    assert probability_of_improvement_ci([[5.0, 6.0], [9.0]], [[1.0, 2.0], [3.0, 4.0]], n_boot=200) == (1.0, 1.0)
    # within each task X wins every pair; pooled over tasks, X's 2 and 3 would lose to Y's 100 (P = 6/8)
    assert probability_of_improvement_ci([[2.0, 3.0], [200.0, 300.0]], [[1.0], [100.0]], n_boot=200) == (1.0, 1.0)


def test_report_markdown_shows_the_known_numbers(runs_root, tmp_path):
    path = write_report([runs_root], tmp_path / "out", hdi_prob=0.5, n_boot=500)
    md = path.read_text()
    # mean 32.5, sd (ddof 1) 45.7, 50% HDI [0, 20], median 15, IQM 15
    assert "| Fake-v0 · virel | 4 | 300 | 32.5 | 45.7 | [0.0, 20.0] | 15.0 | 15.0 | [" in md
    # mean 6.6, sd 8.5, HDI [0, 2], median 2, IQM (1 + 2 + 10)/3 = 4.3
    assert "| Fake-v0 · beta | 5 | 300 | 6.6 | 8.5 | [0.0, 2.0] | 2.0 | 4.3 | [" in md
    assert "| 50% HDI |" in md and "IQM 95% CI" in md
    # P(virel > beta) of the finals [0, 10, 20, 100] and [0, 1, 2, 10, 20]: 13.5 of 20 pairs
    assert "| Fake-v0 | virel | beta | 0.68 | [" in md or "| Fake-v0 | beta | virel | 0.33 | [" in md
    # diagnostics at the last shared step (300): k̂ mean 0.2, 0.4, 0.2, 0.4 over the seeds (sd ddof 0)
    assert "| Fake-v0 · virel | 4 | 300 | 0.5 ± 0 | 0.30 ± 0.10 |" in md
    assert "Fake-v0 · beta" not in md.split("## Posterior diagnostics")[1].split("## Runs")[0]
    assert "1 evaluation(s) not shared by all its runs were left out" in md
    assert "| Fake-v0 · virel | 3 | 100.0 | 4 |" in md  # the runs table: seed 3 has 4 evaluations
    for png in ("learning_curves.png", "diagnostics.png"):
        assert f"]({png})" in md and (tmp_path / "out" / png).stat().st_size > 10_000


def test_cli_report_and_clear_errors(runs_root, tmp_path, capsys):
    out = tmp_path / "cli"
    main(["report", str(runs_root / "beta_0"), str(runs_root / "beta_1"), "--out", str(out), "--n-boot", "200"])
    assert "report.md" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "| Fake-v0 · beta | 2 | 300 | 0.5 |" in md and not (out / "diagnostics.png").exists()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="No run directories"):
        find_runs([tmp_path / "cli"])
    with pytest.raises(ValueError, match="hdi_prob"):
        write_report([runs_root], out, hdi_prob=1.5)


def test_cli_report_warns_about_runs_of_one_group_with_the_same_seed(tmp_path, capsys):
    root = tmp_path / "runs"
    root.mkdir()
    fake_run(root, "a", "virel", 0, [0, 1, 2])
    repeat = fake_run(root, "b", "virel", 0, [0, 3, 4])  # seed 0 again
    fake_run(root, "c", "virel", 1, [0, 5, 6])
    out = tmp_path / "out"
    main(["report", str(root), "--out", str(out), "--n-boot", "100"])
    err = capsys.readouterr().err
    assert f"warning: Fake-v0 · virel: 2 runs have seed 0 ({root / 'a'}, {repeat})" in err
    assert "repeats of one seed, not independent seeds" in err
    md = (out / "report.md").read_text()
    assert "| Fake-v0 · virel | 2 (3 runs) | 300 | 4.0 |" in md  # 2 distinct seeds; mean of 2, 4, 6
    assert "- Repeated seed: Fake-v0 · virel: 2 runs have seed 0" in md
    # runs of one seed that differ in a setting: the warning names it, and grouping by it silences the warning
    config = json.loads((repeat / "config.json").read_text())
    (repeat / "config.json").write_text(json.dumps({**config, "alpha": 0.5}))
    main(["report", str(root), "--out", str(out), "--n-boot", "100"])
    assert "they differ in alpha: add it to --group-by" in capsys.readouterr().err
    main(["report", str(root), "--out", str(out), "--n-boot", "100", "--group-by", "env", "algo", "alpha"])
    assert "warning" not in capsys.readouterr().err


def test_a_failed_report_is_one_line_and_leaves_no_output_folder(tmp_path):
    out = tmp_path / "new" / "report"
    with pytest.raises(SystemExit, match="error: .*missing is not a directory"):
        main(["report", str(tmp_path / "missing"), "--out", str(out)])
    assert not (tmp_path / "new").exists()
    empty = fake_run(tmp_path, "empty", "virel", 0, [], steps=())
    with pytest.raises(SystemExit, match="error: .*holds no evaluations yet"):
        main(["report", str(empty), "--out", str(out)])
    assert not (tmp_path / "new").exists()

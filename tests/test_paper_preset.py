"""``--preset paper``: VIREL App. I, Table 1, value by value (numbers copied from the appendix, not from the code)."""

from unittest import mock

import helpers
import pytest

from virel_ppl import cli
from virel_ppl.config import PRESETS, Config, preset_config
from virel_ppl.train import train


@pytest.mark.parametrize(
    "env, reward_scale, beta_scale",
    [
        ("HalfCheetah-v5", 5.0, 4e-3),
        ("Hopper-v5", 5.0, 4e-3),
        ("Walker2d-v5", 3.0, 4e-3),
        ("Humanoid-v5", 1.0, 4e-4),
        ("InvertedPendulum-v5", 1.0, 4e-3),
    ],
)
def test_paper_preset_is_appendix_i(env, reward_scale, beta_scale):
    cfg = preset_config("paper", env=env)
    assert (cfg.batch_size, cfg.hidden, cfg.policy_lr, cfg.critic_lr, cfg.gamma) == (128, (300, 300), 3e-4, 3e-4, 0.99)
    assert cfg.alpha == 1.0 and cfg.eval_every == 1000  # c = 1 (rewards scaled instead); steps per evaluation
    assert cfg.resolved_reward_scale() == reward_scale
    assert cfg.resolved_beta_scale() == beta_scale  # App. I's λ table, for every task
    # without the preset, only Humanoid takes the table value; the others use (1 − γ)/mean|r| of the batch
    assert Config(env=env).resolved_beta_scale() == (4e-4 if env.startswith("Humanoid") else None)


def test_preset_flag_sets_defaults_and_explicit_flags_still_win():
    with mock.patch.object(cli, "run_train") as run_train:
        cli.main(["train", "--preset", "paper", "--env", "Hopper-v5", "--batch-size", "64"])
        cfg = run_train.call_args[0][0].config
        assert (cfg.env, cfg.batch_size, cfg.hidden, cfg.critic_lr, cfg.beta_scale) == (
            "Hopper-v5",
            64,
            (300, 300),
            3e-4,
            4e-3,
        )
        cli.main(["train", "--preset=paper", "--beta-scale", "1e-3"])
        assert run_train.call_args[0][0].config.beta_scale == 1e-3
        cli.main(["train"])
        assert run_train.call_args[0][0].config.hidden == Config().hidden  # no preset: the usual defaults
    with pytest.raises(SystemExit, match="Unknown preset 'papr'; choose from paper"):
        cli.main(["train", "--preset", "papr"])
    assert set(PRESETS) == {"paper"}


def test_paper_preset_run_starts(tmp_path):
    tiny = {k: v for k, v in helpers.TINY.items() if k not in ("hidden", "batch_size", "eval_every")}
    cfg = preset_config("paper", **{**tiny, "warmup_steps": 130, "total_steps": 150, "run_dir": tmp_path})
    assert train(cfg).steps == 150

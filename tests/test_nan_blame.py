"""Which part of the agent a NaN or inf is blamed on (``virel_ppl/runtime/nan_policy.py``): the temperature α or a
dual, the critic or the policy — never the environment for an action the policy made non-finite."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_ARGS
from test_errors import cli_error

from virel_ppl.config import ConfigError
from virel_ppl.runtime.nan_policy import check_action, check_updates, check_variant, diverged_parts

NAN = float("nan")


def test_a_runaway_temperature_is_blamed_on_alpha_at_the_first_update(tmp_path):
    """--dual-lr 1e9: Adam's first step moves log α by about 1e9, so exp(log α) is 0 or inf after the first update,
    at step max(warmup 50, batch 16) = 50. Without the check the policy's NaN actions reached Pendulum, which was
    blamed for the NaN reward."""
    argv = ["train", "--env", "Pendulum-v1", "--algo", "sac_auto", "--dual-lr", "1e9", "--total-steps", "200"]
    message = cli_error([*argv, *TINY_ARGS, "--run-dir", str(tmp_path / "run")])
    assert message.startswith("error: The temperature α diverged at step 50: log_alpha = ")
    assert "--dual-lr" in message and "Pendulum-v1" not in message


def test_a_non_finite_action_is_the_policys_fault_not_the_environments(tmp_path, monkeypatch):
    """The guide's weights set to NaN after the update of step 60: step 61's action is caught before env.step."""
    from virel_ppl.runtime.trainer import Trainer

    update = Trainer.update

    def poison_after_60(self):
        update(self)
        if self.step == 60:
            with torch.no_grad():
                for p in self.agent.policy.parameters():
                    p.fill_(NAN)

    monkeypatch.setattr(Trainer, "update", poison_after_60)
    message = cli_error(
        ["train", "--env", "Pendulum-v1", "--total-steps", "100", *TINY_ARGS, "--run-dir", str(tmp_path)]
    )
    assert message.startswith("error: The policy diverged by step 61: the policy's action at step 61 is not finite")
    assert "agent.policy." in message and "--policy-lr" in message and "returned a non-finite" not in message


class _Agent:
    """An agent's state and its record of the first non-finite update, as the checks read them."""

    def __init__(self, state: dict, first: int | None = None) -> None:
        self.state, self.first = state, first

    def state_dict(self) -> dict:
        return self.state

    def first_nonfinite_step(self) -> int | None:
        return self.first


def _state(log_alpha: float = 0.0, critic: float = 1.0, policy: float = 1.0) -> dict:
    return {
        "extras": {"alpha": {"log_alpha": torch.tensor(log_alpha), "optim": {"state": {}, "param_groups": []}}},
        "critic": {"q1.weight": torch.tensor([critic])},
        "critic_optim": {"state": {0: {"exp_avg": torch.tensor([0.0])}}},
        "policy": {"mu.weight": torch.tensor([policy])},
        "policy_optim": {},
    }


@pytest.mark.parametrize(
    ("state", "blamed"),
    [
        (_state(log_alpha=100.0, policy=NAN), "The temperature α"),  # exp(100) overflows float32 before the policy
        (_state(log_alpha=-200.0), "The temperature α"),  # α = 0: finite, diverged all the same
        (_state(critic=NAN, policy=NAN), "The critic"),  # the policy follows the critic
        (_state(policy=NAN), "The policy"),
    ],
)
def test_the_first_part_that_diverged_is_blamed_and_the_others_listed(state, blamed):
    with pytest.raises(ConfigError) as info:
        check_updates(_Agent(state, first=123), step=200)
    message = str(info.value)
    assert message.startswith(f"{blamed} diverged: training statistics became NaN/inf at step 123 (seen at step 200")
    assert message.count("non-finite values in") + message.count("so α =") == len(diverged_parts(state))


def test_a_finite_agent_is_not_blamed_and_a_finite_action_passes():
    assert diverged_parts(_state(log_alpha=80.0)) == []  # exp(80) ≈ 5.5e34: large, still a float32
    check_action(torch.zeros(3).numpy(), _Agent(_state(policy=NAN)), step=5)  # only the action is checked here
    check_variant(_state(log_alpha=-80.0)["extras"], step=5)

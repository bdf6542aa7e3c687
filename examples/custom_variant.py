"""A new algorithm is a small model function plus one registry entry; the trainer does not change.

    python examples/custom_variant.py                         # VIREL with a control cost on InvertedPendulum-v5
    python examples/custom_variant.py --env Pendulum-v1 --total-steps 10000

The edit: the optimality likelihood gains a control cost, log p(O=1|s, a) = (Q(s, a) − c‖a‖²)/ε, so the
posterior, and the policy fitted to it, prefer small actions. Guide, critic, targets and ε stay VIREL's.
"""

import pyro
import torch
import tyro

from virel_ppl.agent import VARIANTS, Variant
from virel_ppl.cli import TrainArgs, run_train
from virel_ppl.config import Config

COST = 0.05  # c: the price of a unit of squared action, in units of Q


def control_cost_model(states: torch.Tensor, *, q, eps, prior) -> None:
    """VIREL with a control cost: a ~ p(a|s), then log p(O=1|s, a) = (Q(s, a) − c‖a‖²)/ε."""
    with pyro.plate("states", states.shape[0]):
        a = pyro.sample("a", prior(states))  # p(a|s): uniform on the box, as in VIREL
        pyro.factor("O", (q(states, a) - COST * a.pow(2).sum(-1)) / eps)  # the one changed line


VARIANTS["virel_cost"] = Variant(control_cost_model, description="VIREL with a control cost c‖a‖² in the likelihood.")

if __name__ == "__main__":
    run_train(tyro.cli(TrainArgs, default=TrainArgs(config=Config(algo="virel_cost"))))

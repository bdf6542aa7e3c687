"""A new algorithm is a small class in the variant registry; the trainer does not change.

    python examples/custom_variant.py                         # VIREL with a control cost on InvertedPendulum-v5
    python examples/custom_variant.py --algo virel_anneal --env Pendulum-v1

Two edits of VIREL (``virel_ppl.variants.Variant``):

- ``virel_cost``, a model edit: the likelihood gains a control cost, log p(O=1|s, a) = (Q(s, a) − c‖a‖²)/ε, so the
  posterior, and the policy fitted to it, prefer small actions;
- ``virel_anneal``, a variant with state: ε anneals, ε_k = α · decay^k after k updates. The count is a buffer of a
  small ``torch.nn.Module`` (a tensor on the run's device, so a CUDA graph holds it), named in ``state``: the agent
  saves it with its own ``state_dict``, so a resumed run continues the schedule exactly.
"""

import pyro
import torch
import tyro

from virel_ppl.cli import TrainArgs, run_train
from virel_ppl.config import Config
from virel_ppl.variants import VARIANTS, Variant

COST = 0.05  # c: the price of a unit of squared action, in units of Q


def control_cost_model(states: torch.Tensor, *, q, eps, prior) -> None:
    """VIREL with a control cost: a ~ p(a|s), then log p(O=1|s, a) = (Q(s, a) − c‖a‖²)/ε."""
    with pyro.plate("states", states.shape[0]):
        a = pyro.sample("a", prior(states))  # p(a|s): uniform on the box, as in VIREL
        pyro.factor("O", (q(states, a) - COST * a.pow(2).sum(-1)) / eps)  # the one changed line


class VirelCost(Variant):
    description = "VIREL with a control cost c‖a‖² in the likelihood."
    model = staticmethod(control_cost_model)


class Annealing(torch.nn.Module):
    """ε_k = α · decay^k, the count k a buffer: saved and loaded with the agent, no code of its own for that."""

    def __init__(self, alpha: float, decay: float, device: torch.device) -> None:
        super().__init__()
        self.alpha, self.decay = alpha, decay
        self.register_buffer("updates", torch.zeros((), device=device))

    def eps(self, td_mse: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:  # an ε rule, as em's are
        return self.alpha * self.decay**self.updates


class VirelAnneal(Variant):
    description = "VIREL with ε annealed geometrically over the updates."
    state = ("annealing",)  # saved with the agent
    fixed_eps = None  # ε moves: analysis must read it from the logs

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.annealing = Annealing(self.config.alpha, decay=0.999, device=self.device)
        self.eps = self.annealing.eps

    def after_update(self, batch, outputs) -> dict:
        self.annealing.updates += 1
        return {}


VARIANTS["virel_cost"] = VirelCost
VARIANTS["virel_anneal"] = VirelAnneal

if __name__ == "__main__":
    run_train(tyro.cli(TrainArgs, default=TrainArgs(config=Config(algo="virel_cost"))))

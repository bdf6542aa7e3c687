"""The main job: train a VIREL agent on a MuJoCo task with Pyro's SVI as the E-step.

    python examples/mujoco_svi.py                                   # InvertedPendulum-v5, a few minutes on CPU
    python examples/mujoco_svi.py --env HalfCheetah-v5 --total-steps 1000000   # paper scale
    python examples/mujoco_svi.py --algo beta --seed 3 --device cuda
    python examples/mujoco_svi.py --algo mpo --guide mixture --elbo renyi           # model, guide, divergence
    python examples/mujoco_svi.py --resume runs/<run>                # continue after Ctrl-C
    virel_ppl evaluate runs/<run> --video                           # returns (and a GIF) from a checkpoint

Every flag is a field of ``virel_ppl.config.Config``; ``--help`` lists them with their defaults.
"""

import sys

import tyro

from virel_ppl.cli import TrainArgs, run_train

if __name__ == "__main__":
    run_train(tyro.cli(TrainArgs), sys.argv[1:])

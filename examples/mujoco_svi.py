"""The main job: train a VIREL agent on a MuJoCo task with Pyro's SVI as the E-step.

    python examples/mujoco_svi.py                                   # InvertedPendulum-v5, a few minutes on CPU
    python examples/mujoco_svi.py --env HalfCheetah-v5 --total-steps 1000000   # paper scale
    python examples/mujoco_svi.py --algo beta --seed 3 --device cuda
    python examples/mujoco_svi.py --algo mpo --guide mixture --elbo renyi           # model, guide, divergence
    python examples/mujoco_svi.py --resume runs/<run>                # continue after Ctrl-C
    virel_ppl evaluate runs/<run> --video                           # returns (and a GIF) from a checkpoint

    python examples/mujoco_svi.py --preset paper --env Hopper-v5   # VIREL App. I's settings

This script is ``virel_ppl train``: the same entry point, so the same flags (``--preset`` included) and exit codes.
Every other flag is a field of ``virel_ppl.config.Config``; ``--help`` lists them with their defaults.
"""

import sys

from virel_ppl.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])

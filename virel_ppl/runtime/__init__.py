"""The runtime layer: environments, replay, logging, checkpoints and the training loop."""

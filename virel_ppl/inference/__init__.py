"""The inference layer: the action space, networks, critic, guides, models, divergences and the EM steps."""

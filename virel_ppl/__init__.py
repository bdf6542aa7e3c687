"""virel_ppl: reinforcement learning as probabilistic inference in Pyro."""

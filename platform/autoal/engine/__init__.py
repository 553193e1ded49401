"""The active-learning loop: one round engine, and the experiment that runs it for every strategy and seed."""

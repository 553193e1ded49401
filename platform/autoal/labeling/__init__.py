"""Labeling projects: the round engine with a person as the oracle (query files out, answers in)."""

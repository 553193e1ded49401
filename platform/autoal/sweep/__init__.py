"""Sweeps: many experiments as one Ray Tune run, resumable, with one results table.

`plan` reads and validates a sweep plan (plain data, no Tune), `runner` runs it
on Ray Tune, `results` aggregates the trials' results with pandas; `autoal
report` (autoal.report) writes the tables and plots without importing Tune.
"""

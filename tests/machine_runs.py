"""How many runs a state machine test makes, by the hypothesis profile loaded.

A state machine run is a fresh store put through up to 50 steps with tiers of a few rows; it
costs a tenth of a second of CPU and about as much again waiting on fsync, so the default run
(dev profile) makes a few of each, CI (ci) twice as many, nightly many more; the slow tests make
long runs of a few configurations.
"""
from hypothesis import settings


def machine_runs(n: int) -> settings:
    """``n`` runs under the ci profile, scaled with the profile loaded (dev: half, at least 5;
    nightly: more)."""
    return settings(max_examples=max(5, n * settings.default.max_examples // 60))


def long_runs(n: int) -> settings:
    """``n`` runs of up to 200 steps each (under the ci profile, scaled as above): sequences
    the default 50 steps rarely reach, such as many reopens with rows dirty in every tier."""
    return settings(max_examples=max(5, n * settings.default.max_examples // 60),
                    stateful_step_count=200)

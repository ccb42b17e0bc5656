"""Argument checks shared by the PDE generators: bad input raises a ValueError naming the argument."""
from __future__ import annotations


def at_least(name: str, value, minimum):
    if not value >= minimum:  # also rejects NaN
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def positive(name: str, value):
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def non_negative(name: str, value):
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")

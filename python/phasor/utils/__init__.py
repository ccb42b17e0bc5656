"""Helpers shared by the systems' repro jobs (training loop plumbing, machine description)."""

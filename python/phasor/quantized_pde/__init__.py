"""Quantization-aware neural PDE solvers (van den Dool et al. 2023, arXiv 2308.07350): fused fake
quantization, int8 convolutions, the QAT workflow, PDE data generators and the models."""
from . import ops  # noqa: F401

"""Rotating Features for Object Discovery (Löwe, Lippe, Locatello, Welling, NeurIPS 2023, arXiv 2306.00600)."""
from . import ops, reference  # noqa: F401
from .ops import rot_bn_epilogue, rot_ln_epilogue  # noqa: F401

"""Rotating Features for Object Discovery (Löwe, Lippe, Locatello, Welling, NeurIPS 2023, arXiv 2306.00600)."""
from . import ops, reference  # noqa: F401
from .ops import rot_bn_epilogue, rot_ln_epilogue  # noqa: F401
from .nn import RotatingConv2d, RotatingConvTranspose2d, RotatingLinear  # noqa: F401,E402
from .model import RotatingAutoEncoder  # noqa: F401,E402

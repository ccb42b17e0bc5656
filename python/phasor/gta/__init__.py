"""GTA: geometric transform attention (Miyato et al., ICLR 2024)."""
from . import ops, reference, reps  # noqa: F401
from .ops import gta_attention  # noqa: F401

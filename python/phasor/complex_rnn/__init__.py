"""Complex-valued oscillator network for image segmentation (Liboni et al. 2023, arXiv 2311.16943)."""
from . import ops  # noqa: F401  (registers the fake kernels and the forward-only guard)
from .ops import cvrnn_run, cvrnn_run_dense  # noqa: F401
from .segmentation import Config, segment  # noqa: F401

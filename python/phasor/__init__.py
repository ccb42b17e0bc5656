"""phasor: fused C++/CUDA torch ops for structured neural dynamics and geometry.

Importing phasor loads the native library ``phasor._C``, which registers every kernel as a
real torch op (``torch.ops.phasor.*``), then attaches the fake kernels and autograd formulas.
"""
import torch  # must come first: _C links against libtorch without an RPATH to it

try:
    from . import _C
except ImportError as exc:  # never swallow: say how to fix it
    raise ImportError(
        "phasor's native library phasor._C could not be loaded "
        f"({exc}). Build it against the installed torch {torch.__version__} with "
        "`pip install --no-build-isolation -e .` (or `make build`)."
    ) from exc

build_info = _C.build_info()
if build_info["torch_version"] != torch.__version__:
    raise ImportError(
        f"phasor was built for torch {build_info['torch_version']} but torch {torch.__version__} "
        "is installed; rebuild it against this torch: `pip install --no-build-isolation -e .` "
        "(or `make build`)"
    )

from . import ops  # noqa: E402  (fake kernels + autograd; needs the C++ schemas)
from . import rotating_features  # noqa: E402

__version__ = "0.1.0"
__all__ = ["build_info", "ops", "rotating_features", "__version__"]

"""Imports every system's op module, which registers the ops' fake kernels and autograd formulas.

Each system's schemas name their own module (``set_python_module`` in csrc/<system>/*_schema.cpp).
"""
from .rotating_features import ops as rotating_features_ops  # noqa: F401
from .wave_rnn import ops as wave_rnn_ops  # noqa: F401
from .complex_rnn import ops as complex_rnn_ops  # noqa: F401
from .gta import ops as gta_ops  # noqa: F401
from .quantized_pde import ops as quantized_pde_ops  # noqa: F401

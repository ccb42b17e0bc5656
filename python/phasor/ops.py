"""Registration point of every phasor op's fake kernel and autograd formula.

``TORCH_LIBRARY(phasor)`` names this module (``set_python_module``), so a torch that meets a
phasor op before its Python half is registered tells the user to import it.
"""
from .rotating_features import ops as rotating_features_ops  # noqa: F401

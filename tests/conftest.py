import os
import sys

import torch

# Make `tests/helpers.py` importable as `helpers` from every test folder.
sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(torch.get_num_threads(), 2))


def pytest_collection_modifyitems(config, items):
    """Give every test that needs CUDA (skipped by helpers.requires_cuda, directly or through a
    device_params() parameter) the `cuda` mark, so `pytest -m cuda` runs exactly the GPU tests."""
    from helpers import CUDA_SKIP_REASON
    for item in items:
        if any(m.kwargs.get("reason") == CUDA_SKIP_REASON for m in item.iter_markers("skipif")):
            item.add_marker("cuda")

import os
import sys

import torch

# Make `tests/helpers.py` importable as `helpers` from every test folder.
sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(torch.get_num_threads(), 2))

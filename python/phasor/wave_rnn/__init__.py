"""Wave-RNN: traveling waves encode the recent past (Keller, Muller, Sejnowski, Welling, ICLR 2024, arXiv 2309.08045)."""
from . import ops, reference  # noqa: F401
from .ops import wave_rnn, wave_rnn_projected  # noqa: F401
from .model import IRNN, WaveRNN, WaveRNNCell  # noqa: F401,E402

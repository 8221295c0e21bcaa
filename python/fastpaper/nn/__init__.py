"""nn.Modules built on fastpaper's ops."""

from .pararnn import ParaGRU, ParaLSTM
from .rnn import GRU, LSTM, SLSTM, Elman

__all__ = ["ParaGRU", "ParaLSTM", "LSTM", "GRU", "SLSTM", "Elman"]

"""Bidirectional-LSTM speaker embedding.

The BLSTM speaker-identification system: 3 bidirectional LSTM layers of 256 units on spectrogram-dB frames,
trained on short 0.25-2 s windows; the frame outputs are averaged over time into a 512-d L2-normalised embedding.
Background: Hochreiter & Schmidhuber, "Long Short-Term Memory", 1997; Graves & Schmidhuber, "Framewise phoneme
classification with bidirectional LSTM", 2005; Heigold et al., "End-to-end text-dependent speaker verification",
ICASSP 2016 (LSTM speaker embeddings).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BLSTM(nn.Module):
    """BLSTM embedding: `(batch, frames, feat_dim)` -> `(batch, embed_dim)`, L2-normalised.

    Default (257-bin spectrogram, 3 x 256 units, 512-d): about 4.5 M parameters (4.0 M on 40-dim fbank);
    `hidden=128, num_layers=2` is a small variant (0.6-0.9 M). The per-frame outputs (2 `hidden` wide) are averaged
    over time, then an affine layer maps them to `embed_dim`.
    """

    def __init__(self, feat_dim: int = 257, embed_dim: int = 512, hidden: int = 256, num_layers: int = 3) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.embed_dim = embed_dim
        self.lstm = nn.LSTM(feat_dim, hidden, num_layers, batch_first=True, bidirectional=True)
        self.embedding = nn.Linear(2 * hidden, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(batch, frames, feat_dim)` float32 -> `(batch, embed_dim)`, unit L2 norm."""
        out, _ = self.lstm(x)
        return F.normalize(self.embedding(out.mean(dim=1)), dim=1)

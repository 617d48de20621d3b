"""LSTM d-vector trained with the generalized end-to-end (GE2E) loss.

Reference: Wan, Wang, Papir, Lopez Moreno, "Generalized End-to-End Loss for Speaker Verification", ICASSP 2018
(3 LSTM layers of 768 cells with 256-d projections on 40-dim log-Mel frames; the last frame's output is the
embedding). Resemblyzer's `VoiceEncoder` (Resemble AI, after Jemine's "Real-Time Voice Cloning", 2019) uses
`nn.LSTM(40, 256, 3, batch_first=True)` without projection, then `relu(linear(hidden[-1]))`, L2-normalised; this class
keeps its attribute names (`lstm`, `linear`) so its pretrained state dict loads here with `strict=True` once its
`similarity_weight`/`similarity_bias` entries (GE2E's w, b, which live in `spkid.losses.ge2e`) are moved out.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


class LSTMGE2E(nn.Module):
    """GE2E LSTM encoder: `(batch, frames, feat_dim)` -> `(batch, embed_dim)`, L2-normalised.

    Default is Resemblyzer's encoder: 40 mels, 3 layers of 256 cells, no projection (`proj_size=0`), 256-d
    embedding, about 1.4 M parameters. `proj_size` > 0 adds LSTM projections (PyTorch needs `proj_size < hidden`);
    the paper's size is `hidden=768, proj_size=256`, and `hidden=128, proj_size=64, embed_dim=64` is a small variant.
    The embedding is `normalize(relu(linear(h_last)))` with `h_last` the top layer's state after the last frame.
    """

    def __init__(
        self, feat_dim: int = 40, embed_dim: int = 256, hidden: int = 256, proj_size: int = 0, num_layers: int = 3
    ) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.embed_dim = embed_dim
        self.lstm = nn.LSTM(feat_dim, hidden, num_layers, batch_first=True, proj_size=proj_size)
        self.linear = nn.Linear(proj_size or hidden, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(batch, frames, feat_dim)` float32 -> `(batch, embed_dim)`, unit L2 norm."""
        with _own_kernel(self.lstm.proj_size > 0 and x.device.type == "cpu"):
            _, (hidden, _) = self.lstm(x)
        return F.normalize(F.relu(self.linear(hidden[-1])), dim=1, eps=1e-5)


@contextlib.contextmanager
def _own_kernel(active: bool):
    """oneDNN has no LSTM with projections: on CPU, PyTorch tries it, falls back to its own kernel and says so in
    a UserWarning on the user's stderr. Asking for its own kernel directly (oneDNN off for the call) computes the
    same numbers without the detour."""
    if not active:
        yield
        return
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before

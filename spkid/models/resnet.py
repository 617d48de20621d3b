"""ResNet34 r-vector with statistics pooling, as in WeSpeaker.

References: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; Zeinali et al.,
"BUT System Description to VoxCeleb Speaker Recognition Challenge 2019" (ResNet34 on fbank, statistics pooling);
Wang et al., "WeSpeaker: A Research and Production Oriented Speaker Embedding Learning Toolkit", ICASSP 2023
(`wespeaker/models/resnet.py`: 3x3 stem, [3, 4, 6, 3] basic blocks, base width 32, TSTP pooling, 256-d embedding).
"""

from __future__ import annotations

import torch
from torch import nn

from spkid.models._layers import ResNetTrunk, conv_out, stats_pool, to_image


class ResNet34(nn.Module):
    """WeSpeaker-style ResNet34: `(batch, frames, feat_dim)` -> `(batch, embed_dim)` (not normalised).

    `base_width` 32 is WeSpeaker's ResNet34 (about 6.6 M parameters on 80-dim fbank); 16 is a small variant
    (about 2.0 M) that trains on a CPU. Stage widths are base, 2 base, 4 base, 8 base; `layers` the blocks per stage.
    Frequency is downsampled 8 times and folded into the channels before mean + std pooling over time.
    """

    def __init__(
        self,
        feat_dim: int = 80,
        embed_dim: int = 256,
        base_width: int = 32,
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
    ) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.embed_dim = embed_dim
        channels = (base_width, 2 * base_width, 4 * base_width, 8 * base_width)
        self.trunk = ResNetTrunk(channels, tuple(layers))
        self.stats_dim = 2 * channels[3] * conv_out(feat_dim, 3)
        self.embedding = nn.Linear(self.stats_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(batch, frames, feat_dim)` float32 -> `(batch, embed_dim)`."""
        h = self.trunk(to_image(x))  # (B, C, F', T')
        h = h.flatten(1, 2)  # (B, C F', T')
        return self.embedding(stats_pool(h))

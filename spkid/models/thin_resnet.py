"""Thin ResNet d-vector: a narrow ResNet34 with global average pooling and a 128-d L2-normalised embedding.

References: Variani et al., "Deep Neural Networks for Small Footprint Text-Dependent Speaker Verification",
ICASSP 2014 (the d-vector: average of frame-level activations); Xie et al., "Utterance-level Aggregation for Speaker
Recognition in the Wild", ICASSP 2019 (thin ResNet34, a quarter of the usual channel widths); Chung et al., "In defence
of metric learning for speaker recognition", Interspeech 2020 (voxceleb_trainer's ResNetSE34L, widths 16-128).
Meant for 40-dim log-Mel filterbanks, as in the d-vector tutorial this family comes from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spkid.models._layers import ResNetTrunk, to_image


class ThinResNet(nn.Module):
    """Thin ResNet d-vector: `(batch, frames, feat_dim)` -> `(batch, embed_dim)`, L2-normalised.

    Default widths (16, 32, 64, 128) with [3, 4, 6, 3] blocks: about 1.4 M parameters; `channels=(8, 16, 32, 64)`,
    `layers=(2, 2, 2, 2)` is a small variant (0.18 M). Global average pooling over frequency and time, then one
    affine layer.
    """

    def __init__(
        self,
        feat_dim: int = 40,
        embed_dim: int = 128,
        channels: tuple[int, int, int, int] = (16, 32, 64, 128),
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
    ) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.embed_dim = embed_dim
        self.trunk = ResNetTrunk(tuple(channels), tuple(layers))
        self.embedding = nn.Linear(channels[3], embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(batch, frames, feat_dim)` float32 -> `(batch, embed_dim)`, unit L2 norm."""
        h = self.trunk(to_image(x)).mean(dim=(2, 3))
        return F.normalize(self.embedding(h), dim=1)

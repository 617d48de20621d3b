"""Deep Speaker family: the ResCNN of Li et al. and an SE-ResNet34 with the same head.

References: Li, Ma, Jiang, Li, Zhang, Liu, Cao, Kannan, Zhu, "Deep Speaker: an End-to-End Neural Speaker Embedding
System", arXiv:1705.02304, 2017 (ResCNN: four stages of a 5x5 stride-2 conv and three residual blocks, widths
64-512, clipped ReLU min(max(x, 0), 20), average over time, affine to 512, length normalisation; trained on 3 s
crops, shorter utterances padded); Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018 (the SE blocks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spkid.models._layers import BasicBlock, ResNetTrunk, conv_out, to_image


class ClippedReLU(nn.Module):
    """min(max(x, 0), clip): Deep Speaker's activation (clip 20)."""

    def __init__(self, clip: float = 20.0) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, self.clip)


def _time_average_head(fmap: torch.Tensor, affine: nn.Linear) -> torch.Tensor:
    """`(B, C, F', T')` -> average over time of the `C F'` frame vectors -> affine -> length normalisation."""
    return F.normalize(affine(fmap.flatten(1, 2).mean(dim=2)), dim=1)


class ResCNN(nn.Module):
    """Deep Speaker ResCNN: `(batch, frames, feat_dim)` -> `(batch, embed_dim)`, L2-normalised.

    Default is the paper's network (64-dim fbank, widths 64/128/256/512, 3 blocks a stage): about 24 M parameters,
    slow on a CPU; `channels=(32, 64, 128, 256), blocks=1` is a small variant (about 2.9 M).
    """

    def __init__(
        self,
        feat_dim: int = 64,
        embed_dim: int = 512,
        channels: tuple[int, int, int, int] = (64, 128, 256, 512),
        blocks: int = 3,
        clip: float = 20.0,
    ) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.embed_dim = embed_dim
        stages: list[nn.Module] = []
        in_ch = 1
        for ch in channels:
            stages += [nn.Conv2d(in_ch, ch, 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(ch), ClippedReLU(clip)]
            stages += [BasicBlock(ch, ch, act=ClippedReLU(clip)) for _ in range(blocks)]
            in_ch = ch
        self.cnn = nn.Sequential(*stages)
        self.affine = nn.Linear(channels[-1] * conv_out(feat_dim, len(channels)), embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(batch, frames, feat_dim)` float32 -> `(batch, embed_dim)`, unit L2 norm."""
        return _time_average_head(self.cnn(to_image(x)), self.affine)


class SEResNet34(nn.Module):
    """SE-ResNet34 with the Deep Speaker head: `(batch, frames, feat_dim)` -> `(batch, embed_dim)`, L2-normalised.

    [3, 4, 6, 3] basic blocks with squeeze-excitation, widths base, 2 base, 4 base, 8 base; base 32: about 6.5 M
    parameters on 64-dim features; base 16 with `layers=(2, 2, 2, 2)` is a small variant (about 0.9 M).
    """

    def __init__(
        self,
        feat_dim: int = 64,
        embed_dim: int = 512,
        base_width: int = 32,
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
    ) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.embed_dim = embed_dim
        channels = (base_width, 2 * base_width, 4 * base_width, 8 * base_width)
        self.trunk = ResNetTrunk(channels, tuple(layers), se=True)
        self.affine = nn.Linear(channels[3] * conv_out(feat_dim, 3), embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(batch, frames, feat_dim)` float32 -> `(batch, embed_dim)`, unit L2 norm."""
        return _time_average_head(self.trunk(to_image(x)), self.affine)

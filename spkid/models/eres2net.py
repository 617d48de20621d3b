"""3D-Speaker's ERes2Net and ERes2NetV2: Res2Net-style 2-D ResNets with attentional feature fusion.

References: Chen, Zheng, Wang, Yu, Zhang, Zhang, Song, "An Enhanced Res2Net with Local and Global Feature Fusion
for Speaker Verification", Interspeech 2023 (ERes2Net); Chen et al., "ERes2NetV2: Boosting Short-Duration Speaker
Verification Performance with Computational Efficiency", Interspeech 2024.

Both see features as a one-channel image `(batch, 1, feat_dim, frames)`: a 3x3 conv with `m_channels`, then four
stages of `num_blocks` Res2 blocks with `m_channels * (1, 2, 4, 8)` planes (each stage after the first halves
frequency and time). A block's 1x1 conv gives `scale` groups of `width = floor(planes * base_width / 64)` channels;
group i (after the first) is combined with the previous group's output before its own 3x3 conv, by addition in the
first two stages and by attentional feature fusion (AFF, "local feature fusion") in the last two; a 1x1 conv to
`planes * expansion` channels and the shortcut close the block. The activation is ReLU clipped at 20.

AFF(x, y): `a = 1 + tanh(local_att([x; y]))` with `local_att` = 1x1 conv to `channels / 4`, BN, SiLU, 1x1 conv back,
BN; the output is `x * a + y * (2 - a)`.

- ERes2Net ("global feature fusion"): each stage's output is downsampled by a stride-2 3x3 conv and fused (AFF)
  into the next stage's output, bottom-up; the last fusion is pooled.
- ERes2NetV2: only stage 3's output is downsampled and fused into stage 4's (`layer3_ds`, `fuse34`); its blocks
  default to the wider, shallower-split groups of the paper (`base_width=26`, `scale=2`).

Pooling is mean and `sqrt(unbiased var + 1e-8)` over time of every (channel, frequency) row, then a linear layer to
`embed_dim` (optionally ReLU, BN without affine and a second linear layer: `two_emb_layer`). Module and parameter
names are 3D-Speaker's, so its checkpoints load as they are. 3D-Speaker's "ERes2Net huge" (zh-cn common model) is
`ERes2Net(m_channels=64, base_width=24, scale=3, expansion=4)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

POOL_EPS = 1e-8


def clipped_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, 0.0, 20.0)


class AFF(nn.Module):
    """Attentional feature fusion of two maps of `channels` channels (module docstring)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        inner = channels // reduction
        self.local_att = nn.Sequential(
            nn.Conv2d(2 * channels, inner, 1), nn.BatchNorm2d(inner), nn.SiLU(),
            nn.Conv2d(inner, channels, 1), nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = 1.0 + torch.tanh(self.local_att(torch.cat([x, y], dim=1)))
        return x * a + y * (2.0 - a)


class Res2Block(nn.Module):
    """One Res2 block (module docstring): `in_ch` -> `planes * expansion` channels, `stride` in both axes; groups
    joined by addition, or by AFF when `fuse`."""

    def __init__(self, in_ch: int, planes: int, stride: int, base_width: int, scale: int, expansion: int,
                 fuse: bool) -> None:
        super().__init__()
        width = int(math.floor(planes * base_width / 64.0))
        out_ch = planes * expansion
        self.width = width
        self.conv1 = nn.Conv2d(in_ch, width * scale, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(scale))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale))
        self.fuse_models = nn.ModuleList(AFF(width) for _ in range(scale - 1)) if fuse else None
        self.conv3 = nn.Conv2d(width * scale, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(clipped_relu(self.bn1(self.conv1(x))), self.width, dim=1)
        outs: list[torch.Tensor] = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            if i == 0:
                h = groups[0]
            elif self.fuse_models is None:
                h = outs[-1] + groups[i]
            else:
                h = self.fuse_models[i - 1](outs[-1], groups[i])
            outs.append(clipped_relu(bn(conv(h))))
        h = self.bn3(self.conv3(torch.cat(outs, dim=1)))
        return clipped_relu(h + self.shortcut(x))


def stats_pool(x: torch.Tensor) -> torch.Tensor:
    """`(batch, channels, freq, frames)` -> `(batch, 2 * channels * freq)`: all means, then all standard deviations."""
    mean = x.mean(-1).flatten(1)
    std = torch.sqrt(x.var(-1, unbiased=True) + POOL_EPS).flatten(1)
    return torch.cat([mean, std], dim=1)


class _ERes2NetBase(nn.Module):
    """The stem, the four stages and the embedding head shared by both versions."""

    def __init__(self, feat_dim: int, embed_dim: int, m_channels: int, num_blocks: Sequence[int], base_width: int,
                 scale: int, expansion: int, two_emb_layer: bool) -> None:
        super().__init__()
        if len(num_blocks) != 4:
            raise ValueError(f"num_blocks must list 4 stages, got {list(num_blocks)}")
        self.feat_dim = feat_dim
        self.embed_dim = embed_dim
        self.two_emb_layer = two_emb_layer
        self.conv1 = nn.Conv2d(1, m_channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        in_ch = m_channels
        for k, (n, mult) in enumerate(zip(num_blocks, (1, 2, 4, 8)), start=1):
            planes = m_channels * mult
            blocks = [Res2Block(in_ch if i == 0 else planes * expansion, planes, (1 if k == 1 else 2) if i == 0 else 1,
                                base_width, scale, expansion, fuse=k >= 3) for i in range(n)]
            self.add_module(f"layer{k}", nn.Sequential(*blocks))
            in_ch = planes * expansion
        self.stage_channels = [m_channels * mult * expansion for mult in (1, 2, 4, 8)]
        freq = feat_dim
        for _ in range(3):
            freq = (freq + 1) // 2
        stats = 2 * self.stage_channels[-1] * freq
        self.seg_1 = nn.Linear(stats, embed_dim)
        self.seg_bn_1: nn.Module = nn.BatchNorm1d(embed_dim, affine=False) if two_emb_layer else nn.Identity()
        self.seg_2: nn.Module = nn.Linear(embed_dim, embed_dim) if two_emb_layer else nn.Identity()

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = F.relu(self.bn1(self.conv1(x.transpose(1, 2).unsqueeze(1))))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            h = layer(h)
            outs.append(h)
        return outs

    def head(self, fused: torch.Tensor) -> torch.Tensor:
        emb = self.seg_1(stats_pool(fused))
        if self.two_emb_layer:
            emb = self.seg_2(self.seg_bn_1(F.relu(emb)))
        return emb


class ERes2Net(_ERes2NetBase):
    """ERes2Net (module docstring): `(batch, frames, feat_dim)` -> `(batch, embed_dim)`.

    3D-Speaker's published models: VoxCeleb `embed_dim=192` (m_channels 32, about 6.6 M parameters); 3D-Speaker
    base and large `embed_dim=512` with `m_channels` 32 and 64; zh-cn common ("huge") `m_channels=64,
    base_width=24, scale=3, expansion=4`, 192.
    """

    def __init__(
        self,
        feat_dim: int = 80,
        embed_dim: int = 192,
        m_channels: int = 32,
        num_blocks: Sequence[int] = (3, 4, 6, 3),
        base_width: int = 32,
        scale: int = 2,
        expansion: int = 2,
        two_emb_layer: bool = False,
    ) -> None:
        super().__init__(feat_dim, embed_dim, m_channels, num_blocks, base_width, scale, expansion, two_emb_layer)
        c1, c2, c3, c4 = self.stage_channels
        self.layer1_downsample = nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False)
        self.layer2_downsample = nn.Conv2d(c2, c3, 3, stride=2, padding=1, bias=False)
        self.layer3_downsample = nn.Conv2d(c3, c4, 3, stride=2, padding=1, bias=False)
        self.fuse_mode12 = AFF(c2)
        self.fuse_mode123 = AFF(c3)
        self.fuse_mode1234 = AFF(c4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(batch, frames, feat_dim)` float32 -> `(batch, embed_dim)`; at least 9 frames."""
        out1, out2, out3, out4 = self.stages(x)
        fused = self.fuse_mode12(out2, self.layer1_downsample(out1))
        fused = self.fuse_mode123(out3, self.layer2_downsample(fused))
        fused = self.fuse_mode1234(out4, self.layer3_downsample(fused))
        return self.head(fused)


class ERes2NetV2(_ERes2NetBase):
    """ERes2NetV2 (module docstring): `(batch, frames, feat_dim)` -> `(batch, embed_dim)`.

    3D-Speaker's published models: zh-cn common `embed_dim=192` (m_channels 64, base_width 26, scale 2, expansion
    2; about 17.8 M parameters) and its w24s4ep4 variant (`base_width=24, scale=4, expansion=4`).
    """

    def __init__(
        self,
        feat_dim: int = 80,
        embed_dim: int = 192,
        m_channels: int = 64,
        num_blocks: Sequence[int] = (3, 4, 6, 3),
        base_width: int = 26,
        scale: int = 2,
        expansion: int = 2,
        two_emb_layer: bool = False,
    ) -> None:
        super().__init__(feat_dim, embed_dim, m_channels, num_blocks, base_width, scale, expansion, two_emb_layer)
        _, _, c3, c4 = self.stage_channels
        self.layer3_ds = nn.Conv2d(c3, c4, 3, stride=2, padding=1, bias=False)
        self.fuse34 = AFF(c4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(batch, frames, feat_dim)` float32 -> `(batch, embed_dim)`; at least 9 frames."""
        _, _, out3, out4 = self.stages(x)
        return self.head(self.fuse34(out4, self.layer3_ds(out3)))


MODELS: dict[str, type[nn.Module]] = {"eres2net": ERes2Net, "eres2netv2": ERes2NetV2}

"""Building blocks shared by several model families: 2-D residual trunks, squeeze-excitation, pooling heads.

Shapes: 2-D CNNs see a feature matrix as a one-channel image `(batch, 1, feat_dim, frames)`;
1-D layers see `(batch, channels, frames)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def to_image(x: torch.Tensor) -> torch.Tensor:
    """`(batch, frames, feat_dim)` -> `(batch, 1, feat_dim, frames)` for 2-D convolutions."""
    return x.transpose(1, 2).unsqueeze(1)


def conv_out(n: int, n_stride2: int) -> int:
    """Length left after `n_stride2` convolutions of stride 2, kernel 3, padding 1 (each gives ceil(n / 2))."""
    for _ in range(n_stride2):
        n = (n + 1) // 2
    return n


class SqueezeExcite2d(nn.Module):
    """Squeeze-and-excitation over channels (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018)."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * w[:, :, None, None]


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., CVPR 2016): two 3x3 convs + BN, optional SE, a projection shortcut when the
    shape changes.

    `act` is the nonlinearity (ReLU, or DeepSpeaker's clipped ReLU).
    """

    def __init__(
        self, in_ch: int, out_ch: int, stride: int = 1, se: bool = False, act: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.se = SqueezeExcite2d(out_ch) if se else nn.Identity()
        self.act = act if act is not None else nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.act(out + self.shortcut(x))


class ResNetTrunk(nn.Module):
    """3x3 stem then four stages of basic blocks, strides 1, 2, 2, 2: `(B, 1, F, T)` -> `(B, channels[3], F/8, T/8)`.

    The frequency and time sizes after the trunk are `conv_out(n, 3)` (ceil division by 8).
    """

    def __init__(self, channels: tuple[int, ...], layers: tuple[int, ...], se: bool = False) -> None:
        super().__init__()
        if len(channels) != 4 or len(layers) != 4:
            raise ValueError(f"ResNet trunk needs 4 stages; got channels={channels}, layers={layers}")
        self.stem = nn.Sequential(
            nn.Conv2d(1, channels[0], 3, padding=1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU()
        )
        stages = []
        in_ch = channels[0]
        for i, (ch, n) in enumerate(zip(channels, layers)):
            blocks = [BasicBlock(in_ch, ch, stride=1 if i == 0 else 2, se=se)]
            blocks += [BasicBlock(ch, ch, se=se) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = ch
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def stats_pool(x: torch.Tensor) -> torch.Tensor:
    """Mean and standard deviation over the last (time) axis: `(B, D, T)` -> `(B, 2 D)`.

    The population variance keeps one-frame inputs finite; the epsilon keeps the sqrt's gradient finite.
    """
    mean = x.mean(dim=-1)
    std = torch.sqrt(x.var(dim=-1, unbiased=False).clamp(min=0.0) + 1e-7)
    return torch.cat([mean, std], dim=1)

"""CAM++: a densely connected TDNN with context-aware masking, as 3D-Speaker and WeSpeaker publish it.

Reference: Wang, Zheng, Chen, Yu, Zhang, Zhang, Song, "CAM++: A Fast and Efficient Network for Speaker
Verification Using Context-Aware Masking", Interspeech 2023.

Shapes, for `(batch, frames, feat_dim)` features:
- front: a small 2-D ResNet over `(1, feat_dim, frames)` (3x3 conv, two stages of two basic blocks and a last
  conv, each halving frequency only), flattened to `(batch, 32 * feat_dim / 8, frames)`;
- a TDNN layer (kernel 5, stride 2: frames halve), then three dense blocks of 12, 24 and 16 layers (dilation 1,
  2, 2), each followed by a transition that halves the channels. A dense layer is BN-ReLU, a 1x1 conv to
  `bn_size * growth_rate` channels, BN-ReLU, and a context-aware masked 3-tap conv giving `growth_rate` channels,
  appended to its input. The mask is sigmoid(W2 relu(W1 c)) from the context `c`: the time mean plus the mean of
  the 100-frame segment each frame lies in (the last segment may be shorter; its mean is over the frames it has);
- BN-ReLU, mean and standard deviation over time (unbiased; `sqrt(var + pool_eps)`), and a 1x1 layer to
  `embed_dim` followed by a BatchNorm without affine parameters: the embedding.

Module and parameter names are 3D-Speaker's (`head.*`, `xvector.tdnn`, `xvector.block1.tdnnd1.*`,
`xvector.transit1`, `xvector.out_nonlinear`, `xvector.dense`), so its checkpoints load as they are; WeSpeaker's
CAM++ has the same names. 3D-Speaker's pooling is the plain standard deviation (`pool_eps=0`), WeSpeaker's adds
1e-7 to the variance.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

SEGMENT = 100  # frames (after the TDNN layer's stride) per segment of the masks' context


def bn_relu(channels: int, relu: bool = True, affine: bool = True) -> nn.Sequential:
    """BatchNorm1d then ReLU, under the names `batchnorm` and `relu` (the checkpoints' `nonlinear.batchnorm.*`)."""
    parts: OrderedDict[str, nn.Module] = OrderedDict(batchnorm=nn.BatchNorm1d(channels, affine=affine))
    if relu:
        parts["relu"] = nn.ReLU()
    return nn.Sequential(parts)


class ResBlock(nn.Module):
    """Basic 2-D residual block whose first conv strides over frequency only (`(stride, 1)`)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=(stride, 1), bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(h + self.shortcut(x))


class FCM(nn.Module):
    """The 2-D front: `(batch, feat_dim, frames)` -> `(batch, m_channels * ceil-halved(feat_dim, 3), frames)`."""

    def __init__(self, feat_dim: int, m_channels: int = 32, num_blocks: Sequence[int] = (2, 2)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, m_channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        self.layer1 = nn.Sequential(*(ResBlock(m_channels, m_channels, 2 if i == 0 else 1)
                                      for i in range(num_blocks[0])))
        self.layer2 = nn.Sequential(*(ResBlock(m_channels, m_channels, 2 if i == 0 else 1)
                                      for i in range(num_blocks[1])))
        self.conv2 = nn.Conv2d(m_channels, m_channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(m_channels)
        freq = feat_dim
        for _ in range(3):
            freq = (freq + 1) // 2
        self.out_channels = m_channels * freq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        h = self.layer2(self.layer1(h))
        h = F.relu(self.bn2(self.conv2(h)))
        return h.flatten(1, 2)


class TDNNLayer(nn.Module):
    """Conv1d (no bias, 'same' padding for odd kernels) then BN-ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.linear = nn.Conv1d(in_ch, out_ch, kernel_size, stride=stride, padding=(kernel_size - 1) // 2 * dilation,
                                dilation=dilation, bias=False)
        self.nonlinear = bn_relu(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


def segment_means(x: torch.Tensor, seg_len: int = SEGMENT) -> torch.Tensor:
    """Each frame of `(batch, channels, frames)` replaced by the mean of its `seg_len`-frame segment (the last
    segment over the frames it has). Average pooling with ceil mode, so the graph traces with dynamic frames."""
    seg = F.avg_pool1d(x, kernel_size=seg_len, stride=seg_len, ceil_mode=True)
    return seg.unsqueeze(-1).expand(-1, -1, -1, seg_len).flatten(2)[..., : x.shape[-1]]


class CAMLayer(nn.Module):
    """A 3-tap dilated conv whose output is gated by a mask computed from utterance and segment context."""

    def __init__(self, bn_channels: int, out_ch: int, kernel_size: int, dilation: int, reduction: int = 2) -> None:
        super().__init__()
        self.linear_local = nn.Conv1d(bn_channels, out_ch, kernel_size, padding=(kernel_size - 1) // 2 * dilation,
                                      dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // reduction, 1)
        self.linear2 = nn.Conv1d(bn_channels // reduction, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = x.mean(-1, keepdim=True) + segment_means(x)
        mask = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return self.linear_local(x) * mask


class CAMDenseTDNNLayer(nn.Module):
    """BN-ReLU, 1x1 bottleneck conv, BN-ReLU, CAM layer: `in_ch` -> `out_ch` new channels."""

    def __init__(self, in_ch: int, out_ch: int, bn_channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.nonlinear1 = bn_relu(in_ch)
        self.linear1 = nn.Conv1d(in_ch, bn_channels, 1, bias=False)
        self.nonlinear2 = bn_relu(bn_channels)
        self.cam_layer = CAMLayer(bn_channels, out_ch, kernel_size, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class CAMDenseTDNNBlock(nn.Module):
    """`num_layers` dense layers (`tdnnd1`, `tdnnd2`, ...), each appending `growth` channels to its input."""

    def __init__(self, num_layers: int, in_ch: int, growth: int, bn_channels: int, kernel_size: int,
                 dilation: int) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"tdnnd{i + 1}",
                            CAMDenseTDNNLayer(in_ch + i * growth, growth, bn_channels, kernel_size, dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = torch.cat([x, layer(x)], dim=1)
        return x


class TransitLayer(nn.Module):
    """BN-ReLU then a 1x1 conv (no bias) to `out_ch` channels."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.nonlinear = bn_relu(in_ch)
        self.linear = nn.Conv1d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class StatsPool(nn.Module):
    """`(batch, channels, frames)` -> `(batch, 2 channels)`: time mean, then `sqrt(unbiased var + eps)`."""

    def __init__(self, eps: float = 0.0) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(-1), torch.sqrt(x.var(-1, unbiased=True) + self.eps)], dim=-1)


class DenseLayer(nn.Module):
    """The embedding layer: a 1x1 conv on pooled statistics `(batch, channels)`, then BatchNorm without affine."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(in_ch, out_ch, 1, bias=False)
        self.nonlinear = bn_relu(out_ch, relu=False, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class CAMPPlus(nn.Module):
    """CAM++ (module docstring): `(batch, frames, feat_dim)` -> `(batch, embed_dim)`, the BN'd embedding.

    3D-Speaker's published models: `feat_dim=80, embed_dim=192` (zh-cn common, zh-en advanced) and
    `embed_dim=512` (VoxCeleb); the other keywords are the paper's. About 7.2 M parameters at 192.
    """

    def __init__(
        self,
        feat_dim: int = 80,
        embed_dim: int = 192,
        growth_rate: int = 32,
        bn_size: int = 4,
        init_channels: int = 128,
        m_channels: int = 32,
        pool_eps: float = 0.0,
    ) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.embed_dim = embed_dim
        self.head = FCM(feat_dim, m_channels)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            tdnn=TDNNLayer(self.head.out_channels, init_channels, 5, stride=2))
        channels = init_channels
        for i, (num_layers, dilation) in enumerate(((12, 1), (24, 2), (16, 2)), start=1):
            layers[f"block{i}"] = CAMDenseTDNNBlock(num_layers, channels, growth_rate, bn_size * growth_rate, 3,
                                                    dilation)
            channels += num_layers * growth_rate
            layers[f"transit{i}"] = TransitLayer(channels, channels // 2)
            channels //= 2
        layers["out_nonlinear"] = bn_relu(channels)
        layers["stats"] = StatsPool(pool_eps)
        layers["dense"] = DenseLayer(2 * channels, embed_dim)
        self.xvector = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(batch, frames, feat_dim)` float32 -> `(batch, embed_dim)`; at least 3 frames."""
        return self.xvector(self.head(x.transpose(1, 2)))


MODELS: dict[str, type[nn.Module]] = {"campplus": CAMPPlus}

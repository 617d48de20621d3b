"""WeSpeaker's speaker encoders, as published: the ResNet family (ResNet18 ... ResNet293) and ECAPA-TDNN.

spkid's own implementation of the architectures of WeSpeaker's `wespeaker/models/resnet.py` and `ecapa_tdnn.py`,
with the same module and parameter names, so a WeSpeaker checkpoint (`avg_model.pt`) loads into them strictly
without renaming (`spkid.importers.wespeaker`). Both take `(batch, frames, feat_dim)` Kaldi fbank (after
utterance mean subtraction) and return the raw embedding WeSpeaker returns (the last one for two embedding
layers), not normalised.

References: Wang et al., "WeSpeaker: A Research and Production Oriented Speaker Embedding Learning Toolkit",
ICASSP 2023; He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (basic and bottleneck blocks);
Desplanques et al., "ECAPA-TDNN: Emphasized Channel Attention, Propagation and Aggregation in TDNN Based Speaker
Verification", Interspeech 2020.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from spkid.errors import SpkidError

Block = Literal["basic", "bottleneck"]
VAR_EPS = 1e-7  # WeSpeaker adds this to every pooled variance

# WeSpeaker's named ResNets: block kind and blocks per stage (`spkid.importers.wespeaker` maps the names)
DEPTHS: dict[str, tuple[Block, tuple[int, int, int, int]]] = {
    "ResNet18": ("basic", (2, 2, 2, 2)),
    "ResNet34": ("basic", (3, 4, 6, 3)),
    "ResNet50": ("bottleneck", (3, 4, 6, 3)),
    "ResNet101": ("bottleneck", (3, 4, 23, 3)),
    "ResNet152": ("bottleneck", (3, 8, 36, 3)),
    "ResNet221": ("bottleneck", (6, 16, 48, 3)),
    "ResNet293": ("bottleneck", (10, 20, 64, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(out_ch)


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """The residual path: identity (an empty Sequential), or a strided 1x1 conv + BN where the shape changes."""
    return nn.Sequential(*_conv_bn(in_ch, out_ch, 1, stride)) if stride != 1 or in_ch != out_ch else nn.Sequential()


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (the first with `stride`) and a shortcut: 1x1 conv + BN where the shape changes."""

    def __init__(self, in_ch: int, ch: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_ch, ch, 3, stride)
        self.conv2, self.bn2 = _conv_bn(ch, ch, 3)
        self.shortcut = _shortcut(in_ch, ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce to `ch`, 3x3 (with `stride`), 1x1 expand to 4 `ch`; shortcut as `BasicBlock`."""

    def __init__(self, in_ch: int, ch: int, stride: int) -> None:
        super().__init__()
        out = 4 * ch
        self.conv1, self.bn1 = _conv_bn(in_ch, ch, 1)
        self.conv2, self.bn2 = _conv_bn(ch, ch, 3, stride)
        self.conv3, self.bn3 = _conv_bn(ch, out, 1)
        self.shortcut = _shortcut(in_ch, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return F.relu(self.bn3(self.conv3(h)) + self.shortcut(x))


def temporal_stats(x: torch.Tensor, pooling: str, var_eps: float) -> torch.Tensor:
    """WeSpeaker's parameter-free poolings of `(B, D, T)` over time: "TSTP" mean and standard deviation (unbiased
    variance + `var_eps`), "TAP" the mean, "TSDP" the standard deviation; `(B, 2 D)` or `(B, D)`."""
    if pooling == "TAP":
        return x.mean(dim=-1)
    std = torch.sqrt(torch.var(x, dim=-1) + var_eps)
    return std if pooling == "TSDP" else torch.cat([x.mean(dim=-1), std], dim=1)


class WeSpeakerResNet(nn.Module):
    """WeSpeaker's ResNet: `(batch, frames, feat_dim)` -> `(batch, embed_dim)` (not normalised).

    A 3x3 stem of `m_channels`, four stages of `layers` blocks (`block`: "basic" for ResNet18/34, "bottleneck"
    for ResNet50 ... 293) at widths m, 2m, 4m, 8m (strides 1, 2, 2, 2 on both axes), frequency folded into the
    channels, `pooling` over time ("TSTP", "TAP", "TSDP"), then `seg_1` to `embed_dim`; with `two_emb_layer`,
    ReLU, a BatchNorm without affine and `seg_2` give the embedding. `var_eps`: added to the pooled variance
    (WeSpeaker 1e-7; pyannote's copy of the network adds none).
    """

    def __init__(
        self,
        feat_dim: int = 80,
        embed_dim: int = 256,
        block: Block = "basic",
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
        m_channels: int = 32,
        two_emb_layer: bool = False,
        pooling: str = "TSTP",
        var_eps: float = VAR_EPS,
    ) -> None:
        super().__init__()
        if block not in EXPANSION:
            raise SpkidError(f"WeSpeaker ResNet: block {block!r}; choose from {', '.join(EXPANSION)}")
        if pooling not in ("TSTP", "TAP", "TSDP"):
            raise SpkidError(f"WeSpeaker ResNet: pooling {pooling!r}; spkid has TSTP, TAP and TSDP")
        if len(layers) != 4:
            raise SpkidError(f"WeSpeaker ResNet: layers must give 4 stages, got {list(layers)}")
        self.feat_dim, self.embed_dim = feat_dim, embed_dim
        self.two_emb_layer, self.pooling, self.var_eps = two_emb_layer, pooling, var_eps
        cls = BasicBlock if block == "basic" else Bottleneck
        self.conv1, self.bn1 = _conv_bn(1, m_channels, 3)
        in_ch = m_channels
        stages = []
        for i, n in enumerate(layers):
            ch = m_channels << i
            blocks = []
            for j in range(n):
                blocks.append(cls(in_ch, ch, 2 if i > 0 and j == 0 else 1))
                in_ch = ch * EXPANSION[block]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        stats_dim = (feat_dim // 8) * in_ch  # WeSpeaker sizes the pooling for feat_dim / 8 bins
        pooled = stats_dim * (2 if pooling == "TSTP" else 1)
        self.seg_1 = nn.Linear(pooled, embed_dim)
        if two_emb_layer:
            self.seg_bn_1 = nn.BatchNorm1d(embed_dim, affine=False)
            self.seg_2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(batch, frames, feat_dim)` float32 -> `(batch, embed_dim)`."""
        h = F.relu(self.bn1(self.conv1(x.transpose(1, 2).unsqueeze(1))))  # (B, C, F, T)
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        e = self.seg_1(temporal_stats(h.flatten(1, 2), self.pooling, self.var_eps))
        if self.two_emb_layer:
            e = self.seg_2(self.seg_bn_1(F.relu(e)))
        return e


class Conv1dReluBn(nn.Module):
    """Conv1d -> ReLU -> BatchNorm1d on `(B, C, T)` (WeSpeaker's order: the BN after the ReLU)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, padding: int = 0, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size, padding=padding, dilation=dilation)
        self.bn = nn.BatchNorm1d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(x)))


class Res2Conv1dReluBn(nn.Module):
    """Res2Net's hierarchical convolution: the channels split in `scale` groups; group i (i < scale - 1) is
    convolved after adding the previous group's output; the last group passes through unchanged."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int) -> None:
        super().__init__()
        if channels % scale:
            raise SpkidError(f"WeSpeaker ECAPA-TDNN: {channels} channels do not split into {scale} groups")
        self.width = channels // scale
        n = max(scale - 1, 1)
        pad = dilation * (kernel_size - 1) // 2
        self.convs = nn.ModuleList(nn.Conv1d(self.width, self.width, kernel_size, padding=pad, dilation=dilation)
                                   for _ in range(n))
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(x, self.width, dim=1)
        out = []
        h = groups[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            h = bn(F.relu(conv(h if i == 0 else h + groups[i])))
            out.append(h)
        if len(groups) > len(self.convs):
            out.append(groups[-1])
        return torch.cat(out, dim=1)


class SEConnect(nn.Module):
    """Squeeze-and-excitation over channels: the time mean through a bottleneck gates each channel."""

    def __init__(self, channels: int, bottleneck: int = 128) -> None:
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.linear2(F.relu(self.linear1(x.mean(dim=2)))))
        return x * gate.unsqueeze(2)


class SERes2Block(nn.Module):
    """1x1 conv, Res2 dilated conv, 1x1 conv and SE gate (module `se_res2block`), plus the residual."""

    def __init__(self, channels: int, dilation: int, scale: int = 8) -> None:
        super().__init__()
        self.se_res2block = nn.Sequential(
            Conv1dReluBn(channels, channels),
            Res2Conv1dReluBn(channels, 3, dilation, scale),
            Conv1dReluBn(channels, channels),
            SEConnect(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se_res2block(x)


class AttentiveStats(nn.Module):
    """Attentive statistics pooling (WeSpeaker's "ASTP"): per channel and frame attention weights (tanh
    bottleneck of 1x1 convs, softmax over time) give a weighted mean and standard deviation, `(B, D, T)` ->
    `(B, 2 D)`. With `global_context`, the attention also sees the utterance's mean and deviation per channel."""

    def __init__(self, in_dim: int, bottleneck: int = 128, global_context: bool = False) -> None:
        super().__init__()
        self.global_context = global_context
        self.linear1 = nn.Conv1d(in_dim * (3 if global_context else 1), bottleneck, kernel_size=1)
        self.linear2 = nn.Conv1d(bottleneck, in_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x
        if self.global_context:
            mean = x.mean(dim=-1, keepdim=True).expand_as(x)
            std = torch.sqrt(torch.var(x, dim=-1, keepdim=True) + VAR_EPS).expand_as(x)
            a = torch.cat([x, mean, std], dim=1)
        w = torch.softmax(self.linear2(torch.tanh(self.linear1(a))), dim=2)
        mean = (w * x).sum(dim=2)
        var = (w * x * x).sum(dim=2) - mean * mean
        return torch.cat([mean, torch.sqrt(var.clamp(min=VAR_EPS))], dim=1)


class WeSpeakerECAPA(nn.Module):
    """WeSpeaker's ECAPA-TDNN: `(batch, frames, feat_dim)` -> `(batch, embed_dim)` (not normalised).

    A k=5 conv to `channels`, three SE-Res2Blocks (dilations 2, 3, 4; Res2 scale 8), their outputs concatenated and
    mixed by a 1x1 conv to 1536 channels (fixed, whatever `channels`), ReLU, `pooling` ("ASTP", optionally with
    `global_context_att`, or "TSTP"), BatchNorm, `linear` to `embed_dim`, and with `emb_bn` a last BatchNorm.
    WeSpeaker's ECAPA_TDNN_c512 / _c1024 are `channels` 512 / 1024; the _GLOB_ variants set `global_context_att`.
    """

    def __init__(
        self,
        feat_dim: int = 80,
        embed_dim: int = 192,
        channels: int = 512,
        pooling: str = "ASTP",
        global_context_att: bool = False,
        emb_bn: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in ("ASTP", "TSTP"):
            raise SpkidError(f"WeSpeaker ECAPA-TDNN: pooling {pooling!r}; spkid has ASTP and TSTP")
        self.feat_dim, self.embed_dim, self.pooling, self.emb_bn = feat_dim, embed_dim, pooling, emb_bn
        self.layer1 = Conv1dReluBn(feat_dim, channels, kernel_size=5, padding=2)
        self.layer2 = SERes2Block(channels, dilation=2)
        self.layer3 = SERes2Block(channels, dilation=3)
        self.layer4 = SERes2Block(channels, dilation=4)
        mixed = 512 * 3
        self.conv = nn.Conv1d(channels * 3, mixed, kernel_size=1)
        if pooling == "ASTP":
            self.pool = AttentiveStats(mixed, global_context=global_context_att)
        self.bn = nn.BatchNorm1d(2 * mixed)
        self.linear = nn.Linear(2 * mixed, embed_dim)
        if emb_bn:
            self.bn2 = nn.BatchNorm1d(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(batch, frames, feat_dim)` float32 -> `(batch, embed_dim)`."""
        h1 = self.layer1(x.transpose(1, 2))
        h2 = self.layer2(h1)
        h3 = self.layer3(h2)
        h4 = self.layer4(h3)
        h = F.relu(self.conv(torch.cat([h2, h3, h4], dim=1)))
        stats = self.pool(h) if self.pooling == "ASTP" else temporal_stats(h, "TSTP", VAR_EPS)
        e = self.linear(self.bn(stats))
        return self.bn2(e) if self.emb_bn else e


MODELS: dict[str, type[nn.Module]] = {"wespeaker_resnet": WeSpeakerResNet, "wespeaker_ecapa": WeSpeakerECAPA}

"""ECAPA-TDNN speaker embedding.

Reference: Desplanques, Thienpondt, Demuynck, "ECAPA-TDNN: Emphasized Channel Attention, Propagation and Aggregation
in TDNN Based Speaker Verification", Interspeech 2020 (SE-Res2Blocks with dilations 2, 3, 4, multi-layer feature
aggregation, channel- and context-dependent attentive statistics pooling, 192-d embedding). Layer layout follows
WeSpeaker's `ecapa_tdnn.py` and SpeechBrain's `ECAPA_TDNN`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Conv1dReluBn(nn.Module):
    """Conv1d -> ReLU -> BatchNorm1d on `(B, C, T)`."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size, padding=dilation * (kernel_size - 1) // 2, dilation=dilation)
        self.bn = nn.BatchNorm1d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(x)))


class Res2Conv1dReluBn(nn.Module):
    """Res2Net hierarchical conv (Gao et al., TPAMI 2019): `scale` channel groups; each group's conv also sees the
    previous group's output, the last group passes through."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"ECAPA-TDNN: channels {channels} are not divisible by the Res2 scale {scale}")
        self.width = channels // scale
        self.convs = nn.ModuleList(
            Conv1dReluBn(self.width, self.width, kernel_size, dilation) for _ in range(scale - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.width, dim=1)
        out = []
        sp = parts[0]
        for i, conv in enumerate(self.convs):
            sp = conv(sp if i == 0 else sp + parts[i])
            out.append(sp)
        out.append(parts[-1])
        return torch.cat(out, dim=1)


class SqueezeExcite1d(nn.Module):
    """Channel attention from the time average: `(B, C, T)` scaled by sigmoid(W2 relu(W1 mean_t x))."""

    def __init__(self, channels: int, bottleneck: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, bottleneck)
        self.fc2 = nn.Linear(bottleneck, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=2))))).unsqueeze(2)


class SERes2Block(nn.Module):
    """1x1 conv -> dilated Res2 conv -> 1x1 conv -> SE, plus the identity shortcut."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int, se_bottleneck: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            Conv1dReluBn(channels, channels, 1),
            Res2Conv1dReluBn(channels, kernel_size, dilation, scale),
            Conv1dReluBn(channels, channels, 1),
            SqueezeExcite1d(channels, se_bottleneck),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class AttentiveStatsPool(nn.Module):
    """Attentive statistics pooling with global context: `(B, C, T)` -> `(B, 2 C)`.

    Frame weights per channel come from the frames concatenated with the utterance mean and std, so the attention
    sees the whole utterance; the output is the weighted mean and weighted standard deviation.
    """

    def __init__(self, channels: int, bottleneck: int = 128) -> None:
        super().__init__()
        self.attn1 = nn.Conv1d(3 * channels, bottleneck, 1)
        self.attn2 = nn.Conv1d(bottleneck, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[2]
        mean = x.mean(dim=2, keepdim=True)
        std = torch.sqrt(x.var(dim=2, keepdim=True, unbiased=False) + 1e-7)
        context = torch.cat([x, mean.expand(-1, -1, t), std.expand(-1, -1, t)], dim=1)
        alpha = torch.softmax(self.attn2(torch.tanh(self.attn1(context))), dim=2)
        mu = (alpha * x).sum(dim=2)
        sigma = torch.sqrt(((alpha * x * x).sum(dim=2) - mu * mu).clamp(min=1e-7))
        return torch.cat([mu, sigma], dim=1)


class ECAPATDNN(nn.Module):
    """ECAPA-TDNN: `(batch, frames, feat_dim)` -> `(batch, embed_dim)` (not normalised).

    `channels` 512 with `mfa_channels` 1536 is the paper's C=512 model (about 6.2 M parameters on 80-dim fbank);
    `channels=256` (MFA 768 by default, 3 times the channels) is a small variant (about 2.0 M) that runs on a CPU.
    """

    def __init__(
        self,
        feat_dim: int = 80,
        embed_dim: int = 192,
        channels: int = 512,
        mfa_channels: int = 0,
        scale: int = 8,
        se_bottleneck: int = 128,
        attn_bottleneck: int = 128,
    ) -> None:
        """`mfa_channels` 0 means 3 x `channels` (1536 for C=512, as in the paper)."""
        super().__init__()
        self.feat_dim = feat_dim
        self.embed_dim = embed_dim
        mfa = mfa_channels or 3 * channels
        self.layer1 = Conv1dReluBn(feat_dim, channels, kernel_size=5)
        self.blocks = nn.ModuleList(SERes2Block(channels, 3, d, scale, se_bottleneck) for d in (2, 3, 4))
        self.mfa = nn.Conv1d(3 * channels, mfa, 1)
        self.pool = AttentiveStatsPool(mfa, attn_bottleneck)
        self.pool_bn = nn.BatchNorm1d(2 * mfa)
        self.embedding = nn.Linear(2 * mfa, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(batch, frames, feat_dim)` float32 -> `(batch, embed_dim)`."""
        h = self.layer1(x.transpose(1, 2))
        outs = []
        for block in self.blocks:
            h = block(h)
            outs.append(h)
        h = F.relu(self.mfa(torch.cat(outs, dim=1)))
        return self.embedding(self.pool_bn(self.pool(h)))

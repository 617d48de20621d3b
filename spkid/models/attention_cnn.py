"""Deep CNNs with self-attention pooling for speaker identification: a VGG-like CNN and a ResNet18.

References: An, Thanh, Liu, "Deep CNNs With Self-Attention for Speaker Identification", IEEE Access 7, 2019
(VGG-like and ResNet front ends on spectrograms, self-attentive pooling into an utterance embedding);
India, Safari, Hernando, "Self Multi-Head Attention for Speaker Recognition", Interspeech 2019 (the multi-head
attention pooling used here: each head weights the frames of its own slice of the encoding).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spkid.models._layers import ResNetTrunk, conv_out, to_image


class MultiHeadAttentionPooling(nn.Module):
    """Self multi-head attention pooling (India et al. 2019): `(B, T, D)` -> `(B, D)`.

    The encoding is split into `heads` slices of `D / heads`; head k scores each frame by
    `h_tk . u_k / sqrt(D / heads)`, softmax over time, and takes the weighted mean of its slice; the heads' outputs
    are concatenated.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention pooling: dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.query = nn.Parameter(torch.randn(heads, self.head_dim) / math.sqrt(self.head_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        hk = h.reshape(b, t, self.heads, self.head_dim)
        scores = (hk * self.query).sum(-1) / math.sqrt(self.head_dim)  # (B, T, heads)
        alpha = torch.softmax(scores, dim=1)
        return (hk * alpha.unsqueeze(-1)).sum(dim=1).reshape(b, d)


class _AttentionHead(nn.Module):
    """Feature maps `(B, C, F', T')` -> frames `(B, T', C F')` -> linear to `attn_dim` + ReLU -> attention pooling
    -> affine embedding."""

    def __init__(self, in_dim: int, attn_dim: int, heads: int, embed_dim: int) -> None:
        super().__init__()
        self.frame_proj = nn.Sequential(nn.Linear(in_dim, attn_dim), nn.ReLU())
        self.pool = MultiHeadAttentionPooling(attn_dim, heads)
        self.embedding = nn.Linear(attn_dim, embed_dim)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        frames = fmap.flatten(1, 2).transpose(1, 2)  # (B, T', C F')
        return self.embedding(self.pool(self.frame_proj(frames)))


class VGGAttention(nn.Module):
    """VGG-like CNN + self multi-head attention pooling: `(batch, frames, feat_dim)` -> `(batch, embed_dim)`.

    Four blocks of two 3x3 conv + BN + ReLU, each followed by 2x2 max pooling (ceil mode), widths `channels`;
    default (32, 64, 128, 256): about 1.4 M parameters on 40-dim features; (16, 32, 64, 128) is a small variant
    (0.4 M).
    """

    def __init__(
        self,
        feat_dim: int = 40,
        embed_dim: int = 256,
        channels: tuple[int, int, int, int] = (32, 64, 128, 256),
        attn_dim: int = 256,
        heads: int = 8,
    ) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.embed_dim = embed_dim
        blocks: list[nn.Module] = []
        in_ch = 1
        for ch in channels:
            blocks += [
                nn.Conv2d(in_ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(),
                nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]  # fmt: skip
            in_ch = ch
        self.cnn = nn.Sequential(*blocks)
        self.head = _AttentionHead(channels[-1] * conv_out(feat_dim, len(channels)), attn_dim, heads, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(batch, frames, feat_dim)` float32 -> `(batch, embed_dim)` (not normalised)."""
        return self.head(self.cnn(to_image(x)))


class ResNet18Attention(nn.Module):
    """ResNet18 + self multi-head attention pooling: `(batch, frames, feat_dim)` -> `(batch, embed_dim)`.

    [2, 2, 2, 2] basic blocks of widths base, 2 base, 4 base, 8 base (strides 1, 2, 2, 2); base 32: about 3.2 M
    parameters on 40-dim features; base 16 is a small variant (0.8 M).
    """

    def __init__(
        self, feat_dim: int = 40, embed_dim: int = 256, base_width: int = 32, attn_dim: int = 256, heads: int = 8
    ) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.embed_dim = embed_dim
        channels = (base_width, 2 * base_width, 4 * base_width, 8 * base_width)
        self.trunk = ResNetTrunk(channels, (2, 2, 2, 2))
        self.head = _AttentionHead(channels[3] * conv_out(feat_dim, 3), attn_dim, heads, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(batch, frames, feat_dim)` float32 -> `(batch, embed_dim)` (not normalised)."""
        return self.head(self.trunk(to_image(x)))

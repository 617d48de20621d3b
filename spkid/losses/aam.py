"""Additive angular margin softmax (AAM-softmax, ArcFace).

References: Deng, Guo, Xue, Zafeiriou, "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019;
Xiang et al., "Margin Matters: Towards More Discriminative Deep Neural Network Embeddings for Speaker Recognition",
APSIPA 2019 (AAM for speakers). Margin warm-up and the easy-margin switch follow WeSpeaker's `ArcMarginProduct`
and margin scheduler (Wang et al., ICASSP 2023).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class AAMSoftmax(nn.Module):
    """ArcFace loss: logits `s cos(theta_y + m)` for the true class, `s cos(theta_j)` for the others.

    `scale` s (32 in WeSpeaker) and `margin` m (0.2 rad) are the final values. Margin warm-up: the margin is 0 until
    epoch `warmup_start`, then rises linearly to `margin` over `warmup_epochs` epochs; the trainer calls
    `set_epoch(epoch)` (a float, so per-step updates work) or sets it directly with `set_margin(m)`.
    `warmup_epochs=0` starts at the full margin. With `easy_margin` the margin only applies where cos(theta) > 0;
    otherwise (default), past theta > pi - m, where cos(theta + m) would stop decreasing, the logit becomes
    `cos(theta) - (1 + cos(pi - m))`, which keeps it monotonic (WeSpeaker's choice).
    Any batch sampler works (`needs_nm_batches = False`).
    """

    needs_nm_batches = False

    def __init__(
        self,
        embed_dim: int,
        n_classes: int,
        scale: float = 32.0,
        margin: float = 0.2,
        easy_margin: bool = False,
        warmup_start: float = 0.0,
        warmup_epochs: float = 0.0,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale = scale
        self.final_margin = margin
        self.easy_margin = easy_margin
        self.warmup_start = warmup_start
        self.warmup_epochs = warmup_epochs
        self.set_epoch(0.0)

    def set_margin(self, margin: float) -> None:
        """Use angular margin `margin` (radians) from now on."""
        self.margin = float(margin)
        self._cos_m = math.cos(margin)
        self._sin_m = math.sin(margin)
        self._th = math.cos(math.pi - margin)
        self._mmm = 1.0 + math.cos(math.pi - margin)

    def set_epoch(self, epoch: float) -> None:
        """Set the warm-up margin for (possibly fractional) epoch `epoch`, counted from 0."""
        if self.warmup_epochs <= 0:
            frac = 1.0 if epoch >= self.warmup_start else 0.0
        else:
            frac = min(max((epoch - self.warmup_start) / self.warmup_epochs, 0.0), 1.0)
        self.set_margin(self.final_margin * frac)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`embeddings` `(B, D)`, `labels` int64 `(B,)` -> mean CE of the margin logits and top-1 accuracy of the
        margin-free cosines (detached)."""
        cosine = F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))
        sine = torch.sqrt((1.0 - cosine * cosine).clamp(min=1e-7, max=1.0))
        phi = cosine * self._cos_m - sine * self._sin_m
        if self.easy_margin:
            phi = torch.where(cosine > 0, phi, cosine)
        else:
            phi = torch.where(cosine > self._th, phi, cosine - self._mmm)
        one_hot = F.one_hot(labels, cosine.shape[1]).to(cosine.dtype)
        logits = self.scale * (one_hot * phi + (1.0 - one_hot) * cosine)
        loss = F.cross_entropy(logits, labels)
        acc = (cosine.detach().argmax(dim=1) == labels).float().mean()
        return loss, acc

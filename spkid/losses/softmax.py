"""Softmax classification loss: a linear classifier over the training speakers and cross-entropy.

Reference: Snyder et al., "X-Vectors: Robust DNN Embeddings for Speaker Recognition", ICASSP 2018 (embeddings
trained as the penultimate layer of a speaker classifier).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SoftmaxLoss(nn.Module):
    """Linear layer `(embed_dim -> n_classes)` + cross-entropy; returns `(loss, top-1 accuracy)`.

    Any batch sampler works (`needs_nm_batches = False`).
    """

    needs_nm_batches = False

    def __init__(self, embed_dim: int, n_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(embed_dim, n_classes)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`embeddings` `(B, D)`, `labels` int64 `(B,)` in `[0, n_classes)` -> mean cross-entropy and the batch
        accuracy (detached)."""
        logits = self.classifier(embeddings)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.detach().argmax(dim=1) == labels).float().mean()
        return loss, acc

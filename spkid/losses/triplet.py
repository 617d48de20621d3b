"""Batch-hard triplet loss.

References: Schroff, Kalenichenko, Philbin, "FaceNet", CVPR 2015 (triplet loss); Hermans, Beyer, Leibe, "In Defense
of the Triplet Loss for Person Re-Identification", arXiv:1703.07737, 2017 (batch-hard mining over P x K batches);
Li et al., "Deep Speaker", 2017 (cosine triplets for speakers).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from spkid.errors import SpkidError


class TripletLoss(nn.Module):
    """Batch-hard triplet loss: for each anchor, its farthest positive and nearest negative in the batch;
    loss = mean relu(d(a, p) - d(a, n) + margin).

    `metric` "cosine" uses d = 1 - cos (in [0, 2]; margin 0.2 is typical), "euclidean" the L2 distance of the raw
    embeddings. Returns `(loss, accuracy)`, accuracy being the fraction of anchors with d(a, p) < d(a, n).
    Needs batches where each speaker appears at least twice alongside other speakers: use the speaker-balanced
    N x M sampler (`needs_nm_batches = True`). `embed_dim` and `n_classes` are accepted, unused.
    """

    needs_nm_batches = True

    def __init__(
        self,
        embed_dim: int | None = None,
        n_classes: int | None = None,
        margin: float = 0.2,
        metric: Literal["cosine", "euclidean"] = "cosine",
    ) -> None:
        super().__init__()
        if metric not in ("cosine", "euclidean"):
            raise SpkidError(f"triplet loss: unknown metric {metric!r}; choose cosine or euclidean")
        self.margin = margin
        self.metric = metric

    def distances(self, embeddings: torch.Tensor) -> torch.Tensor:
        """`(B, D)` -> `(B, B)` pairwise distances under `metric`."""
        if self.metric == "cosine":
            e = F.normalize(embeddings, dim=1)
            return 1.0 - e @ e.T
        sq = (embeddings * embeddings).sum(dim=1)
        d2 = sq[:, None] + sq[None, :] - 2.0 * embeddings @ embeddings.T
        return torch.sqrt(d2.clamp(min=1e-12))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`embeddings` `(B, D)`, `labels` `(B,)` -> mean hinge over anchors that have a positive and a negative."""
        d = self.distances(embeddings)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos_mask = same & ~eye
        neg_mask = ~same
        valid = pos_mask.any(dim=1) & neg_mask.any(dim=1)
        if not bool(valid.any()):
            raise SpkidError("triplet loss: the batch has no anchor with both a positive and a negative; "
                             "use the speaker-balanced sampler with at least 2 utterances per speaker")
        hardest_pos = torch.where(pos_mask, d, torch.full_like(d, float("-inf"))).max(dim=1).values
        hardest_neg = torch.where(neg_mask, d, torch.full_like(d, float("inf"))).min(dim=1).values
        hp, hn = hardest_pos[valid], hardest_neg[valid]
        loss = F.relu(hp - hn + self.margin).mean()
        acc = (hp.detach() < hn.detach()).float().mean()
        return loss, acc

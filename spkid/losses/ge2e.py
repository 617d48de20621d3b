"""Generalized end-to-end (GE2E) loss, softmax variant.

Reference: Wan, Wang, Papir, Lopez Moreno, "Generalized End-to-End Loss for Speaker Verification", ICASSP 2018:
a batch holds N speakers x M utterances; each embedding is compared by scaled cosine `w cos + b` (w > 0, learnable,
initialised w = 10, b = -5) with every speaker centroid, its own speaker's centroid leaving the utterance out
(eq. 8), and the loss is softmax cross-entropy over speakers (eq. 6). The parameters are named like Resemblyzer's
(`similarity_weight`, `similarity_bias`), so its checkpoint's values can be moved here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spkid.errors import SpkidError


def group_nm(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`(N M, D)` embeddings with labels -> `(N, M, D)`, speakers in label order, utterances in batch order.

    Every label must occur the same number of times M >= 2 (a speaker-balanced batch), else SpkidError.
    """
    uniq, counts = torch.unique(labels, return_counts=True)
    m = int(counts[0])
    if m < 2 or bool((counts != m).any()):
        raise SpkidError(
            f"GE2E needs N speakers x M >= 2 utterances per batch; got per-speaker counts {counts.tolist()}; "
            "use the speaker-balanced sampler"
        )
    order = torch.argsort(labels, stable=True)
    return embeddings[order].reshape(len(uniq), m, -1)


class GE2ELoss(nn.Module):
    """GE2E softmax loss over `(N, M, D)` embeddings (or `(N M, D)` plus labels); returns `(loss, accuracy)`.

    Accuracy is the fraction of utterances whose most similar centroid is their own speaker's. Needs speaker-balanced
    N x M batches (`needs_nm_batches = True`). `embed_dim` and `n_classes` are accepted, unused, so every loss is built
    with the same call. Like the paper (and Resemblyzer), w is clamped to stay > 0. Jemine's Real-Time Voice Cloning
    trainer also scales the gradients of w and b by 0.01 and clips the gradient norm at 3; that is the trainer's choice.
    """

    needs_nm_batches = True

    def __init__(
        self, embed_dim: int | None = None, n_classes: int | None = None, init_w: float = 10.0, init_b: float = -5.0
    ) -> None:
        super().__init__()
        self.similarity_weight = nn.Parameter(torch.tensor([init_w]))
        self.similarity_bias = nn.Parameter(torch.tensor([init_b]))

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`embeddings` `(N, M, D)`, or `(N M, D)` with `labels` `(N M,)` -> mean CE and accuracy (detached)."""
        if embeddings.dim() == 2:
            if labels is None:
                raise SpkidError("GE2E loss: (N*M, D) embeddings need labels")
            embeddings = group_nm(embeddings, labels)
        n, m, _ = embeddings.shape
        if n < 2 or m < 2:
            raise SpkidError(f"GE2E needs at least 2 speakers x 2 utterances per batch; got {n} x {m}")
        e = F.normalize(embeddings, dim=2)
        total = embeddings.sum(dim=1, keepdim=True)  # (N, 1, D)
        centroids = F.normalize(total.squeeze(1) / m, dim=1)  # (N, D)
        exclusive = F.normalize((total - embeddings) / (m - 1), dim=2)  # (N, M, D): own centroid without e_ji
        sim = torch.einsum("jid,kd->jik", e, centroids)  # (N, M, N)
        own = (e * exclusive).sum(dim=2)  # (N, M)
        eye = torch.eye(n, dtype=torch.bool, device=e.device).unsqueeze(1)  # (N, 1, N)
        sim = torch.where(eye, own.unsqueeze(2), sim)
        logits = self.similarity_weight.clamp(min=1e-6) * sim + self.similarity_bias
        target = torch.arange(n, device=e.device).repeat_interleave(m)
        logits = logits.reshape(n * m, n)
        loss = F.cross_entropy(logits, target)
        acc = (logits.detach().argmax(dim=1) == target).float().mean()
        return loss, acc

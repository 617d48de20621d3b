"""An ensemble of embedding networks that share one front end: their embeddings side by side, each scaled by the
square root of its weight, optionally projected onto fewer dimensions.

Each member's embedding is a unit vector and the weights sum to 1, so the side-by-side vector is a unit vector too,
and the cosine of two of them is the weighted mean of the members' cosines: score-level fusion in the form of one
embedding, which galleries, indexes and back ends take as they are. Members fine-tuned from one start agree on
most directions, so `dim` > 0 keeps only the `dim` leading ones (`projection`, orthonormal rows, fitted by
`recipes/soup.py --dim` on training speakers' embeddings) and normalises again: the embedding keeps the size of one
member's, and the cosines barely move. (An utterance of several windows averages them before the final
normalisation, as for any network.) Unlike a weight average (`recipes/soup.py` without --ensemble), the members
need not share a start or an architecture, only features and windows; it costs the sum of the members' time.

It is built from its model file like any network, but not trained.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Ensemble(nn.Module):
    """`members`: `[{"name": architecture, "kwargs": {...}}, ...]` (`spkid.models.build_model`), `weights`: one
    positive weight per member, summing to 1; `dim`: the size of the projected embedding (0: none).
    `(batch, frames, feat_dim)` -> `(batch, dim or the sum of the members' embed_dim)`, unit L2 norm."""

    def __init__(self, members: list[dict[str, Any]], weights: list[float], dim: int = 0) -> None:
        super().__init__()
        from spkid.models import build_model

        if not members or len(weights) != len(members):
            raise ValueError(f"{len(members)} members and {len(weights)} weights")
        if min(weights) <= 0 or abs(sum(weights) - 1) > 1e-6:
            raise ValueError(f"the weights {weights} must be positive and sum to 1")
        self.members = nn.ModuleList(build_model(m["name"], **m.get("kwargs", {})) for m in members)
        dims = {m.feat_dim for m in self.members}
        if len(dims) != 1:
            raise ValueError(f"the members take features of different sizes {sorted(dims)}")
        self.feat_dim = dims.pop()
        self.joint_dim = sum(m.embed_dim for m in self.members)
        if not 0 <= dim <= self.joint_dim:
            raise ValueError(f"dim {dim} is not within 0..{self.joint_dim}")
        self.embed_dim = dim or self.joint_dim
        self.scales = [math.sqrt(w) for w in weights]
        self.projection: torch.Tensor | None
        self.register_buffer("projection", torch.zeros(dim, self.joint_dim) if dim else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: `(batch, frames, feat_dim)` float32 -> `(batch, embed_dim)`, unit L2 norm."""
        z = torch.cat([s * F.normalize(m(x), dim=1, eps=1e-5) for m, s in zip(self.members, self.scales)], dim=1)
        return z if self.projection is None else F.normalize(z @ self.projection.t(), dim=1, eps=1e-5)

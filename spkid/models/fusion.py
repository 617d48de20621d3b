"""A fusion of whole models, each with its own front end and windows: their embeddings side by side, each scaled by
the square root of its weight.

Where an `Ensemble` runs networks on one front end's features, a fusion's members are models of their own: a
member is the config of a model file (`{"model", "features", "embedding"}`), so a GE2E network on 40 power Mel
bands in 1.6 s windows and SpeechBrain's ECAPA-TDNN on 80 log Mel bands of the whole utterance can be put together.
As in an ensemble, each member's utterance embedding is a unit vector and the weights sum to 1, so the joint vector
is a unit vector whose cosines are the weighted mean of the members' cosines (score-level fusion as one embedding).

This module only holds the networks (for model files, identities and `spkid export`); `spkid.embedding` prepares
each member's windows from one voiced signal and runs them (`Embedder`).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from spkid.errors import SpkidError


def check_members(members: Any, weights: Any) -> None:
    """Refuse a member list or weights that do not make a fusion (one SpkidError, for a model file's config)."""
    if not isinstance(members, list) or len(members) < 2 or not isinstance(weights, list) or len(weights) != len(members):
        raise SpkidError("a fusion takes two or more members and one weight per member")
    for m in members:
        if not isinstance(m, dict) or not {"model", "features"} <= m.keys() or not isinstance(m["model"], dict):
            raise SpkidError("each member of a fusion is a model config with 'model', 'features' and 'embedding'")
        if m["model"].get("name") == "fusion":
            raise SpkidError("a fusion cannot hold another fusion")
    if any(not isinstance(w, (int, float)) or w <= 0 for w in weights) or abs(sum(weights) - 1) > 1e-6:
        raise SpkidError(f"the weights {weights} must be positive and sum to 1")


class Fusion(nn.Module):
    """`members`: model configs (`{"model": {"name", "kwargs"}, "features": {...}, "embedding": {...}}`), `weights`:
    one positive weight per member, summing to 1. `embed_dim` is the sum of the members'; it has no `forward` of its
    own: each member takes its own features (`spkid.embedding.Embedder`)."""

    def __init__(self, members: list[dict[str, Any]], weights: list[float]) -> None:
        super().__init__()
        from spkid.models import build_model

        try:
            check_members(members, weights)
        except SpkidError as e:
            raise ValueError(str(e)) from None
        self.configs = members
        self.members = nn.ModuleList(build_model(m["model"]["name"], **m["model"].get("kwargs", {})) for m in members)
        self.weights = [float(w) for w in weights]
        self.scales = [math.sqrt(w) for w in self.weights]
        self.embed_dim = sum(int(m.embed_dim) for m in self.members)

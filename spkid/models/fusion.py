"""A fusion of whole models, each with its own front end and windows: their embeddings side by side, each scaled by
the square root of its weight.

Where an `Ensemble` runs networks on one front end's features, a fusion's members are models of their own: a
member is the config of a model file (`{"model", "features", "embedding"}`), so a GE2E network on 40 power Mel
bands in 1.6 s windows and SpeechBrain's ECAPA-TDNN on 80 log Mel bands of the whole utterance can be put together.
As in an ensemble, each member's utterance embedding is a unit vector scaled by the square root of its weight, and
the weights sum to 1, so the joint vector is a unit vector whose cosines are a weighted mean of the members' cosines
(score-level fusion as one embedding). The weights may depend on the utterance's speech duration
(`spkid.utterance.FusionWeights`): a network that is better on long speech can count for more there. A member may
be centred (`centers`, `spkid.utterance.fusion_centers`): a vector taken out of its utterance embeddings; and then
centred locally (`local_centers`, `spkid.utterance.LocalCenter`): on the mean of its nearest training speakers.
Short utterances may be embedded with speed copies (`speed_copies`, `spkid.utterance.SpeedCopies`).

This module only holds the networks (for model files, identities and `spkid export`); `spkid.embedding` prepares
each member's windows from one voiced signal and runs them (`Embedder`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from spkid.errors import SpkidError
from spkid.utterance import FusionWeights, SpeedCopies, fusion_centers, fusion_local_centers


def check_members(members: Any, weights: FusionWeights) -> None:
    """Refuse a member list that does not make a fusion (one SpkidError, for a model file's config)."""
    if not isinstance(members, list) or len(members) < 2 or len(weights.short) != len(members):
        raise SpkidError("a fusion takes two or more members and one weight per member")
    for m in members:
        if not isinstance(m, dict) or not {"model", "features"} <= m.keys() or not isinstance(m["model"], dict):
            raise SpkidError("each member of a fusion is a model config with 'model', 'features' and 'embedding'")
        if m["model"].get("name") == "fusion":
            raise SpkidError("a fusion cannot hold another fusion")


class Fusion(nn.Module):
    """`members`: model configs (`{"model": {"name", "kwargs"}, "features": {...}, "embedding": {...}}`); `weights`,
    `long_weights`, `short_s`, `long_s`: how they are weighed by an utterance's speech duration
    (`spkid.utterance.FusionWeights`); `centers`: what is taken out of each member's utterance embeddings
    (`spkid.utterance.fusion_centers`); `local_centers`: each member's `spkid.utterance.LocalCenter` record or None;
    `speed_copies`: a `spkid.utterance.SpeedCopies` record or None.
    `embed_dim` is the sum of the members'; it has no `forward` of its own: each
    member takes its own features (`spkid.embedding.Embedder`)."""

    def __init__(self, members: list[dict[str, Any]], weights: list[float], long_weights: list[float] | None = None,
                 short_s: float = 1.0, long_s: float = 3.0, centers: list[list[float] | None] | None = None,
                 local_centers: list[dict[str, Any] | None] | None = None,
                 speed_copies: dict[str, Any] | None = None) -> None:
        super().__init__()
        from spkid.models import build_model

        try:
            kwargs = {"weights": weights, "long_weights": long_weights, "short_s": short_s, "long_s": long_s}
            check_members(members, FusionWeights.from_kwargs(kwargs, len(members) if isinstance(members, list) else 0))
        except SpkidError as e:
            raise ValueError(str(e)) from None
        self.members = nn.ModuleList(build_model(m["model"]["name"], **m["model"].get("kwargs", {})) for m in members)
        self.embed_dim = sum(int(m.embed_dim) for m in self.members)
        try:
            dims = [int(m.embed_dim) for m in self.members]
            fusion_centers({"members": members, "centers": centers}, dims)
            fusion_local_centers({"members": members, "local_centers": local_centers}, dims)
            SpeedCopies.from_kwargs({"members": members, "speed_copies": speed_copies})
        except SpkidError as e:
            raise ValueError(str(e)) from None

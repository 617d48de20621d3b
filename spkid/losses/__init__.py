"""Training losses over speaker embeddings: `forward(embeddings (B, D), labels (B,)) -> (loss, accuracy or None)`.

`LOSSES` maps names to classes; `build_loss(name, embed_dim=..., n_classes=..., **options)` builds one (every
constructor accepts `embed_dim` and `n_classes`, even where unused). Each class has `needs_nm_batches`: True when
batches must hold N speakers x M utterances each (ge2e, triplet), so the trainer picks a speaker-balanced sampler.
Losses with a classifier (softmax, aam) have parameters: give them to the optimiser along with the model's.
`aam` also has `set_epoch(epoch)` / `set_margin(m)` for the margin warm-up; `hasattr(loss, "set_epoch")` tells.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from spkid.errors import SpkidError
from spkid.losses.aam import AAMSoftmax
from spkid.losses.ge2e import GE2ELoss
from spkid.losses.softmax import SoftmaxLoss
from spkid.losses.triplet import TripletLoss

LOSSES: dict[str, type[nn.Module]] = {
    "softmax": SoftmaxLoss,
    "aam": AAMSoftmax,
    "ge2e": GE2ELoss,
    "triplet": TripletLoss,
}


def build_loss(name: str, *, embed_dim: int, n_classes: int, **options: Any) -> nn.Module:
    """Build loss `name` for `embed_dim`-wide embeddings and `n_classes` training speakers; `options` are the loss's
    own keywords (`scale`, `margin`, ...). An unknown name or option is a SpkidError."""
    if name not in LOSSES:
        raise SpkidError(f"unknown loss {name!r}; choose from: {', '.join(LOSSES)}")
    try:
        return LOSSES[name](embed_dim=embed_dim, n_classes=n_classes, **options)
    except TypeError as e:
        raise SpkidError(f"loss {name!r}: {e}; check the loss options in the training config") from e

"""Speaker-embedding networks: `(batch, frames, feat_dim)` float32 features in, `(batch, embed_dim)` embeddings out.

`MODELS` maps each architecture name to its class; `build_model(name, feat_dim=..., embed_dim=..., ...)` builds one.
Every constructor takes explicit keywords, at least `feat_dim` and `embed_dim`, and every model exposes `feat_dim`
and `embed_dim` attributes. `SMALL` holds, for each name, the keyword arguments of a CPU-sized variant (merge your own
`feat_dim`/`embed_dim` on top): `build_model("ecapa_tdnn", **SMALL["ecapa_tdnn"], feat_dim=40)`.
Families, one file each: blstm, attention_cnn (vgg_attn, resnet18_attn), thin_resnet, deep_speaker (se_resnet34,
rescnn), ge2e_lstm (lstm_ge2e), ecapa_tdnn, resnet (resnet34); ensemble (several trained networks side by side),
fusion (whole models with front ends of their own side by side).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from spkid.errors import SpkidError
from spkid.models.attention_cnn import ResNet18Attention, VGGAttention
from spkid.models.blstm import BLSTM
from spkid.models.deep_speaker import ResCNN, SEResNet34
from spkid.models.ecapa_tdnn import ECAPATDNN
from spkid.models.ge2e_lstm import LSTMGE2E
from spkid.models.resnet import ResNet34
from spkid.models.thin_resnet import ThinResNet
from spkid.models import campplus, eres2net, sb_ecapa, wespeaker
from spkid.models.ensemble import Ensemble
from spkid.models.fusion import Fusion

MODELS: dict[str, type[nn.Module]] = {
    "blstm": BLSTM,
    "vgg_attn": VGGAttention,
    "resnet18_attn": ResNet18Attention,
    "thin_resnet": ThinResNet,
    "se_resnet34": SEResNet34,
    "rescnn": ResCNN,
    "lstm_ge2e": LSTMGE2E,
    "ecapa_tdnn": ECAPATDNN,
    "resnet34": ResNet34,
}

SMALL: dict[str, dict[str, Any]] = {
    "blstm": {"hidden": 128, "num_layers": 2, "embed_dim": 256},
    "vgg_attn": {"channels": (16, 32, 64, 128), "attn_dim": 128},
    "resnet18_attn": {"base_width": 16, "attn_dim": 128},
    "thin_resnet": {"channels": (8, 16, 32, 64), "layers": (2, 2, 2, 2)},
    "se_resnet34": {"base_width": 16, "layers": (2, 2, 2, 2), "embed_dim": 256},
    "rescnn": {"channels": (32, 64, 128, 256), "blocks": 1, "embed_dim": 256},
    "lstm_ge2e": {"hidden": 128, "proj_size": 64, "embed_dim": 64},
    "ecapa_tdnn": {"channels": 256},
    "resnet34": {"base_width": 16},
}


# The networks of published encoders of other toolkits (`spkid.importers` reads their weights into these), and
# ensembles and fusions of trained networks (`recipes/soup.py --ensemble`, `recipes/fuse.py`): built from model
# files like the others, but not offered to `spkid train` as architectures to train.
IMPORTED: dict[str, type[nn.Module]] = {**wespeaker.MODELS, **campplus.MODELS, **eres2net.MODELS, **sb_ecapa.MODELS,
                                        "ensemble": Ensemble, "fusion": Fusion}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build architecture `name` with the constructor keywords `kwargs`; an unknown name or keyword is a SpkidError."""
    cls = MODELS.get(name) or IMPORTED.get(name)
    if cls is None:
        raise SpkidError(f"unknown model {name!r}; choose from: {', '.join(MODELS)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise SpkidError(f"model {name!r}: {e}; check the model options in the training config") from e


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

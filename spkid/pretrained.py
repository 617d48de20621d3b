"""The pretrained GE2E LSTM encoder that the `resemblyzer` package ships, run by spkid's own code.

Resemblyzer (Resemble AI, after Jemine's "Real-Time Voice Cloning", 2019; Wan et al., "Generalized End-to-End Loss
for Speaker Verification", ICASSP 2018) ships `pretrained.pt`: a 3-layer LSTM of 256 cells over 40 Mel bands, whose
`relu(linear(h_last))` is the 256-d embedding. Only its weights are used here: the file is found with
`importlib.util.find_spec` (the package's code is never imported) and read with `torch.load(weights_only=True)` into
spkid's `lstm_ge2e` architecture. Install it with `pip install 'spkid[pretrained]'`.

Its front end is reproduced in numpy (`spkid.frontends.MelConfig`, feature kind `"ge2e_mel"`: librosa's
power Mel spectrogram, no log; resemblyzer's volume normalisation is `MelConfig.prepare`). Utterances are cut
into 160-frame partials, 77 frames apart (resemblyzer's rate of 1.3 partials per second), the last one kept when
it covers at least 75 % of its window (the audio is zero-padded to its end); the embedding is the L2-normalised
mean of the partial embeddings (`embed_utterance`). spkid's VAD replaces the package's webrtcvad trimming of long
pauses.

    >>> from spkid import pretrained
    >>> pretrained.as_model_file("ge2e.pt")     # a normal spkid model file, e.g. for `spkid train --init`
"""

from __future__ import annotations

import importlib.util
import logging
import os
from functools import lru_cache
from pathlib import Path

from spkid.errors import SpkidError
from spkid.frontends import MelConfig

log = logging.getLogger(__name__)

NAME = "resemblyzer"
INSTALL_HINT = "install it with `pip install 'spkid[pretrained]'` (or `pip install resemblyzer`)"
MODEL = {"name": "lstm_ge2e", "kwargs": {"feat_dim": 40, "embed_dim": 256, "hidden": 256, "proj_size": 0, "num_layers": 3}}
# compute_partial_slices: 160-frame partials; round((16000 / 1.3) / 160) = 77 frames between them
EMBEDDING = {"window_s": 1.6, "hop_s": 0.77, "min_s": 0.5, "min_coverage": 0.75, "last": "pad"}


def weights_path() -> Path:
    """Where the installed resemblyzer package keeps `pretrained.pt`, found without importing the package."""
    try:
        spec = importlib.util.find_spec("resemblyzer")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SpkidError(f"--model {NAME}: the resemblyzer package is not installed; {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        p = Path(folder) / "pretrained.pt"
        if p.is_file():
            return p
    raise SpkidError(f"--model {NAME}: the resemblyzer package has no pretrained.pt; reinstall it ({INSTALL_HINT})")


@lru_cache(maxsize=2)
def sha256() -> str:
    """The model's identity in galleries and embedding streams: `modelfile.fingerprint` of its spec and weights,
    so `--model resemblyzer` and a model file written by `as_model_file` are the same model."""
    from spkid import modelfile

    return modelfile.fingerprint(spec(), state_dict())


@lru_cache(maxsize=2)
def _file_sha256() -> str:
    import hashlib

    h = hashlib.sha256()
    with open(weights_path(), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def spec():
    """The `ModelSpec` of the pretrained encoder (architecture, front end, partial-window settings)."""
    from spkid.modelfile import ModelSpec

    return ModelSpec(
        model={"name": MODEL["name"], "kwargs": dict(MODEL["kwargs"])},
        features=MelConfig().to_dict(),
        embedding=dict(EMBEDDING),
        training={"source": "resemblyzer pretrained.pt (GE2E, Resemble AI)", "weights_file_sha256": _file_sha256()},
    )


@lru_cache(maxsize=1)
def state_dict() -> dict:
    """The encoder's weights in `lstm_ge2e`'s naming (GE2E's similarity w, b dropped: they belong to the loss)."""
    import torch

    path = weights_path()
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise SpkidError(f"{path}: cannot read resemblyzer's weights ({str(e).splitlines()[0][:160]}); reinstall it") from None
    state = blob.get("model_state") if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise SpkidError(f"{path}: no 'model_state' in resemblyzer's weights; is this resemblyzer 0.1.x?")
    return {k: v for k, v in state.items() if not k.startswith("similarity_")}


def load(device: str = "cpu"):
    """(network in eval mode, ModelSpec) with the pretrained weights loaded strictly."""
    from spkid.models import build_model

    net = build_model(MODEL["name"], **MODEL["kwargs"])
    try:
        net.load_state_dict(state_dict(), strict=True)
    except RuntimeError as e:
        raise SpkidError(f"{weights_path()}: weights do not fit lstm_ge2e ({str(e)[:200]})") from None
    return net.to(device).eval(), spec()


def as_model_file(path: str | Path) -> Path:
    """Write the pretrained encoder as a normal spkid model file (e.g. the start of `spkid train --init`)."""
    from spkid import modelfile

    net, model_spec = load("cpu")
    modelfile.save(path, net, model_spec)
    return Path(path)


def model_file() -> Path:
    """A spkid model file of the pretrained encoder, written once to the user's cache folder and reused.

    `$XDG_CACHE_HOME/spkid` (default `~/.cache/spkid`), named after the weights' sha256.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spkid"
    path = cache / f"resemblyzer-{_file_sha256()[:16]}.pt"
    if not path.is_file():
        as_model_file(path)
    return path

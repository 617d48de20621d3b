"""The pretrained GE2E LSTM encoder that the `resemblyzer` package ships, run by spkid's own code.

Resemblyzer (Resemble AI, after Jemine's "Real-Time Voice Cloning", 2019; Wan et al., "Generalized End-to-End Loss
for Speaker Verification", ICASSP 2018) ships `pretrained.pt`: a 3-layer LSTM of 256 cells over 40 Mel bands, whose
`relu(linear(h_last))` is the 256-d embedding. Only its weights are used here: the file is found with
`importlib.util.find_spec` (the package's code is never imported) and read with `torch.load(weights_only=True)` into
spkid's `lstm_ge2e` architecture. Install it with `pip install 'spkid[pretrained]'`.

Its front end is reproduced in numpy (`MelConfig`, feature kind `"ge2e_mel"`): librosa's `melspectrogram` at 16 kHz
with a 400-sample (25 ms) periodic Hann window every 160 samples (10 ms), centred frames (200 zeros of padding at
each end, librosa >= 0.10's `pad_mode="constant"`), power spectrum, 40 Slaney-style Mel filters with Slaney area
normalisation, and *no* log. Its volume normalisation (`preprocess_wav`: RMS raised to -30 dBFS, never lowered) is
`MelConfig.prepare`. Utterances are cut into 160-frame partials, 77 frames apart (resemblyzer's rate of 1.3 partials
per second), the last one kept when it covers at least 75 % of its window (the audio is zero-padded to its end);
the embedding is the L2-normalised mean of the partial embeddings (`embed_utterance`). spkid's VAD replaces the
package's webrtcvad trimming of long pauses.

    >>> from spkid import pretrained
    >>> pretrained.as_model_file("ge2e.pt")     # a normal spkid model file, e.g. for `spkid train --init`
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from spkid.errors import SpkidError

log = logging.getLogger(__name__)

NAME = "resemblyzer"
KIND = "ge2e_mel"
INSTALL_HINT = "install it with `pip install 'spkid[pretrained]'` (or `pip install resemblyzer`)"
MODEL = {"name": "lstm_ge2e", "kwargs": {"feat_dim": 40, "embed_dim": 256, "hidden": 256, "proj_size": 0, "num_layers": 3}}
# compute_partial_slices: 160-frame partials; round((16000 / 1.3) / 160) = 77 frames between them
EMBEDDING = {"window_s": 1.6, "hop_s": 0.77, "min_s": 0.5, "min_coverage": 0.75, "last": "pad"}
INT16_MAX = 2**15 - 1


@dataclass(frozen=True)
class MelConfig:
    """Resemblyzer's front end: power Mel spectrogram `(frames, n_mels)` float32, not logged.

    Units: `sample_rate` Hz, `n_fft`/`hop` samples, `fmin`/`fmax` Hz (fmax <= 0: Nyquist), `target_dbfs` dBFS
    (None: no volume normalisation). Frame t is centred on sample `hop * t`; a signal of n samples has
    `1 + n // hop` frames.
    """

    kind: str = KIND
    sample_rate: int = 16000
    n_fft: int = 400
    hop: int = 160
    n_mels: int = 40
    fmin: float = 0.0
    fmax: float = 0.0
    target_dbfs: float | None = -30.0
    increase_only: bool = True

    def __post_init__(self) -> None:
        if self.kind != KIND:
            raise SpkidError(f"feature config: kind {self.kind!r} is not {KIND!r}")
        if not (self.sample_rate > 0 and self.n_fft > 0 and 0 < self.hop and self.n_mels > 0):
            raise SpkidError(f"feature config ({KIND}): sample_rate, n_fft, hop and n_mels must be positive")
        if not 0 <= self.fmin < self.top_freq <= self.sample_rate / 2:
            raise SpkidError(f"feature config ({KIND}): need 0 <= fmin < fmax <= Nyquist, got {self.fmin}, {self.fmax}")

    @property
    def top_freq(self) -> float:
        return self.fmax if self.fmax > 0 else self.sample_rate / 2

    @property
    def dims(self) -> int:
        return self.n_mels

    @property
    def frame_step(self) -> int:
        """Samples between frames."""
        return self.hop

    def n_frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.hop

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MelConfig:
        if unknown := raw.keys() - {f.name for f in fields(cls)}:
            raise SpkidError(f"feature config ({KIND}): unknown keys {sorted(unknown)}")
        return cls(**raw)

    def prepare(self, signal: np.ndarray) -> np.ndarray:
        """Resemblyzer's `normalize_volume`: scale so the RMS is `target_dbfs` (only up with `increase_only`)."""
        if self.target_dbfs is None or len(signal) == 0:
            return signal
        rms = float(np.sqrt(np.mean(np.square(signal, dtype=np.float64)))) * INT16_MAX
        if rms == 0.0:
            return signal
        change = self.target_dbfs - 20 * np.log10(rms / INT16_MAX)
        if change < 0 and self.increase_only:
            return signal
        return (signal * np.float32(10 ** (change / 20))).astype(np.float32, copy=False)

    def compute(self, signal: np.ndarray) -> np.ndarray:
        """Power Mel spectrogram of a mono signal: float32 `(1 + len // hop, n_mels)` (librosa's, transposed)."""
        x = np.asarray(signal, dtype=np.float32)
        if x.ndim != 1:
            raise SpkidError(f"{KIND}: expected a mono signal of shape (samples,), got {x.shape}")
        window, mel = _tables(self)
        n = self.n_frames(len(x))
        pad = self.n_fft // 2
        xp = np.zeros(len(x) + 2 * pad, np.float32)
        xp[pad : pad + len(x)] = x
        out = np.empty((n, self.n_mels), np.float32)
        block = 4096  # frames per FFT block: bounded memory for long recordings
        for a in range(0, n, block):
            b = min(n, a + block)
            frames = np.lib.stride_tricks.sliding_window_view(xp[a * self.hop : (b - 1) * self.hop + self.n_fft], self.n_fft)
            spec = np.fft.rfft(frames[:: self.hop] * window, axis=1)
            power = spec.real**2 + spec.imag**2
            np.matmul(power, mel, out=out[a:b], casting="same_kind")
        return out


@lru_cache(maxsize=4)
def _tables(cfg: MelConfig) -> tuple[np.ndarray, np.ndarray]:
    n = np.arange(cfg.n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / cfg.n_fft)  # periodic Hann (scipy get_window, fftbins=True)
    mel = slaney_mel_filters(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.top_freq)
    return window, np.ascontiguousarray(mel.T.astype(np.float64))


def slaney_mel_filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """librosa's default Mel filters (`htk=False`, `norm="slaney"`): float32 `(n_mels, n_fft // 2 + 1)`.

    Slaney's Mel scale is linear below 1 kHz (200/3 Hz per Mel) and logarithmic above (27 Mel per factor 6.4);
    each triangle is scaled by 2 / (its width in Hz), so every filter has the same area.
    """
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0

    def hz2mel(f: float) -> float:
        return f / f_sp if f < min_log_hz else min_log_mel + np.log(f / min_log_hz) / logstep

    mels = np.linspace(hz2mel(fmin), hz2mel(fmax), n_mels + 2)
    hz = np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    width = np.diff(hz)
    ramps = hz[:, None] - freqs[None, :]
    lower = -ramps[:-2] / width[:-1, None]
    upper = ramps[2:] / width[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz[2:] - hz[:-2]))[:, None]
    return weights.astype(np.float32)


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

"""Front ends: what turns a signal into the frames a network takes, named by a model file's `spec.features`.

A front end (`Frontend`) knows its sample rate, its dims and frame step, how many frames a signal gives, its
signal preparation (`prepare`: e.g. volume normalisation) and its features (`compute`). Two kinds exist:
- `FeatureFrontend`: `spkid.features` (a `FeatureConfig`: fbank, mfcc, specdb, spectrogram);
- `MelConfig` (kind "ge2e_mel"): resemblyzer's power Mel spectrogram, reproduced in numpy (`spkid.pretrained`
  runs the network behind it);
- `spkid.kaldifbank.KaldiFbankConfig` (kind "kaldi-fbank"): Kaldi's log Mel filterbank (WeSpeaker, 3D-Speaker);
- `spkid.sbfbank.SbFbankConfig` (kind "sb-fbank"): SpeechBrain's Fbank and its sentence mean removal.
`frontend(raw)` builds the one a JSON config describes (the `FRONTENDS` registry for the kinds `spkid.features`
does not compute); `read_feature_config` reads a `features.json`; `load_features` reads a `.npy` feature file and
checks it against the `features.json` beside it. No torch.

Resemblyzer's front end (`MelConfig`): librosa's `melspectrogram` at 16 kHz with a 400-sample (25 ms) periodic Hann
window every 160 samples (10 ms), centred frames (200 zeros of padding at each end, librosa >= 0.10's
`pad_mode="constant"`), power spectrum, 40 Slaney-style Mel filters with Slaney area normalisation, and *no* log.
Its volume normalisation (`preprocess_wav`: RMS raised to -30 dBFS, never lowered) is `MelConfig.prepare`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from spkid import npyio
from spkid.errors import SpkidError

MEL_KIND = "ge2e_mel"
INT16_MAX = 2**15 - 1


class Frontend(Protocol):
    """What embedding needs from a feature extractor (`FeatureFrontend`, `MelConfig`, ...)."""

    sample_rate: int
    dims: int
    frame_step: int  # samples between frames

    def n_frames(self, n_samples: int) -> int: ...
    def prepare(self, signal: np.ndarray) -> np.ndarray: ...
    def compute(self, signal: np.ndarray) -> np.ndarray: ...
    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class FeatureFrontend:
    """`spkid.features` behind the `Frontend` interface."""

    cfg: Any  # spkid.features.FeatureConfig

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def dims(self) -> int:
        return self.cfg.dims

    @property
    def frame_step(self) -> int:
        return self.cfg.frame_step

    def n_frames(self, n_samples: int) -> int:
        from spkid import features

        return features.n_frames(n_samples, self.cfg)

    def prepare(self, signal: np.ndarray) -> np.ndarray:
        return signal

    def compute(self, signal: np.ndarray) -> np.ndarray:
        from spkid import features

        return features.compute(signal, self.cfg)

    def to_dict(self) -> dict[str, Any]:
        return self.cfg.to_dict()


@dataclass(frozen=True)
class MelConfig:
    """Resemblyzer's front end: power Mel spectrogram `(frames, n_mels)` float32, not logged.

    Units: `sample_rate` Hz, `n_fft`/`hop` samples, `fmin`/`fmax` Hz (fmax <= 0: Nyquist), `target_dbfs` dBFS
    (None: no volume normalisation). Frame t is centred on sample `hop * t`; a signal of n samples has
    `1 + n // hop` frames.
    """

    kind: str = MEL_KIND
    sample_rate: int = 16000
    n_fft: int = 400
    hop: int = 160
    n_mels: int = 40
    fmin: float = 0.0
    fmax: float = 0.0
    target_dbfs: float | None = -30.0
    increase_only: bool = True

    def __post_init__(self) -> None:
        if self.kind != MEL_KIND:
            raise SpkidError(f"feature config: kind {self.kind!r} is not {MEL_KIND!r}")
        if not (self.sample_rate > 0 and self.n_fft > 0 and 0 < self.hop and self.n_mels > 0):
            raise SpkidError(f"feature config ({MEL_KIND}): sample_rate, n_fft, hop and n_mels must be positive")
        if not 0 <= self.fmin < self.top_freq <= self.sample_rate / 2:
            raise SpkidError(f"feature config ({MEL_KIND}): need 0 <= fmin < fmax <= Nyquist, got {self.fmin}, {self.fmax}")

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
            raise SpkidError(f"feature config ({MEL_KIND}): unknown keys {sorted(unknown)}")
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
            raise SpkidError(f"{MEL_KIND}: expected a mono signal of shape (samples,), got {x.shape}")
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


def _feature_frontend(raw: dict[str, Any]) -> Frontend:
    from spkid.features import FeatureConfig

    return FeatureFrontend(FeatureConfig.from_dict(raw))


def _kaldi_frontend(raw: dict[str, Any]) -> Frontend:
    from spkid.kaldifbank import KaldiFbankConfig

    return KaldiFbankConfig.from_dict(raw)


def _sb_frontend(raw: dict[str, Any]) -> Frontend:
    from spkid.sbfbank import SbFbankConfig

    return SbFbankConfig.from_dict(raw)


FUSION_KIND = "fusion"  # the `features` of a fusion of models (`spkid.models.fusion`): each member has its own

# Feature kinds that spkid.features does not compute: kind -> factory. Any other kind is a FeatureConfig.
FRONTENDS: dict[str, Callable[[dict[str, Any]], Frontend]] = {MEL_KIND: MelConfig.from_dict, "kaldi-fbank": _kaldi_frontend,
                                                               "sb-fbank": _sb_frontend}


def frontend(raw: dict[str, Any], source: str = "model") -> Frontend:
    """The front end a model file's `spec.features` describes (the extension point for non-`features` kinds)."""
    if not isinstance(raw, dict):
        raise SpkidError(f"{source}: feature config must be a JSON object, got {type(raw).__name__}")
    if raw.get("kind") == FUSION_KIND:
        raise SpkidError(f"{source}: is a fusion of models, whose members compute features of their own from the "
                         "audio; there is no one front end (use one of its members' model files)")
    try:
        return FRONTENDS.get(raw.get("kind", ""), _feature_frontend)(dict(raw))
    except SpkidError as e:
        raise SpkidError(f"{source}: {e}") from None


def read_feature_config(path: str | Path) -> Frontend:
    """The front end a `features.json` describes (a FeatureConfig, or a model's own front end such as ge2e_mel)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpkidError(f"{path}: no such file") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpkidError(f"{path}: not a JSON feature config ({e})") from None
    return frontend(raw, str(path))


def load_features(path: str, front: Any | None = None) -> np.ndarray:
    """A `.npy` feature file (never unpickled); when a `features.json` lies in a parent folder (written by
    `spkid features`) and `front` is given, it must describe the model's features."""
    p = Path(path)
    if not p.is_file():
        raise SpkidError(f"{path}: no such file")
    feats = npyio.load_npy(path)  # the hardened .npy reader: damaged headers and cut data are SpkidErrors
    if front is not None:
        for parent in list(p.resolve().parents)[:6]:
            cfg = parent / "features.json"
            if cfg.is_file():
                _check_feature_json(cfg, front, path)
                break
    return feats


def _check_feature_json(cfg_path: Path, front: Any, path: str) -> None:
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(raw, dict):
        return
    mine = front.to_dict()
    diff = sorted(k for k in mine.keys() | raw.keys() if k != "backend" and raw.get(k) != mine.get(k))
    if diff:
        shown = ", ".join(f"{k}={raw.get(k)!r} (model: {mine.get(k)!r})" for k in diff[:4])
        raise SpkidError(f"{path}: features were computed with other settings than the model's ({cfg_path}: {shown}); "
                         "recompute them with the model's feature config, or pass the audio instead")

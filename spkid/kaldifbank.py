"""Kaldi's log Mel filterbank (`compute-fbank-feats`, torchaudio's `kaldi.fbank`, kaldi-native-fbank), in numpy:
feature kind "kaldi-fbank", the front end of models trained on Kaldi-style features (WeSpeaker, 3D-Speaker).

Kaldi's defaults with dither 0, as those models run at inference:
- samples scaled by `sample_scale`: the 16-bit range by default (x * 32768, as Kaldi reads a WAV), 1.0 for
  models that feed torchaudio's float samples straight in (3D-Speaker: quiet bins then reach the log floor);
- frames of `win_len` every `win_step` seconds, their lengths in samples truncated (`int(0.025 * 16000)` = 400),
  with snip-edges: only whole frames, `1 + (n - len) // step` of them, none for a signal shorter than a frame;
- per frame: the mean removed (DC offset), pre-emphasis inside the frame (`y[i] = x[i] - 0.97 x[i-1]`,
  `y[0] = x[0] - 0.97 x[0]`), the window (`window`: Kaldi's default "povey", `(0.5 - 0.5 cos(2 pi i / (len - 1)))
  ** 0.85`; WeSpeaker's models take "hamming", `0.54 - 0.46 cos(2 pi i / (len - 1))`; also "hanning",
  "rectangular" and "sine", as Kaldi defines them), zero padding to the next power of two (512 at 16 kHz), power
  spectrum;
- `n_filters` triangles evenly spaced on Kaldi's Mel scale (`1127 ln(1 + f / 700)`) between `low_freq` (20 Hz) and
  `high_freq` (<= 0: Nyquist + high_freq, so 0 is Nyquist), weighted in Mel over the FFT bins below Nyquist;
- natural log of each energy floored at float32's epsilon (Kaldi's `ApplyFloor(FLT_EPSILON)`), so digital
  silence is `ln(1.19e-7)` = -15.94, not -inf.

Computed in float64 a block of frames at a time (bounded memory), returned as float32 `(frames, n_filters)`.

    from spkid.kaldifbank import KaldiFbankConfig
    feats = KaldiFbankConfig(n_filters=80).compute(signal)   # signal: float audio in [-1, 1] at 16 kHz
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from spkid.cmvn import Norm, normalize
from spkid.errors import SpkidError

KIND = "kaldi-fbank"
WINDOWS = ("povey", "hamming", "hanning", "rectangular", "sine")  # Kaldi's `--window-type` names
SAMPLE_SCALE = 32768.0  # float audio in [-1, 1) to Kaldi's 16-bit sample values
FLOOR = float(np.finfo(np.float32).eps)  # Kaldi floors Mel energies at FLT_EPSILON before the log
BLOCK_FRAMES = 1024


def mel_scale(hz: np.ndarray | float) -> np.ndarray | float:
    """Kaldi's Mel scale: 1127 ln(1 + f / 700) (f in Hz)."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def mel_banks(n_filters: int, nfft: int, sample_rate: int, low_freq: float, high_freq: float) -> np.ndarray:
    """Kaldi's triangular Mel filters, float64 `(nfft // 2 + 1, n_filters)` (the Nyquist bin's row is zero).

    Filter j rises from Mel point j to j + 1 and falls to j + 2, the `n_filters + 2` points evenly spaced in Mel
    from `low_freq` to `high_freq` (Hz); FFT bin i (frequency i * sample_rate / nfft, i < nfft / 2) gets the
    triangle's height at its own Mel value, strictly inside the triangle (the edges weigh 0).
    """
    mel_lo, mel_hi = mel_scale(low_freq), mel_scale(high_freq)
    delta = (mel_hi - mel_lo) / (n_filters + 1)
    left = mel_lo + delta * np.arange(n_filters)
    centre, right = left + delta, left + 2 * delta
    mel = mel_scale(np.arange(nfft // 2) * (sample_rate / nfft))[:, None]
    rising = (mel - left) / (centre - left)
    falling = (right - mel) / (right - centre)
    weights = np.where(mel <= centre, rising, falling)
    weights[(mel <= left) | (mel >= right)] = 0.0
    return np.vstack([weights, np.zeros((1, n_filters))])


@dataclass(frozen=True)
class KaldiFbankConfig:
    """Kaldi's fbank settings that vary between models; the rest are Kaldi's defaults (module docstring).

    Units: `sample_rate` Hz, `win_len`/`win_step` seconds, `low_freq`/`high_freq` Hz (high_freq <= 0 counts down
    from Nyquist), `cmn_window` frames. `norm`: per-utterance normalisation after the log, as
    `spkid.cmvn.normalize` (WeSpeaker and 3D-Speaker subtract the utterance mean: "cmn"). `window`: one of
    `WINDOWS` (module docstring).
    """

    kind: str = KIND
    sample_rate: int = 16000
    n_filters: int = 80
    win_len: float = 0.025
    win_step: float = 0.01
    preemph: float = 0.97
    low_freq: float = 20.0
    high_freq: float = 0.0
    norm: Norm = "none"
    cmn_window: int = 300
    window: str = "povey"
    sample_scale: float = SAMPLE_SCALE

    def __post_init__(self) -> None:
        from typing import get_args

        if self.kind != KIND:
            raise SpkidError(f"feature config: kind {self.kind!r} is not {KIND!r}")
        for name in ("sample_rate", "n_filters", "cmn_window"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise SpkidError(f"feature config ({KIND}): {name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("win_len", "win_step", "preemph", "low_freq", "high_freq", "sample_scale"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise SpkidError(f"feature config ({KIND}): {name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        nyquist = self.sample_rate / 2
        problems = [
            (self.norm not in get_args(Norm), f"norm={self.norm!r}; choose from {', '.join(get_args(Norm))}"),
            (self.window not in WINDOWS, f"window={self.window!r}; choose from {', '.join(WINDOWS)}"),
            (self.sample_rate <= 0, f"sample_rate must be > 0 Hz, got {self.sample_rate}"),
            (not (math.isfinite(self.sample_scale) and self.sample_scale > 0),
             f"sample_scale must be a finite number > 0, got {self.sample_scale}"),
            (self.n_filters < 3, f"n_filters must be >= 3 (Kaldi's minimum), got {self.n_filters}"),
            (self.cmn_window < 1, f"cmn_window must be >= 1 frame, got {self.cmn_window}"),
            (not math.isfinite(self.win_len) or self.frame_len < 2,
             f"win_len {self.win_len} s is less than two samples at {self.sample_rate} Hz"),
            (not math.isfinite(self.win_step) or self.frame_step < 1,
             f"win_step {self.win_step} s is less than one sample at {self.sample_rate} Hz"),
            (not 0 <= self.preemph <= 1, f"preemph must be in [0, 1], got {self.preemph}"),
            (not 0 <= self.low_freq < nyquist, f"low_freq must be in [0, {nyquist:g}) Hz, got {self.low_freq}"),
            (not self.low_freq < self.top_freq <= nyquist,
             f"high_freq {self.high_freq} gives a band edge of {self.top_freq:g} Hz; it must lie in "
             f"({self.low_freq:g}, {nyquist:g}] Hz (<= 0 counts down from Nyquist)"),
        ]
        for bad, message in problems:
            if bad:
                raise SpkidError(f"feature config ({KIND}): {message}")

    @property
    def frame_len(self) -> int:
        """Window length in samples, truncated as Kaldi does (a hair of float error is forgiven: 400, not 399)."""
        return _samples(self.win_len * self.sample_rate)

    @property
    def frame_step(self) -> int:
        """Samples between frames (truncated as `frame_len`)."""
        return _samples(self.win_step * self.sample_rate)

    @property
    def fft_size(self) -> int:
        """The padded frame: the next power of two at or above `frame_len`."""
        return 1 << (self.frame_len - 1).bit_length()

    @property
    def top_freq(self) -> float:
        return self.high_freq if self.high_freq > 0 else self.sample_rate / 2 + self.high_freq

    @property
    def dims(self) -> int:
        return self.n_filters

    def n_frames(self, n_samples: int) -> int:
        """Frames with snip-edges: only whole windows; 0 for a signal shorter than one."""
        return 0 if n_samples < self.frame_len else 1 + (n_samples - self.frame_len) // self.frame_step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> KaldiFbankConfig:
        if not isinstance(raw, dict):
            raise SpkidError(f"feature config must be a JSON object, got {type(raw).__name__}")
        if unknown := raw.keys() - {f.name for f in fields(cls)}:
            raise SpkidError(f"feature config ({KIND}): unknown keys {sorted(unknown)}; "
                             f"known: {[f.name for f in fields(cls)]}")
        return cls(**raw)

    def prepare(self, signal: np.ndarray) -> np.ndarray:
        return signal

    def compute(self, signal: np.ndarray) -> np.ndarray:
        """Log Mel energies of a mono signal (float audio in [-1, 1], as soundfile reads it) at `sample_rate`:
        float32 `(n_frames(len(signal)), n_filters)`, then `norm`."""
        x = np.asarray(signal)
        if x.ndim != 1 or x.dtype.kind not in "fiu":
            raise SpkidError(f"{KIND}: expected a real mono signal of shape (samples,), got {x.dtype} {x.shape}")
        n = self.n_frames(len(x))
        out = np.empty((n, self.n_filters), np.float32)
        flen, step = self.frame_len, self.frame_step
        win, banks = _tables(self)
        for a in range(0, n, BLOCK_FRAMES):
            b = min(n, a + BLOCK_FRAMES)
            seg = x[a * step : (b - 1) * step + flen].astype(np.float64) * self.sample_scale
            frames = np.lib.stride_tricks.sliding_window_view(seg, flen)[::step]
            frames = frames - frames.mean(axis=1, keepdims=True)
            if self.preemph:
                frames[:, 1:] -= self.preemph * frames[:, :-1]
                frames[:, 0] *= 1.0 - self.preemph
            frames *= win
            spec = np.fft.rfft(frames, n=self.fft_size, axis=1)
            power = spec.real**2 + spec.imag**2
            energies = power @ banks
            np.maximum(energies, FLOOR, out=energies)
            out[a:b] = np.log(energies)
        return normalize(out, self.norm, self.cmn_window)


def _samples(x: float) -> int:
    return int(math.floor(x + 1e-6))


@functools.lru_cache(maxsize=8)
def _tables(cfg: KaldiFbankConfig) -> tuple[np.ndarray, np.ndarray]:
    banks = mel_banks(cfg.n_filters, cfg.fft_size, cfg.sample_rate, cfg.low_freq, cfg.top_freq)
    return kaldi_window(cfg.window, cfg.frame_len), banks


def kaldi_window(name: str, n: int) -> np.ndarray:
    """Kaldi's analysis window `name` (one of `WINDOWS`) of `n` samples, float64 (`FeatureWindowFunction`)."""
    if name == "rectangular":
        return np.ones(n)
    a = 2 * np.pi * np.arange(n) / max(n - 1, 1)
    if name == "sine":
        return np.sin(0.5 * a)
    if name == "hamming":
        return 0.54 - 0.46 * np.cos(a)
    hann = 0.5 - 0.5 * np.cos(a)
    if name == "hanning":
        return hann
    if name == "povey":
        return hann**0.85
    raise SpkidError(f"{KIND}: unknown window {name!r}; choose from {', '.join(WINDOWS)}")


def fbank(signal: np.ndarray, sample_rate: int = 16000, **options: Any) -> np.ndarray:
    """Kaldi's log Mel filterbank `(frames, n_filters)` float32; options are `KaldiFbankConfig` fields."""
    return KaldiFbankConfig(sample_rate=sample_rate, **options).compute(signal)

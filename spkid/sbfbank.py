"""SpeechBrain's log Mel filterbank (`speechbrain.lobes.features.Fbank`) and its per-utterance mean removal, in
numpy: feature kind "sb-fbank", the front end of SpeechBrain's speaker encoders (spkrec-ecapa-voxceleb and kin).

What SpeechBrain's `Fbank` computes with the defaults its published speaker models keep (n_mels 80 there):
- frames of `win_len` every `win_step` seconds, rounded to samples (`round(0.025 * 16000)` = 400, 160), *centred*:
  frame t is centred on sample `t * step`, the signal padded with `nfft // 2` zeros at each end, so a signal of n
  samples gives `1 + n // step` frames (torch.stft's `center=True`, `pad_mode="constant"`);
- per frame: the periodic Hamming window (`0.54 - 0.46 cos(2 pi i / len)`, torch's default), centred in `nfft`
  points when shorter, no pre-emphasis, no DC removal, samples as read (float audio in [-1, 1]), power spectrum;
- `n_filters` triangles on the Mel scale `2595 log10(1 + f / 700)`: centres at the inner points of `n_filters + 2`
  points evenly spaced in Mel from `low_freq` to `high_freq`, each triangle symmetric *in Hz* with half-width the
  distance from its centre down to the previous point, evaluated at the `nfft // 2 + 1` bin frequencies spaced
  evenly from 0 to the integer Nyquist (`sample_rate // 2`);
- decibels: `10 log10(max(energy, 1e-10))`, then every value raised to at least the utterance's largest minus
  `top_db` (80 dB), a floor that depends on the whole utterance.
Then `norm` (`spkid.cmvn.normalize`): SpeechBrain's `InputNormalization(norm_type="sentence", std_norm=False)`,
which its speaker models run after Fbank, subtracts each Mel band's mean over the utterance: "cmn".

Computed in float64 a block of frames at a time, returned as float32 `(frames, n_filters)`.

    from spkid.sbfbank import SbFbankConfig
    feats = SbFbankConfig(norm="cmn").compute(signal)   # signal: float audio in [-1, 1] at 16 kHz
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from spkid.cmvn import Norm, normalize
from spkid.errors import SpkidError

KIND = "sb-fbank"
AMIN = 1e-10  # energies are floored here before the dB conversion (-100 dB)
BLOCK_FRAMES = 1024


def mel_scale(hz: np.ndarray | float) -> np.ndarray | float:
    """SpeechBrain's (HTK's) Mel scale: 2595 log10(1 + f / 700) (f in Hz)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray | float:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_banks(n_filters: int, nfft: int, sample_rate: int, low_freq: float, high_freq: float) -> np.ndarray:
    """SpeechBrain's triangular Mel filters, float64 `(nfft // 2 + 1, n_filters)` (module docstring)."""
    hz = mel_to_hz(np.linspace(mel_scale(low_freq), mel_scale(high_freq), n_filters + 2))
    centre = hz[1:-1]
    half = hz[1:-1] - hz[:-2]
    freqs = np.linspace(0.0, float(sample_rate // 2), nfft // 2 + 1)[:, None]
    slope = (freqs - centre) / half
    return np.maximum(0.0, np.minimum(1.0 + slope, 1.0 - slope))


@dataclass(frozen=True)
class SbFbankConfig:
    """SpeechBrain's Fbank settings (module docstring); defaults are those of its published speaker encoders.

    Units: `sample_rate` Hz, `win_len`/`win_step` seconds, `nfft` points (>= the window), `low_freq`/`high_freq`
    Hz (high_freq <= 0 counts down from Nyquist, so 0 is Nyquist), `top_db` dB below the utterance's peak where
    values are floored. `norm`: per-utterance normalisation after the dB conversion, as `spkid.cmvn.normalize`
    (SpeechBrain's speaker models subtract the utterance mean: "cmn").
    """

    kind: str = KIND
    sample_rate: int = 16000
    n_filters: int = 80
    win_len: float = 0.025
    win_step: float = 0.01
    nfft: int = 400
    low_freq: float = 0.0
    high_freq: float = 0.0
    top_db: float = 80.0
    norm: Norm = "none"
    cmn_window: int = 300

    def __post_init__(self) -> None:
        from typing import get_args

        if self.kind != KIND:
            raise SpkidError(f"feature config: kind {self.kind!r} is not {KIND!r}")
        for name in ("sample_rate", "n_filters", "nfft", "cmn_window"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise SpkidError(f"feature config ({KIND}): {name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("win_len", "win_step", "low_freq", "high_freq", "top_db"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise SpkidError(f"feature config ({KIND}): {name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        nyquist = self.sample_rate / 2
        problems = [
            (self.norm not in get_args(Norm), f"norm={self.norm!r}; choose from {', '.join(get_args(Norm))}"),
            (self.sample_rate <= 0, f"sample_rate must be > 0 Hz, got {self.sample_rate}"),
            (self.n_filters < 1, f"n_filters must be >= 1, got {self.n_filters}"),
            (self.cmn_window < 1, f"cmn_window must be >= 1 frame, got {self.cmn_window}"),
            (not math.isfinite(self.win_len) or self.frame_len < 2,
             f"win_len {self.win_len} s is less than two samples at {self.sample_rate} Hz"),
            (not math.isfinite(self.win_step) or self.frame_step < 1,
             f"win_step {self.win_step} s is less than one sample at {self.sample_rate} Hz"),
            (math.isfinite(self.win_len) and self.nfft < self.frame_len,
             f"nfft {self.nfft} is shorter than the window ({self.frame_len} samples)"),
            (not (math.isfinite(self.top_db) and self.top_db > 0), f"top_db must be > 0 dB, got {self.top_db}"),
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
        """Window length in samples, rounded as SpeechBrain does (`int(round(...))`)."""
        return int(round(self.win_len * self.sample_rate))

    @property
    def frame_step(self) -> int:
        """Samples between frame centres (rounded as `frame_len`)."""
        return int(round(self.win_step * self.sample_rate))

    @property
    def top_freq(self) -> float:
        return self.high_freq if self.high_freq > 0 else self.sample_rate // 2 + self.high_freq

    @property
    def dims(self) -> int:
        return self.n_filters

    def n_frames(self, n_samples: int) -> int:
        """Centred frames: one every `frame_step` samples from sample 0 on, `1 + n // step`."""
        return 1 + max(n_samples, 0) // self.frame_step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SbFbankConfig:
        if not isinstance(raw, dict):
            raise SpkidError(f"feature config must be a JSON object, got {type(raw).__name__}")
        if unknown := raw.keys() - {f.name for f in fields(cls)}:
            raise SpkidError(f"feature config ({KIND}): unknown keys {sorted(unknown)}; "
                             f"known: {[f.name for f in fields(cls)]}")
        return cls(**raw)

    def prepare(self, signal: np.ndarray) -> np.ndarray:
        return signal

    def compute(self, signal: np.ndarray) -> np.ndarray:
        """Log Mel energies in dB of a mono signal (float audio in [-1, 1], as soundfile reads it) at
        `sample_rate`: float32 `(n_frames(len(signal)), n_filters)`, floored `top_db` below the utterance's peak,
        then `norm`."""
        x = np.asarray(signal)
        if x.ndim != 1 or x.dtype.kind not in "fiu":
            raise SpkidError(f"{KIND}: expected a real mono signal of shape (samples,), got {x.dtype} {x.shape}")
        n = self.n_frames(len(x))
        out = np.empty((n, self.n_filters), np.float32)
        step, size, pad = self.frame_step, self.nfft, self.nfft // 2
        win, banks = _tables(self)
        for a in range(0, n, BLOCK_FRAMES):
            b = min(n, a + BLOCK_FRAMES)
            # samples [a * step - pad, (b - 1) * step - pad + size) of the signal, zeros outside it
            lo, hi = a * step - pad, (b - 1) * step - pad + size
            seg = np.zeros(hi - lo, np.float64)
            src = x[max(lo, 0) : max(min(hi, len(x)), 0)]
            seg[max(-lo, 0) : max(-lo, 0) + len(src)] = src
            frames = np.lib.stride_tricks.sliding_window_view(seg, size)[::step] * win
            spec = np.fft.rfft(frames, axis=1)
            energies = (spec.real**2 + spec.imag**2) @ banks
            np.maximum(energies, AMIN, out=energies)
            out[a:b] = 10.0 * np.log10(energies)
        if n:
            np.maximum(out, out.max() - np.float32(self.top_db), out=out)
        return normalize(out, self.norm, self.cmn_window)


@functools.lru_cache(maxsize=8)
def _tables(cfg: SbFbankConfig) -> tuple[np.ndarray, np.ndarray]:
    n = cfg.frame_len
    hamming = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n) / n)  # periodic
    win = np.zeros(cfg.nfft)
    left = (cfg.nfft - n) // 2
    win[left : left + n] = hamming
    return win, mel_banks(cfg.n_filters, cfg.nfft, cfg.sample_rate, cfg.low_freq, cfg.top_freq)


def fbank(signal: np.ndarray, sample_rate: int = 16000, **options: Any) -> np.ndarray:
    """SpeechBrain's log Mel filterbank `(frames, n_filters)` float32; options are `SbFbankConfig` fields."""
    return SbFbankConfig(sample_rate=sample_rate, **options).compute(signal)

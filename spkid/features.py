"""Frame-level features: log-Mel filterbank, MFCC, log-magnitude spectrogram (dB) and magnitude spectrogram.

The numbers are python_speech_features' (psf) under the same settings: psf's framing (frame length and step
rounded half up, the last frame zero-padded, 1 frame for a signal no longer than a window), pre-emphasis
`y[n] = x[n] - preemph * x[n-1]` with `y[0] = x[0]`, power spectrum `|rfft(frame, nfft)|^2 / nfft`, psf's
triangular Mel filters (`get_filterbanks`), energies floored at float64 eps so digital silence stays finite,
MFCC = orthonormal DCT-II of the log filterbank, liftered like psf's `ceplifter`.

The default backend ("numpy") computes in float32, a block of frames at a time (strided framing, one
`scipy.fft.rfft` per block with workers=1, Mel filters as a few banded float32 matmuls on the power spectrum),
so memory stays bounded and the time is close to the FFT's alone. `backend="psf"` calls python_speech_features
itself (float64, whole signal at once) as a reference.

    from spkid.features import FeatureConfig, compute
    cfg = FeatureConfig(kind="fbank", n_filters=40)   # or FeatureConfig.from_dict(json.loads(...))
    feats = compute(signal, cfg)   # signal (samples,) at cfg.sample_rate -> (frames, 40) float32, 20*log10

`compute(signal, cfg)` is the stable entry point that training and embedding call with the config stored in a
model file; `compute_file(path, cfg)` streams a file of any length in bounded memory.
"""

from __future__ import annotations

import decimal
import functools
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from spkid.cmvn import Norm, normalize
from spkid.errors import SpkidError
from spkid.spectral import DB, EPS, plan, window

log = logging.getLogger(__name__)

Kind = Literal["fbank", "mfcc", "specdb", "spectrogram"]
Window = Literal["rectangular", "hamming", "hann", "povey"]
LogType = Literal["db", "ln"]
Backend = Literal["numpy", "psf"]

READ_SAMPLES = 1 << 20  # samples per read in compute_file (~65 s at 16 kHz)


@dataclass(frozen=True)
class FeatureConfig:
    """Everything that decides the feature values; stored as JSON (`features.json`, model files).

    Units: `sample_rate` Hz, `win_len`/`win_step` seconds, `low_freq`/`high_freq` Hz, `cmn_window` frames.

    - kind: "fbank" (log Mel filterbank energies, `n_filters` dims), "mfcc" (`n_ceps` dims), "specdb"
      (log magnitude spectrum, nfft//2+1 dims) or "spectrogram" (magnitude spectrum |X|, nfft//2+1 dims).
    - nfft: FFT size; 0 = the next power of two at or above the window length in samples (512 at 16 kHz with
      25 ms, 2048 at 48 kHz), so frames are never truncated. A value below the window length is refused.
    - preemph: pre-emphasis coefficient (0 = off). low_freq/high_freq: Mel filter band edges;
      high_freq <= 0 means Nyquist + high_freq (Kaldi's convention; 0 = Nyquist).
    - window: "rectangular" (psf's default), "hamming", "hann" (numpy's symmetric windows) or "povey" (Kaldi).
    - log: "db" = 20*log10 (what the older tools did; for fbank that is 20*log10 of the filterbank power,
      for specdb 20*log10|X|, true dB of magnitude) or "ln" = natural log (psf's logfbank and mfcc).
      MFCCs are the DCT of the log filterbank in this unit, so "db" MFCCs are 20/ln(10) times psf's.
    - n_ceps, lifter: MFCC coefficients kept and psf's `ceplifter` (0 = off).
    - append_energy: fbank appends the log frame energy as one more column; mfcc replaces c0 with it
      (psf's `appendEnergy`). Not allowed for the spectrogram kinds.
    - norm: per-utterance normalisation of each dimension: "none", "cmn" (subtract the mean), "cmvn" (and divide
      by the standard deviation), "sliding" (subtract the mean of a `cmn_window`-frame window centred on the
      frame, shifted inside the utterance at the edges: Kaldi's `apply-cmvn-sliding --center=true`).
    - backend: "numpy" (float32, blocked, bounded memory) or "psf" (python_speech_features, float64).
    """

    kind: Kind = "fbank"
    sample_rate: int = 16000
    n_filters: int = 40
    win_len: float = 0.025
    win_step: float = 0.01
    nfft: int = 0
    preemph: float = 0.97
    low_freq: float = 0.0
    high_freq: float = 0.0
    window: Window = "hamming"
    log: LogType = "db"
    n_ceps: int = 13
    lifter: int = 22
    append_energy: bool = False
    norm: Norm = "none"
    cmn_window: int = 300
    backend: Backend = "numpy"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            choices = get_args(_TYPES[f.name]) if f.name in _CHOICES else None
            if choices is not None:
                if value not in choices:
                    raise SpkidError(f"feature config: {f.name}={value!r}; choose from {', '.join(choices)}")
            elif _TYPES[f.name] is bool:
                if not isinstance(value, bool):
                    raise SpkidError(f"feature config: {f.name} must be true or false, got {value!r}")
            elif _TYPES[f.name] is int:
                if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                    raise SpkidError(f"feature config: {f.name} must be an integer, got {value!r}")
                object.__setattr__(self, f.name, int(value))  # plain Python numbers: JSON-able, hashable
            elif isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise SpkidError(f"feature config: {f.name} must be a number, got {value!r}")
            else:
                object.__setattr__(self, f.name, float(value))
        nyquist = self.sample_rate / 2
        problems = [
            (self.sample_rate <= 0, f"sample_rate must be > 0 Hz, got {self.sample_rate}"),
            (self.n_filters < 1, f"n_filters must be >= 1, got {self.n_filters}"),
            (not self.win_len > 0, f"win_len must be > 0 s, got {self.win_len}"),
            (not self.win_step > 0, f"win_step must be > 0 s, got {self.win_step}"),
            (self.frame_len < 1, f"win_len {self.win_len} s is less than one sample at {self.sample_rate} Hz"),
            (self.frame_step < 1, f"win_step {self.win_step} s is less than one sample at {self.sample_rate} Hz"),
            (self.nfft < 0, f"nfft must be >= 0 (0 = automatic), got {self.nfft}"),
            (0 < self.nfft < self.frame_len,
             f"nfft {self.nfft} is shorter than the {self.frame_len}-sample window and would truncate frames; "
             f"use nfft >= {self.frame_len} or 0 (automatic)"),
            (not 0 <= self.low_freq < nyquist, f"low_freq must be in [0, {nyquist:g}) Hz, got {self.low_freq}"),
            (not self.low_freq < self.top_freq <= nyquist,
             f"high_freq {self.high_freq} gives a band edge of {self.top_freq:g} Hz; it must lie in "
             f"({self.low_freq:g}, {nyquist:g}] Hz (<= 0 counts down from Nyquist)"),
            (self.kind == "mfcc" and not 1 <= self.n_ceps <= self.n_filters,
             f"n_ceps must be in [1, n_filters={self.n_filters}], got {self.n_ceps}"),
            (self.lifter < 0, f"lifter must be >= 0 (0 = off), got {self.lifter}"),
            (self.cmn_window < 1, f"cmn_window must be >= 1 frame, got {self.cmn_window}"),
            (self.append_energy and self.kind not in ("fbank", "mfcc"),
             f"append_energy applies to fbank and mfcc, not {self.kind}"),
        ]
        for bad, message in problems:
            if bad:
                raise SpkidError(f"feature config: {message}")

    @property
    def frame_len(self) -> int:
        """Window length in samples (psf: win_len * sample_rate rounded half up)."""
        return _round_half_up(self.win_len * self.sample_rate)

    @property
    def frame_step(self) -> int:
        """Hop in samples (psf: win_step * sample_rate rounded half up)."""
        return _round_half_up(self.win_step * self.sample_rate)

    @property
    def fft_size(self) -> int:
        """The FFT size used: `nfft`, or the next power of two at or above `frame_len` when nfft is 0."""
        return self.nfft or 1 << max(0, self.frame_len - 1).bit_length()

    @property
    def top_freq(self) -> float:
        """The upper Mel band edge in Hz (`high_freq`, or Nyquist + high_freq when high_freq <= 0)."""
        return self.high_freq if self.high_freq > 0 else self.sample_rate / 2 + self.high_freq

    @property
    def dims(self) -> int:
        """Columns of the output: n_filters (+1 with append_energy), n_ceps, or fft_size // 2 + 1."""
        if self.kind == "fbank":
            return self.n_filters + int(self.append_energy)
        if self.kind == "mfcc":
            return self.n_ceps
        return self.fft_size // 2 + 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (`dataclasses.asdict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FeatureConfig:
        """The inverse of `to_dict`; unknown keys are an error (no silent typos), missing keys take defaults."""
        if not isinstance(raw, dict):
            raise SpkidError(f"feature config must be a JSON object, got {type(raw).__name__}")
        if unknown := raw.keys() - {f.name for f in fields(cls)}:
            raise SpkidError(f"feature config: unknown keys {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        return cls(**raw)

    @classmethod
    def from_json(cls, path: str | Path) -> FeatureConfig:
        """Read a `features.json` written by `spkid features` (or any JSON object of these keys)."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SpkidError(f"{path}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SpkidError(f"{path}: not a JSON feature config ({e})") from None
        try:
            return cls.from_dict(raw)
        except SpkidError as e:
            raise SpkidError(f"{path}: {e}") from None


_TYPES = {"kind": Kind, "sample_rate": int, "n_filters": int, "win_len": float, "win_step": float, "nfft": int,
          "preemph": float, "low_freq": float, "high_freq": float, "window": Window, "log": LogType, "n_ceps": int,
          "lifter": int, "append_energy": bool, "norm": Norm, "cmn_window": int, "backend": Backend}
_CHOICES = {"kind", "window", "log", "norm", "backend"}


def _round_half_up(x: float) -> int:
    return int(decimal.Decimal(x).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))


def n_frames(n_samples: int, cfg: FeatureConfig) -> int:
    """Frames psf makes from `n_samples`: 0 for none, 1 up to one window, else 1 + ceil((n - len) / step)."""
    if n_samples <= 0:
        return 0
    if n_samples <= cfg.frame_len:
        return 1
    return 1 + -(-(n_samples - cfg.frame_len) // cfg.frame_step)


def compute(signal: np.ndarray, cfg: FeatureConfig | None = None, *, keep: np.ndarray | None = None) -> np.ndarray:
    """Features of one mono signal: float32 `(frames, cfg.dims)`.

    `signal`: `(samples,)` at `cfg.sample_rate` Hz, any real dtype (values used as they are: float audio
    in [-1, 1] as soundfile reads it). Frames start every `cfg.frame_step` samples; there are
    `n_frames(len(signal), cfg)` of them (0 for an empty signal) before `keep`.
    `keep`: voiced sample ranges `[start, end)`, shape `(2,)` or `(K, 2)`; only frames
    whose centre lies in one are returned. Normalisation (`cfg.norm`) uses the kept frames only.
    Output is finite for any finite input, digital silence included (energies floored at float64 eps).
    """
    cfg = cfg or FeatureConfig()
    x = np.asarray(signal)
    if x.ndim != 1:
        raise SpkidError(f"compute: expected a mono signal of shape (samples,), got {x.shape}")
    if x.dtype.kind not in "fiu":
        raise SpkidError(f"compute: expected a real-valued signal, got dtype {x.dtype}")
    n = n_frames(len(x), cfg)
    if cfg.backend == "psf" and n:
        out = _psf(x, cfg)
    else:
        out = np.empty((n, cfg.dims), np.float32)
        if n:
            plan(cfg).run(x, 0, 0, n, out, len(x))
    return _finish(out, cfg, keep)


def compute_file(path: str | Path, cfg: FeatureConfig | None = None, *, keep: np.ndarray | None = None) -> np.ndarray:
    """`compute` on an audio file, streamed: float32 `(frames, cfg.dims)`.

    The file must be mono at `cfg.sample_rate` (else `SpkidError` with a hint to run `spkid convert`).
    With the numpy backend, WAV, FLAC, AIFF and SPHERE files are decoded `READ_SAMPLES` at a time, so memory is
    the output array plus a few MB whatever the length; other formats and the psf backend load the whole file.
    """
    from spkid import audio

    cfg = cfg or FeatureConfig()
    path = Path(path)
    if cfg.backend == "psf" or path.suffix.lower() in audio.FFMPEG_SUFFIXES or not path.is_file():
        return compute(audio.load_expected(path, cfg.sample_rate), cfg, keep=keep)
    import soundfile as sf

    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError):
        return compute(audio.load_expected(path, cfg.sample_rate), cfg, keep=keep)  # ffmpeg or a clear error
    with f:
        audio.check_expected(path, f.channels, f.samplerate, cfg.sample_rate)
        if f.format not in _EXACT_LENGTH or not 0 < f.frames < 1 << 62:  # e.g. MP3: the count is an estimate
            return compute(audio.load_expected(path, cfg.sample_rate), cfg, keep=keep)
        try:
            out = _stream(f, cfg)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise audio.AudioError(f"{path}: cannot decode audio ({e})") from None
    return _finish(out, cfg, keep)


_EXACT_LENGTH = {"WAV", "WAVEX", "W64", "RF64", "FLAC", "AIFF", "CAF", "NIST"}  # headers that give the sample count


def _stream(f: Any, cfg: FeatureConfig) -> np.ndarray:
    """Frames of an open mono SoundFile, read in chunks: each chunk's complete frames are computed, and the
    samples later frames still need (plus one, for pre-emphasis) are carried to the next chunk."""
    engine = plan(cfg)
    n = f.frames
    total = n_frames(n, cfg)
    out = np.empty((total, cfg.dims), np.float32)
    buf = np.empty(0, np.float32)
    x0 = done = 0
    from spkid.audio import check_samples

    while done < total:
        chunk = f.read(READ_SAMPLES, dtype="float32")
        check_samples(chunk, f.name, x0 + len(buf))
        buf = np.concatenate([buf, chunk]) if len(buf) else chunk
        end = x0 + len(buf)
        if len(chunk) == 0 and end < n:  # the header promised more samples than the file holds
            log.warning("%s: %d of %d samples could be read; features of the rest are missing", f.name, end, n)
            n, total = end, n_frames(end, cfg)
            out = out[:total]
        eof = end >= n
        upto = total if eof else min(total, max(0, (end - engine.flen) // engine.step + 1))
        if upto > done:
            engine.run(buf, x0, done, upto, out[done:upto], n)
            done = upto
        start = max(0, done * engine.step - 1)
        buf, x0 = buf[start - x0 :].copy(), start
    return out


def _psf(x: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """The same features from python_speech_features itself (float64, whole signal)."""
    from python_speech_features import base, sigproc

    x = x.astype(np.float64)
    wf = functools.partial(window, cfg.window)
    common = dict(samplerate=cfg.sample_rate, winlen=cfg.win_len, winstep=cfg.win_step, nfft=cfg.fft_size,
                  preemph=cfg.preemph, winfunc=wf)
    scale = DB if cfg.log == "db" else 1.0
    if cfg.kind == "mfcc":
        feats = base.mfcc(x, numcep=cfg.n_ceps, nfilt=cfg.n_filters, lowfreq=cfg.low_freq, highfreq=cfg.top_freq,
                          ceplifter=cfg.lifter, appendEnergy=cfg.append_energy, **common) * scale
    elif cfg.kind == "fbank":
        mel, energy = base.fbank(x, nfilt=cfg.n_filters, lowfreq=cfg.low_freq, highfreq=cfg.top_freq, **common)
        feats = np.log(mel) * scale
        if cfg.append_energy:
            feats = np.column_stack([feats, np.log(energy) * scale])
    else:
        frames = sigproc.framesig(sigproc.preemphasis(x, cfg.preemph), cfg.frame_len, cfg.frame_step, wf)
        mag = sigproc.magspec(frames, cfg.fft_size)
        if cfg.kind == "spectrogram":
            feats = mag
        else:
            feats = np.log(np.maximum(mag * mag, EPS)) * (0.5 * scale)
    return np.ascontiguousarray(feats, dtype=np.float32)


def _finish(out: np.ndarray, cfg: FeatureConfig, keep: np.ndarray | None) -> np.ndarray:
    if keep is not None:
        mask = voiced_frames(keep, len(out), cfg)
        if not mask.all():
            out = out[mask]
    normalize(out, cfg.norm, cfg.cmn_window)
    return out


def voiced_frames(keep: np.ndarray, n: int, cfg: FeatureConfig) -> np.ndarray:
    """Boolean `(n,)`: frame i is kept when its centre sample, i * frame_step + frame_len / 2, lies in one of
    the `[start, end)` sample ranges of `keep` (shape `(2,)` or `(K, 2)`)."""
    seg = np.asarray(keep)
    if seg.ndim == 1:
        seg = seg.reshape(-1, 2) if seg.size == 2 else seg
    if seg.ndim != 2 or seg.shape[1] != 2 or seg.dtype.kind not in "iu":
        raise SpkidError(f"keep: expected integer [start, end) sample ranges of shape (2,) or (K, 2), "
                         f"got {seg.dtype} {np.asarray(keep).shape}")
    seg = seg[seg[:, 1] > seg[:, 0]]
    if len(seg) == 0:
        return np.zeros(n, bool)
    seg = seg[np.argsort(seg[:, 0], kind="stable")].astype(np.int64)
    ends = np.maximum.accumulate(seg[:, 1])  # overlapping ranges: the furthest end reached so far
    centre2 = 2 * np.arange(n, dtype=np.int64) * cfg.frame_step + cfg.frame_len  # twice the centre: integers
    i = np.searchsorted(2 * seg[:, 0], centre2, side="right") - 1
    return (i >= 0) & (centre2 < 2 * ends[np.maximum(i, 0)])


def fbank(signal: np.ndarray, sample_rate: int = 16000, **options: Any) -> np.ndarray:
    """Log Mel filterbank `(frames, n_filters)` float32; options are `FeatureConfig` fields."""
    return compute(signal, FeatureConfig(kind="fbank", sample_rate=sample_rate, **options))


def mfcc(signal: np.ndarray, sample_rate: int = 16000, **options: Any) -> np.ndarray:
    """MFCC `(frames, n_ceps)` float32; options are `FeatureConfig` fields."""
    return compute(signal, FeatureConfig(kind="mfcc", sample_rate=sample_rate, **options))


def specdb(signal: np.ndarray, sample_rate: int = 16000, **options: Any) -> np.ndarray:
    """Log magnitude spectrum `(frames, nfft // 2 + 1)` float32 (20*log10|X| by default); options are
    `FeatureConfig` fields."""
    return compute(signal, FeatureConfig(kind="specdb", sample_rate=sample_rate, **options))


def spectrogram(signal: np.ndarray, sample_rate: int = 16000, **options: Any) -> np.ndarray:
    """Magnitude spectrum |X| `(frames, nfft // 2 + 1)` float32; options are `FeatureConfig` fields."""
    return compute(signal, FeatureConfig(kind="spectrogram", sample_rate=sample_rate, **options))

"""How `spkid.features` computes (the "numpy" backend): analysis windows, psf's triangular Mel filters, the
liftered DCT-II, and the blocked FFT engine (`plan(cfg).run(...)`): strided framing, one `rfft` per block of
frames, the Mel filters as a few banded float32 matmuls. What to compute (`FeatureConfig`) and the entry points
(`compute`, `compute_file`) stay in `spkid.features`.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from spkid.errors import SpkidError

if TYPE_CHECKING:
    from spkid.features import FeatureConfig

log = logging.getLogger(__name__)

EPS = float(np.finfo(float).eps)  # psf's floor for zero energies
BLOCK_FRAMES = 1024  # frames per FFT block: a block's buffers (~5 MB) stay in cache; fewer calls than smaller blocks
DB = 20.0 / math.log(10.0)


def window(name: str, n: int) -> np.ndarray:
    """The analysis window `name` of `n` samples, float64 (symmetric, as numpy and Kaldi make them)."""
    if name == "rectangular":
        return np.ones(n)
    if name == "hamming":
        return np.hamming(n)
    if name == "hann":
        return np.hanning(n)
    if name == "povey":
        return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / max(n - 1, 1))) ** 0.85
    raise SpkidError(f"unknown window {name!r}; choose from rectangular, hamming, hann, povey")


def mel_filterbank(n_filters: int, nfft: int, sample_rate: int, low_freq: float, high_freq: float) -> np.ndarray:
    """psf's triangular Mel filters (`get_filterbanks`), float64 `(n_filters, nfft // 2 + 1)`.

    Band edges are `n_filters + 2` points evenly spaced in Mel (2595 log10(1 + f/700)) from low_freq to
    high_freq (Hz), snapped to FFT bins with psf's `floor((nfft + 1) * f / sample_rate)`.
    """
    mel = np.linspace(_hz2mel(low_freq), _hz2mel(high_freq), n_filters + 2)
    edges = np.floor((nfft + 1) * _mel2hz(mel) / sample_rate).astype(int)
    fb = np.zeros((n_filters, nfft // 2 + 1))
    for j in range(n_filters):
        a, b, c = edges[j], edges[j + 1], edges[j + 2]
        i = np.arange(a, b)
        fb[j, i] = (i - a) / (b - a)
        i = np.arange(b, c)
        fb[j, i] = (c - i) / (c - b)
    return fb


def _hz2mel(hz: float) -> float:
    return 2595 * np.log10(1 + hz / 700.0)


def _mel2hz(mel: np.ndarray) -> np.ndarray:
    return 700 * (10 ** (mel / 2595.0) - 1)


def dct_matrix(n_filters: int, n_ceps: int, lifter: int) -> np.ndarray:
    """`(n_filters, n_ceps)` float64: `log_fbank @ M` = psf's lifter(dct(type=2, norm="ortho")[:, :n_ceps])."""
    from scipy.fft import dct

    m = dct(np.eye(n_filters), type=2, norm="ortho", axis=1)[:, :n_ceps]
    if lifter > 0:
        m = m * (1 + (lifter / 2.0) * np.sin(np.pi * np.arange(n_ceps) / lifter))
    return m


class _Plan:
    """Everything precomputed for one config: window, banded Mel weights, DCT; and the per-block kernel."""

    def __init__(self, cfg: FeatureConfig) -> None:
        self.cfg = cfg
        self.flen, self.step, self.nfft = cfg.frame_len, cfg.frame_step, cfg.fft_size
        self.nbins = self.nfft // 2 + 1
        self.window = None if cfg.window == "rectangular" else window(cfg.window, self.flen).astype(np.float32)
        self.preemph = np.float32(cfg.preemph)
        self.dims = cfg.dims
        self.bands: list[tuple[int, int, int, int, np.ndarray]] = []
        self.dct: np.ndarray | None = None
        if cfg.kind in ("fbank", "mfcc"):
            fb = mel_filterbank(cfg.n_filters, self.nfft, cfg.sample_rate, cfg.low_freq, cfg.top_freq)
            if empty := int((~fb.any(axis=1)).sum()):
                log.warning("%d of %d Mel filters cover no FFT bin (nfft=%d); their output is the floor. "
                            "Use fewer filters or a larger nfft", empty, cfg.n_filters, self.nfft)
            self.bands = _bands(fb / self.nfft)
        if cfg.kind == "mfcc":
            self.dct = dct_matrix(cfg.n_filters, cfg.n_ceps, cfg.lifter).astype(np.float32)

    def run(self, x: np.ndarray, x0: int, f0: int, f1: int, out: np.ndarray, n_total: int) -> None:
        """Frames f0..f1-1 (absolute indices) into `out` `(f1 - f0, dims)` float32.

        `x` holds raw samples for absolute indices [x0, x0 + len(x)) and must cover every sample those frames
        read that lies before `n_total`, plus the sample just before the first frame (for pre-emphasis);
        samples at or after `n_total` (the signal's length) are psf's zero padding.
        """
        flen, step, nb = self.flen, self.step, BLOCK_FRAMES
        ybuf = np.empty((nb - 1) * step + flen, np.float32)
        all_frames = np.lib.stride_tricks.as_strided(ybuf, (nb, flen), (step * 4, 4), writeable=False)
        # Frames are windowed into a zero-padded (frames, nfft) buffer: rfft(n=nfft) of shorter rows would
        # make scipy build a padded copy of every block itself.
        wbuf = np.zeros((nb, self.nfft), np.float32)
        fbuf = np.empty((nb, self.cfg.n_filters), np.float32) if self.dct is not None else None
        for a in range(f0, f1, nb):
            b = min(f1, a + nb)
            s0 = a * step
            y = ybuf[: (b - a - 1) * step + flen]
            self._preemphasis(x, x0, s0, min(len(y), n_total - s0), y)
            frames = wbuf[: b - a]
            if self.window is None:
                frames[:, :flen] = all_frames[: b - a]
            else:
                np.multiply(all_frames[: b - a], self.window, out=frames[:, :flen])
            self._block(frames, out[a - f0 : b - f0], None if fbuf is None else fbuf[: b - a])

    def _preemphasis(self, x: np.ndarray, x0: int, s0: int, m: int, y: np.ndarray) -> None:
        """y[:m] = pre-emphasised samples s0..s0+m-1 (absolute; float32), y[m:] = 0 (psf pads after pre-emphasis)."""
        if m <= 0:
            y[:] = 0
            return
        r = s0 - x0
        cur, ym = x[r : r + m], y[:m]
        if self.preemph == 0:
            ym[:] = cur
        elif s0 == 0:
            ym[0] = cur[0]
            np.multiply(cur[:-1], -self.preemph, out=ym[1:], casting="same_kind")
            np.add(ym[1:], cur[1:], out=ym[1:], casting="same_kind")
        else:
            np.multiply(x[r - 1 : r + m - 1], -self.preemph, out=ym, casting="same_kind")
            np.add(ym, cur, out=ym, casting="same_kind")
        y[m:] = 0

    def _block(self, frames: np.ndarray, out: np.ndarray, fbuf: np.ndarray | None) -> None:
        """Features of `frames` `(b, nfft)` (pre-emphasised, windowed, zero-padded) into `out` `(b, dims)`."""
        from spkid.fft import rfft

        cfg = self.cfg
        v = rfft(frames, axis=1).view(np.float32)  # (b, 2 * nbins): re, im interleaved
        np.square(v, out=v)  # re^2, im^2: summing pairs is |X|^2
        if cfg.kind in ("fbank", "mfcc"):
            mel = out[:, : cfg.n_filters] if fbuf is None else fbuf
            for lo, hi, j0, j1, w in self.bands:  # weights repeated per (re^2, im^2) pair: no pair sum needed
                np.matmul(v[:, lo:hi], w, out=mel[:, j0:j1])
            np.maximum(mel, EPS, out=mel)
            _log(mel, cfg.log)
            if fbuf is not None:
                np.matmul(mel, self.dct, out=out)
            if cfg.append_energy:
                energy = v.sum(axis=1)
                energy *= 1.0 / self.nfft
                np.maximum(energy, EPS, out=energy)
                _log(energy, cfg.log)
                out[:, 0 if cfg.kind == "mfcc" else cfg.n_filters] = energy
            return
        np.add(v[:, 0::2], v[:, 1::2], out=out)  # |X|^2
        if cfg.kind == "spectrogram":
            np.sqrt(out, out=out)
        else:
            np.maximum(out, EPS, out=out)
            _log(out, cfg.log, 0.5)  # log |X| = log(|X|^2) / 2


def _log(a: np.ndarray, kind: str, scale: float = 1.0) -> None:
    """In place: scale * 20*log10(a) for "db", scale * ln(a) for "ln" (np.log is SIMD, np.log10 is not)."""
    np.log(a, out=a)
    factor = scale * (DB if kind == "db" else 1.0)
    if factor != 1.0:
        a *= factor


@functools.lru_cache(maxsize=16)
def plan(cfg: FeatureConfig) -> _Plan:
    """The cached `_Plan` of `cfg` (configs are frozen, hashable dataclasses)."""
    return _Plan(cfg)


def _bands(fb: np.ndarray, per_band: int = 8) -> list[tuple[int, int, int, int, np.ndarray]]:
    """Split Mel weights `(n_filters, nbins)` into groups of adjacent filters, each with the bin range it touches.

    Each group is `(lo, hi, j0, j1, W)`: filters j0..j1-1 read columns lo..hi-1 of the squared spectrum viewed as
    interleaved float32 (re^2, im^2) pairs, with weights `W` `(hi - lo, j1 - j0)` (each bin's weight twice).
    A few small dense matmuls do about a fifth of the work of one dense product, since Mel filters are
    narrow where they are dense.
    """
    out = []
    for j0 in range(0, fb.shape[0], per_band):
        j1 = min(fb.shape[0], j0 + per_band)
        nz = np.flatnonzero(fb[j0:j1].any(axis=0))
        lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 1)
        w = np.repeat(fb[j0:j1, lo:hi].T, 2, axis=0)
        out.append((2 * lo, 2 * hi, j0, j1, np.ascontiguousarray(w, dtype=np.float32)))
    return out

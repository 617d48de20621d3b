"""The VAD's front end (`spkid.vad`): 32 ms Hann windows every 20 ms, a 512-point FFT, log-Mel bands plus the log
power of the low FFT bins; and the noise fill of band-limited input (`band_fill`): 8 kHz audio resampled to
16 kHz has nothing above 4 kHz, unlike anything the network was trained on, so the network hears faint seeded
noise 75 dB below the loud frames in the empty band of its spectra (the signal itself is not changed).
numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from spkid.fft import rfft

SAMPLE_RATE = 16000
BAND_EDGES = (3000.0, 4300.0)  # Hz: loud frames empty above an edge in this range = band-limited input
EMPTY_DB = -60.0  # "empty": the band above the edge holds less than this share of the loud frames' power
FILL_DB = -75.0  # power of the fill (over its band) re the loud frames' mean power, chosen on speech and music
FILL_FRAMES = 1024  # rows of the fill's noise table, cycled by absolute frame index (blocks see the same noise)
DETECT_FRAMES = 384  # frames, spread over the signal, whose spectra `band_fill` reads


def mel_filterbank(n_fft: int, n_mels: int, sr: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular HTK-Mel filters as a float32 `(n_fft // 2 + 1, n_mels)` matrix (power spectrum -> band energy)."""

    def hz2mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    edges = 700.0 * (10 ** (np.linspace(hz2mel(fmin), hz2mel(fmax), n_mels + 2) / 2595.0) - 1.0)
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    tri = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return tri.T.astype(np.float32)


@dataclass(frozen=True)
class Fill:
    """Noise for the empty band: `power` per FFT bin on average from bin `first` up (white noise's spectrum)."""

    first: int
    power: float


@dataclass(frozen=True)
class Frontend:
    """Log-Mel front end: `win`-sample Hann windows every `hop` samples, `n_fft`-point FFT, `n_mels` bands,
    followed by the log power of `n_lin` FFT bins from bin `lin_from` (62-1280 Hz at the defaults): at that
    resolution the harmonics of a voice are resolved, so the network can see whether pitch glides (speech) or
    holds and jumps (music).

    Frame j is centred on sample hop * j + hop / 2; a signal of n samples gives ceil(n / hop) frames.
    """

    n_fft: int = 512
    win: int = 512
    hop: int = 320
    n_mels: int = 32
    fmin: float = 40.0
    fmax: float = 8000.0
    floor: float = 1e-9
    lin_from: int = 2
    n_lin: int = 40

    @property
    def filters(self) -> tuple[np.ndarray, np.ndarray]:
        return _frontend_tables(self)

    def __call__(self, x: np.ndarray, start: int = 0, stop: int | None = None,
                 fill: Fill | bool | None = None) -> np.ndarray:
        """float32 signal `(n,)` -> float32 `(ceil(n / hop), n_mels + n_lin)`: log-Mel, then log low bins.

        `start`/`stop` compute only frames [start, stop) of those, exactly as in the whole matrix (blocks of a
        long recording). `fill` adds noise to the empty band first (`band_fill`); True: where the spectra of
        these frames (at most `DETECT_FRAMES` of them, spread evenly) call for it."""
        spec = self.spectra(x, start, stop)
        power = np.abs(spec)
        power *= power
        if fill is True:
            fill = band_fill(power[:: max(1, -(-len(power) // DETECT_FRAMES))], self.n_fft)
        if fill and len(power):
            noise = _fill_noise(power.shape[1])[np.arange(start, start + len(power)) % FILL_FRAMES, fill.first :]
            noise *= np.float32(fill.power)
            power[:, fill.first :] += noise
        out = np.empty((len(power), self.n_mels + self.n_lin), np.float32)
        np.matmul(power, self.filters[1], out=out[:, : self.n_mels])
        out[:, self.n_mels :] = power[:, self.lin_from : self.lin_from + self.n_lin]
        out += np.float32(self.floor)
        # `spec` (17 MB a block) stays referenced until the features are made: freed earlier, the allocator hands
        # its memory back to the system and faults it in again for each block (10 % slower over 30 min of audio)
        del spec
        return np.log(out, out=out)

    def spectra(self, x: np.ndarray, start: int = 0, stop: int | None = None, step: int = 1) -> np.ndarray:
        """Complex spectra `(frames, n_fft // 2 + 1)` of the windowed frames start, start + step, ... before stop."""
        n = -(-len(x) // self.hop)
        stop = n if stop is None else min(stop, n)
        count = max(-(-(stop - start) // step), 0)
        first = start * self.hop - (self.win // 2 - self.hop // 2)  # sample under frame `start`'s first tap
        if step > 1:  # a few frames spread over the signal: gathered, no copy of the span
            taps = (first + np.arange(count) * step * self.hop)[:, None] + np.arange(self.win)
            frames = np.where((taps >= 0) & (taps < len(x)), x[np.clip(taps, 0, max(len(x) - 1, 0))], np.float32(0))
        else:
            xp = np.zeros((count - 1) * self.hop + self.win if count else 0, np.float32)
            lo, hi = max(first, 0), min(first + len(xp), len(x))
            if hi > lo:
                xp[lo - first : hi - first] = x[lo:hi]
            frames = np.lib.stride_tricks.as_strided(xp, (count, self.win), (xp.strides[0] * self.hop, xp.strides[0]))
        # scipy's pocketfft keeps float32 and is ~3x faster here than numpy.fft
        return rfft(frames * self.filters[0], n=self.n_fft, axis=1)


@lru_cache(maxsize=8)
def _frontend_tables(fe: Frontend) -> tuple[np.ndarray, np.ndarray]:
    window = np.hanning(fe.win + 2)[1:-1].astype(np.float32)
    return window, mel_filterbank(fe.n_fft, fe.n_mels, SAMPLE_RATE, fe.fmin, fe.fmax)


@lru_cache(maxsize=2)
def _fill_noise(bins: int) -> np.ndarray:
    """`(FILL_FRAMES, bins)` float32 standard exponential draws, the same in every run."""
    return np.random.default_rng(20240611).standard_exponential((FILL_FRAMES, bins), np.float32)


def band_fill(power: np.ndarray, n_fft: int = 512) -> Fill | None:
    """The fill for band-limited input, None for wideband or silent, from power spectra `(frames, n_fft // 2 + 1)`
    spread over it. Sums the loud frames (within 10 dB of the 90th percentile): band-limited when they hold under
    `EMPTY_DB` of their power above an edge in `BAND_EDGES` (speech, noise, music: -20 to -45 dB above 4.3 kHz;
    from 8 kHz audio: under -85 dB). The fill starts at the lowest such edge, `FILL_DB` re their mean power."""
    sound = power[:, 2:]  # DC and its leak are not sound (matrix products: this runs on every call)
    energy = sound @ np.ones(sound.shape[1], np.float32)
    k90 = int(0.9 * (len(energy) - 1))
    top = np.partition(energy, k90)[k90] if len(energy) else 0.0
    if not top > 0:  # silence (or NaN)
        return None
    loud = energy >= top / 10
    above = np.cumsum((loud.astype(np.float32) @ sound)[::-1], dtype=np.float64)[::-1]  # power in bins 2 + k and up
    lo, hi = (int(round(f * n_fft / SAMPLE_RATE)) - 2 for f in BAND_EDGES)
    empty = np.flatnonzero(above[lo : hi + 1] < above[0] * 10 ** (EMPTY_DB / 10))
    if len(empty) == 0:
        return None
    k = lo + int(empty[0])
    return Fill(k + 2, float(above[0] / loud.sum() * 10 ** (FILL_DB / 10) / (len(above) - k)))

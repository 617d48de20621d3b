"""Data augmentation for training: additive noise, simulated reverberation, speed perturbation, level changes,
telephone band, SpecAugment.

Waveform-level steps work on 1-D float numpy arrays (they run in DataLoader workers; torch is not imported);
SpecAugment works on a `(frames, dims)` feature matrix, numpy or torch. Every random choice comes from the generator
the caller passes in, so a seed gives the same output.

References: Ko, Peddinti, Povey, Seltzer, Khudanpur, "A study on data augmentation of reverberant speech for robust
speech recognition", ICASSP 2017 (reverberation + additive noise, Kaldi); Ko, Peddinti, Povey, Khudanpur, "Audio
augmentation for speech recognition", Interspeech 2015 (speed perturbation 0.9/1.0/1.1); Park et al., "SpecAugment",
Interspeech 2019 (time and frequency masking); Schroeder, "New method of measuring reverberation time", JASA 1965
(exponentially decaying noise as a model of a late reverberation tail); ITU-T G.711 (mu-law companding, mu = 255,
8 bits) and G.712 (the 300-3400 Hz telephone channel band).

Speed perturbation changes pitch and formants as well as tempo, so Kaldi's and WeSpeaker's VoxCeleb recipes treat
each speed-perturbed copy of a speaker (0.9, 1.1) as a new speaker: `Augmenter.augment` returns the factor it used so
the trainer can map `(speaker, factor)` to a class of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import butter, fftconvolve, resample_poly, sosfilt

from spkid.audio import check_samples
from spkid.errors import SpkidError

log = logging.getLogger(__name__)


@dataclass
class AugmentConfig:
    """Switches and ranges. Each waveform step, when on, is applied with its probability; ranges are `(low, high)`.

    noise: add a random segment of one of `noise_files` at an SNR drawn uniformly from `snr_db` (dB).
    reverb: convolve with a synthetic room impulse response, RT60 uniform in `rt60` (s), direct-to-reverberant
      ratio uniform in `drr_db` (dB).
    speed: resample by a factor drawn from `speed_factors` (1.1 = 10 % faster and shorter, pitch 10 % higher).
    gain: scale by a level drawn uniformly from `gain_db` (dB); with `gain_clip`, samples beyond full scale (+-1) are
      clipped, as a recorder driven too hard does.
    telephone: a narrowband channel: resample to `telephone_rate` (Hz) and back (nothing above its Nyquist
      frequency survives), a high-pass at `telephone_highpass` (Hz; 0 = none), and with probability `mulaw_prob`
      8-bit mu-law quantisation (G.711) of the narrowband signal.
    specaug: on features, `freq_masks` bands of width uniform in `freq_mask_width` (bins, inclusive) and
      `time_masks` spans of width uniform in `time_mask_width` (frames, inclusive), filled with the matrix mean.
    """

    noise: bool = False
    noise_files: tuple[str, ...] = ()
    snr_db: tuple[float, float] = (0.0, 15.0)
    noise_prob: float = 1.0
    reverb: bool = False
    rt60: tuple[float, float] = (0.2, 0.8)
    drr_db: tuple[float, float] = (0.0, 10.0)
    reverb_prob: float = 1.0
    speed: bool = False
    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)
    gain: bool = False
    gain_db: tuple[float, float] = (-20.0, 10.0)
    gain_clip: bool = True
    gain_prob: float = 1.0
    telephone: bool = False
    telephone_rate: int = 8000
    telephone_highpass: float = 300.0
    mulaw_prob: float = 0.5
    telephone_prob: float = 1.0
    specaug: bool = False
    freq_masks: int = 2
    freq_mask_width: tuple[int, int] = (0, 8)
    time_masks: int = 2
    time_mask_width: tuple[int, int] = (0, 10)


def make_rng(seed: Any) -> np.random.Generator:
    """A numpy Generator from an int, None, a SeedSequence, a numpy Generator (used as is) or a torch.Generator
    (one draw from it seeds a new numpy Generator)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if hasattr(seed, "manual_seed") and hasattr(seed, "initial_seed"):  # a torch.Generator; torch is already loaded
        import torch

        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=seed)))
    return np.random.default_rng(seed)


def mix_at_snr(wave: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`wave + g * noise` with g chosen so that `10 log10(P(wave) / P(g noise)) = snr_db` (mean-square powers over
    the whole signal). `noise` has `wave`'s length. A silent wave or noise returns a copy of `wave`."""
    p_wave = float(np.mean(np.square(wave, dtype=np.float64)))
    p_noise = float(np.mean(np.square(noise, dtype=np.float64)))
    if p_wave <= 0.0 or p_noise <= 0.0:
        return wave.copy()
    gain = np.sqrt(p_wave / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (wave + gain * noise).astype(wave.dtype, copy=False)


def synth_rir(sr: int, rt60: float, drr_db: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room impulse response, `round(rt60 * sr)` samples: a unit direct path at t = 0, then Gaussian
    noise whose energy decays by 60 dB in `rt60` seconds, scaled so that direct / tail energy is `drr_db` dB."""
    n = max(int(round(rt60 * sr)), 2)
    t = np.arange(1, n) / sr
    tail = rng.standard_normal(n - 1) * np.exp(-3.0 * np.log(10.0) * t / rt60)
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / np.sum(tail * tail))
    return np.concatenate([[1.0], tail])


def reverberate(wave: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with `rir` (FFT), keep the first `len(wave)` samples (the direct path stays aligned) and restore the
    input's peak level, so the result neither clips nor gets quieter."""
    out = fftconvolve(wave.astype(np.float64), rir)[: len(wave)]
    peak_in, peak_out = float(np.max(np.abs(wave))), float(np.max(np.abs(out)))
    if peak_out > 0.0:
        out *= peak_in / peak_out
    return out.astype(wave.dtype, copy=False)


def speed_perturb(wave: np.ndarray, factor: float) -> np.ndarray:
    """Play `wave` `factor` times faster (tempo and pitch, like `sox speed`): polyphase resampling by 1 / factor.
    The result has about `len(wave) / factor` samples at the same sampling rate."""
    if factor <= 0:
        raise SpkidError(f"speed factor must be > 0, got {factor}")
    if factor == 1.0:
        return wave.copy()
    frac = Fraction(factor).limit_denominator(100)
    out = resample_poly(wave.astype(np.float64), frac.denominator, frac.numerator)
    return out.astype(wave.dtype, copy=False)


def apply_gain(wave: np.ndarray, db: float, clip: bool = True) -> np.ndarray:
    """`wave` scaled by `db` decibels; with `clip`, limited to full scale [-1, 1]. Same dtype."""
    out = wave.astype(np.float64) * 10.0 ** (db / 20.0)
    if clip:
        np.clip(out, -1.0, 1.0, out=out)
    return out.astype(wave.dtype, copy=False)


def mulaw_quantize(wave: np.ndarray, bits: int = 8, mu: float = 255.0) -> np.ndarray:
    """Mu-law companding, quantisation to `bits` bits, expansion (G.711's law in its continuous form). Input beyond
    full scale is clipped first; the result is float64 in [-1, 1]."""
    x = np.clip(wave.astype(np.float64), -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    levels = 2 ** (bits - 1) - 1  # 127 steps each side of zero for 8 bits
    y = np.round(y * levels) / levels
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu


def telephone_band(wave: np.ndarray, sr: int, rate: int = 8000, highpass: float = 300.0,
                   mulaw: bool = False) -> np.ndarray:
    """`wave` (at `sr` Hz) through a narrowband channel: polyphase resampling to `rate` Hz (its anti-aliasing
    filter removes everything above `rate / 2`), a 4th-order Butterworth high-pass at `highpass` Hz (0: none),
    optional 8-bit mu-law quantisation at `rate`, and resampling back to `sr`. Same length and dtype as `wave`."""
    if rate <= 0 or rate > sr:
        raise SpkidError(f"telephone rate must be in (0, {sr}] Hz, got {rate}")
    if not 0 <= highpass < rate / 2:
        raise SpkidError(f"telephone high-pass must be in [0, {rate / 2:g}) Hz, got {highpass}")
    g = int(np.gcd(sr, rate))
    x = resample_poly(wave.astype(np.float64), rate // g, sr // g) if rate != sr else wave.astype(np.float64)
    if highpass > 0:
        x = sosfilt(butter(4, highpass, "highpass", fs=rate, output="sos"), x)
    if mulaw:
        x = mulaw_quantize(x)
    if rate != sr:
        x = resample_poly(x, sr // g, rate // g)
    if len(x) < len(wave):
        x = np.pad(x, (0, len(wave) - len(x)))
    return x[: len(wave)].astype(wave.dtype, copy=False)


def spec_augment(
    feats: Any,
    rng: np.random.Generator,
    freq_masks: int = 2,
    freq_mask_width: tuple[int, int] = (0, 8),
    time_masks: int = 2,
    time_mask_width: tuple[int, int] = (0, 10),
) -> Any:
    """SpecAugment masking of a `(frames, dims)` matrix (numpy array or torch tensor; a copy is returned).

    Each mask's width is uniform in its inclusive range (clipped to the axis length), its start uniform over the
    positions where it fits; masked cells get the matrix's mean (0 after mean normalisation).
    """
    out = feats.copy() if isinstance(feats, np.ndarray) else feats.clone()
    n_frames, n_dims = out.shape[-2], out.shape[-1]
    fill = out.mean()
    for _ in range(freq_masks):
        w = min(int(rng.integers(freq_mask_width[0], freq_mask_width[1] + 1)), n_dims)
        f0 = int(rng.integers(0, n_dims - w + 1))
        out[..., :, f0 : f0 + w] = fill
    for _ in range(time_masks):
        w = min(int(rng.integers(time_mask_width[0], time_mask_width[1] + 1)), n_frames)
        t0 = int(rng.integers(0, n_frames - w + 1))
        out[..., t0 : t0 + w, :] = fill
    return out


class NoiseBank:
    """Random segments of noise files, read on demand (only the needed frames, via soundfile seeking)."""

    def __init__(self, files: tuple[str, ...] | list[str]) -> None:
        if not files:
            raise SpkidError("noise augmentation is on but no noise files are given; set noise_files")
        self.files = [Path(f) for f in files]
        self._info: dict[int, tuple[int, int]] = {}
        for f in self.files:
            if not f.is_file():
                raise SpkidError(f"{f}: noise file not found; fix noise_files in the augmentation config")

    def _frames_sr(self, i: int) -> tuple[int, int]:
        if i not in self._info:
            try:
                info = sf.info(str(self.files[i]))
            except RuntimeError as e:
                raise SpkidError(f"{self.files[i]}: cannot read noise file ({e}); remove it from noise_files") from e
            self._info[i] = (info.frames, info.samplerate)
        return self._info[i]

    def segment(self, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
        """`n` samples at rate `sr` from a random file at a random offset, mono float64 (tiled if the file is short,
        resampled if its rate differs)."""
        i = int(rng.integers(len(self.files)))
        frames, file_sr = self._frames_sr(i)
        need = int(np.ceil(n * file_sr / sr)) + (0 if file_sr == sr else 16)
        if frames <= 0:
            raise SpkidError(f"{self.files[i]}: noise file is empty; remove it from noise_files")
        start = int(rng.integers(0, frames - need + 1)) if frames > need else 0
        x, _ = sf.read(str(self.files[i]), start=start, frames=min(need, frames), dtype="float64", always_2d=True)
        check_samples(x, self.files[i], start)
        x = x.mean(axis=1)
        if len(x) < need:
            x = np.tile(x, int(np.ceil(need / len(x))))[:need]
        if file_sr != sr:
            g = np.gcd(sr, file_sr)
            x = resample_poly(x, sr // g, file_sr // g)
        return x[:n]


class Augmenter:
    """Applies the switched-on steps of an `AugmentConfig` with its own random generator.

    `seed`: an int, None, a numpy Generator or a torch.Generator (see `make_rng`). In DataLoader workers build one
    Augmenter per worker with a per-worker seed (e.g. in `worker_init_fn`, `torch.initial_seed() % 2**32`), or the
    workers repeat each other's choices.
    """

    def __init__(self, cfg: AugmentConfig, seed: Any = None) -> None:
        self.cfg = cfg
        self.rng = make_rng(seed)
        self.noise_bank = NoiseBank(cfg.noise_files) if cfg.noise else None
        if cfg.speed and not cfg.speed_factors:
            raise SpkidError("speed perturbation is on but speed_factors is empty")
        if cfg.gain and not cfg.gain_db[0] <= cfg.gain_db[1]:
            raise SpkidError(f"gain_db must be (low, high) with low <= high, got {cfg.gain_db}")
        if cfg.telephone and not 0 <= cfg.telephone_highpass < cfg.telephone_rate / 2:
            raise SpkidError(f"telephone_highpass must be in [0, telephone_rate / 2), got {cfg.telephone_highpass} Hz "
                             f"at {cfg.telephone_rate} Hz")

    def reseed(self, seed: Any) -> None:
        """Replace the generator (see `make_rng`)."""
        self.rng = make_rng(seed)

    def augment(self, wave: np.ndarray, sr: int) -> tuple[np.ndarray, float]:
        """Speed, reverberation, noise, gain, then the telephone channel, each if switched on and drawn; returns the
        new 1-D wave (same dtype) and the speed factor used (1.0 when speed perturbation is off), for trainers that
        relabel speakers by factor. A step that is off draws nothing from the generator."""
        cfg = self.cfg
        out = np.asarray(wave)
        factor = 1.0
        if cfg.speed:
            factor = float(cfg.speed_factors[int(self.rng.integers(len(cfg.speed_factors)))])
            if factor != 1.0:
                out = speed_perturb(out, factor)
        if cfg.reverb and self.rng.random() < cfg.reverb_prob:
            rir = synth_rir(sr, self.rng.uniform(*cfg.rt60), self.rng.uniform(*cfg.drr_db), self.rng)
            out = reverberate(out, rir)
        if self.noise_bank is not None and self.rng.random() < cfg.noise_prob:
            noise = self.noise_bank.segment(len(out), sr, self.rng)
            out = mix_at_snr(out, noise, self.rng.uniform(*cfg.snr_db))
        if cfg.gain and self.rng.random() < cfg.gain_prob:
            out = apply_gain(out, self.rng.uniform(*cfg.gain_db), cfg.gain_clip)
        if cfg.telephone and self.rng.random() < cfg.telephone_prob:
            mulaw = bool(self.rng.random() < cfg.mulaw_prob)
            out = telephone_band(out, sr, cfg.telephone_rate, cfg.telephone_highpass, mulaw)
        return out, factor

    def __call__(self, wave: np.ndarray, sr: int) -> np.ndarray:
        """The augmented wave (see `augment`)."""
        return self.augment(wave, sr)[0]

    def spec_augment(self, feats: Any) -> Any:
        """SpecAugment on a `(frames, dims)` matrix if `specaug` is on, else the input unchanged."""
        if not self.cfg.specaug:
            return feats
        c = self.cfg
        return spec_augment(feats, self.rng, c.freq_masks, c.freq_mask_width, c.time_masks, c.time_mask_width)

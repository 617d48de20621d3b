"""Augmentation: SNR of the mix, synthetic RIR decay, speed factor, level and clipping, telephone band and mu-law,
SpecAugment masks, seeded repeatability."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from spkid.augment import (
    AugmentConfig,
    Augmenter,
    apply_gain,
    mix_at_snr,
    mulaw_quantize,
    reverberate,
    spec_augment,
    speed_perturb,
    synth_rir,
    telephone_band,
)
from spkid.errors import SpkidError

from conftest import synth_voice

SR = 16000


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return synth_voice(165.0, (850.0, 1000.0, 3000.0), 1.0, seed=3)


def snr_db(clean: np.ndarray, mixed: np.ndarray) -> float:
    noise = mixed.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))


@pytest.mark.parametrize("target", [-5.0, 0.0, 12.5])
def test_mix_at_snr_hits_requested_snr(voice, target):
    noise = np.random.default_rng(0).standard_normal(len(voice))
    mixed = mix_at_snr(voice, noise, target)
    assert mixed.dtype == np.float32 and mixed.shape == voice.shape
    assert snr_db(voice, mixed) == pytest.approx(target, abs=0.05)


def test_noise_files_mixed_at_requested_snr(voice, tmp_path):
    """Noise FLACs longer than the voice (a random excerpt is mixed) and shorter (it is looped)."""
    rng = np.random.default_rng(0)
    files = []
    for name, seconds in (("babble.flac", 7.0), ("hum.flac", 0.4)):
        n = int(seconds * SR)
        x = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same") + 0.3 * np.sin(np.arange(n) * 0.05)
        sf.write(tmp_path / name, 0.2 * x / np.abs(x).max(), SR, subtype="PCM_16")
        files.append(str(tmp_path / name))
    files = tuple(files)
    aug = Augmenter(AugmentConfig(noise=True, noise_files=files, snr_db=(5.0, 5.0)), seed=0)
    for _ in range(3):
        mixed = aug(voice, SR)
        assert mixed.shape == voice.shape and not np.array_equal(mixed, voice)
        assert snr_db(voice, mixed) == pytest.approx(5.0, abs=0.05)


def test_noise_file_at_other_rate_is_resampled(voice, tmp_path):
    t = np.arange(8000 * 2) / 8000
    sf.write(tmp_path / "hum.wav", 0.3 * np.sin(2 * np.pi * 1000 * t), 8000)
    aug = Augmenter(AugmentConfig(noise=True, noise_files=(str(tmp_path / "hum.wav"),), snr_db=(0.0, 0.0)), seed=1)
    mixed = aug(voice, SR)
    residual = mixed.astype(np.float64) - voice
    peak_hz = np.argmax(np.abs(np.fft.rfft(residual))) * SR / len(residual)
    assert peak_hz == pytest.approx(1000, abs=2) and snr_db(voice, mixed) == pytest.approx(0.0, abs=0.05)


def test_noise_config_errors(tmp_path):
    with pytest.raises(SpkidError, match="no noise files"):
        Augmenter(AugmentConfig(noise=True))
    with pytest.raises(SpkidError, match="missing.flac: noise file not found"):
        Augmenter(AugmentConfig(noise=True, noise_files=(str(tmp_path / "missing.flac"),)))


def schroeder_rt60(rir: np.ndarray, sr: int) -> float:
    """RT60 from the -5..-25 dB slope of the backward-integrated energy decay curve (T20 x 3)."""
    edc = np.cumsum(rir[::-1] ** 2)[::-1]
    edc_db = 10 * np.log10(edc / edc[0])
    idx = np.where((edc_db <= -5) & (edc_db >= -25))[0]
    slope = np.polyfit(idx / sr, edc_db[idx], 1)[0]
    return -60.0 / slope


@pytest.mark.parametrize("rt60", [0.3, 0.7])
def test_synthetic_rir_decays_at_requested_rt60(rt60):
    rir = synth_rir(SR, rt60, drr_db=-10.0, rng=np.random.default_rng(0))
    assert len(rir) == round(rt60 * SR) and rir[0] == 1.0
    assert schroeder_rt60(rir, SR) == pytest.approx(rt60, rel=0.1)
    assert 10 * np.log10(1.0 / np.sum(rir[1:] ** 2)) == pytest.approx(-10.0)


def test_reverb_keeps_length_and_peak_and_changes_signal(voice):
    aug = Augmenter(AugmentConfig(reverb=True, rt60=(0.5, 0.5), drr_db=(0.0, 0.0)), seed=0)
    wet = aug(voice, SR)
    assert wet.shape == voice.shape and wet.dtype == voice.dtype
    assert np.max(np.abs(wet)) == pytest.approx(np.max(np.abs(voice)), rel=1e-5)
    assert np.corrcoef(wet, voice)[0, 1] < 0.95
    # a dirac through reverberate() is the RIR itself, scaled to the input's peak
    rir = synth_rir(SR, 0.2, 5.0, np.random.default_rng(1))
    dirac = np.zeros(SR)
    dirac[0] = 1.0
    assert np.allclose(reverberate(dirac, rir)[: len(rir)], rir / np.max(np.abs(rir)))


@pytest.mark.parametrize("factor", [0.9, 1.0, 1.1])
def test_speed_perturbation_scales_length_and_pitch(factor):
    t = np.arange(SR) / SR
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    out = speed_perturb(tone, factor)
    assert out.dtype == np.float32 and abs(len(out) - SR / factor) <= 1
    peak_hz = np.argmax(np.abs(np.fft.rfft(out * np.hanning(len(out))))) * SR / len(out)
    assert peak_hz == pytest.approx(1000 * factor, abs=2)


def test_augmenter_reports_speed_factor(voice):
    aug = Augmenter(AugmentConfig(speed=True, speed_factors=(0.9, 1.1)), seed=0)
    seen = set()
    for _ in range(10):
        out, factor = aug.augment(voice, SR)
        seen.add(factor)
        assert abs(len(out) - len(voice) / factor) <= 1
    assert seen == {0.9, 1.1}


@pytest.mark.parametrize("as_torch", [False, True])
def test_spec_augment_masks_requested_bins(as_torch):
    feats = np.random.default_rng(0).standard_normal((50, 20)).astype(np.float32) + 3.0
    x = torch.from_numpy(feats) if as_torch else feats
    out = spec_augment(x, np.random.default_rng(1), freq_masks=1, freq_mask_width=(5, 5), time_masks=1,
                       time_mask_width=(7, 7))  # fmt: skip
    out = out.numpy() if as_torch else out
    fill = feats.mean()
    masked = np.isclose(out, fill)
    assert masked.all(axis=0).sum() == 5  # frequency bins masked in every frame
    assert masked.all(axis=1).sum() == 7  # frames masked in every bin
    assert np.array_equal(out[~masked], feats[~masked]) and not np.isclose(feats, fill).any()
    assert np.array_equal(x.numpy() if as_torch else x, feats)  # the input is left alone


def test_spec_augment_switch():
    feats = np.ones((10, 8), dtype=np.float32)
    assert Augmenter(AugmentConfig(), seed=0).spec_augment(feats) is feats
    out = Augmenter(AugmentConfig(specaug=True, freq_masks=1, freq_mask_width=(3, 3), time_masks=0), seed=0)
    assert out.spec_augment(np.arange(80, dtype=np.float32).reshape(10, 8)).std(axis=0).tolist().count(0.0) == 3


def full_config(tmp_path) -> AugmentConfig:
    noise = np.random.default_rng(5).standard_normal(SR * 3)
    sf.write(tmp_path / "n.wav", 0.1 * noise, SR)
    return AugmentConfig(noise=True, noise_files=(str(tmp_path / "n.wav"),), reverb=True, reverb_prob=0.5,
                         speed=True, specaug=True, gain=True, gain_prob=0.5, telephone=True,
                         telephone_prob=0.5)  # fmt: skip


def test_seeded_repeatability(voice, tmp_path):
    cfg = full_config(tmp_path)
    feats = np.random.default_rng(0).standard_normal((60, 24)).astype(np.float32)

    def run(seed):
        aug = Augmenter(cfg, seed)
        return [aug(voice, SR) for _ in range(4)] + [aug.spec_augment(feats)]

    a, b, c = run(7), run(7), run(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, c))
    ta, tb = run(torch.Generator().manual_seed(3)), run(torch.Generator().manual_seed(3))
    assert all(np.array_equal(x, y) for x, y in zip(ta, tb))
    na, nb = run(np.random.default_rng(11)), run(np.random.default_rng(11))
    assert all(np.array_equal(x, y) for x, y in zip(na, nb))


def tone_db(x: np.ndarray, hz: float) -> float:
    """Level (dB) of the `hz` component of `x` (Hann-windowed FFT peak within 5 Hz)."""
    spec = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    return 20 * np.log10(spec[np.abs(freqs - hz) <= 5].max() + 1e-20)


def test_telephone_band_keeps_the_voice_band_and_removes_the_rest():
    t = np.arange(SR) / SR
    parts = {100.0: 0.2, 1000.0: 0.2, 3000.0: 0.2, 5500.0: 0.2}
    x = sum(a * np.sin(2 * np.pi * f * t) for f, a in parts.items()).astype(np.float32)
    y = telephone_band(x, SR)
    assert y.dtype == np.float32 and y.shape == x.shape
    for f in (1000.0, 3000.0):  # in the band: kept within 1 dB
        assert tone_db(y, f) == pytest.approx(tone_db(x, f), abs=1.0)
    assert tone_db(y, 5500.0) < tone_db(x, 5500.0) - 40  # above 4 kHz: gone (anti-aliasing at 8 kHz)
    assert tone_db(y, 100.0) < tone_db(x, 100.0) - 25  # under the 300 Hz high-pass
    assert tone_db(telephone_band(x, SR, highpass=0.0), 100.0) == pytest.approx(tone_db(x, 100.0), abs=1.0)
    with pytest.raises(SpkidError, match="telephone rate"):
        telephone_band(x, SR, rate=22050)


def test_mulaw_quantisation_has_255_levels_and_g711_noise():
    rng = np.random.default_rng(0)
    x = 0.3 * rng.standard_normal(SR)
    q = mulaw_quantize(x)
    assert np.abs(q).max() <= 1.0 and len(np.unique(q)) <= 255
    assert np.allclose(mulaw_quantize(q), q)  # a quantised signal is a fixed point
    snr = 10 * np.log10(np.mean(np.clip(x, -1, 1) ** 2) / np.mean((q - np.clip(x, -1, 1)) ** 2))
    assert 30 < snr < 45  # 8-bit mu-law: about 38 dB over a wide range of levels
    # companding: 40 dB quieter, mu-law keeps most of its SNR where linear 8-bit steps would drown the signal
    quiet = 0.01 * x
    snr_quiet = 10 * np.log10(np.mean(quiet**2) / np.mean((mulaw_quantize(quiet) - quiet) ** 2))
    linear = np.round(quiet * 127) / 127
    assert snr_quiet > 25 > 10 > 10 * np.log10(np.mean(quiet**2) / np.mean((linear - quiet) ** 2))
    y = telephone_band(x.astype(np.float32), SR, mulaw=True)
    assert not np.allclose(y, telephone_band(x.astype(np.float32), SR))


def test_gain_changes_level_and_clips_at_full_scale(voice):
    quiet = apply_gain(voice, -25.0)
    assert quiet.dtype == voice.dtype
    assert 20 * np.log10(np.std(quiet) / np.std(voice)) == pytest.approx(-25.0, abs=1e-3)
    loud = apply_gain(voice / np.abs(voice).max() * 0.5, 15.0)
    assert np.abs(loud).max() == 1.0 and np.mean(np.abs(loud) == 1.0) > 0.01
    unclipped = apply_gain(voice / np.abs(voice).max() * 0.5, 15.0, clip=False)
    assert np.abs(unclipped).max() == pytest.approx(0.5 * 10 ** 0.75, rel=1e-5)


def test_augmenter_gain_and_telephone_steps(voice):
    aug = Augmenter(AugmentConfig(gain=True, gain_db=(-6.0, -6.0), gain_clip=False), seed=0)
    assert np.allclose(aug(voice, SR), voice * 10 ** (-6 / 20), atol=1e-6)
    tel = Augmenter(AugmentConfig(telephone=True, mulaw_prob=0.0), seed=0)(voice, SR)
    assert tel.shape == voice.shape and np.allclose(tel, telephone_band(voice, SR))
    never = Augmenter(AugmentConfig(telephone=True, telephone_prob=0.0, gain=True, gain_prob=0.0), seed=0)
    assert np.array_equal(never(voice, SR), voice)
    # a step that is off draws nothing: the generator is where the reverb step alone leaves it
    a = Augmenter(AugmentConfig(reverb=True), seed=4)
    b = Augmenter(AugmentConfig(reverb=True, gain_db=(1.0, 2.0), telephone_rate=4000), seed=4)
    assert np.array_equal(a(voice, SR), b(voice, SR)) and a.rng.random() == b.rng.random()
    with pytest.raises(SpkidError, match="gain_db"):
        Augmenter(AugmentConfig(gain=True, gain_db=(3.0, -3.0)))
    with pytest.raises(SpkidError, match="telephone_highpass"):
        Augmenter(AugmentConfig(telephone=True, telephone_highpass=4000.0))

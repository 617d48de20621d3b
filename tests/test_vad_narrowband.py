"""spkid.vad on band-limited input (8 kHz audio resampled to 16 kHz, nothing above 4 kHz): detected from the
signal (`band_fill`), heard with faint noise in the empty band, so narrowband speech is found again and
narrowband noise, music and test signals stay non-speech; the caller's signal is untouched, the result is the
same in blocks and from run to run; `spkid vad --segments` finds the voice in upsampled 8 kHz float WAVs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from conftest import clip_files, sh
from spkid import audio, vad, vadfront

SR = 16000


def narrow(x: np.ndarray, rate: int) -> np.ndarray:
    """`x` as if recorded at `rate` and converted to 16 kHz (spkid's own resampler, in memory: float32)."""
    return audio.resample(audio.resample(x, SR, rate), rate, SR)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """The 26 shipped LibriSpeech clips, 16 kHz float32."""
    return [sf.read(f, dtype="float32")[0] for f in clip_files()]


def voiced_s(x: np.ndarray) -> float:
    segs = vad.segments(x, SR)
    return float((segs[:, 1] - segs[:, 0]).sum() / SR)


def edge_hz(fill: vadfront.Fill) -> float:
    return fill.first * SR / vad.load_model().frontend.n_fft


def test_band_limited_input_is_detected(clips):
    detect = vad.load_model().fill
    rng = np.random.default_rng(0)
    x, white = clips[0], (0.1 * rng.standard_normal(3 * SR)).astype(np.float32)
    assert detect(x) is None and detect(white) is None  # wideband
    x8 = narrow(x, 8000)
    fill = detect(x8)
    assert fill is not None and 3500 <= edge_hz(fill) <= 4000 and fill.power > 0
    quiet = detect(0.01 * x8)  # a ratio: the level does not matter, the fill scales with the signal
    assert quiet.first == fill.first and quiet.power == pytest.approx(1e-4 * fill.power, rel=1e-3)
    assert detect(np.round(x8 * 32767) / 32767) is not None  # 16-bit PCM's noise (-100 dB) is empty
    assert detect(narrow(white, 8000)) is not None
    # a quiet wideband noise floor in the pauses only: the loud frames decide
    floor = lambda n: (1e-3 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    assert detect(np.concatenate([floor(2 * SR), x8, floor(2 * SR)])) is not None
    assert detect(narrow(x, 11025)) is None  # empty only above 5.5 kHz: heard as it is
    assert detect(np.zeros(SR, np.float32)) is None
    assert detect(np.zeros(0, np.float32)) is None
    m = vad.load_model()  # frames gathered over the signal = the same frames of the spectra of every frame
    long = narrow(np.concatenate(clips[:10]), 8000)
    step = -(-len(long) // 320 // vadfront.DETECT_FRAMES)
    every = vadfront.band_fill(np.abs(m.frontend.spectra(long)[::step]) ** 2)
    assert step > 1 and m.fill(long).first == every.first
    assert m.fill(long).power == pytest.approx(every.power, rel=1e-6)


def test_narrowband_speech_is_found(clips):
    """Before the fill: 28 of the 99 voiced seconds found, 10 clips with none; now about 98 %."""
    wide = np.array([voiced_s(x) for x in clips])
    nb = np.array([voiced_s(narrow(x, 8000)) for x in clips])
    assert np.all(nb >= 0.7 * wide), (nb / wide).round(2)
    assert nb.sum() >= 0.9 * wide.sum()
    p = np.mean([vad.speech_prob(narrow(x, 8000), SR).mean() for x in clips])
    assert p > 0.8, p


def test_narrowband_nonspeech_stays_nonspeech(shared_data):
    """Every noise, music and effect clip of the development corpus at 8 kHz: at most 5 % flagged (the goal)."""
    files = sorted((shared_data / "nonspeech").glob("*.flac")) + sorted((shared_data / "noise").glob("*.flac"))
    files = [f for f in files if f.name != "dude_miaowing.flac"]  # a person's vocal sounds: not non-speech
    assert len(files) == 21
    flagged = {}
    for f in files:
        x8 = narrow(sf.read(f, dtype="float32")[0], 8000)
        assert vad.load_model().fill(x8) is not None
        flagged[f.name] = voiced_s(x8) / (len(x8) / SR)
    assert max(flagged.values()) <= 0.05, flagged


def test_narrowband_test_signals_are_not_speech():
    rng = np.random.default_rng(1)
    t = np.arange(5 * 8000) / 8000
    for name, y in {"silence": np.zeros_like(t), "near-silence": 1e-5 * rng.standard_normal(len(t)),
                    "DC": np.full_like(t, 0.3), "tone": 0.3 * np.sin(2 * np.pi * 440 * t),
                    "noise": 0.1 * rng.standard_normal(len(t))}.items():
        x = audio.resample(y.astype(np.float32), 8000, SR)
        assert vad.segments(x, SR).shape == (0, 2), name


def test_fill_leaves_the_signal_alone_and_is_the_same_in_blocks(clips):
    x8 = narrow(np.concatenate(clips[:6]), 8000)
    before = x8.copy()
    p = vad.speech_prob(x8, SR)
    assert np.array_equal(x8, before)  # the caller's signal is not changed
    assert np.array_equal(p, vad.speech_prob(x8, SR))  # seeded: the same every time
    m = vad.load_model()
    whole = m.forward(m.frontend(x8, fill=m.fill(x8)))
    np.testing.assert_allclose(m.prob(x8), whole, atol=1e-5)  # detected on the block's own spectra: the same
    np.testing.assert_allclose(m.prob(x8, block=300), whole, atol=1e-5)  # noise follows absolute frames
    # embed's network, trained on wideband speech only, loses the voice without the fill; the shipped one, trained
    # on 8 kHz examples heard through the fill too, hears it either way
    old = vad.load_model(vad.EMBED_MODEL_PATH)
    assert old.prob(x8).mean() > old.prob(x8, fill=False).mean() + 0.3
    assert whole.mean() > 0.6 and m.prob(x8, fill=False).mean() > 0.6


def test_cli_finds_voice_in_upsampled_8khz_float_wavs(clips, tmp_path):
    """8 kHz telephone audio upsampled by another tool to a float WAV: `spkid vad --segments` finds the voice."""
    paths = []
    for i, x in enumerate(clips[:3]):
        p = tmp_path / f"nb{i}.wav"
        sf.write(p, narrow(x, 8000), SR, subtype="FLOAT")
        paths.append(p)
    lst = tmp_path / "nb.txt"
    lst.write_text("".join(f"{p}\n" for p in paths))
    out = np.load(io.BytesIO(sh(f"spkid vad --segments {lst}", check=True).stdout), allow_pickle=False)
    for i, x in enumerate(clips[:3]):
        s = out[out[:, 0] == i, 1:]
        assert (s[:, 1] - s[:, 0]).sum() >= 0.7 * voiced_s(x) * SR

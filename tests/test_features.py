"""features.py: equivalence with python_speech_features (real speech and generated signals), silence, streaming,
normalisation, VAD frame selection, and the config's JSON contract."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import soundfile as sf
from python_speech_features import base as psf
from python_speech_features import sigproc

from conftest import clip_files, synth_voice
from spkid import cmvn, features, spectral
from spkid.errors import SpkidError
from spkid.features import FeatureConfig, compute, compute_file

TOL_DB = 1e-3  # the contract: within 1e-3 dB of psf on every value above -60 dB (re the utterance's max)
FLOOR_DB = 60.0
LN_PER_DB = np.log(10) / 20  # 1 dB in natural-log units of the same quantity


def _winfunc(name):
    return lambda n: spectral.window(name, n)


def psf_fbank_db(x, cfg):
    """20*log10 of psf's filterbank energies (float64) under `cfg`."""
    mel, energy = psf.fbank(np.asarray(x, np.float64), cfg.sample_rate, cfg.win_len, cfg.win_step, cfg.n_filters,
                            cfg.fft_size, cfg.low_freq, cfg.top_freq, cfg.preemph, _winfunc(cfg.window))
    return 20 * np.log10(mel), 20 * np.log10(energy)


def psf_magspec(x, cfg):
    frames = sigproc.framesig(sigproc.preemphasis(np.asarray(x, np.float64), cfg.preemph), cfg.frame_len,
                              cfg.frame_step, _winfunc(cfg.window))
    return sigproc.magspec(frames, cfg.fft_size)


def assert_close_db(ours_db, ref_db, tol=TOL_DB, floor=FLOOR_DB):
    """Every value of `ref_db` above (its max - floor) is matched within `tol` dB."""
    assert ours_db.shape == ref_db.shape
    loud = ref_db > ref_db.max() - floor
    assert loud.mean() > 0.05, "test signal too quiet to compare anything"
    err = np.abs(ours_db.astype(np.float64) - ref_db)[loud]
    assert err.max() <= tol, f"max error {err.max():.2e} dB above -{floor} dB"


def check_all_kinds(x, cfg):
    """fbank, mfcc, specdb and spectrogram of `x` under `cfg` (numpy backend) against psf itself."""
    ref_db, ref_energy_db = psf_fbank_db(x, cfg)

    fb = compute(x, replace(cfg, kind="fbank", log="db", append_energy=True))
    assert fb.dtype == np.float32 and fb.shape == (len(ref_db), cfg.n_filters + 1)
    assert_close_db(fb[:, :-1], ref_db)
    assert_close_db(fb[:, -1], ref_energy_db)
    fb_ln = compute(x, replace(cfg, kind="fbank", log="ln"))
    assert_close_db(fb_ln / LN_PER_DB, ref_db)

    # MFCC = liftered DCT of the log filterbank, so compare it with psf.mfcc on the frames above -60 dB, allowing
    # each coefficient the error it would have if every filter were off by TOL_DB (sum_n |M[n, k]| * TOL_DB).
    m = spectral.dct_matrix(cfg.n_filters, cfg.n_ceps, cfg.lifter)
    ref_mfcc = psf.mfcc(np.asarray(x, np.float64), cfg.sample_rate, cfg.win_len, cfg.win_step, cfg.n_ceps,
                        cfg.n_filters, cfg.fft_size, cfg.low_freq, cfg.top_freq, cfg.preemph, cfg.lifter, True,
                        _winfunc(cfg.window))
    frames = ref_db.max(axis=1) > ref_db.max() - FLOOR_DB
    for log_type, unit in (("ln", 1.0), ("db", 1 / LN_PER_DB)):
        ours = compute(x, replace(cfg, kind="mfcc", log=log_type, append_energy=True))
        tol = np.abs(m).sum(axis=0) * TOL_DB * LN_PER_DB * unit
        tol[0] = TOL_DB * LN_PER_DB * unit  # c0 is the log frame energy
        err = np.abs(ours - ref_mfcc * unit)[frames]
        assert (err <= tol).all(), f"mfcc ({log_type}) error {err.max(axis=0)} over {tol}"
    plain = compute(x, replace(cfg, kind="mfcc", log="ln", append_energy=False))
    np.testing.assert_allclose(plain[:, 1:], ref_mfcc[:, 1:cfg.n_ceps], atol=0.05)

    mag = psf_magspec(x, cfg)
    spec_db = compute(x, replace(cfg, kind="specdb", log="db", append_energy=False))
    assert spec_db.shape == (len(ref_db), cfg.fft_size // 2 + 1)
    assert_close_db(spec_db, 20 * np.log10(np.maximum(mag, 1e-300)))
    spec = compute(x, replace(cfg, kind="spectrogram", append_energy=False))
    assert_close_db(20 * np.log10(np.maximum(spec, 1e-30)), 20 * np.log10(np.maximum(mag, 1e-300)))


@pytest.fixture(scope="module")
def speech():
    """Six real LibriSpeech utterances (the shipped clips, 16 kHz float32) of six speakers."""
    return [sf.read(p, dtype="float32")[0] for p in clip_files("probe")[:6]]


CONFIGS = [
    FeatureConfig(window="rectangular", n_filters=40),  # psf's defaults, but 40 filters
    FeatureConfig(window="hamming", n_filters=64, low_freq=20, high_freq=7600),
    FeatureConfig(window="povey", n_filters=80, nfft=1024, preemph=0.0, win_len=0.032, win_step=0.015),
    FeatureConfig(window="hann", n_filters=40, preemph=0.5, high_freq=-400),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.window}-{c.n_filters}")
def test_equals_psf_on_real_speech(speech, cfg):
    for x in speech[:3] if cfg.window != "rectangular" else speech:
        check_all_kinds(x, cfg)


@pytest.mark.parametrize("name", ["voice", "noise", "chirp", "voice48k", "voice8k", "short", "one_window"])
def test_equals_psf_on_generated_signals(name):
    rng = np.random.default_rng(1)
    rate = {"voice48k": 48000, "voice8k": 8000}.get(name, 16000)
    t = np.arange(int(1.3 * rate)) / rate
    x = {
        "voice": lambda: synth_voice(140.0, (600.0, 1400.0, 2500.0), 1.3),
        "noise": lambda: 0.3 * rng.standard_normal(len(t)),
        "chirp": lambda: 0.5 * np.sin(2 * np.pi * (50 * t + 2500 * t**2)),
        "voice48k": lambda: synth_voice(190.0, (800.0, 1800.0, 2900.0), 1.3, sr=48000),
        "voice8k": lambda: synth_voice(120.0, (500.0, 1500.0), 1.3, sr=8000),
        "short": lambda: 0.3 * rng.standard_normal(1234),
        "one_window": lambda: 0.3 * rng.standard_normal(399),
    }[name]()
    cfg = FeatureConfig(sample_rate=rate, window="hamming", n_filters=40 if rate > 8000 else 24)
    check_all_kinds(x, cfg)


def test_nfft_default_is_next_power_of_two_so_48k_frames_are_whole():
    assert FeatureConfig().fft_size == 512
    cfg48 = FeatureConfig(sample_rate=48000)
    assert (cfg48.frame_len, cfg48.frame_step, cfg48.fft_size) == (1200, 480, 2048)
    assert FeatureConfig(sample_rate=8000).fft_size == 256
    assert FeatureConfig(kind="specdb", sample_rate=48000).dims == 1025
    with pytest.raises(SpkidError, match="truncate frames"):
        FeatureConfig(sample_rate=48000, nfft=512)


def test_frame_count_follows_psf():
    cfg = FeatureConfig()
    for n in (0, 1, 399, 400, 401, 560, 561, 16000, 16001):
        expected = 0 if n == 0 else len(sigproc.framesig(np.ones(n), 400, 160))
        assert features.n_frames(n, cfg) == expected
        assert compute(np.ones(n, np.float32), cfg).shape == (expected, 40)


@pytest.mark.parametrize("kind", ["fbank", "mfcc", "specdb", "spectrogram"])
@pytest.mark.parametrize("norm", ["none", "cmn", "cmvn", "sliding"])
def test_digital_silence_is_finite(kind, norm):
    cfg = FeatureConfig(kind=kind, norm=norm, append_energy=kind in ("fbank", "mfcc"))
    out = compute(np.zeros(16000, np.float32), cfg)
    assert out.shape == (99, cfg.dims) and np.isfinite(out).all()
    # silence between speech, too
    x = np.concatenate([np.zeros(8000), synth_voice(150.0, (700.0, 1200.0), 0.5), np.zeros(8000)])
    assert np.isfinite(compute(x, cfg)).all()
    if kind == "fbank" and norm == "none":
        np.testing.assert_allclose(out, 20 * np.log10(np.finfo(float).eps), rtol=1e-6)  # psf's eps floor


def test_psf_backend_matches_numpy_backend():
    x = synth_voice(180.0, (700.0, 1300.0, 2600.0), 1.0, seed=3)
    for kind in ("fbank", "mfcc", "specdb", "spectrogram"):
        cfg = FeatureConfig(kind=kind, append_energy=kind == "fbank")
        a, b = compute(x, cfg), compute(x, replace(cfg, backend="psf"))
        assert a.shape == b.shape and b.dtype == np.float32
        if kind == "spectrogram":
            a, b = 20 * np.log10(a + 1e-30), 20 * np.log10(b + 1e-30)
        if kind == "mfcc":  # in 20*log10 units; silent frames reach -600, so relative too
            np.testing.assert_allclose(a, b, atol=0.02, rtol=1e-4)
        else:
            loud = b > b.max() - 60
            np.testing.assert_allclose(a[loud], b[loud], atol=TOL_DB)


def test_convenience_functions_and_dtypes():
    x = synth_voice(200.0, (900.0, 2000.0), 0.5)
    np.testing.assert_array_equal(features.fbank(x), compute(x, FeatureConfig()))
    assert features.mfcc(x, n_ceps=20).shape == (49, 20)
    assert features.specdb(x, nfft=1024).shape == (49, 513)
    assert features.spectrogram(x).shape == (49, 257)
    # float64 and int16 input: the same numbers as float32 input of the same values
    np.testing.assert_allclose(features.fbank(x.astype(np.float64)), features.fbank(x), atol=1e-4)
    pcm = np.round(x * 32767).astype(np.int16)
    np.testing.assert_allclose(features.fbank(pcm), features.fbank(pcm.astype(np.float32)), atol=1e-4)
    with pytest.raises(SpkidError, match="mono"):
        compute(np.zeros((100, 2)), FeatureConfig())


def test_blocks_and_streaming_give_the_same_numbers(tmp_path, monkeypatch):
    x = synth_voice(130.0, (650.0, 1100.0, 2400.0), 3.0, seed=5)
    path = tmp_path / "a.flac"
    sf.write(path, x, 16000, subtype="PCM_16")
    pcm = sf.read(path, dtype="float32")[0]
    for kind in ("fbank", "mfcc", "specdb"):
        cfg = FeatureConfig(kind=kind, window="povey")
        whole = compute(pcm, cfg)
        atol = 1e-4 + 1e-6 * np.abs(whole).max()  # BLAS kernels may round differently for other block sizes
        monkeypatch.setattr(spectral, "BLOCK_FRAMES", 7)
        monkeypatch.setattr(features, "READ_SAMPLES", 1001)  # many chunk boundaries, none aligned to frames
        np.testing.assert_allclose(compute(pcm, cfg), whole, atol=atol)
        streamed = compute_file(path, cfg)
        monkeypatch.undo()
        np.testing.assert_allclose(streamed, whole, atol=atol)
        np.testing.assert_allclose(compute_file(path, cfg), whole, atol=atol)


def test_compute_file_refuses_stereo_and_other_rates(tmp_path):
    x = synth_voice(150.0, (700.0, 1200.0), 0.5)
    sf.write(tmp_path / "st.wav", np.stack([x, x], axis=1), 16000)
    sf.write(tmp_path / "r8.wav", x, 8000)
    with pytest.raises(SpkidError, match=r"st\.wav: has 2 channels, expected mono; run `spkid convert`"):
        compute_file(tmp_path / "st.wav")
    with pytest.raises(SpkidError, match=r"r8\.wav: sample rate 8000 Hz, expected 16000 Hz; run `spkid convert --rate 16000 -d DIR` first"):
        compute_file(tmp_path / "r8.wav")
    with pytest.raises(SpkidError, match="no such file"):
        compute_file(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 10)
    with pytest.raises(SpkidError, match="junk.wav"):
        compute_file(tmp_path / "junk.wav")
    assert compute_file(tmp_path / "r8.wav", FeatureConfig(sample_rate=8000, n_filters=24)).shape == (99, 24)


def sliding_reference(x, window):
    """Kaldi's SlidingWindowCmnInternal (center=true, norm_vars=false), frame by frame."""
    n = len(x)
    out = np.empty_like(x, dtype=np.float64)
    for t in range(n):
        start = t - window // 2
        end = start + window
        if start < 0:
            end -= start
            start = 0
        if end > n:
            start = max(0, start - (end - n))
            end = n
        out[t] = x[t] - x[start:end].mean(axis=0, dtype=np.float64)
    return out


@pytest.mark.parametrize("n,window", [(1, 300), (50, 300), (301, 300), (1000, 300), (997, 10), (40_000, 301)])
def test_sliding_cmn_matches_kaldi(n, window):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((n, 3)) * 5 - 40).astype(np.float32)
    ref = sliding_reference(x.astype(np.float64), window) if n < 5000 else None
    if ref is None:  # long input (crosses the normaliser's row blocks): reference through a cumulative sum
        cs = np.vstack([np.zeros((1, 3)), np.cumsum(x, axis=0, dtype=np.float64)])
        t = np.arange(n)
        start = t - window // 2
        end = start + window - np.minimum(start, 0)
        start = np.maximum(start, 0)
        over = np.maximum(end - n, 0)
        start, end = np.maximum(start - over, 0), end - over
        ref = x - (cs[end] - cs[start]) / (end - start)[:, None]
    out = cmvn.normalize(x.copy(), "sliding", window)
    np.testing.assert_allclose(out, ref, atol=2e-4)


def test_cmn_and_cmvn():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((500, 4)) * [1, 2, 3, 0] + [10, -20, 30, 7]).astype(np.float32)
    cmn = cmvn.normalize(x.copy(), "cmn")
    np.testing.assert_allclose(cmn.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(cmn.std(axis=0), x.std(axis=0), rtol=1e-5)
    mvn = cmvn.normalize(x.copy(), "cmvn")
    np.testing.assert_allclose(mvn.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(mvn.std(axis=0), [1, 1, 1, 0], atol=1e-5)  # a constant column is only centred
    speech = synth_voice(160.0, (700.0, 1300.0), 1.0)
    normed = compute(speech, FeatureConfig(norm="cmvn"))
    np.testing.assert_allclose(normed, cmvn.normalize(compute(speech, FeatureConfig()), "cmvn"), atol=1e-5)


def test_voiced_frames():
    cfg = FeatureConfig()  # frame i covers [160 i, 160 i + 400): centre 160 i + 200
    mask = features.voiced_frames(np.array([[1600, 4800], [360, 361], [4500, 5000]]), 40, cfg)
    np.testing.assert_array_equal(np.flatnonzero(mask), [1, *range(9, 30)])
    assert not features.voiced_frames(np.array([0, 0]), 10, cfg).any()


def test_keep_selects_frames_before_normalising():
    x = synth_voice(170.0, (700.0, 1300.0), 2.0, seed=9)
    keep = np.array([[3000, 12000], [20000, 26000]])
    all_frames = compute(x, FeatureConfig())
    mask = features.voiced_frames(keep, len(all_frames), FeatureConfig())
    np.testing.assert_array_equal(compute(x, FeatureConfig(), keep=keep), all_frames[mask])
    cmn = compute(x, FeatureConfig(norm="cmn"), keep=keep)
    np.testing.assert_allclose(cmn, all_frames[mask] - all_frames[mask].mean(axis=0), atol=1e-3)
    assert compute(x, FeatureConfig(norm="cmvn"), keep=np.array([0, 0])).shape == (0, 40)


def test_config_json_round_trip_and_validation(tmp_path):
    cfg = FeatureConfig(kind="mfcc", n_filters=64, n_ceps=20, window="povey", log="ln", norm="sliding",
                        cmn_window=200, append_energy=True, high_freq=-200.0)
    text = json.dumps(asdict(cfg))
    assert FeatureConfig.from_dict(json.loads(text)) == cfg
    (tmp_path / "features.json").write_text(text)
    assert FeatureConfig.from_json(tmp_path / "features.json") == cfg
    assert FeatureConfig.from_dict({}) == FeatureConfig()
    assert FeatureConfig.from_dict({"win_len": 1}).frame_len == 16000  # JSON ints are fine for seconds
    with pytest.raises(SpkidError, match=r"unknown keys \['n_filter'\]"):
        FeatureConfig.from_dict({"n_filter": 40})
    (tmp_path / "bad.json").write_text('{"kind": "fbank", "nfilt": 26}')
    with pytest.raises(SpkidError, match=r"bad\.json: feature config: unknown keys"):
        FeatureConfig.from_json(tmp_path / "bad.json")
    bad = [
        ({"kind": "plp"}, "choose from fbank, mfcc, specdb, spectrogram"),
        ({"window": "blackman"}, "window"),
        ({"n_filters": "40"}, "must be an integer"),
        ({"append_energy": 1}, "true or false"),
        ({"win_len": 0}, "win_len must be > 0"),
        ({"high_freq": 9000}, "high_freq"),
        ({"low_freq": 8000}, "low_freq"),
        ({"kind": "mfcc", "n_ceps": 41}, "n_ceps"),
        ({"kind": "specdb", "append_energy": True}, "append_energy applies to fbank and mfcc"),
        ({"cmn_window": 0}, "cmn_window"),
    ]
    for raw, message in bad:
        with pytest.raises(SpkidError, match=message):
            FeatureConfig.from_dict(raw)

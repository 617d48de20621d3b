"""spkid.kaldifbank: Kaldi's filterbank equals kaldi-native-fbank (the `test` extra) on real speech; the feature kind
`kaldi-fbank` of `spkid features`, and as the front end a model file names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import soundfile as sf

from conftest import clip_files, sh
from spkid import frontends, streams
from spkid.errors import SpkidError
from spkid.features import Kind
from spkid.kaldifbank import FLOOR, KIND, WINDOWS, KaldiFbankConfig, fbank, mel_banks

knf = pytest.importorskip("kaldi_native_fbank", reason="kaldi-native-fbank is in the `test` extra: "
                          "pip install -e '.[test]'")


def reference(x: np.ndarray, sr: int = 16000, n_filters: int = 80, low: float = 20.0, high: float = 0.0,
              window: str = "povey") -> np.ndarray:
    """kaldi-native-fbank with Kaldi's defaults and dither 0, on 16-bit-scaled samples."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = sr
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.frame_opts.window_type = window
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.remove_dc_offset = True
    opts.mel_opts.num_bins = n_filters
    opts.mel_opts.low_freq = low
    opts.mel_opts.high_freq = high
    opts.energy_floor = 0.0
    opts.use_energy = False
    f = knf.OnlineFbank(opts)
    f.accept_waveform(sr, (np.asarray(x, np.float64) * 32768).tolist())
    f.input_finished()
    return np.array([f.get_frame(i) for i in range(f.num_frames_ready)], np.float32).reshape(-1, n_filters)


def test_equals_kaldi_native_fbank_on_real_speech():
    for path in clip_files()[::2]:
        x, sr = sf.read(path, dtype="float32")
        ref = reference(x, sr)
        mine = fbank(x, sr)
        assert mine.shape == ref.shape and mine.dtype == np.float32, path
        above = ref > np.log(FLOOR) + 1e-4
        assert above.mean() > 0.99, path
        np.testing.assert_allclose(mine[above], ref[above], atol=1e-3, rtol=0, err_msg=str(path))


@pytest.mark.parametrize("n_filters,low,high", [(40, 0.0, 0.0), (64, 20.0, -400.0), (23, 100.0, 3800.0)])
def test_other_settings_equal_too(n_filters: int, low: float, high: float):
    x, sr = sf.read(clip_files("probe")[0], dtype="float32")
    x = x[: 3 * sr]
    ref = reference(x, sr, n_filters, low, high)
    mine = fbank(x, sr, n_filters=n_filters, low_freq=low, high_freq=high)
    above = ref > np.log(FLOOR) + 1e-4
    np.testing.assert_allclose(mine[above], ref[above], atol=1e-3, rtol=0)


@pytest.mark.parametrize("window", [w for w in WINDOWS if w != "povey"])
def test_other_windows_equal_too(window: str):
    """WeSpeaker's models take the Hamming window (`window_type='hamming'`); the others Kaldi has are equal too."""
    x, sr = sf.read(clip_files("probe")[1], dtype="float32")
    x = x[: 3 * sr]
    ref = reference(x, sr, window=window)
    mine = fbank(x, sr, window=window)
    assert mine.shape == ref.shape
    above = ref > np.log(FLOOR) + 1e-4
    assert above.mean() > 0.99
    np.testing.assert_allclose(mine[above], ref[above], atol=1e-3, rtol=0)
    assert not np.allclose(mine, fbank(x, sr), atol=1e-2)  # the window matters


def test_snip_edges_and_floor():
    cfg = KaldiFbankConfig()
    assert (cfg.frame_len, cfg.frame_step, cfg.fft_size) == (400, 160, 512)
    assert [cfg.n_frames(n) for n in (0, 399, 400, 559, 560)] == [0, 0, 1, 1, 2]
    assert fbank(np.zeros(399, np.float32)).shape == (0, 80)
    silence = fbank(np.zeros(16000, np.float32))  # digital silence: the floor, finite
    assert silence.shape == (98, 80) and np.all(silence == np.float32(np.log(FLOOR)))
    banks = mel_banks(80, 512, 16000, 20.0, 8000.0)
    assert banks.shape == (257, 80) and not banks[-1].any() and banks.any(axis=0).all()


def test_config_checks_and_registry():
    assert get_args(Kind) + (KIND, "sb-fbank") == get_args(__import__("spkid.cli.features", fromlist=["KindChoice"]).KindChoice)
    front = frontends.frontend({"kind": "kaldi-fbank", "n_filters": 40, "norm": "cmn"})
    assert isinstance(front, KaldiFbankConfig) and front.dims == 40 and front.frame_step == 160
    assert KaldiFbankConfig.from_dict(front.to_dict()) == front
    with pytest.raises(SpkidError, match="unknown keys"):
        frontends.frontend({"kind": "kaldi-fbank", "n_fliters": 40})
    with pytest.raises(SpkidError, match="low_freq"):
        KaldiFbankConfig(low_freq=9000.0)
    with pytest.raises(SpkidError, match="window='hann'; choose from povey, hamming"):
        KaldiFbankConfig(window="hann")
    assert KaldiFbankConfig.from_dict({"kind": "kaldi-fbank"}).window == "povey"  # files written before the field


def test_cli_features_kind_kaldi_fbank(tmp_path: Path):
    clips = clip_files("enroll", "19")
    proc = sh(f"spkid features {clips[0].parent} -d {tmp_path}/f --kind kaldi-fbank --norm cmn", check=True)
    listed = proc.stdout.decode().splitlines()
    assert len(listed) == len(clips)
    cfg = json.loads((tmp_path / "f" / "features.json").read_text())
    assert cfg == KaldiFbankConfig(norm="cmn").to_dict()
    feats = np.load(listed[0].split("\t")[0])
    x, sr = sf.read(clips[0], dtype="float32")
    expected = fbank(x, sr)
    expected -= expected.mean(axis=0)
    np.testing.assert_allclose(feats, expected, atol=1e-4)
    bad = sh(f"spkid features {clips[0]} -d {tmp_path}/g --kind kaldi-fbank --window hann --nfft 1024")
    assert bad.returncode == 2 and b"--nfft does not apply to --kind kaldi-fbank" in bad.stderr
    # WeSpeaker's front end: the Hamming window, the utterance mean removed
    sh(f"spkid features {clips[0]} -d {tmp_path}/h --kind kaldi-fbank --window hamming --norm cmn", check=True)
    cfg = json.loads((tmp_path / "h" / "features.json").read_text())
    assert cfg == KaldiFbankConfig(norm="cmn", window="hamming").to_dict()


def test_model_with_kaldi_fbank_front_end(tmp_path: Path):
    """A model file that names kaldi-fbank embeds audio with it, and `features --model` writes what it reads."""
    from test_embedding import make_tiny_model

    model = make_tiny_model(tmp_path / "k.pt", features={"kind": "kaldi-fbank", "n_filters": 40, "norm": "cmn"})
    clips = clip_files("probe", "19")
    sh(f"spkid features {clips[0]} -d {tmp_path}/f --model {model} > {tmp_path}/f.txt", check=True)
    assert json.loads((tmp_path / "f" / "features.json").read_text())["kind"] == "kaldi-fbank"
    sh(f"spkid embed {clips[0]} -m {model} --no-vad -o {tmp_path}/e1.npy", check=True)
    sh(f"spkid embed {tmp_path}/f.txt -m {model} --no-vad -o {tmp_path}/e2.npy", check=True)
    a, b = (streams.read_embeddings(str(tmp_path / f"e{i}.npy")) for i in (1, 2))
    assert a.values.shape == (1, 32) and np.all(np.isfinite(a.values))
    np.testing.assert_allclose(a.values, b.values, atol=1e-4)

"""spkid.embedding, .utterance, .frontends, .tracking: window plans (known answers), batch-size independence,
front-end dispatch, feature files, reading a model file once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SPEAKERS, synth_voice
from spkid import embedding, frontends, tracking, utterance
from spkid.utterance import EmbedConfig, window_starts
from spkid.errors import SpkidError

TINY = {"name": "ecapa_tdnn", "kwargs": {"feat_dim": 40, "channels": 32, "embed_dim": 32}}
TINY_FEATURES = {"kind": "fbank", "n_filters": 40}


def make_tiny_model(path: Path, seed: int = 0, features: dict | None = None, window_s: float = 1.0, hop_s: float = 0.5) -> Path:
    """A randomly initialised small ECAPA-TDNN model file (its statistics pooling already separates the generated
    voices by rank, which is all the CLI tests need when the pretrained extra is missing)."""
    import torch

    from spkid import modelfile
    from spkid.models import build_model

    torch.manual_seed(seed)
    net = build_model(TINY["name"], **TINY["kwargs"])
    spec = modelfile.ModelSpec(model=TINY, features=features or TINY_FEATURES,
                               embedding={"window_s": window_s, "hop_s": hop_s, "min_s": 0.5})
    modelfile.save(path, net, spec)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def voices(seconds: float = 2.0) -> tuple[list[np.ndarray], list[str]]:
    sigs, names = [], []
    for s, (name, (f0, formants)) in enumerate(SPEAKERS.items()):
        for i in range(2):
            sigs.append(synth_voice(f0, formants, seconds, seed=10 * s + i))
            names.append(name)
    return sigs, names


@pytest.mark.parametrize("n_frames,expected", [
    (50, ([0], 50)),                 # shorter than a window: one window of its own length
    (100, ([0], 100)),
    (101, ([0, 1], 100)),            # last window shifted back to end at the end
    (250, ([0, 50, 100, 150], 100)),
    (260, ([0, 50, 100, 150, 160], 100)),
])
def test_shift_windows(n_frames: int, expected):
    cfg = EmbedConfig(window_s=1.0, hop_s=0.5, last="shift")
    assert window_starts(n_frames * 160, n_frames, 160, 100, 50, cfg) == expected


@pytest.mark.parametrize("n_samples,starts", [
    (100, [0]),                      # shorter than a partial: one, zero-padded
    (16000 * 3, [0, 77, 154]),       # 301 frames; the last partial covers (48000 - 154 * 160) / 25600 = 91 %
    (32000, [0, 77]),                # the second covers (32000 - 12320) / 25600 = 77 % >= 75 %: kept
    (31000, [0]),                    # ... 73 % < 75 %: dropped
])
def test_pad_windows_match_resemblyzer_rule(n_samples: int, starts):
    cfg = EmbedConfig(window_s=1.6, hop_s=0.77, min_coverage=0.75, last="pad")
    assert window_starts(n_samples, 1 + n_samples // 160, 160, 160, 77, cfg) == (starts, 160)


def test_cut_makes_equal_windows_and_pads_with_zeros():
    feats = np.arange(12, dtype=np.float32).reshape(6, 2)
    w = utterance.cut(feats, [0, 3, 5], 3)
    assert w.shape == (3, 3, 2)
    assert np.array_equal(w[1], feats[3:6]) and np.array_equal(w[2, 0], feats[5]) and not w[2, 1:].any()


def test_embedding_does_not_depend_on_batch_size(tiny_model: Path):
    sigs, _ = voices(2.5)
    sigs.append(synth_voice(180.0, (600.0, 1800.0), 0.7, seed=5))  # shorter than a window: its own length
    ref = embedding.Embedder.from_model(str(tiny_model), "cpu", batch_size=64).embed_signals(sigs, 16000)
    for b in (1, 3):
        got = embedding.Embedder.from_model(str(tiny_model), "cpu", batch_size=b).embed_signals(sigs, 16000)
        np.testing.assert_allclose(got, ref, atol=1e-6)  # the same windows, only float rounding may differ
    assert ref.dtype == np.float32 and np.allclose(np.linalg.norm(ref, axis=1), 1, atol=1e-5)


def test_embedding_is_the_mean_of_window_embeddings(tiny_model: Path):
    emb = embedding.Embedder.from_model(str(tiny_model), "cpu", use_vad=False)
    x = synth_voice(120.0, (500.0, 1500.0), 3.0)
    windows = emb.prep.windows(x)
    assert windows.shape[1] == 100 and len(windows) == 5  # 3 s: starts 0, 0.5, 1, 1.5, 2 s
    parts = emb.forward(windows)
    mean = (parts / np.linalg.norm(parts, axis=1, keepdims=True)).mean(0)
    np.testing.assert_allclose(emb.embed_signals([x], 16000)[0], mean / np.linalg.norm(mean), atol=1e-6)


def test_window_override_and_whole_utterance(tiny_model: Path):
    emb = embedding.Embedder.from_model(str(tiny_model), "cpu", use_vad=False, window_s=0)
    assert emb.prep.windows(np.zeros(16000, np.float32) + 0.1).shape[:2] == (1, 99)  # psf framing: 1 + ceil(15600 / 160)
    with pytest.raises(SpkidError, match="hop must be > 0"):
        embedding.Embedder.from_model(str(tiny_model), "cpu", window_s=1.0, hop_s=0.0)


def test_same_speaker_scores_higher():
    sigs, names = voices()
    e = embedding.Embedder.from_model(str(embedding.DEFAULT_MODEL), "cpu").embed_signals(sigs, 16000)
    s = e @ e.T
    same = np.equal.outer(names, names) & ~np.eye(len(names), dtype=bool)
    diff = ~np.equal.outer(names, names)
    assert s[same].min() > s[diff].max()


def test_frontend_dispatch():
    from spkid.features import FeatureConfig
    from spkid.frontends import MelConfig

    assert isinstance(frontends.frontend({"kind": "ge2e_mel"}), MelConfig)
    fb = frontends.frontend({"kind": "mfcc", "n_ceps": 20})
    assert isinstance(fb.cfg, FeatureConfig) and fb.dims == 20 and fb.frame_step == 160
    with pytest.raises(SpkidError, match="model.pt: feature config: unknown keys"):
        frontends.frontend({"kind": "fbank", "n_filterz": 3}, "model.pt")
    with pytest.raises(SpkidError, match="unknown embedding settings"):
        EmbedConfig.from_dict({"window": 2.0})


def test_feature_files_checked_against_the_model(tiny_model: Path, tmp_path: Path):
    from spkid import features

    emb = embedding.Embedder.from_model(str(tiny_model), "cpu")
    x = synth_voice(150.0, (700.0, 1200.0), 2.0)
    good = tmp_path / "good" / "spk" / "a.npy"
    good.parent.mkdir(parents=True)
    np.save(good, features.compute(x, features.FeatureConfig(**TINY_FEATURES)))
    (tmp_path / "good" / "features.json").write_text(json.dumps(features.FeatureConfig(**TINY_FEATURES).to_dict()))
    from_feats = emb.embed_files([str(good)])
    from_audio = embedding.Embedder.from_model(str(tiny_model), "cpu", use_vad=False).embed_signals([x], 16000)
    np.testing.assert_allclose(from_feats, from_audio, atol=1e-5)

    other = tmp_path / "other" / "a.npy"
    other.parent.mkdir()
    np.save(other, features.compute(x, features.FeatureConfig(kind="fbank", n_filters=40, norm="cmn")))
    (tmp_path / "other" / "features.json").write_text(json.dumps(features.FeatureConfig(kind="fbank", norm="cmn").to_dict()))
    with pytest.raises(SpkidError, match="other settings than the model's.*norm='cmn'"):
        emb.embed_files([str(other)])
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((50, 13), np.float32))
    with pytest.raises(SpkidError, match="13 feature dims, but the model takes 40"):
        emb.embed_files([str(wrong)])


def test_quality_flags():
    prep = utterance.Preparer(frontends.frontend(TINY_FEATURES), EmbedConfig())
    x = synth_voice(150.0, (700.0, 1200.0), 1.0, sr=8000)
    y, q = prep.signal(np.clip(x * 4, -1, 1), 8000)
    text = " ".join(q.problems())
    assert len(y) <= 16000 and q.resampled_from == 8000
    assert "clipped" in text and "of speech" in text
    _, q = prep.signal(np.full(16000, 1e-4, np.float32), 16000)
    assert "nearly silent" in " ".join(q.problems())


def test_resolve_model_errors(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(embedding, "DEFAULT_MODEL", tmp_path / "default_model.pt")
    with pytest.raises(SpkidError, match="no bundled model is installed.*pass --model"):
        embedding.resolve_model(None)
    with pytest.raises(SpkidError, match="nope.pt: no such model file"):
        embedding.resolve_model(str(tmp_path / "nope.pt"))
    with pytest.raises(SpkidError, match="not a model spkid knows"):
        embedding.resolve_model(str(tmp_path))


def test_sliding_windows_and_merging():
    starts = tracking.sliding_starts(10 * 16000, 32000, 8000)
    assert starts[0] == 0 and starts[-1] == 128000 and np.all(np.diff(starts) == 8000)
    assert tracking.sliding_starts(1000, 32000, 8000).tolist() == [0]
    begin, end = tracking.window_cores(starts, 32000, 160000)
    assert begin[0] == 0 and end[-1] == 160000 and np.array_equal(begin[1:], end[:-1])
    runs = tracking.merge_runs(["a", "a", None, "b", "b", "b", "a"], np.arange(7.0), np.arange(7.0), np.arange(1, 8.0))
    assert runs == [(0.0, 2.0, "a", 0.5, 2), (3.0, 6.0, "b", 4.0, 3), (6.0, 7.0, "a", 6.0, 1)]
    segs = np.array([[0, 100], [200, 300]])
    assert tracking.voiced_in(segs, 50, 250).tolist() == [[50, 100], [200, 250]]


def test_track_scores_only_voiced_windows(tmp_path: Path):
    import soundfile as sf

    x = np.concatenate([synth_voice(150.0, (700.0, 1200.0), 3.0), np.zeros(3 * 16000, np.float32)])
    sf.write(tmp_path / "long.wav", x, 16000)
    prep = utterance.Preparer(frontends.frontend(TINY_FEATURES), EmbedConfig(window_s=1.0, hop_s=0.5))
    track = tracking.Track.load(str(tmp_path / "long.wav"), prep, window_s=2.0, hop_s=1.0)
    assert track.starts.tolist() == [16000 * i for i in range(5)]
    assert 0 in track.kept and 4 not in track.kept  # the last window is silence
    prepared = list(track.windows(prep))
    assert len(prepared) == len(track.kept) and all(p.windows.shape[2] == 40 for p in prepared)
    runs = track.runs(["a"] * len(track.kept), np.ones(len(track.kept)))
    assert len(runs) == 1 and runs[0][0] == 0.0 and runs[0][2] == "a"
    all_voiced = tracking.Track.load(str(tmp_path / "long.wav"), prep, window_s=2.0, hop_s=1.0, use_vad=False)
    assert all_voiced.kept.tolist() == [0, 1, 2, 3, 4]


def test_a_model_file_is_read_once(tiny_model: Path, monkeypatch):
    from spkid import modelfile

    reads = []
    real = modelfile.read
    monkeypatch.setattr(modelfile, "read", lambda path: reads.append(path) or real(path))
    ref = embedding.model_for_gallery(str(tiny_model), None)
    emb = embedding.Embedder.from_model(ref, "cpu")
    assert modelfile.model_calibration(ref) is None
    assert len(reads) == 1 and ref.state is None  # the weights went to the network; the spec stays
    assert emb.model.sha256 == modelfile.fingerprint(*real(tiny_model))

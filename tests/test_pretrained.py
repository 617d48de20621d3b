"""The pretrained GE2E encoder: spkid's numpy front end and batched partials against the resemblyzer package.

The equivalence tests need the `pretrained` extra (resemblyzer, which brings librosa); they are skipped without it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import clip_files, synth_voice
from spkid import frontends, pretrained
from spkid.errors import SpkidError

has_resemblyzer = importlib.util.find_spec("resemblyzer") is not None
has_librosa = importlib.util.find_spec("librosa") is not None
needs_resemblyzer = pytest.mark.skipif(not has_resemblyzer, reason="resemblyzer not installed (pip install 'spkid[pretrained]')")
needs_librosa = pytest.mark.skipif(not has_librosa, reason="librosa not installed")


@pytest.fixture(scope="module")
def encoder():
    import torch

    torch.set_num_threads(1)
    from resemblyzer import VoiceEncoder

    return VoiceEncoder("cpu", verbose=False)


@pytest.fixture(scope="module")
def embedder():
    from spkid.embedding import Embedder

    return Embedder.from_model("resemblyzer", "cpu", use_vad=False)


def utterances() -> list[np.ndarray]:
    """Waveforms as the package's preprocessing leaves them (trimmed, volume at -30 dBFS): real speech (the
    shipped clips of speaker 19) and a generated voice; from 0.3 s (one zero-padded partial) to 15 s."""
    import soundfile as sf
    from resemblyzer import preprocess_wav
    from resemblyzer.audio import normalize_volume

    waves = [sf.read(f, dtype="float32")[0] for f in clip_files("*", "19")]
    waves.append(np.concatenate(waves + [synth_voice(140.0, (700.0, 1500.0), 3.0, seed=0)]))
    out = []
    for w in map(preprocess_wav, waves):
        out.append(w)
        out += [normalize_volume(w[:n], -30, increase_only=True) for n in (32000, 31000, 5000)]
    return out


@needs_librosa
def test_mel_filters_equal_librosa():
    import librosa

    for sr, n_fft, n_mels, fmax in [(16000, 400, 40, 8000.0), (16000, 512, 64, 7600.0), (8000, 256, 24, 4000.0)]:
        mine = frontends.slaney_mel_filters(sr, n_fft, n_mels, 0.0, fmax)
        ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=fmax)
        np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-9)


@needs_librosa
@pytest.mark.parametrize("n", [1, 159, 160, 401, 16000 * 3 + 7])
def test_mel_spectrogram_equals_librosa(n: int):
    import librosa

    x = synth_voice(150.0, (700.0, 1200.0), max(n, 400) / 16000 + 0.01, seed=n)[:n]
    mine = frontends.MelConfig().compute(x)
    ref = librosa.feature.melspectrogram(y=x, sr=16000, n_fft=400, hop_length=160, n_mels=40).T
    assert mine.shape == ref.shape == (1 + n // 160, 40)
    np.testing.assert_allclose(mine, ref, rtol=1e-4, atol=1e-6 * ref.max())


@needs_resemblyzer
def test_partials_equal_compute_partial_slices():
    from resemblyzer import VoiceEncoder

    from spkid.utterance import EmbedConfig, window_starts

    cfg = EmbedConfig(**{k: v for k, v in pretrained.EMBEDDING.items()})
    for n in [1, 100, 12319, 12320, 25600, 31000, 32000, 48000, 48001, 16000 * 7 + 123, 16000 * 15]:
        _, mel_slices = VoiceEncoder.compute_partial_slices(n, 1.3, 0.75)
        starts, length = window_starts(n, 1 + n // 160, 160, 160, 77, cfg)
        assert [(s.start, s.stop) for s in mel_slices] == [(s, s + length) for s in starts], n


@needs_resemblyzer
def test_embeddings_equal_embed_utterance(encoder, embedder):
    """For the same (preprocessed) waveform, spkid's embedding is the package's `embed_utterance` to 1e-4."""
    waves = utterances()
    ref = np.stack([encoder.embed_utterance(w) for w in waves])
    mine = embedder.embed_signals(waves, 16000)
    assert mine.shape == (len(waves), 256)
    np.testing.assert_allclose(mine, ref, atol=1e-4)


@needs_resemblyzer
def test_model_file_gives_the_same_embeddings(tmp_path: Path, embedder):
    from spkid import modelfile
    from spkid.embedding import Embedder

    path = pretrained.as_model_file(tmp_path / "ge2e.pt")
    spec, state = modelfile.read(path)
    assert spec.model["name"] == "lstm_ge2e" and spec.features["kind"] == "ge2e_mel"
    assert spec.embedding["last"] == "pad" and "similarity_weight" not in state
    assert modelfile.sha256(path) == pretrained.sha256()  # the same model: galleries and embeddings interoperate
    x = synth_voice(140.0, (600.0, 1700.0), 2.5)
    from_file = Embedder.from_model(str(path), "cpu", use_vad=False).embed_signals([x], 16000)
    np.testing.assert_allclose(from_file, embedder.embed_signals([x], 16000), atol=1e-6)


@needs_resemblyzer
def test_weights_found_without_importing_the_package():
    code = ("import sys; from spkid import pretrained; p = pretrained.weights_path(); "
            "assert p.name == 'pretrained.pt' and p.is_file(); assert 'resemblyzer' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SpkidError, match=r"resemblyzer package is not installed.*pip install 'spkid\[pretrained\]'"):
        pretrained.weights_path()


def test_volume_normalisation_only_raises():
    cfg = frontends.MelConfig()
    quiet = np.full(1000, 0.001, np.float32)
    loud = np.full(1000, 0.5, np.float32)
    raised = cfg.prepare(quiet)
    assert np.isclose(20 * np.log10(np.sqrt(np.mean(raised.astype(np.float64) ** 2))), -30, atol=1e-3)
    assert cfg.prepare(loud) is loud and cfg.prepare(np.zeros(10, np.float32)).sum() == 0

"""Start-up: the VAD and the embedding front ends run without importing scipy.fft, scipy.signal or torch, and
`spkid.fft.rfft` (scipy's pocketfft loaded directly) gives exactly what `scipy.fft.rfft` gives."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.fft

from conftest import REPO, clip_files
from spkid import fft


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
@pytest.mark.parametrize(("shape", "n", "axis"), [((50, 512), 512, 1), ((50, 400), 512, 1), ((50, 600), 512, -1),
                                                  ((7, 300), None, 0), ((1001,), None, -1), ((3, 4, 33), 40, 1)])
def test_rfft_is_scipy_rfft_bit_for_bit(dtype, shape, n, axis):
    x = (np.random.default_rng(0).standard_normal(shape) * 1000).astype(dtype)
    got, want = fft.rfft(x, n=n, axis=axis), scipy.fft.rfft(x, n=n, axis=axis, workers=1)
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_rfft_falls_back_to_scipy_fft(monkeypatch):
    monkeypatch.setattr(fft, "_pocketfft", lambda: None)
    x = np.random.default_rng(1).standard_normal((4, 512)).astype(np.float32)
    assert np.array_equal(fft.rfft(x, axis=1), scipy.fft.rfft(x, axis=1))


CHILD = """
import sys
from spkid import audio, vad, embedding
x = audio.load_expected({wav!r}, 16000)
assert len(vad.segments(x, 16000)) > 0
emb = embedding.Embedder.from_model(None, "cpu", threads=1)
emb.embed_files([{wav!r}])
heavy = [m for m in sys.modules if m.split(".")[0] == "torch" or m.startswith(("scipy.fft", "scipy.signal", "scipy.special"))]
assert not heavy, heavy[:5]
"""


def test_vad_and_embedding_import_no_scipy_fft_signal_or_torch():
    wav = str(clip_files("probe")[0])
    proc = subprocess.run([sys.executable, "-c", CHILD.format(wav=wav)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]

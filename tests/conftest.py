"""Shared fixtures: generated "speakers" and the real corpus in ../shared/data (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def synth_voice(f0: float, formants: tuple[float, ...], seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """A harmonic "voice": glottal-like pulse train at f0 (with jitter and syllable-rate on/off) through formant resonators.

    Returns float32 mono in [-1, 1]. Distinct (f0, formants) give distinct, learnable "speakers".
    """
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f = f0 * (1 + 0.03 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6.3)) + 0.005 * rng.standard_normal(n).cumsum() / np.sqrt(n))
    phase = 2 * np.pi * np.cumsum(f) / sr
    src = np.zeros(n)
    for k in range(1, int(4000 / f0)):
        src += np.cos(k * phase) / k
    x = src
    for fc in formants:
        r = np.exp(-np.pi * 120 / sr)
        a = [1, -2 * r * np.cos(2 * np.pi * fc / sr), r * r]
        x = x + 0.6 * lfilter([1 - r], a, src)
    # syllables: ~4 Hz on/off envelope, with pauses
    env = (np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6.3)) > -0.3).astype(float)
    env = np.convolve(env, np.hanning(400) / np.hanning(400).sum(), mode="same")
    x = x * env + 0.003 * rng.standard_normal(n)
    return (0.5 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


SPEAKERS = {
    "alice": (210.0, (700.0, 1200.0, 2600.0)),
    "bob": (110.0, (500.0, 1500.0, 2400.0)),
    "carol": (165.0, (850.0, 1000.0, 3000.0)),
}


@pytest.fixture
def speaker_dir(tmp_path: Path) -> Path:
    """tmp_path/speakers/<name>/<name>_<i>.wav: 3 generated speakers x 3 utterances of 2 s, 16 kHz mono."""
    root = tmp_path / "speakers"
    for s, (name, (f0, formants)) in enumerate(SPEAKERS.items()):
        (root / name).mkdir(parents=True)
        for i in range(3):
            x = synth_voice(f0, formants, 2.0, seed=10 * s + i)
            sf.write(root / name / f"{name}_{i}.wav", x, 16000, subtype="PCM_16")
    return root


@pytest.fixture
def wav_list(speaker_dir: Path, tmp_path: Path) -> Path:
    """A list file of the generated speakers' wavs, one path a line (labels from the parent folder)."""
    lst = tmp_path / "wavs.txt"
    lst.write_text("".join(f"{p}\n" for p in sorted(speaker_dir.rglob("*.wav"))), encoding="utf-8")
    return lst


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need real speech skip when it is absent (a fresh clone)."""
    if not (SHARED_DATA / "librispeech_tc100").is_dir():
        pytest.skip(f"real corpus not found at {SHARED_DATA} (present in CI and beside a developer's checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def spkid_on_path():
    """Subprocess tests call `spkid` as a user would: the console script of the interpreter running the tests."""
    import os
    import sys

    bindir = str(Path(sys.executable).parent)
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = bindir + os.pathsep + old
    yield
    os.environ["PATH"] = old


def sh(cmd: str, *, cwd: Path | None = None, input: bytes | None = None, check: bool = False):
    """Run a shell pipeline with bash -o pipefail; returns CompletedProcess with bytes stdout/stderr."""
    import subprocess

    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, input=input, capture_output=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd!r} exited {proc.returncode}:\n{proc.stderr.decode(errors='replace')}")
    return proc

"""Shared fixtures: generated "speakers", the real speech clips shipped in examples/clips, and the whole
development corpus in ../shared/data (tests that need it skip when it is absent, as in a fresh clone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Real speech in the repository: 26 LibriSpeech excerpts (CC BY 4.0; examples/clips/ATTRIBUTION.md),
# enroll/<speaker>/ two clips of each of 8 speakers, probe/<speaker>/ one more of each and two of speaker 909
CLIPS = REPO / "examples" / "clips"


def clip_files(part: str = "*", speaker: str = "*") -> list[Path]:
    """The shipped clips of `part` (enroll, probe or *) and `speaker` (a reader ID or *), sorted: 16 kHz mono FLAC."""
    return sorted(CLIPS.glob(f"{part}/{speaker}/*.flac"))


# multiplicative offsets of (F1, F2, F3) from a speaker's neutral formants, for a few vowel qualities
VOWELS = np.array([[1.0, 1.0, 1.0], [0.78, 1.22, 1.04], [1.15, 0.92, 0.98], [0.82, 0.85, 0.96],
                   [1.08, 1.12, 1.02], [0.9, 1.08, 1.0], [1.12, 1.03, 0.99]])


def synth_voice(f0: float, formants: tuple[float, ...], seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """A speech-like "voice": syllables of a glottal pulse train through moving formant resonators.

    Phrases of 2-7 syllables (80-320 ms) and pauses; the pitch falls across each phrase with a rise on
    accented syllables; each syllable takes a vowel of its own (formants glide between them); unvoiced
    fricative noise between some syllables. The speaker is `f0` (mean pitch) and `formants` (neutral
    formant frequencies, Hz): distinct values give distinct, learnable speakers.
    Returns float32 mono in [-1, 1].
    """
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    blk = max(1, sr // 200)  # 5 ms control blocks
    nb = -(-n // blk)
    cap = nb + 100  # room for the last syllable to run past the end
    pitch = np.zeros(cap)  # pitch offset per block, relative to f0
    voicing = np.zeros(cap)  # voiced amplitude per block
    frication = np.zeros(cap)  # unvoiced (noise) amplitude per block
    vowel = np.ones((cap, 3))  # formant factors per block
    b = int(rng.integers(0, 30))  # a short lead-in
    while b < nb:
        start = b
        for _ in range(int(rng.integers(2, 8))):  # syllables of a phrase
            if rng.random() < 0.5:  # a fricative onset
                m = int(rng.integers(8, 20))
                frication[b : b + m] = rng.uniform(0.15, 0.4) * np.hanning(m + 2)[1:-1]
                b += m
            m = int(rng.integers(16, 64))
            env = np.minimum(1.0, np.minimum(np.arange(1, m + 1) / 4, np.arange(m, 0, -1) / 8))
            voicing[b : b + m] = env * 10 ** (rng.uniform(-6, 0) / 20)
            accent = rng.uniform(0.05, 0.2) if rng.random() < 0.4 else rng.uniform(-0.03, 0.03)
            pitch[b : b + m] = accent * np.hanning(m + 2)[1:-1]
            vowel[b : b + m] = VOWELS[rng.integers(len(VOWELS))]
            b += m
            if b >= nb:
                break
        pitch[start:b] += np.linspace(0.08, -0.1, b - start)  # declination across the phrase
        b += int(rng.integers(30, 90))  # pause: 150-450 ms
    # formants glide between syllables (45 ms)
    kern = np.hanning(9) / np.hanning(9).sum()
    vowel = np.stack([np.convolve(np.pad(v, 4, mode="edge"), kern, mode="valid") for v in vowel[:nb].T], axis=1)
    pitch, voicing, frication = pitch[:nb], voicing[:nb], frication[:nb]
    jitter = np.convolve(rng.standard_normal(nb), np.hanning(5), mode="same") * 0.012  # irregular periods
    t = np.arange(n) / sr

    def up(a: np.ndarray) -> np.ndarray:  # per block -> per sample
        return np.interp(t, (np.arange(nb) + 0.5) * blk / sr, a)

    f = f0 * (1 + up(pitch) + up(jitter))
    phase = 2 * np.pi * np.cumsum(f) / sr
    src = np.zeros(n)
    for k in range(1, max(2, int(min(4000, 0.45 * sr) / f0))):
        src += np.cos(k * phase) / k
    src *= up(voicing)
    noise = rng.standard_normal(n) * (up(frication) + 0.08 * up(voicing))  # fricatives, breath
    noise = lfilter([1, -0.9], [1], noise)  # fricatives are bright
    x = 0.3 * src + noise
    out = np.zeros(n)
    r = np.exp(-np.pi * 120 / sr)
    for i, fc in enumerate(formants):
        y = np.zeros(n)
        zi = np.zeros(2)
        track = fc * vowel[:, min(i, 2)]
        for j in range(nb):
            a, e = j * blk, min(n, (j + 1) * blk)
            w = 2 * np.pi * min(track[j], 0.45 * sr) / sr
            y[a:e], zi = lfilter([1 - r], [1, -2 * r * np.cos(w), r * r], x[a:e], zi=zi)
        out += y / (i + 1) ** 0.5
    out += 0.003 * rng.standard_normal(n) * np.abs(out).max()
    return (0.5 * out / (np.abs(out).max() + 1e-9)).astype(np.float32)


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
    """../shared/data beside the checkout, for the few tests that need the whole development corpus (tests that
    need some real speech use `clip_files()`); they skip when it is absent, as in a fresh clone."""
    missing = [d for d in ("librispeech_tc100", "noise", "nonspeech") if not (SHARED_DATA / d).is_dir()]
    if missing:
        pytest.skip(f"needs the whole development corpus, not found at {SHARED_DATA}: {', '.join(missing)} "
                    "(librispeech_tc100: 711 utterances of 251 speakers of LibriSpeech train-clean-100; noise: Speech "
                    "Commands' background noise; nonspeech: game music and effects; each folder's README.md tells "
                    "its source). CI and developer machines have it beside the checkout; a fresh clone does not")
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

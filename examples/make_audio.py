"""Write a small example corpus: 3 synthetic "speakers" x 4 clips, 44.1 kHz stereo WAV (what a phone or a
recorder hands you), under the folder given as the first argument. Speakers differ in pitch and formants."""

import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

SPEAKERS = {"alice": (210, (700, 1200, 2600)), "bob": (110, (500, 1500, 2400)), "carol": (165, (850, 1000, 3000))}


def voice(f0: float, formants, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * sr)
    t = np.arange(n) / sr
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.04 * np.sin(2 * np.pi * 0.6 * t + rng.uniform(0, 6)))) / sr
    src = sum(np.cos(k * phase) / k for k in range(1, int(5000 / f0)))
    out = np.zeros(n)
    for fc in formants:
        r = np.exp(-np.pi * 120 / sr)
        out += lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * fc / sr), r * r], src)
    syllables = (np.sin(2 * np.pi * 3.5 * t + rng.uniform(0, 6)) > -0.2).astype(float)
    out *= np.convolve(syllables, np.hanning(800) / 400, mode="same")
    silence = np.zeros(int(0.4 * sr))
    return np.concatenate([silence, 0.4 * out / np.abs(out).max(), silence])


def main(root: Path, sr: int = 44100) -> None:
    rng = np.random.default_rng(7)
    for name, (f0, formants) in SPEAKERS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            x = voice(f0 * rng.uniform(0.95, 1.05), formants, rng.uniform(2.0, 3.5), sr, rng)
            stereo = np.stack([x, 0.8 * x], 1) + 0.002 * rng.standard_normal((len(x), 2))
            sf.write(root / name / f"{name}_{i}.wav", stereo, sr, subtype="PCM_16")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/audio"))

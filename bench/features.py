"""Benchmark `spkid.features` (log-Mel filterbank) against python_speech_features, librosa and the bare FFT.

Run by hand (one thread, about a minute plus the 2-hour memory run; librosa is used when installed, `pip install -e .[bench]`):

    python bench/features.py                 # --minutes 10 --repeats 7 --hours 2; --no-rss skips the 2-hour run

Protocol:
- Input: 10 minutes of 16 kHz audio (real LibriSpeech speech from ../shared/data, tiled; a generated voice
  when the corpus is absent), float32 in memory. Config: 40 filters, 25 ms hamming window, 10 ms hop, nfft 512,
  pre-emphasis 0.97, 20*log10 output. One thread for everything (OMP/OPENBLAS/MKL_NUM_THREADS=1, workers=1).
- Contenders, run interleaved (A B C D A B C D ...) so that load from other processes hits all alike; the
  median of the repeats is reported:
    spkid        features.compute(signal, cfg)
    psf          python_speech_features.fbank(...) and 20*log10 (the same numbers, float64)
    librosa      melspectrogram(center=False, n_fft=512, win_length=400, hop 160, 40 mels) and power_to_db
    bare FFT     scipy.fft.rfft(frames, n=512, workers=1) of the same frames already cut and windowed,
                 as one call (the floor quoted in the issue); and "blocks": the frames already zero-padded
                 to 512, in 1024-frame blocks (cache-friendly, no padding copy: the strictest floor)
- Goals: psf / spkid >= 6; spkid / bare FFT <= 1.5.
- Memory: `compute_file` of a 2-hour 16-bit WAV in a subprocess; its peak RSS (VmHWM) is compared with
  2 x the output array + 300 MB.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "librispeech_tc100"
SR = 16000

sys.path.insert(0, str(REPO))
from spkid import features, spectral  # noqa: E402
from spkid.features import FeatureConfig  # noqa: E402

CFG = FeatureConfig(kind="fbank", n_filters=40, window="hamming", win_len=0.025, win_step=0.01, preemph=0.97, log="db")


def speech(seconds: float) -> np.ndarray:
    """`seconds` of real speech (LibriSpeech files concatenated and tiled), float32."""
    n = int(seconds * SR)
    if DATA.is_dir():
        parts, total = [], 0
        for p in sorted(DATA.glob("*/*.flac")):
            x = sf.read(str(p), dtype="float32")[0]
            parts.append(x)
            total += len(x)
            if total >= n:
                break
        x = np.concatenate(parts)
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import synth_voice

        x = synth_voice(150.0, (700.0, 1200.0, 2600.0), 60.0)
    return np.resize(x, n).astype(np.float32)


def contenders(x: np.ndarray) -> dict[str, callable]:
    from python_speech_features import base as psf
    from scipy.fft import rfft

    win = spectral.window(CFG.window, CFG.frame_len)
    frames = np.lib.stride_tricks.sliding_window_view(x, CFG.frame_len)[:: CFG.frame_step]
    frames = np.ascontiguousarray(frames * win.astype(np.float32))

    def bare():
        rfft(frames, n=CFG.fft_size, axis=1, workers=1)

    padded = np.zeros((len(frames), CFG.fft_size), np.float32)
    padded[:, : CFG.frame_len] = frames

    def bare_blocked():
        for i in range(0, len(padded), 1024):
            rfft(padded[i : i + 1024], axis=1, workers=1)

    def run_psf():
        mel, _ = psf.fbank(x, SR, CFG.win_len, CFG.win_step, CFG.n_filters, CFG.fft_size, 0, None, CFG.preemph,
                           lambda n: win)
        return 20 * np.log10(mel)

    runs = {"spkid": lambda: features.compute(x, CFG), "psf": run_psf, "bare FFT": bare, "bare FFT, blocks": bare_blocked}
    try:
        import librosa

        def run_librosa():
            y = np.append(x[0], x[1:] - CFG.preemph * x[:-1])
            s = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=CFG.fft_size, hop_length=CFG.frame_step,
                                               win_length=CFG.frame_len, window="hamming", center=False,
                                               n_mels=CFG.n_filters, power=2.0, htk=True)
            return librosa.power_to_db(s, top_db=None)

        run_librosa()  # numba compiles on the first call
        runs["librosa"] = run_librosa
    except ImportError:
        print("librosa not installed: its column is skipped (pip install librosa)", file=sys.stderr)
    return runs


def time_interleaved(runs: dict[str, callable], repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and CPU (this thread's) seconds of each run, interleaved."""
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for f in runs.values():
        f()  # warm-up: plans, caches, page faults
    for _ in range(repeats):
        for name, f in runs.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            f()
            cpu[name].append(time.thread_time() - c0)
            wall[name].append(time.perf_counter() - t0)
    return wall, cpu


# Peak RSS from /proc/self/status VmHWM: ru_maxrss would include the parent's peak (Linux keeps it across exec).
RSS_CHILD = """
import os, sys, time
for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[v] = "1"
def hwm():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
sys.path.insert(0, sys.argv[2])
from spkid import features
import scipy.fft, soundfile
cfg = features.FeatureConfig(kind="fbank", n_filters=40, window="hamming")
base = hwm()
t0 = time.perf_counter()
out = features.compute_file(sys.argv[1], cfg)
dt = time.perf_counter() - t0
print(out.shape[0], out.nbytes, base, hwm(), dt)
"""


def rss_run(hours: float, x: np.ndarray) -> None:
    with tempfile.TemporaryDirectory(prefix="spkid-bench-") as tmp:
        path = Path(tmp) / "long.wav"
        n = int(hours * 3600 * SR)
        with sf.SoundFile(str(path), "w", SR, 1, subtype="PCM_16") as f:
            for i in range(0, n, len(x)):
                f.write(x[: min(len(x), n - i)])
        cmd = [sys.executable, "-c", RSS_CHILD, str(path), str(REPO)]
        frames, nbytes, base, peak, dt = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    nbytes, base, peak = int(nbytes), int(base), int(peak)
    bound = 2 * nbytes + 300 * 2**20
    mb = 2**20
    print(f"\n{hours:g}-hour file ({n} samples, {int(frames)} frames), compute_file in a subprocess: {float(dt):.1f} s")
    print(f"  output array {nbytes / mb:.0f} MB; peak RSS {peak / mb:.0f} MB (interpreter + imports {base / mb:.0f} MB); "
          f"bound 2 x output + 300 MB = {bound / mb:.0f} MB -> {'OK' if peak < bound else 'OVER'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--hours", type=float, default=2.0, help="length of the memory run's file")
    ap.add_argument("--no-rss", action="store_true", help="skip the long-file memory run")
    args = ap.parse_args()

    x = speech(args.minutes * 60)
    runs = contenders(x)
    wall, cpu = time_interleaved(runs, args.repeats)
    print(f"{args.minutes:g} min of 16 kHz audio, fbank 40 filters, one thread; median of {args.repeats} interleaved "
          f"runs, wall clock (min..max) and CPU time of the thread (less sensitive to other processes on the machine)")
    for name in runs:
        w, c = np.median(wall[name]), np.median(cpu[name])
        print(f"  {name:18s} wall {w * 1000:7.1f} ms ({min(wall[name]) * 1000:.1f}..{max(wall[name]) * 1000:.1f})"
              f"   cpu {c * 1000:7.1f} ms   {args.minutes * 60 / w:6.0f} x real time")
    print(f"{'ratio':26s} {'wall':>6s} {'cpu':>6s}")
    for label, num, den, goal in (("psf / spkid", "psf", "spkid", "(goal >= 6)"),
                                  ("librosa / spkid", "librosa", "spkid", ""),
                                  ("spkid / bare FFT", "spkid", "bare FFT", "(goal <= 1.5)"),
                                  ("spkid / bare FFT, blocks", "spkid", "bare FFT, blocks", "")):
        if num in runs and den in runs:
            rw = np.median(wall[num]) / np.median(wall[den])
            rc = np.median(cpu[num]) / np.median(cpu[den])
            print(f"  {label:24s} {rw:6.2f} {rc:6.2f}   {goal}")
    if not args.no_rss:
        rss_run(args.hours, x)


if __name__ == "__main__":
    main()

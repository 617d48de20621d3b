"""Convert an hour of 44.1 kHz stereo WAV to 16 kHz mono FLAC: spkid (-j 1, -j 2) next to sox and ffmpeg.

Usage: python bench/convert.py [--minutes 60] [--files 60] [--work DIR]

The hour is split into files (a corpus is many files; -j parallelises across them). sox and ffmpeg convert the
same files one after another, single-threaded, with their default high-quality resamplers. Every tool runs
in the same session, in turns (A B C ... A B C ...), and the best of --repeat runs is reported.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def make_corpus(folder: Path, minutes: float, files: int) -> list[Path]:
    rng = np.random.default_rng(0)
    seconds = minutes * 60 / files
    paths = []
    for i in range(files):
        n = int(seconds * 44100)
        t = np.arange(n) / 44100
        x = 0.1 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(n)
        p = folder / f"clip{i:03d}.wav"
        sf.write(p, np.stack([x, 0.7 * x], 1).astype(np.float32), 44100, subtype="PCM_16")
        paths.append(p)
    return paths


def run(cmds: list[list[str]], **kw) -> float:
    t = time.perf_counter()
    for c in cmds:
        subprocess.run(c, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--files", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="spkid-bench-"))
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    paths = make_corpus(src, a.minutes, a.files)
    lst = work / "list.txt"
    lst.write_text("".join(f"{p}\n" for p in paths))
    spkid = [sys.executable, "-m", "spkid"]

    def out(name: str) -> Path:
        d = work / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        return d

    tools = {
        "spkid -j 1": lambda: run([[*spkid, "-q", "convert", str(lst), "-d", str(out("spkid1"))]]),
        "spkid -j 2": lambda: run([[*spkid, "-q", "convert", str(lst), "-d", str(out("spkid2")), "-j", "2"]]),
    }
    if shutil.which("sox"):
        tools["sox (1 thread)"] = lambda: run(
            [["sox", "-q", str(p), "-b", "16", "-c", "1", str(out_sox / (p.stem + ".flac")), "rate", "-h", "16000"]
             for p in paths for out_sox in [work / "sox"]]
        )
    if shutil.which("ffmpeg"):
        tools["ffmpeg (1 thread)"] = lambda: run(
            [["ffmpeg", "-v", "error", "-y", "-threads", "1", "-i", str(p), "-ac", "1", "-ar", "16000",
              "-sample_fmt", "s16", str(work / "ffmpeg" / (p.stem + ".flac"))] for p in paths]
        )
    (work / "sox").mkdir(exist_ok=True)
    (work / "ffmpeg").mkdir(exist_ok=True)
    best = {name: float("inf") for name in tools}
    for _ in range(a.repeat):
        for name, fn in tools.items():
            best[name] = min(best[name], fn())
    audio_s = a.minutes * 60
    base = best.get("sox (1 thread)")
    print(f"{a.minutes:g} min of 44.1 kHz stereo WAV in {a.files} files -> 16 kHz mono FLAC (best of {a.repeat})")
    print(f"{'tool':<20}{'seconds':>10}{'x real time':>14}{'vs sox':>10}")
    for name, s in best.items():
        ratio = f"{base / s:.2f}x" if base else "-"
        print(f"{name:<20}{s:>10.2f}{audio_s / s:>14.0f}{ratio:>10}")
    if a.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

"""Whole-process latency of spkid's per-call commands (issue 16), against baselines measured in the same run.

Each command runs as a user runs it, a fresh process from the venv's `spkid` script, pinned to one core
(`--cores`), stdout to a pipe; after one untimed run (page cache; .pyc files are written as an install has them,
even where PYTHONDONTWRITEBYTECODE is set) the median wall clock of `--runs` runs is reported. Measured, on LibriSpeech clips of ../shared/data/librispeech_tc100:
- `spkid --help`; one TAB completion, `spkid ve<TAB>` in bash: a fresh bash that sources completions/spkid.bash
  and calls its function (static: no Python runs; beside it, the dynamic callback `_SPKID_COMPLETE=complete_bash
  spkid` that completion scripts generated before used);
- `spkid vad one.wav`; `spkid verify a.wav b.wav`; `spkid identify clip.wav -g enroll/` (a 12 s clip, 6 enrolled
  speakers); `spkid vad --segments` on 30 minutes of audio (a 16-bit WAV), as a multiple of real time;
- baselines: `python -c "import torch"`, and a minimal script embedding clip.wav with the resemblyzer package;
- in process, one thread: the bundled model's real-time factor (seconds of compute per second of audio, best of
  10) on the 12 s clip, ONNX and torch, beside WeSpeaker's published one-thread onnxruntime figures.
With a CLI that has `--backend`, identify and verify are also timed with `--backend torch`.

    python bench/latency.py                   # about a minute
    python bench/latency.py --runs 5 --json latency.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "librispeech_tc100"
SPKID = str(Path(sys.executable).parent / "spkid")
SR = 16000
# WeSpeaker's runtime figures (onnxruntime, one thread, CPU): RTF of its CAM++ and ResNet34 encoders
PUBLISHED_RTF = {"WeSpeaker CAM++": 0.023, "WeSpeaker ResNet34": 0.061}
# what a TAB costs, and more: the script is sourced once per shell, not per press
TAB = (f"source {REPO / 'completions/spkid.bash'}; COMP_WORDS=(spkid ve); COMP_CWORD=1; _spkid_completion spkid; "
       'echo "${COMPREPLY[@]}"')
RESEMBLYZER_SCRIPT = """\
import sys
from resemblyzer import VoiceEncoder, preprocess_wav
VoiceEncoder("cpu", verbose=False).embed_utterance(preprocess_wav(sys.argv[1]))
"""


def prepare(data: Path, work: Path) -> dict[str, Path]:
    """one.wav, a.wav/b.wav (two clips of one speaker), clip.wav (12 s), enroll/ (6 speakers, 2 clips each; built
    with `spkid enroll`, untimed) and long.wav (30 min: every clip in turn, 0.5 s apart)."""
    speakers = [sorted(d.glob("*.flac")) for d in sorted(p for p in data.iterdir() if p.is_dir())]
    speakers = [s for s in speakers if len(s) >= 2]
    read = lambda f: sf.read(f, dtype="float32")[0]  # noqa: E731
    out = {"one": work / "one.wav", "a": work / "a.wav", "b": work / "b.wav", "clip": work / "clip.wav",
           "long": work / "long.wav", "enroll": work / "enroll"}
    sf.write(out["one"], read(speakers[0][0]), SR)
    sf.write(out["a"], read(speakers[1][0]), SR)
    sf.write(out["b"], read(speakers[1][1]), SR)
    parts, n = [], 0
    for f in (f for s in speakers[2:] for f in s):  # enrolled speakers first: clip.wav is one of them speaking
        parts.append(read(f))
        n += len(parts[-1])
        if n >= 12 * SR:
            break
    sf.write(out["clip"], np.concatenate(parts)[: 12 * SR], SR)
    gap = np.zeros(SR // 2, np.float32)
    parts, n = [], 0
    for f in (f for s in speakers for f in s):
        parts += [read(f), gap]
        n += len(parts[-2]) + len(gap)
        if n >= 1800 * SR:
            break
    sf.write(out["long"], np.concatenate(parts)[: 1800 * SR], SR, subtype="PCM_16")
    lst = work / "enroll.txt"
    lst.write_text("".join(f"{f}\t{s[0].parent.name}\n" for s in speakers[2:8] for f in s[:2]), encoding="utf-8")
    proc = subprocess.run([SPKID, "enroll", str(lst), "-g", str(out["enroll"])], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"spkid enroll failed:\n{proc.stderr}")
    (work / "resemblyzer_embed.py").write_text(RESEMBLYZER_SCRIPT, encoding="utf-8")
    return out


def timed(argv: list[str], runs: int, cores: set[int], env: dict | None = None) -> float:
    """Median wall-clock seconds of `runs` runs of `argv` (after one untimed run), pinned to `cores`."""
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # an install has .pyc files
    full_env.update(env or {})
    times = []
    for i in range(runs + 1):
        t = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, env=full_env, preexec_fn=lambda: os.sched_setaffinity(0, cores))
        dt = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr.decode(errors='replace')[-2000:]}")
        if i:
            times.append(dt)
    return statistics.median(times)


def rtf(clip: Path, backend: str, runs: int) -> tuple[float, float]:
    """In-process real-time factors of the bundled model on one thread: (whole embedding: VAD, features, network;
    network alone), the best of `runs` after a warm-up (milliseconds of work that other processes on the core
    easily double: the minimum is the figure that does not depend on them)."""
    from spkid.embedding import Embedder

    emb = Embedder.from_model(None, "cpu", threads=1, backend=backend)
    prep = emb.prep.prepare_file(str(clip))
    seconds = sf.info(str(clip)).duration
    whole, net = [], []
    for i in range(runs + 1):
        t = time.perf_counter()
        emb.embed_prepared([emb.prep.prepare_file(str(clip))])
        t1 = time.perf_counter()
        emb.embed_prepared([prep])
        t2 = time.perf_counter()
        if i:
            whole.append((t1 - t) / seconds)
            net.append((t2 - t1) / seconds)
    return min(whole), min(net)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="LibriSpeech-like folder of speaker folders of .flac")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per command (median)")
    ap.add_argument("--cores", type=int, default=1, help="cores each command may use (pinned)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--rtf-of", type=Path, help=argparse.SUPPRESS)  # the in-process part, run in a fresh process
    args = ap.parse_args()
    if args.rtf_of:
        print(json.dumps({b: rtf(args.rtf_of, b, max(args.runs, 10)) for b in ("onnx", "torch")}))
        return
    if not args.data.is_dir():
        sys.exit(f"{args.data}: not found (the development corpus, ../shared/data/librispeech_tc100)")
    cores = set(sorted(os.sched_getaffinity(0))[: args.cores])
    os.environ.setdefault("OMP_NUM_THREADS", str(len(cores)))
    with tempfile.TemporaryDirectory(prefix="spkid-latency-") as tmp:
        work = Path(tmp)
        f = prepare(args.data, work)
        has_backend = "--backend" in subprocess.run([SPKID, "identify", "--help"], capture_output=True, text=True).stdout
        has_resemblyzer = importlib.util.find_spec("resemblyzer") is not None
        rows: list[tuple[str, float, str, str]] = []  # what, value, unit, goal

        def cmd(what: str, argv: list[str], goal: float | None = None, env: dict | None = None) -> float:
            s = timed(argv, args.runs, cores, env)
            rows.append((what, s, "s", f"<= {goal} s" if goal else "baseline"))
            print(f"  {what}: {s:.3f} s", file=sys.stderr, flush=True)
            return s

        print(f"latency: {args.runs} runs per command, {len(cores)} core(s)", file=sys.stderr)
        cmd('python -c "import torch"', [sys.executable, "-c", "import torch"])
        if has_resemblyzer:
            cmd("resemblyzer package: embed clip.wav (12 s)", [sys.executable, str(work / "resemblyzer_embed.py"), str(f["clip"])])
        cmd("spkid --help", [SPKID, "--help"], 0.25)
        cmd("TAB completion (spkid ve<TAB>, bash)", ["bash", "--norc", "-c", TAB], 0.15)
        cmd("  the old dynamic callback (_SPKID_COMPLETE)", [SPKID],
            env={"_SPKID_COMPLETE": "complete_bash", "COMP_WORDS": "spkid ve", "COMP_CWORD": "1"})
        cmd("spkid vad one.wav", [SPKID, "vad", str(f["one"])], 0.3)
        cmd("spkid verify a.wav b.wav", [SPKID, "verify", str(f["a"]), str(f["b"])], 0.6)
        cmd("spkid identify clip.wav -g enroll/ (12 s, 6 speakers)", [SPKID, "identify", str(f["clip"]), "-g", str(f["enroll"])], 0.5)
        if has_backend:
            cmd("  the same, --backend torch", [SPKID, "identify", str(f["clip"]), "-g", str(f["enroll"]), "--backend", "torch"])
            cmd("spkid verify a.wav b.wav --backend torch", [SPKID, "verify", str(f["a"]), str(f["b"]), "--backend", "torch"])
        s = timed([SPKID, "vad", "--segments", str(f["long"])], args.runs, cores)
        rows.append(("spkid vad --segments, 30 min of audio", 1800 / s, "x real time", ">= 2000 x"))
        print(f"  vad --segments 30 min: {s:.3f} s", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, "--rtf-of", str(f["clip"]), "--runs", str(args.runs)],
                              capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, cores))
        if proc.returncode != 0:
            sys.exit(f"the real-time factor run failed:\n{proc.stderr[-2000:]}")
        for backend, (whole, net) in json.loads(proc.stdout).items():
            rows.append((f"bundled model RTF, 1 thread, {backend}: VAD + features + network", whole, "RTF", "report"))
            rows.append((f"bundled model RTF, 1 thread, {backend}: network alone", net, "RTF", "report"))
        for name, value in PUBLISHED_RTF.items():
            rows.append((f"{name} (published, onnxruntime, 1 thread)", value, "RTF", "published"))

    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'measured':>14}  goal")
    for what, value, unit, goal in rows:
        shown = f"{value:.3f} s" if unit == "s" else f"{value:,.0f} x" if unit.startswith("x") else f"{value:.4f}"
        ok = ""
        if goal.startswith("<="):
            ok = "  ok" if value <= float(goal.split()[1]) else "  MISSED"
        elif goal.startswith(">="):
            ok = "  ok" if value >= float(goal.split()[1]) else "  MISSED"
        print(f"{what:{width}}  {shown:>14}  {goal}{ok}")
    if args.json:
        args.json.write_text(json.dumps([{"what": w, "value": v, "unit": u, "goal": g} for w, v, u, g in rows], indent=1))


if __name__ == "__main__":
    main()

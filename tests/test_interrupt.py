"""Ctrl-C in any command: exit 130, nothing on stderr but spkid's own lines (no traceback), no temporary files,
no partial outputs, and outputs that existed before the run unchanged.

Each case runs the real `spkid` in its own session and sends SIGINT to the whole process group, as a terminal's
Ctrl-C does (joblib workers included). When to send it, robustly on a loaded machine:
1. The main input goes in on stdin behind 1 MiB of `#` comment lines (which every list, trials and scores reader
   skips). Writing it returns only once the command has read all but a pipe buffer of it, so from then on
   spkid is inside `main()` and reading its input: never still starting up.
2. Then wait until the command is at work: an output or temporary file appears (commands that write one file per
   input), an input audio file is open in it (/proc/PID/fd), or the first epoch is logged (train); or at most
   `settle` seconds. The inputs take far longer than that to process, so the command is always mid-way.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf

from conftest import SPEAKERS, synth_voice

COPIES = 240  # hard links of one clip: inputs that take much longer than the wait before the interrupt
PADDING = b"# padding: spkid has read its input when writing this returns\n" * (2**20 // 63)
TEMP = re.compile(r"^\..*\.(tmp|old)|\.lock$")  # atomic_write/atomic_path temp files, gallery temp/old folders, lock
ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict:
    """Inputs: COPIES hard links (spk0..spk2 folders) of a 30 s 16 kHz clip and of a 20 s 44.1 kHz stereo one,
    3 speakers x 2 clips of 2 s for training, a tiny model and a gallery made with it; a trials list over the
    16 kHz copies and 300,000 labelled scores."""
    from test_embedding import make_tiny_model

    from spkid.cli import main

    d = tmp_path_factory.mktemp("intr")
    clip = d / "clip16.wav"
    sf.write(clip, synth_voice(150.0, (600.0, 1700.0), 30.0), 16000, subtype="PCM_16")
    raw = d / "raw44.wav"
    voice = synth_voice(180.0, (700.0, 1500.0), 20.0, sr=44100, seed=2)
    sf.write(raw, np.stack([voice, 0.5 * voice], axis=1), 44100, subtype="PCM_16")
    for name, src in (("in16", clip), ("in44", raw)):
        for i in range(COPIES):
            p = d / name / f"spk{i % 3}" / f"c{i:03d}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, p)
    train = d / "train.txt"
    lines = []
    for s, (name, (f0, formants)) in enumerate(SPEAKERS.items()):
        (d / "spk" / name).mkdir(parents=True)
        for i in range(2):
            p = d / "spk" / name / f"{name}_{i}.wav"
            sf.write(p, synth_voice(f0, formants, 2.0, seed=10 * s + i), 16000, subtype="PCM_16")
            lines.append(f"{p}\n")
    train.write_text("".join(lines))
    model = make_tiny_model(d / "tiny.pt")
    with pytest.raises(SystemExit) as e:
        main(["-q", "enroll", str(train), "-g", str(d / "gallery"), "-m", str(model), "--threads", "1"])
    assert e.value.code == 0
    wavs = sorted((d / "in16").rglob("*.wav"))
    trials = "".join(f"{int(i % 3 == j % 3)} {wavs[i]} {wavs[j]}\n" for i in range(60) for j in range(60, 120))
    n = 300_000
    target = np.arange(n) % 10 == 0
    values = np.random.default_rng(0).standard_normal(n) + 2 * target
    scores = "".join(f"e{i % 997}\tt{i}\t{v:.6f}\t{'target' if t else 'nontarget'}\n"
                     for i, (v, t) in enumerate(zip(values, target)))
    return {"in16": d / "in16", "in44": d / "in44", "train": train, "model": model, "gallery": d / "gallery",
            "trials": trials.encode(), "scores": scores.encode()}


def listing(folder: Path) -> bytes:
    return "".join(f"{p}\n" for p in sorted(folder.rglob("*.wav"))).encode()


def snapshot(*folders: Path) -> dict[str, str]:
    """sha256 of every file below `folders` (missing folders are empty)."""
    out = {}
    for f in folders:
        for p in sorted(f.rglob("*")) if f.exists() else []:
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def temp_files(*folders: Path) -> list[str]:
    return [str(p) for f in folders if f.exists() for p in f.rglob("*") if TEMP.search(p.name)]


def _family(pid: int) -> list[int]:
    """`pid` and its descendants (joblib workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def opens_file_under(folder: Path) -> Callable[[int], bool]:
    """Whether process `pid` (or a worker of it) has a file below `folder` open: it is reading its inputs."""
    prefix = str(folder) + os.sep

    def check(pid: int) -> bool:
        for p in _family(pid):
            try:
                fds = os.listdir(f"/proc/{p}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{p}/fd/{fd}").startswith(prefix):
                        return True
                except OSError:
                    pass
        return False

    return check


@dataclass
class Case:
    args: list[str]
    stdin: bytes
    watch: list[Path]  # folders that must end with no temp file and exactly the files they held before the run
    ready: Callable[[int], bool] = lambda pid: False
    settle: float = 3.0  # seconds to wait at most, after the input was read, for `ready`


@dataclass
class Outcome:
    code: int | None = None
    err: str = ""
    before: dict[str, str] = field(default_factory=dict)
    after: dict[str, str] = field(default_factory=dict)
    temps: list[str] = field(default_factory=list)
    failure: BaseException | None = None


def as_from_a_terminal() -> None:
    """In the child before exec: SIGINT back to its default, as in a command typed at a terminal. A test run started
    in the background (`cmd &` in a non-interactive shell ignores SIGINT, and children inherit that) would otherwise
    start spkid with Ctrl-C ignored, as it must stay then (nohup's convention), and nothing would be tested."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(case: Case, cwd: Path, io: Path) -> tuple[int, str]:
    """Run `spkid ARGS` with `case.stdin`, interrupt it at work (module docstring); (exit code, stderr)."""
    err = io / "stderr.txt"
    with open(io / "stdout.bin", "wb") as out, open(err, "wb") as errf:
        proc = subprocess.Popen(["spkid", *map(str, case.args)], stdin=subprocess.PIPE, stdout=out, stderr=errf,
                                cwd=cwd, start_new_session=True, preexec_fn=as_from_a_terminal,
                                env={**os.environ, **ENV, "JOBLIB_TEMP_FOLDER": str(cwd / "joblib")})
    try:
        def feed() -> None:
            try:
                proc.stdin.write(PADDING + case.stdin)
                proc.stdin.close()
            except BrokenPipeError:
                pass

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        writer.join(120)
        assert not writer.is_alive(), "spkid did not read its input"
        t0 = time.monotonic()
        while time.monotonic() - t0 < case.settle and not case.ready(proc.pid):
            assert proc.poll() is None, f"ended before the interrupt: {err.read_text()}"
            time.sleep(0.005)
        assert proc.poll() is None, f"ended before the interrupt: {err.read_text()}"
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return code, err.read_text(errors="replace")


def make_case(name: str, w: dict, cwd: Path) -> Case:
    """The command line of case `name`, with outputs of an earlier run placed in `cwd` (the case's own folder)."""
    in16, in44 = w["in16"], w["in44"]
    on16 = opens_file_under(in16)
    out = cwd / "out"
    out.mkdir()
    # an output from an earlier run (kept: not redone without --overwrite) and an unrelated file
    for folder, suffix in (("conv", ".flac"), ("voiced", ".flac"), ("feats", ".npy")):
        (cwd / folder / "spk2").mkdir(parents=True)
        (cwd / folder / "spk2" / f"c{COPIES - 1:03d}{suffix}").write_bytes(b"from an earlier run")
        (cwd / folder / "other.txt").write_text("not ours")
    (out / "emb.npy").write_bytes(b"earlier output")
    (out / "scores.txt").write_text("earlier scores\n")
    (out / "model.pt").write_bytes(b"an earlier model")
    (out / "det.png").write_bytes(b"an earlier plot")
    gallery = cwd / "gallery"
    shutil.copytree(w["gallery"], gallery)
    model, t1 = w["model"], ["--threads", "1"]

    def first_file(folder: str, skip: tuple[str, ...] = ()) -> Callable[[int], bool]:
        had = set(snapshot(cwd / folder))
        return lambda pid: any(str(p) not in had and p.name not in skip and p.is_file()
                               for p in (cwd / folder).rglob("*"))

    cases = {
        "convert": lambda: Case(["convert", "-d", cwd / "conv", "--root", in44], listing(in44), [cwd / "conv"],
                                first_file("conv")),
        "convert -j 2": lambda: Case(["convert", "-d", cwd / "conv", "--root", in44, "-j", "2"], listing(in44),
                                     [cwd / "conv", cwd / "joblib"], first_file("conv"), settle=10.0),
        "vad": lambda: Case(["vad", "-o", out / "vad.npy"], listing(in16), [out], on16),
        "vad --trim": lambda: Case(["vad", "--trim", "-d", cwd / "voiced", "--root", in16], listing(in16),
                                   [cwd / "voiced"], first_file("voiced")),
        # right after features.json is written, and mid-list
        "features": lambda: Case(["features", "-d", cwd / "feats", "--root", in16], listing(in16), [cwd / "feats"],
                                 first_file("feats")),
        "features mid-list": lambda: Case(["features", "-d", cwd / "feats", "--root", in16], listing(in16),
                                          [cwd / "feats"], first_file("feats", skip=("features.json",))),
        "train": lambda: Case(["train", "-o", out / "model.pt", "-m", "thin_resnet", "--small", "--loss", "softmax",
                               "--crop", "0.5", "-b", "6", "--val-speakers", "0", "--epochs", "500", *t1],
                              w["train"].read_bytes(), [out], lambda pid: (out / "model.run" / "log.jsonl").exists(),
                              settle=60.0),
        "embed": lambda: Case(["embed", "-m", model, "-o", out / "emb.npy", *t1], listing(in16), [out], on16, 30.0),
        "enroll": lambda: Case(["enroll", "-g", gallery, "-m", model, *t1], listing(in16), [cwd], on16, 30.0),
        "verify --trials": lambda: Case(["verify", "--trials", "-", "-m", model, "-o", out / "scores.txt", *t1],
                                        w["trials"], [out], on16, 30.0),
        "identify": lambda: Case(["identify", "-g", gallery, *t1], listing(in16), [gallery.parent], on16, 30.0),
        "score": lambda: Case(["score", "--bootstrap", "5000", "--plot", out / "det.png"], w["scores"], [out],
                              settle=1.0),
    }
    return cases[name]()


CASES = ["convert", "convert -j 2", "vad", "vad --trim", "features", "features mid-list", "train", "embed", "enroll",
         "verify --trials", "identify", "score"]


@pytest.fixture(scope="module")
def outcomes(w, tmp_path_factory) -> dict[str, Outcome]:
    """Every case, three at a time (each is mostly one busy thread; the waits overlap)."""
    folders = {name: tmp_path_factory.mktemp(name.replace(" ", "_")) for name in CASES}

    def run(name: str) -> Outcome:
        o = Outcome()
        try:
            cwd, io = folders[name] / "work", folders[name] / "io"
            cwd.mkdir()
            io.mkdir()
            case = make_case(name, w, cwd)
            o.before = snapshot(*case.watch)
            o.code, o.err = interrupt(case, cwd, io)
            o.after, o.temps = snapshot(*case.watch), temp_files(*case.watch)
            if name == "train":  # the run folder (checkpoint, log) is what --resume continues from
                o.after = {k: v for k, v in o.after.items() if "/model.run/" not in k}
        except BaseException as e:  # reported by the case's test
            o.failure = e
        return o

    with ThreadPoolExecutor(3) as pool:
        return dict(zip(CASES, pool.map(run, CASES)))


@pytest.mark.parametrize("name", CASES)
def test_ctrl_c_leaves_nothing_behind(name: str, outcomes):
    o = outcomes[name]
    if o.failure is not None:
        raise o.failure
    cmd = name.split()[0]
    assert o.code == 130, o.err
    # only spkid's own lines (logs, or its `interrupted` note): no traceback, no worker noise, no "Exception ignored"
    assert all(line.startswith(f"spkid {cmd}: ") for line in o.err.splitlines() if line.strip()), o.err
    assert o.temps == []
    assert o.after == o.before  # nothing new (no partial output), nothing changed


SWALLOWED = """
import os, signal, sys
import soundfile

close, fired = soundfile.SoundFile.__del__, []


def interrupted_del(self):  # Ctrl-C while a SoundFile is garbage-collected: Python swallows the KeyboardInterrupt
    if not fired:
        fired.append(1)
        os.kill(os.getpid(), signal.SIGINT)
    close(self)


soundfile.SoundFile.__del__ = interrupted_del
from spkid.cli import main

main(sys.argv[1:])
"""


def test_ctrl_c_swallowed_inside_a_destructor_still_stops_the_command(tmp_path):
    """A Ctrl-C that lands in a `__del__` (where Python ignores exceptions) is not lost: exit 130, no output."""
    clips = []
    for i in range(3):
        clips.append(tmp_path / f"c{i}.wav")
        sf.write(clips[-1], synth_voice(150.0, (600.0, 1700.0), 1.0, seed=i), 16000, subtype="PCM_16")
    (tmp_path / "list.txt").write_text("".join(f"{c}\n" for c in clips))
    out = tmp_path / "vad.npy"
    r = subprocess.run([sys.executable, "-c", SWALLOWED, "vad", str(tmp_path / "list.txt"), "-o", str(out)],
                       capture_output=True, text=True, timeout=120, preexec_fn=as_from_a_terminal)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip() == "spkid vad: interrupted", r.stderr
    assert not out.exists() and temp_files(tmp_path) == []

"""A 2-hour recording through every command that reads audio: peak memory stays bounded (measured, asserted).

Each command runs as a real `spkid` subprocess; its peak RSS comes from `os.wait4` (`ru_maxrss`, KiB on Linux).
The child is started by a tiny wrapper process that forks it and waits for it: Linux carries the peak RSS of the
process that exec()s into the new program, so a child spawned straight from pytest (hundreds of MB) would report
at least pytest's own peak.

The bounds are written as `BASE + k * S`, where S is the 2-hour signal decoded to float32 (115.2 M samples,
439 MiB) and BASE the interpreter and imports (under 100 MiB for the numpy commands, 300 MiB with torch: the
bases below have room). Before these bounds were set, the peak of `vad` was 2.3 GiB (5.1 S, a whole-file STFT),
of `convert` 0.93 GiB (2.1 S) and of `embed` 2.5 GiB (5.5 S); now:

- convert (16 kHz mono in, FLAC out): the decoded signal once, written in blocks: k = 1.25.
- vad, vad --trim: the signal once, the detector in blocks, voiced segments written without joining: k = 1.25.
- features: streamed in blocks, only the output (0.25 S for 40 filters) is whole: k = 0.5.
- embed, enroll: the signal, its voiced part joined (up to S) and its features and windows (0.1-0.25 S each):
  k = 2.25. A float64 copy on top (what `vad` and the level statistics made) is 2 S more.
- verify, identify CLIP (the same path, here with --no-vad): the signal, its features and windows: k = 1.5.
- identify --in: the signal once; windows are prepared batch by batch as the network takes them, so their
  number (here 3,600 with --hop 2, to keep the test short) does not matter: k = 1.25.

Any of these growing with the recording by another whole copy of the signal fails its bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import SPEAKERS, synth_voice

SR = 16000
HOURS = 2.0
N = int(HOURS * 3600 * SR)
S_MB = N * 4 / 2**20  # the recording as float32, MiB
BASE_NUMPY_MB = 200
BASE_TORCH_MB = 400
THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# fork + exec the command, wait4 for it, write "status maxrss_kib" to the file named first, exit with its status
WRAPPER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as f:
    f.write(f"{code} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime:.1f}")
sys.exit(code if code >= 0 else 128 - code)
"""


def run_measured(args: list[str], tmp: Path, stdout: Path | None = None) -> tuple[int, float, str, float]:
    """Run `spkid ARGS` (stdout to a file), return (exit code, peak RSS in MiB, stderr, CPU seconds)."""
    rss_file = tmp / f".rss-{os.urandom(4).hex()}"
    with open(stdout or os.devnull, "wb") as out:
        proc = subprocess.run([sys.executable, "-S", "-c", WRAPPER, str(rss_file), "spkid", *map(str, args)],
                              stdout=out, stderr=subprocess.PIPE, env={**os.environ, **THREADS})
    code, kib, cpu = rss_file.read_text().split()
    assert int(code) == proc.returncode
    return proc.returncode, int(kib) / 1024, proc.stderr.decode(errors="replace"), float(cpu)


def make_model(path: Path) -> Path:
    """A very small BLSTM (40 filters every 20 ms, 2 s windows every 2 s): the network is a small part of the
    run, so the test measures the audio path rather than waiting on a large model."""
    import torch

    from spkid import modelfile
    from spkid.models import build_model

    torch.manual_seed(0)
    kwargs = {"feat_dim": 40, "embed_dim": 16, "hidden": 8, "num_layers": 1}
    net = build_model("blstm", **kwargs)
    spec = modelfile.ModelSpec(model={"name": "blstm", "kwargs": kwargs}, features={"kind": "fbank", "n_filters": 40, "win_step": 0.02},
                               embedding={"window_s": 2.0, "hop_s": 2.0, "min_s": 0.5})
    modelfile.save(path, net, spec)
    return path


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory) -> dict[str, Path]:
    """long/long.wav: 2 hours of 16-bit 16 kHz mono, 20 s turns of the three generated speakers with 5 s of
    near-silence between them, tiled (written block by block: the test process never holds it); 4 s enrolment
    clips of each speaker; the small model."""
    d = tmp_path_factory.mktemp("long")
    turns = []
    for s, (name, (f0, formants)) in enumerate(SPEAKERS.items()):
        turns.append(synth_voice(f0, formants, 20.0, seed=s))
        turns.append(0.001 * np.random.default_rng(s).standard_normal(5 * SR).astype(np.float32))
        (d / "clips" / name).mkdir(parents=True)
        sf.write(d / "clips" / name / f"{name}.wav", synth_voice(f0, formants, 4.0, seed=50 + s), SR, subtype="PCM_16")
    block = np.round(np.concatenate(turns) * 32767).astype(np.int16)
    path = d / "rec" / "long.wav"
    path.parent.mkdir()
    with sf.SoundFile(path, "w", SR, 1, "PCM_16", format="WAV") as f:
        for a in range(0, N, len(block)):
            f.write(block[: min(len(block), N - a)])
    enroll = d / "enroll.txt"
    enroll.write_text("".join(f"{d / 'clips' / n / f'{n}.wav'}\t{n}\n" for n in SPEAKERS) + f"{path}\tlong\n")
    return {"dir": d, "wav": path, "enroll": enroll, "model": make_model(d / "small.pt"),
            "alice": d / "clips" / "alice" / "alice.wav"}


def test_two_hour_recording_keeps_memory_bounded(long_wav, tmp_path: Path):
    wav, model, alice = long_wav["wav"], long_wav["model"], long_wav["alice"]
    gal = tmp_path / "gallery"
    t = ["--threads", "1"]
    numpy_bound = lambda k: BASE_NUMPY_MB + k * S_MB  # noqa: E731
    torch_bound = lambda k: BASE_TORCH_MB + k * S_MB  # noqa: E731
    # verify and identify CLIP share embed's audio path; without VAD here (embed and enroll measure it), which
    # keeps the test short: the signal and its features and windows, k = 1.5
    jobs = {  # name: (arguments, bound in MiB)
        "enroll": (["enroll", long_wav["enroll"], "-g", gal, "-m", model, *t], torch_bound(2.25)),
        "embed": (["embed", wav, "-m", model, *t], torch_bound(2.25)),
        "verify": (["verify", wav, alice, "-m", model, "--no-vad", *t], torch_bound(1.5)),
        "identify --in": (["identify", "--in", wav, "-g", gal, "--hop", "2", *t], torch_bound(1.25)),
        "identify": (["identify", wav, "-g", gal, "--no-vad", *t], torch_bound(1.5)),
        "convert": (["convert", wav, "-d", tmp_path / "conv"], numpy_bound(1.25)),
        "vad": (["vad", wav, "--segments"], numpy_bound(1.25)),
        "vad --trim": (["vad", "--trim", "-d", tmp_path / "voiced", wav], numpy_bound(1.25)),
        "features": (["features", wav, "-d", tmp_path / "feats"], numpy_bound(0.5)),
    }
    results: dict[str, tuple[int, float, str, float]] = {}

    def go(name: str) -> None:
        results[name] = run_measured(jobs[name][0], tmp_path, tmp_path / f"{name.replace(' ', '_')}.out")

    # three at a time (each child is one thread; on a busy two-core machine this still shortens the wait), the
    # longest first; identify needs the gallery that enroll makes
    with ThreadPoolExecutor(3) as pool:
        first = [pool.submit(go, name) for name in ("enroll", "embed", "verify")]
        first[0].result()
        rest = [pool.submit(go, name) for name in list(jobs)[3:]]
        for f in first + rest:
            f.result()
    report = {name: f"{rss:.0f} MiB (bound {jobs[name][1]:.0f})" for name, (_, rss, _, _) in results.items()}
    for name, (code, rss, err, _) in results.items():
        assert code == 0, f"spkid {name} failed: {err}"
        assert rss < jobs[name][1], f"spkid {name}: peak RSS {rss:.0f} MiB over its bound; all: {report}"

    # and the outputs are those of a 2-hour file, not of an early exit
    conv = next((tmp_path / "conv").rglob("*.flac"))
    assert sf.info(conv).frames == N
    segs = np.load(tmp_path / "vad.out")
    assert segs.shape[1] == 3 and 0.6 * N < (segs[:, 2] - segs[:, 1]).sum() < 0.95 * N
    assert 0.6 * N < sf.info(next((tmp_path / "voiced").rglob("*.flac"))).frames < 0.95 * N
    frames, dims = np.load(next((tmp_path / "feats").rglob("*.npy")), mmap_mode="r").shape
    assert abs(frames - N / 160) < 5 and dims == 40
    assert sorted((gal / "speakers.txt").read_text().split()) == sorted(["long", *SPEAKERS])
    assert len((tmp_path / "verify.out").read_text().split()) >= 1
    assert (tmp_path / "identify.out").read_text().split("\t")[0] == str(wav)
    runs = [line.split("\t") for line in (tmp_path / "identify_--in.out").read_text().splitlines()]
    assert len(runs) > 100 and float(runs[-1][1]) > 0.95 * HOURS * 3600
    print(json.dumps(report, indent=1), "CPU s:", {name: r[3] for name, r in results.items()})


def test_blocked_vad_equals_the_whole_signal_at_once():
    """`VadModel.prob` in blocks (with the network's context as overlap) gives the numbers of one pass."""
    from spkid import vad

    m = vad.load_model()
    x = np.concatenate([synth_voice(150.0, (600.0, 1500.0), 2.0), np.zeros(SR // 2, np.float32),
                        synth_voice(220.0, (800.0, 2000.0), 2.0, seed=3)])
    whole = m.forward(m.features(x))
    feats = m.features(x)
    for a, b in ((0, 7), (5, 150), (200, 10**9)):
        np.testing.assert_allclose(m.frontend(x, a, b), feats[a:b], rtol=1e-5, atol=1e-5)
    for block in (7, 50, 333, len(whole)):
        np.testing.assert_allclose(m.prob(x, block), whole, atol=1e-5)
    np.testing.assert_allclose(vad.speech_prob(x, SR), np.repeat(whole, 2)[: len(x) // 160], atol=1e-5)


def test_writing_in_blocks_and_parts_gives_the_same_file(tmp_path: Path):
    from spkid import audio

    x = synth_voice(150.0, (600.0, 1500.0), 3.0)
    x[100], x[200] = 1.5, -2.0  # clipped the same way
    for fmt in ("flac", "wav"):
        ref = tmp_path / f"ref.{fmt}"
        sf.write(ref, np.clip(x, -1.0, 32767 / 32768), SR, subtype="PCM_16")
        audio.write(tmp_path / f"one.{fmt}", x, SR, fmt)
        audio.write(tmp_path / f"parts.{fmt}", [x[:1000], x[1000:1000], x[1000:]], SR, fmt)
        assert (tmp_path / f"one.{fmt}").read_bytes() == ref.read_bytes() == (tmp_path / f"parts.{fmt}").read_bytes()

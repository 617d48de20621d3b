"""No decision without speech, and one decision rule whatever the input path (real subprocesses, shipped clips)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import clip_files, sh

SR = 16000


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    """A gallery of the shipped enrolment clips (bundled model), and the probe list: clips of enrolled speakers and
    of speakers never enrolled."""
    tmp = tmp_path_factory.mktemp("paths")
    enroll = clip_files("enroll")
    probes = clip_files("probe")
    assert enroll and probes, "the shipped clips (examples/clips) are missing"
    (tmp / "enroll.txt").write_text("".join(f"{p}\n" for p in enroll))
    (tmp / "probe.txt").write_text("".join(f"{p}\n" for p in probes))
    sh(f"spkid enroll {tmp}/enroll.txt -g {tmp}/g", check=True)
    return tmp / "g", tmp / "probe.txt", probes


def _decisions(stdout: bytes) -> dict[str, str]:
    return {line.split("\t")[0]: line.split("\t")[1] for line in stdout.decode().splitlines()}


def test_identify_decides_the_same_on_audio_and_on_embeddings(enrolled, tmp_path):
    gallery, probe_list, probes = enrolled
    enrolled_names = set((Path(gallery) / "speakers.txt").read_text().split())
    never = [p for p in probes if p.parent.name not in enrolled_names]
    assert never, "the probes need a speaker who was never enrolled"
    audio = sh(f"spkid identify {probe_list} -g {gallery}", check=True)
    piped = sh(f"spkid embed {probe_list} | spkid identify -g {gallery}", check=True)
    by_audio, by_embeddings = _decisions(audio.stdout), _decisions(piped.stdout)
    assert by_audio == by_embeddings
    assert all(by_audio[str(p)] == "unknown" for p in never), by_audio
    # both name where their threshold came from, and it is the same one: the model's calibration
    source = [line for line in audio.stderr.decode().splitlines() if "threshold" in line]
    assert source and source == [line for line in piped.stderr.decode().splitlines() if "threshold" in line]


def _signals(tmp: Path) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    t = np.arange(3 * SR) / SR
    made = {
        "silence": np.zeros_like(t),
        "dc": np.full_like(t, 0.3),
        "tone": 0.5 * np.sin(2 * np.pi * 440 * t),
        "noise": 0.3 * rng.standard_normal(len(t)),
        "square": 0.4 * np.sign(np.sin(2 * np.pi * 150 * t)),
    }
    out = {}
    for name, x in made.items():
        out[name] = tmp / f"{name}.wav"
        sf.write(out[name], x.astype(np.float32), SR)
    music = sorted(Path(__file__).resolve().parents[2].glob("shared/data/nonspeech/music_*"))
    if music:
        y, sr = sf.read(music[0], dtype="float32", frames=3 * 44100, always_2d=True)
        out["music"] = tmp / "music.wav"
        sf.write(out["music"], y.mean(axis=1), sr)
    # the music clip in which the VAD hears the most "speech" (2.7 s of 83 s), whole
    credits = [m for m in music if m.name.startswith("music_credits1-cp")]
    if credits:
        out["credits"] = credits[0]
    return out


def test_verify_never_accepts_non_speech(tmp_path):
    """Each non-speech signal against itself, and against real speech on either side (speech on the other side
    does not make a score of it), even at threshold 0; -q (the decision as the exit status only) once a signal."""
    signals = _signals(tmp_path)
    speech = clip_files("probe")[0]
    for i, name in enumerate(sorted(signals)):
        pairs = [(signals[name], signals[name]), (speech, signals[name]) if i % 2 else (signals[name], speech)]
        for a, b in pairs:
            proc = sh(f"spkid verify {a} {b} --threshold 0")
            err = proc.stderr.decode()
            assert b"accept" not in proc.stdout and proc.returncode == 1, (a, b, proc.stdout, err)
            assert err.startswith("spkid verify: error: ") and len(err.strip().splitlines()) == 1, err
            assert "of speech" in err or "took for speech" in err
        quiet = sh(f"spkid verify {signals[name]} {signals[name]} --threshold 0 -q")
        assert quiet.returncode == 2 and quiet.stdout == b""


def test_no_vad_is_the_explicit_way_to_score_everything(tmp_path):
    signals = _signals(tmp_path)
    proc = sh(f"spkid verify {signals['noise']} {signals['tone']} --no-vad --json", check=True)
    rec = json.loads(proc.stdout)
    assert rec["quality"]["test"]["vad"] is False and isinstance(rec["score"], float)


def test_enroll_refuses_silence_and_skip_bad_counts_it(enrolled, tmp_path):
    gallery, _, _ = enrolled
    silent = tmp_path / "nobody" / "quiet.wav"
    silent.parent.mkdir()
    sf.write(silent, np.zeros(3 * SR, np.float32), SR)
    before = (Path(gallery) / "speakers.txt").read_bytes()
    proc = sh(f"spkid enroll {silent} -g {gallery}")
    assert proc.returncode == 1 and "0.00 s of speech" in proc.stderr.decode()
    assert (Path(gallery) / "speakers.txt").read_bytes() == before
    speech = clip_files("probe")[0]
    proc = sh(f"spkid enroll {silent} {speech} -g {tmp_path}/g2 --skip-bad")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "(1 skipped)" in proc.stderr.decode()
    assert (tmp_path / "g2" / "speakers.txt").read_text().split() == [speech.parent.name]


def test_embeddings_without_speech_are_refused_downstream(enrolled, tmp_path):
    gallery, _, _ = enrolled
    silent = tmp_path / "x" / "quiet.wav"
    silent.parent.mkdir()
    sf.write(silent, np.zeros(3 * SR, np.float32), SR)
    sh(f"spkid embed {silent} -o {tmp_path}/e.npy", check=True)  # embed itself keeps it, with its quality record
    proc = sh(f"spkid identify --from-embeddings {tmp_path}/e.npy -g {gallery}")
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "0.00 s of speech" in err and proc.stdout == b""


def _imported(proc) -> set[str]:
    """Top-level packages named in `python -X importtime` output (stderr)."""
    names = set()
    for line in proc.stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_deciding_commands_never_import_torch_with_the_onnx_model(enrolled, tmp_path):
    """The bundled model has an ONNX form: embed, enroll, verify and identify run without importing torch."""
    gallery, probe_list, probes = enrolled
    a, b = probes[0], probes[1]
    py = "python -X importtime -m spkid"
    for cmd in (f"{py} embed {a} -o {tmp_path}/e.npy", f"{py} verify {a} {b}", f"{py} identify {a} -g {gallery}",
                f"{py} enroll {a} -g {tmp_path}/g"):
        proc = sh(cmd)
        assert proc.returncode == 0, (cmd, proc.stderr.decode()[-2000:])
        assert "onnxruntime" in _imported(proc) and "torch" not in _imported(proc), cmd
    # embeddings given as they are need no network at all; the model's calibration is read without torch too
    proc = sh(f"{py} identify --from-embeddings {tmp_path}/e.npy -g {gallery}")
    assert proc.returncode == 0 and not {"torch", "onnxruntime"} & _imported(proc)
    assert "from the calibration in model" in proc.stderr.decode()
    proc = sh(f"{py} verify {a} {b} --backend torch")
    assert proc.returncode == 0 and "torch" in _imported(proc)

"""A careless or hostile user (issue 14), one class of input at a time: non-speech decided on, thresholds that are
not numbers, galleries under symlinks, globs, concurrent writers and damage, non-finite audio, full or read-only
disks and killed runs, and speaker names that only look alike. Each CLI case asserts the exit code, the one error
line and the files afterwards."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import sh, synth_voice
from spkid import decisions, fileio, frontends, gallery, lists, npyio, streams, utterance
from spkid.calibration import Calibration
from spkid.errors import SpkidError
from spkid.scoring import unit

SR = 16000
SHA = "ab" * 32
DIM = 16


def error_line(proc: subprocess.CompletedProcess, cmd: str, *needles: str, code: int = 1) -> str:
    """The one `spkid CMD: error: ...` line of a failed run (no traceback), holding every needle."""
    err = proc.stderr.decode(errors="replace").strip()
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1], err
    assert errors[0].startswith(f"spkid {cmd}: error: "), err
    for n in needles:
        assert n in errors[0], (n, err)
    return errors[0]


def files_under(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file() or p.is_symlink()) if d.exists() else []


def write_stream(path: Path, keys: list[str], values: np.ndarray | None = None, quality=None) -> Path:
    values = unit(np.random.default_rng(len(keys)).standard_normal((len(keys), DIM))) if values is None else values
    streams.write_embeddings(keys, values, {"model_sha256": SHA, "model": "m.pt", "features": {"kind": "fbank"}},
                             str(path), quality=quality)
    return path


def enroll(stream: Path, g: Path | str, *extra: str) -> subprocess.CompletedProcess:
    return sh(f"spkid enroll --from-embeddings {shlex.quote(str(stream))} -g {shlex.quote(str(g))} {' '.join(extra)}")


def identify(stream: Path, g: Path | str, *extra: str) -> subprocess.CompletedProcess:
    return sh(f"spkid identify --from-embeddings {shlex.quote(str(stream))} -g {shlex.quote(str(g))} {' '.join(extra)}")


@pytest.fixture
def stream(tmp_path: Path) -> Path:
    return write_stream(tmp_path / "e.npy", ["alice/1.wav", "alice/2.wav", "bob/1.wav", "carol/1.wav"])


@pytest.fixture
def built(tmp_path: Path, stream: Path) -> Path:
    g = tmp_path / "g"
    enroll(stream, g).check_returncode()
    return g


# --- 1. no decision without speech ------------------------------------------------------------------------------

def _signals() -> dict[str, np.ndarray]:
    t = np.arange(3 * SR) / SR
    rng = np.random.default_rng(0)
    music = np.zeros_like(t)
    for a in range(0, len(t), SR // 4):  # chords of harmonic notes, four a second
        seg = np.arange(min(SR // 4, len(t) - a)) / SR
        for f in rng.choice([220 * 2 ** (k / 12) for k in range(24)], 3):
            music[a : a + len(seg)] += sum(np.exp(-4 * seg) * np.sin(2 * np.pi * f * h * seg) / h for h in range(1, 6))
    return {
        "silence": np.zeros_like(t),
        "dc": np.full_like(t, 0.5),
        "tone": 0.5 * np.sin(2 * np.pi * 440 * t),
        "low_tone": 0.5 * np.sin(2 * np.pi * 150 * t),
        "white_noise": 0.3 * rng.standard_normal(len(t)),
        "quiet_noise": 0.001 * rng.standard_normal(len(t)),
        "square": 0.5 * np.sign(np.sin(2 * np.pi * 200 * t)),
        "chirp": 0.5 * np.sin(2 * np.pi * (100 + 200 * t) * t),
        "music": 0.3 * music / np.abs(music).max(),
    }


@pytest.fixture(scope="module")
def prep() -> utterance.Preparer:
    return utterance.Preparer(frontends.frontend({"kind": "fbank", "n_filters": 40}), utterance.EmbedConfig())


@pytest.mark.parametrize("kind", list(_signals()))
def test_non_speech_counts_as_no_speech(prep, kind: str):
    """The VAD finds nothing in these; the whole-file fallback embeds them but must not call them speech."""
    x = _signals()[kind].astype(np.float32)
    _, q = prep.signal(x, SR, kind)
    assert q.vad and q.no_speech and q.speech_seconds == 0.0 and q.seconds == pytest.approx(3.0)
    assert "no_speech" in q.to_dict()["flags"]
    with pytest.raises(SpkidError, match=rf"^{kind}.wav: only 0.00 s of speech \(the VAD found none\) in 3.00 s of audio; "
                                         r"verification needs at least 0.5 s"):
        decisions.require_speech(f"{kind}.wav", q, utterance.MIN_SPEECH_S, "verification")
    decisions.require_speech(f"{kind}.wav", utterance.Quality(3.0, 3.0), 0.5)  # --no-vad: not measured, not refused


def test_speech_passes_and_short_speech_is_refused(prep):
    _, q = prep.signal(synth_voice(150.0, (700.0, 1200.0, 2600.0), 2.0), SR)
    assert q.vad and not q.no_speech and q.speech_seconds > 1.0
    decisions.require_speech("voice.wav", q, 0.5)
    with pytest.raises(SpkidError, match=r"voice.wav: only 1\.\d\d s of speech in 2.00 s of audio; enrolment needs at least 5 s"):
        decisions.require_speech("voice.wav", q, 5.0, "enrolment")
    back = decisions.quality_json(q)
    assert json.loads(json.dumps(back)) == back and utterance.Quality.from_dict(back).speech_seconds == pytest.approx(q.speech_seconds, abs=1e-3)


def test_quality_flags_record(prep):
    _, q = prep.signal(np.zeros(SR, np.float32), SR)
    d = q.to_dict()
    assert d["rms_dbfs"] is None and {"no_speech", "too_quiet"} <= set(d["flags"])
    loud = np.clip(4 * synth_voice(150.0, (700.0, 1200.0, 2600.0), 2.0), -1, 1)
    assert "clipped" in prep.signal(loud, SR)[1].flags()
    for bad in ({"seconds": "x", "speech_seconds": 1}, {"seconds": 1, "speech_seconds": float("nan")}, [1]):
        with pytest.raises(SpkidError, match="quality"):
            utterance.Quality.from_dict(bad)


def test_shared_non_speech_clips_have_little_speech(shared_data: Path, prep):
    """Real noise, effects and music: speech found is at most a few percent of each clip (the VAD's residual
    errors: dude_miaowing 2.3 s of 62 s, music_credits1-cp 2.7 s of 83 s)."""
    from spkid import audio

    for f in sorted((shared_data / "noise").glob("*.flac")) + sorted((shared_data / "nonspeech").glob("*.flac")):
        x, sr = audio.load(f, rate=SR)
        _, q = prep.signal(x, sr, str(f))
        assert q.speech_seconds <= 0.05 * q.seconds, (f.name, q.speech_seconds)


def test_embedding_stream_carries_quality_per_key(tmp_path: Path, prep):
    quiet = prep.signal(np.zeros(SR, np.float32), SR)[1].to_dict()
    voiced = prep.signal(synth_voice(150.0, (700.0, 1200.0, 2600.0), 2.0), SR)[1].to_dict()
    a = write_stream(tmp_path / "a.npy", ["x/silence.wav", "x/voice.wav"], quality=[quiet, voiced])
    b = write_stream(tmp_path / "b.npy", ["x/old.wav"])  # a stream of before the records: no quality
    both = tmp_path / "both.npy"
    both.write_bytes(a.read_bytes() + b.read_bytes())  # `cat a b`
    e = streams.read_embeddings(str(both))
    assert len(e.quality) == 3 and e.quality[2] is None and "quality" not in e.meta
    with pytest.raises(SpkidError, match=r"x/silence.wav: only 0.00 s of speech \(the VAD found none\) in 1.00 s"):
        decisions.require_speech(str(e.keys[0]), e.quality[0], 0.5)
    decisions.require_speech(str(e.keys[1]), e.quality[1], 0.5)
    decisions.require_speech(str(e.keys[2]), e.quality[2], 0.5)  # no record: the CLI says it could not check
    assert streams.read_keyed(str(a))[0].tolist() == ["x/silence.wav", "x/voice.wav"]  # old readers ignore it
    raw = a.read_bytes().replace(b"s\x00\x00\x00p\x00\x00\x00e\x00\x00\x00e\x00\x00\x00c\x00\x00\x00h\x00\x00\x00_",
                                 b"s\x00\x00\x00p\x00\x00\x00e\x00\x00\x00e\x00\x00\x00c\x00\x00\x00H\x00\x00\x00_")
    (tmp_path / "bad.npy").write_bytes(raw)
    with pytest.raises(SpkidError, match="damaged quality record"):
        streams.read_embeddings(str(tmp_path / "bad.npy"))


def test_identify_refuses_silence(tmp_path: Path):
    """`spkid identify silence.wav`: one line naming the file and the 0.00 s found, nothing on stdout."""
    sf.write(tmp_path / "silence.wav", np.zeros(2 * SR, np.float32), SR, subtype="PCM_16")
    g = tmp_path / "g"
    lst = tmp_path / "enroll.txt"
    (tmp_path / "alice").mkdir()
    sf.write(tmp_path / "alice" / "a.wav", synth_voice(210.0, (700.0, 1200.0, 2600.0), 3.0), SR, subtype="PCM_16")
    lst.write_text(f"{tmp_path / 'alice' / 'a.wav'}\n")
    sh(f"spkid -q enroll {lst} -g {g} --threads 1", check=True)
    proc = sh(f"spkid identify {tmp_path / 'silence.wav'} -g {g} --threads 1")
    error_line(proc, "identify", str(tmp_path / "silence.wav"), "only 0.00 s of speech")
    assert proc.stdout == b""


# --- 2. thresholds are finite numbers wherever they come from ---------------------------------------------------

@pytest.mark.parametrize("stored,needle", [
    ({"threshold": {"score": float("nan")}}, 'threshold "score" must be a finite number, got nan'),
    ({"threshold": {"score": float("inf")}}, "must be a finite number, got inf"),
    ({"threshold": {"score": "0.5"}}, "must be a finite number, got '0.5'"),
    ({"threshold": {"score": True}}, "must be a finite number, got True"),
    ({"threshold": 0.5}, '"threshold" must be a JSON object'),
    ({"calibration": {"a": float("nan"), "b": 0, "p_target": 0.5}}, 'slope "a" must be a finite number'),
    ({"calibration": {"a": 2.0, "b": 0, "p_target": 0.5, "thresholds": {"eer": {"score": None, "far": 0, "frr": 0}}}},
     "threshold 'eer' score must be a finite number, got None"),
])
def test_stored_thresholds_must_be_numbers(stream: Path, built: Path, stored: dict, needle: str):
    meta = json.loads((built / "gallery.json").read_text())
    meta.update(stored)
    (built / "gallery.json").write_text(json.dumps(meta))  # Python writes NaN and Infinity
    before = files_under(built)
    error_line(identify(stream, built), "identify", str(built / "gallery.json"), needle)
    assert files_under(built) == before


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_threshold_option_must_be_finite(stream: Path, built: Path, value: str):
    error_line(identify(stream, built, "--threshold", value), "identify", "--threshold", "must be a finite number")


def test_calibration_from_dict_checks_every_number():
    good = {"a": 2.0, "b": -1.0, "p_target": 0.01, "thresholds": {"eer": {"score": 0.5, "far": 0.01, "frr": 0.02}}}
    assert Calibration.from_dict(good, "m.pt").threshold("eer").score == 0.5
    for key, bad in [("a", -1.0), ("a", "2"), ("p_target", 1.0), ("b", float("inf"))]:
        with pytest.raises(SpkidError, match=rf"^m.pt: malformed calibration: .*{key}"):
            Calibration.from_dict({**good, key: bad}, "m.pt")
    with pytest.raises(SpkidError, match="threshold 'eer' far must be a finite number in"):
        Calibration.from_dict({**good, "thresholds": {"eer": {"score": 0.5, "far": 2, "frr": 0}}}, "m.pt")


# --- 3. the gallery: symlinks, globs, concurrent readers, damage -----------------------------------------------

def test_symlinked_gallery_updates_its_target(tmp_path: Path, stream: Path, built: Path):
    link = tmp_path / "link"
    link.symlink_to(built)
    more = write_stream(tmp_path / "more.npy", ["dave/1.wav"])
    proc = enroll(more, link)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and os.readlink(link) == str(built)
    assert gallery.load(built).speakers == ["alice", "bob", "carol", "dave"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy", "g", "link", "more.npy"]  # no temp, no lock


def test_gallery_name_with_glob_characters_leaves_others_alone(tmp_path: Path, stream: Path):
    """`g[1]` matches `g1` as a glob: the cleanup of `g[1]`'s leftovers must not touch `g1`'s live temp folder."""
    live = tmp_path / ".g1.tmp-99999-abcdef"  # a concurrent writer of g1, mid-write
    live.mkdir()
    (live / "embeddings.npy").write_bytes(b"in progress")
    old = tmp_path / ".g1.old-99999-abcdef"
    old.mkdir()
    (old / "gallery.json").write_text("{}")
    proc = enroll(stream, tmp_path / "g[1]")
    assert proc.returncode == 0, proc.stderr
    assert (live / "embeddings.npy").read_bytes() == b"in progress" and (old / "gallery.json").is_file()
    assert gallery.load(tmp_path / "g[1]").speakers == ["alice", "bob", "carol"]


def test_readers_see_one_version_while_a_writer_swaps(tmp_path: Path):
    """A writer process swaps versions in a loop; every read is one whole version: names, rows and values agree."""
    g = tmp_path / "g"
    writer = f"""
import sys, numpy as np
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from spkid import gallery
base = gallery.empty({DIM}, {{"model": {{"sha256": "x"}}, "aggregation": "mean"}})
rng = np.random.default_rng(0)
for i in range(1, 10**9):
    n = int(rng.integers(1, 40))
    gallery.save({str(g)!r}, gallery.updated(base, [f"v{{i}}_{{k}}" for k in range(n)], np.eye({DIM}, dtype=np.float32)[[i % {DIM}] * n]))
"""
    gallery.save(g, gallery.updated(gallery.empty(DIM, {"model": {"sha256": "x"}}), ["v0_0"], np.eye(DIM, dtype=np.float32)[:1]))
    proc = subprocess.Popen([sys.executable, "-c", writer], stderr=subprocess.PIPE)
    try:
        reads, versions, t0 = 0, set(), time.monotonic()
        while time.monotonic() - t0 < 4:
            got = gallery.load(g)
            version = {s.split("_")[0] for s in got.speakers}
            assert len(version) == 1 and len(got.embeddings) == len(got.speakers) == int(got.counts.sum())
            assert np.all(np.argmax(np.asarray(got.sums), axis=1) == int(version.pop()[1:]) % DIM)  # the version's rows
            versions.add(got.speakers[0])
            reads += 1
    finally:
        proc.kill()
        proc.wait()
    assert reads > 200 and len(versions) > 20, (reads, len(versions))


def _damage(g: Path, how: str) -> None:
    if how == "string_counts":
        np.save(g / "counts.npy", np.array(["1", "1", "1"]))
    elif how == "nested_json":
        (g / "gallery.json").write_text("[" * 100_000 + "]" * 100_000)
    elif how == "nan_embedding":
        e = np.load(g / "embeddings.npy")
        e[1, 2] = np.nan
        np.save(g / "embeddings.npy", e)
    elif how == "extra_speaker":
        with open(g / "speakers.txt", "a") as f:
            f.write("dave\n")
    elif how == "duplicate_speaker":
        (g / "speakers.txt").write_text("alice\nbob\nalice\n")
    elif how == "float64_sums":
        np.save(g / "sums.npy", np.load(g / "sums.npy").astype(np.float64))
    elif how == "zero_counts":
        np.save(g / "counts.npy", np.array([2, 0, 1]))
    elif how == "huge_header":
        (g / "embeddings.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3, 1000000000000), }" + b" " * 44 + b"\n")
    elif how == "deep_header":
        hdr = b"{'descr': '<f4', 'fortran_order': False, 'shape': " + b"(" * 5000 + b")" * 5000 + b"}"
        (g / "embeddings.npy").write_bytes(b"\x93NUMPY\x02\x00" + len(hdr).to_bytes(4, "little") + hdr)


@pytest.mark.parametrize("how,file,needle", [
    ("string_counts", "counts.npy", "holds <U1 (3,), expected int64 (3,)"),
    ("nested_json", "gallery.json", "JSON nested 100000 deep"),
    ("nan_embedding", "embeddings.npy", "invalid value nan at row 1"),
    ("extra_speaker", "embeddings.npy", "expected float32 (4, 16) (4 speakers in speakers.txt)"),
    ("duplicate_speaker", "speakers.txt", "names 'alice' twice (lines 1 and 3)"),
    ("float64_sums", "sums.npy", "holds float64"),
    ("zero_counts", "counts.npy", "invalid value 0 at row 1"),
    ("huge_header", "embeddings.npy", "unreadable"),
    ("deep_header", "embeddings.npy", "unreadable"),
])
def test_damaged_gallery_is_one_line_and_kept(tmp_path: Path, stream: Path, built: Path, how: str, file: str, needle: str):
    _damage(built, how)
    before = {p.name: p.read_bytes() for p in built.iterdir()}
    for proc, cmd in ((identify(stream, built), "identify"), (enroll(stream, built), "enroll"),
                      (sh(f"spkid enroll -g {built} --list"), "enroll")):
        line = error_line(proc, cmd, str(built / file), needle)
        assert not any(w in line.lower() for w in ("rebuild", "delete", "remove", "re-create", "recreate")), line
        assert proc.stdout == b""
    assert {p.name: p.read_bytes() for p in built.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy", "g"]


def test_missing_gallery_file_is_named(stream: Path, built: Path):
    (built / "sums.npy").unlink()
    line = error_line(identify(stream, built), "identify", str(built), "incomplete gallery (sums.npy is missing)")
    assert "rebuild" not in line


# --- 4. non-finite or absurd samples are refused at load, by every command ----------------------------------

@pytest.fixture
def bad_audio(tmp_path: Path) -> dict[str, Path]:
    x = synth_voice(150.0, (700.0, 1200.0, 2600.0), 2.0)
    out = {}
    for name, (i, v) in {"nan": (1000, np.nan), "inf": (20000, np.inf), "huge": (5000, 1e30)}.items():
        y = x.copy()
        y[i] = v
        out[name] = tmp_path / "in" / f"{name}.wav"
        out[name].parent.mkdir(exist_ok=True)
        sf.write(out[name], y, SR, subtype="FLOAT")
    return out


@pytest.mark.parametrize("kind", ["nan", "inf", "huge"])
@pytest.mark.parametrize("cmd", ["features -d {out}", "convert -d {out}", "vad", "vad --trim -d {out}", "embed --threads 1"])
def test_bad_samples_are_refused(tmp_path: Path, bad_audio, kind: str, cmd: str):
    out = tmp_path / "out"
    proc = sh(f"spkid {cmd.format(out=out)} {bad_audio[kind]}")
    reason = "samples reach 1e+30" if kind == "huge" else "NaN or infinite samples"
    error_line(proc, cmd.split()[0], str(bad_audio[kind]), "invalid sample values", reason)
    assert proc.stdout == b"" and files_under(out) == []


def test_features_stream_checks_every_block(tmp_path: Path):
    """A long float WAV, NaN only near its end: the streamed feature reader still refuses it."""
    from spkid import features

    x = np.zeros(3 * features.READ_SAMPLES + 77, np.float32)
    x[-50] = np.nan
    sf.write(tmp_path / "long.wav", x, SR, subtype="FLOAT")
    with pytest.raises(SpkidError, match=rf"long.wav: invalid sample values \(NaN or infinite samples, the first at sample {len(x) - 50}\)"):
        features.compute_file(tmp_path / "long.wav")
    x[-50] = 32767.0  # int16-scaled float audio is odd, not absurd
    sf.write(tmp_path / "scaled.wav", x, SR, subtype="FLOAT")
    assert np.isfinite(features.compute_file(tmp_path / "scaled.wav")).all()


# --- 5. write failures and leftovers ---------------------------------------------------------------------------

def _can_mount() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True).returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs unshare and a tmpfs mount in a user namespace")


def in_small_fs(tmp_path: Path, cmd: str, options: str = "size=64k") -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `cmd` with $FS a fresh tmpfs (`options`); the run and the paths left on it afterwards."""
    fs = tmp_path / "fs"
    fs.mkdir(exist_ok=True)
    listing = tmp_path / "left.txt"
    script = (f"mount -t tmpfs -o {options} tmpfs {fs} || exit 99; export FS={fs}; cd {fs}; ({cmd}); rc=$?; "
              f"find . -mindepth 1 | sort > {listing}; exit $rc")
    proc = subprocess.run(["unshare", "-rm", "bash", "-c", script], capture_output=True)
    assert proc.returncode != 99, proc.stderr
    return proc, listing.read_text().split()


@needs_mount
@pytest.mark.parametrize("cmd", ["convert -d $FS/conv", "vad --trim -d $FS/trim", "features -d $FS/feat"])
def test_disk_full_file_writers(tmp_path: Path, cmd: str):
    wavs = []
    for i in range(4):
        wavs.append(tmp_path / "spk" / f"u{i}.wav")
        wavs[-1].parent.mkdir(exist_ok=True)
        sf.write(wavs[-1], synth_voice(150.0 + 20 * i, (700.0, 1200.0, 2600.0), 3.0, seed=i), SR, subtype="PCM_16")
    proc, left = in_small_fs(tmp_path, f"spkid {cmd} {' '.join(map(str, wavs))}")
    error_line(proc, cmd.split()[0], "/fs/", "cannot write (No space left on device)")
    assert not [p for p in left if "." in Path(p).name], left  # no file: no output, no temp file


@needs_mount
def test_disk_full_gallery_and_stream(tmp_path: Path):
    big = write_stream(tmp_path / "big.npy", [f"s{i}/u.wav" for i in range(2000)])
    proc, left = in_small_fs(tmp_path, f"spkid enroll --from-embeddings {big} -g $FS/g")
    error_line(proc, "enroll", f"{tmp_path}/fs/g: cannot write (No space left on device)")
    assert left == [], left
    proc, left = in_small_fs(tmp_path, f"spkid score --calibrate {tmp_path / 'scores.txt'} -o $FS/cal.json || true; "
                                       f"spkid enroll --from-embeddings {big} -g $FS/sub/g")
    error_line(proc, "enroll", f"{tmp_path}/fs/sub/g: cannot write (No space left on device)")
    assert left == [], left


@needs_mount
def test_read_only_disk(tmp_path: Path, stream: Path):
    proc, left = in_small_fs(tmp_path, f"spkid enroll --from-embeddings {stream} -g $FS/g", "ro")
    error_line(proc, "enroll", f"{tmp_path}/fs", "Read-only file system")
    wav = tmp_path / "a.wav"
    sf.write(wav, synth_voice(150.0, (700.0, 1200.0, 2600.0), 2.0), SR, subtype="PCM_16")
    proc, left = in_small_fs(tmp_path, f"spkid convert -d $FS/conv {wav}", "ro")
    error_line(proc, "convert", f"{tmp_path}/fs/conv", "Read-only file system")
    assert left == []


def test_write_errors_without_errno_name_the_reason(tmp_path: Path, monkeypatch):
    """numpy's short write ("N requested and M written") and libsndfile's error carry no errno: the folder is
    probed for the reason, and the temp file is gone."""
    def short_write(*a, **k):
        raise OSError("308736 requested and 252896 written")

    monkeypatch.setattr(fileio, "_probe_reason", lambda path: "No space left on device")
    with pytest.raises(SpkidError, match=rf"^{tmp_path}/x.npy: cannot write \(No space left on device\)$"):
        with fileio.atomic_write(tmp_path / "x.npy") as f:
            f.write(b"abc")
            short_write()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SpkidError, match=r"sub/deeper/y.npy: cannot write \(No space left on device\)"):
        with fileio.atomic_path(tmp_path / "sub" / "deeper" / "y.npy"):
            raise RuntimeError("")  # what libsndfile raises on a full disk
    assert list(tmp_path.iterdir()) == []  # the folders made for it are gone too
    monkeypatch.setattr(fileio, "_probe_reason", lambda path: None)
    with pytest.raises(RuntimeError, match="a bug"):  # not a write failure: shown as it is
        with fileio.atomic_write(tmp_path / "z.txt"):
            raise RuntimeError("a bug")


def test_permission_denied_is_one_line(tmp_path: Path, monkeypatch):
    """EACCES (not testable as root with real modes): from the temp file's creation, from the rename, from a
    gallery's folder."""
    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(SpkidError, match=rf"^{tmp_path}/a/b.txt: cannot write \(Permission denied\)$"):
        with fileio.atomic_write(tmp_path / "a" / "b.txt", "w") as f:
            f.write("x")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(os, "replace", denied)
    with pytest.raises(SpkidError, match=r"b.txt: cannot write \(Permission denied\)"):
        with fileio.atomic_write(tmp_path / "b.txt", "w") as f:
            f.write("x")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(SpkidError, match=rf"^{tmp_path}/g: cannot write \(Permission denied\)$"):
        gallery.save(tmp_path / "g", gallery.updated(gallery.empty(DIM, {}), ["a"], unit(np.ones((1, DIM)))))
    assert list(tmp_path.iterdir()) == []


def test_killed_writers_leftovers_go_with_the_next_run(tmp_path: Path):
    """kill -9 mid-write leaves a temp file; the next run writing in that folder removes it."""
    wav = tmp_path / "in" / "a.wav"
    wav.parent.mkdir()
    sf.write(wav, synth_voice(150.0, (700.0, 1200.0, 2600.0), 2.0), SR, subtype="PCM_16")
    out = tmp_path / "out"
    victim = (f"import os, signal, sys\nsys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
              f"from spkid import fileio\nwith fileio.atomic_write({str(out / 'a.npy')!r}) as f:\n"
              "    f.write(b'partial'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", victim]).returncode == -9
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    proc = sh(f"spkid features -d {out} --root {wav.parent} {wav}")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.npy", "features.json"]


# --- 7. speaker names ---------------------------------------------------------------------------------------------

def test_nfc_and_nfd_names_are_one_speaker(tmp_path: Path):
    s = write_stream(tmp_path / "e.npy", ["Jos\u00e9/1.wav", "Jose\u0301/2.wav", "Zoe\u0308/1.wav"])
    g = tmp_path / "g"
    proc = enroll(s, g)
    assert proc.returncode == 0, proc.stderr
    assert (g / "speakers.txt").read_text(encoding="utf-8") == "Jos\u00e9\nZo\u00eb\n"
    assert gallery.load(g).counts.tolist() == [2, 1]
    proc = sh(f"spkid enroll -g {g} --remove 'Zoe\u0308'")  # removed by its NFD spelling
    assert proc.returncode == 0, proc.stderr
    assert gallery.load(g).speakers == ["Jos\u00e9"]


@pytest.mark.parametrize("a,b", [("alice", "Alice"), ("alice", "ali\u200bce"), ("alice", "\uff41lice"), ("bob", "bob\u2060")])
def test_lookalike_names_are_warned(a: str, b: str, caplog):
    g = gallery.updated(gallery.empty(DIM, {}), [a], unit(np.ones((1, DIM))))
    with caplog.at_level(logging.WARNING, logger="spkid.gallery"):
        g2 = gallery.updated(g, [b], unit(np.ones((1, DIM))))
    assert g2.speakers == [a, b]
    assert any("looks like" in r.getMessage() and lists.printable(b) in r.getMessage() for r in caplog.records)


def test_names_are_escaped_for_display():
    assert lists.printable("eve\x1b[2J\x1b[31m") == "eve\\x1b[2J\\x1b[31m"
    assert lists.printable("abc\u202edcba") == "abc\\u202edcba"
    assert lists.printable("zw\u200bsp\u2066x\u2069") == "zw\\u200bsp\\u2066x\\u2069"
    assert lists.printable("Jos\u00e9 \u5f20\u4f1f") == "Jos\u00e9 \u5f20\u4f1f"
    with pytest.raises(SpkidError, match=r"speaker name 'Unknown' is reserved \(as 'unknown'\)"):
        gallery.check_name("Unknown")
    with pytest.raises(SpkidError, match=r"speaker name 'a\\\\tb'|without tabs"):
        gallery.check_name("a\tb")


# --- JSON and .npy readers never recurse without bound ----------------------------------------------------------

def test_json_depth_limit_and_stream_text():
    with pytest.raises(SpkidError, match="x.json: JSON nested 100000 deep"):
        lists.loads_json("[" * 100_000 + "]" * 100_000, "x.json")
    assert lists.loads_json('{"a": "[[[[{{{{"}', "x.json") == {"a": "[[[[{{{{"}
    bad = np.frombuffer(np.array([0x110000, 0x61], "<u4").tobytes(), "<U2")  # not a code point
    import io
    buf = io.BytesIO()
    np.lib.format.write_array(buf, bad.reshape(1), allow_pickle=False)
    with pytest.raises(SpkidError, match="invalid characters"):
        npyio.read_record(io.BytesIO(buf.getvalue()), "s", "keys")


def test_identify_text_escapes_names():
    from spkid.trials import IdRecord

    r = IdRecord("clips/\x1b[2Ja.wav", None, [("eve\u202eevil", 0.9), ("bob", 0.5)], False, "eve\u202eevil", 0.5, 0.4)
    assert r.to_text(True) == "clips/\\x1b[2Ja.wav\teve\\u202eevil\t0.900000\t0.400000\teve\\u202eevil\teve\\u202eevil:0.900000\tbob:0.500000"
    assert "\u202e" in r.to_json()  # JSON keeps the name exactly (its consumers are programs)

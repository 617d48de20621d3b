"""Kaldi data folders as inputs (wav.scp, utt2spk, segments; piped `UTT CMD |` commands with --allow-commands) and
`spkid embed --format kaldi` (ark/scp via kaldiio), through real pipes and real shell commands."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import clip_files, sh
from spkid import audio, lists, streams
from spkid.errors import SpkidError


def data_dir(root: Path, n: int = 6, segments: bool = False, rx: str = "{}", name: str = "data") -> Path:
    """A Kaldi data folder over the shipped clips: ids `SPK-STEM`, utt2spk, and (with `segments`) two segments of
    each recording, `SPK-STEM-a` [0, 1.5) s and `SPK-STEM-b` [1.5, -1). `rx` makes each wav.scp entry from the
    clip's path: `cat {} |` gives piped commands."""
    d = root / name
    d.mkdir(parents=True)
    wav, spk, seg = [], [], []
    for f in clip_files("enroll")[:n]:
        utt = f"{f.parent.name}-{f.stem}"
        wav.append(f"{utt} {rx.format(f)}\n")
        if segments:
            seg += [f"{utt}-a {utt} 0.00 1.50\n", f"{utt}-b {utt} 1.50 -1\n"]
            spk += [f"{utt}-a {f.parent.name}\n", f"{utt}-b {f.parent.name}\n"]
        else:
            spk.append(f"{utt} {f.parent.name}\n")
    (d / "wav.scp").write_text("".join(wav))
    (d / "utt2spk").write_text("".join(spk))
    if segments:
        (d / "segments").write_text("".join(seg))
    return d


def test_reader(tmp_path: Path):
    d = data_dir(tmp_path, 2, segments=True)
    entries = streams.read_list([str(d)], segments=True)
    assert [e.key for e in entries][:2] == [f"{clip_files('enroll')[0].parent.name}-{clip_files('enroll')[0].stem}-{x}"
                                             for x in "ab"]
    assert entries[0].start == 0.0 and entries[1].end == -1 and entries[0].label == clip_files("enroll")[0].parent.name
    with pytest.raises(SpkidError, match="segments.*whole recordings"):
        streams.read_list([str(d)], command="vad")
    (d / "segments").unlink()
    (d / "utt2spk").unlink()  # it named the segments
    plain = streams.read_list([str(d / "wav.scp")])
    assert [e.path for e in plain] == [str(f) for f in clip_files("enroll")[:2]] and all(type(e) is lists.Entry for e in plain)
    (d / "wav.scp").write_text("u1 sox x.wav -t wav - |\n")
    with pytest.raises(SpkidError, match="piped command; spkid runs commands from data files only when asked: pass "
                                         "--allow-commands to run it"):
        streams.read_list([str(d)], segments=True)
    piped = streams.read_list([str(d)], segments=True, allow_commands=True)
    assert piped == [lists.KaldiEntry("sox x.wav -t wav -", None, "u1", command=True)]
    with pytest.raises(SpkidError, match="`spkid vad` takes audio files by path"):  # path-keyed: never commands
        streams.read_list([str(d)], command="vad", allow_commands=True)


def test_embed_kaldi_format_equals_npy(tmp_path: Path):
    import kaldiio

    d = data_dir(tmp_path)
    sh(f"spkid embed {d} -o {tmp_path}/emb.npy && spkid embed {d}/wav.scp --format kaldi -o {tmp_path}/xv", check=True)
    e = streams.read_embeddings(str(tmp_path / "emb.npy"))
    ids = [line.split()[0] for line in (d / "wav.scp").read_text().splitlines()]
    assert list(e.keys) == ids
    table = kaldiio.load_scp(str(tmp_path / "xv.scp"))
    assert list(table.keys()) == ids
    for k, v in zip(e.keys, e.values):
        assert table[k].dtype == np.float32 and table[k].shape == v.shape
        np.testing.assert_array_equal(table[k], v)
    assert dict(kaldiio.load_ark(str(tmp_path / "xv.ark"))).keys() == set(ids)
    bad = sh(f"spkid embed {d} --format kaldi")
    assert bad.returncode == 2 and b"give -o OUT" in bad.stderr


def test_pipe_into_enroll_and_identify_with_utt2spk(tmp_path: Path):
    d = data_dir(tmp_path)
    speakers = sorted({line.split()[1] for line in (d / "utt2spk").read_text().splitlines()})
    sh(f"spkid embed {d} | spkid enroll -g {tmp_path}/g --labels {d}/utt2spk", check=True)
    assert (tmp_path / "g" / "speakers.txt").read_text().split() == speakers
    sh(f"spkid enroll -g {tmp_path}/g2 {d}", check=True)  # from audio: the labels are utt2spk's
    assert (tmp_path / "g2" / "speakers.txt").read_text().split() == speakers
    out = sh(f"spkid identify -g {tmp_path}/g {d}", check=True).stdout.decode().splitlines()
    first = out[0].split("\t")
    assert first[0] == f"{clip_files('enroll')[0].parent.name}-{clip_files('enroll')[0].stem}" and first[1] == first[-1]


def test_segments_are_cut(tmp_path: Path):
    d = data_dir(tmp_path, 2, segments=True)
    proc = sh(f"spkid embed {d} --no-vad -o {tmp_path}/seg.npy", check=True)
    e = streams.read_embeddings(str(tmp_path / "seg.npy"))
    assert len(e.keys) == 4 and e.keys[0].endswith("-a") and e.keys[1].endswith("-b")
    x, sr = sf.read(clip_files("enroll")[0], dtype="float32")
    sf.write(tmp_path / "a.wav", x[: int(1.5 * sr)], sr, subtype="FLOAT")
    sh(f"spkid embed {tmp_path}/a.wav --no-vad -o {tmp_path}/a.npy", check=True)
    whole = streams.read_embeddings(str(tmp_path / "a.npy"))
    np.testing.assert_allclose(e.values[0], whole.values[0], atol=1e-5)
    assert e.quality[0]["seconds"] == pytest.approx(1.5)
    assert proc.returncode == 0
    feats = sh(f"spkid features {d} -d {tmp_path}/f --kind kaldi-fbank", check=True).stdout.decode().split()
    assert Path(feats[0]).name == e.keys[0] + ".npy" and np.load(feats[0]).shape == (148, 80)
    vad = sh(f"spkid vad {d}")
    assert vad.returncode == 1 and b"segments" in vad.stderr and len(vad.stderr.splitlines()) == 1


@pytest.mark.parametrize("name,text,message", [
    ("wav.scp", "u1 sox x.wav -t wav - |\n", "u1 is a piped command; spkid runs commands from data files only when "
                                              "asked: pass --allow-commands to run it"),
    ("segments", "s1 u1 2.0 1.0\n", "segment 's1' has start 2.0 and end 1.0"),
    ("utt2spk", "other spk\n", "no speaker for 1 utterance"),
])
def test_a_bad_data_folder_is_one_line_and_no_output(tmp_path: Path, name: str, text: str, message: str):
    d = tmp_path / "data"
    d.mkdir()
    (d / "wav.scp").write_text(f"u1 {clip_files('enroll')[0]}\n")
    (d / name).write_text(text)
    proc = sh(f"spkid embed {d} -o {tmp_path}/e.npy")
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1 and not (tmp_path / "e.npy").exists(), proc.stderr
    assert len(lines) == 1 and lines[0].startswith("spkid embed: error:") and message in lines[0], lines


# --allow-commands: `UTT CMD |` lines of wav.scp run with `sh -c`, their stdout decoded as the recording

PY_WAV = (f"{sys.executable} -c \"import io, sys, soundfile as sf; x, r = sf.read('{{}}', dtype='float32'); "
          "b = io.BytesIO(); sf.write(b, x, r, format='WAV', subtype='FLOAT'); sys.stdout.buffer.write(b.getvalue())\" |")


def one_line_error(proc, command: str) -> str:
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"spkid {command}: error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize("rx", [
    pytest.param("cat {} |", id="cat"),
    pytest.param(PY_WAV, id="python-float-wav"),
    pytest.param("sox {} -t wav - |", id="sox-streamed-wav", marks=pytest.mark.skipif(
        shutil.which("sox") is None, reason="needs sox on PATH (CI installs it)")),
])
def test_piped_commands_embed_as_their_files(tmp_path: Path, rx: str):
    plain, piped = data_dir(tmp_path, 3), data_dir(tmp_path, 3, rx=rx, name="piped")
    sh(f"spkid embed {plain} -o {tmp_path}/plain.npy && spkid embed {piped} --allow-commands -o {tmp_path}/piped.npy",
       check=True)
    a, b = streams.read_embeddings(str(tmp_path / "plain.npy")), streams.read_embeddings(str(tmp_path / "piped.npy"))
    assert list(b.keys) == list(a.keys) and len(a.keys) == 3  # keyed by the utterance ids
    np.testing.assert_allclose(b.values, a.values, atol=1e-6)


def test_commands_run_in_the_current_folder_and_with_jobs(tmp_path: Path):
    """Relative paths in the commands are the current folder's (as Kaldi runs them from the recipe's folder), and
    `-j 2` workers get the permission with their entries."""
    plain = data_dir(tmp_path, 4)
    piped = tmp_path / "piped"
    piped.mkdir()
    for f in clip_files("enroll")[:4]:
        shutil.copy(f, tmp_path / f.name)
    (piped / "wav.scp").write_text("".join(f"{f.parent.name}-{f.stem} cat ./{f.name} |\n"
                                           for f in clip_files("enroll")[:4]))  # relative to tmp_path
    sh(f"spkid embed {plain} -o plain.npy && spkid embed piped --allow-commands -j 2 -o piped.npy", cwd=tmp_path,
       check=True)
    a, b = streams.read_embeddings(str(tmp_path / "plain.npy")), streams.read_embeddings(str(tmp_path / "piped.npy"))
    assert list(b.keys) == list(a.keys)
    np.testing.assert_allclose(b.values, a.values, atol=1e-6)
    feats = sh("spkid features piped --allow-commands -j 2 -d f --kind kaldi-fbank", cwd=tmp_path, check=True)
    listed = [line.split("\t")[0] for line in feats.stdout.decode().splitlines()]
    assert [Path(p).stem for p in listed] == list(a.keys)
    ref = sh(f"spkid features {plain} -d g --kind kaldi-fbank", cwd=tmp_path, check=True).stdout.decode().splitlines()
    ref = [line.split("\t")[0] for line in ref]
    for x, y in zip(listed, ref):
        np.testing.assert_array_equal(np.load(tmp_path / x), np.load(tmp_path / y))


def test_segments_of_a_piped_recording(tmp_path: Path):
    plain = data_dir(tmp_path, 2, segments=True)
    piped = data_dir(tmp_path, 2, segments=True, rx=f"echo run >> {tmp_path}/runs; cat {{}} |", name="piped")
    sh(f"spkid embed {plain} --no-vad -o {tmp_path}/plain.npy && "
       f"spkid embed {piped} --no-vad --allow-commands -o {tmp_path}/piped.npy", check=True)
    assert (tmp_path / "runs").read_text().split() == ["run"] * 2  # once per recording, not per segment
    a, b = streams.read_embeddings(str(tmp_path / "plain.npy")), streams.read_embeddings(str(tmp_path / "piped.npy"))
    assert list(b.keys) == list(a.keys) and len(a.keys) == 4 and b.keys[0].endswith("-a")
    np.testing.assert_allclose(b.values, a.values, atol=1e-6)
    assert b.quality[0]["seconds"] == pytest.approx(1.5)
    feats = sh(f"spkid features {piped} --allow-commands -d {tmp_path}/f --kind kaldi-fbank", check=True)
    first = feats.stdout.decode().split()[0]
    assert Path(first).name == a.keys[0] + ".npy" and np.load(first).shape == (148, 80)


def test_enroll_and_identify_take_piped_commands(tmp_path: Path):
    piped = data_dir(tmp_path, 4, rx="cat {} |")
    speakers = sorted({line.split()[1] for line in (piped / "utt2spk").read_text().splitlines()})
    refused = sh(f"spkid enroll -g {tmp_path}/g {piped}")
    assert "pass --allow-commands to run it" in one_line_error(refused, "enroll") and not (tmp_path / "g").exists()
    sh(f"spkid enroll -g {tmp_path}/g {piped} --allow-commands", check=True)
    assert (tmp_path / "g" / "speakers.txt").read_text().split() == speakers
    out = sh(f"spkid identify -g {tmp_path}/g {piped} --allow-commands", check=True).stdout.decode().splitlines()
    assert [line.split("\t")[0] for line in out] == [line.split()[0] for line in (piped / "wav.scp").read_text().splitlines()]
    # --labels of a piped folder (no --allow-commands): only its ids and speakers are read, nothing runs
    sh(f"spkid embed {piped} --allow-commands -o {tmp_path}/emb.npy", check=True)
    ids = [line.split()[0] for line in (piped / "wav.scp").read_text().splitlines()]
    (piped / "wav.scp").write_text("".join(f"{u} touch {tmp_path}/ran |\n" for u in ids))
    sh(f"spkid enroll -g {tmp_path}/g3 --labels {piped} < {tmp_path}/emb.npy", check=True)
    assert (tmp_path / "g3" / "speakers.txt").read_text().split() == speakers and not (tmp_path / "ran").exists()


def test_without_the_flag_nothing_runs(tmp_path: Path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "wav.scp").write_text(f"u1 touch {tmp_path}/ran; cat {clip_files('enroll')[0]} |\n")
    for cmd in (f"embed {d} -o {tmp_path}/e.npy", f"features {d} -d {tmp_path}/f", f"enroll -g {tmp_path}/g {d}"):
        proc = sh(f"spkid {cmd}")
        line = one_line_error(proc, cmd.split()[0])
        assert "u1 is a piped command" in line and "pass --allow-commands to run it" in line
    assert not (tmp_path / "ran").exists() and not (tmp_path / "e.npy").exists() and not (tmp_path / "f").exists()
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("command,message", [
    ("false", "u1: command `false` failed (exit 1)"),
    ("echo first >&2; echo the reason >&2; exit 3", "u1: command `echo first >&2; echo the reason >&2; exit 3` failed "
                                                    "(exit 3: the reason)"),
    ("cat /nonexistent/x.wav", "failed (exit 1: cat: /nonexistent/x.wav: No such file or directory)"),
    ("true", "u1: command `true` failed (exit 0, but it wrote no audio)"),
    ("echo not audio", "u1: the output of `echo not audio |`: cannot decode audio"),
])
def test_a_failing_command_is_one_line_and_nothing_written(tmp_path: Path, command: str, message: str):
    d = tmp_path / "data"
    d.mkdir()
    good = clip_files("enroll")[0]
    (d / "wav.scp").write_text(f"u0 cat {good} |\nu1 {command} |\n")
    line = one_line_error(sh(f"spkid embed {d} --allow-commands -o {tmp_path}/e.npy"), "embed")
    assert message in line, line
    line = one_line_error(sh(f"spkid features {d} --allow-commands -d {tmp_path}/f"), "features")
    assert message in line, line
    assert not (tmp_path / "e.npy").exists() and not any((tmp_path / "f").rglob("*"))
    if command == "false":  # --skip-bad: skipped like any bad file
        proc = sh(f"spkid embed {d} --allow-commands --skip-bad -o {tmp_path}/e.npy")
        assert proc.returncode == 0 and b"skipped u1: command `false` failed (exit 1)" in proc.stderr, proc.stderr
        assert list(streams.read_embeddings(str(tmp_path / "e.npy")).keys) == ["u0"]


def test_convert_and_vad_refuse_commands(tmp_path: Path):
    d = data_dir(tmp_path, 2, rx="cat {} |")
    for cmd in (f"convert {d} -d {tmp_path}/c", f"vad {d}"):
        name = cmd.split()[0]
        line = one_line_error(sh(f"spkid {cmd}"), name)
        assert "is a piped command" in line and "takes audio files by path" in line, line
        assert sh(f"spkid {cmd} --allow-commands").returncode == 2  # no such option there
    assert not (tmp_path / "c").exists()


def test_run_command_limits(tmp_path: Path):
    """The bounds of one command: a time limit (the whole pipeline is killed), a size limit, a signal."""
    t0 = time.monotonic()
    with pytest.raises(SpkidError, match=r"u1: command `sleep 30 \| cat` failed \(no end after 0.5 s\)"):
        audio.run_command("sleep 30 | cat", "u1", timeout=0.5)
    assert time.monotonic() - t0 < 20  # killed, not waited for
    with pytest.raises(SpkidError, match="u1: command `head -c 100000 /dev/zero` wrote more than 1,000 bytes"):
        audio.run_command("head -c 100000 /dev/zero", "u1", max_bytes=1000)
    with pytest.raises(SpkidError, match=r"failed \(killed by signal 9\)"):
        audio.run_command("kill -9 $$", "u1")
    clip = audio.run_command(f"cat {clip_files('enroll')[0]}", "u1")
    assert clip.format == "flac" and clip.data == clip_files("enroll")[0].read_bytes()
    seg, sr = audio.load_segment(clip, 0.5, 1.0)
    whole, _ = audio.load(clip_files("enroll")[0])
    np.testing.assert_array_equal(seg, whole[int(0.5 * sr) : int(1.0 * sr)])

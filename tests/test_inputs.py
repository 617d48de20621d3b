"""Inputs beyond list files: audio bytes on stdin (detected by magic bytes, through real pipes), named pipes, and
folder arguments expanded to the audio files below them."""

from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import clip_files, sh
from spkid import audio, lists, streams
from spkid.errors import SpkidError

CLIP = clip_files("probe", "19")[0]
# run in a fresh interpreter whose stdin is a real pipe: the clip's format, shape and rate, or "None"
PROBE = ("from spkid import audio, streams; c = streams.stdin_audio(); "
         "print('None' if c is None else f'{c.format} {audio.load(c)[0].shape} {audio.load(c)[1]}')")


def encoded(fmt: str, subtype: str | None = None) -> bytes:
    x, sr = sf.read(CLIP, dtype="float32")
    b = io.BytesIO()
    sf.write(b, x, sr, format=fmt, subtype=subtype)
    return b.getvalue()


def python(code: str, *args: str, stdin: bytes | None = None, feed: str | None = None) -> subprocess.CompletedProcess:
    """`python -c code args` with `stdin` bytes written into a real pipe (or `feed`, a shell command piped in)."""
    if feed is not None:
        return sh(f"{feed} | {sys.executable} -c {code!r} {' '.join(args)}")
    return subprocess.run([sys.executable, "-c", code, *args], input=stdin, capture_output=True)


N = sf.info(CLIP).frames


@pytest.mark.parametrize("fmt,subtype,name", [("WAV", "PCM_16", "wav"), ("FLAC", "PCM_16", "flac"), ("OGG", "VORBIS", "ogg"),
                                              ("MP3", "MPEG_LAYER_III", "mp3")])
def test_audio_on_a_real_stdin_pipe_is_detected_and_decoded(fmt, subtype, name, tmp_path):
    path = tmp_path / f"clip.{name}"
    path.write_bytes(encoded(fmt, subtype))
    proc = python(PROBE, feed=f"cat {path}")
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    m = re.fullmatch(r"(\w+) \((\d+),\) (\d+)", proc.stdout.decode().strip())
    assert m and m[1] == name and m[3] == "16000", proc.stdout
    assert abs(int(m[2]) - N) <= 1200, (m[2], N)  # MP3 adds encoder delay and padding frames


def test_streamed_wav_with_unknown_sizes_and_a_header_split_across_writes():
    """arecord/sox writing to a pipe cannot seek back to fill in the sizes; the writer's first write may be 4 bytes."""
    wav = bytearray(encoded("WAV", "PCM_16"))
    assert wav[36:40] == b"data"
    wav[4:8] = wav[40:44] = struct.pack("<I", 0)
    writer = ("import sys, time; d = open(sys.argv[1], 'rb').read(); o = sys.stdout.buffer; "
              "o.write(d[:4]); o.flush(); time.sleep(0.3); o.write(d[4:]); o.flush()")
    proc = sh(f"{sys.executable} -c {writer!r} /dev/stdin | {sys.executable} -c {PROBE!r}", input=bytes(wav))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == f"wav ({N},) 16000"


def test_a_list_or_embeddings_on_stdin_are_not_audio_and_nothing_is_consumed(tmp_path):
    code = ("from spkid import streams; assert streams.stdin_audio() is None; "
            "print([(e.path, e.label) for e in streams.read_list('-')])")
    proc = python(code, feed="printf 'ID3_tracks/a.wav\\nRIFF/b.wav\\tbob\\n'")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == "[('ID3_tracks/a.wav', 'ID3_tracks'), ('RIFF/b.wav', 'bob')]"
    emb = tmp_path / "e.npy"
    streams.write_keyed(["a"], np.ones((1, 3), np.float32), str(emb))
    code = "from spkid import streams; assert streams.stdin_audio() is None; print(streams.read_keyed('-')[1].shape)"
    proc = python(code, feed=f"cat {emb}")
    assert proc.returncode == 0 and proc.stdout.decode().strip() == "(1, 3)", proc.stderr
    for feed in ("true", "printf ''"):  # empty stdin
        assert python(PROBE, feed=feed).stdout.decode().strip() == "None"
    assert subprocess.run([sys.executable, "-c", PROBE], stdin=subprocess.DEVNULL, capture_output=True).stdout == b"None\n"


def test_read_inputs_gives_stdin_audio_as_the_entry_dash_with_its_clip(tmp_path: Path):
    code = ("import sys; from spkid import streams; entries, clip = streams.read_inputs(sys.argv[1:]); "
            "print([(e.path, e.label) for e in entries], clip and (clip.name, clip.format, len(clip.data)))")
    size = CLIP.stat().st_size
    proc = python(code, "-", "a/b.wav", feed=f"cat {CLIP}")
    assert proc.stdout.decode().strip() == f"[('-', None), ('a/b.wav', 'a')] ('<stdin>', 'flac', {size})", proc.stderr
    proc = python(code, feed=f"cat {CLIP}")  # no argument: stdin
    assert proc.stdout.decode().strip() == f"[('-', None)] ('<stdin>', 'flac', {size})", proc.stderr
    proc = python(code, "-", "x.wav", feed="printf 'a/1.wav\\tann\\n'")  # a list on stdin is still a list
    assert proc.stdout.decode().strip() == "[('a/1.wav', 'ann'), ('x.wav', None)] None", proc.stderr
    proc = python(code, "-", "-", feed=f"cat {CLIP}")
    assert proc.returncode == 1 and b"names stdin's one audio clip; give it once" in proc.stderr


def test_audio_where_a_list_is_read_is_one_clear_error():
    proc = python("from spkid import streams; streams.read_list('-')", feed=f"cat {CLIP}")
    assert proc.returncode == 1
    assert proc.stderr.decode().strip().splitlines()[-1] == (
        "spkid.errors.SpkidError: <stdin>: holds FLAC audio, and this command reads a list of files there; give the "
        "audio as a file argument (or `-` where audio on stdin is taken: embed, enroll, verify, identify)")


def test_named_pipes_are_read_whole():
    """`/dev/stdin` and bash's `<(...)` are pipes that libsndfile cannot seek in; empty or non-audio ones are one error."""
    code = "import sys; from spkid import audio; x, sr = audio.read(sys.argv[1]); print(x.shape, sr)"
    proc = python(code, "/dev/stdin", feed=f"cat {CLIP}")
    assert proc.stdout.decode().strip() == f"({N}, 1) 16000", proc.stderr
    proc = sh(f"{sys.executable} -c {code!r} <(cat {CLIP})")
    assert proc.stdout.decode().strip() == f"({N}, 1) 16000", proc.stderr
    for feed, why in (("true", "/dev/stdin: empty, no audio"), ("echo hello", "/dev/stdin: cannot decode audio (Format not recognised)")):
        proc = python(code, "/dev/stdin", feed=feed)
        assert proc.returncode == 1 and proc.stderr.decode().strip().endswith(why), proc.stderr


def test_clip_in_memory_goes_through_every_reader():
    from spkid.embedding import Embedder

    clip = audio.Clip(CLIP.read_bytes(), "<stdin>", "flac")
    x, sr = audio.load(clip)
    np.testing.assert_array_equal(x, audio.load(str(CLIP))[0])
    np.testing.assert_array_equal(audio.load_expected(clip, 16000), x)
    assert str(clip) == "<stdin>" and "data" not in repr(clip)
    emb = Embedder.from_model(None, "cpu")
    a = emb.embed_prepared([emb.prep.prepare_file(clip)])
    np.testing.assert_allclose(a, emb.embed_files([str(CLIP)]), atol=1e-6)
    with pytest.raises(SpkidError, match=r"^<stdin>: cannot decode WAV audio \("):
        audio.read(audio.Clip(b"RIFF\0\0\0\0WAVEjunk", format="wav"))


@pytest.mark.parametrize("head,fmt", [
    (b"RIFF\x24\x7d\x00\x00WAVEfmt ", "wav"), (b"RF64\xff\xff\xff\xffWAVE", "wav"), (b"RIFF", "wav"),
    (b"RIFF\x24\x7d\x00\x00AVI LIST", None), (b"fLaC\x00\x00\x00\x22", "flac"), (b"fLaC", "flac"),
    (b"OggS\x00\x02\x00\x00", "ogg"), (b"ID3\x04\x00\x00\x00\x00\x00\x00", "mp3"), (b"\xff\xfb\x90\x64", "mp3"),
    (b"\xff\xf3\x88\xc4", "mp3"), (b"\xff\xf1\x50\x80", None),  # ADTS AAC: layer 00
    (b"ID3_tracks/a.wav\n", None), (b"OggS.wav\n", None), (b"fLaC/x.flac\n", None), (b"\x93NUMPY\x01\x00", None),
    (b"/data/a.wav\tbob\n", None), ("a.wav\n".encode("utf-16"), None), (b"", None),
])
def test_sniff(head, fmt):
    assert audio.sniff(head[:12]) == fmt


@pytest.fixture
def voices(tmp_path: Path) -> Path:
    """voices/{alice,bob}/... audio, a nested session folder, hidden and non-audio files to skip."""
    root = tmp_path / "voices"
    for rel in ("bob/2.flac", "alice/s2/1.WAV", "alice/1.wav", "alice/10.flac", "bob/1.mp3"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    for rel in ("alice/notes.txt", "alice/._1.wav", ".cache/c.wav", "bob/.hidden/h.wav"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    return root


def test_folder_expands_to_its_audio_files_labelled_by_parent_folder(voices: Path):
    entries = lists.folder_entries(str(voices))
    rel = [(str(Path(e.path).relative_to(voices)), e.label) for e in entries]
    assert rel == [("alice/1.wav", "alice"), ("alice/10.flac", "alice"), ("alice/s2/1.WAV", "s2"),
                   ("bob/1.mp3", "bob"), ("bob/2.flac", "bob")]
    assert all(e.path.startswith(str(voices) + "/") for e in entries)
    assert [e.label for e in lists.folder_entries(str(voices / "alice"), label_depth=2)] == ["voices", "voices", "alice"]
    # streams.read_list takes folders among files and list files, in argument order
    got = streams.read_list([str(voices / "bob"), str(voices / "alice" / "1.wav")])
    assert [(Path(e.path).name, e.label) for e in got] == [("1.mp3", "bob"), ("2.flac", "bob"), ("1.wav", "alice")]


def test_folder_without_audio_suggests_a_list(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpkidError) as e:
        lists.folder_entries(str(tmp_path / "empty"), command="enroll -g enroll/")
    assert str(e.value).startswith(f"{tmp_path}/empty: no audio files below this folder (it holds nothing; ")
    assert str(e.value).endswith(f"e.g. `find {tmp_path}/empty -name '*.flac' | spkid enroll -g enroll/`")
    raw = tmp_path / "raw dump"
    (raw / "a").mkdir(parents=True)
    for name in ("1.pcm", "2.pcm", "notes.txt"):
        (raw / "a" / name).write_bytes(b"x")
    with pytest.raises(SpkidError) as e:
        streams.read_list([str(raw)])
    assert "(it holds 3 other files; " in str(e.value)
    assert str(e.value).endswith(f"`find '{raw}' -name '*.pcm' | spkid ...`")

"""A new user's first commands: audio piped on stdin, `enroll --speaker`, folder arguments, embeddings named as a
file, headers on a terminal only, and refusals that come before the work (real pipes, real subprocesses)."""

from __future__ import annotations

import io
import os
import pty
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import clip_files, sh


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    """A gallery of the shipped enrolment clips, built from the folder itself (labels: the speakers' folders)."""
    g = tmp_path_factory.mktemp("first") / "g"
    enroll_dir = clip_files("enroll")[0].parents[1]
    sh(f"spkid enroll {enroll_dir} -g {g}", check=True)
    return g


def _probe(speaker: str = "19") -> Path:
    return clip_files("probe", speaker)[0]


def test_folder_argument_enrolls_every_speaker_below_it(gallery):
    speakers = (gallery / "speakers.txt").read_text().split()
    assert sorted(speakers) == sorted({p.parent.name for p in clip_files("enroll")})


def test_identify_reads_one_clip_piped_on_stdin(gallery):
    clip = _probe()
    by_file = sh(f"spkid identify {clip} -g {gallery}", check=True).stdout.decode().split("\t")
    piped = sh(f"cat {clip} | spkid identify - -g {gallery}", check=True).stdout.decode().split("\t")
    implicit = sh(f"cat {clip} | spkid identify -g {gallery}", check=True).stdout.decode().split("\t")
    assert piped[0] == implicit[0] == "-" and piped[1:] == by_file[1:] == implicit[1:]
    assert piped[1] == "19"


def test_verify_and_embed_read_a_piped_clip(gallery, tmp_path):
    clip = _probe()
    proc = sh(f"cat {clip} | spkid verify - -g {gallery} --speaker 19 -q")
    assert proc.returncode == 0, proc.stderr.decode()
    pair = sh(f"cat {clip} | spkid verify - {clip} --json", check=True)
    assert b'"test": "' in pair.stdout and b"<stdin>" in pair.stdout
    out = sh(f"cat {clip} | spkid embed - -o {tmp_path}/e.npy", check=True)
    assert out.stdout == b""
    from spkid import streams

    e = streams.read_embeddings(str(tmp_path / "e.npy"))
    assert list(e.keys) == ["-"] and e.values.shape[0] == 1


def test_list_on_stdin_still_works(gallery):
    clip = _probe()
    proc = sh(f"echo {clip} | spkid identify -g {gallery}", check=True)
    assert proc.stdout.decode().split("\t")[0] == str(clip)


def test_enroll_one_clip_under_a_name(tmp_path):
    a, b = clip_files("enroll", "26")
    sh(f"spkid enroll {a} --speaker hans -g {tmp_path}/g", check=True)
    sh(f"cat {b} | spkid enroll - --speaker hans -g {tmp_path}/g", check=True)
    assert (tmp_path / "g" / "speakers.txt").read_text().split() == ["hans"]
    listed = sh(f"spkid enroll -g {tmp_path}/g --list", check=True).stdout.decode()
    assert "hans" in listed and "2" in listed.splitlines()[1]
    proc = sh(f"cat {b} | spkid enroll - -g {tmp_path}/g")
    assert proc.returncode == 2 and "--speaker NAME" in proc.stderr.decode()
    proc = sh(f"spkid enroll {a} --speaker hans --labels {tmp_path}/x.txt -g {tmp_path}/g")
    assert proc.returncode == 2 and "give one of them" in proc.stderr.decode()


def test_embeddings_named_as_a_positional_file(gallery, tmp_path):
    clip = _probe()
    sh(f"spkid embed {clip} -o {tmp_path}/emb.npy", check=True)
    from_file = sh(f"spkid identify {tmp_path}/emb.npy -g {gallery}", check=True).stdout.decode().split("\t")
    assert from_file[0] == str(clip) and from_file[1] == "19"


def _on_a_terminal(cmd: list[str]) -> tuple[int, bytes, bytes]:
    """Run `cmd` with a pseudo-terminal as stdout; returns exit code, what reached the terminal, and stderr."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(slave)
    seen = io.BytesIO()
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen.write(chunk)
    _, err = proc.communicate(timeout=300)
    os.close(master)
    return proc.returncode, seen.getvalue(), err


def test_identify_prints_a_header_on_a_terminal_only(gallery):
    clip = _probe()
    code, shown, err = _on_a_terminal(["spkid", "identify", str(clip), "-g", str(gallery)])
    assert code == 0, err
    assert shown.decode().splitlines()[0].split() == ["key", "decision", "score", "margin", "best"]
    piped = sh(f"spkid identify {clip} -g {gallery}", check=True).stdout.decode()
    assert len(piped.splitlines()) == 1 and not piped.startswith("key")


def test_npy_to_a_terminal_is_refused_before_any_work():
    clip = _probe()
    code, shown, err = _on_a_terminal(["spkid", "embed", str(clip)])
    assert code == 1 and shown == b""
    assert err.decode().strip() == "spkid embed: error: refusing to write .npy to a terminal; redirect or use -o/--output FILE"
    code, _, err = _on_a_terminal(["spkid", "vad", str(clip)])
    assert code == 1 and b"refusing to write .npy to a terminal" in err and b"done" not in err


def test_resampled_clips_are_warned_about_once_by_every_embedding_command(gallery, tmp_path):
    import soundfile as sf

    from spkid import audio

    x, sr = sf.read(_probe(), dtype="float32")
    low = tmp_path / "19" / "low.wav"  # 11.025 kHz: old recordings and games; 8 kHz telephone audio: tests/test_vad.py
    low.parent.mkdir()
    sf.write(low, audio.resample(x, sr, 11025), 11025)
    for cmd in (f"spkid identify {low} -g {gallery}", f"spkid verify {low} {_probe()}",
                f"spkid embed {low} -o {tmp_path}/e.npy", f"spkid enroll {low} -g {tmp_path}/g2"):
        err = sh(cmd, check=True).stderr.decode()
        assert err.count("recorded at 11025 Hz, resampled to 16000 Hz") == 1, (cmd, err)
    err = sh(f"spkid vad {low}").stderr.decode()
    assert "11025 Hz" in err and "spkid convert" in err


def test_an_empty_pipe_is_one_line(gallery):
    proc = sh(f"spkid identify -g {gallery} < /dev/null")
    err = proc.stderr.decode()
    assert proc.returncode != 0 and len(err.strip().splitlines()) == 1 and err.startswith("spkid identify: error: ")


def test_silence_on_stdin_gets_no_name(gallery):
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(32000, np.float32), 16000, format="WAV")
    proc = sh(f"spkid identify - -g {gallery}", input=buf.getvalue())
    assert proc.returncode == 1 and proc.stdout == b"" and "<stdin>: only 0.00 s of speech" in proc.stderr.decode()

"""Kaldi data folders as inputs (wav.scp, utt2spk, segments) and `spkid embed --format kaldi` (ark/scp via kaldiio),
through real pipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import clip_files, sh
from spkid import lists, streams
from spkid.errors import SpkidError


def data_dir(root: Path, n: int = 6, segments: bool = False) -> Path:
    """A Kaldi data folder over the shipped clips: ids `SPK-STEM`, utt2spk, and (with `segments`) two segments of
    each recording, `SPK-STEM-a` [0, 1.5) s and `SPK-STEM-b` [1.5, -1)."""
    d = root / "data"
    d.mkdir(parents=True)
    wav, spk, seg = [], [], []
    for f in clip_files("enroll")[:n]:
        utt = f"{f.parent.name}-{f.stem}"
        wav.append(f"{utt} {f}\n")
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
    with pytest.raises(SpkidError, match="piped command; spkid runs no commands"):
        streams.read_list([str(d)])


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
    ("wav.scp", "u1 sox x.wav -t wav - |\n", "is a piped command; spkid runs no commands from data files"),
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

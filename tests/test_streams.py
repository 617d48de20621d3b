"""The io layer: lists (lists.py), keyed matrices through real pipes and the TTY guard (streams.py), atomic writes
(fileio.py), shards."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spkid import fileio, lists, streams
from spkid.errors import SpkidError
from spkid.lists import Entry


def test_parse_list_labels_comments_crlf_and_spaces():
    lines = ["# a comment", "", "data/spk1/a.wav", "my dir/b c.wav\tbob\r", "x/y/z/u.flac", "   "]
    entries = lists.parse_list(lines)
    assert entries == [Entry("data/spk1/a.wav", "spk1"), Entry("my dir/b c.wav", "bob"), Entry("x/y/z/u.flac", "z")]
    assert lists.parse_list(["LibriSpeech/19/198/19-198-0001.flac"], label_depth=2)[0].label == "19"
    assert lists.parse_list(["a.wav"])[0].label is None


def test_parse_list_rejects_extra_fields():
    with pytest.raises(SpkidError, match=r"lst:2: expected PATH or PATH<TAB>LABEL"):
        lists.parse_list(["a.wav", "b.wav\tx\ty"], source="lst")


def test_read_list_mixes_files_and_list_files(tmp_path):
    lst = tmp_path / "l.scp"
    lst.write_text("a/x.wav\nb/y.wav\tyy\n")
    entries = streams.read_list([str(tmp_path / "s/one.wav"), str(lst)])
    assert [e.path for e in entries] == [str(tmp_path / "s/one.wav"), "a/x.wav", "b/y.wav"]
    assert [e.label for e in entries] == ["s", "a", "yy"]


def test_read_list_non_utf8_names_the_line(tmp_path):
    lst = tmp_path / "bad.txt"
    lst.write_bytes(b"ok.wav\n\xff\xfe.wav\n")
    with pytest.raises(SpkidError, match=r"bad.txt:2: not valid UTF-8"):
        streams.read_list([str(lst)])


def test_missing_list_and_directory(tmp_path):
    with pytest.raises(SpkidError, match="no such file"):
        streams.read_list([str(tmp_path / "nope.txt")])
    (tmp_path / "d.txt").mkdir()
    with pytest.raises(SpkidError, match="is a directory"):
        streams.read_list([str(tmp_path / "d.txt")])


def test_keyed_roundtrip_and_validation(tmp_path):
    keys = ["a b", "ü/x.wav", "c"]
    vals = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = tmp_path / "k.npy"
    streams.write_keyed(keys, vals, str(out))
    k, v = streams.read_keyed(str(out))
    assert list(k) == keys and np.array_equal(v, vals) and v.dtype == np.float32
    data = out.read_bytes()
    for cut in (0, 5, 60, len(data) // 2, len(data) - 1):
        with pytest.raises(SpkidError):
            streams.read_keyed(io.BytesIO(data[:cut]))
    bad = io.BytesIO()
    np.save(bad, np.array(["a"]))
    np.save(bad, np.array([[np.nan]], dtype=np.float32))
    bad.seek(0)
    with pytest.raises(SpkidError, match="NaN"):
        streams.read_keyed(bad)


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    p = tmp_path / "obj.npy"
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SpkidError, match="object dtype"):
        streams.read_array(str(p))


def test_keyed_matrix_through_a_real_pipe():
    """np.load(sys.stdin.buffer) fails on a real pipe; streams.read_keyed must not."""
    writer = (
        "import numpy as np, sys; from spkid.streams import write_keyed;"
        "write_keyed([f'k{i}' for i in range(500)], np.ones((500, 192), np.float32))"
    )
    reader = "from spkid.streams import read_keyed; k, v = read_keyed('-'); print(len(k), v.shape, v.sum())"
    cmd = f"{sys.executable} -c \"{writer}\" | {sys.executable} -c \"{reader}\""
    out = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["500", "(500,", "192)", "96000.0"]


def test_binary_output_to_a_terminal_is_refused():
    code = "import numpy as np; from spkid.cli import main; from spkid.streams import write_array; write_array(np.zeros(3))"
    primary, secondary = pty.openpty()
    proc = subprocess.run([sys.executable, "-c", code], stdout=secondary, stderr=subprocess.PIPE, text=True)
    os.close(secondary)
    os.close(primary)
    assert proc.returncode != 0
    assert "refusing to write .npy to a terminal; redirect or use -o/--output FILE" in proc.stderr


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with fileio.atomic_write(target, "w") as f:
            f.write("new, half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def _interrupted_right_after(real):
    """`real` (os.open, os.mkdir) that does its work and then meets a Ctrl-C before returning."""
    def call(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt
    return call


@pytest.mark.parametrize("writer", ["atomic_write", "atomic_path"])
def test_a_ctrl_c_as_the_temp_file_is_made_leaves_nothing(tmp_path, monkeypatch, writer):
    target = tmp_path / "sub" / "out.json"
    monkeypatch.setattr(os, "open", _interrupted_right_after(os.open))
    with pytest.raises(KeyboardInterrupt):
        with getattr(fileio, writer)(target):
            pass
    assert os.listdir(tmp_path) == []


def test_a_ctrl_c_as_the_temp_folder_is_made_leaves_nothing(tmp_path, monkeypatch):
    from spkid.folders import atomic_dir
    (tmp_path / "gallery").mkdir()
    monkeypatch.setattr(os, "mkdir", _interrupted_right_after(os.mkdir))
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "gallery"):
            pass
    assert os.listdir(tmp_path) == ["gallery"]


@pytest.mark.parametrize("spec,expect", [("1/3", [0, 3, 6]), ("3/3", [2, 5]), (None, list(range(8)))])
def test_shard(spec, expect):
    assert lists.shard(list(range(8)), spec) == expect


@pytest.mark.parametrize("spec", ["0/3", "4/3", "x", "1/0"])
def test_bad_shard(spec):
    with pytest.raises(SpkidError, match="--shard"):
        lists.parse_shard(spec)


def test_output_path_keeps_layout_and_replaces_upper_case_suffix(tmp_path):
    root = tmp_path / "TIMIT"
    src = str(root / "TRAIN/DR1/FCJF0/SA1.WAV")
    assert lists.output_path(src, "out", root, ".flac") == Path("out/TRAIN/DR1/FCJF0/SA1.flac")
    assert lists.default_root([str(root / "a/x.wav"), str(root / "b/y.wav")]) == root.resolve()
    with pytest.raises(SpkidError, match="not under --root"):
        lists.output_path("/elsewhere/x.wav", "out", root, ".flac")

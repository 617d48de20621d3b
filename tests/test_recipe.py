"""recipes/make_lists.py on the LibriSpeech and VoxCeleb layouts (the whole recipe runs in CI: .ci/run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO


def make_lists(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "recipes" / "make_lists.py"), *args],
                          capture_output=True, text=True, check=True)


def touch_corpus(root: Path, suffix: str) -> None:
    """6 speakers x 2 sessions x 2 files: `spk/session/utt` (LibriSpeech chapters, VoxCeleb videos)."""
    for s in range(6):
        for c in range(2):
            for u in range(2):
                p = root / f"id{s}" / f"sess{c}" / f"{s}-{c}-{u}{suffix}"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"")
    (root / "id0" / "sess0" / "id0-sess0.trans.txt").write_text("not audio\n")


def read(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_librispeech_layout_split_trials_and_identification(tmp_path: Path):
    touch_corpus(tmp_path / "LibriSpeech", ".flac")
    out = tmp_path / "lists"
    make_lists(str(tmp_path / "LibriSpeech"), str(out), "--test-speakers", "2", "--force-test", "id1")
    train, test = read(out / "train.txt"), read(out / "test.txt")
    assert len(train) == 16 and len(test) == 8
    assert {s for _, s in train}.isdisjoint({s for _, s in test}) and "id1" in {s for _, s in test}
    trials = [line.split() for line in (out / "trials.txt").read_text().splitlines()]
    assert len(trials) == 8 * 7 // 2 and sum(t[2] == "target" for t in trials) == 2 * (4 * 3 // 2)
    cross = [t for t in (out / "trials_cross.txt").read_text().splitlines() if t.endswith(" target")]
    assert len(cross) == 2 * (4 * 3 // 2)  # every file is its own recording here
    enroll, probe = read(out / "enroll.txt"), read(out / "probe.txt")
    assert len(enroll) == 2 and len(probe) == 6 and {s for _, s in enroll} == {s for _, s in probe}


def test_voxceleb_m4a_mapped_to_prepared_files_and_missing_dropped(tmp_path: Path):
    data, prep, out = tmp_path / "vox", tmp_path / "prep", tmp_path / "lists"
    touch_corpus(data, ".m4a")
    make_lists(str(data), str(out), "--test-speakers", "2", "--map-to", str(prep), "--suffix", ".flac")
    source = read(out / "source.txt")
    assert len(source) == 24 and all(p.startswith(str(data)) and p.endswith(".m4a") for p, _ in source)
    test = read(out / "test.txt")
    assert all(p.startswith(str(prep)) and p.endswith(".flac") for p, _ in test)
    for p, _ in test + read(out / "train.txt"):  # "prepare" every file but one
        Path(p).parent.mkdir(parents=True, exist_ok=True)
        Path(p).write_bytes(b"")
    gone = test[0][0]
    Path(gone).unlink()
    proc = make_lists(str(data), str(out), "--test-speakers", "2", "--map-to", str(prep), "--suffix", ".flac",
                      "--drop-missing")
    assert f"{gone} was not prepared; left out" in proc.stderr
    assert read(out / "test.txt") == test[1:]
    assert gone not in (out / "trials.txt").read_text()

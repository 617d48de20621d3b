"""The shipped speech clips (examples/clips) and `make demo`'s script on them, as a fresh clone runs it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import soundfile as sf

from conftest import CLIPS, REPO, clip_files

ENROLLED = ["1116", "1867", "19", "26", "2691", "27", "3807", "4853"]
STRANGER = "909"


def test_clips_are_small_attributed_16k_mono_excerpts():
    files = clip_files()
    assert sorted(p.parent.name for p in clip_files("enroll")) == sorted(ENROLLED * 2)
    assert sorted(p.parent.name for p in clip_files("probe")) == sorted(ENROLLED + [STRANGER] * 2)
    assert sum(p.stat().st_size for p in files) <= 3_000_000
    attribution = (CLIPS / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in attribution and "LibriSpeech" in attribution and "train-clean-100" in attribution
    for p in files:
        info = sf.info(p)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), p
        assert 3.0 <= info.duration <= 6.0, p
        assert f"`{p.relative_to(CLIPS)}`" in attribution, p


def test_demo_names_every_enrolled_speaker_and_rejects_the_stranger(tmp_path: Path):
    """examples/demo.sh with nothing but spkid on PATH (no ffmpeg, no espeak-ng, no ../shared needed)."""
    proc = subprocess.run(["bash", REPO / "examples" / "demo.sh", CLIPS, tmp_path / "work"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["clip", "true", "speaker", "decision", "score", "margin"]
    rows = [re.split(r"\s{2,}", line) for line in lines[1:11]]
    assert len(rows) == 10 and lines[11] == ""
    for clip, true, decision, score, margin in rows:
        speaker = clip.split("/")[0]
        if speaker == STRANGER:
            assert true == f"{STRANGER} (not enrolled)" and decision == "unknown" and float(score) < 0.4, clip
        else:
            assert true == decision == speaker and float(score) > 0.7 and float(margin) > 0.3, clip
    assert lines[12].startswith("10/10 decisions right")

"""Speaker-disjoint train/test lists and verification trials for a LibriSpeech-style corpus.

Usage: python recipes/make_lists.py DATA_DIR OUT_DIR [--test-speakers 51] [--seed 0] [--force-test 19,26,27]

DATA_DIR holds `<speaker>/.../<file>.flac` (LibriSpeech `spk/chapter/utt.flac`, VoxCeleb `id/video/utt.wav`, or
`../shared/data/librispeech_tc100`, whose utterances.tsv names each segment's source recording). Writes:
  train.txt, test.txt          PATH<TAB>SPEAKER lists (speaker-disjoint; the split is drawn with --seed)
  trials.txt                   Kaldi trials `ENROLL TEST target|nontarget`: every pair of test files
  trials_cross.txt             the harder subset: targets only from different source recordings
                               (for librispeech_tc100: speakers 19, 26 and 27, two chapters each)
A pair never holds the same file twice; segments of one recording are different files, and pairs of them
are the easy "same-recording" targets, kept out of trials_cross.txt.
"""

from __future__ import annotations

import argparse
import csv
import itertools
from pathlib import Path

import numpy as np

AUDIO = (".flac", ".wav")


def scan(data: Path) -> list[tuple[str, str, str]]:
    """(path, speaker, source recording) for every audio file under `data`."""
    tsv = data / "utterances.tsv"
    if tsv.is_file():
        with open(tsv, newline="", encoding="utf-8") as f:
            return [(str(data / r["path"]), r["speaker_id"], r["source_utterance"]) for r in csv.DictReader(f, delimiter="\t")]
    rows = []
    for p in sorted(data.rglob("*")):
        if p.suffix.lower() in AUDIO:
            rel = p.relative_to(data)
            rows.append((str(p), rel.parts[0], str(rel.with_suffix(""))))
    return rows


def split(rows, n_test: int, seed: int, force: list[str]) -> tuple[list, list]:
    speakers = sorted({r[1] for r in rows})
    forced = [s for s in force if s in speakers]
    rest = [s for s in speakers if s not in forced]
    rng = np.random.default_rng(seed)
    test = set(forced) | set(rng.choice(rest, size=max(0, n_test - len(forced)), replace=False).tolist())
    return [r for r in rows if r[1] not in test], [r for r in rows if r[1] in test]


def trials(test) -> tuple[list[str], list[str]]:
    every, cross = [], []
    for (pa, sa, ua), (pb, sb, ub) in itertools.combinations(test, 2):
        label = "target" if sa == sb else "nontarget"
        line = f"{pa} {pb} {label}\n"
        every.append(line)
        if sa != sb or ua != ub:
            cross.append(line)
    return every, cross


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--test-speakers", type=int, default=51)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force-test", default="19,26,27", help="speakers always put in the test set")
    a = ap.parse_args()
    rows = scan(a.data)
    if not rows:
        raise SystemExit(f"make_lists: no .flac/.wav files under {a.data}")
    train, test = split(rows, a.test_speakers, a.seed, [s for s in a.force_test.split(",") if s])
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "train.txt").write_text("".join(f"{p}\t{s}\n" for p, s, _ in train), encoding="utf-8")
    (a.out / "test.txt").write_text("".join(f"{p}\t{s}\n" for p, s, _ in test), encoding="utf-8")
    every, cross = trials(test)
    (a.out / "trials.txt").write_text("".join(every), encoding="utf-8")
    (a.out / "trials_cross.txt").write_text("".join(cross), encoding="utf-8")
    n_tar = sum(line.endswith("target\n") and not line.endswith("nontarget\n") for line in every)
    n_tar_x = sum(line.endswith(" target\n") for line in cross)
    print(f"make_lists: {len({r[1] for r in train})} train speakers ({len(train)} files), "
          f"{len({r[1] for r in test})} test speakers ({len(test)} files); trials: {n_tar} target / "
          f"{len(every) - n_tar} nontarget, cross-recording: {n_tar_x} target")


if __name__ == "__main__":
    main()

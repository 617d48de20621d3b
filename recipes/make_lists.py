"""Speaker-disjoint train/test lists and verification trials for a LibriSpeech-style corpus.

Usage: python recipes/make_lists.py DATA_DIR OUT_DIR [--test-speakers 51] [--seed 0] [--force-test 19,26,27]
                                     [--map-to PREP_DIR --suffix .flac]

DATA_DIR holds `<speaker>/.../<file>.flac` (LibriSpeech `spk/chapter/utt.flac`, VoxCeleb `id/video/utt.wav`, or
`../shared/data/librispeech_tc100`, whose utterances.tsv names each segment's source recording). Writes:
  train.txt, test.txt          PATH<TAB>SPEAKER lists (speaker-disjoint; the split is drawn with --seed)
  trials.txt                   Kaldi trials `ENROLL TEST target|nontarget`: every pair of test files
  trials_cross.txt             the harder subset: targets only from different source recordings
                               (for librispeech_tc100: speakers 19, 26 and 27, two chapters each)
  enroll.txt, probe.txt        identification: each test speaker's first file enrols it, its other files are probes
A pair never holds the same file twice; segments of one recording are different files, and pairs of them
are the easy "same-recording" targets, kept out of trials_cross.txt.

With --map-to, every list names the file that data preparation will write for each input (PREP_DIR, the input's
path below DATA_DIR, --suffix), as `spkid convert -d PREP_DIR --root DATA_DIR` and `spkid vad --trim` lay them out;
source.txt then lists the original files (PATH<TAB>SPEAKER, train then test), the input of that preparation.
Run it again with --drop-missing after the preparation: the split is the same, without the files it dropped.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from pathlib import Path

import numpy as np

AUDIO = (".flac", ".wav", ".m4a", ".mp3", ".ogg", ".opus")


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


def identification(test) -> tuple[list, list]:
    """(enrol, probe) rows: each speaker's first file enrols it; its other files are probes."""
    seen, enroll, probe = set(), [], []
    for row in test:
        (probe if row[1] in seen else enroll).append(row)
        seen.add(row[1])
    return enroll, probe


def mapped(path: str, data: Path, prep: Path, suffix: str) -> str:
    rel = Path(path).relative_to(data)
    return str(prep / (rel.with_suffix(suffix) if suffix else rel))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--test-speakers", type=int, default=51)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force-test", default="19,26,27", help="speakers always put in the test set")
    ap.add_argument("--map-to", type=Path, help="name the prepared files under this folder instead of the originals")
    ap.add_argument("--suffix", default="", help="with --map-to: the prepared files' suffix (default: keep)")
    ap.add_argument("--drop-missing", action="store_true",
                    help="with --map-to: leave out files preparation did not write (e.g. no voice found)")
    a = ap.parse_args()
    rows = scan(a.data)
    if not rows:
        raise SystemExit(f"make_lists: no audio files ({', '.join(AUDIO)}) under {a.data}")
    train, test = split(rows, a.test_speakers, a.seed, [s for s in a.force_test.split(",") if s])
    a.out.mkdir(parents=True, exist_ok=True)
    if a.map_to is not None:
        (a.out / "source.txt").write_text("".join(f"{p}\t{s}\n" for p, s, _ in train + test), encoding="utf-8")
        train, test = ([(mapped(p, a.data, a.map_to, a.suffix), s, u) for p, s, u in part] for part in (train, test))
        if a.drop_missing:
            gone = [r[0] for r in train + test if not Path(r[0]).is_file()]
            train, test = ([r for r in part if Path(r[0]).is_file()] for part in (train, test))
            for p in gone:
                print(f"make_lists: {p} was not prepared; left out", file=sys.stderr)
    (a.out / "train.txt").write_text("".join(f"{p}\t{s}\n" for p, s, _ in train), encoding="utf-8")
    (a.out / "test.txt").write_text("".join(f"{p}\t{s}\n" for p, s, _ in test), encoding="utf-8")
    enroll, probe = identification(test)
    (a.out / "enroll.txt").write_text("".join(f"{p}\t{s}\n" for p, s, _ in enroll), encoding="utf-8")
    (a.out / "probe.txt").write_text("".join(f"{p}\t{s}\n" for p, s, _ in probe), encoding="utf-8")
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

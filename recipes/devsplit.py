"""The fixed held-out split of the shared corpora: which speakers (and noise) training never sees.

Usage: python recipes/devsplit.py OUT_DIR [--data ../shared/data]

One deterministic rule per corpus, no random state outside it:
  librispeech_tc100        the test speakers of recipes/make_lists.py (seed 0, 51 speakers, always 19, 26, 27):
                           the split the bundled model's card has always reported
  extra_speakers/<corpus>  (speechocean762, speech_commands, dspspeech20, arabic_speech_commands): among the
                           speakers with >= 2 clips, rank by blake2b("<corpus>/<speaker>") (8-byte digest, big
                           endian) and hold out the first max(ceil(25 %), min(8, n)) of them. Speakers with one
                           clip cannot give a target trial; they stay in training.
  noise                    three of the six clips (HELD_OUT_NOISE: two real recordings and one synthetic) are the
                           development suite's noise and are never trained on; the suite takes only their last 40 %
                           (bench/vad.py's held-out part, which scripts/train_vad.py never trains the VAD on).
Writes:
  train_all.txt   PATH<TAB>corpus:speaker, every file of every non-held-out speaker (single-clip ones included)
  dev.txt         PATH<TAB>corpus:speaker, every file of every held-out speaker
  noise_train.txt, noise_dev.txt   the noise clips for training (`spkid train --noise noise_train.txt`) and for the suite
and prints one line per corpus on stderr. `split()` gives the same rows to a recipe that imports this file.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_lists  # noqa: E402  (recipes/make_lists.py: its split of librispeech_tc100 is reused, not redone)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LIBRI = "librispeech_tc100"
EXTRA = ("speechocean762", "speech_commands", "dspspeech20", "arabic_speech_commands")
CORPORA = (LIBRI, *EXTRA)
LIBRI_TEST_SPEAKERS, LIBRI_SEED, LIBRI_FORCE = 51, 0, ("19", "26", "27")
HELD_OUT_SHARE, HELD_OUT_MIN = 0.25, 8
NOISE_CLIPS = ("doing_the_dishes.flac", "dude_miaowing.flac", "exercise_bike.flac", "pink_noise.flac",
               "running_tap.flac", "white_noise.flac")
HELD_OUT_NOISE = ("exercise_bike.flac", "pink_noise.flac", "running_tap.flac")
NOISE_DEV_FROM = 0.6  # the suite mixes in [60 %, 100 %) of each held-out clip


@dataclass(frozen=True)
class Row:
    path: str
    corpus: str
    speaker: str  # the corpus's own id

    @property
    def label(self) -> str:
        return f"{self.corpus}:{self.speaker}"


@dataclass(frozen=True)
class Split:
    train: list[Row]
    dev: list[Row]
    noise_train: list[str]
    noise_dev: list[str]


def speaker_hash(corpus: str, speaker: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{corpus}/{speaker}".encode(), digest_size=8).digest(), "big")


def held_out_count(n: int) -> int:
    """How many of `n` eligible speakers a corpus holds out: a quarter, at least 8 where there are 8."""
    return max(math.ceil(HELD_OUT_SHARE * n), min(HELD_OUT_MIN, n))


def extra_rows(data: Path, corpus: str) -> list[Row]:
    """A corpus of extra_speakers from its files.tsv (status ok), in the file's order."""
    root = data / "extra_speakers" / corpus
    with open(root / "files.tsv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r.get("status", "ok") == "ok"]
    return [Row(str(root / r["speaker"] / f"{r['utt']}.flac"), corpus, r["speaker"]) for r in rows]


def held_out_extra(rows: list[Row], corpus: str) -> set[str]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.speaker] = counts.get(r.speaker, 0) + 1
    eligible = sorted((s for s, c in counts.items() if c >= 2), key=lambda s: (speaker_hash(corpus, s), s))
    return set(eligible[: held_out_count(len(eligible))])


def split(data: Path = DATA) -> Split:
    """The split of every corpus under `data` (../shared/data). Raises FileNotFoundError if a corpus is missing."""
    train: list[Row] = []
    dev: list[Row] = []
    libri = make_lists.scan(data / LIBRI)
    if not libri:
        raise FileNotFoundError(f"{data / LIBRI}: no audio files")
    tr, te = make_lists.split(libri, LIBRI_TEST_SPEAKERS, LIBRI_SEED, list(LIBRI_FORCE))
    train += [Row(p, LIBRI, s) for p, s, _ in tr]
    dev += [Row(p, LIBRI, s) for p, s, _ in te]
    for corpus in EXTRA:
        rows = extra_rows(data, corpus)
        out = held_out_extra(rows, corpus)
        train += [r for r in rows if r.speaker not in out]
        dev += [r for r in rows if r.speaker in out]
    noise = data / "noise"
    return Split(train, dev, [str(noise / n) for n in NOISE_CLIPS if n not in HELD_OUT_NOISE],
                 [str(noise / n) for n in HELD_OUT_NOISE])


def write(s: Split, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train_all.txt", s.train), ("dev.txt", s.dev)):
        (out / name).write_text("".join(f"{r.path}\t{r.label}\n" for r in rows), encoding="utf-8")
    for name, files in (("noise_train.txt", s.noise_train), ("noise_dev.txt", s.noise_dev)):
        (out / name).write_text("".join(f"{f}\n" for f in files), encoding="utf-8")


def summary(s: Split) -> list[str]:
    lines = []
    for corpus in CORPORA:
        tr = [r for r in s.train if r.corpus == corpus]
        dv = [r for r in s.dev if r.corpus == corpus]
        lines.append(f"devsplit: {corpus}: {len({r.speaker for r in dv})} held-out speakers ({len(dv)} files), "
                     f"{len({r.speaker for r in tr})} training speakers ({len(tr)} files)")
    lines.append(f"devsplit: noise: training {', '.join(Path(f).name for f in s.noise_train)}; held out "
                 f"{', '.join(Path(f).name for f in s.noise_dev)}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder (default: %(default)s)")
    a = ap.parse_args()
    try:
        s = split(a.data)
    except FileNotFoundError as e:
        sys.exit(f"devsplit: {e}")
    write(s, a.out)
    print("\n".join(summary(s)), file=sys.stderr)


if __name__ == "__main__":
    main()

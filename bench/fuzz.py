"""Fuzz the readers of user input for minutes: the targets of tests/test_fuzz.py, with many more examples.

    python bench/fuzz.py                      # 3 minutes over all targets, reproducers under ./fuzz-findings
    python bench/fuzz.py --minutes 30 --targets stream,audio --out /tmp/findings --seed 7

Targets: the list parser (lines, list files of any bytes, format/read round trip), the keyed-matrix reader
(damaged embedding streams, any .npy header, random bytes), the trials, scores and identification-results
parsers, and the audio loader (`audio.load` of damaged WAV/FLAC/OGG/MP3/AIFF/AU/NIST files and random bytes, in
a worker process, so a decoder crash or hang is recorded and the run goes on). The time is shared equally.

Inputs come from hypothesis strategies (generation only: no shrinking, no example database), in batches with
seeds drawn from --seed, so a run is repeatable. Per target it reports the examples run, the distinct SpkidError
messages (digits and file names masked, first 70 characters), and every other outcome (another exception, a
failed property, a crash, a hang) as a bug, with the input saved under --out as a reproducer. Exit status 1 when
a bug was found.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the targets and strategies live with the tests that run them briefly

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

import test_fuzz as tf  # noqa: E402
from spkid.errors import SpkidError  # noqa: E402

BATCH = 200  # examples per hypothesis run (a new seed for each)
BUGS_SAVED = 5  # reproducers kept per distinct bug


def signature(message: str) -> str:
    """A message with file names and numbers masked: distinct kinds of error, not distinct inputs."""
    m = re.sub(r"'?/[^\s':]+'?|<stream>|<stdin>", "FILE", message)
    m = re.sub(r"\d+", "#", m)
    return m[:70]


class Stats:
    def __init__(self, name: str, out: Path) -> None:
        self.name, self.out = name, out
        self.examples = 0
        self.seconds = 0.0
        self.errors: collections.Counter[str] = collections.Counter()
        self.bugs: collections.Counter[str] = collections.Counter()
        self.saved: dict[str, list[str]] = collections.defaultdict(list)

    def bug(self, kind: str, value, suffix: str = ".json") -> None:
        self.bugs[kind] += 1
        if len(self.saved[kind]) < BUGS_SAVED:
            folder = self.out / self.name
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"bug{sum(len(v) for v in self.saved.values()) + 1}{suffix}"
            if isinstance(value, bytes):
                path.write_bytes(value)
            else:
                path.write_text(json.dumps(value, ensure_ascii=True, default=repr) + "\n")
            path.with_name(path.name + ".why").write_text(kind + "\n")
            self.saved[kind].append(str(path))


def run_batches(stats: Stats, strategy, one, until: float, base_seed: int) -> None:
    """Call `one(value)` on values of `strategy`, BATCH per hypothesis run, until the clock reaches `until`."""
    batch = 0
    while time.monotonic() < until:
        @seed(base_seed * 1_000_003 + batch)
        @settings(max_examples=BATCH, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def go(value) -> None:
            if time.monotonic() < until:
                stats.examples += 1
                one(value)

        go()
        batch += 1


def fuzz_parser(name: str, seconds: float, out: Path, base_seed: int) -> Stats:
    strategy, check = tf.TARGETS[name]
    stats = Stats(name, out)
    t0 = time.monotonic()

    def one(value) -> None:
        try:
            with tf.time_limit():
                check(value)
        except SpkidError as e:
            stats.errors[f"SpkidError: {signature(str(e))}"] += 1
        except tf.Hang:
            stats.bug("hang", value, ".json" if not isinstance(value, bytes) else ".bin")
        except Exception as e:  # noqa: BLE001 - anything else is what we are looking for
            stats.bug(f"{type(e).__name__}: {signature(str(e))}", value, ".json" if not isinstance(value, bytes) else ".bin")

    run_batches(stats, strategy, one, t0 + seconds, base_seed)
    stats.seconds = time.monotonic() - t0
    return stats


def fuzz_audio(seconds: float, out: Path, base_seed: int) -> Stats:
    stats = Stats("audio", out)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        seeds = tf.seed_files(folder)
        loader = tf.Loader(folder)

        def one(value) -> None:
            suffix, content = value
            path = folder / f"fuzzed{suffix}"
            path.write_bytes(content)
            answer = loader(path)
            if answer.startswith("ok "):
                stats.errors["ok (decoded)"] += 1
            elif answer.startswith("SpkidError"):
                stats.errors[signature(answer)] += 1
            else:
                stats.bug(signature(answer), content, suffix)

        try:
            run_batches(stats, tf.audio_files(seeds), one, t0 + seconds, base_seed)
        finally:
            loader.stop()
    stats.seconds = time.monotonic() - t0
    return stats


def main() -> int:
    names = [*tf.TARGETS, "audio"]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0, help="total run time, shared equally by the targets")
    ap.add_argument("--targets", default=",".join(names), help=f"comma-separated subset of: {', '.join(names)}")
    ap.add_argument("--out", type=Path, default=Path("fuzz-findings"), help="folder for reproducers of bugs found")
    ap.add_argument("--seed", type=int, default=0, help="seed of the batches (the same seed repeats a run)")
    ap.add_argument("--top", type=int, default=6, help="distinct SpkidError messages shown per target")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the parsers' warnings (e.g. about few candidates) are not findings
    chosen = [t.strip() for t in args.targets.split(",") if t.strip()]
    if unknown := set(chosen) - set(names):
        ap.error(f"unknown targets {sorted(unknown)}; choose from {names}")
    share = args.minutes * 60 / len(chosen)
    t0 = time.monotonic()
    results = []
    for name in chosen:
        print(f"fuzzing {name} for {share:.0f} s ...", file=sys.stderr, flush=True)
        stats = fuzz_audio(share, args.out, args.seed) if name == "audio" else fuzz_parser(name, share, args.out, args.seed)
        results.append(stats)
    total = time.monotonic() - t0

    print(f"\n{'target':<16} {'examples':>9} {'per s':>7} {'distinct errors':>15} {'bugs':>5}")
    for s in results:
        print(f"{s.name:<16} {s.examples:>9,} {s.examples / max(s.seconds, 1e-9):>7.0f} {len(s.errors):>15} {sum(s.bugs.values()):>5}")
    print(f"{'total':<16} {sum(s.examples for s in results):>9,}   in {total:.0f} s")
    for s in results:
        print(f"\n{s.name}: {s.examples:,} examples in {s.seconds:.0f} s")
        for msg, n in s.errors.most_common(args.top):
            print(f"  {n:>7,}  {msg}")
        if len(s.errors) > args.top:
            print(f"  ({len(s.errors) - args.top} more kinds)")
        for kind, n in s.bugs.most_common():
            print(f"  BUG {n:>5,}  {kind}\n             reproducers: {', '.join(s.saved[kind])}")
    found = sum(sum(s.bugs.values()) for s in results)
    print(f"\n{found} bug(s) found" + (f"; reproducers under {args.out}" if found else ""))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

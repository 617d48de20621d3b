"""What every subcommand shares: logging, progress, the one item loop (`map_entries`), the resumable file writing
of convert, vad --trim and features (`write_outputs`), and the steps every deciding command takes (embed a list,
read embeddings instead of audio, choose the threshold). Options: `_options`.

Nothing here imports torch at import time: `spkid --help` and TAB completion stay fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from functools import partial
from typing import TYPE_CHECKING, Generic, TypeVar

from spkid.errors import SpkidError, UsageError, check_interrupted
from spkid.fileio import all_or_nothing
from spkid.lists import Entry, plural

if TYPE_CHECKING:
    import numpy as np

    from spkid.cli._options import EmbedOptions, RuleOptions
    from spkid.decisions import ThresholdChoice
    from spkid.embedding import Embedder, ModelRef
    from spkid.gallery import Gallery
    from spkid.npyio import Embeddings
    from spkid.audio import Clip
    from spkid.utterance import Prepared, Preparer, Quality

log = logging.getLogger("spkid")
T = TypeVar("T")
U = TypeVar("U")
E = TypeVar("E", bound=Entry)

BATCH_CHUNK = 64  # files prepared (in parallel with -j) before their windows go through the network together


@dataclass
class State:
    verbose: bool = False
    quiet: bool = False
    command: str = ""


STATE = State()

class _PlainFormatter(logging.Formatter):
    """`spkid: warning: ...` lines for logs that are not a terminal (CI logs, files): no wrapping, no colour."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        prog = f"spkid {STATE.command}" if STATE.command else "spkid"
        return f"{prog}: {level}{record.getMessage()}"


def setup_logging(verbose: bool, quiet: bool) -> None:
    """Log to stderr (rich on a terminal, plain lines otherwise); -v shows debug messages, -q only errors."""
    STATE.verbose, STATE.quiet = verbose, quiet
    root = logging.getLogger()
    root.handlers.clear()
    if stderr_is_terminal():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=err_console(), show_time=False, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO)
    for noisy in ("numba", "matplotlib", "joblib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


_console = None


def err_console():
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True)
    return _console


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal, as rich decides it (TTY_COMPATIBLE, FORCE_COLOR, else isatty); rich (20 ms a
    call to import and set up) only when it may be one."""
    if "TTY_COMPATIBLE" not in os.environ and "FORCE_COLOR" not in os.environ and not sys.stderr.isatty():
        return False
    return err_console().is_terminal


def show_progress() -> bool:
    return stderr_is_terminal() and not STATE.quiet


@contextlib.contextmanager
def progress_bar(total: int, desc: str) -> Iterator[Callable[[], None]]:
    """A rich progress bar on stderr when it is a terminal (and not -q); yields an `advance()` callable."""
    if not show_progress():
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(desc), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console(), transient=True) as p:
        task = p.add_task(desc, total=total)
        yield lambda: p.advance(task)


def progress(items: Sequence[T], desc: str) -> Iterator[T]:
    with progress_bar(len(items), desc) as advance:
        for item in items:
            check_interrupted()
            yield item
            advance()


@dataclass
class ItemError:
    entry: Entry
    message: str


def _guard(fn: Callable[[Entry], T], entry: Entry) -> T | ItemError:
    try:
        return fn(entry)
    except SpkidError as e:
        return ItemError(entry, str(e))
    except OSError as e:
        return ItemError(entry, f"{entry.path}: {e.strerror or e}")


def map_entries(
    fn: Callable[[Entry], T],
    entries: Sequence[Entry],
    *,
    jobs: int,
    skip_bad: bool,
    desc: str,
    batch: Callable[[list[T]], Sequence[U]] | None = None,
    chunk: int = BATCH_CHUNK,
    summary: bool = True,
) -> list[tuple[Entry, T]] | list[tuple[Entry, U]]:
    """Apply `fn` to every entry (in order, `jobs` processes); return (entry, result) for the good ones.

    Strict (default): the first failure raises SpkidError naming the item. `--skip-bad`: failures are warned
    about and counted; SpkidError only when every item failed. `fn` must be picklable for jobs > 1.
    With `batch`, entries go `chunk` at a time and `batch(results)` turns the good results of each chunk into one
    output each (prepared files -> their embeddings: the network runs on many files' windows at once), so memory
    holds one chunk of `fn`'s results, not the whole list's. `summary`: log `done N/N` when there is no bar.
    """
    results: list = []
    errors: list[ItemError] = []
    step = chunk if batch is not None else max(len(entries), 1)
    with progress_bar(len(entries), desc) as advance:
        for a in range(0, len(entries), step):
            part = entries[a : a + step]
            good = _run_part(fn, part, jobs, skip_bad, errors, advance)
            if batch is not None and good:
                good = list(zip((e for e, _ in good), batch([r for _, r in good])))
            results += good
    if errors:
        _report_skipped(len(results), len(entries), errors)
    elif summary and not STATE.quiet and not show_progress():
        log.info("done %d/%d", len(results), len(entries))
    return results


def _run_part(fn: Callable[[Entry], T], part: Sequence[Entry], jobs: int, skip_bad: bool, errors: list[ItemError],
              advance: Callable[[], None]) -> list[tuple[Entry, T]]:
    if jobs > 1 and len(part) > 1:
        from joblib import Parallel, delayed

        # Stopping early on a bad item cancels queued tasks on purpose; joblib would warn about it.
        warnings.filterwarnings("ignore", message=".*tasks which were still being processed.*")
        outputs: Iterable = Parallel(n_jobs=jobs, return_as="generator")(delayed(_guard)(fn, e) for e in part)
    else:
        outputs = (_guard(fn, e) for e in part)
    good = []
    try:
        for entry, out in zip(part, outputs):
            check_interrupted()
            advance()
            if _keep(out, skip_bad, errors):
                good.append((entry, out))
    except BaseException:  # a bad item, Ctrl-C: joblib stops its workers now, before the caller cleans up
        if hasattr(outputs, "close"):
            outputs.close()
        raise
    return good


def _keep(out: T | ItemError, skip_bad: bool, errors: list[ItemError]) -> bool:
    """Whether `out` is a good result. A failed item raises SpkidError (strict), or with `skip_bad` is warned
    about and added to `errors`."""
    if not isinstance(out, ItemError):
        return True
    if not skip_bad:
        raise SpkidError(out.message)
    log.warning("skipped %s", out.message)
    errors.append(out)
    return False


def _report_skipped(good: int, total: int, errors: list[ItemError]) -> None:
    """The summary after a `--skip-bad` run with failures; SpkidError when every item failed."""
    log.warning("done %d/%d (%d skipped)", good, total, len(errors))
    if not good:
        raise SpkidError(f"all {total} items failed; first: {errors[0].message}")


def check_unique_outputs(entries: Sequence[Entry], planned: Sequence[Path]) -> None:
    seen: dict[Path, str] = {}
    for e, p in zip(entries, planned):
        if p in seen:
            raise SpkidError(f"{e.path} and {seen[p]} would both be written to {p}; use --root or rename")
        seen[p] = e.path


@dataclass
class Outputs(Generic[T]):
    """What `write_outputs` did: `fn`'s results of the items it ran (by key: the path, or a Kaldi id), the keys
    `--skip-bad` skipped, and how many files this run wrote and how many it kept."""

    results: dict[str, T]
    failed: set[str]
    written: int
    kept: int

    def log_summary(self, *more: str) -> None:
        """One line after the run: `1 file written, 2 kept (already there; --overwrite redoes them), 1 skipped`."""
        parts = [f"{plural(self.written, 'file')} written"]
        if self.kept:
            parts.append(f"{self.kept:,} kept (already there; --overwrite redoes {'it' if self.kept == 1 else 'them'})")
        if self.failed:
            parts.append(f"{len(self.failed):,} skipped")
        log.info("%s", ", ".join([*parts, *more]))


def write_outputs(fn: Callable[[E], T], items: Sequence[E], planned: Sequence[Path], *, overwrite: bool, jobs: int,
                  skip_bad: bool, desc: str) -> Outputs[T]:
    """Run `fn` (which writes `planned[i]` for `items[i]`) on every item whose output is missing, or on all with
    `overwrite`: outputs already there are kept, so a rerun resumes an interrupted one.

    A failed run (a bad item, a full disk, Ctrl-C) removes what it created (`fileio.all_or_nothing`). The caller logs
    `Outputs.log_summary()` once it has said what it has to say about single items.
    """
    check_unique_outputs(items, planned)
    todo = [(e, p) for e, p in zip(items, planned) if overwrite or not p.exists()]
    with all_or_nothing([p for _, p in todo]):
        good = map_entries(fn, [e for e, _ in todo], jobs=jobs, skip_bad=skip_bad, desc=desc, summary=False)
    results = {e.key: r for e, r in good}
    return Outputs(results=results, failed={e.key for e, _ in todo} - results.keys(),
                   written=sum(e.key in results and p.exists() for e, p in todo), kept=len(items) - len(todo))


def embedder(opts: EmbedOptions, ref: ModelRef | None = None, jobs: int = 1) -> Embedder:
    """The network and front end of `ref` (else `opts.model`), set up as the options say (`jobs`: the worker
    processes preparing files beside it, so that network threads do not oversubscribe the cores)."""
    from spkid.embedding import Embedder

    return Embedder.from_model(ref if ref is not None else opts.model, opts.device, use_vad=not opts.no_vad,
                               window_s=opts.window, hop_s=opts.hop, batch_size=opts.batch_size, threads=opts.threads,
                               backend=opts.backend, jobs=jobs)


def embed_entries(emb: Embedder, entries: Sequence[Entry], *, jobs: int = 1, skip_bad: bool = False,
                  desc: str = "embed", min_speech: float | None = None, purpose: str = "a decision",
                  clip: Clip | None = None, summary: bool = True) -> tuple[list[Entry], np.ndarray, list[Quality]]:
    """Embed every entry through `map_entries`: files prepared `jobs` at a time, windows of a chunk of files batched
    through the network. An item with less than `min_speech` seconds of speech is a bad item (strict: fails naming
    it; --skip-bad: skipped and counted), refused for `purpose`. The entry `-` is `clip`, the audio read from stdin.
    A file at another sample rate is resampled with a warning (vad and features refuse it: their outputs are
    sample-aligned). Returns the good entries, their embeddings `(N, D)` and quality records."""
    import numpy as np

    done = map_entries(partial(_prepare, emb.prep, min_speech, purpose, clip), entries, jobs=jobs, skip_bad=skip_bad, desc=desc,
                       batch=partial(_embed_batch, emb), summary=summary)
    vecs = np.stack([v for _, (v, _) in done]) if done else np.zeros((0, emb.net.embed_dim), np.float32)
    for e, (_, q) in done:
        if q.resampled_from is not None:
            log.warning("%s: recorded at %d Hz, resampled to %d Hz (`spkid convert` does it once for good)",
                        _shown(e), q.resampled_from, emb.prep.front.sample_rate)
    return [e for e, _ in done], vecs, [q for _, (_, q) in done]


def _shown(entry: Entry) -> str:
    return entry.shown


def _prepare(prep: Preparer, min_speech: float | None, purpose: str, clip: Clip | None, entry: Entry) -> Prepared:
    if getattr(entry, "start", None) is not None:  # a Kaldi segment: its seconds of the recording
        from spkid import audio

        x, sr = audio.load_segment(audio.source(entry), entry.start, entry.end)
        prepared = prep.prepare_signal(x, sr, entry.shown)
    elif getattr(entry, "command", False):  # a wav.scp piped command, allowed by --allow-commands
        from spkid import audio

        prepared = prep.prepare_file(audio.source(entry))
    else:
        prepared = prep.prepare_file(clip if entry.path == "-" and clip is not None else entry.path)
    if min_speech is not None:
        from spkid.decisions import require_speech

        require_speech(_shown(entry), prepared.quality, min_speech, purpose)
    return prepared


def gate_embeddings(emb: Embeddings, min_speech: float, purpose: str, skip_bad: bool) -> list[int]:
    """The speech gate for embeddings given as they are: the rows whose quality record (written by `spkid embed`)
    shows enough speech. A row without is a bad item (strict: fails naming it; --skip-bad: skipped and counted);
    a stream without records (older ones, `--no-vad`) passes, with a warning that its speech was not checked."""
    from spkid.decisions import require_speech

    if emb.quality is None:
        log.warning("%s: the embeddings carry no quality record, so their speech was not checked "
                    "(re-create them with `spkid embed`)", emb.source)
        return list(range(len(emb.keys)))
    kept: list[int] = []
    errors: list[ItemError] = []
    for i, (key, quality) in enumerate(zip(emb.keys, emb.quality)):
        out = _guard(lambda e: require_speech(e.path, quality, min_speech, purpose), Entry(str(key)))
        if _keep(out, skip_bad, errors):
            kept.append(i)
    if errors:
        _report_skipped(len(kept), len(emb.keys), errors)
    return kept


def _embed_batch(emb: Embedder, prepared: list[Prepared]) -> list[tuple[np.ndarray, Quality]]:
    return list(zip(emb.embed_prepared(prepared), (p.quality for p in prepared)))


def embeddings_source(inputs: list[str] | None, forced: bool) -> str | None:
    """Where embeddings come from instead of audio: with `forced` (--from-embeddings) the one input (or stdin);
    otherwise stdin when it starts with a `.npy` record (an embedding stream, not a text list), or the one input
    when it is a keyed-matrix file (its first record: 1-D text keys); else None."""
    from spkid import streams

    from spkid import npyio

    args = list(inputs or [])
    if forced:
        if len(args) > 1:
            raise UsageError("--from-embeddings reads one embedding file (or stdin); join several with `cat`")
        return args[0] if args else "-"
    if args in ([], ["-"]) and streams.stdin_is_npy():
        return "-"
    if len(args) == 1 and args[0].endswith(".npy") and npyio.is_keyed_file(args[0]):
        return args[0]  # `spkid embed -o emb.npy` output named as the input: embeddings, not a feature matrix
    return None


def load_cohort(path: str, sha256: str) -> np.ndarray:
    """The --cohort embeddings as unit rows, checked against the model `sha256`."""
    from spkid import decisions, streams

    c = streams.read_embeddings(path)
    return decisions.check_cohort(c.values, c.model_sha256, sha256, path)


def choose_threshold(rule: RuleOptions, g: Gallery | None, ref: ModelRef | None, spec=None, *,
                     as_norm: bool) -> ThresholdChoice:
    """The one threshold chain of every deciding command: --threshold, the gallery's, the calibration of the
    model (`ref`, its spec when already read), else none. Logged on stderr."""
    from spkid import decisions, modelfile

    model_cal = modelfile.model_calibration(ref, spec) if rule.threshold is None else None
    label = "" if ref is None else "default (the bundled one)" if ref.label == "default" else ref.label
    thr = decisions.choose_threshold(rule.threshold, g, model_cal, label, rule.point, as_norm)
    return thr

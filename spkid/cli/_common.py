"""What every subcommand shares: option types, logging, progress, and the per-file job runner.

Nothing here imports torch: `spkid --help` and TAB completion stay fast.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from spkid.errors import SpkidError, check_interrupted
from spkid.fileio import remove_temp_files
from spkid.lists import Entry

log = logging.getLogger("spkid")
T = TypeVar("T")


@dataclass
class State:
    verbose: bool = False
    quiet: bool = False
    command: str = ""


STATE = State()

InputsArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Audio/feature files, list files (*.txt *.lst *.list *.scp: PATH[<TAB>LABEL] a line), or - for a list on stdin (the default).",
        show_default=False,
        metavar="INPUT",
    ),
]
OutDirOpt = Annotated[str, typer.Option("--out-dir", "-d", metavar="DIR", help="Folder for the written files (created; input layout kept below it).")]
RootOpt = Annotated[
    str | None,
    typer.Option("--root", metavar="DIR", help="Strip this folder from input paths to lay out outputs (default: the inputs' common folder)."),
]
JobsOpt = Annotated[int, typer.Option("--jobs", "-j", min=1, metavar="N", help="Parallel worker processes (joblib).")]
ShardOpt = Annotated[
    str | None,
    typer.Option("--shard", metavar="I/N", help="Process only every N-th entry starting at the I-th (1-based); `cat` joins shard outputs."),
]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Warn about and skip unreadable items instead of failing (exit 1 only if all fail).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Redo outputs that exist already (default: keep them, so a rerun resumes).")]
LabelDepthOpt = Annotated[
    int,
    typer.Option("--label-depth", min=1, metavar="N", help="Without a LABEL column, the speaker is this ancestor folder's name (1 = parent; LibriSpeech/VoxCeleb: 2)."),
]
OutputOpt = Annotated[str | None, typer.Option("--output", "-o", metavar="FILE", help="Write to FILE (atomically) instead of stdout.")]


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
    if err_console().is_terminal:
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


def show_progress() -> bool:
    return err_console().is_terminal and not STATE.quiet


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
    fn: Callable[[Entry], T], entries: Sequence[Entry], *, jobs: int, skip_bad: bool, desc: str
) -> list[tuple[Entry, T]]:
    """Apply `fn` to every entry (in order, `jobs` processes); return (entry, result) for the good ones.

    Strict (default): the first failure raises SpkidError naming the item. `--skip-bad`: failures are warned
    about and counted; SpkidError only when every item failed. `fn` must be picklable for jobs > 1.
    """
    results: list[tuple[Entry, T]] = []
    errors: list[ItemError] = []
    if jobs > 1 and len(entries) > 1:
        from joblib import Parallel, delayed

        # Stopping early on a bad item cancels queued tasks on purpose; joblib would warn about it.
        warnings.filterwarnings("ignore", message=".*tasks which were still being processed.*")
        outputs: Iterable = Parallel(n_jobs=jobs, return_as="generator")(delayed(_guard)(fn, e) for e in entries)
    else:
        outputs = (_guard(fn, e) for e in entries)
    with progress_bar(len(entries), desc) as advance:
        try:
            for entry, out in zip(entries, outputs):
                check_interrupted()
                advance()
                if keep(out, skip_bad, errors):
                    results.append((entry, out))
        except BaseException:  # a bad item, Ctrl-C: joblib stops its workers now, before the caller cleans up
            if hasattr(outputs, "close"):
                outputs.close()
            raise
    if errors:
        report_skipped(len(results), len(entries), errors)
    elif not STATE.quiet and not show_progress():
        log.info("done %d/%d", len(results), len(entries))
    return results


def keep(out: T | ItemError, skip_bad: bool, errors: list[ItemError]) -> bool:
    """Whether `out` is a good result. A failed item raises SpkidError (strict), or with `skip_bad` is warned
    about and added to `errors`."""
    if not isinstance(out, ItemError):
        return True
    if not skip_bad:
        raise SpkidError(out.message)
    log.warning("skipped %s", out.message)
    errors.append(out)
    return False


def report_skipped(good: int, total: int, errors: list[ItemError]) -> None:
    """The summary after a `--skip-bad` run with failures; SpkidError when every item failed."""
    log.warning("done %d/%d (%d skipped)", good, total, len(errors))
    if not good:
        raise SpkidError(f"all {total} items failed; first: {errors[0].message}")


def run_file_job(
    fn: Callable[[Entry], T],
    entries: Sequence[Entry],
    planned: Sequence[Path],
    *,
    jobs: int,
    skip_bad: bool,
    desc: str,
) -> list[tuple[Entry, T]]:
    """`map_entries` for commands that write one file per entry to `planned[i]`.

    When the run fails (a bad item in strict mode, Ctrl-C), files this run created are removed again,
    so a failed command leaves nothing half-done behind; files that existed before are kept. Temp files of
    workers killed mid-write (joblib kills them when the run stops) are removed too.
    """
    existed = {p for p in planned if p.exists()}
    try:
        return map_entries(fn, entries, jobs=jobs, skip_bad=skip_bad, desc=desc)
    except BaseException:
        for p in planned:
            if p not in existed:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    p.unlink()
        remove_temp_files(planned)
        raise


def check_unique_outputs(entries: Sequence[Entry], planned: Sequence[Path]) -> None:
    seen: dict[Path, str] = {}
    for e, p in zip(entries, planned):
        if p in seen:
            raise SpkidError(f"{e.path} and {seen[p]} would both be written to {p}; use --root or rename")
        seen[p] = e.path
# FOUNDATION READY

"""The exception types the CLI turns into `spkid <cmd>: error: ...` (exit 1; a UsageError exits 2), and Ctrl-C
bookkeeping."""

from __future__ import annotations

import signal
import sys
import threading


class SpkidError(Exception):
    """A runtime failure the user can act on: the message names the file and the problem."""


class UsageError(SpkidError):
    """A mistake in how the command was called (options that do not go together): exit code 2, like typer's own."""


_interrupted = False


def _on_sigint(signum, frame) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _unraisable(hook):
    def quiet(unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            hook(unraisable)

    quiet.spkid = True
    return quiet


def catch_interrupts() -> None:
    """Make a Ctrl-C impossible to lose.

    Python swallows an exception raised inside a `__del__` method or a weakref callback (printing "Exception
    ignored in ..."). A Ctrl-C that lands while, say, a SoundFile is garbage-collected would vanish and the
    command would run on and commit its output. The handler installed here remembers the interrupt as well as
    raising KeyboardInterrupt: commit points call `check_interrupted()` before renaming a file into place, and
    `main()` exits 130 even if the exception itself was swallowed. Swallowed interrupts print nothing.
    """
    if (threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler):  # not where SIGINT is ignored (&)
        signal.signal(signal.SIGINT, _on_sigint)
    if not getattr(sys.unraisablehook, "spkid", False):
        sys.unraisablehook = _unraisable(sys.unraisablehook)


def check_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came at any point, even where Python swallowed the exception."""
    if _interrupted:
        raise KeyboardInterrupt

"""Folders written whole and read whole: a new version is built beside the old one (`.NAME.tmp-PID-XXXX`,
`atomic_dir`) and swapped into place (Linux `renameat2(RENAME_EXCHANGE)`; elsewhere two renames, with `.NAME.old-*`
picked up again by `leftover_old` / `clean_leftovers` after a crash between them), so a crash leaves the old folder
or the new one; `read_snapshot` reads every file of one version while writers swap. No stdio.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from spkid.errors import SpkidError, check_interrupted
from spkid.fileio import as_write_failure, fsync_dir, make_dirs, remove_empty_dirs, write_failure

log = logging.getLogger(__name__)
T = TypeVar("T")
SNAPSHOT_TRIES = 5


def real_path(path: str | os.PathLike) -> Path:
    """`path` with symlinks resolved: a folder swapped into place through a symlink must replace its target (and
    keep the link), and writers through the link and through the target must share one lock."""
    return Path(os.path.realpath(path))


@contextlib.contextmanager
def atomic_dir(dst: Path) -> Iterator[Path]:
    """Yield a new empty folder beside `dst` (symlinks resolved) to fill; on success it is synced and swapped into
    place (`swap_into_place`); on any exception it is removed and `dst` is untouched. A failed write is one
    SpkidError naming `dst` and the OS reason."""
    dst = real_path(dst)
    created = make_dirs(dst.parent)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}-{os.urandom(3).hex()}"
    try:  # from before the mkdir on: a Ctrl-C right after it must not leave the folder behind
        try:
            tmp.mkdir()
        except OSError as e:
            raise write_failure(dst, e) from None
        yield tmp
        fsync_dir(tmp)
        swap_into_place(tmp, dst)
    except BaseException as e:
        err = as_write_failure(dst, e, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty_dirs(created)
        if err is not None:
            raise err from None
        raise


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_into_place(new: Path, dst: Path) -> None:
    """Make the folder `new` be `dst`, atomically where the platform allows; the old `dst` is removed."""
    check_interrupted()
    if not dst.exists():
        os.rename(new, dst)
    elif exchange(new, dst):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old folder
    else:
        old = dst.parent / f".{dst.name}.old-{os.getpid()}-{os.urandom(3).hex()}"
        os.rename(dst, old)
        os.rename(new, dst)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(dst.parent)


def siblings(dst: Path, kind: str) -> list[Path]:
    """The `.NAME.<kind>-*` entries beside `dst` (no glob: a NAME like `g[1]` must not match `g1`'s)."""
    prefix = f".{dst.name}.{kind}-"
    try:
        return [dst.parent / n for n in os.listdir(dst.parent) if n.startswith(prefix)]
    except OSError:
        return []


def leftover_old(dst: Path, complete: str) -> Path | None:
    """The newest `.NAME.old-*` folder beside `dst` holding the file `complete` (left by a crash mid-swap), or None."""
    dst = real_path(dst)
    olds = []
    for p in siblings(dst, "old"):
        with contextlib.suppress(OSError):
            olds.append((p.stat().st_mtime, p))
    return next((o for _, o in sorted(olds, reverse=True) if (o / complete).is_file()), None)


def clean_leftovers(dst: Path, complete: str) -> None:
    """Under the folder's writer lock: remove temp folders of writers that died; when `dst` lacks the file
    `complete`, restore the old folder a crash left aside."""
    dst = real_path(dst)
    if not dst.parent.is_dir():
        return
    if not (dst / complete).is_file():
        old = leftover_old(dst, complete)
        if old is not None:
            log.warning("%s: restoring the gallery an interrupted update left in %s", dst, old)
            if dst.is_dir() and not any(dst.iterdir()):
                dst.rmdir()
            os.rename(old, dst)
    for p in siblings(dst, "tmp") + siblings(dst, "old"):
        log.debug("removing %s, left by an interrupted enroll", p)
        if p.is_symlink() or not p.is_dir():
            with contextlib.suppress(OSError):
                p.unlink()
        else:
            shutil.rmtree(p, ignore_errors=True)


class Swapped(Exception):
    """Raised by a `read_snapshot` reader: a file is missing because a writer swapped the folder meanwhile."""


def read_snapshot(folder: Path, names: Iterable[str], reader: Callable[[dict[str, BinaryIO], Callable[[], bool]], T]) -> T:
    """`reader(files, moved)` on one version of `folder`, even while writers swap new versions into place.

    The folder is opened once and each of `names` opened relative to that handle before any is read (files that
    are not there are left out of `files`): a swap moves a whole folder, and the old folder's files, deleted by
    the writer afterwards, stay readable (and mappable) through open handles. A file missing because the old
    folder was deleted between the two opens is told from a damaged folder by `moved()` (the path names
    another folder now); the reader then raises `Swapped` and the newer version is read.
    """
    names = list(names)
    for _ in range(SNAPSHOT_TRIES):
        try:
            dfd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError:  # between the two renames of a non-Linux swap
            continue
        except OSError as e:
            raise SpkidError(f"{folder}: cannot open the folder ({e.strerror})") from None
        files: dict[str, BinaryIO] = {}
        try:
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    files[name] = os.fdopen(os.open(name, os.O_RDONLY, dir_fd=dfd), "rb")
            return reader(files, lambda: _moved(folder, dfd))
        except Swapped:
            continue
        except OSError as e:
            raise SpkidError(f"{folder}: cannot read ({e.strerror})") from None
        finally:
            for f in files.values():
                f.close()
            os.close(dfd)
    raise SpkidError(f"{folder}: replaced {SNAPSHOT_TRIES} times while being read; try again")


def _moved(folder: Path, dfd: int) -> bool:
    """Whether `folder` names another directory than the open `dfd` now."""
    try:
        st = os.stat(folder)
    except OSError:
        return True
    here = os.fstat(dfd)
    return (st.st_ino, st.st_dev) != (here.st_ino, here.st_dev)

"""Files on disk: opening a user's input file, atomic file writes, atomic folder swaps. No stdio.

A file is written through a temp file in the same folder, renamed into place only on success (`atomic_write`,
`atomic_path`). A folder (a gallery) is built whole beside the old one (`.NAME.tmp-PID-XXXX`, `atomic_dir`), then
swapped into place (Linux `renameat2(RENAME_EXCHANGE)`; elsewhere two renames, with `.NAME.old-*` picked up again by
`leftover_old` / `clean_leftovers` after a crash between them): a crash leaves the old folder or the new one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

from spkid.errors import SpkidError, check_interrupted
from spkid.lists import decode_text

log = logging.getLogger(__name__)


@contextlib.contextmanager
def open_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a user's input file for binary reading, with one clear error for the usual mistakes."""
    p = Path(path)
    if p.is_dir():
        raise SpkidError(f"{path}: is a directory, expected a file")
    try:
        f = open(p, "rb")
    except FileNotFoundError:
        raise SpkidError(f"{path}: no such file") from None
    except PermissionError:
        raise SpkidError(f"{path}: permission denied") from None
    with f:
        yield f


def read_text(path: str | os.PathLike, what: str | None = None) -> str:
    """A user's UTF-8 text file (`lists.decode_text`: a BOM is dropped, bad bytes are an error naming the line)."""
    with open_file(path) as f:
        return decode_text(f.read(), str(path), what)


def default_mode() -> int:
    """The permission bits a plain `open()` gives a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _mode_for(path: Path, keep_mode: bool) -> int:
    if keep_mode:
        with contextlib.suppress(FileNotFoundError):
            return path.stat().st_mode & 0o777
    return default_mode()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", keep_mode: bool = False) -> Iterator[IO]:
    """Write `path` through a temp file in the same folder, renamed into place only on success.

    On any exception (KeyboardInterrupt included) the temp file is removed and `path` is untouched.
    The file gets the permissions a plain `open()` would give (mkstemp's are 0600), or with `keep_mode` those
    of the file it replaces.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:  # from the temp file's creation on: a Ctrl-C right after it must not leave it behind
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, _mode_for(path, keep_mode))
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        check_interrupted()
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def atomic_path(path: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """Like `atomic_write`, but yields a temp *path* (same folder, same suffix) for writers that want a filename."""
    return _atomic_path(Path(path))


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:  # as in atomic_write
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
        os.fchmod(fd, default_mode())
        os.close(fd)
        yield Path(tmp)
        check_interrupted()
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


_TEMP_NAME = re.compile(r"^\.(?P<base>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>\.[^.]+)?$")  # mkstemp's 8 characters


def remove_temp_files(paths: Iterable[str | os.PathLike]) -> None:
    """Remove the temp files that `atomic_write`/`atomic_path` leave beside `paths` when the writing process is
    killed mid-write (a parallel worker killed on Ctrl-C): each folder is listed once."""
    by_dir: dict[Path, set[str]] = {}
    for p in map(Path, paths):
        by_dir.setdefault(p.parent, set()).add(p.name)
    for folder, names in by_dir.items():
        try:
            found = os.listdir(folder)
        except OSError:
            continue
        for name in found:
            m = _TEMP_NAME.match(name)
            if m and m["base"] + (m["suffix"] or "") in names:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(folder / name)


def write_npy(path: Path, arr: np.ndarray) -> None:
    """One `.npy` file, synced to disk; not atomic by itself: for a folder that `atomic_dir` swaps into place."""
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def write_bytes(path: Path, data: bytes) -> None:
    """`data` as the file `path`, synced to disk; not atomic by itself: for a folder that `atomic_dir` swaps in."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a folder's entries durable (where the platform allows)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(dst: Path) -> Iterator[Path]:
    """Yield a new empty folder beside `dst` to fill; on success it is synced and swapped into place as `dst`
    (`swap_into_place`); on any exception it is removed and `dst` is untouched."""
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}-{os.urandom(3).hex()}"
    tmp.mkdir()
    try:
        yield tmp
        fsync_dir(tmp)
        swap_into_place(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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


def leftover_old(dst: Path, complete: str) -> Path | None:
    """The newest `.NAME.old-*` folder beside `dst` holding the file `complete` (left by a crash mid-swap), or None."""
    if not dst.parent.is_dir():
        return None
    olds = sorted(dst.parent.glob(f".{dst.name}.old-*"), key=lambda p: p.stat().st_mtime)
    return next((o for o in reversed(olds) if (o / complete).is_file()), None)


def clean_leftovers(dst: Path, complete: str) -> None:
    """Under the folder's writer lock: remove temp folders of writers that died; when `dst` lacks the file
    `complete`, restore the old folder a crash left aside."""
    if not dst.parent.is_dir():
        return
    if not (dst / complete).is_file():
        old = leftover_old(dst, complete)
        if old is not None:
            log.warning("%s: restoring the gallery an interrupted update left in %s", dst, old)
            if dst.is_dir() and not any(dst.iterdir()):
                dst.rmdir()
            os.rename(old, dst)
    for p in list(dst.parent.glob(f".{dst.name}.tmp-*")) + list(dst.parent.glob(f".{dst.name}.old-*")):
        log.debug("removing %s, left by an interrupted enroll", p)
        shutil.rmtree(p, ignore_errors=True)

"""Files on disk: opening a user's input file, atomic file writes, and one error line for a failed write. No stdio.

A file is written through a temp file in the same folder (`.NAME.PID-HOST.XXXXXXXX.tmp`), renamed into place only
on success (`atomic_write`, `atomic_path`); a failure removes it and the folders made for it, and temp files of
killed runs are removed by the next write in that folder. Folders written whole: `spkid.folders`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import socket
from collections.abc import Iterable, Iterator, Sequence
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


WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG})


def write_failure(path: str | os.PathLike, e: BaseException, probe: str | os.PathLike | None = None) -> SpkidError:
    """One line naming `path` and the OS reason for a failed write. Writers that lose the errno (numpy's
    "N requested and M written", libsndfile's system error) are explained by probing `probe`'s folder (before
    the temp file is removed: a full disk has room again once it is gone)."""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else None
    if reason is None:
        reason = _probe_reason(Path(probe or path)) or (str(e).strip().splitlines() or [type(e).__name__])[-1]
    return SpkidError(f"{path}: cannot write ({reason})")


def _probe_reason(path: Path) -> str | None:
    folder = path if path.is_dir() else path.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return os.strerror(errno.EROFS)
    if st.f_bavail * st.f_frsize < (1 << 20) or st.f_favail == 0:  # under 1 MiB (or no inode) left
        return os.strerror(errno.ENOSPC)
    if not os.access(folder, os.W_OK):
        return os.strerror(errno.EACCES)
    return None


def as_write_failure(path: str | os.PathLike, e: BaseException, probe: str | os.PathLike | None = None) -> SpkidError | None:
    """`write_failure` when `e` is what a failed write raises, else None: an OSError of the usual errnos (or of
    none: numpy's short write), or a RuntimeError of a library writing through its own C I/O (libsndfile, torch's
    zip writer) where the folder is full, read-only or not writable."""
    if isinstance(e, OSError) and (e.errno is None or e.errno in WRITE_ERRNOS):
        return write_failure(path, e, probe)
    if isinstance(e, RuntimeError) and not isinstance(e, SpkidError):
        reason = _probe_reason(Path(probe or path))
        if reason is not None:
            return SpkidError(f"{path}: cannot write ({reason})")
    return None


def make_dirs(folder: Path) -> list[Path]:
    """`mkdir -p folder`; returns the folders it created, outermost first (to remove again on failure)."""
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    created = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            if not d.is_dir():
                raise SpkidError(f"{d}: exists and is not a folder") from None
            continue
        except OSError as e:
            remove_empty_dirs(created)
            raise write_failure(d, e) from None
        created.append(d)
    return created


def remove_empty_dirs(created: Iterable[Path]) -> None:
    """Remove the folders `make_dirs` created, innermost first, where they are still empty."""
    for d in reversed(list(created)):
        with contextlib.suppress(OSError):
            d.rmdir()


_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
# temp files: .NAME.PID-HOST.XXXXXXXX.tmp (atomic_write) and .STEM.PID-HOST.XXXXXXXX.tmp.SUFFIX (atomic_path);
# files of spkid versions before the PID-HOST part lack it
_TEMP_TAIL = re.compile(r"^(?:(?P<pid>\d+)-(?P<host>[0-9a-f]{6})\.)?[a-z0-9_]{8}\.tmp(?P<suffix>\.[^.]+)?$")
_cleaned: set[str] = set()


@contextlib.contextmanager
def _temp_file(path: Path, suffix_style: bool) -> Iterator[tuple[int, str]]:
    """A temp file beside `path` (fd, name), renamed onto `path` when the block ends without exception; every
    failure removes it and the folders made for it, and a failed write becomes `write_failure`."""
    created = make_dirs(path.parent)
    tmp = None
    try:  # from the temp file's creation on: a Ctrl-C right after it must not leave it behind
        base, suffix = (path.stem, f".tmp{path.suffix}") if suffix_style else (path.name, ".tmp")
        fd = None
        while fd is None:  # the name is known before the file exists (mkstemp's is not until it returns)
            tmp = str(path.parent / f".{base}.{os.getpid()}-{_HOST}.{os.urandom(4).hex()}{suffix}")
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            except OSError as e:
                tmp = None
                raise write_failure(path, e) from None
        yield fd, tmp
        check_interrupted()
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise write_failure(path, e) from None
    except BaseException as e:
        err = as_write_failure(path, e, tmp)
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        remove_empty_dirs(created)
        if err is not None:
            raise err from None
        raise
    _remove_dead_temps(path.parent)


def _remove_dead_temps(folder: Path) -> None:
    """Once per folder and process, after a successful write there: remove temp files of this host's spkid
    processes that are no longer running (killed mid-write), so a rerun on the same output leaves none."""
    key = str(folder.resolve())
    if key in _cleaned:
        return
    _cleaned.add(key)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = _temp_match(name)
        if m is not None and m[1]["pid"] and m[1]["host"] == _HOST and not pid_alive(int(m[1]["pid"])):
            log.debug("removing %s, left by a killed spkid process", folder / name)
            with contextlib.suppress(OSError):
                os.unlink(folder / name)


def _temp_match(name: str) -> tuple[str, re.Match] | None:
    """(the file it stands for, the match of its tail) when `name` is a temp file of `atomic_write`/`atomic_path`."""
    if not name.startswith("."):
        return None
    parts = name[1:].split(".")
    for i in range(1, len(parts)):
        m = _TEMP_TAIL.match(".".join(parts[i:]))
        if m:
            return ".".join(parts[:i]) + (m["suffix"] or ""), m
    return None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (one that exists but is not ours counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", keep_mode: bool = False) -> Iterator[IO]:
    """Write `path` through a temp file in the same folder, renamed into place only on success.

    On any exception (KeyboardInterrupt included) the temp file and the folders made for it are removed and
    `path` is untouched; a failed write (disk full, read-only, permission) is one SpkidError naming `path` and
    the OS reason. The file gets the permissions a plain `open()` would give (the temp file is made 0600), or with
    `keep_mode` those of the file it replaces. Temp files of killed runs in the folder are removed afterwards.
    """
    path = Path(path)
    with _temp_file(path, False) as (fd, tmp):
        os.fchmod(fd, _mode_for(path, keep_mode))
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_path(path: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """Like `atomic_write`, but yields a temp *path* (same folder, same suffix) for writers that want a filename."""
    return _atomic_path(Path(path))


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    with _temp_file(path, True) as (fd, tmp):
        os.fchmod(fd, default_mode())
        os.close(fd)
        yield Path(tmp)


@contextlib.contextmanager
def all_or_nothing(planned: Sequence[str | os.PathLike]) -> Iterator[None]:
    """For a command writing the files `planned` (each atomically): when the block fails (a bad item in strict
    mode, a full disk, Ctrl-C), remove the planned files it created, the temp files of killed workers beside them
    and the folders it created that are left empty; files and folders that existed before are kept."""
    paths = [Path(p) for p in planned]
    existed = {p for p in paths if os.path.lexists(p)}
    new_dirs: set[Path] = set()
    for folder in {p.parent for p in paths}:
        while not folder.exists() and folder not in new_dirs and folder != folder.parent:
            new_dirs.add(folder)
            folder = folder.parent
    try:
        yield
    except BaseException:
        for p in paths:
            if p not in existed:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    p.unlink()
        remove_temp_files(paths)
        for d in sorted(new_dirs, key=lambda d: len(d.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


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
            if _temp_of(name, names):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(folder / name)


def _temp_of(name: str, names: set[str]) -> bool:
    """Whether `name` is a temp file of `atomic_write`/`atomic_path` for one of `names`."""
    m = _temp_match(name)
    return m is not None and m[0] in names


class _Writer:
    """Only `write()`: numpy then writes in chunks through Python's I/O, which keeps the errno of a failed write
    (its fast path, `tofile`, reports a full disk as "N requested and M written")."""

    def __init__(self, f: BinaryIO) -> None:
        self.write = f.write


def write_npy(path: Path, arr: np.ndarray) -> None:
    """One `.npy` file, synced to disk; not atomic by itself: for a folder that `atomic_dir` swaps into place."""
    with open(path, "wb") as f:
        np.lib.format.write_array(_Writer(f), arr, allow_pickle=False)
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

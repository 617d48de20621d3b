"""A cross-process writer lock for a folder (a gallery): `.NAME.lock` beside it, so concurrent writers queue. No stdio."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from spkid.errors import SpkidError
from spkid.fileio import make_dirs, pid_alive, remove_empty_dirs
from spkid.folders import clean_leftovers, real_path

log = logging.getLogger(__name__)

LOCK_WAIT_S = 600.0


class GalleryLock:
    """Exclusive writer lock `.NAME.lock` beside a gallery folder: created with O_EXCL, holding the writer's pid.

    The holder also keeps an flock on it, which the kernel drops when the process dies, however it dies: a lock
    file whose flock can be taken is stale (its pid is reported as not running) and is taken over with a warning.
    Waiters poll until `wait_s` seconds have passed, then fail naming the holder.
    """

    def __init__(self, gallery: str | Path, wait_s: float = LOCK_WAIT_S, what: str = "gallery") -> None:
        dst = real_path(gallery)  # one lock whether the folder is named through a symlink or not
        self.path = dst.parent / f".{dst.name}.lock"
        self.wait_s = wait_s
        self.what = what  # the folder's kind, for the messages ("gallery", "model")
        self.fd: int | None = None
        self.created: list[Path] = []

    def __enter__(self) -> GalleryLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.created = make_dirs(self.path.parent)  # removed again by `release` where still empty (a failed enroll)
        deadline = time.monotonic() + self.wait_s
        told = False
        while True:
            holder = self._try()
            if holder is None:
                return
            if time.monotonic() > deadline:
                raise SpkidError(f"{self.path}: the {self.what} is locked by {holder} for more than {self.wait_s:g} s; "
                                 "wait for it to finish, or remove the lock file if no spkid runs there")
            if not told:
                log.info("waiting for %s to finish updating the %s (lock %s)", holder, self.what, self.path)
                told = True
            time.sleep(0.05)

    def _try(self) -> str | None:
        """Take the lock; None on success, else a description of the live holder."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            return self._take_over_if_stale()
        except OSError as e:  # a read-only or foreign folder: the gallery could not be written either
            raise SpkidError(f"{self.path}: cannot create the {self.what}'s lock file ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # someone judged it stale between our create and flock: they hold it now
            os.close(fd)
            return "another spkid process"
        self._own(fd)
        return None

    def _take_over_if_stale(self) -> str | None:
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return "another spkid process"  # released meanwhile: try again
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_fd(fd)
            os.close(fd)
            return _describe(info)
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed it and someone created a new one meanwhile
            os.close(fd)
            return "another spkid process"
        info = _read_fd(fd)
        if info:
            pid = _pid(info)
            state = "is not running" if pid is not None and not pid_alive(pid) else "holds no lock"
            log.warning("%s: stale lock of %s, which %s; taking it over", self.path, _describe(info), state)
        self._own(fd)
        return None

    def _own(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} host {socket.gethostname()} time {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None
        remove_empty_dirs(self.created)


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode("utf-8", "replace").strip()


def _pid(info: str) -> int | None:
    parts = info.split()
    try:
        return int(parts[1]) if len(parts) > 1 and parts[0] == "pid" else None
    except ValueError:
        return None


def _describe(info: str) -> str:
    parts = info.split()
    if len(parts) >= 4 and parts[0] == "pid" and parts[2] == "host":
        return f"pid {parts[1]} on {parts[3]}"
    return "another spkid process"


@contextlib.contextmanager
def locked(gallery: str | Path, wait_s: float = LOCK_WAIT_S, complete: str = "gallery.json") -> Iterator[None]:
    """Hold the gallery's writer lock and tidy what crashed writers left behind (`folders.clean_leftovers`; a
    folder is complete when it holds the file `complete`)."""
    with GalleryLock(gallery, wait_s):
        clean_leftovers(Path(gallery), complete)
        yield

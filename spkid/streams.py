"""The only module that touches stdin/stdout: lists and keyed `.npy` matrices from stdin or a file, text and
`.npy` to stdout or a file, the TTY guard. The formats themselves live in `spkid.lists` (list text) and
`spkid.npyio` (`.npy` records, keyed matrices); files on disk in `spkid.fileio`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import numpy as np

from spkid import fileio, lists, npyio
from spkid.errors import SpkidError
from spkid.lists import Entry


def read_list(args: Iterable[str] | str | None = None, label_depth: int = 1) -> list[Entry]:
    """Entries from positional arguments: list files (`*.txt|*.lst|*.list|*.scp`), other files as themselves,
    and `-` (or no argument at all) for a list on stdin."""
    if args is None or isinstance(args, str):
        args = [args] if args else []
    args = list(args) or ["-"]
    entries: list[Entry] = []
    for arg in args:
        if arg == "-":
            if sys.stdin is None or sys.stdin.isatty():
                raise SpkidError("no input: give files or a list file, or pipe a list on stdin")
            text = lists.decode_text(sys.stdin.buffer.read(), "<stdin>")
            entries += lists.parse_list(lists.split_lines(text), label_depth, "<stdin>")
        elif lists.is_list_file(arg):
            entries += lists.parse_list(lists.split_lines(fileio.read_text(arg)), label_depth, arg)
        else:
            entries.append(Entry(arg, lists.label_from_path(arg, label_depth)))
    return entries


def write_text(text: str, output: str | None = None) -> None:
    """Write text to `output` atomically, or to stdout when `output` is None or `-`."""
    if output and output != "-":
        with fileio.atomic_write(output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def write_list(entries: Iterable[Entry], output: str | None = None) -> None:
    write_text(lists.format_list(entries), output)


@contextlib.contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    """Open a user's input file for binary reading (`-` is stdin), with one clear error for the usual mistakes."""
    if path == "-":
        yield sys.stdin.buffer
        return
    with fileio.open_file(path) as f:
        yield f


def read_array(src: str = "-") -> np.ndarray:
    """One `.npy` array from a file or stdin (a real pipe works); object arrays are refused."""
    with open_input(src) as f:
        return npyio.read_array_stream(f, _name(src))


def _name(src: str) -> str:
    return "<stdin>" if src == "-" else src


def _binary_out(output: str | None) -> tuple[bool, str]:
    to_stdout = not output or output == "-"
    if to_stdout and sys.stdout.isatty():
        raise SpkidError("refusing to write .npy to a terminal; redirect or use -o/--output FILE")
    return to_stdout, output or "-"


def write_array(arr: np.ndarray, output: str | None = None) -> None:
    """One `.npy` record to `output` (atomically) or stdout; refuses a terminal."""
    to_stdout, path = _binary_out(output)
    if to_stdout:
        np.lib.format.write_array(sys.stdout.buffer, np.asarray(arr), allow_pickle=False)
        sys.stdout.buffer.flush()
    else:
        with fileio.atomic_write(path, "wb") as f:
            np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)


def write_embeddings(keys: Iterable[str], values: np.ndarray, meta: dict | None, output: str | None = None) -> None:
    """Keys, values and (when `meta` is given) the model record, to `output` (atomically) or stdout."""
    records = npyio.keyed_records(keys, values, meta)
    to_stdout, path = _binary_out(output)

    def dump(f: BinaryIO) -> None:
        for r in records:
            np.lib.format.write_array(f, r, allow_pickle=False)

    if to_stdout:
        dump(sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        with fileio.atomic_write(path, "wb") as f:
            dump(f)


def read_embeddings(src: str | BinaryIO = "-") -> npyio.Embeddings:
    """A keyed matrix with its optional model record, from a path, `-` (a real pipe works) or a binary stream.

    Concatenated streams are joined; streams of different models (or dimensions) are refused.
    """
    if not isinstance(src, str):
        return npyio.read_keyed_stream(src, "<stream>")
    with open_input(src) as f:
        if src == "-" and f.isatty():
            raise SpkidError("no input: pipe embeddings (`spkid embed` output) or give a file")
        return npyio.read_keyed_stream(f, _name(src))


def read_keyed(src: str | BinaryIO = "-") -> tuple[np.ndarray, np.ndarray]:
    """A keyed matrix (keys `(N,)` unicode, values float32 `(N, D)`) from a path, `-` or a binary stream."""
    e = read_embeddings(src)
    return e.keys, e.values


def write_keyed(keys: Iterable[str], values: np.ndarray, output: str | None = None) -> None:
    """A keyed matrix (DESIGN.md) without a model record, to `output` (atomically) or stdout; refuses a terminal."""
    write_embeddings(keys, values, None, output)


def stdin_is_npy() -> bool:
    """Whether stdin starts with a `.npy` record (an embedding stream) rather than a text list; reads nothing."""
    stream = sys.stdin.buffer if sys.stdin is not None else None
    if stream is None or stream.isatty() or not hasattr(stream, "peek"):
        return False
    try:
        return stream.peek(6)[:6] == b"\x93NUMPY"
    except (OSError, ValueError):
        return False


def stdin_is_piped() -> bool:
    """Whether stdin is a pipe or a redirected file holding data (not a terminal, not /dev/null); peeks only."""
    import stat

    stream = sys.stdin.buffer if sys.stdin is not None else None
    if stream is None or stream.isatty() or not hasattr(stream, "peek"):
        return False
    try:
        mode = os.fstat(stream.fileno()).st_mode
        return (stat.S_ISFIFO(mode) or stat.S_ISREG(mode)) and bool(stream.peek(1))
    except (OSError, ValueError):
        return False

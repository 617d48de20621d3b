"""The only module that touches stdin/stdout: lists and keyed `.npy` matrices from stdin or a file, text and
`.npy` to stdout or a file, the TTY guard. The formats themselves live in `spkid.lists` (list text) and
`spkid.npyio` (`.npy` records, keyed matrices); files on disk in `spkid.fileio`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from spkid import fileio, lists, npyio
from spkid.errors import SpkidError
from spkid.lists import Entry

if TYPE_CHECKING:
    from spkid import audio


def read_list(args: Iterable[str] | str | None = None, label_depth: int = 1, command: str = "...",
              segments: bool = False, allow_commands: bool = False) -> list[Entry]:
    """Entries from positional arguments: list files (`*.txt|*.lst|*.list|*.scp`), Kaldi data folders and
    `wav.scp` files (`lists.kaldi_entries`; their `segments` only where the command cuts audio by time:
    `segments`; their piped commands only with `allow_commands`, the user's --allow-commands), folders (the audio files below them, labelled by their parent folders: `lists.folder_entries`;
    `command` completes its hint), other files as themselves, and `-` (or no argument at all) for a list on stdin."""
    if args is None or isinstance(args, str):
        args = [args] if args else []
    args = list(args) or ["-"]
    entries: list[Entry] = []
    for arg in args:
        if arg == "-":
            if sys.stdin is None or sys.stdin.isatty():
                raise SpkidError("no input: give files or a list file, or pipe a list on stdin")
            data = sys.stdin.buffer.read()
            _refuse_audio(data[:12])
            text = lists.decode_text(data, "<stdin>")
            entries += lists.parse_list(lists.split_lines(text), label_depth, "<stdin>")
        elif lists.is_kaldi_input(arg):
            entries += lists.kaldi_entries(arg, fileio.read_text, segments, command, allow_commands)
        elif lists.is_list_file(arg):
            entries += lists.parse_list(lists.split_lines(fileio.read_text(arg)), label_depth, arg)
        elif os.path.isdir(arg):
            entries += lists.folder_entries(arg, label_depth, command=command)
        else:
            entries.append(Entry(arg, lists.label_from_path(arg, label_depth)))
    return entries


def read_labels(path: str, label_depth: int = 1) -> list[Entry]:
    """The labelled entries of a `--labels` file: a list (`PATH<TAB>LABEL`), or Kaldi's `utt2spk` or a Kaldi data
    folder (keyed by the Kaldi ids, as `spkid embed` of that folder keys its embeddings). Only keys and labels are
    used, never the audio, so a folder whose `wav.scp` pipes commands is read without running them."""
    if os.path.basename(os.path.normpath(path)) == "utt2spk":
        return lists.parse_utt2spk(fileio.read_text(path), path)
    if lists.is_kaldi_input(path):
        return [lists.KaldiEntry("", e.label, e.key) for e in lists.kaldi_entries(path, fileio.read_text, True,
                                                                                  allow_commands=True)]
    return read_list([path], label_depth)


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


def check_binary_output(output: str | None) -> None:
    """Refuse `.npy` to a terminal before any work is done (the writers check again when they write)."""
    _binary_out(output)


def stdout_is_terminal() -> bool:
    """Whether a person reads stdout: tables get a header there, pipes stay headerless."""
    return sys.stdout is not None and sys.stdout.isatty()


def write_array(arr: np.ndarray, output: str | None = None) -> None:
    """One `.npy` record to `output` (atomically) or stdout; refuses a terminal."""
    to_stdout, path = _binary_out(output)
    if to_stdout:
        np.lib.format.write_array(sys.stdout.buffer, np.asarray(arr), allow_pickle=False)
        sys.stdout.buffer.flush()
    else:
        with fileio.atomic_write(path, "wb") as f:
            np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)


def write_embeddings(keys: Iterable[str], values: np.ndarray, meta: dict | None, output: str | None = None,
                     quality: Sequence[dict | None] | None = None) -> None:
    """Keys, values and (when `meta` is given) the model record, with the per-key `quality` records
    (`Quality.to_dict()`) when given, to `output` (atomically) or stdout."""
    records = npyio.keyed_records(keys, values, meta, quality)
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


def write_kaldi(keys: Sequence[str], values: np.ndarray, output: str) -> tuple[str, str]:
    """Embeddings as Kaldi tables: `OUTPUT.ark` (binary float32 vectors, one per key) and `OUTPUT.scp`
    (`KEY OUTPUT.ark:OFFSET` lines), what Kaldi's PLDA tools (`ivector-plda-scoring scp:...`) and kaldiio read.
    Each file is written atomically (the ark first); keys must be Kaldi tokens (no whitespace). Returns the paths."""
    import kaldiio

    bad = next((k for k in keys if not k or k != k.strip() or any(c.isspace() for c in k)), None)
    if bad is not None:
        raise SpkidError(f"key {bad!r} cannot be a Kaldi table key (no spaces allowed); give a Kaldi data folder, "
                         "whose ids are the keys, or write .npy")
    ark, scp = f"{output}.ark", f"{output}.scp"
    lines = []
    with fileio.atomic_write(ark, "wb") as f:
        for key, vec in zip(keys, values):
            lines.append(f"{key} {ark}:{f.tell() + len(key.encode('utf-8')) + 1}\n")
            kaldiio.save_ark(f, {key: np.ascontiguousarray(vec, dtype=np.float32)})
    with fileio.atomic_write(scp, "w") as f:
        f.write("".join(lines))
    return ark, scp


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


def read_inputs(args: Iterable[str] | str | None = None, label_depth: int = 1, command: str = "...",
                allow_commands: bool = False) -> tuple[list[Entry], audio.Clip | None]:
    """`read_list` (Kaldi segments included: these commands embed them), except that `-` (or no argument at all) whose stdin holds audio (`stdin_audio`) is one clip:
    the entry `Entry("-")` (no label), with the clip returned beside the entries, to decode in its place
    (`audio.load(clip)`, `Preparer.prepare_file(clip)`). Otherwise (None) every `-` reads a list, as before."""
    if args is None or isinstance(args, str):
        args = [args] if args else []
    args = list(args) or ["-"]
    clip = stdin_audio() if "-" in args else None
    if clip is None:
        return read_list(args, label_depth, command, segments=True, allow_commands=allow_commands), None
    if args.count("-") > 1:
        raise SpkidError("`-` names stdin's one audio clip; give it once")
    entries: list[Entry] = []
    for arg in args:
        entries += [Entry("-")] if arg == "-" else read_list([arg], label_depth, command, True, allow_commands)
    return entries, clip


def stdin_audio(name: str = "<stdin>") -> audio.Clip | None:
    """The clip on stdin when its first bytes announce audio (WAV, FLAC, OGG, MP3 by magic bytes: `audio.sniff`):
    all of stdin, read whole into memory, as an `audio.Clip` that `audio.read`/`load` and
    `Preparer.prepare_file` decode. None, with nothing consumed (the head is peeked), when stdin is a terminal,
    closed, empty or holds anything else, so `read_list` or `read_embeddings` still get all of it.

    The first write into the pipe must hold the signature (12 bytes for WAV); every audio writer's header does."""
    from spkid import audio

    head = _peek_stdin(12)
    fmt = audio.sniff(head) if head else None
    if fmt is None:
        return None
    return audio.Clip(sys.stdin.buffer.read(), name, fmt)


def _peek_stdin(n: int) -> bytes:
    """Up to `n` first bytes of stdin without consuming them; b"" for a terminal, a closed or unreadable stdin."""
    try:
        stream = sys.stdin.buffer
        if stream.isatty():
            return b""
        if hasattr(stream, "peek"):
            return stream.peek(n)[:n]
        if stream.seekable():  # an in-memory stream (io.BytesIO)
            pos = stream.tell()
            head = stream.read(n)
            stream.seek(pos)
            return head
    except (AttributeError, OSError, ValueError):
        pass
    return b""


def _refuse_audio(head: bytes) -> None:
    from spkid import audio

    fmt = audio.sniff(head)
    if fmt is not None:
        raise SpkidError(f"<stdin>: holds {fmt.upper()} audio, and this command reads a list of files there; give the "
                         "audio as a file argument (or `-` where audio on stdin is taken: embed, enroll, verify, identify)")

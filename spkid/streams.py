"""The only module that touches stdin/stdout: audio lists, output lists, keyed `.npy` matrices, the TTY guard.

Formats (DESIGN.md):
- **list**: UTF-8 text, one `PATH` or `PATH<TAB>LABEL` a line; blank and `#` lines skipped; order kept.
  The key of an entry is its path as written; without a label the speaker is the parent folder's name
  (`label_depth=N` takes the N-th ancestor).
- **keyed matrix**: two `.npy` records back to back: keys (unicode, shape `(N,)`), then float32 `(N, D)`.
  Read with `read()` alone, so a real (non-seekable) pipe works. An embedding stream (`spkid embed`) adds an
  optional third record, a 0-d unicode JSON `{"format": "spkid-embeddings/1", "model_sha256": ..., "model": ...,
  "features": {...}, "embedding": {...}}`, so mismatched models are refused; streams joined with `cat` are read
  as one (streams of different models are refused).
- **array**: one `.npy` record (`spkid vad` output), same pipe-safe reader.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import tempfile
import tokenize
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

from spkid.errors import SpkidError, check_interrupted

LIST_SUFFIXES = (".txt", ".lst", ".list", ".scp")


@dataclass(frozen=True)
class Entry:
    """One list item: `path` as written (also its key) and its speaker `label` (None when unknown)."""

    path: str
    label: str | None = None

    @property
    def key(self) -> str:
        return self.path


def is_list_file(arg: str) -> bool:
    return arg.lower().endswith(LIST_SUFFIXES)


def label_from_path(path: str, depth: int = 1) -> str | None:
    """The name of the `depth`-th ancestor folder of `path` (1 = parent), or None when there is none."""
    parts = Path(path).parts[:-1]
    if depth < 1 or len(parts) < depth:
        return None
    return parts[-depth]


def parse_list(lines: Iterable[str], label_depth: int = 1, source: str = "list") -> list[Entry]:
    """Parse list lines: `PATH` or `PATH<TAB>LABEL`; blank and `#` lines skipped, CRLF tolerated.

    A path may contain spaces; only a TAB separates the label. A line with more than one TAB is an error.
    """
    entries = []
    for n, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n").rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) > 2:
            raise SpkidError(f"{source}:{n}: expected PATH or PATH<TAB>LABEL, found {len(fields)} tab-separated fields")
        path = fields[0].strip()
        label = fields[1].strip() if len(fields) == 2 and fields[1].strip() else None
        if not path:
            raise SpkidError(f"{source}:{n}: empty path")
        entries.append(Entry(path, label if label is not None else label_from_path(path, label_depth)))
    return entries


def split_lines(text: str) -> list[str]:
    """Lines ended by LF, CRLF or CR. Not `str.splitlines()`, which also splits at \\v, \\f, \\x1c-\\x1e, \\x85,
    U+2028 and U+2029: characters a file name or a label may hold."""
    lines = _LINE_END.split(text)
    return lines[:-1] if lines[-1] == "" else lines


_LINE_END = re.compile(r"\r\n|\r|\n")


def _read_text(stream: IO[bytes], source: str) -> str:
    data = stream.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SpkidError(f"{source}:{line}: not valid UTF-8 text (is it a list file?)") from None


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
            text = _read_text(sys.stdin.buffer, "<stdin>")
            entries += parse_list(split_lines(text), label_depth, "<stdin>")
        elif is_list_file(arg):
            with open_input(arg) as f:
                text = _read_text(f, arg)
            entries += parse_list(split_lines(text), label_depth, arg)
        else:
            entries.append(Entry(arg, label_from_path(arg, label_depth)))
    return entries


def format_list(entries: Iterable[Entry]) -> str:
    return "".join(f"{e.path}\t{e.label}\n" if e.label is not None else f"{e.path}\n" for e in entries)


def write_text(text: str, output: str | None = None) -> None:
    """Write text to `output` atomically, or to stdout when `output` is None or `-`."""
    if output and output != "-":
        with atomic_write(output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def write_list(entries: Iterable[Entry], output: str | None = None) -> None:
    write_text(format_list(entries), output)


@contextlib.contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    """Open a user's input file for binary reading (`-` is stdin), with one clear error for the usual mistakes."""
    if path == "-":
        yield sys.stdin.buffer
        return
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


def _read_npy(stream: BinaryIO, source: str, what: str) -> np.ndarray | None:
    """One `.npy` record from `stream`; None at a clean end of stream."""
    magic = stream.read(6)
    if not magic:
        return None
    if magic != b"\x93NUMPY":
        raise SpkidError(f"{source}: not a .npy stream ({what}); expected output of a spkid command")
    try:
        version = stream.read(2)
        if len(version) != 2:
            raise ValueError("truncated header")
        if version[0] not in (1, 2, 3):
            raise ValueError(f"unknown format version {version[0]}.{version[1]}")
        hlen_bytes = stream.read(2 if version[0] == 1 else 4)
        header = magic + version + hlen_bytes
        hlen = int.from_bytes(hlen_bytes, "little")
        header += stream.read(hlen)
        buf = io.BytesIO(header)
        np.lib.format.read_magic(buf)
        with warnings.catch_warnings():  # numpy's note on Python 2 style headers is not for our users
            warnings.simplefilter("ignore", UserWarning)
            shape, fortran, dtype = (
                np.lib.format.read_array_header_1_0(buf) if version[0] == 1 else np.lib.format.read_array_header_2_0(buf)
            )
        if dtype.hasobject:
            raise SpkidError(f"{source}: {what} has object dtype; refusing to unpickle")
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        # grown as the bytes arrive, not allocated from the header: a corrupt or cut stream claiming a huge
        # shape must fail on its missing data, not reserve (and zero) gigabytes first
        data = bytearray()
        while len(data) < nbytes:
            chunk = stream.read(min(nbytes - len(data), 1 << 24))
            if not chunk:
                break
            data += chunk
        if len(data) != nbytes:
            raise ValueError(f"truncated data ({len(data)} of {nbytes} bytes)")
        arr = np.frombuffer(data, dtype=dtype, count=count)
        return arr.reshape(shape, order="F" if fortran else "C")
    except SpkidError:
        raise
    # numpy's header parser: RecursionError on deeply nested literals, TokenError on unbalanced ones
    except (ValueError, SyntaxError, TypeError, OverflowError, MemoryError, RecursionError, tokenize.TokenError) as e:
        raise SpkidError(f"{source}: corrupt or truncated .npy ({what}): {e}") from None


def read_array(src: str = "-") -> np.ndarray:
    """One `.npy` array from a file or stdin (a real pipe works); object arrays are refused."""
    with open_input(src) as f:
        arr = _read_npy(f, _name(src), "array")
    if arr is None:
        raise SpkidError(f"{_name(src)}: empty input, expected a .npy array")
    return arr


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
        with atomic_write(path, "wb") as f:
            np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)


STREAM_FORMAT = "spkid-embeddings/1"


@dataclass
class Embeddings:
    """A keyed embedding matrix and the model record that came with it (`meta`, {} when the stream had none)."""

    keys: np.ndarray
    values: np.ndarray
    meta: dict = field(default_factory=dict)
    source: str = "<stdin>"

    @property
    def model_sha256(self) -> str | None:
        return self.meta.get("model_sha256")


def write_embeddings(keys: Iterable[str], values: np.ndarray, meta: dict | None, output: str | None = None) -> None:
    """Keys, values and (when `meta` is given) the model record, to `output` (atomically) or stdout."""
    k = np.asarray(list(keys), dtype=str)
    if k.size == 0:
        k = k.astype("<U1")
    v = np.asarray(values, dtype=np.float32)
    if v.ndim != 2 or v.shape[0] != k.shape[0]:
        raise ValueError(f"values must be (N, D) with N={k.shape[0]}, got {v.shape}")
    records = [k, v]
    if meta is not None:
        records.append(np.array(json.dumps({"format": STREAM_FORMAT, **meta}, sort_keys=True)))
    to_stdout, path = _binary_out(output)

    def dump(f: BinaryIO) -> None:
        for r in records:
            np.lib.format.write_array(f, r, allow_pickle=False)

    if to_stdout:
        dump(sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        with atomic_write(path, "wb") as f:
            dump(f)


def read_embeddings(src: str | BinaryIO = "-") -> Embeddings:
    """A keyed matrix with its optional model record, from a path, `-` (a real pipe works) or a binary stream.

    Concatenated streams are joined; streams of different models (or dimensions) are refused.
    """
    if not isinstance(src, str):
        return _read_embeddings(src, "<stream>")
    with open_input(src) as f:
        if src == "-" and f.isatty():
            raise SpkidError("no input: pipe embeddings (`spkid embed` output) or give a file")
        return _read_embeddings(f, "<stdin>" if src == "-" else src)


def _read_embeddings(f: BinaryIO, source: str) -> Embeddings:
    keys_parts, value_parts, metas = [], [], []
    pending = _read_npy(f, source, "keys")
    if pending is None:
        raise SpkidError(f"{source}: empty input, expected a keyed matrix (keys then values .npy)")
    while pending is not None:
        keys = pending
        values = _read_npy(f, source, "values")
        if values is None:
            raise SpkidError(f"{source}: keys without values; expected a keyed matrix (keys then values .npy)")
        k, v = _check_keyed(keys, values, source)
        keys_parts.append(k)
        value_parts.append(v)
        pending = _read_npy(f, source, "keys")
        meta: dict = {}
        if pending is not None and pending.ndim == 0:
            meta = _parse_meta(pending, source)
            pending = _read_npy(f, source, "keys")
        metas.append(meta)
    shas = {m.get("model_sha256") for m in metas}
    if len(shas) > 1:
        raise SpkidError(f"{source}: joins embeddings of {len(shas)} different models "
                         f"({', '.join(str(s)[:12] for s in shas)}); embed everything with one model")
    dims = {v.shape[1] for v in value_parts}
    if len(dims) > 1:
        raise SpkidError(f"{source}: joins embeddings of dimensions {sorted(dims)}; embed everything with one model")
    keys = np.concatenate(keys_parts) if len(keys_parts) > 1 else keys_parts[0]
    values = np.concatenate(value_parts) if len(value_parts) > 1 else value_parts[0]
    return Embeddings(keys, values, metas[0] if None not in shas else {}, source)


def _parse_meta(arr: np.ndarray, source: str) -> dict:
    if arr.dtype.kind != "U":
        raise SpkidError(f"{source}: the record after the values is not a model record (0-d text)")
    try:
        meta = json.loads(str(arr))
    except (ValueError, RecursionError):  # RecursionError: deeply nested JSON
        raise SpkidError(f"{source}: unreadable model record after the values") from None
    if not isinstance(meta, dict) or meta.get("format") != STREAM_FORMAT:
        raise SpkidError(f"{source}: unknown model record format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    return meta


def _check_keyed(keys: np.ndarray, values: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    if keys.ndim != 1 or keys.dtype.kind != "U":
        raise SpkidError(f"{source}: keyed matrix keys must be a 1-D unicode array, got {keys.dtype} {keys.shape}")
    if values.ndim != 2 or values.shape[0] != keys.shape[0]:
        raise SpkidError(f"{source}: keyed matrix values must be (N, D) with N={len(keys)}, got {values.shape}")
    if values.dtype.kind != "f":
        raise SpkidError(f"{source}: keyed matrix values must be floating point, got {values.dtype}")
    values = values.astype(np.float32, copy=False)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        raise SpkidError(f"{source}: NaN or Inf values for {int((~finite).sum())} key(s), e.g. {keys[~finite][0]!r}")
    return keys, values


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


def read_keyed(src: str | BinaryIO = "-") -> tuple[np.ndarray, np.ndarray]:
    """A keyed matrix (keys `(N,)` unicode, values float32 `(N, D)`) from a path, `-` or a binary stream."""
    e = read_embeddings(src)
    return e.keys, e.values


def write_keyed(keys: Iterable[str], values: np.ndarray, output: str | None = None) -> None:
    """A keyed matrix (DESIGN.md) without a model record, to `output` (atomically) or stdout; refuses a terminal."""
    write_embeddings(keys, values, None, output)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write `path` through a temp file in the same folder, renamed into place only on success.

    On any exception (KeyboardInterrupt included) the temp file is removed and `path` is untouched.
    The file gets the permissions a plain `open()` would give (mkstemp's are 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:  # from the temp file's creation on: a Ctrl-C right after it must not leave it behind
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, _default_mode())
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


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_path(path: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """Like `atomic_write`, but yields a temp *path* (same folder, same suffix) for writers that want a filename."""
    return _atomic_path(Path(path))


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:  # as in atomic_write
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
        os.fchmod(fd, _default_mode())
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


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """`I/N` (1-based I) -> (I-1, N); None passes through."""
    if spec is None:
        return None
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise SpkidError(f"--shard {spec!r}: expected I/N, e.g. 1/4") from None
    if not (n >= 1 and 1 <= i <= n):
        raise SpkidError(f"--shard {spec!r}: need 1 <= I <= N")
    return i - 1, n


def shard(entries: list, spec: str | None) -> list:
    """Every N-th entry starting at I (1-based), so `--shard 1/N` ... `--shard N/N` cover the list once."""
    s = parse_shard(spec)
    return entries if s is None else entries[s[0] :: s[1]]


def default_root(paths: Iterable[str]) -> Path:
    """The deepest folder holding every path: output files keep their layout below it."""
    parents = [str(Path(p).resolve().parent) for p in paths]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


def output_path(src: str, out_dir: str | os.PathLike, root: str | os.PathLike, suffix: str) -> Path:
    """Where a file made from `src` goes: `out_dir / (src relative to root)`, with `suffix` replacing the extension.

    The extension is replaced case-insensitively, so TIMIT's `SA1.WAV` becomes `SA1.flac`.
    """
    try:
        rel = Path(src).resolve().relative_to(Path(root).resolve())
    except ValueError:
        raise SpkidError(f"{src}: not under --root {root}") from None
    return Path(out_dir) / rel.with_suffix(suffix)

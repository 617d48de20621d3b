"""The hardened `.npy` reader and the keyed-matrix codec (DESIGN.md), on any binary stream. No stdio.

- **array**: one `.npy` record (`spkid vad` output, feature files). Read with `read()` alone, so a real
  (non-seekable) pipe works; object dtypes are refused, damaged headers and cut data are SpkidErrors.
- **keyed matrix**: two `.npy` records back to back: keys (unicode, shape `(N,)`), then float32 `(N, D)`. An
  embedding stream (`spkid embed`) adds an optional third record, a 0-d unicode JSON `{"format":
  "spkid-embeddings/1", "model_sha256": ..., "model": ..., "features": {...}, "embedding": {...}}`, so mismatched
  models are refused; streams joined with `cat` are read as one (streams of different models are refused).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tokenize
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from spkid.errors import SpkidError
from spkid.fileio import open_file
from spkid.lists import loads_json

STREAM_FORMAT = "spkid-embeddings/1"


def read_record(stream: BinaryIO, source: str, what: str) -> np.ndarray | None:
    """One `.npy` record from `stream`; None at a clean end of stream."""
    magic = stream.read(6)
    if not magic:
        return None
    with _corrupt(source, what):
        shape, fortran, dtype = _read_header(stream, magic, source, what)
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
        return _check_text(arr.reshape(shape, order="F" if fortran else "C"))


def read_npy_file(f: BinaryIO, source: str, mmap: bool = False) -> np.ndarray:
    """One `.npy` array from an open regular file (e.g. opened relative to a folder's descriptor): the header is
    checked as `read_record` does, the file's size against it, and the data read or memory-mapped read-only (the
    mapping outlives `f` and the file's name)."""
    with _corrupt(source, "array"):
        shape, fortran, dtype = _read_header(f, f.read(6), source, "array")
        count = int(np.prod(shape, dtype=np.int64))
        offset = f.tell()
        size = os.fstat(f.fileno()).st_size - offset
        if count < 0 or size != count * dtype.itemsize:
            raise ValueError(f"{size} data bytes where the header's {dtype} {shape} needs {count * dtype.itemsize}")
        order = "F" if fortran else "C"
        if count == 0:
            return np.zeros(shape, dtype, order=order)
        if mmap:
            return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
        return _check_text(np.fromfile(f, dtype=dtype, count=count).reshape(shape, order=order))


def _check_text(arr: np.ndarray) -> np.ndarray:
    """Unicode arrays hold UTF-32 code units: one above U+10FFFF would make Python strings that crash on use."""
    if arr.dtype.kind == "U" and arr.size and arr.dtype.itemsize:
        units = np.frombuffer(arr.tobytes(), dtype=arr.dtype.byteorder.replace("=", "<").replace("|", "<") + "u4")
        if units.size and units.max() > 0x10FFFF:
            raise ValueError("text with invalid characters (code points above U+10FFFF)")
    return arr


def _read_header(stream: BinaryIO, magic: bytes, source: str, what: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    if magic != b"\x93NUMPY":
        raise SpkidError(f"{source}: not a .npy stream ({what}); expected output of a spkid command")
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
    return shape, fortran, dtype


@contextlib.contextmanager
def _corrupt(source: str, what: str) -> Iterator[None]:
    try:
        yield
    except SpkidError:
        raise
    # numpy's header parser: RecursionError on deeply nested literals, TokenError on unbalanced ones
    except (ValueError, SyntaxError, TypeError, OverflowError, MemoryError, RecursionError, tokenize.TokenError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]  # numpy's notes run over several lines
        raise SpkidError(f"{source}: corrupt or truncated .npy ({what}): {reason}") from None


def read_array_stream(stream: BinaryIO, source: str) -> np.ndarray:
    """One `.npy` array from `stream`; an empty stream is an error naming `source`."""
    arr = read_record(stream, source, "array")
    if arr is None:
        raise SpkidError(f"{source}: empty input, expected a .npy array")
    return arr


def is_keyed_file(path: str | os.PathLike) -> bool:
    """Whether the file at `path` starts with a keyed matrix's keys (a 1-D text `.npy` record: `spkid embed`
    output) rather than a feature matrix; reads the first header only. Unreadable files are not (their reader
    reports them)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version[0] == 1 else np.lib.format.read_array_header_2_0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                shape, _, dtype = read_header(f)
    except (OSError, ValueError, SyntaxError, TypeError, RecursionError):
        return False
    return len(shape) == 1 and dtype.kind == "U"


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """One `.npy` array from a file, through the hardened reader (`read_record`): never unpickled."""
    with open_file(path) as f:
        return read_array_stream(f, str(path))


@dataclass
class Embeddings:
    """A keyed embedding matrix and the model record that came with it (`meta`, {} when the stream had none)."""

    keys: np.ndarray
    values: np.ndarray
    meta: dict = field(default_factory=dict)
    source: str = "<stdin>"
    quality: list[dict | None] | None = None  # per key: the quality record `spkid embed` wrote (None: no record)

    @property
    def model_sha256(self) -> str | None:
        return self.meta.get("model_sha256")


def write_keyed_stream(f: BinaryIO, keys: Iterable[str], values: np.ndarray, meta: dict | None,
                       quality: Sequence[dict | None] | None = None) -> None:
    """Keys, values and (when `meta` is given) the model record, as `.npy` records to `f`."""
    for r in keyed_records(keys, values, meta, quality):
        np.lib.format.write_array(f, r, allow_pickle=False)


def keyed_records(keys: Iterable[str], values: np.ndarray, meta: dict | None,
                  quality: Sequence[dict | None] | None = None) -> list[np.ndarray]:
    """The records of a keyed matrix, checked before anything is written: keys, float32 values, model record.

    `quality` (one `utterance.Quality.to_dict()` or None per key; needs `meta`) goes into the model record as
    `"quality": {field: [value per key]}`: the speech gate of verify/identify/enroll then decides on embeddings
    as on audio. Readers that do not know it ignore it."""
    k = np.asarray(list(keys), dtype=str)
    if k.size == 0:
        k = k.astype("<U1")
    v = np.asarray(values, dtype=np.float32)
    if v.ndim != 2 or v.shape[0] != k.shape[0]:
        raise ValueError(f"values must be (N, D) with N={k.shape[0]}, got {v.shape}")
    records = [k, v]
    if meta is not None:
        meta = {"format": STREAM_FORMAT, **meta}
        if quality is not None:
            if len(quality) != len(k):
                raise ValueError(f"{len(quality)} quality records for {len(k)} keys")
            meta["quality"] = {c: [None if q is None else q.get(c) for q in quality] for c in QUALITY_FIELDS}
        records.append(np.array(json.dumps(meta, sort_keys=True, allow_nan=False)))
    return records


QUALITY_FIELDS = ("seconds", "speech_seconds", "vad", "no_speech", "clipped", "rms_dbfs", "resampled_from",
                  "sure_seconds")
OPTIONAL_QUALITY_FIELDS = ("sure_seconds",)  # absent from streams written before it was measured


def _split_quality(meta: dict, n: int, source: str) -> list[dict | None] | None:
    """The per-key quality records of one stream part (popped from its model record), None when it has none."""
    cols = meta.pop("quality", None)
    if cols is None:
        return None
    if isinstance(cols, dict):
        cols = {**{c: [None] * n for c in OPTIONAL_QUALITY_FIELDS}, **cols}
    if not isinstance(cols, dict) or any(not isinstance(cols.get(c), list) or len(cols[c]) != n for c in QUALITY_FIELDS):
        raise SpkidError(f"{source}: damaged quality record in the model record (expected {n} values of each of "
                         f"{', '.join(QUALITY_FIELDS)})")
    return [None if cols["seconds"][i] is None else {c: cols[c][i] for c in QUALITY_FIELDS} for i in range(n)]


def read_keyed_stream(f: BinaryIO, source: str) -> Embeddings:
    """A keyed matrix with its optional model record from `f`; concatenated streams are joined, streams of
    different models (or dimensions) are refused."""
    keys_parts, value_parts, metas, qualities = [], [], [], []
    pending = read_record(f, source, "keys")
    if pending is None:
        raise SpkidError(f"{source}: empty input, expected a keyed matrix (keys then values .npy)")
    while pending is not None:
        keys = pending
        values = read_record(f, source, "values")
        if values is None:
            raise SpkidError(f"{source}: keys without values; expected a keyed matrix (keys then values .npy)")
        k, v = _check_keyed(keys, values, source)
        keys_parts.append(k)
        value_parts.append(v)
        pending = read_record(f, source, "keys")
        meta: dict = {}
        if pending is not None and pending.ndim == 0:
            meta = _parse_meta(pending, source)
            pending = read_record(f, source, "keys")
        qualities.append(_split_quality(meta, len(k), source))
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
    quality = None
    if any(q is not None for q in qualities):
        quality = [r for q, k in zip(qualities, keys_parts) for r in (q if q is not None else [None] * len(k))]
    return Embeddings(keys, values, metas[0] if None not in shas else {}, source, quality)


def _parse_meta(arr: np.ndarray, source: str) -> dict:
    if arr.dtype.kind != "U":
        raise SpkidError(f"{source}: the record after the values is not a model record (0-d text)")
    meta = loads_json(str(arr), f"{source}: the model record after the values")
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

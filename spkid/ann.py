"""Approximate search for large galleries: a faiss inverted-file index that proposes candidate rows, which the caller
re-ranks exactly from the gallery's own matrix (`spkid.decisions.rank`). numpy + faiss; faiss is imported only when
an index is built or read, so nothing else pays for it. No torch, no stdio.

Kind "ivf-pq4fsr": the rows are split into `nlist` ≈ 4·√N cells by k-means (trained on at most 64 sampled rows a
cell) and each row's offset from its cell centre is stored as D/2 four-bit product-quantiser codes in faiss's
fast-scan layout (D/4 bytes a row plus its 8-byte id: 80 MB for 10⁶ rows of 256 dimensions, beside the 1 GB
float32 matrix). A query scans the `nprobe` cells nearest to it (by default `nlist // 8`, at least 16 and at most
512: recall@1 ≥ 0.995 in `bench/identify.py`) and returns the best `n` rows by approximate score. Scores are inner
products, so cosines for the gallery's unit rows.

The index's own ids are slots; `slots` `(n_slots,)` int64 maps each slot to its row of the gallery matrix (-1:
removed). Rows move when speakers are removed or utterances are inserted (aggregation `all` keeps rows sorted by
speaker), so an update remaps `slots` and only re-encodes the rows whose vectors changed (`Index.updated`): no
k-means, no pass over the unchanged rows' vectors. Once the gallery has grown 4× past the rows the cells were trained
on, `stale_cells` says a rebuild pays.

The record kept in gallery.json (`Index.record`) names the matrix, its row count and a fingerprint of sampled rows:
`load` refuses an index that does not match the matrix beside it (the caller then searches exactly, with a warning).

    >>> ix = ann.build(g.embeddings, "embeddings.npy")   # (S, D) unit rows, may be a memory map
    >>> rows = ix.candidates(queries, 64)                 # (Q, 64) int64 rows of g.embeddings, -1 padded
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from spkid.errors import SpkidError

KIND = "ivf-pq4fsr"
FILE = "index.faiss"
SLOTS_FILE = "index_slots.npy"
MIN_ROWS = 200_000  # `spkid enroll` builds an index by itself from this many rows (bench/identify.py: the crossover)
SAMPLE_PER_CELL = 64  # k-means training rows per cell
MIN_PER_CELL = 39  # faiss's own floor: fewer training rows than this per cell make poor cells
MAX_CELLS = 1 << 16
MAX_PROBES = 512
GROWTH_REBUILD = 4  # rebuild once rows exceed this many times the rows the cells were trained on
FINGERPRINT_ROWS = 256
MIN_TRAIN = 16 * MIN_PER_CELL  # rows the product quantiser trains on, at least (a tiny gallery's are repeated)
ADD_BLOCK = 1 << 16  # rows encoded per call: a memory-mapped matrix is read block by block


class IndexProblem(Exception):
    """The stored index cannot serve this matrix (missing, stale, unreadable): search exactly instead."""


def n_cells(n_rows: int) -> int:
    """Cells for `n_rows` rows: the power of two nearest 4·√N, at most N/39 (so k-means has rows enough) and 2¹⁶."""
    if n_rows < MIN_PER_CELL:
        return 1
    target = 2 ** round(math.log2(4 * math.sqrt(n_rows)))
    return int(max(1, min(target, MAX_CELLS, 2 ** int(math.log2(n_rows // MIN_PER_CELL)))))


def default_nprobe(nlist: int) -> int:
    """Cells scanned per query by default: an eighth of them, at least 16 (all of a small index) and at most 512,
    so the rows scanned grow as √N (N/nlist rows a cell), not as N."""
    return min(nlist, max(16, min(MAX_PROBES, nlist // 8)))


def fingerprint(matrix: np.ndarray) -> str:
    """A hash of the shape and of FINGERPRINT_ROWS rows spread over `matrix` (cheap on a memory map): an index
    built for another matrix is told apart before it answers."""
    n = len(matrix)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tuple(matrix.shape), str(matrix.dtype))).encode())
    if n:
        rows = np.unique(np.linspace(0, n - 1, min(n, FINGERPRINT_ROWS)).astype(np.int64))
        h.update(np.ascontiguousarray(np.asarray(matrix[rows], dtype=np.float32)).tobytes())
    return h.hexdigest()


def _faiss():
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is no news to users
    try:
        import faiss
    except ImportError as e:  # a broken install: faiss-cpu is a dependency
        raise SpkidError(f"the gallery search index needs faiss ({e}); reinstall spkid, or search with --exact") from None
    return faiss


def _sub_quantizers(dim: int) -> int:
    """Product-quantiser sub-vectors: 2 dimensions each where `dim` allows, else 1."""
    return dim // 2 if dim % 2 == 0 else dim


def _rows(matrix: np.ndarray, sel: np.ndarray | slice) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(matrix[sel], dtype=np.float32))


@dataclass
class Index:
    """A built index over the rows of one gallery matrix. See the module docstring."""

    faiss_index: object
    slots: np.ndarray  # (n_slots,) int64: row of each index id, -1 where removed
    record: dict  # gallery.json "index": kind, matrix, rows, dim, nlist, nprobe, trained_rows, fingerprint

    @property
    def nlist(self) -> int:
        return int(self.record["nlist"])

    def candidates(self, queries: np.ndarray, n: int, nprobe: int | None = None) -> np.ndarray:
        """The `n` best rows of each unit query `(Q, D)` by approximate score: `(Q, n')` int64, n' = min(n, rows),
        -1 where fewer were found. `nprobe`: cells scanned (default the record's)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        n = max(1, min(n, int(self.record["rows"])))
        ivf = _faiss().extract_index_ivf(self.faiss_index)
        ivf.nprobe = int(min(self.nlist, max(1, nprobe or int(self.record["nprobe"]))))
        _, ids = self.faiss_index.search(q, n)
        return np.where(ids >= 0, self.slots[np.maximum(ids, 0)], -1)

    def stale_cells(self) -> bool:
        """Whether the gallery has outgrown the cells (rows > GROWTH_REBUILD × the rows they were trained on)."""
        return int(self.record["rows"]) > GROWTH_REBUILD * max(1, int(self.record["trained_rows"]))

    def updated(self, matrix: np.ndarray, old_to_new: np.ndarray, changed: np.ndarray) -> Index:
        """The index of the new `matrix` `(N, D)`, whose row `old_to_new[r]` was row r before (-1: removed), with
        the rows `changed` (new rows, or rows whose vector changed) encoded afresh."""
        faiss = _faiss()
        fi = faiss.deserialize_index(faiss.serialize_index(self.faiss_index))  # the old index stays untouched
        slots = np.where(self.slots >= 0, np.asarray(old_to_new)[np.maximum(self.slots, 0)], -1)
        changed = np.unique(np.asarray(changed, dtype=np.int64))
        drop = np.flatnonzero((self.slots >= 0) & ((slots < 0) | np.isin(slots, changed)))
        if len(drop):
            fi.remove_ids(drop.astype(np.int64))
            slots[drop] = -1
        start = len(slots)
        for a in range(0, len(changed), ADD_BLOCK):
            part = changed[a : a + ADD_BLOCK]
            fi.add_with_ids(_rows(matrix, part), np.arange(start + a, start + a + len(part), dtype=np.int64))
        slots = np.concatenate([slots, changed])
        record = {**self.record, "rows": int(len(matrix)), "fingerprint": fingerprint(matrix)}
        return Index(fi, slots, record)

    def to_bytes(self) -> bytes:
        return _faiss().serialize_index(self.faiss_index).tobytes()


def build(matrix: np.ndarray, matrix_name: str, seed: int = 0) -> Index:
    """Train and fill an index over the rows of `matrix` `(N, D)` float32 (a memory map is read in blocks), for the
    gallery file `matrix_name`. Deterministic for a given matrix and seed."""
    faiss = _faiss()
    n, dim = matrix.shape
    if n == 0:
        raise SpkidError("cannot index an empty gallery")
    nlist = n_cells(n)
    fi = faiss.index_factory(dim, f"IVF{nlist},PQ{_sub_quantizers(dim)}x4fsr", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(fi)
    ivf.cp.seed = seed
    ivf.cp.niter = 10
    ivf.cp.min_points_per_centroid = 1  # the sample is sized here: no warnings on stderr
    ivf.cp.max_points_per_centroid = SAMPLE_PER_CELL
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, nlist * SAMPLE_PER_CELL), replace=False))
    train = _rows(matrix, sample)
    if len(train) < MIN_TRAIN:  # the 16 centroids of each 4-bit sub-quantiser need rows to train on: repeat them
        train = np.resize(train, (MIN_TRAIN, dim))
    fi.train(train)
    for a in range(0, n, ADD_BLOCK):
        b = min(n, a + ADD_BLOCK)
        fi.add_with_ids(_rows(matrix, slice(a, b)), np.arange(a, b, dtype=np.int64))
    record = {"kind": KIND, "matrix": matrix_name, "rows": int(n), "dim": int(dim), "nlist": int(nlist),
              "nprobe": default_nprobe(nlist), "trained_rows": int(n), "fingerprint": fingerprint(matrix)}
    return Index(fi, np.arange(n, dtype=np.int64), record)


def _read(f: BinaryIO):
    """The faiss index in the open file `f`: memory-mapped where the platform names open files (/proc/self/fd, so
    the file read is the one opened, whatever was swapped into the folder since), else read whole."""
    faiss = _faiss()
    fd_path = f"/proc/self/fd/{f.fileno()}"
    if os.path.exists(fd_path):
        return faiss.read_index(fd_path, faiss.IO_FLAG_MMAP_IFC)
    return faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))


def load(f: BinaryIO | None, slots: np.ndarray | None, record: object, matrix: np.ndarray) -> Index:
    """The stored index (the open file `f`), checked against the gallery `matrix` it must serve; IndexProblem says
    why it cannot."""
    if not isinstance(record, dict) or record.get("kind") != KIND:
        kind = record.get("kind") if isinstance(record, dict) else None
        raise IndexProblem(f"unknown index kind {kind!r} (this spkid builds {KIND!r})")
    if f is None or slots is None:
        raise IndexProblem(f"{FILE if f is None else SLOTS_FILE} is missing")
    if record.get("rows") != len(matrix) or record.get("dim") != matrix.shape[1] or record.get("fingerprint") != fingerprint(matrix):
        raise IndexProblem(f"it was built for other rows than the {len(matrix)} in {record.get('matrix')}")
    faiss = _faiss()
    try:
        fi = _read(f)
    except RuntimeError as e:
        raise IndexProblem(f"{FILE} is unreadable: {str(e).splitlines()[0].rsplit('Error: ', 1)[-1]}") from None
    slots = np.asarray(slots, dtype=np.int64)
    live = slots[slots >= 0]
    try:
        nlist = faiss.extract_index_ivf(fi).nlist
    except RuntimeError:
        raise IndexProblem(f"{FILE} is not an inverted-file index") from None
    if (fi.d != matrix.shape[1] or fi.ntotal != len(live) or len(live) != len(matrix) or nlist != record.get("nlist")
            or (len(live) and (live.max() >= len(matrix) or np.bincount(live, minlength=len(matrix)).max() > 1))):
        raise IndexProblem(f"{FILE} and {SLOTS_FILE} do not match the {len(matrix)} rows of {record.get('matrix')}")
    return Index(fi, slots, dict(record))

"""Nearest speakers of query embeddings in a gallery: one matrix product per block, numpy only.

The gallery matrix may be a read-only memory map (`np.load(mmap_mode="r")`) larger than RAM: it is read
`chunk_rows` rows at a time, each chunk scored against a block of queries with one matrix product, and only the
running top k per query is kept. For small k the top k of a block is found by k passes of `argmax` (a vectorised
scan), much faster than `argpartition` over every score.

Scores are dot products of the rows given, so for unit rows and unit queries they are cosine similarities.
`Norm` applies AS-norm (`spkid.scoring.as_norm_from_stats`) inside the search, so the ranking is that of the
normalised scores.

    >>> idx, sc = top_k(queries, gallery.embeddings, k=5)      # (Q, 5) row indices and scores, best first
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK_ROWS = 1 << 15  # gallery rows per chunk (24 MB at 192 dims)
BLOCK_SCORES = 1 << 22  # scores held per block (16 MB of float32)
ARGMAX_MAX_K = 16  # above this, argpartition


@dataclass
class Norm:
    """AS-norm statistics: cohort mean/std of every gallery row `(S,)` and of every query `(Q,)`."""

    row_mean: np.ndarray
    row_std: np.ndarray
    query_mean: np.ndarray
    query_std: np.ndarray

    def apply(self, s: np.ndarray, rows: slice, queries: slice) -> np.ndarray:
        """In place on a block `(q, c)` of raw scores of queries[queries] against rows[rows]."""
        me, se = self.row_mean[rows].astype(np.float32), self.row_std[rows].astype(np.float32)
        mt, st = self.query_mean[queries].astype(np.float32), self.query_std[queries].astype(np.float32)
        left = (s - me[None, :]) / se[None, :]
        s -= mt[:, None]
        s /= st[:, None]
        s += left
        s *= 0.5
        return s


def _block_queries(n_rows: int) -> int:
    return max(1, min(1024, BLOCK_SCORES // max(1, min(n_rows, CHUNK_ROWS))))


def top_k(
    queries: np.ndarray,
    rows: np.ndarray,
    k: int = 1,
    *,
    row_scale: np.ndarray | None = None,
    norm: Norm | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best rows of `rows` `(S, D)` for each query `(Q, D)`: indices `(Q, k')` int64 and scores `(Q, k')`
    float32, best first, k' = min(k, S). `row_scale` `(S,)` multiplies each row's scores (before `norm`)."""
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    n = rows.shape[0]
    k = min(k, n)
    best_i = np.zeros((len(q), k), np.int64)
    best_s = np.full((len(q), k), -np.inf, np.float32)
    if k == 0 or len(q) == 0:
        return best_i, best_s
    qb = _block_queries(n)
    for a in range(0, n, chunk_rows):
        b = min(n, a + chunk_rows)
        chunk = np.asarray(rows[a:b], dtype=np.float32)
        scale = None if row_scale is None else np.asarray(row_scale[a:b], dtype=np.float32)
        for qa in range(0, len(q), qb):
            qz = min(len(q), qa + qb)
            s = q[qa:qz] @ chunk.T
            if scale is not None:
                s *= scale[None, :]
            if norm is not None:
                norm.apply(s, slice(a, b), slice(qa, qz))
            ci, cs = _top_of_block(s, k)
            _merge(best_i[qa:qz], best_s[qa:qz], ci + a, cs)
    return best_i, best_s


def top_k_grouped(
    queries: np.ndarray,
    rows: np.ndarray,
    group: np.ndarray,
    n_groups: int,
    k: int = 1,
    *,
    norm: Norm | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best groups (speakers) per query, a group scoring its best row: `rows` `(N, D)` with `group` `(N,)`
    non-decreasing group ids in [0, n_groups). Returns group indices and scores `(Q, k')`, best first.
    `norm` statistics are per group. Groups without rows score -inf."""
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    group = np.asarray(group)
    k = min(k, n_groups)
    out_i = np.zeros((len(q), k), np.int64)
    out_s = np.full((len(q), k), -np.inf, np.float32)
    if k == 0 or len(q) == 0:
        return out_i, out_s
    qb = max(1, min(len(q), BLOCK_SCORES // max(1, n_groups)))
    for qa in range(0, len(q), qb):
        qz = min(len(q), qa + qb)
        best = np.full((qz - qa, n_groups), -np.inf, np.float32)
        for a in range(0, len(rows), chunk_rows):
            b = min(len(rows), a + chunk_rows)
            s = q[qa:qz] @ np.asarray(rows[a:b], dtype=np.float32).T
            g = group[a:b]
            starts = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
            ids = g[starts]
            best[:, ids] = np.maximum(best[:, ids], np.maximum.reduceat(s, starts, axis=1))
        if norm is not None:
            norm.apply(best, slice(0, n_groups), slice(qa, qz))
        out_i[qa:qz], out_s[qa:qz] = _top_of_block(best, k)
    return out_i, out_s


def _top_of_block(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k columns of each row of `s` `(q, c)` (k <= c), best first; `s` may be overwritten."""
    q, c = s.shape
    if k <= ARGMAX_MAX_K or k * 8 >= c:
        if k > ARGMAX_MAX_K:
            idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
            return idx, np.take_along_axis(s, idx, axis=1)
        r = np.arange(q)
        idx = np.empty((q, k), np.int64)
        val = np.empty((q, k), np.float32)
        for j in range(k):
            i = s.argmax(axis=1)
            idx[:, j] = i
            val[:, j] = s[r, i]
            s[r, i] = -np.inf
        return idx, val
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(s, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


def _merge(best_i: np.ndarray, best_s: np.ndarray, cand_i: np.ndarray, cand_s: np.ndarray) -> None:
    """Merge candidates into the running top k (in place), best first; earlier rows win ties."""
    k = best_i.shape[1]
    all_s = np.concatenate([best_s, cand_s], axis=1)
    all_i = np.concatenate([best_i, cand_i], axis=1)
    order = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
    best_s[:] = np.take_along_axis(all_s, order, axis=1)
    best_i[:] = np.take_along_axis(all_i, order, axis=1)


def cohort_stats(emb: np.ndarray, cohort: np.ndarray, top_n: int, chunk_rows: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """`spkid.scoring.cohort_stats` for a matrix of any size, `chunk_rows` rows at a time: (mean (N,), std (N,))."""
    from spkid import scoring

    means, stds = [], []
    for a in range(0, len(emb), chunk_rows):
        m, s = scoring.cohort_stats(np.asarray(emb[a : a + chunk_rows]), cohort, top_n)
        means.append(m)
        stds.append(s)
    if not means:
        return np.zeros(0), np.ones(0)
    return np.concatenate(means), np.concatenate(stds)

"""Cosine scoring and AS-norm score normalisation of embeddings. Pure numpy.

`unit` is the one L2 row normaliser of spkid. `as_norm` (adaptive symmetric normalisation, Matejka et al.,
Interspeech 2017) normalises scores over a cohort of embeddings, for score matrices, paired scores and single
pairs; `cohort_stats` + `as_norm_from_stats` split it for galleries (`spkid.search.Norm`).

The text formats of scores and trials are in `spkid.trials`, calibration in `spkid.calibration`, identification
reports in `spkid.report`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

from spkid.errors import SpkidError

AS_NORM_TOP_N = 300


def unit(x: np.ndarray, dtype: DTypeLike = np.float64) -> np.ndarray:
    """Rows of `x` scaled to unit L2 length (zero rows stay zero), computed in `dtype`."""
    x = np.asarray(x, dtype=dtype)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of a (N, D) with every row of b (M, D): (N, M) float64."""
    return unit(a) @ unit(b).T


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of paired rows of a and b, both (N, D): (N,) float64."""
    return np.einsum("nd,nd->n", unit(a), unit(b))


def cohort_stats(emb: np.ndarray, cohort: np.ndarray, top_n: int = AS_NORM_TOP_N) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each embedding's `top_n` highest cosine scores against the cohort.

    emb (N, D), cohort (C, D) -> (mean (N,), std (N,)). With fewer than `top_n` cohort rows all are used.
    Precompute these once for a gallery and pass them to `as_norm_from_stats`.
    """
    emb = np.atleast_2d(emb)
    cohort = np.atleast_2d(cohort)
    if cohort.shape[0] < 2:
        raise SpkidError(f"the AS-norm cohort needs at least 2 embeddings, got {cohort.shape[0]}")
    if emb.shape[1] != cohort.shape[1]:
        raise SpkidError(
            f"cohort embeddings have dimension {cohort.shape[1]} but the scored embeddings {emb.shape[1]}; "
            "use a cohort from the same model"
        )
    if top_n < 2:
        raise SpkidError(f"AS-norm top_n must be >= 2, got {top_n}")
    n = min(top_n, cohort.shape[0])
    s = cosine(emb, cohort)
    top = np.partition(s, s.shape[1] - n, axis=1)[:, s.shape[1] - n :]
    return top.mean(axis=1), np.maximum(top.std(axis=1), 1e-6)


def as_norm_from_stats(
    scores: np.ndarray, enroll_stats: tuple[np.ndarray, np.ndarray], test_stats: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """AS-norm with precomputed `cohort_stats`: 0.5 ((s - mu_e) / sd_e + (s - mu_t) / sd_t).

    A 2-D `scores` (E, T) pairs enroll row e with test column t; a 1-D `scores` (P,) pairs entry p of both stats.
    """
    s = np.asarray(scores, dtype=np.float64)
    (me, se), (mt, st) = enroll_stats, test_stats
    if s.ndim == 2:
        return 0.5 * ((s - me[:, None]) / se[:, None] + (s - mt[None, :]) / st[None, :])
    return 0.5 * ((s - me) / se + (s - mt) / st)


def as_norm(
    scores: np.ndarray, enroll_emb: np.ndarray, test_emb: np.ndarray, cohort_emb: np.ndarray, top_n: int = AS_NORM_TOP_N
) -> np.ndarray:
    """Adaptive symmetric score normalisation (AS-norm1, Matejka et al., "Analysis of score normalization in
    multilingual speaker recognition", Interspeech 2017).

    Each side is normalised by the mean and std of its own `top_n` closest cohort scores (cosine), and the two
    normalised scores are averaged. Shapes: scores (E, T) with enroll_emb (E, D) and test_emb (T, D) (a score
    matrix), or scores (P,) with enroll_emb (P, D) and test_emb (P, D) (paired trials). cohort_emb (C, D): one
    embedding per cohort speaker or utterance, disjoint from the evaluation speakers. Returns the shape of scores.
    """
    s = np.asarray(scores, dtype=np.float64)
    e, t = np.atleast_2d(enroll_emb), np.atleast_2d(test_emb)
    want = (e.shape[0], t.shape[0]) if s.ndim == 2 else (s.shape[0], s.shape[0])
    if s.ndim not in (1, 2) or (s.ndim == 2 and s.shape != want) or (s.ndim == 1 and (e.shape[0], t.shape[0]) != want):
        raise SpkidError(f"as_norm: scores {s.shape} do not match enroll {e.shape} and test {t.shape} embeddings")
    return as_norm_from_stats(s, cohort_stats(e, cohort_emb, top_n), cohort_stats(t, cohort_emb, top_n))


def as_norm_pair(score: float, enroll: np.ndarray, test: np.ndarray, cohort_emb: np.ndarray, top_n: int = AS_NORM_TOP_N) -> float:
    """AS-norm of one trial: `score` between embeddings enroll (D,) and test (D,)."""
    return float(as_norm(np.array([score]), enroll[None, :], test[None, :], cohort_emb, top_n)[0])


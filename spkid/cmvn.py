"""Per-utterance normalisation of feature matrices `(frames, dims)`: cepstral mean (and variance) normalisation.

"cmn" subtracts each dimension's mean over the utterance, "cmvn" also divides by its standard deviation, and
"sliding" subtracts the mean of a window of frames centred on each frame (Kaldi's `apply-cmvn-sliding
--center=true --norm-vars=false`). `spkid.features` applies it as `FeatureConfig.norm` says.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from spkid.errors import SpkidError

Norm = Literal["none", "cmn", "cmvn", "sliding"]


def normalize(feats: np.ndarray, norm: str, cmn_window: int = 300) -> np.ndarray:
    """Per-dimension normalisation of `(frames, dims)` float32, in place (also returned).

    "cmn": subtract the mean; "cmvn": and divide by the standard deviation (constant dims are only
    centred); "sliding": subtract the mean over `cmn_window` frames centred on each frame, shifted to lie
    inside the utterance near its edges (Kaldi `apply-cmvn-sliding --center=true --norm-vars=false`).
    Statistics are accumulated in float64, a block of rows at a time (no full-size temporaries).
    """
    n = len(feats)
    if norm == "none" or n == 0:
        return feats
    if norm == "sliding":
        _sliding_cmn(feats, cmn_window)
        return feats
    if norm not in ("cmn", "cmvn"):
        raise SpkidError(f"unknown norm {norm!r}; choose from {', '.join(get_args(Norm))}")
    rows = 1 << 16
    mean = sum(feats[i : i + rows].sum(axis=0, dtype=np.float64) for i in range(0, n, rows)) / n
    std = None
    if norm == "cmvn":
        sq = sum((((feats[i : i + rows] - mean) ** 2).sum(axis=0)) for i in range(0, n, rows))
        std = np.sqrt(sq / n)
        std[std < 1e-10] = 1.0
    for i in range(0, n, rows):
        block = feats[i : i + rows]
        block -= mean.astype(np.float32)
        if std is not None:
            block /= std.astype(np.float32)
    return feats


def _sliding_cmn(x: np.ndarray, window: int) -> None:
    n = len(x)
    t = np.arange(n, dtype=np.int64)
    start = t - window // 2
    end = start + window
    end -= np.minimum(start, 0)
    start = np.maximum(start, 0)
    over = np.maximum(end - n, 0)
    start = np.maximum(start - over, 0)
    end -= over
    rows = max(1 << 14, window)
    saved = x[:0].astype(np.float64)  # original (pre-normalisation) rows [a - len(saved), a)
    for a in range(0, n, rows):
        b = min(n, a + rows)
        lo, hi = int(start[a]), int(end[b - 1])
        seg = np.concatenate([saved[len(saved) - (a - lo) :] if a > lo else saved[:0], x[a:hi].astype(np.float64)])
        cs = np.zeros((len(seg) + 1, x.shape[1]))
        np.cumsum(seg, axis=0, out=cs[1:])
        ws, we = start[a:b] - lo, end[a:b] - lo
        means = (cs[we] - cs[ws]) / (we - ws)[:, None]
        keep_from = max(lo, b - window)
        saved = seg[keep_from - lo : b - lo].copy()
        x[a:b] -= means.astype(np.float32)

"""Decisions on scores, for `verify` and `identify`: which threshold applies, how a clip scores against enrolled
speakers, and what each identified clip is named. Core: numpy only, no torch, no model files, no stdio.

A threshold comes from (`choose_threshold`): --threshold, else the gallery's fixed threshold (`enroll
--threshold`), else the gallery's calibration, else the model's calibration (read by the caller,
`spkid.modelfile.model_calibration`), else none (scores only; identification is then closed-set).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spkid import gallery, search
from spkid.calibration import Calibration
from spkid.errors import SpkidError
from spkid.scoring import AS_NORM_TOP_N, cohort_stats, unit
from spkid.trials import UNKNOWN, IdRecord

log = logging.getLogger(__name__)

NO_THRESHOLD = ("no threshold: scores only (pass --threshold SCORE, or calibrate one on labelled trials, e.g. "
                "`spkid verify --trials T -g DIR | spkid score --calibrate - -g DIR`, and it is used from then on)")


@dataclass
class ThresholdChoice:
    """A decision threshold and where it came from (`score` None: no threshold anywhere)."""

    score: float | None
    source: str
    far: float | None = None
    frr: float | None = None

    def describe(self) -> str:
        if self.score is None:
            return self.source
        rates = f"; FAR {100 * self.far:.2f} %, FRR {100 * self.frr:.2f} % there" if self.far is not None else ""
        return f"threshold {self.score:.4f} from {self.source}{rates}"

    def to_json(self) -> dict:
        return {"threshold": self.score, "threshold_source": self.source, "threshold_far": self.far, "threshold_frr": self.frr}


def choose_threshold(threshold: float | None, g: gallery.Gallery | None, model_cal: Calibration | None, model_label: str,
                     point: str, cohort: bool) -> ThresholdChoice:
    """--threshold, else the gallery's fixed threshold, else its calibration, else `model_cal` (the calibration of
    the model named `model_label`). `point` picks the calibrated threshold ("eer", "min_dcf", "bayes", "far");
    `cohort`: the scores are AS-normed, so a threshold chosen on raw scores earns a warning."""
    if threshold is not None:
        return ThresholdChoice(threshold, "--threshold")
    choice = None
    if g is not None:
        fixed = g.meta.get("threshold")
        if isinstance(fixed, dict) and isinstance(fixed.get("score"), (int, float)):
            choice = ThresholdChoice(float(fixed["score"]), f"{g.path}/gallery.json (set by {fixed.get('source', 'enroll')})")
        elif g.meta.get("calibration") is not None:
            cal = gallery.load_calibration(g.path)
            choice = _from_calibration(cal, point, f"the calibration in {g.path}/gallery.json")
    if choice is None and model_cal is not None:
        choice = _from_calibration(model_cal, point, f"the calibration in model {model_label}")
    if choice is None:
        return ThresholdChoice(None, NO_THRESHOLD)
    if cohort:
        log.warning("%s was chosen on raw scores; with --cohort the scores are AS-normed (calibrate on AS-normed "
                    "scores, or pass --threshold)", choice.source)
    return choice


def _from_calibration(cal: Calibration, point: str, where: str) -> ThresholdChoice:
    t = cal.threshold(point)
    kind = point if point != "far" else next((k for k in cal.thresholds if k.startswith("far@")), point)
    n = cal.fitted_on
    trials = f", fitted on {n['n_target']} target / {n['n_nontarget']} non-target trials" if "n_target" in n else ""
    return ThresholdChoice(t.score, f"{where} ({kind} point{trials})", t.far, t.frr)


def check_cohort(values: np.ndarray, found_sha256: str | None, sha256: str, source: str) -> np.ndarray:
    """The AS-norm cohort `(C, D)` as unit float32 rows, after checking it comes from the model `sha256` and has
    at least 2 embeddings (`source`: the cohort file, for messages)."""
    gallery.check_model(found_sha256, sha256, f"the cohort {source}", "the model used here")
    if len(values) < 2:
        raise SpkidError(f"--cohort {source}: needs at least 2 embeddings, has {len(values)}")
    return unit(values, np.float32)


def speaker_scores(g: gallery.Gallery, rows: np.ndarray, test: np.ndarray, score_by: str) -> np.ndarray:
    """Score of test embedding i `(n, D)` against gallery speaker rows[i]: cosine with the speaker's model, or
    (aggregation "all") the best / mean cosine with its enrolment embeddings."""
    if g.all_embeddings is None:
        return np.einsum("nd,nd->n", np.asarray(g.embeddings[rows]), test).astype(np.float64)
    out = np.empty(len(rows))
    for j, (r, t) in enumerate(zip(rows, test)):
        s = g.rows_of(int(r)) @ t
        out[j] = s.max() if score_by == "best" else s.mean()
    return out


def rank(g: gallery.Gallery, queries: np.ndarray, k: int, score_by: str, norm: search.Norm | None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k speaker rows and scores `(Q, k)` of unit query embeddings against the gallery, best first."""
    if g.all_embeddings is None:
        return search.top_k(queries, g.embeddings, k, norm=norm)
    if score_by == "best":
        return search.top_k_grouped(queries, g.all_embeddings, g.all_index, len(g.speakers), k, norm=norm)
    return search.top_k(queries, g.sums, k, row_scale=1.0 / np.maximum(np.asarray(g.counts), 1), norm=norm)


def as_norm_stats(g: gallery.Gallery, queries: np.ndarray, cohort: np.ndarray) -> search.Norm:
    """AS-norm statistics of the gallery's speaker models and of the queries against the cohort, for `rank`."""
    rm, rs = search.cohort_stats(g.embeddings, cohort, AS_NORM_TOP_N)
    qm, qs = cohort_stats(queries, cohort, AS_NORM_TOP_N)
    return search.Norm(rm, rs, qm, qs)


def identify_records(keys: Sequence[str], labels: Sequence[str | None], speakers: Sequence[str], idx: np.ndarray,
                     scores: np.ndarray, top_k: int, threshold: float | None) -> list[IdRecord]:
    """One record per query from `rank`'s rows `idx` and `scores` `(Q, k)`: the `top_k` candidates, the margin of
    the best over the second best (None with one column), and the decision: the best speaker, or UNKNOWN when its
    score is below `threshold` (every query gets its best speaker without one). A label is `enrolled` when it
    names one of `speakers`."""
    known = set(speakers)
    out = []
    for i, key in enumerate(keys):
        names = [speakers[j] for j in idx[i]]
        score = float(scores[i, 0])
        margin = float(scores[i, 0] - scores[i, 1]) if idx.shape[1] > 1 else None
        decision = names[0] if threshold is None or score >= threshold else UNKNOWN
        k = min(top_k, len(names))
        top = [(n, float(s)) for n, s in zip(names[:k], scores[i, :k])]
        label = labels[i]
        out.append(IdRecord(key, label, top, label is not None and label in known, decision, threshold, margin))
    return out

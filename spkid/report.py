"""Reports over identification results (`spkid identify --json` records, `spkid.trials.IdRecord`) and the one
plain-text table layout of the CLI's reports and listings. Pure numpy."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from spkid import metrics
from spkid.errors import SpkidError
from spkid.lists import plural
from spkid.trials import UNKNOWN, IdRecord

log = logging.getLogger(__name__)


def format_table(rows: list[list[str]]) -> str:
    """Left-aligned columns separated by at least two spaces, one row a line, trailing spaces stripped (so
    `awk '$1=="eer"{print $2}'` reads it). Rows may be shorter than the widest one."""
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(len(r) for r in rows))]
    return "".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() + "\n" for r in rows)


def identification_arrays(records: Sequence[IdRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true_rank, top_score_known, top_score_unknown): for probes of enrolled speakers the 0-based rank of the true
    speaker among the candidates (-1 when not listed) and the best candidate's score; for the other probes the best
    candidate's score. The inputs of `metrics.dir_at_far` and `plots.plot_identification`."""
    known = [r for r in records if r.enrolled]
    rank = np.array([next((i for i, (s, _) in enumerate(r.top) if s == r.label), -1) for r in known], dtype=np.int64)
    top_known = np.array([r.top[0][1] for r in known], dtype=np.float64)
    return rank, top_known, np.array([r.top[0][1] for r in records if not r.enrolled], dtype=np.float64)


def identification_report(records: Sequence[IdRecord], top_k: int = 5, far: float = 0.01) -> dict:
    """Closed- and open-set identification metrics over `spkid identify --json` records (stable key order).

    Keys: n_clips, n_known (probes of enrolled speakers), n_unknown; top1_accuracy and topk_accuracy (with k) over
    known probes; far_target, dir_at_far, dir_threshold (open-set detection-and-identification rate at rank 1,
    `metrics.dir_at_far`; null without unknown probes); with decisions: decision_accuracy (decision equals the label
    for known probes, "unknown" for unknown probes) and decision_far (unknown probes given a speaker); threshold
    (the records' threshold when they agree, else null).
    """
    known = [r for r in records if r.enrolled]
    unknown = [r for r in records if not r.enrolled]
    if not known:
        raise SpkidError(
            f"none of the {len(records)} clips has the label of an enrolled speaker; "
            "identification accuracy needs labelled clips (\"label\" in the identify output)"
        )
    short = sum(len(r.top) < top_k for r in known)
    if short:
        log.warning("%s %s fewer than %s; top-%d accuracy counts only the candidates listed", plural(short, "clip"),
                    "lists" if short == 1 else "list", plural(top_k, "candidate"), top_k)
    rank, top_known, top_unknown = identification_arrays(records)
    rep: dict = {
        "n_clips": len(records),
        "n_known": len(known),
        "n_unknown": len(unknown),
        "top1_accuracy": metrics.top_k_accuracy(rank, 1),
        "k": top_k,
        "topk_accuracy": metrics.top_k_accuracy(rank, top_k),
        "far_target": far,
        "dir_at_far": None,
        "dir_threshold": None,
    }
    if unknown:
        rep["dir_at_far"], rep["dir_threshold"] = metrics.dir_at_far(rank, top_known, top_unknown, far)
    if all(r.decision is not None for r in records):
        right = [r.decision == (r.label if r.enrolled else UNKNOWN) for r in records]
        rep["decision_accuracy"] = float(np.mean(right))
        rep["decision_far"] = float(np.mean([r.decision != UNKNOWN for r in unknown])) if unknown else None
    thresholds = {r.threshold for r in records}
    rep["threshold"] = thresholds.pop() if len(thresholds) == 1 else None
    return rep


def identification_confusion(records: Sequence[IdRecord]) -> tuple[list[str], list[str], np.ndarray]:
    """Confusion table of true speaker (rows; "unknown" for a null label) against the decision (columns;
    the best candidate when a record has no decision). Returns (rows, columns, int64 counts)."""
    true = [r.label if r.label is not None else UNKNOWN for r in records]
    pred = [r.decision if r.decision is not None else r.top[0][0] for r in records]
    return metrics.confusion_matrix(true, pred)

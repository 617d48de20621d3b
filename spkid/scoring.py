"""Scores in, labelled trials out; cosine scoring, AS-norm and linear calibration. Pure numpy (torch only for models).

Text formats read here (UTF-8; fields split on tabs when the line has one, otherwise on any whitespace; blank
lines and lines starting with `#` are ignored; one input holds one format, mixed formats are refused):

* Scores with labels: `ENROLL TEST SCORE LABEL`, LABEL one of `target`, `nontarget`, `1`, `0`.
* Scores without labels: `ENROLL TEST SCORE`, labelled by joining with a trials file on (ENROLL, TEST).
* Kaldi `compute-eer` input: `SCORE LABEL`, e.g. `0.73 target`.
* Trials, either VoxCeleb `1 enroll_path test_path` (1 = same speaker, 0 = different) or Kaldi
  `enroll test target|nontarget`; the first line decides which, a line `0|1 x 0|1` counts as VoxCeleb.
* Identification results, JSON lines as `spkid identify --json` writes them, one object per clip:

      {"key": "clips/a.wav",                  the clip (str, required)
       "label": "alice",                      true speaker (str), or null when unknown / unlabelled
       "enrolled": true,                      optional: is `label` one of the gallery's speakers?
                                              default: true when label is not null
       "top": [{"speaker": "alice", "score": 0.81},
               {"speaker": "bob", "score": 0.42}, ...],
                                              candidates, best first (required, non-empty, finite scores;
                                              re-sorted by score here), usually the top k of the gallery
       "decision": "alice",                   optional: the speaker the system chose, or "unknown" when the best
                                              score is below the threshold ("unknown" is a reserved name)
       "threshold": 0.35}                     optional: the threshold used for `decision` (number or null)

  Other keys are allowed and ignored. `IdRecord(...).to_json()` writes exactly this line; `parse_identify` reads it.

Score normalisation: `as_norm` (adaptive symmetric normalisation, Matejka et al., Interspeech 2017) over a cohort of
embeddings, for score matrices, paired scores and single pairs. Calibration: `calibrate` fits a prior-weighted linear
logistic regression (Brümmer's FoCal / BOSARIS) from scores to natural-log likelihood ratios and chooses thresholds;
`Calibration` is what `verify`/`identify` load back (`load_calibration`) from a gallery's `gallery.json` or a model file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spkid import metrics
from spkid.errors import SpkidError, check_interrupted

log = logging.getLogger(__name__)

LABELS = {"target": True, "nontarget": False, "1": True, "0": False}
FORMATS = {2: "SCORE LABEL", 3: "ENROLL TEST SCORE", 4: "ENROLL TEST SCORE LABEL"}
UNKNOWN = "unknown"
AS_NORM_TOP_N = 300


def _fields(line: str) -> list[str]:
    return [f.strip() for f in line.split("\t")] if "\t" in line else line.split()


def _data_lines(lines: Iterable[str]) -> Iterable[tuple[int, str]]:
    for n, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if line.strip() and not line.lstrip().startswith("#"):
            yield n, line


def _examples(keys: Sequence[tuple[str, str]], limit: int = 3) -> str:
    shown = ", ".join(f"({e} {t})" for e, t in keys[:limit])
    return shown + (", ..." if len(keys) > limit else "")


def _label(word: str, where: str) -> bool:
    try:
        return LABELS[word.lower()]
    except KeyError:
        raise SpkidError(f"{where}: label {word!r} is not one of target, nontarget, 1, 0") from None


def _score(word: str, where: str) -> float:
    try:
        x = float(word)
    except ValueError:
        raise SpkidError(f"{where}: score {word!r} is not a number") from None
    if not math.isfinite(x):
        raise SpkidError(f"{where}: score is {word}; scores must be finite (fix or drop the trial)")
    return x


@dataclass
class ScoreList:
    """Parsed scores. `enroll`/`test` are None for `SCORE LABEL` input; `label` (bool, True = target) is None
    until labelled (by the input or `join_trials`)."""

    score: np.ndarray
    label: np.ndarray | None = None
    enroll: list[str] | None = None
    test: list[str] | None = None
    source: str = "<stdin>"

    @property
    def target(self) -> np.ndarray:
        return self.score[self._labels()]

    @property
    def nontarget(self) -> np.ndarray:
        return self.score[~self._labels()]

    def _labels(self) -> np.ndarray:
        if self.label is None:
            raise SpkidError(f"{self.source}: the scores have no labels; give a trials file (--trials FILE)")
        return self.label


@dataclass
class Trials:
    """Parsed trials: (enroll, test) keys and bool labels (True = same speaker); `format` is voxceleb or kaldi."""

    enroll: list[str]
    test: list[str]
    label: np.ndarray
    format: str
    source: str = "<trials>"


@dataclass
class IdRecord:
    """One clip of `spkid identify --json` output (schema in the module docstring)."""

    key: str
    label: str | None
    top: list[tuple[str, float]]
    enrolled: bool
    decision: str | None = None
    threshold: float | None = None

    def to_json(self) -> str:
        """The record as one JSON line of the schema above (what `spkid identify --json` writes), no newline."""
        obj: dict = {"key": self.key, "label": self.label, "enrolled": self.enrolled}
        obj["top"] = [{"speaker": s, "score": float(v)} for s, v in self.top]
        if self.decision is not None:
            obj["decision"] = self.decision
        obj["threshold"] = self.threshold
        return json.dumps(obj, ensure_ascii=False)


def read_input(lines: Iterable[str], source: str = "<stdin>") -> ScoreList | list[IdRecord]:
    """Parse score text or identification JSON lines, whichever the first data line is; mixing is refused."""
    it = iter(_data_lines(lines))
    first = next(it, None)
    if first is None:
        raise SpkidError(f"{source}: no scores (the input is empty); expected ENROLL TEST SCORE [LABEL] lines")
    rest = [first, *it]
    if first[1].lstrip().startswith("{"):
        return _parse_identify(rest, source)
    return _parse_scores(rest, source)


def parse_scores(lines: Iterable[str], source: str = "<stdin>") -> ScoreList:
    """Parse `ENROLL TEST SCORE [LABEL]` or `SCORE LABEL` lines (module docstring) into a ScoreList."""
    rows = list(_data_lines(lines))
    if not rows:
        raise SpkidError(f"{source}: no scores (the input is empty); expected ENROLL TEST SCORE [LABEL] lines")
    return _parse_scores(rows, source)


def _parse_scores(rows: list[tuple[int, str]], source: str) -> ScoreList:
    first_n, first = rows[0]
    width = len(_fields(first))
    if width not in FORMATS:
        raise SpkidError(
            f"{source}:{first_n}: {width} fields; expected ENROLL TEST SCORE [LABEL] or SCORE LABEL (tab or space separated)"
        )
    scores: list[float] = []
    labels: list[bool] = []
    enroll: list[str] = []
    test: list[str] = []
    for n, line in rows:
        f = _fields(line)
        where = f"{source}:{n}"
        if f[0].startswith("{"):
            raise SpkidError(f"{where}: a JSON line among {FORMATS[width]} lines; mixed formats in one input are refused")
        if len(f) != width:
            raise SpkidError(
                f"{where}: {len(f)} fields, but line {first_n} has {width} ({FORMATS[width]}); "
                "mixed formats in one input are refused"
            )
        if width == 2:
            scores.append(_score(f[0], where))
            labels.append(_label(f[1], where))
        else:
            enroll.append(f[0])
            test.append(f[1])
            scores.append(_score(f[2], where))
            if width == 4:
                labels.append(_label(f[3], where))
    return ScoreList(
        score=np.array(scores, dtype=np.float64),
        label=np.array(labels, dtype=bool) if width != 3 else None,
        enroll=enroll if width != 2 else None,
        test=test if width != 2 else None,
        source=source,
    )


def parse_trials(lines: Iterable[str], source: str = "<trials>") -> Trials:
    """Parse a VoxCeleb (`1 enroll test`) or Kaldi (`enroll test target`) trials list; duplicates are an error."""
    enroll: list[str] = []
    test: list[str] = []
    labels: list[bool] = []
    fmt = ""
    first_n = 0
    for n, line in _data_lines(lines):
        f = _fields(line)
        where = f"{source}:{n}"
        if len(f) != 3:
            raise SpkidError(f"{where}: {len(f)} fields; a trial is `1|0 ENROLL TEST` (VoxCeleb) or `ENROLL TEST target|nontarget` (Kaldi)")
        kind = "voxceleb" if f[0] in ("0", "1") else "kaldi" if f[2].lower() in LABELS else ""
        if not kind:
            raise SpkidError(f"{where}: neither `1|0 ENROLL TEST` (VoxCeleb) nor `ENROLL TEST target|nontarget` (Kaldi)")
        if fmt and kind != fmt:
            raise SpkidError(f"{where}: a {kind} trial, but line {first_n} is {fmt}; mixed formats in one trials file are refused")
        fmt, first_n = fmt or kind, first_n or n
        if kind == "voxceleb":
            labels.append(f[0] == "1")
            enroll.append(f[1])
            test.append(f[2])
        else:
            labels.append(_label(f[2], where))
            enroll.append(f[0])
            test.append(f[1])
    if not enroll:
        raise SpkidError(f"{source}: no trials (the file is empty)")
    dups = _duplicates(enroll, test)
    if dups:
        raise SpkidError(f"{source}: {len(dups)} duplicate trials, e.g. {_examples(dups)}; each (enroll, test) pair may appear once")
    return Trials(enroll=enroll, test=test, label=np.array(labels, dtype=bool), format=fmt, source=source)


def _duplicates(enroll: Sequence[str], test: Sequence[str]) -> list[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    dups: list[tuple[str, str]] = []
    for key in zip(enroll, test):
        if key in seen:
            dups.append(key)
        seen.add(key)
    return dups


def join_trials(scores: ScoreList, trials: Trials) -> ScoreList:
    """Label keyed scores from a trials list, in the trials' order.

    Every trial needs exactly one score and every score a trial; otherwise SpkidError names the count and a few
    keys. Scores that carry labels already must agree with the trials.
    """
    if scores.enroll is None or scores.test is None:
        raise SpkidError(f"{scores.source}: SCORE LABEL lines have no keys to join with {trials.source}; give ENROLL TEST SCORE lines")
    dups = _duplicates(scores.enroll, scores.test)
    if dups:
        raise SpkidError(f"{scores.source}: {len(dups)} duplicate scores, e.g. {_examples(dups)}; each (enroll, test) pair may appear once")
    index = {key: i for i, key in enumerate(zip(scores.enroll, scores.test))}
    trial_keys = list(zip(trials.enroll, trials.test))
    missing = [k for k in trial_keys if k not in index]
    if missing:
        raise SpkidError(
            f"{len(missing)} of {len(trial_keys)} trials in {trials.source} have no score in {scores.source}, "
            f"e.g. {_examples(missing)}"
        )
    wanted = set(trial_keys)
    extra = [k for k in index if k not in wanted]
    if extra:
        raise SpkidError(f"{len(extra)} scores in {scores.source} are not trials in {trials.source}, e.g. {_examples(extra)}")
    order = np.array([index[k] for k in trial_keys], dtype=np.int64)
    if scores.label is not None:
        bad = np.flatnonzero(scores.label[order] != trials.label)
        if bad.size:
            keys = [trial_keys[i] for i in bad]
            raise SpkidError(f"{bad.size} scores in {scores.source} have labels that disagree with {trials.source}, e.g. {_examples(keys)}")
    return ScoreList(
        score=scores.score[order],
        label=trials.label.copy(),
        enroll=list(trials.enroll),
        test=list(trials.test),
        source=scores.source,
    )


def labelled(scores: ScoreList, trials: Trials | None = None) -> ScoreList:
    """Scores ready for metrics: joined with `trials` when given, with both classes present (SpkidError otherwise)."""
    if trials is not None:
        scores = join_trials(scores, trials)
    if scores.label is None:
        raise SpkidError(f"{scores.source}: ENROLL TEST SCORE lines carry no labels; give a trials file (--trials FILE) or add a LABEL column")
    n_tar = int(scores.label.sum())
    n_non = int(scores.label.size - n_tar)
    if n_tar == 0 or n_non == 0:
        raise SpkidError(
            f"{scores.source}: {n_tar} target and {n_non} non-target trials; error rates need both classes (check the labels)"
        )
    return scores


def parse_identify(lines: Iterable[str], source: str = "<stdin>") -> list[IdRecord]:
    """Parse `spkid identify --json` lines (schema in the module docstring)."""
    rows = list(_data_lines(lines))
    if not rows:
        raise SpkidError(f"{source}: no identification results (the input is empty)")
    return _parse_identify(rows, source)


def _is_number(x: object) -> bool:
    """A JSON number that is a float: ints beyond float range (JSON allows any length) are not."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        float(x)
    except OverflowError:
        return False
    return True


def _parse_identify(rows: list[tuple[int, str]], source: str) -> list[IdRecord]:
    out: list[IdRecord] = []
    for n, line in rows:
        where = f"{source}:{n}"
        if not line.lstrip().startswith("{"):
            raise SpkidError(f"{where}: a text line among identification JSON lines; mixed formats in one input are refused")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpkidError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        except (ValueError, RecursionError) as e:  # an integer of over 4300 digits; nesting too deep
            raise SpkidError(f"{where}: not usable JSON ({str(e).split(';')[0]})") from None
        if not isinstance(obj, dict):
            raise SpkidError(f"{where}: expected a JSON object")
        key, label, top = obj.get("key"), obj.get("label"), obj.get("top")
        if not isinstance(key, str):
            raise SpkidError(f"{where}: \"key\" must be a string (the clip)")
        if label is not None and not isinstance(label, str):
            raise SpkidError(f"{where}: \"label\" must be a speaker name or null")
        if not isinstance(top, list) or not top:
            raise SpkidError(f"{where}: \"top\" must be a non-empty list of {{\"speaker\": ..., \"score\": ...}}")
        cands: list[tuple[str, float]] = []
        for c in top:
            value = c.get("score") if isinstance(c, dict) else None
            if not isinstance(c, dict) or not isinstance(c.get("speaker"), str) or not _is_number(value):
                raise SpkidError(f"{where}: every \"top\" entry needs a \"speaker\" string and a numeric \"score\"")
            if not math.isfinite(c["score"]):
                raise SpkidError(f"{where}: score of {c['speaker']!r} is {c['score']}; scores must be finite")
            cands.append((c["speaker"], float(c["score"])))
        cands.sort(key=lambda c: -c[1])
        enrolled = obj.get("enrolled", label is not None)
        if not isinstance(enrolled, bool):
            raise SpkidError(f"{where}: \"enrolled\" must be true or false")
        if enrolled and label is None:
            raise SpkidError(f"{where}: \"enrolled\" is true but \"label\" is null")
        decision = obj.get("decision")
        if decision is not None and not isinstance(decision, str):
            raise SpkidError(f"{where}: \"decision\" must be a speaker name or \"unknown\"")
        thr = obj.get("threshold")
        if thr is not None and (not _is_number(thr) or not math.isfinite(thr)):
            raise SpkidError(f"{where}: \"threshold\" must be a finite number or null")
        out.append(IdRecord(key, label, cands, enrolled, decision, None if thr is None else float(thr)))
    return out


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
        log.warning("%d clips list fewer than %d candidates; top-%d accuracy counts only the candidates listed", short, top_k, top_k)
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


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of a (N, D) with every row of b (M, D): (N, M) float64."""
    return _unit(a) @ _unit(b).T


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of paired rows of a and b, both (N, D): (N,) float64."""
    return np.einsum("nd,nd->n", _unit(a), _unit(b))


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


def fit_llr(target: np.ndarray, nontarget: np.ndarray, p_target: float = 0.5, reg: float = 1e-6) -> tuple[float, float]:
    """Prior-weighted linear logistic regression: llr = a * score + b (natural log), as BOSARIS `train_llr_fusion`.

    Minimises p_target * mean_tar log(1 + e^-(llr + L)) + (1 - p_target) * mean_non log(1 + e^(llr + L)), with
    L = logit(p_target), by Newton's method on standardised scores. `reg` (on the standardised slope) keeps perfectly
    separated scores finite. Returns (a, b).
    """
    tar, non = metrics._check(target, nontarget)
    if not 0.0 < p_target < 1.0:
        raise SpkidError(f"p_target must be strictly between 0 and 1, got {p_target}")
    s = np.concatenate([tar, non])
    mean, sd = s.mean(), s.std()
    if sd == 0:
        raise SpkidError("all scores are equal; nothing to calibrate")
    x = (s - mean) / sd
    y = np.concatenate([np.ones(tar.size), np.zeros(non.size)])
    w = np.where(y == 1, p_target / tar.size, (1 - p_target) / non.size)
    sign = np.where(y == 1, -1.0, 1.0)  # loss = softplus(sign * z)
    logit = math.log(p_target) - math.log1p(-p_target)

    def loss(theta: np.ndarray) -> float:
        z = theta[0] * x + theta[1] + logit
        return float(np.sum(w * np.logaddexp(0.0, sign * z)) + 0.5 * reg * theta[0] ** 2)

    theta = np.zeros(2)
    current = loss(theta)
    for _ in range(100):
        z = theta[0] * x + theta[1] + logit
        p = 0.5 * (1 + np.tanh(z / 2))  # sigmoid(z), stable
        r = w * (p - y)
        h = w * p * (1 - p)
        grad = np.array([r @ x + reg * theta[0], r.sum()])
        hess = np.array([[h @ (x * x) + reg, h @ x], [h @ x, h.sum()]])
        step = np.linalg.solve(hess + 1e-12 * np.eye(2), grad)
        t = 1.0
        new = loss(theta - step)
        while new > current and t > 1e-10:
            t /= 2
            new = loss(theta - t * step)
        if new > current:  # no descent left: at the optimum up to rounding
            break
        theta = theta - t * step
        gain, current = current - new, new
        if gain < 1e-15 or np.abs(t * step).max() < 1e-10:
            break
    a = theta[0] / sd
    return float(a), float(theta[1] - a * mean)


@dataclass(frozen=True)
class Threshold:
    """A decision threshold on raw scores and the FAR/FRR it gave on the trials it was chosen on."""

    score: float
    far: float
    frr: float


@dataclass
class Calibration:
    """Linear calibration llr = a * score + b, and thresholds on raw scores (stored in gallery.json / model config).

    `thresholds` maps a kind to a Threshold: "eer", "min_dcf" (at p_target), "bayes" (where the LLR equals the
    Bayes threshold for p_target, c_miss = c_fa = 1) and "far@X" (lowest threshold with FAR <= X).
    """

    a: float
    b: float
    p_target: float
    thresholds: dict[str, Threshold] = field(default_factory=dict)
    fitted_on: dict = field(default_factory=dict)
    time: str = ""

    def to_llr(self, scores: np.ndarray | float) -> np.ndarray:
        """Natural-log likelihood ratios for raw scores."""
        return self.a * np.asarray(scores, dtype=np.float64) + self.b

    def threshold(self, kind: str = "eer") -> Threshold:
        """The stored threshold of `kind` ("eer", "min_dcf", "bayes", "far@0.01", ...; "far" = the only far@ one)."""
        if kind == "far":
            fars = [k for k in self.thresholds if k.startswith("far@")]
            if len(fars) == 1:
                kind = fars[0]
        if kind not in self.thresholds:
            raise SpkidError(f"no {kind!r} threshold in the calibration; stored: {', '.join(self.thresholds) or 'none'}")
        return self.thresholds[kind]

    def to_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "p_target": self.p_target,
            "thresholds": {k: {"score": t.score, "far": t.far, "frr": t.frr} for k, t in self.thresholds.items()},
            "fitted_on": self.fitted_on,
            "time": self.time,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "calibration") -> Calibration:
        try:
            return cls(
                a=float(d["a"]),
                b=float(d["b"]),
                p_target=float(d["p_target"]),
                thresholds={k: Threshold(float(t["score"]), float(t["far"]), float(t["frr"])) for k, t in d.get("thresholds", {}).items()},
                fitted_on=dict(d.get("fitted_on", {})),
                time=str(d.get("time", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SpkidError(f"{source}: malformed calibration ({type(e).__name__}: {e}); refit it with `spkid score --calibrate`") from None


def effective_prior(p_target: float, c_miss: float = metrics.C_MISS, c_fa: float = metrics.C_FA) -> float:
    """The one prior equivalent to (p_target, c_miss, c_fa): p c_miss / (p c_miss + (1 - p) c_fa)."""
    metrics._check_costs(p_target, c_miss, c_fa)
    return p_target * c_miss / (p_target * c_miss + (1 - p_target) * c_fa)


def calibrate(
    target: np.ndarray,
    nontarget: np.ndarray,
    p_target: float = metrics.P_TARGET,
    far: float = 0.01,
    source: str = "",
    c_miss: float = metrics.C_MISS,
    c_fa: float = metrics.C_FA,
) -> Calibration:
    """Fit `fit_llr` at the effective prior of (p_target, c_miss, c_fa) and choose the thresholds (see
    `Calibration`) on these trials. The stored `p_target` is that effective prior."""
    tar, non = metrics._check(target, nontarget)
    p_target = effective_prior(p_target, c_miss, c_fa)
    a, b = fit_llr(tar, non, p_target)
    if a <= 0:
        raise SpkidError(f"{source or 'scores'}: target scores are not higher than non-target scores (slope {a:.3g}); check the labels")
    op = metrics.operating_points(tar, non)

    def at(score: float) -> Threshold:
        fa, fr = metrics.far_frr(tar, non, score)
        return Threshold(float(score), fa, fr)

    e, e_thr = metrics._eer(op)
    dcf, dcf_thr = metrics._min_dcf(op, p_target, metrics.C_MISS, metrics.C_FA)
    thresholds = {
        "eer": at(e_thr),
        "min_dcf": at(dcf_thr),
        "bayes": at((metrics.bayes_threshold(p_target) - b) / a),
        f"far@{far:g}": at(metrics.threshold_at_far(tar, non, far)),
    }
    llr_t, llr_n = a * tar + b, a * non + b
    fitted_on = {
        "file": source,
        "n_target": int(tar.size),
        "n_nontarget": int(non.size),
        "eer": e,
        "min_dcf": dcf,
        "cllr": metrics.cllr(llr_t, llr_n),
        "min_cllr": metrics.min_cllr(tar, non),
        "act_dcf": metrics.act_dcf(llr_t, llr_n, None, p_target),
    }
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return Calibration(a=a, b=b, p_target=p_target, thresholds=thresholds, fitted_on=fitted_on, time=stamp)


def _atomic_write(path: Path, write) -> None:
    """Write through `write(file_object)` to a temp file beside `path`, then os.replace it into place.

    Unlike `streams.atomic_write`, an existing file keeps its permissions (gallery.json stays world-readable).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        check_interrupted()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def gallery_json(path: str | Path) -> Path:
    """GALLERY/gallery.json (or a gallery.json path itself); SpkidError when it is not there."""
    p = Path(path)
    if p.is_dir():
        p = p / "gallery.json"
        if not p.is_file():
            raise SpkidError(f"{path}: not a gallery folder (no gallery.json); build one with `spkid enroll`")
    elif not p.is_file():
        raise SpkidError(f"{path}: no such gallery folder")
    return p


def _read_json_object(p: Path) -> dict:
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SpkidError(f"{p}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(obj, dict):
        raise SpkidError(f"{p}: expected a JSON object")
    return obj


def save_to_gallery(gallery: str | Path, cal: Calibration) -> Path:
    """Store `cal` under "calibration" in GALLERY/gallery.json, keeping every other key; replaced atomically."""
    p = gallery_json(gallery)
    obj = _read_json_object(p)
    obj["calibration"] = cal.to_dict()
    data = (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    _atomic_write(p, lambda f: f.write(data))
    return p


def save_to_model(model_in: str | Path, model_out: str | Path, cal: Calibration) -> Path:
    """Copy the model file `model_in` to `model_out` with `cal` under "calibration" in its config (atomic write).

    torch is imported here only: scoring stays torch-free everywhere else.
    """
    import torch

    from spkid import modelfile

    spec, state = modelfile.read(model_in)
    spec.calibration = cal.to_dict()
    blob = {"format": modelfile.FORMAT, "config": spec.to_json(), "state_dict": state}
    out = Path(model_out)
    _atomic_write(out, lambda f: torch.save(blob, f))
    return out


def load_calibration(path: str | Path) -> Calibration | None:
    """The calibration stored in a gallery folder (its gallery.json), a gallery.json file, or a model file.

    Returns None when none is stored. Model files (anything not a folder or *.json) load torch.
    """
    p = Path(path)
    if p.is_dir() or p.suffix == ".json":
        src = gallery_json(p)
        raw = _read_json_object(src).get("calibration")
    else:
        from spkid import modelfile

        src = p
        raw = modelfile.read(p)[0].calibration
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpkidError(f"{src}: \"calibration\" must be a JSON object")
    return Calibration.from_dict(raw, str(src))

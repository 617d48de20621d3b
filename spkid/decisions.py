"""Decisions on scores, for `verify` and `identify`: which threshold applies, how a clip scores against enrolled
speakers, and what each identified clip is named. Core: numpy only, no torch, no model files, no stdio.

A threshold comes from (`choose_threshold`): --threshold, else the gallery's fixed threshold (`enroll
--threshold`), else the gallery's calibration, else the model's calibration (read by the caller,
`spkid.modelfile.model_calibration`), else none (scores only; identification is then closed-set).
A calibration fitted with durations gives each trial its own threshold (`ThresholdChoice.at`, the one place that
turns the chosen rule and a trial's speech seconds into the threshold the trial is decided with): from the speech
seconds of the test clip (its quality record: the VAD's) and of the enrolled side (the other clip's, or the
enrolled speaker's total in the gallery); the duration-free threshold when either is unknown.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from spkid import gallery, search
from spkid.calibration import Calibration, finite_number
from spkid.errors import SpkidError
from spkid.lists import printable
from spkid.scoring import AS_NORM_TOP_N, as_norm, as_norm_pair, cohort_stats, unit
from spkid.trials import UNKNOWN, IdRecord, Trials
from spkid.utterance import MIN_SPEECH_S, SURE_SHARE, Quality

log = logging.getLogger(__name__)

NO_THRESHOLD = ("no threshold: scores only (pass --threshold SCORE, or calibrate one on labelled trials, e.g. "
                "`spkid verify --trials T -g DIR | spkid score --calibrate - -g DIR`, and it is used from then on)")


@dataclass
class ThresholdChoice:
    """A decision threshold and where it came from (`score` None: no threshold anywhere).

    With `calibration` (one fitted with durations) the threshold depends on the trial: `at(enroll_s, test_s)`
    gives each trial's; `score` is then the duration-free one, used where the speech of a side is unknown.
    `speech_s`: a per-trial threshold's (enroll, test) seconds of speech."""

    score: float | None
    source: str
    far: float | None = None
    frr: float | None = None
    calibration: Calibration | None = None
    kind: str = ""
    speech_s: tuple[float, float] | None = None

    def at(self, enroll_s: float | None, test_s: float | None) -> ThresholdChoice:
        """The threshold of one trial whose sides hold `enroll_s` and `test_s` seconds of speech (None: unknown,
        `speech_seconds`): this one unless the calibration is duration-aware."""
        if self.calibration is None:
            return self
        t, aware = self.calibration.trial_threshold(self.kind, enroll_s, test_s)
        if not aware:
            side = "enrolled side's" if enroll_s is None else "test clip's"
            return replace(self, calibration=None, source=f"{self.source}; duration-free: the {side} speech is unknown")
        return ThresholdChoice(t.score, f"{self.source}; duration-aware: {enroll_s:.2f} s of speech enrolled, "
                               f"{test_s:.2f} s tested", t.far, t.frr, speech_s=(enroll_s, test_s))

    def describe(self) -> str:
        if self.score is None:
            return self.source
        rates = f"; FAR {100 * self.far:.2f} %, FRR {100 * self.frr:.2f} % there" if self.far is not None else ""
        if self.calibration is not None:
            return (f"thresholds from {self.source}, duration-aware: each trial's from the speech of both sides "
                    f"({self.score:.4f} where a side's is unknown{rates})")
        return f"threshold {self.score:.4f} from {self.source}{rates}"

    def to_json(self) -> dict:
        return {"threshold": self.score, "threshold_source": self.source, "threshold_far": self.far, "threshold_frr": self.frr,
                "threshold_speech_s": _speech_json(self.speech_s)}


def _speech_json(speech: tuple[float, float] | None) -> dict | None:
    return None if speech is None else {"enroll": round(speech[0], 3), "test": round(speech[1], 3)}


def speech_seconds(quality: Quality | Mapping | None) -> float | None:
    """The seconds of speech the VAD found in an item (its quality record), None when not measured: no record,
    --no-vad, feature files (`Quality.vad` false: the length embedded is not speech measured)."""
    if quality is None:
        return None
    q = quality if isinstance(quality, Quality) else Quality.from_dict(quality)
    return q.speech_seconds if q.vad else None


def enrolled_seconds(seconds: Sequence[float] | np.ndarray, row: int) -> float | None:
    """The seconds of speech enrolled for gallery row `row` (`Gallery.seconds`), None when unknown (NaN)."""
    x = float(seconds[row])
    return x if np.isfinite(x) else None


def choose_threshold(threshold: float | None, g: gallery.Gallery | None, model_cal: Calibration | None, model_label: str,
                     point: str, cohort: bool) -> ThresholdChoice:
    """--threshold, else the gallery's fixed threshold, else its calibration, else `model_cal` (the calibration of
    the model named `model_label`). `point` picks the calibrated threshold ("eer", "min_dcf", "bayes", "far");
    `cohort`: the scores are AS-normed, so a threshold chosen on raw scores earns a warning."""
    if threshold is not None:
        return ThresholdChoice(finite_number(threshold, "--threshold", "the threshold"), "--threshold")
    choice = None
    if g is not None:
        # from the gallery as loaded: re-reading gallery.json could meet a newer version than the arrays
        where = f"{g.path}/gallery.json"
        fixed = g.meta.get("threshold")
        if fixed is not None:
            if not isinstance(fixed, dict):
                raise SpkidError(f"{where}: \"threshold\" must be a JSON object {{\"score\": ...}}, got {fixed!r}"[:300])
            score = finite_number(fixed.get("score"), where, "the stored threshold \"score\"")
            choice = ThresholdChoice(score, f"{where} (set by {fixed.get('source', 'enroll')})")
        elif g.meta.get("calibration") is not None:
            cal = Calibration.from_dict(g.meta["calibration"], where)
            choice = _from_calibration(cal, point, f"the calibration in {where}")
    if choice is None and model_cal is not None:
        choice = _from_calibration(model_cal, point, f"the calibration in model {model_label}")
    if choice is None:
        return ThresholdChoice(None, NO_THRESHOLD)
    if cohort:
        log.warning("%s was chosen on raw scores; with --cohort the scores are AS-normed (calibrate on AS-normed "
                    "scores, or pass --threshold)", choice.source)
    return choice


def _from_calibration(cal: Calibration, point: str, where: str) -> ThresholdChoice:
    kind = cal.kind(point)
    t = cal.thresholds[kind]
    n = cal.fitted_on
    trials = f", fitted on {n['n_target']} target / {n['n_nontarget']} non-target trials" if "n_target" in n else ""
    return ThresholdChoice(t.score, f"{where} ({kind} point{trials})", t.far, t.frr,
                           cal if cal.qmf is not None else None, kind)


def require_speech(name: str, quality: Quality | Mapping | None, min_s: float = MIN_SPEECH_S,
                   purpose: str = "identification", hint: str = "--min-speech") -> None:
    """The speech gate of every command that makes or stores a decision (verify, identify, enroll), for audio
    and embedding inputs alike: refuse an item whose VAD found less than `min_s` seconds of speech, or where the
    VAD is sure (`utterance.SURE_PROB`) of less than `SURE_SHARE` of what it found (music it half-hears as
    speech), with one line naming it and the seconds found. `quality`: a `utterance.Quality`, or its `to_dict()` record as an
    embedding stream carries it (`npyio.Embeddings.quality`); None (a stream without records) and items whose
    speech was not measured (--no-vad, feature files) pass: --no-vad is the explicit way to score everything."""
    if quality is None:
        return
    q = quality if isinstance(quality, Quality) else Quality.from_dict(quality, f"{name}: quality record")
    if not q.vad:
        return
    if q.no_speech or q.speech_seconds < min_s:
        found = "only 0.00 s of speech (the VAD found none)" if q.no_speech else f"only {q.speech_seconds:.2f} s of speech"
        raise SpkidError(f"{name}: {found} in {q.seconds:.2f} s of audio; {purpose} needs at least {min_s:g} s of "
                         f"speech ({hint}; --no-vad uses the whole file)")
    if q.sure_seconds is not None and q.sure_seconds < SURE_SHARE * q.speech_seconds:
        raise SpkidError(f"{name}: the VAD is unsure of the {q.speech_seconds:.2f} s it took for speech (sure of "
                         f"{q.sure_seconds:.2f} s: music or noise?); {purpose} needs speech (--no-vad uses the whole file)")


def quality_json(quality: Quality | Mapping | None) -> dict | None:
    """The quality record for JSON outputs (`Quality.to_dict()`), None when there is none."""
    if quality is None:
        return None
    return quality.to_dict() if isinstance(quality, Quality) else dict(quality)


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


def rank(g: gallery.Gallery, queries: np.ndarray, k: int, score_by: str, cohort: np.ndarray | None = None,
         exact: bool = False, nprobe: int | None = None, candidates: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k speaker rows and scores `(Q, k')` of unit query embeddings against the gallery, best first, k' =
    min(k, speakers); AS-norm against `cohort` when given.

    With a search index (`g.search_index`, and not `exact`) the index proposes `candidates` rows (default
    CANDIDATE_ROWS, and at least 32 per speaker asked for) from the `nprobe` cells nearest each query (default the
    index's), and only their speakers are scored, exactly as the full search scores them (the same scores up to
    float32 rounding, AS-norm included): the answers are the full search's whenever its best speakers are among the
    candidates (recall@1 ≥ 0.995 at the defaults in bench/identify.py).
    """
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if g.search_index is not None and not exact:
        return _rank_candidates(g, q, k, score_by, cohort, nprobe, candidates or CANDIDATE_ROWS)
    norm = None
    if cohort is not None:
        rm, rs = search.cohort_stats(g.embeddings, cohort, AS_NORM_TOP_N)
        norm = search.Norm(rm, rs, *cohort_stats(q, cohort, AS_NORM_TOP_N))
    if g.all_embeddings is None:
        return search.top_k(q, g.embeddings, k, norm=norm)
    if score_by == "best":
        return search.top_k_grouped(q, g.all_embeddings, g.all_index, len(g.speakers), k, norm=norm)
    return search.top_k(q, g.sums, k, row_scale=1.0 / np.maximum(np.asarray(g.counts), 1), norm=norm)


CANDIDATE_ROWS = 128  # rows the index proposes per query


def _rank_candidates(g: gallery.Gallery, q: np.ndarray, k: int, score_by: str, cohort: np.ndarray | None,
                     nprobe: int | None, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """`rank` through the search index: candidate speakers of each query, scored exactly; a query left with fewer
    than k' candidate speakers is searched in full."""
    k = min(k, len(g.speakers))
    cand = g.row_speakers(g.search_index.candidates(q, max(n_rows, 32 * k), nprobe))
    every = np.unique(cand[cand >= 0])
    if cohort is not None:
        rm, rs = search.cohort_stats(gallery.check_rows(g, "embeddings.npy", np.asarray(g.embeddings[every])), cohort,
                                     AS_NORM_TOP_N)
        qm, qs = cohort_stats(q, cohort, AS_NORM_TOP_N)
    out_i = np.zeros((len(q), k), np.int64)
    out_s = np.full((len(q), k), -np.inf, np.float32)
    for j, row in enumerate(cand):
        spk = np.unique(row[row >= 0])
        if len(spk) < k:
            idx, sc = rank(g, q[j : j + 1], k, score_by, cohort, exact=True)
            out_i[j], out_s[j] = idx[0], sc[0]
            continue
        s = _scores_of_speakers(g, spk, q[j], score_by)
        if cohort is not None:
            at = np.searchsorted(every, spk)
            norm = search.Norm(rm[at], rs[at], qm[j : j + 1], qs[j : j + 1])
            s = norm.apply(s[None, :], slice(None), slice(None))[0]
        best = np.argsort(-s, kind="stable")[:k]
        out_i[j], out_s[j] = spk[best], s[best]
    return out_i, out_s


def _scores_of_speakers(g: gallery.Gallery, spk: np.ndarray, q: np.ndarray, score_by: str) -> np.ndarray:
    """float32 scores of one unit query `(D,)` against the speaker rows `spk` (ascending), as `rank` scores them."""
    if g.all_embeddings is None:
        return gallery.check_rows(g, "embeddings.npy", np.asarray(g.embeddings)[spk] @ q)
    if score_by != "best":
        s = (np.asarray(g.sums)[spk] @ q) * (1.0 / np.maximum(np.asarray(g.counts)[spk], 1)).astype(np.float32)
        return gallery.check_rows(g, "sums.npy", s)
    first = g.first_rows()
    a, n = first[spk], first[spk + 1] - first[spk]
    starts = np.cumsum(n) - n
    rows = np.arange(n.sum()) - np.repeat(starts - a, n)
    return np.maximum.reduceat(gallery.check_rows(g, "all_embeddings.npy", np.asarray(g.all_embeddings)[rows] @ q), starts)


def rank_shards(shards: Sequence[gallery.Gallery], queries: np.ndarray, k: int, score_by: str,
                cohort: np.ndarray | None = None, exact: bool = False, nprobe: int | None = None,
                candidates: int | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """`rank` over several galleries of one model (shards of one gallery, each holding other speakers), the top k
    of each merged: (the shards' speakers one after the other, their rows `(Q, k')` in that list, scores). A
    speaker enrolled in two shards is listed once, with its best score (and a warning)."""
    if len(shards) == 1:
        idx, sc = rank(shards[0], queries, k, score_by, cohort, exact, nprobe, candidates)
        return shards[0].speakers, idx, sc
    speakers: list[str] = []
    parts_i, parts_s = [], []
    for g in shards:
        idx, sc = rank(g, queries, k, score_by, cohort, exact, nprobe, candidates)
        parts_i.append(idx + len(speakers))
        parts_s.append(sc)
        speakers += g.speakers
    all_i, all_s = np.concatenate(parts_i, axis=1), np.concatenate(parts_s, axis=1)
    order = np.argsort(-all_s, axis=1, kind="stable")
    all_i, all_s = np.take_along_axis(all_i, order, 1), np.take_along_axis(all_s, order, 1)
    keep, twice = [], set()
    for row in all_i:
        seen: set[str] = set()
        keep.append([n for n, i in enumerate(row) if not (speakers[i] in seen or seen.add(speakers[i]))])
        twice.update(speakers[i] for n, i in enumerate(row) if n not in keep[-1])
    if twice:
        log.warning("speaker %s enrolled in more than one shard (listed once, with the best score); shards should "
                    "hold other speakers (`spkid enroll --shard I/N` splits by speaker)",
                    ", ".join(repr(printable(n)) for n in sorted(twice)[:3]))
    k = min([k, *(len(r) for r in keep)])
    cols = np.array([r[:k] for r in keep], dtype=np.int64).reshape(len(all_i), k)
    return speakers, np.take_along_axis(all_i, cols, 1), np.take_along_axis(all_s, cols, 1)


def identify_records(keys: Sequence[str], labels: Sequence[str | None], speakers: Sequence[str], idx: np.ndarray,
                     scores: np.ndarray, top_k: int, threshold: ThresholdChoice | float | None,
                     quality: Sequence[dict | None] | None = None,
                     seconds: Sequence[float] | np.ndarray | None = None) -> list[IdRecord]:
    """One record per query from `rank`'s rows `idx` and `scores` `(Q, k)`: the `top_k` candidates, the margin of
    the best over the second best (None with one column), and the decision: the best speaker, or UNKNOWN when its
    score is below the threshold of that trial (`ThresholdChoice.at` the best speaker's enrolled speech,
    `seconds[row]`, and the clip's, `quality[i]`); every query gets its best speaker without one. A label is
    `enrolled` when it names one of `speakers`."""
    if not isinstance(threshold, ThresholdChoice):
        threshold = ThresholdChoice(threshold, "")
    known = set(speakers)
    out = []
    for i, key in enumerate(keys):
        names = [speakers[j] for j in idx[i]]
        score = float(scores[i, 0])
        margin = float(scores[i, 0] - scores[i, 1]) if idx.shape[1] > 1 else None
        test_s = speech_seconds(None if quality is None else quality[i])
        thr = threshold.at(None if seconds is None else enrolled_seconds(seconds, int(idx[i, 0])), test_s)
        decision = names[0] if thr.score is None or score >= thr.score else UNKNOWN
        k = min(top_k, len(names))
        top = [(n, float(s)) for n, s in zip(names[:k], scores[i, :k])]
        label = labels[i]
        out.append(IdRecord(key, label, top, label is not None and label in known, decision, thr.score, margin,
                            None if quality is None else quality[i], thr.source or None, _speech_json(thr.speech_s)))
    return out


@dataclass
class VerifyResult:
    """One verification trial: who against what, the score and the threshold it was decided with."""

    enroll: str
    test: str
    score: float
    threshold: ThresholdChoice
    as_norm: bool
    model_sha256: str
    quality: dict | None = None  # {"enroll": record or None (a gallery speaker), "test": record}: what the VAD found

    @property
    def accepted(self) -> bool | None:
        return None if self.threshold.score is None else self.score >= self.threshold.score

    @property
    def decision(self) -> str | None:
        return None if self.accepted is None else ("accept" if self.accepted else "reject")

    def to_text(self) -> str:
        """`SCORE<TAB>accept|reject`, or the score alone without a threshold."""
        return f"{self.score:.6f}\t{self.decision}" if self.decision else f"{self.score:.6f}"

    def to_json(self) -> str:
        return json.dumps({"enroll": self.enroll, "test": self.test, "score": self.score, "decision": self.decision,
                           **self.threshold.to_json(), "as_norm": self.as_norm, "model_sha256": self.model_sha256,
                           "quality": self.quality})


def pair_score(enroll: np.ndarray, test: np.ndarray, cohort: np.ndarray | None = None) -> float:
    """Cosine of two unit embeddings `(D,)`, AS-normed against `cohort` `(C, D)` when given."""
    score = float(enroll @ test)
    return score if cohort is None else as_norm_pair(score, enroll, test, cohort, AS_NORM_TOP_N)


def claim_score(g: gallery.Gallery, speaker: str, test: np.ndarray, score_by: str, cohort: np.ndarray | None = None) -> float:
    """Score of a unit embedding `(D,)` against the enrolled `speaker` of `g` (see `speaker_scores`), AS-normed
    against `cohort` when given."""
    row = g.index(speaker)
    score = float(speaker_scores(g, np.array([row]), test[None, :], score_by)[0])
    return score if cohort is None else as_norm_pair(score, np.asarray(g.embeddings[row]), test, cohort, AS_NORM_TOP_N)


def vectors_for(files: Sequence[str], keys: np.ndarray, values: np.ndarray, rooted: Callable[[str], str], source: str,
                trials_source: str, skipped: set[str] = frozenset()) -> dict[str, np.ndarray]:
    """The unit embedding of every trials file name, looked up among `keys` as written or as `rooted(name)`; every
    name must have one, unless it is among the `skipped` keys (`source`: the embeddings file, `trials_source`: the
    trials file, for the message)."""
    index = {str(k): i for i, k in enumerate(keys)}
    files = [f for f in files if f not in skipped and rooted(f) not in skipped]
    absent = [f for f in files if f not in index and rooted(f) not in index]
    if absent:
        raise SpkidError(f"{source}: no embedding for {len(absent)} of the {len(files)} files in {trials_source}, "
                         f"e.g. {absent[0]!r}; embed them first")
    return {f: unit(values[index.get(f, index.get(rooted(f)))], np.float32) for f in files}


def score_trials(t: Trials, vec: Mapping[str, np.ndarray], g: gallery.Gallery | None, score_by: str,
                 cohort: np.ndarray | None = None) -> tuple[list[int], np.ndarray]:
    """Scores of the trials whose embeddings are in `vec` (file name -> unit embedding); with `g`, the enroll
    side names speakers of the gallery. Returns the indices of the scored trials and their scores."""
    kept = [i for i in range(len(t.enroll)) if t.test[i] in vec and (g is not None or t.enroll[i] in vec)]
    if not kept:
        raise SpkidError("no trial left to score: every trial's files were skipped")
    test = np.stack([vec[t.test[i]] for i in kept])
    if g is not None:
        rows = np.array([g.index(t.enroll[i]) for i in kept])
        enroll_m = np.asarray(g.embeddings[rows])
        scores = speaker_scores(g, rows, test, score_by)
    else:
        enroll_m = np.stack([vec[t.enroll[i]] for i in kept])
        scores = np.einsum("nd,nd->n", enroll_m, test).astype(np.float64)
    if cohort is not None:
        scores = as_norm(scores, enroll_m, test, cohort, AS_NORM_TOP_N)
    return kept, scores


def name_windows(speakers: Sequence[str], idx: np.ndarray, scores: np.ndarray, threshold: ThresholdChoice | float | None,
                 seconds: Sequence[float] | np.ndarray | None = None,
                 window_speech: Sequence[float] | None = None) -> tuple[list[str | None], np.ndarray]:
    """Each window's speaker from `rank`'s best column (None when below the threshold of that trial:
    `ThresholdChoice.at` the speaker's enrolled speech, `seconds[row]`, and the window's, `window_speech[j]`) and
    its best score."""
    if not isinstance(threshold, ThresholdChoice):
        threshold = ThresholdChoice(threshold, "")
    best = scores[:, 0].astype(np.float64)
    named = []
    for j, (i, s) in enumerate(zip(idx[:, 0], best)):
        thr = threshold.at(None if seconds is None else enrolled_seconds(seconds, int(i)),
                           None if window_speech is None else float(window_speech[j]))
        named.append(speakers[i] if thr.score is None or s >= thr.score else None)
    return named, best

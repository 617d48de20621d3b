"""Text formats of scores, trials and identification results: parsed into arrays and records. Pure Python + numpy.

Text formats read here (UTF-8; fields split on tabs when the line has one, otherwise on any whitespace; blank
lines and lines starting with `#` are ignored; one input holds one format, mixed formats are refused):

* Scores with labels: `ENROLL TEST SCORE LABEL`, LABEL one of `target`, `nontarget`, `1`, `0`.
* Scores with labels and the seconds of speech of both sides (`spkid verify --trials` writes them when it knows
  them): `ENROLL TEST SCORE LABEL ENROLL_SPEECH TEST_SPEECH`, each a number >= 0 or `-` (unknown); what a
  duration-aware calibration (`spkid score --calibrate`) is fitted on. Other readers take the first 4 columns.
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
       "threshold": 0.35,                     optional: the threshold used for `decision` (number or null)
       "threshold_source": "...",             optional: where it came from (text)
       "threshold_speech_s": {"enroll": 41.2, "test": 0.62},
                                              optional: the seconds of speech of the speaker and the clip
                                              a duration-aware threshold was chosen for (absent: the
                                              threshold does not depend on them)
       "margin": 0.39}                        optional: best minus second-best score (number or null; not read)

  Other keys are allowed and ignored. `IdRecord(...).to_json()` writes exactly this line (`spkid identify --json`
  writes it so); `parse_identify` reads it. Several records of one key (one per shard of a gallery, from
  `identify -g SHARD` runs) are merged into one (`merge_shards`).

`ENROLL TEST SCORE` lines with the two speech columns are not read: durations come with labelled scores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from spkid.errors import SpkidError
from spkid.lists import plural, printable

LABELS = {"target": True, "nontarget": False, "1": True, "0": False}
FORMATS = {2: "SCORE LABEL", 3: "ENROLL TEST SCORE", 4: "ENROLL TEST SCORE LABEL",
           6: "ENROLL TEST SCORE LABEL ENROLL_SPEECH TEST_SPEECH"}
UNKNOWN = "unknown"


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


def _speech(word: str, where: str) -> float:
    """Seconds of speech of a score line's side: a number >= 0, or `-` (unknown: NaN)."""
    if word == "-":
        return math.nan
    try:
        x = float(word)
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and x >= 0):
        raise SpkidError(f"{where}: seconds of speech {word!r} must be a number >= 0, or - when unknown")
    return x


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
    until labelled (by the input or `join_trials`); `speech` `(n, 2)`: seconds of speech of the enroll and test
    sides (NaN: unknown), None when the input has no such columns."""

    score: np.ndarray
    label: np.ndarray | None = None
    enroll: list[str] | None = None
    test: list[str] | None = None
    source: str = "<stdin>"
    speech: np.ndarray | None = None

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
    """One clip of `spkid identify` output (schema in the module docstring); `top` is best first."""

    key: str
    label: str | None
    top: list[tuple[str, float]]
    enrolled: bool
    decision: str | None = None
    threshold: float | None = None
    margin: float | None = None
    quality: dict | None = None  # what the VAD found in the clip (`utterance.Quality.to_dict()`), when known
    threshold_source: str | None = None
    threshold_speech_s: dict | None = None  # a duration-aware threshold: {"enroll", "test"} seconds it was chosen for

    def to_json(self) -> str:
        """The record as one JSON line of the schema above (what `spkid identify --json` writes), no newline."""
        obj: dict = {"key": self.key, "label": self.label, "enrolled": self.enrolled}
        obj["top"] = [{"speaker": s, "score": float(v)} for s, v in self.top]
        if self.decision is not None:
            obj["decision"] = self.decision
        obj["threshold"] = self.threshold
        if self.threshold_source is not None:
            obj["threshold_source"] = self.threshold_source
        if self.threshold_speech_s is not None:
            obj["threshold_speech_s"] = self.threshold_speech_s
        obj["margin"] = self.margin
        if self.quality is not None:
            obj["quality"] = self.quality
        return json.dumps(obj, ensure_ascii=False)

    def to_text(self, candidates: bool = False) -> str:
        """`spkid identify`'s text line, no newline: KEY DECISION SCORE MARGIN BEST, tab-separated ("-" for no
        margin), then NAME:SCORE of every candidate in `top` when `candidates`."""
        best, score = self.top[0]
        margin = "-" if self.margin is None else f"{self.margin:.6f}"
        show = printable  # names and keys may hold ESC sequences or bidi overrides: shown, not obeyed
        cols = [show(self.key), "-" if self.decision is None else show(self.decision), f"{score:.6f}", margin, show(best)]
        if candidates:
            cols += [f"{show(n)}:{s:.6f}" for n, s in self.top]
        return "\t".join(cols)


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
            f"{source}:{first_n}: {plural(width, 'field')}; expected ENROLL TEST SCORE [LABEL [ENROLL_SPEECH TEST_SPEECH]] or SCORE LABEL (tab or space separated)"
        )
    scores: list[float] = []
    labels: list[bool] = []
    enroll: list[str] = []
    test: list[str] = []
    speech: list[tuple[float, float]] = []
    for n, line in rows:
        f = _fields(line)
        where = f"{source}:{n}"
        if f[0].startswith("{"):
            raise SpkidError(f"{where}: a JSON line among {FORMATS[width]} lines; mixed formats in one input are refused")
        if len(f) != width:
            raise SpkidError(
                f"{where}: {plural(len(f), 'field')}, but line {first_n} has {width} ({FORMATS[width]}); "
                "mixed formats in one input are refused"
            )
        if width == 2:
            scores.append(_score(f[0], where))
            labels.append(_label(f[1], where))
        else:
            enroll.append(f[0])
            test.append(f[1])
            scores.append(_score(f[2], where))
            if width >= 4:
                labels.append(_label(f[3], where))
            if width == 6:
                speech.append((_speech(f[4], where), _speech(f[5], where)))
    return ScoreList(
        score=np.array(scores, dtype=np.float64),
        label=np.array(labels, dtype=bool) if width != 3 else None,
        enroll=enroll if width != 2 else None,
        test=test if width != 2 else None,
        source=source,
        speech=np.array(speech, dtype=np.float64).reshape(-1, 2) if width == 6 else None,
    )


def format_scores(t: Trials, kept: Sequence[int], scores: Sequence[float], speech: np.ndarray | None = None) -> str:
    """`ENROLL<TAB>TEST<TAB>SCORE<TAB>target|nontarget` lines for the trials `kept` (indices into `t`), with
    `speech` `(len(kept), 2)` two more columns: the seconds of speech of the enroll and test sides (`-`: NaN)."""
    def sec(x: float) -> str:
        return f"{x:.3f}" if math.isfinite(x) else "-"

    more = [""] * len(kept) if speech is None else [f"\t{sec(e)}\t{sec(t_)}" for e, t_ in speech]
    return "".join(f"{t.enroll[i]}\t{t.test[i]}\t{s:.6f}\t{'target' if t.label[i] else 'nontarget'}{m}\n"
                   for i, s, m in zip(kept, scores, more))


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
            raise SpkidError(f"{where}: {plural(len(f), 'field')}; a trial is `1|0 ENROLL TEST` (VoxCeleb) or `ENROLL TEST target|nontarget` (Kaldi)")
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
        raise SpkidError(f"{source}: {plural(len(dups), 'duplicate trial')}, e.g. {_examples(dups)}; each (enroll, test) pair may appear once")
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
        raise SpkidError(f"{scores.source}: {plural(len(dups), 'duplicate score')}, e.g. {_examples(dups)}; each (enroll, test) pair may appear once")
    index = {key: i for i, key in enumerate(zip(scores.enroll, scores.test))}
    trial_keys = list(zip(trials.enroll, trials.test))
    missing = [k for k in trial_keys if k not in index]
    if missing:
        raise SpkidError(
            f"{len(missing)} of {plural(len(trial_keys), 'trial')} in {trials.source} {'has' if len(missing) == 1 else 'have'} "
            f"no score in {scores.source}, "
            f"e.g. {_examples(missing)}"
        )
    wanted = set(trial_keys)
    extra = [k for k in index if k not in wanted]
    if extra:
        are = "is not a trial" if len(extra) == 1 else "are not trials"
        raise SpkidError(f"{plural(len(extra), 'score')} in {scores.source} {are} in {trials.source}, e.g. {_examples(extra)}")
    order = np.array([index[k] for k in trial_keys], dtype=np.int64)
    if scores.label is not None:
        bad = np.flatnonzero(scores.label[order] != trials.label)
        if bad.size:
            keys = [trial_keys[i] for i in bad]
            have = "has a label that disagrees" if bad.size == 1 else "have labels that disagree"
            raise SpkidError(f"{plural(bad.size, 'score')} in {scores.source} {have} with {trials.source}, e.g. {_examples(keys)}")
    return ScoreList(
        score=scores.score[order],
        label=trials.label.copy(),
        enroll=list(trials.enroll),
        test=list(trials.test),
        source=scores.source,
        speech=None if scores.speech is None else scores.speech[order],
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
        thr_source, thr_speech = obj.get("threshold_source"), obj.get("threshold_speech_s")
        if thr_source is not None and not isinstance(thr_source, str):
            raise SpkidError(f"{where}: \"threshold_source\" must be text")
        if thr_speech is not None and not (isinstance(thr_speech, dict) and all(
                _is_number(thr_speech.get(k)) and 0 <= thr_speech[k] < math.inf for k in ("enroll", "test"))):
            raise SpkidError(f"{where}: \"threshold_speech_s\" must be {{\"enroll\": SECONDS, \"test\": SECONDS}} or absent")
        out.append(IdRecord(key, label, cands, enrolled, decision, None if thr is None else float(thr),
                            threshold_source=thr_source, threshold_speech_s=thr_speech))
    return merge_shards(out, source)


def merge_shards(records: list[IdRecord], source: str = "<stdin>") -> list[IdRecord]:
    """Records of one key merged into one, in first-seen order: the runs of `spkid identify` over the shards of a
    gallery (`cat shard*.jsonl`, or `sort -m` of key-sorted outputs) give each clip once per shard. The merged
    record lists every shard's candidates (a speaker once, at its best score; as many as the longest list had),
    is enrolled when any shard says so, and decides again on the best score with the threshold its shard's record
    used: the shards' common threshold, or with a duration-aware calibration (records with "threshold_speech_s")
    the threshold chosen for that clip and that speaker (shards whose thresholds differ otherwise are refused)."""
    by_key: dict[str, list[IdRecord]] = {}
    for r in records:
        by_key.setdefault(r.key, []).append(r)
    if len(by_key) == len(records):
        return records
    out = []
    for key, rs in by_key.items():
        if len(rs) == 1:
            out.append(rs[0])
            continue
        if len({r.label for r in rs}) > 1:
            raise SpkidError(f"{source}: clip {printable(key)!r} has different labels in its records; merging shards' "
                             "results needs the same clips with the same labels")
        per_speaker = any(r.threshold_speech_s is not None for r in rs)
        if (len({r.threshold for r in rs}) > 1 and not per_speaker) or len({r.decision is None for r in rs}) > 1:
            raise SpkidError(f"{source}: clip {printable(key)!r} was decided with different thresholds "
                             f"({', '.join(sorted({str(r.threshold) for r in rs}))}); shards of one gallery decide with one")
        best: dict[str, float] = {}
        for r in rs:
            for name, score in r.top:
                best[name] = max(score, best.get(name, -math.inf))
        top = sorted(best.items(), key=lambda c: -c[1])[: max(len(r.top) for r in rs)]
        # the record whose best candidate is the merged best: its threshold was chosen for that speaker
        own = next((r for r in rs if r.top[0][0] == top[0][0] and r.top[0][1] == top[0][1]), rs[0])
        thr, decided = own.threshold, own.decision is not None
        decision = (top[0][0] if thr is None or top[0][1] >= thr else UNKNOWN) if decided else None
        margin = top[0][1] - top[1][1] if len(top) > 1 else None
        out.append(IdRecord(key, rs[0].label, top, any(r.enrolled for r in rs), decision, thr, margin, own.quality,
                            own.threshold_source, own.threshold_speech_s))
    return out

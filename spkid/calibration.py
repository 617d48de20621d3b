"""Score calibration: a prior-weighted linear logistic regression from raw scores to natural-log likelihood ratios
(Brümmer's FoCal / BOSARIS) and the decision thresholds chosen with it. Pure numpy: no files, no torch.

`calibrate` fits it on labelled trials; `Calibration` is what `verify`/`identify` use. Given the seconds of speech of
both sides of every trial it also fits the duration-aware calibration (`Qmf`, the quality measure function
calibration of the NIST SRE systems): llr = a * score + b + c * q, q = `quality_measure`, with LLR thresholds, so each
trial's raw-score threshold follows its durations (`Calibration.trial_threshold`). It is stored in a gallery's
`gallery.json` (`spkid.gallery.save_calibration` / `load_calibration`) or in a model file's config
(`spkid.modelfile.save_calibrated` / `read_calibration`), as `Calibration.to_dict()`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from spkid import metrics
from spkid.errors import SpkidError


def fit_llr(target: np.ndarray, nontarget: np.ndarray, p_target: float = 0.5, reg: float = 1e-6) -> tuple[float, float]:
    """Prior-weighted linear logistic regression: llr = a * score + b (natural log), as BOSARIS `train_llr_fusion`.

    Minimises p_target * mean_tar log(1 + e^-(llr + L)) + (1 - p_target) * mean_non log(1 + e^(llr + L)), with
    L = logit(p_target), by Newton's method on standardised scores. `reg` (on the standardised slope) keeps perfectly
    separated scores finite. Returns (a, b).
    """
    tar, non = metrics._check(target, nontarget)
    (a,), b = _fit_linear(tar[:, None], non[:, None], p_target, reg)
    return a, b


def fit_qmf(target: np.ndarray, nontarget: np.ndarray, q_target: np.ndarray, q_nontarget: np.ndarray,
            p_target: float = 0.5, reg: float = 1e-6) -> tuple[float, float, float]:
    """`fit_llr` with a quality measure: llr = a * score + b + c * q, q one number per trial (`quality_measure`),
    the quality measure function (QMF) calibration of the NIST SRE systems (BOSARIS `train_llr_fusion` with the
    quality measure as a second input). Returns (a, b, c)."""
    tar, non = metrics._check(target, nontarget)
    q_t, q_n = np.asarray(q_target, np.float64).ravel(), np.asarray(q_nontarget, np.float64).ravel()
    if q_t.shape != tar.shape or q_n.shape != non.shape or not (np.isfinite(q_t).all() and np.isfinite(q_n).all()):
        raise SpkidError("quality measures: one finite number per trial is needed")
    (a, c), b = _fit_linear(np.stack([tar, q_t], 1), np.stack([non, q_n], 1), p_target, reg)
    return a, b, c


def _fit_linear(tar: np.ndarray, non: np.ndarray, p_target: float, reg: float) -> tuple[np.ndarray, float]:
    """Weights w `(k,)` and offset b of llr = x @ w + b on inputs `(n, k)` of target and non-target trials,
    minimising the prior-weighted cross-entropy of `fit_llr` by Newton's method on standardised inputs, `reg` on the
    standardised weights."""
    if not 0.0 < p_target < 1.0:
        raise SpkidError(f"p_target must be strictly between 0 and 1, got {p_target}")
    s = np.concatenate([tar, non])
    mean, sd = s.mean(0), s.std(0)
    if sd[0] == 0:
        raise SpkidError("all scores are equal; nothing to calibrate")
    if (sd == 0).any():
        raise SpkidError("a quality measure is the same for every trial; nothing to calibrate it with")
    x = (s - mean) / sd
    k = x.shape[1]
    y = np.concatenate([np.ones(len(tar)), np.zeros(len(non))])
    w = np.where(y == 1, p_target / len(tar), (1 - p_target) / len(non))
    sign = np.where(y == 1, -1.0, 1.0)  # loss = softplus(sign * z)
    logit = math.log(p_target) - math.log1p(-p_target)
    xb = np.concatenate([x, np.ones((len(x), 1))], 1)  # the offset is the last parameter, not regularised
    penalty = np.diag([reg] * k + [0.0])

    def loss(theta: np.ndarray) -> float:
        z = xb @ theta + logit
        return float(np.sum(w * np.logaddexp(0.0, sign * z)) + 0.5 * theta @ penalty @ theta)

    theta = np.zeros(k + 1)
    current = loss(theta)
    for _ in range(100):
        z = xb @ theta + logit
        p = 0.5 * (1 + np.tanh(z / 2))  # sigmoid(z), stable
        grad = xb.T @ (w * (p - y)) + penalty @ theta
        hess = (xb * (w * p * (1 - p))[:, None]).T @ xb + penalty
        step = np.linalg.solve(hess + 1e-12 * np.eye(k + 1), grad)
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
    weights = theta[:k] / sd
    return weights.astype(np.float64).tolist(), float(theta[k] - weights @ mean)


# The quality measure of a trial (QMF calibration): q = log(1 / (1/e + 1/t)), e and t the seconds of speech of
# its two sides, each clamped to [QMF_MIN_S, QMF_MAX_S]: the noise of an embedding shrinks about as 1/seconds, so the
# noise of a trial's score grows with 1/e + 1/t; 1 / (1/e + 1/t) is about the shorter side when the other is much
# longer (a clip against a speaker enrolled on a minute), and half a side when both are alike. The log, because going
# from 0.5 to 1 s changes an embedding about as much as going from 5 to 10 s. On the development suite's trials
# (recipes/devsuite.py; 2-fold cross-validation by speaker) it fitted better than the log of the shorter side, of the
# test side, 1/shorter and the shorter side itself (held-out Cllr 0.38 against 0.42, 0.38, 0.50, 0.52 for the bundled
# model; the same order for the others). Clamped: under QMF_MIN_S the VAD's seconds are mostly its padding; over
# QMF_MAX_S embeddings hardly improve, and a speaker enrolled on an hour must not make every trial look long.
QMF_MEASURE = "log_combined_speech_s"
QMF_MIN_S = 0.25
QMF_MAX_S = 30.0


def combined_seconds(enroll_s: np.ndarray | float, test_s: np.ndarray | float, min_s: float = QMF_MIN_S,
                     max_s: float = QMF_MAX_S) -> np.ndarray:
    """1 / (1/e + 1/t) of the two sides' seconds of speech, each clamped to [min_s, max_s]."""
    e = np.clip(np.asarray(enroll_s, np.float64), min_s, max_s)
    t = np.clip(np.asarray(test_s, np.float64), min_s, max_s)
    return e * t / (e + t)


def quality_measure(enroll_s: np.ndarray | float, test_s: np.ndarray | float, min_s: float = QMF_MIN_S,
                    max_s: float = QMF_MAX_S) -> np.ndarray:
    """q of trials whose sides hold `enroll_s` and `test_s` seconds of speech: log(`combined_seconds`)."""
    return np.log(combined_seconds(enroll_s, test_s, min_s, max_s))


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
    `qmf`: the duration-aware calibration fitted on the same trials when their speech seconds were known (`Qmf`);
    `trial_threshold` uses it for a trial whose two sides' speech is known, and a, b and `thresholds` otherwise.
    """

    a: float
    b: float
    p_target: float
    thresholds: dict[str, Threshold] = field(default_factory=dict)
    fitted_on: dict = field(default_factory=dict)
    time: str = ""
    qmf: Qmf | None = None

    def to_llr(self, scores: np.ndarray | float) -> np.ndarray:
        """Natural-log likelihood ratios for raw scores."""
        return self.a * np.asarray(scores, dtype=np.float64) + self.b

    def kind(self, kind: str = "eer") -> str:
        """The stored threshold kind `kind` names ("far" = the only far@ one); SpkidError when none is stored."""
        if kind == "far":
            fars = [k for k in self.thresholds if k.startswith("far@")]
            if len(fars) == 1:
                kind = fars[0]
        if kind not in self.thresholds:
            raise SpkidError(f"no {kind!r} threshold in the calibration; stored: {', '.join(self.thresholds) or 'none'}")
        return kind

    def threshold(self, kind: str = "eer") -> Threshold:
        """The stored threshold of `kind` ("eer", "min_dcf", "bayes", "far@0.01", ...; "far" = the only far@ one)."""
        return self.thresholds[self.kind(kind)]

    def trial_threshold(self, kind: str, enroll_s: float | None, test_s: float | None) -> tuple[Threshold, bool]:
        """The raw-score threshold of `kind` for one trial whose sides hold `enroll_s` and `test_s` seconds of speech
        (None: unknown), and whether it depends on them: the duration-aware threshold of `qmf` when both are known,
        else the duration-free `threshold(kind)`."""
        kind = self.kind(kind)
        if self.qmf is None or enroll_s is None or test_s is None:
            return self.thresholds[kind], False
        return self.qmf.score_threshold(kind, enroll_s, test_s), True

    def to_dict(self) -> dict:
        out = {
            "a": self.a,
            "b": self.b,
            "p_target": self.p_target,
            "thresholds": {k: {"score": t.score, "far": t.far, "frr": t.frr} for k, t in self.thresholds.items()},
            "fitted_on": self.fitted_on,
            "time": self.time,
        }
        if self.qmf is not None:
            out["qmf"] = self.qmf.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict, source: str = "calibration") -> Calibration:
        """A stored calibration, every number checked: finite, slope > 0, p_target and rates in [0, 1]; one
        SpkidError naming `source` otherwise."""
        if not isinstance(d, dict):
            raise SpkidError(f"{source}: the calibration must be a JSON object, got {type(d).__name__}")
        try:
            a = finite_number(d.get("a"), source, "malformed calibration: slope \"a\"")
            if not a > 0:
                raise SpkidError(f"{source}: malformed calibration: slope \"a\" must be positive, got {a!r}")
            thresholds = d.get("thresholds", {})
            if not isinstance(thresholds, dict):
                raise SpkidError(f"{source}: malformed calibration: \"thresholds\" must be a JSON object")
            return cls(
                a=a,
                b=finite_number(d.get("b"), source, "malformed calibration: offset \"b\""),
                p_target=finite_number(d.get("p_target"), source, "malformed calibration: \"p_target\"", 0.0, 1.0, open_=True),
                thresholds={str(k): _threshold(t, source, str(k)) for k, t in thresholds.items()},
                fitted_on=dict(d.get("fitted_on", {})),
                time=str(d.get("time", "")),
                qmf=None if d.get("qmf") is None else Qmf.from_dict(d["qmf"], source, set(thresholds)),
            )
        except (TypeError, ValueError) as e:
            raise SpkidError(f"{source}: malformed calibration ({type(e).__name__}: {e}); refit it with `spkid score --calibrate`") from None


@dataclass
class Qmf:
    """The duration-aware part of a Calibration (gallery.json / model config `"calibration": {"qmf": {...}}`):
    llr = a * score + b + c * q, q = `quality_measure` of the trial's two sides' speech seconds (each clamped to
    [min_s, max_s]), fitted by `fit_qmf` on the same trials as the duration-free a, b.

    `thresholds` maps the same kinds as the Calibration's to a Threshold whose `score` is the LLR threshold tau
    chosen on the fitted trials' llrs (far/frr: the rates there, over all fitted trials); the raw-score threshold
    of a trial is (tau - b - c * q) / a (`score_threshold`), so it moves with the trial's durations.
    """

    a: float
    b: float
    c: float
    thresholds: dict[str, Threshold] = field(default_factory=dict)
    measure: str = QMF_MEASURE
    min_s: float = QMF_MIN_S
    max_s: float = QMF_MAX_S
    fitted_on: dict = field(default_factory=dict)

    def q(self, enroll_s: np.ndarray | float, test_s: np.ndarray | float) -> np.ndarray:
        return quality_measure(enroll_s, test_s, self.min_s, self.max_s)

    def to_llr(self, scores: np.ndarray | float, enroll_s: np.ndarray | float, test_s: np.ndarray | float) -> np.ndarray:
        """Natural-log likelihood ratios of raw scores of trials with these speech seconds."""
        return self.a * np.asarray(scores, dtype=np.float64) + self.b + self.c * self.q(enroll_s, test_s)

    def score_threshold(self, kind: str, enroll_s: float, test_s: float) -> Threshold:
        """The raw-score threshold of `kind` for a trial with these speech seconds: (tau - b - c * q) / a."""
        t = self.thresholds[kind]
        return Threshold(float((t.score - self.b - self.c * self.q(enroll_s, test_s)) / self.a), t.far, t.frr)

    def to_dict(self) -> dict:
        return {"measure": self.measure, "min_s": self.min_s, "max_s": self.max_s, "a": self.a, "b": self.b,
                "c": self.c, "thresholds": {k: {"llr": t.score, "far": t.far, "frr": t.frr} for k, t in self.thresholds.items()},
                "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: object, source: str, kinds: set[str]) -> Qmf:
        """A stored duration-aware calibration, every number checked; its threshold kinds must be `kinds` (those of
        the duration-free part)."""
        what = "malformed calibration: \"qmf\""
        if not isinstance(d, dict):
            raise SpkidError(f"{source}: {what} must be a JSON object")
        if d.get("measure") != QMF_MEASURE:
            raise SpkidError(f"{source}: {what}: unknown quality measure {d.get('measure')!r} (this spkid knows "
                             f"{QMF_MEASURE!r}); refit it with `spkid score --calibrate`")
        a = finite_number(d.get("a"), source, f"{what} slope \"a\"")
        if not a > 0:
            raise SpkidError(f"{source}: {what} slope \"a\" must be positive, got {a!r}")
        min_s = finite_number(d.get("min_s"), source, f"{what} \"min_s\"", 0.0, math.inf, open_=True)
        max_s = finite_number(d.get("max_s"), source, f"{what} \"max_s\"", min_s, math.inf)
        raw = d.get("thresholds")
        if not isinstance(raw, dict) or set(raw) != kinds:
            raise SpkidError(f"{source}: {what} \"thresholds\" must hold the kinds of the calibration's: "
                             f"{', '.join(sorted(kinds)) or 'none'}")
        thresholds = {}
        for k, t in raw.items():
            if not isinstance(t, dict):
                raise SpkidError(f"{source}: {what} threshold {k!r} must be a JSON object")
            thresholds[k] = Threshold(finite_number(t.get("llr"), source, f"{what} threshold {k!r} llr"),
                                      finite_number(t.get("far"), source, f"{what} threshold {k!r} far", 0.0, 1.0),
                                      finite_number(t.get("frr"), source, f"{what} threshold {k!r} frr", 0.0, 1.0))
        return cls(a, finite_number(d.get("b"), source, f"{what} offset \"b\""),
                   finite_number(d.get("c"), source, f"{what} quality weight \"c\""), thresholds, QMF_MEASURE,
                   min_s, max_s, dict(d.get("fitted_on") or {}))


def _threshold(t: object, source: str, kind: str) -> Threshold:
    if not isinstance(t, dict):
        raise SpkidError(f"{source}: malformed calibration: threshold {kind!r} must be a JSON object")
    what = f"malformed calibration: threshold {kind!r}"
    return Threshold(finite_number(t.get("score"), source, f"{what} score"),
                     finite_number(t.get("far"), source, f"{what} far", 0.0, 1.0),
                     finite_number(t.get("frr"), source, f"{what} frr", 0.0, 1.0))


def finite_number(value: object, source: str, what: str = "threshold", low: float = -math.inf, high: float = math.inf,
                  open_: bool = False) -> float:
    """`value` as a float when it is a finite number (not a bool, not a string) in [low, high] ((low, high) with
    `open_`); else one SpkidError naming `source` and `what`. Every threshold goes through here, wherever it
    comes from (--threshold, gallery.json, a calibration in a gallery or a model)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        value = float(value)
        ok = low < value < high if open_ else low <= value <= high
    if not ok:
        span = "" if (low, high) == (-math.inf, math.inf) else f" in {'(' if open_ else '['}{low:g}, {high:g}{')' if open_ else ']'}"
        raise SpkidError(f"{source}: {what} must be a finite number{span}, got {value!r}")
    return value


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
    speech_target: np.ndarray | None = None,
    speech_nontarget: np.ndarray | None = None,
) -> Calibration:
    """Fit `fit_llr` at the effective prior of (p_target, c_miss, c_fa) and choose the thresholds (see
    `Calibration`) on these trials. The stored `p_target` is that effective prior.

    With `speech_target` and `speech_nontarget` (`(n, 2)` seconds of speech of the enrolment and test sides of
    each trial, all known), also fit the duration-aware `Qmf` on the same trials and choose its LLR thresholds on
    their duration-aware llrs; when every trial's durations clamp to one value there is nothing to fit it with,
    and `fitted_on["qmf"]` says so."""
    tar, non = metrics._check(target, nontarget)
    p_target = effective_prior(p_target, c_miss, c_fa)
    a, b = fit_llr(tar, non, p_target)
    if a <= 0:
        raise SpkidError(f"{source or 'scores'}: target scores are not higher than non-target scores (slope {a:.3g}); check the labels")
    thresholds, fitted_on = _thresholds(tar, non, (metrics.bayes_threshold(p_target) - b) / a, p_target, far)
    fitted_on = {"file": source, **fitted_on, **_figures(a * tar + b, a * non + b, p_target, metrics.min_cllr(tar, non))}
    qmf = None
    if speech_target is not None and speech_nontarget is not None:
        qmf, why = _fit_qmf(tar, non, np.asarray(speech_target, np.float64), np.asarray(speech_nontarget, np.float64),
                            p_target, far, source)
        if qmf is None:
            fitted_on["qmf"] = why
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return Calibration(a=a, b=b, p_target=p_target, thresholds=thresholds, fitted_on=fitted_on, time=stamp, qmf=qmf)


def _thresholds(tar: np.ndarray, non: np.ndarray, bayes: float, p_target: float, far: float) -> tuple[dict[str, Threshold], dict]:
    """Thresholds (eer, min_dcf, bayes, far@X) chosen on the scores `tar`, `non` (raw, or calibrated llrs), `bayes`
    being the Bayes threshold on that scale, and the counts, EER and minDCF of these trials."""
    op = metrics.operating_points(tar, non)

    def at(score: float) -> Threshold:
        fa, fr = metrics.far_frr(tar, non, score)
        return Threshold(float(score), fa, fr)

    e, e_thr = metrics._eer(op)
    dcf, dcf_thr = metrics._min_dcf(op, p_target, metrics.C_MISS, metrics.C_FA)
    thresholds = {
        "eer": at(e_thr),
        "min_dcf": at(dcf_thr),
        "bayes": at(bayes),
        f"far@{far:g}": at(metrics.threshold_at_far(tar, non, far)),
    }
    return thresholds, {"n_target": int(tar.size), "n_nontarget": int(non.size), "eer": e, "min_dcf": dcf}


def _figures(llr_t: np.ndarray, llr_n: np.ndarray, p_target: float, min_cllr: float) -> dict:
    return {"cllr": metrics.cllr(llr_t, llr_n), "min_cllr": min_cllr, "act_dcf": metrics.act_dcf(llr_t, llr_n, None, p_target)}


def _fit_qmf(tar: np.ndarray, non: np.ndarray, speech_t: np.ndarray, speech_n: np.ndarray, p_target: float,
             far: float, source: str) -> tuple[Qmf | None, str]:
    """The duration-aware calibration of these trials, or None and why not."""
    for name, sp, n in (("target", speech_t, tar.size), ("non-target", speech_n, non.size)):
        if sp.shape != (n, 2) or not (np.isfinite(sp).all() and (sp >= 0).all()):
            raise SpkidError(f"{source or 'scores'}: the {name} trials need both sides' speech seconds, finite and >= 0")
    q_t, q_n = quality_measure(*speech_t.T), quality_measure(*speech_n.T)
    q = np.concatenate([q_t, q_n])
    if np.ptp(q) < 1e-6:
        return None, (f"not fitted: every trial has the same speech seconds (sides clamped to [{QMF_MIN_S:g}, "
                      f"{QMF_MAX_S:g}] s); duration-aware calibration needs trials of several durations")
    a, b, c = fit_qmf(tar, non, q_t, q_n, p_target)
    if a <= 0:
        raise SpkidError(f"{source or 'scores'}: with durations, target scores are not higher than non-target scores (slope {a:.3g}); check the labels")
    llr_t, llr_n = a * tar + b + c * q_t, a * non + b + c * q_n
    thresholds, figures = _thresholds(llr_t, llr_n, metrics.bayes_threshold(p_target), p_target, far)
    figures |= _figures(llr_t, llr_n, p_target, metrics.min_cllr(llr_t, llr_n))
    combined = np.exp(q)
    figures["combined_s"] = {"min": float(combined.min()), "median": float(np.median(combined)), "max": float(combined.max())}
    return Qmf(a, b, c, thresholds, fitted_on=figures), ""

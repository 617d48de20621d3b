"""Score calibration: a prior-weighted linear logistic regression from raw scores to natural-log likelihood ratios
(Brümmer's FoCal / BOSARIS) and the decision thresholds chosen with it. Pure numpy: no files, no torch.

`calibrate` fits it on labelled trials; `Calibration` is what `verify`/`identify` use. It is stored in a gallery's
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
            )
        except (TypeError, ValueError) as e:
            raise SpkidError(f"{source}: malformed calibration ({type(e).__name__}: {e}); refit it with `spkid score --calibrate`") from None


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

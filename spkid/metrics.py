"""Verification and identification metrics, pure numpy. One job at about 450 lines: EER, DCF, Cllr, the
bootstrap and the identification rates all read the same sorted operating points and checks below, which a split
would scatter.

Conventions shared by every function here:

* Scores are 1-D float arrays, higher = more alike. `target` holds the scores of same-speaker trials,
  `nontarget` those of different-speaker trials. Both must be non-empty and finite (`SpkidError` otherwise).
* A trial is accepted when `score >= threshold`. So at threshold t:
  p_miss(t) = FRR(t) = #(target < t) / N_target and p_fa(t) = FAR(t) = #(nontarget >= t) / N_nontarget.
* The operating points are the thresholds t = every distinct score (ties form one point, so tied scores are
  always decided together) plus one threshold just above the highest score (everything rejected).
  These are exactly the points of scikit-learn's `roc_curve(..., drop_intermediate=False)`.
* Error rates are fractions in [0, 1], never percent.

Detection cost (NIST SRE / Kaldi `compute_min_dcf.py` / WeSpeaker / SpeechBrain / 3D-Speaker):
C_det(t) = c_miss * p_target * p_miss(t) + c_fa * (1 - p_target) * p_fa(t), normalised by
C_default = min(c_miss * p_target, c_fa * (1 - p_target)), the cost of always accepting or always rejecting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from spkid.errors import SpkidError

log = logging.getLogger(__name__)

P_TARGET = 0.01
C_MISS = 1.0
C_FA = 1.0


def _check(target: np.ndarray, nontarget: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tar = np.asarray(target, dtype=np.float64).ravel()
    non = np.asarray(nontarget, dtype=np.float64).ravel()
    if tar.size == 0 or non.size == 0:
        raise SpkidError(
            f"need both target and non-target trials, got {tar.size} target and {non.size} non-target; "
            "check the labels (target|nontarget|1|0)"
        )
    if not (np.isfinite(tar).all() and np.isfinite(non).all()):
        raise SpkidError("scores must be finite (found NaN or Inf)")
    return tar, non


def _check_costs(p_target: float, c_miss: float, c_fa: float) -> None:
    if not 0.0 < p_target < 1.0:
        raise SpkidError(f"p_target must be strictly between 0 and 1, got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise SpkidError(f"c_miss and c_fa must be positive, got c_miss={c_miss}, c_fa={c_fa}")


@dataclass(frozen=True)
class OperatingPoints:
    """The ROC/DET curve: `thresholds` ascending (N+1,), `p_miss` non-decreasing, `p_fa` non-increasing.

    Point 0 is the lowest score (everything accepted: p_miss 0, p_fa 1); the last point is just above the
    highest score (everything rejected: p_miss 1, p_fa 0).
    """

    thresholds: np.ndarray
    p_miss: np.ndarray
    p_fa: np.ndarray


@dataclass(frozen=True)
class _Sorted:
    """Trials sorted once by score: tie groups and where each class's trials landed, for weighted recounts."""

    values: np.ndarray  # (G,) distinct scores, ascending
    first: np.ndarray  # (G,) index in the sorted order where each tie group starts
    pos_tar: np.ndarray  # (N_target,) sorted positions of the target trials
    pos_non: np.ndarray  # (N_nontarget,)
    size: int


def _sort(tar: np.ndarray, non: np.ndarray) -> _Sorted:
    scores = np.concatenate([tar, non])
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    first = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return _Sorted(s[first], first, rank[: tar.size], rank[tar.size :], order.size)


def _counts(srt: _Sorted, w_tar: np.ndarray, w_non: np.ndarray) -> tuple[OperatingPoints, float]:
    """Operating points and AUC when the i-th sorted trial counts w_tar[i] times as a target and w_non[i] as a
    non-target (1 and 0 for the data itself; bootstrap counts for a resample). O(N), no sorting."""
    ct = np.r_[0.0, np.cumsum(w_tar)]
    cn = np.r_[0.0, np.cumsum(w_non)]
    n_tar, n_non = ct[-1], cn[-1]
    tar_below, non_below = ct[srt.first], cn[srt.first]
    tar_in = np.diff(np.r_[tar_below, n_tar])
    non_in = np.diff(np.r_[non_below, n_non])
    op = OperatingPoints(
        thresholds=np.r_[srt.values, np.nextafter(srt.values[-1], np.inf)],
        p_miss=np.r_[tar_below / n_tar, 1.0],
        p_fa=np.r_[(n_non - non_below) / n_non, 0.0],
    )
    area = float(np.sum(tar_in * (non_below + 0.5 * non_in)) / (n_tar * n_non))
    return op, area


def _unit_weights(srt: _Sorted) -> tuple[np.ndarray, np.ndarray]:
    w_tar = np.zeros(srt.size)
    w_tar[srt.pos_tar] = 1.0
    w_non = np.zeros(srt.size)
    w_non[srt.pos_non] = 1.0
    return w_tar, w_non


def operating_points(target: np.ndarray, nontarget: np.ndarray) -> OperatingPoints:
    """Error rates at every distinct score (accept if score >= t), plus the reject-all point. O(N log N)."""
    tar, non = _check(target, nontarget)
    srt = _sort(tar, non)
    return _counts(srt, *_unit_weights(srt))[0]


def _eer(op: OperatingPoints) -> tuple[float, float]:
    d = op.p_fa - op.p_miss  # non-increasing, +1 at point 0 and -1 at the last point
    i = int(np.argmax(d <= 0))
    alpha = d[i - 1] / (d[i - 1] - d[i])
    eer = op.p_miss[i - 1] + alpha * (op.p_miss[i] - op.p_miss[i - 1])
    thr = op.thresholds[i - 1] + alpha * (op.thresholds[i] - op.thresholds[i - 1])
    return float(eer), float(thr)


def eer(target: np.ndarray, nontarget: np.ndarray) -> tuple[float, float]:
    """Equal error rate and its threshold, exact, from the ROC.

    The ROC's operating points (see the module docstring: one per distinct score, so tied scores move together and
    a tie between a target and a non-target gives a diagonal step) are joined by straight lines, which is what
    a randomised choice between two neighbouring thresholds achieves. The EER is where this piecewise-linear
    curve crosses p_miss = p_fa, found by linear interpolation on the one segment where p_fa - p_miss changes
    sign; it is exact (no grid, no optimiser) and lies between the two step values Kaldi's `compute-eer` could report.
    The threshold is interpolated with the same weight between the segment's two thresholds, so it lies between two
    neighbouring observed scores; the measured FAR/FRR at it are those of the segment's upper end (`far_frr`).

    Returns (eer, threshold); eer is a fraction.
    """
    return _eer(operating_points(target, nontarget))


def _min_dcf(op: OperatingPoints, p_target: float, c_miss: float, c_fa: float) -> tuple[float, float]:
    cost = c_miss * p_target * op.p_miss + c_fa * (1 - p_target) * op.p_fa
    i = int(np.argmin(cost))
    return float(cost[i] / min(c_miss * p_target, c_fa * (1 - p_target))), float(op.thresholds[i])


def min_dcf(
    target: np.ndarray, nontarget: np.ndarray, p_target: float = P_TARGET, c_miss: float = C_MISS, c_fa: float = C_FA
) -> tuple[float, float]:
    """Minimum normalised detection cost over all thresholds, and the threshold reaching it.

    The cost is linear along a ROC segment, so the minimum over the interpolated curve is at an operating point;
    no interpolation is needed. Ties in the cost go to the lowest threshold. Default p_target = 0.01, c_miss =
    c_fa = 1 (the convention of Kaldi's `compute_min_dcf.py`, WeSpeaker, SpeechBrain and 3D-Speaker).
    """
    _check_costs(p_target, c_miss, c_fa)
    return _min_dcf(operating_points(target, nontarget), p_target, c_miss, c_fa)


def bayes_threshold(p_target: float = P_TARGET, c_miss: float = C_MISS, c_fa: float = C_FA) -> float:
    """The LLR threshold that minimises the expected cost: log(c_fa (1 - p_target) / (c_miss p_target))."""
    _check_costs(p_target, c_miss, c_fa)
    return float(np.log(c_fa * (1 - p_target)) - np.log(c_miss * p_target))


def far_frr(target: np.ndarray, nontarget: np.ndarray, threshold: float) -> tuple[float, float]:
    """(FAR, FRR) at `threshold`, accepting score >= threshold."""
    tar, non = _check(target, nontarget)
    return float(np.mean(non >= threshold)), float(np.mean(tar < threshold))


def act_dcf(
    target: np.ndarray,
    nontarget: np.ndarray,
    threshold: float | None = None,
    p_target: float = P_TARGET,
    c_miss: float = C_MISS,
    c_fa: float = C_FA,
) -> float:
    """Actual normalised detection cost at a fixed threshold.

    With `threshold=None` the scores are taken as log-likelihood ratios and the Bayes threshold
    `bayes_threshold(p_target, c_miss, c_fa)` is used (BOSARIS `actDCF`).
    """
    _check_costs(p_target, c_miss, c_fa)
    if threshold is None:
        threshold = bayes_threshold(p_target, c_miss, c_fa)
    far, frr = far_frr(target, nontarget, threshold)
    return float((c_miss * p_target * frr + c_fa * (1 - p_target) * far) / min(c_miss * p_target, c_fa * (1 - p_target)))


def auc(target: np.ndarray, nontarget: np.ndarray) -> float:
    """Area under the ROC: P(target score > non-target score) + 0.5 P(equal) (Mann-Whitney; equals the
    trapezoidal area under `roc_curve`, i.e. scikit-learn's `roc_auc_score`)."""
    tar, non = _check(target, nontarget)
    srt = _sort(tar, non)
    return _counts(srt, *_unit_weights(srt))[1]


def threshold_at_far(target: np.ndarray, nontarget: np.ndarray, far: float) -> float:
    """The lowest threshold whose measured FAR is <= `far` (so the FRR is as low as that allows).

    Any threshold in (k-th highest non-target score, next observed score] makes the same decisions on these
    trials; the observed score at the top of that interval is returned (an observed score, conservative for new
    data). When every trial would have to be rejected, a value just above the highest score is returned.
    """
    tar, non = _check(target, nontarget)
    if not 0.0 <= far <= 1.0:
        raise SpkidError(f"target FAR must be between 0 and 1, got {far}")
    allowed = int(np.floor(far * non.size + 1e-9))
    if allowed >= non.size:
        return float(min(tar.min(), non.min()))
    bar = np.sort(non)[::-1][allowed]  # the highest non-target score that must be rejected
    scores = np.concatenate([tar, non])
    above = scores[scores > bar]
    return float(above.min()) if above.size else float(np.nextafter(bar, np.inf))


def cllr(target_llr: np.ndarray, nontarget_llr: np.ndarray) -> float:
    """Log-likelihood-ratio cost (Brümmer & du Preez 2006) in bits: 0 is perfect, 1 is an uninformative system.

    Cllr = 1/(2 ln 2) * (mean log(1 + exp(-llr_target)) + mean log(1 + exp(llr_nontarget))).
    Only meaningful when the scores are natural-log likelihood ratios (calibrated).
    """
    return _cllr(*_check(target_llr, nontarget_llr))


def _cllr(tar: np.ndarray, non: np.ndarray) -> float:
    with np.errstate(over="ignore"):  # +-inf LLRs from PAV are fine: log(1 + e^-inf) = 0
        return float((np.mean(np.logaddexp(0.0, -tar)) + np.mean(np.logaddexp(0.0, non))) / (2 * np.log(2)))


def pav_llr(target: np.ndarray, nontarget: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optimal monotone score-to-LLR map on these trials, by pool-adjacent-violators (BOSARIS `opt_loglr`).

    Tied scores are pooled first, so they get one LLR. The PAV posterior is turned into an LLR by subtracting
    the empirical prior log-odds log(N_target / N_nontarget). Returns the LLRs of (target, nontarget), in input
    order; values may be +-inf at the extremes.
    """
    tar, non = _check(target, nontarget)
    scores = np.concatenate([tar, non])
    is_tar = np.concatenate([np.ones(tar.size), np.zeros(non.size)])
    uniq, inverse = np.unique(scores, return_inverse=True)
    n = np.bincount(inverse).astype(np.float64)
    k = np.bincount(inverse, weights=is_tar)
    # pool-adjacent-violators on blocks (sum of targets, count), so the fitted posterior is non-decreasing
    sums: list[float] = []
    counts: list[float] = []
    widths: list[int] = []
    for ki, ni in zip(k.tolist(), n.tolist()):
        sums.append(ki)
        counts.append(ni)
        widths.append(1)
        while len(sums) > 1 and sums[-2] * counts[-1] >= sums[-1] * counts[-2]:
            s, c, w = sums.pop(), counts.pop(), widths.pop()
            sums[-1] += s
            counts[-1] += c
            widths[-1] += w
    posterior = np.repeat(np.array(sums) / np.array(counts), widths)
    with np.errstate(divide="ignore"):
        llr = np.log(posterior) - np.log1p(-posterior) - (np.log(tar.size) - np.log(non.size))
    out = llr[inverse]
    return out[: tar.size], out[tar.size :]


def min_cllr(target: np.ndarray, nontarget: np.ndarray) -> float:
    """Cllr after the optimal monotone calibration (PAV): the discrimination part of Cllr, in bits."""
    return _cllr(*pav_llr(target, nontarget))


def bootstrap_ci(
    stat: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    target: np.ndarray,
    nontarget: np.ndarray,
    n: int,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals over trials.

    Each of the `n` replicates resamples the target and the non-target trials with replacement, separately,
    keeping both counts (a stratified bootstrap); `stat(target, nontarget)` returns a dict of named values.
    Trials are treated as independent, which ignores that trials share speakers, so the intervals are optimistic.
    Seeded (`numpy.random.default_rng(seed)`): the same seed gives the same intervals.
    """
    tar, non = _check(target, nontarget)
    if n < 1:
        raise SpkidError(f"the number of bootstrap replicates must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n):
        values = stat(tar[rng.integers(0, tar.size, tar.size)], non[rng.integers(0, non.size, non.size)])
        for name, v in values.items():
            draws.setdefault(name, []).append(v)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {name: (float(np.percentile(v, lo)), float(np.percentile(v, hi))) for name, v in draws.items()}


@dataclass(frozen=True)
class VerificationConfig:
    """What `verification_report` computes: costs for DCF, the FAR target, an optional fixed threshold."""

    p_target: float = P_TARGET
    c_miss: float = C_MISS
    c_fa: float = C_FA
    far: float = 0.01
    threshold: float | None = None
    llr: bool = False
    bootstrap: int = 0
    seed: int = 0
    level: float = 0.95


def _core_stats(srt: _Sorted, scores: np.ndarray, w_tar: np.ndarray, w_non: np.ndarray, cfg: VerificationConfig) -> dict[str, float]:
    """The bootstrapped metrics for one weighting of the sorted trials (`scores` in sorted order)."""
    op, area = _counts(srt, w_tar, w_non)
    out = {"eer": _eer(op)[0], "min_dcf": _min_dcf(op, cfg.p_target, cfg.c_miss, cfg.c_fa)[0], "auc": area}
    if cfg.llr:
        tar_cost = np.logaddexp(0.0, -scores)
        non_cost = np.logaddexp(0.0, scores)
        out["cllr"] = float((w_tar @ tar_cost / w_tar.sum() + w_non @ non_cost / w_non.sum()) / (2 * np.log(2)))
    threshold = bayes_threshold(cfg.p_target, cfg.c_miss, cfg.c_fa) if cfg.llr else cfg.threshold
    if threshold is not None:
        frr = w_tar[scores < threshold].sum() / w_tar.sum()
        far = w_non[scores >= threshold].sum() / w_non.sum()
        c_def = min(cfg.c_miss * cfg.p_target, cfg.c_fa * (1 - cfg.p_target))
        out["act_dcf"] = float((cfg.c_miss * cfg.p_target * frr + cfg.c_fa * (1 - cfg.p_target) * far) / c_def)
    return out


def _bootstrap_verification(tar: np.ndarray, non: np.ndarray, cfg: VerificationConfig) -> dict[str, tuple[float, float]]:
    """`bootstrap_ci` of `_core_stats`, fast: the trials are sorted once and each replicate only recounts them.

    The replicates are the same draws as `bootstrap_ci` makes (same seed, same resampled trials)."""
    if cfg.bootstrap < 1:
        raise SpkidError(f"the number of bootstrap replicates must be >= 1, got {cfg.bootstrap}")
    srt = _sort(tar, non)
    scores = np.repeat(srt.values, np.diff(np.r_[srt.first, srt.size]))
    rng = np.random.default_rng(cfg.seed)
    draws: dict[str, list[float]] = {}
    for _ in range(cfg.bootstrap):
        w_tar = np.bincount(srt.pos_tar[rng.integers(0, tar.size, tar.size)], minlength=srt.size).astype(np.float64)
        w_non = np.bincount(srt.pos_non[rng.integers(0, non.size, non.size)], minlength=srt.size).astype(np.float64)
        for name, v in _core_stats(srt, scores, w_tar, w_non, cfg).items():
            draws.setdefault(name, []).append(v)
    lo, hi = (1 - cfg.level) / 2 * 100, (1 + cfg.level) / 2 * 100
    return {name: (float(np.percentile(v, lo)), float(np.percentile(v, hi))) for name, v in draws.items()}


def verification_report(target: np.ndarray, nontarget: np.ndarray, cfg: VerificationConfig = VerificationConfig()) -> dict:
    """Every verification metric in one dict (stable key order, JSON-ready).

    Keys: n_target, n_nontarget, eer, eer_threshold, min_dcf, min_dcf_threshold, p_target, c_miss, c_fa, auc,
    min_cllr, far_target, threshold_at_far, frr_at_far; with `llr`: cllr, bayes_threshold, act_dcf (at the Bayes
    threshold); with `threshold`: threshold, far, frr and (without `llr`) act_dcf at it; with `bootstrap` > 0:
    "ci" = {metric: [low, high]} for eer, min_dcf, auc (and cllr, act_dcf) plus "ci_level", "bootstrap", "seed".
    """
    tar, non = _check(target, nontarget)
    _check_costs(cfg.p_target, cfg.c_miss, cfg.c_fa)
    srt = _sort(tar, non)
    op, area = _counts(srt, *_unit_weights(srt))
    e, e_thr = _eer(op)
    d, d_thr = _min_dcf(op, cfg.p_target, cfg.c_miss, cfg.c_fa)
    far_thr = threshold_at_far(tar, non, cfg.far)
    rep: dict = {
        "n_target": int(tar.size),
        "n_nontarget": int(non.size),
        "eer": e,
        "eer_threshold": e_thr,
        "min_dcf": d,
        "min_dcf_threshold": d_thr,
        "p_target": cfg.p_target,
        "c_miss": cfg.c_miss,
        "c_fa": cfg.c_fa,
        "auc": area,
        "min_cllr": min_cllr(tar, non),
        "far_target": cfg.far,
        "threshold_at_far": far_thr,
        "frr_at_far": far_frr(tar, non, far_thr)[1],
    }
    if cfg.llr:
        rep["cllr"] = cllr(tar, non)
        rep["bayes_threshold"] = bayes_threshold(cfg.p_target, cfg.c_miss, cfg.c_fa)
        rep["act_dcf"] = act_dcf(tar, non, None, cfg.p_target, cfg.c_miss, cfg.c_fa)
    if cfg.threshold is not None:
        rep["threshold"] = float(cfg.threshold)
        rep["far"], rep["frr"] = far_frr(tar, non, cfg.threshold)
        if not cfg.llr:
            rep["act_dcf"] = act_dcf(tar, non, cfg.threshold, cfg.p_target, cfg.c_miss, cfg.c_fa)
    if cfg.bootstrap > 0:
        ci = _bootstrap_verification(tar, non, cfg)
        rep["ci_level"] = cfg.level
        rep["bootstrap"] = cfg.bootstrap
        rep["seed"] = cfg.seed
        rep["ci"] = {k: list(v) for k, v in ci.items()}
    return rep


def top_k_accuracy(true_rank: np.ndarray, k: int) -> float:
    """Fraction of probes whose true speaker is among the first k candidates.

    `true_rank` (N,) int: 0-based position of the true speaker in each probe's ranked list, -1 when absent.
    """
    r = np.asarray(true_rank)
    if r.size == 0:
        raise SpkidError("no probe of an enrolled speaker to compute identification accuracy on")
    if k < 1:
        raise SpkidError(f"k must be >= 1, got {k}")
    return float(np.mean((r >= 0) & (r < k)))


def dir_at_far(
    true_rank: np.ndarray, top_score_known: np.ndarray, top_score_unknown: np.ndarray, far: float
) -> tuple[float, float]:
    """Open-set detection-and-identification rate (rank 1) at a false-alarm rate (Phillips et al., FRVT; ISO 19795).

    `true_rank` and `top_score_known` (N,) are for probes of enrolled speakers: the rank of the true speaker and
    the best candidate's score. `top_score_unknown` (M,) are the best candidate's scores for probes of speakers
    not enrolled. The threshold is the lowest one at which at most `far` of the unknown probes are accepted
    (`threshold_at_far`); DIR is the fraction of known probes whose true speaker is first and scores >= it.
    Returns (dir, threshold).
    """
    rank = np.asarray(true_rank)
    known = np.asarray(top_score_known, dtype=np.float64)
    unknown = np.asarray(top_score_unknown, dtype=np.float64)
    thr = threshold_at_far(known, unknown, far)
    return float(np.mean((rank == 0) & (known >= thr))), thr


def confusion_matrix(true: Sequence[str], predicted: Sequence[str]) -> tuple[list[str], list[str], np.ndarray]:
    """Counts of (true, predicted) label pairs: (row labels, column labels, int64 (R, C)), labels sorted."""
    rows = sorted(set(true))
    cols = sorted(set(predicted))
    ri = {r: i for i, r in enumerate(rows)}
    ci = {c: i for i, c in enumerate(cols)}
    m = np.zeros((len(rows), len(cols)), dtype=np.int64)
    for t, p in zip(true, predicted):
        m[ri[t], ci[p]] += 1
    return rows, cols, m

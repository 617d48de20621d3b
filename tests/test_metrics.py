"""spkid.metrics: known answers on hand-made scores, and agreement with scikit-learn and a brute-force sweep."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score, roc_curve

from spkid import metrics
from spkid.errors import SpkidError


def test_eer_known_answer_at_an_operating_point():
    tar = np.array([0.4, 0.6, 0.8, 0.9])
    non = np.array([0.1, 0.3, 0.5, 0.7])
    # accept >= 0.6: misses 0.4 (1/4), false alarms 0.7 (1/4)
    assert metrics.eer(tar, non) == pytest.approx((0.25, 0.6))
    assert metrics.auc(tar, non) == pytest.approx(13 / 16)
    assert metrics.far_frr(tar, non, 0.6) == (0.25, 0.25)


def test_eer_interpolates_between_operating_points():
    tar = np.array([0.2, 0.9, 0.95])
    non = np.array([0.1, 0.5])
    # t=0.5: p_miss 1/3, p_fa 1/2; t=0.9: p_miss 1/3, p_fa 0 -> the segment crosses p_miss = p_fa a third of the way
    e, thr = metrics.eer(tar, non)
    assert e == pytest.approx(1 / 3)
    assert thr == pytest.approx(0.5 + 0.4 / 3)


def test_tied_target_and_nontarget_move_together():
    e, thr = metrics.eer(np.array([0.5]), np.array([0.5]))
    assert e == pytest.approx(0.5) and thr == pytest.approx(0.5)
    assert metrics.auc(np.array([0.5]), np.array([0.5])) == 0.5
    assert metrics.eer(np.array([1.0, 2.0]), np.array([0.0, 0.5]))[0] == 0.0


def test_min_dcf_known_answers():
    tar = np.array([0.4, 0.6, 0.8, 0.9])
    non = np.array([0.1, 0.3, 0.5, 0.7])
    # p_target 0.5: normalised cost = p_miss + p_fa, smallest (0.5) first reached at t = 0.4
    assert metrics.min_dcf(tar, non, p_target=0.5) == pytest.approx((0.5, 0.4))
    # p_target 0.01: C_default = 0.01 (reject all); t=0.8 gives 0.01*0.5 + 0.99*0 -> 0.5 normalised
    assert metrics.min_dcf(tar, non, p_target=0.01) == pytest.approx((0.5, 0.8))
    # a useless system costs exactly C_default: normalised 1
    rng = np.random.default_rng(0)
    d, _ = metrics.min_dcf(np.zeros(5), np.zeros(7))
    assert d == pytest.approx(1.0)
    assert metrics.min_dcf(rng.normal(size=300), rng.normal(size=300))[0] <= 1.0


def test_act_dcf_and_bayes_threshold():
    assert metrics.bayes_threshold(0.01) == pytest.approx(np.log(99))
    assert metrics.bayes_threshold(0.5) == 0.0
    assert metrics.bayes_threshold(0.5, c_miss=1, c_fa=10) == pytest.approx(np.log(10))
    tar = np.array([-1.0, 1.0, 3.0, 5.0])
    non = np.array([-3.0, -1.0, 0.5, 6.0])
    # LLRs at prior 0.5: threshold 0 -> FRR 1/4, FAR 2/4, normalised by 0.5 -> 0.75
    assert metrics.act_dcf(tar, non, p_target=0.5) == pytest.approx(0.75)
    assert metrics.act_dcf(tar, non, threshold=5.5, p_target=0.5) == pytest.approx(2 * (0.5 * 1.0 + 0.5 * 0.25))  # FRR 1, FAR 1/4


def test_threshold_at_far():
    non = np.arange(100) / 100
    tar = np.array([0.945, 0.97, 0.2])
    t = metrics.threshold_at_far(tar, non, 0.05)
    # at most 5 of 100 non-targets (0.95..0.99) may pass; 0.94 must not; lowest observed score above 0.94: 0.945
    assert t == 0.945
    assert metrics.far_frr(tar, non, t) == (0.05, pytest.approx(1 / 3))
    assert metrics.far_frr(tar, non, metrics.threshold_at_far(tar, non, 0.0))[0] == 0.0
    assert metrics.threshold_at_far(tar, non, 1.0) == 0.0


def test_cllr_known_answers():
    assert metrics.cllr(np.zeros(3), np.zeros(4)) == pytest.approx(1.0)
    assert metrics.cllr(np.full(3, 50.0), np.full(4, -50.0)) == pytest.approx(0.0, abs=1e-20)
    # one target at llr log(3): -log2(3/4); one non-target at llr -log(3): -log2(3/4)
    assert metrics.cllr(np.array([np.log(3)]), np.array([-np.log(3)])) == pytest.approx(-np.log2(0.75))
    assert metrics.min_cllr(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert metrics.min_cllr(np.zeros(5), np.zeros(5)) == pytest.approx(1.0)


def test_min_cllr_matches_isotonic_regression_and_bounds_cllr():
    rng = np.random.default_rng(3)
    tar = np.round(rng.normal(1.5, 1, 400), 1)  # rounded: many ties
    non = np.round(rng.normal(0, 1, 900), 1)
    s = np.r_[tar, non]
    y = np.r_[np.ones(tar.size), np.zeros(non.size)]
    post = IsotonicRegression(y_min=0, y_max=1, increasing=True).fit(s, y).predict(s)
    with np.errstate(divide="ignore"):
        llr = np.log(post) - np.log1p(-post) - np.log(tar.size / non.size)
    ref = (np.mean(np.logaddexp(0, -llr[: tar.size])) + np.mean(np.logaddexp(0, llr[tar.size :]))) / (2 * np.log(2))
    assert metrics.min_cllr(tar, non) == pytest.approx(ref, abs=1e-9)
    assert metrics.min_cllr(tar, non) <= metrics.cllr(1.5 * tar - 1.125, 1.5 * non - 1.125)
    # minCllr depends only on the order of the scores
    assert metrics.min_cllr(np.exp(tar), np.exp(non)) == pytest.approx(metrics.min_cllr(tar, non), abs=1e-12)


def _brute_force(tar: np.ndarray, non: np.ndarray, p_target: float) -> tuple[float, float]:
    """EER and minDCF by counting at every candidate threshold, without sorting tricks."""
    thresholds = np.r_[np.unique(np.r_[tar, non]), np.inf]
    p_miss = np.concatenate([(tar[None, :] < t[:, None]).mean(axis=1) for t in np.array_split(thresholds, 20)])
    p_fa = np.concatenate([(non[None, :] >= t[:, None]).mean(axis=1) for t in np.array_split(thresholds, 20)])
    u = p_fa - p_miss  # non-increasing; EER where the joined-up curve has u = 0
    eer = np.interp(0.0, u[::-1], p_miss[::-1])
    cost = p_target * p_miss + (1 - p_target) * p_fa
    return float(eer), float(cost.min() / min(p_target, 1 - p_target))


def _sklearn(tar: np.ndarray, non: np.ndarray, p_target: float) -> tuple[float, float]:
    """EER (linear interpolation where FNR crosses FPR) and minDCF (WeSpeaker's recipe) from sklearn's roc_curve."""
    y = np.r_[np.ones(tar.size), np.zeros(non.size)]
    fpr, tpr, _ = roc_curve(y, np.r_[tar, non], drop_intermediate=False)
    fnr = 1 - tpr
    j = int(np.flatnonzero(fnr - fpr <= 0)[0])
    a, b = fnr[j - 1] - fpr[j - 1], fnr[j] - fpr[j]
    w = a / (a - b)
    eer = fpr[j - 1] + w * (fpr[j] - fpr[j - 1])
    c_det = p_target * fnr + (1 - p_target) * fpr
    return float(eer), float(c_det.min() / min(p_target, 1 - p_target))


@pytest.mark.parametrize("decimals", [None, 2])
@pytest.mark.parametrize("p_target", [0.01, 0.05, 0.5])
def test_eer_and_min_dcf_agree_with_sklearn_and_brute_force(decimals, p_target):
    rng = np.random.default_rng(17)
    tar = rng.normal(1.0, 0.8, 1000)
    non = rng.normal(-0.5, 1.0, 9000)  # 10,000 trials
    if decimals is not None:
        tar, non = np.round(tar, decimals), np.round(non, decimals)  # many ties
    e, thr = metrics.eer(tar, non)
    d, d_thr = metrics.min_dcf(tar, non, p_target)
    for ref_eer, ref_dcf in (_sklearn(tar, non, p_target), _brute_force(tar, non, p_target)):
        assert e == pytest.approx(ref_eer, abs=1e-6)
        assert d == pytest.approx(ref_dcf, abs=1e-6)
    far, frr = metrics.far_frr(tar, non, d_thr)
    assert (p_target * frr + (1 - p_target) * far) / min(p_target, 1 - p_target) == pytest.approx(d)
    y = np.r_[np.ones(tar.size), np.zeros(non.size)]
    assert metrics.auc(tar, non) == pytest.approx(roc_auc_score(y, np.r_[tar, non]), abs=1e-12)
    # the interpolated threshold lies within the crossing segment: measured rates straddle the EER
    far, frr = metrics.far_frr(tar, non, thr)
    assert min(far, frr) <= e + 1e-12 and max(far, frr) >= e - 1e-12


def test_operating_points_shape_and_monotone():
    rng = np.random.default_rng(1)
    op = metrics.operating_points(rng.normal(1, 1, 50), np.round(rng.normal(0, 1, 80), 1))
    assert op.p_miss[0] == 0 and op.p_fa[0] == 1 and op.p_miss[-1] == 1 and op.p_fa[-1] == 0
    assert np.all(np.diff(op.p_miss) >= 0) and np.all(np.diff(op.p_fa) <= 0) and np.all(np.diff(op.thresholds) > 0)


def test_errors_name_the_problem():
    with pytest.raises(SpkidError, match="0 non-target"):
        metrics.eer(np.ones(3), np.array([]))
    with pytest.raises(SpkidError, match="finite"):
        metrics.eer(np.array([1.0, np.nan]), np.zeros(2))
    with pytest.raises(SpkidError, match="p_target"):
        metrics.min_dcf(np.ones(2), np.zeros(2), p_target=1.0)
    with pytest.raises(SpkidError, match="FAR"):
        metrics.threshold_at_far(np.ones(2), np.zeros(2), 1.5)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(5)
    tar, non = rng.normal(2, 1, 300), rng.normal(0, 1, 1000)
    cfg = metrics.VerificationConfig(bootstrap=200, seed=7)
    a = metrics.verification_report(tar, non, cfg)
    b = metrics.verification_report(tar, non, cfg)
    c = metrics.verification_report(tar, non, metrics.VerificationConfig(bootstrap=200, seed=8))
    assert a["ci"] == b["ci"] and a["ci"] != c["ci"]
    for k in ("eer", "min_dcf", "auc"):
        lo, hi = a["ci"][k]
        assert lo <= a[k] <= hi and lo < hi
    # the interval is about as wide as the spread of the EER over fresh samples from the same distributions
    fresh = [metrics.eer(rng.normal(2, 1, 300), rng.normal(0, 1, 1000))[0] for _ in range(300)]
    width = a["ci"]["eer"][1] - a["ci"]["eer"][0]
    assert 0.6 < width / (np.percentile(fresh, 97.5) - np.percentile(fresh, 2.5)) < 1.6


def test_verification_report_keys():
    rng = np.random.default_rng(2)
    tar, non = rng.normal(2, 1, 100), rng.normal(0, 1, 300)
    rep = metrics.verification_report(tar, non)
    assert list(rep)[:4] == ["n_target", "n_nontarget", "eer", "eer_threshold"]
    assert "cllr" not in rep and "ci" not in rep
    rep = metrics.verification_report(tar, non, metrics.VerificationConfig(llr=True, threshold=1.0, far=0.05))
    assert rep["cllr"] == pytest.approx(metrics.cllr(tar, non))
    assert rep["act_dcf"] == pytest.approx(metrics.act_dcf(tar, non, None, 0.01))
    assert (rep["far"], rep["frr"]) == metrics.far_frr(tar, non, 1.0)
    assert rep["frr_at_far"] == metrics.far_frr(tar, non, rep["threshold_at_far"])[1]
    assert metrics.far_frr(tar, non, rep["threshold_at_far"])[0] <= 0.05


def test_identification_metrics():
    rank = np.array([0, 0, 1, -1, 0, 3])
    assert metrics.top_k_accuracy(rank, 1) == pytest.approx(3 / 6)
    assert metrics.top_k_accuracy(rank, 2) == pytest.approx(4 / 6)
    assert metrics.top_k_accuracy(rank, 5) == pytest.approx(5 / 6)
    known = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.5])
    unknown = np.array([0.1, 0.2, 0.35, 0.4])
    # FAR 0.25: one of 4 unknown probes may pass -> threshold above 0.35; known right at rank 1 with score >= it: 0.9, 0.8
    d, thr = metrics.dir_at_far(rank, known, unknown, 0.25)
    assert d == pytest.approx(2 / 6) and 0.35 < thr <= 0.4
    d, _ = metrics.dir_at_far(rank, known, unknown, 1.0)
    assert d == pytest.approx(3 / 6)
    rows, cols, m = metrics.confusion_matrix(["a", "a", "b", "b", "b"], ["a", "b", "b", "b", "unknown"])
    assert rows == ["a", "b"] and cols == ["a", "b", "unknown"]
    assert m.tolist() == [[1, 1, 0], [0, 2, 1]]


def test_fast_bootstrap_equals_resampling_the_trials():
    rng = np.random.default_rng(9)
    tar, non = np.round(rng.normal(1, 1, 150), 1), np.round(rng.normal(-1, 1, 400), 1)  # ties too
    cfg = metrics.VerificationConfig(p_target=0.05, llr=True, bootstrap=40, seed=4)

    def stat(t, n):
        return {
            "eer": metrics.eer(t, n)[0],
            "min_dcf": metrics.min_dcf(t, n, 0.05)[0],
            "auc": metrics.auc(t, n),
            "cllr": metrics.cllr(t, n),
            "act_dcf": metrics.act_dcf(t, n, None, 0.05),
        }

    slow = metrics.bootstrap_ci(stat, tar, non, 40, seed=4)
    fast = metrics.verification_report(tar, non, cfg)["ci"]
    assert set(fast) == set(slow)
    for k in slow:
        assert fast[k] == pytest.approx(list(slow[k]), abs=1e-12), k

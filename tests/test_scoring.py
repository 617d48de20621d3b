"""spkid.trials, scoring, calibration, report: parsing every input format, joining with trials, AS-norm, calibration and
where it is stored (gallery.json, a model file)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import integrate, stats

from spkid import calibration, metrics, modelfile, report, scoring
from spkid.errors import SpkidError
from spkid.gallery import load_calibration, save_calibration
from spkid.trials import IdRecord, join_trials, labelled, parse_identify, parse_scores, parse_trials, read_input


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_labelled_scores_tab_or_space_and_all_label_words():
    text = "# enroll test score label\na\tx\t0.9\ttarget\n\nb y 0.1 nontarget\nc\tz\t-0.5\t0\nd w 0.7 1\n"
    s = parse_scores(lines(text))
    assert s.score.tolist() == [0.9, 0.1, -0.5, 0.7]
    assert s.label.tolist() == [True, False, False, True]
    assert s.enroll == ["a", "b", "c", "d"] and s.test == ["x", "y", "z", "w"]
    assert s.target.tolist() == [0.9, 0.7] and s.nontarget.tolist() == [0.1, -0.5]


def test_tab_separated_keys_may_hold_spaces():
    s = parse_scores(["my spk/a.wav\tother spk/b.wav\t0.5\ttarget\r\n"])
    assert s.enroll == ["my spk/a.wav"] and s.test == ["other spk/b.wav"]


def test_kaldi_compute_eer_format():
    s = parse_scores(lines("0.73 target\n-1.5 nontarget\n2e-1 target\n"))
    assert s.enroll is None and s.score.tolist() == [0.73, -1.5, 0.2] and s.label.tolist() == [True, False, True]


def test_mixed_formats_are_refused():
    with pytest.raises(SpkidError, match=r"<stdin>:2: 3 fields, but line 1 has 4 .*mixed formats"):
        parse_scores(lines("a x 0.9 target\nb y 0.1\n"))
    with pytest.raises(SpkidError, match=r"s.txt:3: 2 fields, but line 1 has 3"):
        parse_scores(lines("a x 0.9\nb y 0.1\n0.3 target\n"), "s.txt")
    with pytest.raises(SpkidError, match=r":2: a JSON line .*mixed"):
        read_input(lines('0.3 target\n{"key": "a"}\n'))
    with pytest.raises(SpkidError, match=r":2: a text line among identification JSON"):
        read_input(lines('{"key": "a", "label": "x", "top": [{"speaker": "x", "score": 1}]}\n0.3 target\n'))
    with pytest.raises(SpkidError, match="5 fields"):
        parse_scores(["a b c d e"])


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-Infinity"])
def test_non_finite_scores_name_the_line(bad):
    with pytest.raises(SpkidError, match=rf"scores.txt:3: score is {bad}"):
        parse_scores(["a x 0.9 target", "# c", f"b y {bad} nontarget"], "scores.txt")


def test_bad_score_and_label_name_the_line():
    with pytest.raises(SpkidError, match=r"<stdin>:1: score 'high' is not a number"):
        parse_scores(["a x high target"])
    with pytest.raises(SpkidError, match=r"<stdin>:2: label 'same' is not one of target, nontarget, 1, 0"):
        parse_scores(["0.1 target", "0.2 same"])
    with pytest.raises(SpkidError, match="the input is empty"):
        read_input(["", "# nothing"])


def test_empty_class_is_a_clear_error():
    s = parse_scores(lines("0.1 target\n0.4 target\n"), "s.txt")
    with pytest.raises(SpkidError, match=r"s.txt: 2 target and 0 non-target trials"):
        labelled(s)
    with pytest.raises(SpkidError, match="no labels; give a trials file"):
        parse_scores(["a x 0.9"]).target


VOX = "1 id1/a.wav id1/b.wav\n0 id1/a.wav id2/c.wav\n1 id2/c.wav id2/d.wav\n"
KALDI = "id1/a.wav id1/b.wav target\nid1/a.wav id2/c.wav nontarget\nid2/c.wav id2/d.wav target\n"
SCORES = "id2/c.wav\tid2/d.wav\t0.8\nid1/a.wav\tid1/b.wav\t0.7\nid1/a.wav\tid2/c.wav\t0.2\n"


@pytest.mark.parametrize("trials,fmt", [(VOX, "voxceleb"), (KALDI, "kaldi")])
def test_trials_join_in_trials_order(trials, fmt):
    t = parse_trials(lines(trials), "t.txt")
    assert t.format == fmt and t.label.tolist() == [True, False, True]
    s = labelled(parse_scores(lines(SCORES)), t)
    assert s.score.tolist() == [0.7, 0.2, 0.8] and s.label.tolist() == [True, False, True]
    assert s.enroll[1] == "id1/a.wav" and s.test[1] == "id2/c.wav"


def test_trials_errors():
    with pytest.raises(SpkidError, match=r"t.txt:2: a kaldi trial, but line 1 is voxceleb; mixed"):
        parse_trials(["1 a b", "a c nontarget"], "t.txt")
    with pytest.raises(SpkidError, match=r"t.txt: 2 duplicate trials, e.g. \(a b\), \(a c\)"):
        parse_trials(["1 a b", "0 a c", "1 a b", "0 a c"], "t.txt")
    with pytest.raises(SpkidError, match=r"t.txt:1: 2 fields"):
        parse_trials(["a b"], "t.txt")
    with pytest.raises(SpkidError, match=r"t.txt:1: neither"):
        parse_trials(["a b maybe"], "t.txt")


def test_join_errors_name_count_and_keys():
    t = parse_trials(lines(VOX), "t.txt")
    some = parse_scores(lines(SCORES)[:1], "s.txt")
    with pytest.raises(SpkidError, match=r"2 of 3 trials in t.txt have no score in s.txt, e.g. \(id1/a.wav id1/b.wav\), \(id1/a.wav id2/c.wav\)"):
        join_trials(some, t)
    extra = parse_scores(lines(SCORES + "x\ty\t0.5\n"), "s.txt")
    with pytest.raises(SpkidError, match=r"1 score in s.txt is not a trial in t.txt, e.g. \(x y\)"):
        join_trials(extra, t)
    dup = parse_scores(lines(SCORES + SCORES.splitlines()[0] + "\n"), "s.txt")
    with pytest.raises(SpkidError, match=r"s.txt: 1 duplicate score, e.g. \(id2/c.wav id2/d.wav\)"):
        join_trials(dup, t)
    many = parse_trials([f"1 e{i} t{i}" for i in range(10)], "big.txt")
    with pytest.raises(SpkidError, match=r"10 of 10 trials .* e.g. \(e0 t0\), \(e1 t1\), \(e2 t2\), \.\.\."):
        join_trials(some, many)
    with pytest.raises(SpkidError, match="SCORE LABEL lines have no keys"):
        join_trials(parse_scores(["0.1 target"]), t)
    wrong = parse_scores([line + "\tnontarget" for line in lines(SCORES)], "s.txt")
    with pytest.raises(SpkidError, match="2 scores in s.txt have labels that disagree with t.txt"):
        join_trials(wrong, t)


def _rec(key, label, top, **kw):
    return json.dumps({"key": key, "label": label, "top": [{"speaker": s, "score": v} for s, v in top], **kw})


ID_LINES = [
    _rec("1", "alice", [("alice", 0.9), ("bob", 0.3)], decision="alice", threshold=0.5),
    _rec("2", "alice", [("bob", 0.6), ("alice", 0.55)], decision="bob", threshold=0.5),
    _rec("3", "bob", [("carol", 0.4), ("dave", 0.35), ("bob", 0.3)], decision="unknown", threshold=0.5),
    _rec("4", "bob", [("bob", 0.8), ("alice", 0.1)], decision="bob", threshold=0.5),
    _rec("5", None, [("alice", 0.45), ("bob", 0.2)], decision="unknown", threshold=0.5),
    _rec("6", "eve", [("carol", 0.7), ("bob", 0.2)], decision="carol", threshold=0.5, enrolled=False),
]


def test_identify_json_report_known_answers():
    recs = read_input(ID_LINES)
    assert isinstance(recs, list) and recs[5].enrolled is False and recs[4].enrolled is False
    rep = report.identification_report(recs, top_k=2, far=0.5)
    assert (rep["n_clips"], rep["n_known"], rep["n_unknown"]) == (6, 4, 2)
    assert rep["top1_accuracy"] == pytest.approx(2 / 4) and rep["topk_accuracy"] == pytest.approx(3 / 4)
    # FAR 0.5: one of the two unknown probes (best scores 0.45, 0.7) may pass: threshold above 0.45
    assert rep["dir_at_far"] == pytest.approx(2 / 4) and rep["dir_threshold"] == 0.6  # lowest best score above 0.45
    # right: 1 (alice), 4 (bob), 5 (unknown); wrong: 2, 3, 6
    assert rep["decision_accuracy"] == pytest.approx(3 / 6) and rep["decision_far"] == pytest.approx(1 / 2)
    assert rep["threshold"] == 0.5
    rows, cols, m = report.identification_confusion(recs)
    assert rows == ["alice", "bob", "eve", "unknown"] and cols == ["alice", "bob", "carol", "unknown"]
    assert m.tolist() == [[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1]]


def test_identify_record_to_json_round_trips():
    rec = IdRecord("a b.wav", "zoë", [("zoë", 0.5), ("x", 0.25)], True, "zoë", 0.3)
    (back,) = parse_identify([rec.to_json()])
    assert back == rec and "\n" not in rec.to_json()


def test_identify_json_sorts_candidates_and_validates():
    (r,) = parse_identify([_rec("k", "b", [("a", 0.1), ("b", 0.9)])])
    assert r.top == [("b", 0.9), ("a", 0.1)] and r.decision is None and r.enrolled
    rep = report.identification_report([r], top_k=5)
    assert rep["top1_accuracy"] == 1.0 and rep["dir_at_far"] is None and "decision_accuracy" not in rep
    for bad, msg in [
        ('{"key": "a", "top": []}', "non-empty list"),
        ('{"key": 3, "top": [{"speaker": "x", "score": 1}]}', '"key" must be a string'),
        ('{"key": "a", "top": [{"speaker": "x", "score": "1"}]}', "numeric"),
        ('{"key": "a", "top": [{"speaker": "x", "score": NaN}]}', "finite"),
        ('{"key": "a", "top": [{"speaker": "x", "score": 1}], "enrolled": true}', '"label" is null'),
        ('{"key": "a", "top": ', "not valid JSON"),
    ]:
        with pytest.raises(SpkidError, match=rf"id.json:1: .*{msg}"):
            read_input([bad], "id.json")
    with pytest.raises(SpkidError, match="none of the 1 clips has the label of an enrolled speaker"):
        report.identification_report(parse_identify([_rec("k", None, [("a", 0.1)])]))


def test_cosine():
    a = np.array([[3.0, 4.0], [1.0, 0.0]])
    b = np.array([[6.0, 8.0], [0.0, 2.0], [-1.0, 0.0]])
    assert scoring.cosine(a, b) == pytest.approx(np.array([[1.0, 0.8, -0.6], [0.6, 0.0, -1.0]]))
    assert scoring.cosine_pairs(a, b[:2]) == pytest.approx(np.array([1.0, 0.0]))


def _as_norm_loop(s, e, t, cohort, n):
    def stats_of(v):
        c = sorted((float(np.dot(v, x) / np.linalg.norm(v) / np.linalg.norm(x)) for x in cohort), reverse=True)[:n]
        return np.mean(c), np.std(c)

    me, se = stats_of(e)
    mt, st = stats_of(t)
    return 0.5 * ((s - me) / se + (s - mt) / st)


def test_as_norm_matches_a_direct_loop_for_matrix_pairs_and_single_pairs():
    rng = np.random.default_rng(0)
    enroll, test, cohort = rng.normal(size=(4, 16)), rng.normal(size=(5, 16)), rng.normal(size=(40, 16))
    s = scoring.cosine(enroll, test)
    got = scoring.as_norm(s, enroll, test, cohort, top_n=10)
    ref = np.array([[_as_norm_loop(s[i, j], enroll[i], test[j], cohort, 10) for j in range(5)] for i in range(4)])
    assert got == pytest.approx(ref, abs=1e-12)
    pairs = scoring.as_norm(s[np.arange(4), np.arange(4)], enroll, test[:4], cohort, top_n=10)
    assert pairs == pytest.approx(np.diag(ref[:, :4]), abs=1e-12)
    assert scoring.as_norm_pair(s[1, 3], enroll[1], test[3], cohort, top_n=10) == pytest.approx(ref[1, 3], abs=1e-12)
    # symmetric: swapping the sides transposes the result
    assert scoring.as_norm(s.T, test, enroll, cohort, top_n=10) == pytest.approx(got.T, abs=1e-12)
    # top_n beyond the cohort uses the whole cohort
    assert scoring.as_norm(s, enroll, test, cohort, top_n=1000) == pytest.approx(scoring.as_norm(s, enroll, test, cohort, top_n=40))


def test_as_norm_errors():
    rng = np.random.default_rng(0)
    e, t = rng.normal(size=(2, 8)), rng.normal(size=(3, 8))
    with pytest.raises(SpkidError, match="dimension 4"):
        scoring.as_norm(np.zeros((2, 3)), e, t, rng.normal(size=(10, 4)))
    with pytest.raises(SpkidError, match=r"scores \(3, 2\) do not match"):
        scoring.as_norm(np.zeros((3, 2)), e, t, rng.normal(size=(10, 8)))


def _theoretical_cllr(mu: float) -> float:
    """Cllr of the true LLR mu*s - mu^2/2 for target N(mu, 1) vs non-target N(0, 1), by integration."""
    tar = integrate.quad(lambda s: stats.norm.pdf(s, mu) * np.logaddexp(0, -(mu * s - mu * mu / 2)), -np.inf, np.inf)[0]
    non = integrate.quad(lambda s: stats.norm.pdf(s) * np.logaddexp(0, mu * s - mu * mu / 2), -np.inf, np.inf)[0]
    return (tar + non) / (2 * np.log(2))


@pytest.mark.parametrize("p_target", [0.5, 0.01])
@pytest.mark.parametrize("mu", [1.0, 2.5])
def test_calibration_reaches_the_theoretical_cllr_on_gaussian_scores(mu, p_target):
    rng = np.random.default_rng(11)
    # raw scores are an arbitrary affine map of the Gaussian variable, as cosine scores would be
    raw = lambda x: 0.12 * x + 0.3  # noqa: E731
    cal = calibration.calibrate(raw(rng.normal(mu, 1, 20000)), raw(rng.normal(0, 1, 20000)), p_target=p_target)
    # the true LLR in raw-score units: (mu / 0.12) * raw - mu * 0.3 / 0.12 - mu^2 / 2
    assert cal.a == pytest.approx(mu / 0.12, rel=0.05)
    assert cal.b == pytest.approx(-mu * 0.3 / 0.12 - mu * mu / 2, abs=0.15 * mu)
    tar, non = raw(rng.normal(mu, 1, 200000)), raw(rng.normal(0, 1, 200000))
    assert metrics.cllr(cal.to_llr(tar), cal.to_llr(non)) == pytest.approx(_theoretical_cllr(mu), abs=0.01)


def test_calibration_thresholds_and_round_trip():
    rng = np.random.default_rng(4)
    tar, non = rng.normal(2, 1, 3000), rng.normal(0, 1, 30000)
    cal = calibration.calibrate(tar, non, p_target=0.01, far=0.001, source="dev.txt")
    assert set(cal.thresholds) == {"eer", "min_dcf", "bayes", "far@0.001"}
    t = cal.threshold("far")
    assert t.far <= 0.001 and (t.far, t.frr) == metrics.far_frr(tar, non, t.score)
    e = cal.threshold("eer")
    assert abs(e.far - e.frr) < 0.01 and e.score == pytest.approx(metrics.eer(tar, non)[1])
    assert cal.to_llr(cal.threshold("bayes").score) == pytest.approx(np.log(99))
    assert cal.fitted_on["file"] == "dev.txt" and cal.fitted_on["n_target"] == 3000
    assert cal.fitted_on["cllr"] >= cal.fitted_on["min_cllr"] - 1e-9
    again = calibration.Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again == cal
    with pytest.raises(SpkidError, match=r"no 'far@0.01' threshold in the calibration; stored: eer, min_dcf"):
        cal.threshold("far@0.01")
    with pytest.raises(SpkidError, match="malformed calibration"):
        calibration.Calibration.from_dict({"a": 1.0}, "g.json")
    with pytest.raises(SpkidError, match="not higher than non-target"):
        calibration.calibrate(non[:100], tar[:100])


def test_effective_prior():
    assert calibration.effective_prior(0.01, 1, 1) == pytest.approx(0.01)
    assert calibration.effective_prior(0.5, 1, 9) == pytest.approx(0.1)


def test_calibration_with_separable_scores_stays_finite():
    a, b = calibration.fit_llr(np.array([2.0, 3.0, 4.0]), np.array([-1.0, 0.0, 1.0]))
    assert np.isfinite(a) and np.isfinite(b) and a > 0


@pytest.fixture
def gallery(tmp_path):
    g = tmp_path / "enroll"
    g.mkdir()
    (g / "gallery.json").write_text(json.dumps({"format": "spkid-gallery/1", "model_sha256": "ab" * 32, "speakers": 3}))
    os.chmod(g / "gallery.json", 0o644)
    return g


def _cal() -> calibration.Calibration:
    rng = np.random.default_rng(0)
    return calibration.calibrate(rng.normal(1, 1, 500), rng.normal(-1, 1, 2000), source="dev.txt")


def test_gallery_calibration_keeps_other_keys_and_replaces_atomically(gallery):
    assert load_calibration(gallery) is None
    cal = _cal()
    assert save_calibration(gallery, cal) == gallery / "gallery.json"
    obj = json.loads((gallery / "gallery.json").read_text())
    assert obj["format"] == "spkid-gallery/1" and obj["model_sha256"] == "ab" * 32 and obj["speakers"] == 3
    assert obj["calibration"]["thresholds"]["eer"]["score"] == cal.thresholds["eer"].score
    assert sorted(p.name for p in gallery.iterdir()) == ["gallery.json"]  # no temp file left
    assert (gallery / "gallery.json").stat().st_mode & 0o777 == 0o644
    assert load_calibration(gallery) == cal
    assert load_calibration(gallery / "gallery.json") == cal


def test_gallery_without_gallery_json_is_refused(tmp_path):
    with pytest.raises(SpkidError, match=r"not a gallery folder \(no gallery.json\)"):
        save_calibration(tmp_path, _cal())
    with pytest.raises(SpkidError, match="no such gallery folder"):
        load_calibration(tmp_path / "nope.json")
    (tmp_path / "gallery.json").write_text("[1, 2]")
    with pytest.raises(SpkidError, match="expected a JSON object"):
        save_calibration(tmp_path, _cal())


def _model_file(path):
    import torch

    from spkid import modelfile

    spec = modelfile.ModelSpec(model={"name": "tdnn", "kwargs": {"embed_dim": 8}}, features={"n_filters": 40})
    torch.save({"format": modelfile.FORMAT, "config": spec.to_json(), "state_dict": {"w": torch.arange(4.0)}}, path)
    return spec


def test_model_calibration_writes_a_new_model_file(tmp_path):
    import torch

    spec = _model_file(tmp_path / "in.pt")
    before = (tmp_path / "in.pt").read_bytes()
    cal = _cal()
    modelfile.save_calibrated(tmp_path / "in.pt", tmp_path / "out.pt", cal)
    assert (tmp_path / "in.pt").read_bytes() == before
    blob = torch.load(tmp_path / "out.pt", weights_only=True)
    config = json.loads(blob["config"])
    assert config["model"] == spec.model and config["features"] == spec.features
    assert torch.equal(blob["state_dict"]["w"], torch.arange(4.0))
    assert modelfile.read_calibration(tmp_path / "out.pt") == cal
    assert modelfile.read_calibration(tmp_path / "in.pt") is None


def test_scoring_metrics_and_plots_never_import_torch():
    code = (
        "import sys, numpy as np\n"
        "from spkid import calibration, decisions, metrics, plots, report, scoring, trials\n"
        "calibration.calibrate(np.array([1.0, 2.0, 0.5]), np.array([0.0, 0.7, -1.0]))\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_counts_of_one_are_singular(caplog):
    from spkid.lists import plural

    assert [plural(n, "file") for n in (0, 1, 2, 12000)] == ["0 files", "1 file", "2 files", "12,000 files"]
    assert plural(1, "process", "processes") == "1 process" and plural(3, "process", "processes") == "3 processes"
    with pytest.raises(SpkidError, match=r"s.txt:1: 1 field; expected"):
        parse_scores(["0.5"], "s.txt")
    with pytest.raises(SpkidError, match=r"t.txt:1: 1 field; a trial is"):
        parse_trials(["x"], "t.txt")
    t = parse_trials(["1 a b"], "t.txt")
    with pytest.raises(SpkidError, match=r"^1 of 1 trial in t.txt has no score in s.txt"):
        join_trials(parse_scores(["c d 0.5"], "s.txt"), t)
    with pytest.raises(SpkidError, match=r"^1 score in s.txt has a label that disagrees with t.txt"):
        join_trials(parse_scores(["a b 0.5 nontarget"], "s.txt"), t)
    records = parse_identify([json.dumps({"key": "c1", "label": "a", "top": [{"speaker": "a", "score": 0.9}]})], "id")
    with caplog.at_level(logging.WARNING):  # an earlier in-process `spkid -q ...` may have left the root at ERROR
        report.identification_report(records, 5, 0.01)
    assert "1 clip lists fewer than 5 candidates; top-5 accuracy" in caplog.text

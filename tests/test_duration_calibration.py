"""Duration-aware (QMF) calibration: llr = a * score + b + c * q from the speech seconds of both sides; its fit,
its storage (gallery.json, model files, score files with durations), and the per-trial thresholds of `verify` and
`identify` (real subprocesses, the bundled model, a short and a long probe)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import clip_files, sh
from spkid import calibration, decisions, gallery, modelfile, streams, trials
from spkid.calibration import Calibration, Qmf, Threshold

KINDS = ("eer", "min_dcf", "bayes", "far@0.01")


def _duration_scores(n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labelled scores whose separation depends on duration: the shorter a trial, the nearer its targets and the
    wider its non-targets (so short trials' non-targets reach higher). Returns scores, labels, (n, 2) seconds."""
    rng = np.random.default_rng(seed)
    speech = np.stack([np.full(n, 30.0), np.exp(rng.uniform(np.log(0.4), np.log(20), n))], 1)
    q = calibration.quality_measure(speech[:, 0], speech[:, 1])
    label = rng.random(n) < 0.3
    spread = 0.05 + 0.1 / np.exp(q)  # 0.3 at 0.4 s, 0.055 at 20 s
    score = np.where(label, 0.75 - 0.1 / np.exp(q), 0.2) + spread * rng.standard_normal(n)
    return score, label, speech


def test_fit_qmf_recovers_known_coefficients():
    """Labels drawn from a known llr = a s + b + c q: the fit finds a and c, and b up to the prior's logit."""
    rng = np.random.default_rng(1)
    a, b, c = 8.0, -4.0, 1.5
    s = rng.uniform(-1, 1.5, 200_000)
    speech = np.exp(rng.uniform(np.log(0.3), np.log(20), s.size))
    q = calibration.quality_measure(30.0, speech)
    y = rng.random(s.size) < 1 / (1 + np.exp(-(a * s + b + c * q)))
    prior = y.mean()
    fa, fb, fc = calibration.fit_qmf(s[y], s[~y], q[y], q[~y], p_target=prior)
    assert fa == pytest.approx(a, rel=0.03) and fc == pytest.approx(c, rel=0.05)
    assert fb == pytest.approx(b - math.log(prior / (1 - prior)), abs=0.1)
    # the duration-free fit of the same trials is another model: its slope absorbs part of the duration effect
    assert calibration.fit_llr(s[y], s[~y], prior)[0] < a * 0.8


def test_calibrate_with_durations_moves_thresholds_with_duration():
    score, label, speech = _duration_scores()
    cal = calibration.calibrate(score[label], score[~label], 0.01, 0.01, "dev.txt", speech_target=speech[label],
                                speech_nontarget=speech[~label])
    q = cal.qmf
    assert q is not None and q.c > 0 and set(q.thresholds) == set(cal.thresholds) == set(KINDS)
    for kind in KINDS:
        short, aware = cal.trial_threshold(kind, 30.0, 0.6)
        long, _ = cal.trial_threshold(kind, 30.0, 10.0)
        assert aware and short.score > long.score  # short trials' non-targets reach higher
        tau = q.thresholds[kind].score
        assert short.score == pytest.approx((tau - q.b - q.c * calibration.quality_measure(30.0, 0.6)) / q.a)
        # unknown durations: the duration-free threshold
        assert cal.trial_threshold(kind, None, 0.6) == (cal.thresholds[kind], False)
        assert cal.trial_threshold(kind, 30.0, None) == (cal.thresholds[kind], False)
    # per duration band, the duration-aware EER point keeps false alarms nearer to the misses than one threshold
    short = speech[:, 1] < 1
    thr = np.array([cal.trial_threshold("eer", e, t)[0].score for e, t in speech])
    fa_aware = np.mean(score[short & ~label] >= thr[short & ~label])
    fa_free = np.mean(score[short & ~label] >= cal.thresholds["eer"].score)
    assert fa_aware < 0.7 * fa_free  # 9 % against 17 %
    # the duration-free part is exactly the calibration fitted without durations
    plain = calibration.calibrate(score[label], score[~label], 0.01, 0.01, "dev.txt")
    assert plain.qmf is None and (plain.a, plain.b, plain.thresholds) == (cal.a, cal.b, cal.thresholds)


def test_one_duration_for_every_trial_fits_no_qmf():
    score, label, _ = _duration_scores()
    same = np.full((label.size, 2), 50.0)  # clamped to 30 s both sides
    cal = calibration.calibrate(score[label], score[~label], speech_target=same[label], speech_nontarget=same[~label])
    assert cal.qmf is None and "not fitted" in cal.fitted_on["qmf"]


def test_old_calibrations_load_and_decide_unchanged():
    old = {"a": 20.0, "b": -14.0, "p_target": 0.01, "time": "2024-01-01T00:00:00Z",
           "thresholds": {"eer": {"score": 0.7259, "far": 0.006, "frr": 0.0088}},
           "fitted_on": {"n_target": 341, "n_nontarget": 14365}}
    cal = Calibration.from_dict(old, "m.pt")
    assert cal.qmf is None and cal.to_dict() == old  # no "qmf" key written back
    choice = decisions._from_calibration(cal, "eer", "the calibration in model m.pt")
    assert choice.calibration is None
    for speech in ((None, None), (30.0, 0.6), (0.6, 0.6)):
        assert choice.at(*speech) is choice and choice.score == 0.7259


def _qmf_cal(c: float, taus: float, a: float = 10.0, b: float = -7.0, free: float = 0.7) -> Calibration:
    th = {k: Threshold(free, 0.01, 0.02) for k in KINDS}
    qmf = Qmf(a, b, c, {k: Threshold(taus, 0.01, 0.02) for k in KINDS}, fitted_on={"cllr": 0.1})
    return Calibration(a, b, 0.01, th, {"n_target": 10, "n_nontarget": 90}, "t", qmf)


def test_stored_qmf_round_trips_and_bad_ones_are_refused(tmp_path):
    cal = _qmf_cal(1.5, 0.3)
    d = json.loads(json.dumps(cal.to_dict()))
    assert d["qmf"]["measure"] == calibration.QMF_MEASURE and d["qmf"]["thresholds"]["eer"] == {"llr": 0.3, "far": 0.01, "frr": 0.02}
    assert Calibration.from_dict(d) == cal
    bad = [({"c": float("nan")}, 'quality weight "c" must be a finite number'),
           ({"a": -1.0}, 'slope "a" must be positive'),
           ({"measure": "snr"}, "unknown quality measure 'snr'"),
           ({"min_s": 0.0}, '"min_s" must be a finite number in \\(0, inf\\)'),
           ({"thresholds": {"eer": {"llr": 0.0, "far": 0.0, "frr": 0.0}}}, '"thresholds" must hold the kinds')]
    for change, message in bad:
        with pytest.raises(Exception, match=message):
            Calibration.from_dict({**d, "qmf": {**d["qmf"], **change}}, "g.json")


def test_score_files_carry_durations():
    lines = ["a\tx\t0.9\ttarget\t12.500\t0.610", "a\ty\t0.1\tnontarget\t-\t3.000", "# comment"]
    s = trials.parse_scores(lines, "s.txt")
    assert s.speech.shape == (2, 2) and s.speech[0].tolist() == [12.5, 0.61] and math.isnan(s.speech[1, 0])
    t = trials.parse_trials(["a y nontarget", "a x target"], "t.txt")
    joined = trials.join_trials(s, t)  # in the trials' order, durations along
    assert joined.test == ["y", "x"] and joined.speech[1].tolist() == [12.5, 0.61]
    text = trials.format_scores(t, [0, 1], [0.1, 0.9], np.array([[np.nan, 3.0], [12.5, 0.61]]))
    assert text == "a\ty\t0.100000\tnontarget\t-\t3.000\na\tx\t0.900000\ttarget\t12.500\t0.610\n"
    assert trials.parse_scores(["a\tx\t0.9\ttarget"]).speech is None
    with pytest.raises(Exception, match=r"s.txt:1: seconds of speech 'x' must be a number >= 0"):
        trials.parse_scores(["a\tb\t0.9\ttarget\tx\t1"], "s.txt")


def test_merged_shards_decide_with_the_threshold_of_their_best_speaker():
    rec = {"key": "c.wav", "label": None, "enrolled": False}
    one = dict(rec, top=[{"speaker": "ann", "score": 0.8}], decision="ann", threshold=0.75,
               threshold_speech_s={"enroll": 20.0, "test": 0.6})
    two = dict(rec, top=[{"speaker": "bob", "score": 0.7}], decision="bob", threshold=0.65,
               threshold_speech_s={"enroll": 60.0, "test": 0.6})
    merged = trials.read_input([json.dumps(one), json.dumps(two)])
    assert len(merged) == 1 and merged[0].decision == "ann" and merged[0].threshold == 0.75
    one["threshold"] = 0.85  # ann's own threshold is above her score: unknown, although bob's would pass
    assert trials.read_input([json.dumps(one), json.dumps(two)])[0].decision == "unknown"
    for r in (one, two):
        del r["threshold_speech_s"]  # fixed thresholds that differ: not shards of one gallery
    with pytest.raises(Exception, match="decided with different thresholds"):
        trials.read_input([json.dumps(one), json.dumps(two)])


def test_calibrate_cli_with_and_without_durations(tmp_path):
    """`spkid score --calibrate`: a score file with durations fits the duration-aware calibration too (gallery.json
    and --model-out keep it); without them, the calibration of today."""
    score, label, speech = _duration_scores(3000)
    rows = [f"e{i}\tt{i}\t{s:.6f}\t{'target' if y else 'nontarget'}" for i, (s, y) in enumerate(zip(score, label))]
    (tmp_path / "with.txt").write_text("".join(f"{r}\t{e:.3f}\t{t:.3f}\n" for r, (e, t) in zip(rows, speech)))
    (tmp_path / "without.txt").write_text("".join(f"{r}\n" for r in rows))
    g = tmp_path / "g"
    g.mkdir()
    (g / "gallery.json").write_text(json.dumps({"format": "spkid-gallery/1", "model_sha256": "0" * 64}))
    proc = sh(f"spkid score --calibrate {tmp_path / 'with.txt'} -g {g}", check=True)
    assert "duration-aware" in proc.stdout.decode() and "llr" in proc.stdout.decode()
    with_ = gallery.load_calibration(g)
    want = calibration.calibrate(score[label], score[~label], source=str(tmp_path / "with.txt"),
                                 speech_target=np.round(speech[label], 3), speech_nontarget=np.round(speech[~label], 3))
    assert with_.qmf is not None and with_.qmf.c == pytest.approx(want.qmf.c, rel=1e-4) and with_.qmf.c > 0
    sh(f"cut -f1-4 {tmp_path / 'with.txt'} | spkid score --calibrate - -g {g}", check=True)
    without = gallery.load_calibration(g)
    assert without.qmf is None and (without.a, without.b) == (with_.a, with_.b)
    assert without.thresholds == with_.thresholds  # the duration-free part is today's calibration
    # a model copy keeps it too (the tiny model of test_embedding stands in)
    from test_embedding import make_tiny_model

    model = make_tiny_model(tmp_path / "m.pt")
    sh(f"spkid score --calibrate {tmp_path / 'with.txt'} -m {model} --model-out {tmp_path / 'cal.pt'}", check=True)
    assert modelfile.read_calibration(tmp_path / "cal.pt").qmf == with_.qmf
    # some trials without durations: duration-free, and said so
    (tmp_path / "some.txt").write_text((tmp_path / "with.txt").read_text().replace("\t30.000\t", "\t-\t", 1))
    proc = sh(f"spkid score --calibrate {tmp_path / 'some.txt'} -g {g} --json", check=True)
    assert "1 of 3000 trials lack the seconds of speech" in proc.stderr.decode()
    assert "qmf" not in json.loads(proc.stdout)


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict:
    """A gallery of the shipped enrolment clips (bundled model) and two probes of speaker 19: a long one (the shipped
    probe clip) and a short one (0.9 s cut from it), with what `identify --json` says of them (the gallery holds no
    calibration of its own: the bundled model's decides)."""
    tmp = tmp_path_factory.mktemp("qmf")
    (tmp / "enroll.txt").write_text("".join(f"{p}\n" for p in clip_files("enroll")))
    sh(f"spkid enroll {tmp}/enroll.txt -g {tmp}/g", check=True)
    long = clip_files("probe", "19")[0]
    x, sr = sf.read(long)
    short = tmp / "short.wav"
    sf.write(short, x[int(1.0 * sr) : int(1.9 * sr)], sr)
    out = sh(f"spkid identify {long} {short} -g {tmp}/g --json", check=True).stdout.decode()
    recs = {r["key"]: r for r in map(json.loads, out.splitlines())}
    return {"g": tmp / "g", "long": str(long), "short": str(short), "recs": recs, "tmp": tmp}


def test_the_bundled_models_own_calibration_is_duration_aware(probes):
    recs = probes["recs"]
    long, short = recs[probes["long"]], recs[probes["short"]]
    for r in (long, short):
        assert r["threshold_source"].startswith("the calibration in model default (the bundled one)")
        assert "duration-aware" in r["threshold_source"]
    # its c is negative (it scores short clips lower for everyone): a short probe is decided at a lower threshold
    assert short["threshold"] < long["threshold"] - 0.01
    assert long["decision"] == "19"
    v = json.loads(sh(f"spkid verify {probes['long']} {probes['short']} --json", check=True).stdout)
    assert v["decision"] == "accept" and "duration-aware" in v["threshold_source"]
    assert short["threshold"] - 0.02 < v["threshold"] < long["threshold"]  # its enrolled side: one clip, not two


def test_verify_and_identify_decide_a_short_and_a_long_probe_at_their_own_thresholds(probes, tmp_path):
    g = Path(str(tmp_path / "g"))
    sh(f"cp -r {probes['g']} {g}", check=True)
    recs = probes["recs"]
    long, short = recs[probes["long"]], recs[probes["short"]]
    sp_long, sp_short = long["quality"]["speech_seconds"], short["quality"]["speech_seconds"]
    assert 0.5 <= sp_short < 1.0 < 3.0 < sp_long
    speakers = (g / "speakers.txt").read_text().split()
    seconds = np.load(g / "seconds.npy")
    enrolled = {s: float(t) for s, t in zip(speakers, seconds)}
    best_l, best_s = long["top"][0]["speaker"], short["top"][0]["speaker"]
    s_long, s_short = long["top"][0]["score"], short["top"][0]["score"]
    # a calibration whose thresholds straddle both scores: the long probe's below both, the short one's above both
    lo, hi = min(s_long, s_short) - 0.02, max(s_long, s_short) + 0.02
    q_long = calibration.quality_measure(enrolled[best_l], sp_long)
    q_short = calibration.quality_measure(enrolled[best_s], sp_short)
    a, b = 10.0, -7.0
    c = a * (hi - lo) / (q_long - q_short)
    tau = a * lo + b + c * q_long
    cal = _qmf_cal(c, tau, a, b, free=lo)  # the duration-free threshold accepts both
    gallery.save_calibration(g, cal)
    out = sh(f"spkid identify {probes['long']} {probes['short']} -g {g} --json", check=True)
    got = {r["key"]: r for r in map(json.loads, out.stdout.decode().splitlines())}
    rl, rs = got[probes["long"]], got[probes["short"]]
    assert rl["decision"] == best_l and rs["decision"] == "unknown"
    assert rl["threshold"] == pytest.approx(lo, abs=1e-4) and rs["threshold"] == pytest.approx(hi, abs=1e-4)
    assert rs["threshold"] > rl["threshold"]
    assert "duration-aware" in rs["threshold_source"] and f"{sp_short:.2f} s tested" in rs["threshold_source"]
    assert rs["threshold_speech_s"] == {"enroll": round(enrolled[best_s], 3), "test": round(sp_short, 3)}
    assert "duration-aware" in out.stderr.decode()
    # piped embeddings carry their quality records: the same decisions
    piped = sh(f"spkid embed {probes['long']} {probes['short']} | spkid identify -g {g} --json", check=True)
    assert [json.loads(r)["decision"] for r in piped.stdout.decode().splitlines()] == [best_l, "unknown"]
    # `spkid score` merging the records of one clip (as of shards) keeps each clip's own threshold and decision
    (tmp_path / "id.jsonl").write_bytes(out.stdout)
    both = sh(f"cat {tmp_path / 'id.jsonl'} {tmp_path / 'id.jsonl'} | spkid score --json", check=True)
    rep = json.loads(both.stdout)
    assert rep["n_clips"] == 2 and rep["threshold"] is None  # two thresholds: one per clip
    # verify: the same claim, accepted on the long probe and rejected on the short one
    for clip, who, want, thr in ((probes["long"], best_l, "accept", lo), (probes["short"], best_s, "reject", hi)):
        v = json.loads(sh(f"spkid verify {clip} -g {g} --speaker {who} --json", check=True).stdout)
        assert v["decision"] == want and v["threshold"] == pytest.approx(thr, abs=1e-4)
        assert "duration-aware" in v["threshold_source"] and v["threshold_speech_s"]["test"] == pytest.approx(
            recs[clip]["quality"]["speech_seconds"], abs=1e-3)
        quiet = sh(f"spkid verify {clip} -g {g} --speaker {who} -q")
        assert quiet.returncode == (0 if want == "accept" else 1)
    # embeddings without quality records: the clip's speech is unknown, so the duration-free threshold decides
    sh(f"spkid embed {probes['short']} -o {tmp_path / 'e.npy'}", check=True)
    emb = streams.read_embeddings(str(tmp_path / "e.npy"))
    assert emb.quality is not None and "quality" not in emb.meta
    streams.write_embeddings([str(k) for k in emb.keys], emb.values, dict(emb.meta), str(tmp_path / "plain.npy"))
    plain = json.loads(sh(f"spkid identify --from-embeddings {tmp_path / 'plain.npy'} -g {g} --json", check=True).stdout)
    assert plain["decision"] == best_s and plain["threshold"] == pytest.approx(lo)
    assert "duration-free: the test clip's speech is unknown" in plain["threshold_source"]


def test_verify_trials_writes_durations_that_calibrate(probes, tmp_path):
    """`verify --trials` writes both sides' speech seconds; `score --calibrate` fits the duration-aware part on them."""
    g = probes["g"]
    speakers = (g / "speakers.txt").read_text().split()
    clips = [*map(str, clip_files("probe")), probes["short"]]
    t = tmp_path / "trials.txt"
    t.write_text("".join(f"{s} {c} {'target' if f'/{s}/' in c or (s == '19' and 'short' in c) else 'nontarget'}\n"
                         for s in speakers for c in clips))
    out = tmp_path / "scores.txt"
    sh(f"spkid verify --trials {t} -g {g} -o {out}", check=True)
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    seconds = dict(zip(speakers, np.load(g / "seconds.npy").tolist()))
    assert all(len(r) == 6 for r in rows) and len(rows) == len(speakers) * len(clips)
    assert all(float(r[4]) == pytest.approx(seconds[r[0]], abs=1e-3) for r in rows)
    short = [r for r in rows if r[1] == probes["short"]]
    assert all(float(r[5]) == pytest.approx(probes["recs"][probes["short"]]["quality"]["speech_seconds"], abs=1e-3) for r in short)
    g2 = tmp_path / "g2"
    sh(f"cp -r {g} {g2} && spkid score --calibrate {out} -g {g2}", check=True)
    assert gallery.load_calibration(g2).qmf is not None
    # the four first columns are what they were: `spkid score` reads either
    assert json.loads(sh(f"spkid score {out} --json", check=True).stdout)["eer"] == json.loads(
        sh(f"cut -f1-4 {out} | spkid score --json", check=True).stdout)["eer"]

"""spkid.decisions: where a threshold comes from, identify's records (JSON and text lines), and report.format_table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spkid import calibration, decisions, gallery
from spkid.errors import SpkidError
from spkid.report import format_table
from spkid.trials import parse_identify


def _cal(shift: float = 0.0) -> calibration.Calibration:
    rng = np.random.default_rng(0)
    return calibration.calibrate(rng.normal(1 + shift, 1, 500), rng.normal(-1 + shift, 1, 2000), source="dev.txt")


def _gallery(tmp_path, meta: dict) -> gallery.Gallery:
    (tmp_path / "gallery.json").write_text(json.dumps(meta))
    g = gallery.empty(4, meta)
    g.path = tmp_path
    return g


def test_threshold_order_option_gallery_fixed_gallery_calibration_model(tmp_path, caplog):
    model_cal, gallery_cal = _cal(), _cal(shift=1.0)
    assert decisions.choose_threshold(0.3, None, model_cal, "m.pt", "eer", False).source == "--threshold"
    fixed = _gallery(tmp_path, {"threshold": {"score": 0.25, "source": "spkid enroll --threshold"}})
    got = decisions.choose_threshold(None, fixed, model_cal, "m.pt", "eer", False)
    assert got.score == 0.25 and got.source == f"{tmp_path}/gallery.json (set by spkid enroll --threshold)"
    g = _gallery(tmp_path, {"calibration": gallery_cal.to_dict()})
    got = decisions.choose_threshold(None, g, model_cal, "m.pt", "eer", False)
    assert got.score == gallery_cal.thresholds["eer"].score and got.source.startswith(f"the calibration in {tmp_path}/gallery.json (eer point")
    got = decisions.choose_threshold(None, _gallery(tmp_path, {}), model_cal, "m.pt", "far", True)
    assert got.score == model_cal.thresholds["far@0.01"].score
    assert got.source == "the calibration in model m.pt (far@0.01 point, fitted on 500 target / 2000 non-target trials)"
    assert "AS-normed" in caplog.text
    none = decisions.choose_threshold(None, None, None, "", "eer", True)
    assert none.score is None and none.source == decisions.NO_THRESHOLD and none.describe() == decisions.NO_THRESHOLD


def test_identify_records_decide_and_write_identify_lines():
    idx = np.array([[1, 0], [0, 1]])
    scores = np.array([[0.9, 0.4], [0.3, 0.2]], dtype=np.float32)
    recs = decisions.identify_records(["a.wav", "b.wav"], ["bob", "eve"], ["alice", "bob"], idx, scores, 1, 0.5)
    assert [r.decision for r in recs] == ["bob", "unknown"] and [r.enrolled for r in recs] == [True, False]
    assert recs[0].top == [("bob", float(np.float32(0.9)))] and recs[0].margin == float(scores[0, 0] - scores[0, 1])
    line = json.loads(recs[0].to_json())
    assert list(line) == ["key", "label", "enrolled", "top", "decision", "threshold", "margin"]
    assert parse_identify([recs[1].to_json()])[0].decision == "unknown"
    assert recs[1].to_text() == "b.wav\tunknown\t0.300000\t0.100000\talice"
    both = decisions.identify_records(["a.wav"], [None], ["alice", "bob"], idx[:1], scores[:1], 2, None)[0]
    assert both.decision == "bob" and both.enrolled is False
    assert both.to_text(candidates=True) == "a.wav\tbob\t0.900000\t0.500000\tbob\tbob:0.900000\talice:0.400000"
    one = decisions.identify_records(["c"], ["x"], ["alice"], np.array([[0]]), np.array([[0.7]]), 3, None)[0]
    assert one.margin is None and one.to_text() == "c\talice\t0.700000\t-\talice"


def test_check_cohort_needs_the_model_and_two_rows():
    rows = decisions.check_cohort(np.array([[3.0, 4.0], [0.0, 2.0]]), "ab", "ab", "c.npy")
    assert rows.dtype == np.float32 and np.allclose(rows, [[0.6, 0.8], [0.0, 1.0]])
    with pytest.raises(SpkidError, match="another model"):
        decisions.check_cohort(rows, "cd", "ab", "c.npy")
    with pytest.raises(SpkidError, match=r"--cohort c.npy: needs at least 2 embeddings, has 1"):
        decisions.check_cohort(rows[:1], "ab", "ab", "c.npy")


def test_format_table_pads_columns_and_takes_short_rows():
    assert format_table([["metric", "value"], ["eer", "0.1"], ["x"]]) == "metric  value\neer     0.1\nx\n"

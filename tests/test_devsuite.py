"""recipes/devsplit.py (the held-out split the training recipe uses) and recipes/devsuite.py's trials, conditions
and statistics (the whole suite is run by hand: see the module docstring)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, SHARED_DATA, clip_files
from spkid.metrics import eer


def _load(name: str):
    path = REPO / "recipes" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"recipes_{name}_for_tests", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    env = dict(os.environ)
    try:
        spec.loader.exec_module(mod)
    finally:  # devsuite.py sets OMP_NUM_THREADS & co. for its own process, not for the other tests
        os.environ.clear()
        os.environ.update(env)
    return mod


devsplit = _load("devsplit")
devsuite = _load("devsuite")


@pytest.fixture(scope="module")
def data() -> Path:
    need = ["librispeech_tc100", "noise", *(f"extra_speakers/{c}" for c in devsplit.EXTRA)]
    missing = [d for d in need if not (SHARED_DATA / d).is_dir()]
    if missing:
        pytest.skip(f"needs the whole development corpus, not found at {SHARED_DATA}: {', '.join(missing)} "
                    "(librispeech_tc100 and noise as in conftest.shared_data; extra_speakers: four small corpora of "
                    "other speakers, its README.md tells their sources). CI and developer machines have it beside "
                    "the checkout; a fresh clone does not")
    return SHARED_DATA


# ---------------------------------------------------------------- the split


def test_split_is_fixed_speaker_disjoint_and_covers_every_corpus(data, tmp_path):
    s = devsplit.split(data)
    assert s == devsplit.split(data)  # no state outside the rule
    train, dev = {r.label for r in s.train}, {r.label for r in s.dev}
    assert not train & dev
    assert {r.corpus for r in s.dev} == {r.corpus for r in s.train} == set(devsplit.CORPORA)
    libri = {r.speaker for r in s.dev if r.corpus == devsplit.LIBRI}
    assert len(libri) == 51 and {"19", "26", "27"} <= libri
    assert sum(r.corpus == devsplit.LIBRI for r in s.dev) == 172  # the bundled model's card: 172 test files
    for corpus in devsplit.EXTRA:
        rows = devsplit.extra_rows(data, corpus)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.speaker] = counts.get(r.speaker, 0) + 1
        held = {r.speaker for r in s.dev if r.corpus == corpus}
        eligible = sum(c >= 2 for c in counts.values())
        assert len(held) == devsplit.held_out_count(eligible) >= min(8, eligible)
        assert all(counts[h] >= 2 for h in held)
        assert len(rows) == sum(r.corpus == corpus for r in s.train + s.dev)  # every file is on one side
    assert set(s.noise_train).isdisjoint(s.noise_dev)
    assert sorted(Path(f).name for f in s.noise_train + s.noise_dev) == sorted(devsplit.NOISE_CLIPS)
    assert all(Path(r.path).is_file() for r in s.dev) and all(Path(f).is_file() for f in s.noise_dev)

    # the script writes the same split; train_all.txt never names a held-out speaker or file
    out = tmp_path / "split"
    subprocess.run([sys.executable, str(REPO / "recipes" / "devsplit.py"), str(out), "--data", str(data)],
                   check=True, capture_output=True, text=True)
    tr = [line.split("\t") for line in (out / "train_all.txt").read_text().splitlines()]
    dv = [line.split("\t") for line in (out / "dev.txt").read_text().splitlines()]
    assert [p for p, _ in dv] == [r.path for r in s.dev] and [lab for _, lab in tr] == [r.label for r in s.train]
    assert not {lab for _, lab in tr} & {lab for _, lab in dv} and not {p for p, _ in tr} & {p for p, _ in dv}
    assert (out / "noise_train.txt").read_text().split() == s.noise_train


def test_held_out_rule():
    assert [devsplit.held_out_count(n) for n in (1, 4, 8, 30, 34, 68, 250)] == [1, 4, 8, 8, 9, 17, 63]
    rows = [devsplit.Row(f"/x/{s}/{u}.flac", "c", s) for s in "abcdefghijkl" for u in range(2)]
    rows += [devsplit.Row("/x/single/0.flac", "c", "single")]
    held = devsplit.held_out_extra(rows, "c")
    assert len(held) == 8 and "single" not in held  # 12 eligible: max(3, 8)
    assert held == devsplit.held_out_extra(rows[::-1], "c")  # the order of the files does not matter
    assert held == set(sorted("abcdefghijkl", key=lambda s: devsplit.speaker_hash("c", s))[:8])


# ---------------------------------------------------------------- trials and statistics


def test_corpus_pairs_keep_every_target_and_a_fixed_sample_of_nontargets():
    speakers = ["a", "a", "a", "b", "b", "c", "c", "d"]
    idx = list(range(10, 18))
    a, b, t = devsuite.corpus_pairs(idx, speakers, 5, "x")
    assert t.sum() == 3 + 1 + 1 and (~t).sum() == 5 and np.all(a < b)
    assert all((speakers[i - 10] == speakers[j - 10]) == tt for i, j, tt in zip(a, b, t))
    again = devsuite.corpus_pairs(idx, speakers, 5, "x")
    assert all(np.array_equal(u, v) for u, v in zip((a, b, t), again))
    _, _, t_all = devsuite.corpus_pairs(idx, speakers, 1000, "x")
    assert len(t_all) == 28


def test_condition_trials_degrade_the_probe_only():
    """Two corpora of 2 speakers x 2 files; one condition, applied to librispeech_tc100's probes only."""
    it = devsuite.Item
    items = [it(f"clean/{c}/{s}/{u}", f"/{c}/{s}/{u}.flac", c, f"{c}:{s}", "clean")
             for c in ("librispeech_tc100", "dspspeech20") for s in "ab" for u in "12"]
    cond = devsuite.CONDITION_NAMES[1]
    items += [it(f"{cond}/librispeech_tc100/{s}/{u}", f"/x/{s}/{u}.flac", "librispeech_tc100", f"librispeech_tc100:{s}",
                 cond) for s in "ab" for u in "12"]
    tr = devsuite.build_trials(items, 1000)
    clean = tr.group == "librispeech_tc100|clean"
    degraded = tr.group == f"librispeech_tc100|{cond}"
    assert clean.sum() == degraded.sum() == 6 and (tr.group == "dspspeech20|clean").sum() == 6 and len(tr.a) == 18
    assert np.array_equal(tr.a[clean], tr.a[degraded]) and np.array_equal(tr.target[clean], tr.target[degraded])
    assert all(items[n].condition == cond and items[n].key.endswith(items[m].key.split("/", 1)[1])
               for n, m in zip(tr.b[degraded], tr.b[clean]))
    speech = np.array([0.5, 2.0, 4.0, 4.0, 0.8, 0.9, 1.5, 1.5] + [4.0] * 4)
    rows = dict(devsuite.parts(items, tr, speech))
    assert rows["speech < 1 s"].sum() == 3 + 5  # librispeech: the pairs with its 0.5 s file; dspspeech20: with 0.8 or 0.9 s
    assert rows["speech 1-3 s"].sum() == 2 + 1 and rows["speech > 3 s"].sum() == 1
    assert rows[f"probe: {cond}"].sum() == 6 and rows["all corpora (pooled)"].sum() == 12


def test_the_word_cut_degrades_both_sides_of_the_one_word_corpora_only():
    """The digits analogue: speech_commands' trials again with both files replaced by their cut copies; the read
    corpus gets none, and the table names its reference and the condition."""
    it = devsuite.Item
    cond = next(c.name for c in devsuite.CONDITIONS.values() if c.both)
    assert devsuite.CONDITIONS[cond].corpora == devsuite.WORD_CORPORA
    items = [it(f"clean/{c}/{s}/{u}", f"/{c}/{s}/{u}.flac", c, f"{c}:{s}", "clean")
             for c in ("librispeech_tc100", "speech_commands") for s in "ab" for u in "12"]
    items += [it(f"{cond}/speech_commands/{s}/{u}", f"/x/{s}/{u}.flac", "speech_commands", f"speech_commands:{s}", cond)
              for s in "ab" for u in "12"]
    tr = devsuite.build_trials(items, 1000)
    clean, cut = tr.group == "speech_commands|clean", tr.group == f"speech_commands|{cond}"
    assert clean.sum() == cut.sum() == 6 and len(tr.a) == 18 and np.array_equal(tr.target[clean], tr.target[cut])
    for side in (tr.a, tr.b):
        assert all(items[n].condition == cond and items[n].key.split("/", 1)[1] == items[m].key.split("/", 1)[1]
                   for n, m in zip(side[cut], side[clean]))
    rows = dict(devsuite.parts(items, tr, np.ones(len(items))))
    assert rows[f"both sides: {cond}"].sum() == 6
    reference = [n for n in rows if n.startswith("clean (speech_commands")]
    assert len(reference) == 1 and np.array_equal(rows[reference[0]], clean)


def test_weighted_eer_matches_spkid_metrics_and_replicated_trials():
    rng = np.random.default_rng(0)
    s = np.round(np.r_[rng.normal(1, 1, 60), rng.normal(-1, 1, 300)], 1)  # rounded: ties between classes
    t = np.r_[np.ones(60, bool), np.zeros(300, bool)]
    order = np.argsort(s, kind="stable")
    got = devsuite.eer_sorted(s[order], t[order], np.ones(len(s)))[0]
    assert got == pytest.approx(eer(s[t], s[~t])[0], abs=1e-12)
    # integer weights are replicated trials
    w = rng.integers(0, 4, len(s)).astype(float)
    rep_s, rep_t = np.repeat(s, w.astype(int)), np.repeat(t, w.astype(int))
    assert devsuite.eer_sorted(s[order], t[order], w[order])[0] == pytest.approx(eer(rep_s[rep_t], rep_s[~rep_t])[0])
    # a weighting without targets has no EER
    assert np.isnan(devsuite.eer_sorted(s[order], t[order], np.where(t[order], 0.0, 1.0))[0])


def test_speaker_bootstrap_weights_are_drawn_speakers():
    """Drawing speaker 0 twice, 1 once and 2 never keeps 0's targets twice, its non-targets with 1 twice and drops 2."""
    spk_a, spk_b = np.array([0, 0, 1, 0, 0, 1]), np.array([0, 1, 1, 2, 1, 2])
    target = spk_a == spk_b
    w = devsuite.speaker_weights(spk_a, spk_b, target, np.array([[2, 1, 0]]))
    assert w.tolist() == [[2, 2, 1, 0, 2, 0]]


def test_score_part_on_a_synthetic_case():
    """Four speakers, two files each; system `good` separates them, `bad` inverts one target; `same` equals `good`."""
    spk = np.repeat(np.arange(4), 2)
    i, j = np.triu_indices(8, 1)
    a, b = spk[i], spk[j]
    target = a == b
    good = np.where(target, 0.9, 0.1) + 0.01 * np.arange(len(a)) / len(a)
    bad = good.copy()
    bad[np.flatnonzero(target)[0]] = 0.0
    r = devsuite.score_part("p", a, b, target, {"default": good, "bad": bad, "same": good.copy()}, 200, 0, "default")
    assert (r.n_speakers, r.n_target, r.n_nontarget) == (4, 4, 24)
    assert r.eer["default"] == 0.0 and r.ci["default"] == (0.0, 0.0)
    assert r.eer["bad"] == pytest.approx(eer(bad[target], bad[~target])[0])
    lo, hi = r.ci["bad"]
    assert 0.0 <= lo <= r.eer["bad"] <= hi <= 1.0 and hi > lo  # replicates that draw speaker 0 often fail more
    assert r.diff_ci["same"] == (0.0, 0.0, 0.0)
    assert r.diff_ci["bad"][0] == pytest.approx(r.eer["bad"]) and r.diff_ci["bad"][1] >= 0.0
    text = devsuite.table([r], ["default", "bad"], {"default": "bundled", "bad": "worse"})
    assert "| p | 4 | 4 / 24 | **0.00 (0.00–0.00)** |" in text
    assert "n/a" in devsuite.table([devsuite.PartResult("q", 1, 1, 0, {"x": np.nan}, {"x": (np.nan, np.nan)}, {})],
                                   ["x"], {"x": "x"})


# ---------------------------------------------------------------- conditions


def test_conditions_degrade_real_speech(tmp_path):
    """Each condition on a real clip: level and clipping exact, tempo changes the length, telephone is 8 kHz."""
    src = str(clip_files("enroll")[0])
    x, sr = sf.read(src, dtype="float64")
    by_name = {c.name: c for c in devsuite.available_conditions([str(tmp_path / "unused.flac")])}
    rng = np.random.default_rng(0)
    out = tmp_path / "o.flac"
    by_name["level -25 dB"].make(src, out, rng)
    y, _ = sf.read(out, dtype="float64")
    assert 20 * np.log10(np.sqrt(np.mean(y**2)) / np.sqrt(np.mean(x**2))) == pytest.approx(-25, abs=0.1)
    by_name["level +15 dB clipped"].make(src, out, rng)
    y, _ = sf.read(out, dtype="float64")
    assert np.mean(np.abs(y) >= 0.999) > 0.001  # spkid's `clipped` flag
    by_name["reverberation"].make(src, out, rng)
    y, _ = sf.read(out, dtype="float64")
    assert len(y) == len(x) and not np.allclose(y, x, atol=1e-3)
    if "tempo +10 %" not in by_name:
        pytest.skip("sox is not installed: its conditions are skipped by the suite too")
    by_name["tempo +10 %"].make(src, out, rng)
    assert sf.info(str(out)).frames == pytest.approx(len(x) / 1.1, rel=0.02)
    again = tmp_path / "again.flac"
    by_name["tempo +10 %"].make(src, again, rng)
    assert sf.read(again)[0].tobytes() == sf.read(out)[0].tobytes()  # sox -R: the same dither every run
    by_name["telephone GSM 8 kHz"].make(src, out, rng)
    assert sf.info(str(out)).samplerate == 8000


def test_word_cut_keeps_the_loudest_word_at_8_khz(tmp_path):
    """A word between two long silences: the cut is 0.4 s at 8 kHz, taken from the word, not from the silence."""
    from scipy.signal import resample_poly

    x, sr = sf.read(str(clip_files("enroll")[0]), dtype="float64")
    word = x[sr : sr + int(0.6 * sr)]
    src = tmp_path / "word.flac"
    sf.write(src, np.r_[np.zeros(2 * sr), word, np.zeros(2 * sr)], sr)
    out = tmp_path / "o.flac"
    cond = next(c for c in devsuite.available_conditions([]) if c.both)
    cond.make(str(src), out, np.random.default_rng(0))
    y, rate = sf.read(out, dtype="float64")
    assert rate == 8000 and len(y) == int(devsuite.WORD_CUT_S * 8000)
    speech = resample_poly(word, 1, 2)
    assert np.sqrt(np.mean(y**2)) > 0.5 * np.sqrt(np.mean(speech**2))  # voice, not the silence around it


def test_noise_condition_uses_held_out_noise_at_5_db(tmp_path):
    noise = tmp_path / "noise.flac"
    sf.write(noise, np.random.default_rng(1).normal(0, 0.1, 48000), 16000)
    src = str(clip_files("enroll")[0])
    cond = next(c for c in devsuite.available_conditions([str(noise)]) if c.name == "noise 5 dB SNR")
    out = tmp_path / "o.flac"
    cond.make(src, out, np.random.default_rng(0))
    x, _ = sf.read(src, dtype="float64")
    y, _ = sf.read(out, dtype="float64")
    g = float(x @ y / (x @ x))  # the speech's scale in the mix (rescaled if the mix would clip)
    snr = 10 * np.log10(np.mean((g * x) ** 2) / np.mean((y - g * x) ** 2))
    assert snr == pytest.approx(5.0, abs=0.3)

"""spkid.vad: windows and spans (against brute force), post-processing known answers, input checks, the shipped
model on real speech with noise and on held-out music, on music and sound effects never heard (where installed), on
a real recording with human labels (tests/data), the silero engine, no torch on the path, and the training script
(networks put together by --combine included)."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO
from spkid import vad, vadfront
from spkid.errors import SpkidError

SR = 16000


def brute_best(segs: np.ndarray, n: int, length: int) -> tuple[int, int]:
    mask = np.zeros(n, np.int64)
    for s, e in segs:
        mask[s:e] = 1
    c = np.concatenate([[0], np.cumsum(mask)])
    cover = c[length:] - c[: n - length + 1]
    start = int(np.argmax(cover))
    return start, start + length


@st.composite
def segment_sets(draw):
    n = draw(st.integers(50, 400))
    cuts = sorted(set(draw(st.lists(st.integers(0, n), min_size=2, max_size=12))))
    pairs = [(a, b) for a, b in zip(cuts[::2], cuts[1::2]) if b > a]
    return np.array(pairs, np.int64).reshape(-1, 2), n


@settings(max_examples=200, deadline=None)
@given(segment_sets(), st.integers(1, 400))
def test_best_window_matches_brute_force(case, length):
    segs, n = case
    got = vad.best_window(segs, n, length)
    if len(segs) == 0:
        assert got == (0, 0)
    elif n <= length:
        assert got == (0, n)
    else:
        assert got == brute_best(segs, n, length)


def test_best_window_known_answers():
    segs = np.array([[100, 200], [1000, 1500]])
    assert vad.best_window(segs, 3000, 600) == (900, 1500)  # earliest window holding all 500 voiced samples
    assert vad.best_window(segs, 3000, 100) == (100, 200)
    assert vad.best_window(segs, 400, 16000) == (0, 400)  # shorter than LENGTH: the whole file
    assert vad.best_window(np.zeros((0, 2)), 3000, 600) == (0, 0)
    with pytest.raises(SpkidError):
        vad.best_window(segs, 3000, 0)


def test_span_and_voiced():
    segs = np.array([[10, 20], [30, 35]])
    assert vad.span(segs) == (10, 35)
    assert vad.span(np.zeros((0, 2))) == (0, 0)
    x = np.arange(50)
    assert vad.voiced(x, segs).tolist() == list(range(10, 20)) + list(range(30, 35))
    assert len(vad.voiced(x, np.zeros((0, 2)))) == 0


def test_post_processing_known_answers():
    cfg = vad.VadConfig(frame=0.01, hop=0.01, threshold=0.5, min_speech=0.1, min_silence=0.2, padding=0.0)
    p = np.zeros(300)
    p[20:60] = 0.9  # 400 ms of speech
    p[70:100] = 0.9  # after a 100 ms pause: filled
    p[150:155] = 0.9  # 50 ms blip: dropped
    p[200:260] = 0.9
    p[260:280] = 0.4  # hysteresis: above the offset threshold (0.35), stays speech
    p[280:300] = 0.3
    segs = vad.segments_from_prob(p, 300 * 160, cfg)
    assert segs.tolist() == [[20 * 160, 100 * 160], [200 * 160, 280 * 160]]
    padded = vad.segments_from_prob(p, 300 * 160, vad.VadConfig(frame=0.01, padding=0.5))
    assert padded.tolist() == [[0, 300 * 160]]  # 0.5 s padding merges everything and is clipped to the signal
    coarse = vad.segments_from_prob(p, 300 * 160, vad.VadConfig(frame=0.04, hop=0.04, padding=0.0))
    assert coarse.dtype == np.int64 and np.all(coarse % 640 == 0)
    assert vad.segments_from_prob(np.full(100, 0.4), 16000, cfg).shape == (0, 2)


def test_config_is_checked():
    for bad in (dict(hop=0.015), dict(hop=0.02, frame=0.01), dict(threshold=1.5), dict(min_speech=-1),
                dict(threshold=0.3, neg_threshold=0.6)):
        with pytest.raises(SpkidError):
            vad.VadConfig(**bad)


def test_input_is_checked_with_a_hint():
    x = np.zeros(SR, np.float32)
    with pytest.raises(SpkidError, match="spkid convert"):
        vad.speech_prob(x, 8000)
    with pytest.raises(SpkidError, match="spkid convert"):
        vad.segments(np.zeros((SR, 2), np.float32), SR)
    assert vad.speech_prob(np.zeros((SR, 1), np.float32), SR).shape == (100,)
    assert vad.speech_prob((x * 0).astype(np.int16), SR).shape == (100,)


def test_frontend_puts_a_tone_in_its_band():
    fe = vadfront.Frontend()
    t = np.arange(SR) / SR
    feats = fe(np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    assert feats.shape == (SR // fe.hop, fe.n_mels + fe.n_lin)
    _, mel = fe.filters
    bin_1k = int(1000 / (SR / fe.n_fft))
    assert np.argmax(feats[10, : fe.n_mels]) == np.argmax(mel[bin_1k])
    assert np.argmax(feats[10, fe.n_mels :]) + fe.lin_from == bin_1k


def test_prob_shapes_and_silence():
    for n in (0, 100, 159, 160, 16000, 16321):
        p = vad.speech_prob(np.zeros(n, np.float32), SR)
        assert p.shape == (n // 160,) and p.dtype == np.float32
    rng = np.random.default_rng(0)
    assert vad.segments(np.zeros(3 * SR, np.float32), SR).shape == (0, 2)
    assert vad.segments(1e-4 * rng.standard_normal(3 * SR).astype(np.float32), SR).shape == (0, 2)
    assert vad.segments(0.1 * rng.standard_normal(3 * SR).astype(np.float32), SR).shape == (0, 2)


def test_shipped_model_is_small_and_described():
    assert vad.MODEL_PATH.stat().st_size < 1_000_000
    m = vad.load_model()
    assert m.meta["format"] == "spkid-vad/2" and m.meta["frontend"]["hop"] % 160 == 0
    # the network trained without sound events and two trained with them (README, "VAD model")
    assert [net["args"].get("event_share", 0) for net in m.meta["members"]] == [0, 0.5, 0.5] and len(m.nets) == 3


def test_no_torch_on_the_path():
    code = ("import sys, numpy as np; from spkid import vad; "
            "vad.segments(np.zeros(16000, np.float32), 16000); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "vad.py"
    spec = importlib.util.spec_from_file_location("bench_vad_for_tests", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_accuracy_on_real_speech_in_noise_and_music(shared_data):
    """Held-out material: speech in noise and music at 10 dB (a loose bound), and the pure held-out music,
    effects and noise, none flagged over 5 % (bench/vad.py measures the same thing in full)."""
    bench = _bench()
    rng = np.random.default_rng(3)
    clips = bench.bench_nonspeech()
    tap = next(c for c in clips if c.name == "running_tap.flac")
    music = next(c for c in clips if c.kind == "music")
    agree = []
    for i, spk in enumerate(bench.bench_speakers()[:4]):
        speech, ref = bench.make_session(rng, bench.speaker_files(spk)[:2])
        y = bench.mix(speech, ref, bench.crop(rng, (tap, music)[i % 2].signal, len(speech)), 10)
        hyp = bench.frames_from_segments(vad.segments(y.astype(np.float32), SR), len(ref))
        k = bench.scored(ref)
        agree.append(np.mean(hyp[k] == ref[k]))
    assert np.mean(agree) > 0.88, agree
    flagged = {c.name: np.mean(bench.frames_from_segments(vad.segments(c.signal, SR), len(c.signal) // 160))
               for c in clips}
    assert max(flagged.values()) <= 0.05, flagged  # the goal, on every held-out clip (music never heard included)


def test_never_heard_music_and_sound_effects():
    """bench/vad.py's music and sound effects never heard (Debian hyperrogue-music, btanks-data and lincity-ng-data,
    never trained on; the effects chosen with silero-vad): no music track over 5 %, and at most 12 of the 189
    effects (the shipped mean of three networks: 9; the words network alone: 24). The goal, none over 5 %, is
    not met yet (README, "VAD model"); this holds what is."""
    bench = _bench()
    if not importlib.util.find_spec("silero_vad"):
        pytest.skip("silero-vad is not installed (the bench extra): it chooses the wordless effects")
    music, effects = bench.unseen_music(), bench.unseen_effects()
    if len(music) != 17 or len(effects) != 189:
        pytest.skip("needs the Debian packages hyperrogue-music, btanks-data and lincity-ng-data (README, VAD model)")

    def flagged(c):
        return np.mean(bench.frames_from_segments(vad.segments(c.signal, SR), len(c.signal) // 160))

    assert max(map(flagged, music)) <= 0.05
    over = [c.name for c in effects if flagged(c) > 0.05]
    assert len(over) <= 12, over


def test_training_script_smoke(shared_data, tmp_path):
    """scripts/train_vad.py end to end on a few examples: extra music from a folder (ogg and wav, stereo, 44.1 kHz)
    and, with the silero teacher, sound effects, the exported numpy model equal to torch's (checked inside the
    script), loadable by spkid, and a dev report; then its refusals."""
    script = [sys.executable, REPO / "scripts" / "train_vad.py"]
    music = tmp_path / "music"
    music.mkdir()
    t = np.arange(44100 * 3) / 44100
    tune = 0.3 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 2 * t) > 0)
    sf.write(music / "a.ogg", np.stack([tune, tune], axis=1), 44100)
    sf.write(music / "b.wav", tune[:30000], 44100)
    effects = tmp_path / "effects"  # a knock and a rising whistle: sound events without words
    effects.mkdir()
    rng = np.random.default_rng(0)
    sf.write(effects / "knock.wav", rng.standard_normal(8000) * np.exp(-np.arange(8000) / 400) * 0.3, 16000)
    sf.write(effects / "whistle.ogg", 0.2 * np.sin(2 * np.pi * np.cumsum(np.linspace(900, 2400, 22050)) / 22050), 22050)
    out = tmp_path / "vad.npz"
    teacher = "silero" if importlib.util.find_spec("silero_vad") else "none"  # silero-vad: the [bench] extra
    proc = subprocess.run([*script, "--examples", "40", "--epochs", "1", "--extra-music", music, "--dev-music", music,
                           "--extra-effects", effects, "--dev-effects", effects, "--event-share", "0.5",
                           "--teacher", teacher, "-o", out],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stderr.strip().splitlines()[-1])["dev"]
    assert report["dev_music_over_5%"].endswith("/2") and 0 <= report["agreement@10dB"] <= 1
    if teacher == "silero":  # the effects are used with the teacher only (it picks those without words)
        assert report["dev_effects_over_5%"].endswith("/2") and "effects: 2 wordless clips" in proc.stderr
        assert 0 <= report["isolated_recall_wideband"] <= 1 and 0 <= report["isolated_recall_8kHz"] <= 1
    model = vad.VadModel(out)
    assert model.meta["args"]["extra_music"] == [str(music)] and model.meta["format"] == "spkid-vad/1"
    assert vad.speech_prob(np.zeros(16000, np.float32), SR, model).shape == (100,)
    no_output = subprocess.run([*script, "--teacher", teacher], capture_output=True, text=True)
    assert no_output.returncode == 2 and "-o/--output is required when training" in no_output.stderr
    script = [*script, "--teacher", teacher, "-o", tmp_path / "never.npz"]
    missing = subprocess.run([*script, "--extra-music", tmp_path / "none"], capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr == f"train_vad.py: music folder not found: {tmp_path / 'none'}\n"
    (tmp_path / "empty").mkdir()
    empty = subprocess.run([*script, "--extra-music", tmp_path / "empty"], capture_output=True, text=True)
    assert empty.returncode == 1 and empty.stderr == f"train_vad.py: no audio files under {tmp_path / 'empty'}\n"
    few = subprocess.run([*script, "--examples", "8", "--extra-music", music], capture_output=True, text=True)
    assert few.returncode == 2 and "--examples (8) must be at least --batch (32)" in few.stderr
    share = subprocess.run([*script, "--quiet-share", "1.5", "--extra-music", music], capture_output=True, text=True)
    assert share.returncode == 2 and "--quiet-share must be in [0, 1], got 1.5" in share.stderr
    share = subprocess.run([*script, "--event-share", "-0.1", "--extra-music", music], capture_output=True, text=True)
    assert share.returncode == 2 and "--event-share must be in [0, 1], got -0.1" in share.stderr
    depth = subprocess.run([*script, "--turn-share", "0.2", "--turn-db", "-5"], capture_output=True, text=True)
    assert depth.returncode == 2 and "--turn-db is dB down and must be >= 0, got -5.0" in depth.stderr
    if teacher == "silero":
        gone = subprocess.run([*script, "--extra-music", music, "--event-share", "0.1",
                               "--extra-effects", tmp_path / "none"], capture_output=True, text=True)
        assert gone.returncode == 1 and gone.stderr == f"train_vad.py: effects folder not found: {tmp_path / 'none'}\n"


def test_training_script_help():
    """`scripts/train_vad.py --help` prints every option (a bare % in a help text once made argparse fail here)."""
    proc = subprocess.run([sys.executable, REPO / "scripts" / "train_vad.py", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "--event-share" in proc.stdout and "take 25% of the utterances" in proc.stdout


def _train_vad():
    spec = importlib.util.spec_from_file_location("train_vad_for_tests", REPO / "scripts" / "train_vad.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _one_network(path, out, **meta_changes):
    """A copy of a one-network model file with its head's bias moved by 1 (another network) and `meta_changes`."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"]))
    arrays["head.b"] = arrays["head.b"] + 1.0
    np.savez(out, meta=np.array(json.dumps(dict(meta, **meta_changes))), **arrays)
    return out


def test_training_turns_at_different_levels_stay_speech():
    """`--turn-share`'s sessions (`speech_session(turn_db=...)`): each utterance is played up to `turn_db` dB quieter
    than the +-6 dB of gain every utterance gets, so the loudest and quietest turns lie further apart, and all of
    every turn is still speech in the labels."""
    from types import SimpleNamespace

    tv = _train_vad()
    tone = (0.1 * np.sin(2 * np.pi * 200 * np.arange(8000) / SR)).astype(np.float32)  # one 0.5 s utterance
    pools = SimpleNamespace(speech=[tone], extra=[])
    n = 600 * SR

    def turn_levels(turn_db):
        rng = np.random.default_rng(3)
        x, lab = tv.speech_session(rng, pools, n, turn_db=turn_db)
        rms = np.sqrt(np.mean(x[: len(lab) * 160].reshape(-1, 160) ** 2, axis=1))
        assert (lab == (rms > 0)).mean() > 0.99  # every sounding frame is speech, every silent one is not
        db = 20 * np.log10(rms[lab & (rms > 0)])
        return np.percentile(db, 99.5) - np.percentile(db, 0.5)

    plain, turns = turn_levels(0.0), turn_levels(25.0)
    assert 10 < plain < 13.5 and 30 < turns < 38.5, (plain, turns)


def test_distilled_targets_move_toward_the_model(tmp_path):
    """`scripts/train_vad.py --distill NPZ --distill-weight W`: each example's targets move W of the way to that
    model's probabilities on its features (the shipped three networks' mean, for one network to learn); a file
    that is not a VAD model, or one on another front end, is refused in one line before any data is made."""
    tv = _train_vad()
    model = vad.load_model()
    x, _ = sf.read(REPO / "tests" / "data" / "pyannote_sample.flac", dtype="float32")
    feats = np.stack([model.features(x[: 6 * SR]), model.features(x[6 * SR : 12 * SR])])  # two 6 s examples
    labels = np.zeros(feats.shape[:2], np.float32)
    labels[:, 100:200] = 1.0
    want = np.stack([model.forward(f) for f in feats])
    assert 0.2 < want.mean() < 0.8  # speech and pauses: the model's probabilities are not the labels
    np.testing.assert_allclose(tv.distilled(model, feats, labels, 1.0), want, atol=1e-6)
    np.testing.assert_allclose(tv.distilled(model, feats, labels, 0.3), 0.7 * labels + 0.3 * want, atol=1e-6)
    np.testing.assert_array_equal(tv.distilled(model, feats, labels, 0.0), labels)
    other = _one_network(vad.EMBED_MODEL_PATH, tmp_path / "other.npz",
                         frontend=dict(vad.VadModel(vad.EMBED_MODEL_PATH).meta["frontend"], hop=640))
    (tmp_path / "notes.npz").write_text("not a model")
    script = [sys.executable, REPO / "scripts" / "train_vad.py", "-o", tmp_path / "never.npz"]
    for args, code, why in (
            (["--distill", other], 1, f"train_vad.py: --distill: {other}: its front end is not this script's\n"),
            (["--distill", tmp_path / "notes.npz"], 1, f"train_vad.py: --distill: {tmp_path / 'notes.npz'}: cannot"),
            (["--distill", other, "--distill-weight", "1.5"], 2, "--distill-weight must be in [0, 1], got 1.5")):
        proc = subprocess.run([*script, *args], capture_output=True, text=True)
        assert proc.returncode == code and why in proc.stderr, proc.stderr
        assert code == 2 or proc.stderr.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "never.npz").exists()


def test_combined_networks_average_their_probabilities(tmp_path):
    """`scripts/train_vad.py --combine`: one model file whose probability is the weighted mean of its networks' on
    real speech, each network's metadata kept, the shipped model's form; a file that is not one network, or one on
    another front end, is refused in one line and nothing is written."""
    tv = _train_vad()
    a, b = vad.EMBED_MODEL_PATH, _one_network(vad.EMBED_MODEL_PATH, tmp_path / "b.npz")
    out = tmp_path / "both.npz"
    tv.combine([a, b], [3.0, 1.0], out)
    x, _ = sf.read(REPO / "tests" / "data" / "pyannote_sample.flac", dtype="float32")
    pa, pb = (vad.speech_prob(x, SR, vad.VadModel(p)) for p in (a, b))
    both = vad.VadModel(out)
    assert not np.allclose(pa, pb, atol=0.05)
    np.testing.assert_allclose(vad.speech_prob(x, SR, both), 0.75 * pa + 0.25 * pb, atol=1e-5)
    assert both.meta["format"] == "spkid-vad/2" and both.meta["weights"] == [0.75, 0.25]
    assert [m["file"] for m in both.meta["members"]] == [a.name, "b.npz"]
    other = _one_network(a, tmp_path / "other.npz", frontend=dict(both.meta["frontend"], n_mels=40))
    for bad, why in ((out, "not one network (format spkid-vad/2)"), (other, "its front end differs from")):
        with pytest.raises(SystemExit, match=re.escape(f"train_vad.py: {bad}: {why}")):
            tv.combine([a, bad], [1.0, 1.0], tmp_path / "never.npz")
    assert not (tmp_path / "never.npz").exists() and not list(tmp_path.glob("*.tmp.npz"))
    script = [sys.executable, REPO / "scripts" / "train_vad.py", "-o", tmp_path / "never.npz", "--combine"]
    for args, why in (([a, b, "--weights", "1"], "--weights: one positive weight per --combine file (2), got [1.0]"),
                      ([a, b, "--weights", "1", "0"], "--weights: one positive weight per --combine file (2)"),
                      ([a, tmp_path / "gone.npz"], f"--combine: {tmp_path / 'gone.npz'} not found")):
        proc = subprocess.run([*script, *args], capture_output=True, text=True)
        assert proc.returncode == 2 and f"train_vad.py: error: {why}" in proc.stderr, proc.stderr
    assert not (tmp_path / "never.npz").exists()


def test_real_labelled_recording_agrees_with_its_labels():
    """The pyannote sample (tests/data, MIT): a real two-speaker recording with human turns. At the default
    settings `spkid vad --segments` must match the labels outside a 100 ms collar (bench/vad.py's real section)."""
    bench = _bench()
    (rec,) = bench.real_labelled()
    score = bench.score_real(lambda x: bench.frames_from_segments(vad.segments(x, SR), len(x) // 160), [rec])
    assert score["agreement"] >= 0.975 and score["false_alarm"] <= 0.08 and score["miss"] <= 0.01, score


def test_bench_real_sets_read_multi_recording_rttm_and_refuse_a_wrong_download(tmp_path, capsys):
    """bench/vad.py's second real set comes from one RTTM file per split, each naming several recordings; its
    download is checked against the pinned sha256 before anything is unpacked (no network here: a tarball of the
    expected name but other bytes is already in the cache)."""
    bench = _bench()
    turns = bench.rttm_turns("SPEAKER a 1 0.50 1.00 <NA> <NA> s1 <NA> <NA>\n"
                             "SPEAKER b 1 0.00 0.20 <NA> <NA> s2 <NA> <NA>\nSPEAKER a 1 1.20 0.30 <NA> <NA> s3 <NA> <NA>\n")
    assert turns == {"a": [(0.5, 1.0), (1.2, 0.3)], "b": [(0.0, 0.2)]}
    mask = bench.turn_labels(turns["a"], 200)
    assert mask[50:150].all() and not mask[:50].any() and not mask[150:].any()
    version = bench.PYANNOTE_SDIST[1]
    (tmp_path / f"pyannote_audio-{version}.tar.gz").write_bytes(b"not the release")
    assert bench.fetch_pyannote_tests(tmp_path) is None
    err = capsys.readouterr().err
    assert err.startswith(f"# {tmp_path / f'pyannote_audio-{version}.tar.gz'}: sha256 is not ") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"pyannote_audio-{version}.tar.gz"]


def test_silero_engine_without_torch():
    """`--engine silero` (silero-vad's weights through onnxruntime) on the real sample: no torch imported, 10 ms
    probabilities in [0, 1], and segments that match the human labels."""
    pytest.importorskip("onnxruntime")
    if importlib.util.find_spec("silero_vad") is None:
        pytest.skip("silero-vad not installed (pip install silero-vad --no-deps)")
    code = ("import sys, numpy as np, soundfile as sf; from spkid import vadsilero; "
            "x, _ = sf.read(sys.argv[1], dtype='float32'); p = vadsilero.speech_prob(x); "
            "assert p.shape == (len(x) // 160,) and 0 <= p.min() and p.max() <= 1; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(vadsilero.segments(x).tolist())")
    out = subprocess.run([sys.executable, "-c", code, REPO / "tests" / "data" / "pyannote_sample.flac"],
                         check=True, capture_output=True, text=True).stdout
    bench = _bench()
    (rec,) = bench.real_labelled()
    segs = np.array(json.loads(out), np.int64).reshape(-1, 2)
    score = bench.score_real(lambda x: bench.frames_from_segments(segs, len(x) // 160), [rec])
    assert score["agreement"] >= 0.99, score
    cli = subprocess.run([sys.executable, "-m", "spkid", "vad", "--engine", "silero", "--segments",
                          REPO / "tests" / "data" / "pyannote_sample.flac"], check=True, capture_output=True).stdout
    rows = np.load(io.BytesIO(cli), allow_pickle=False)
    assert rows.dtype == np.int64 and rows.shape[1] == 3 and set(rows[:, 0].tolist()) == {0}
    score = bench.score_real(lambda x: bench.frames_from_segments(rows[:, 1:], len(x) // 160), [rec])
    assert score["agreement"] >= 0.99, score


def test_silero_engine_without_its_package_is_one_line(tmp_path):
    """Where silero-vad is not installed (as in CI), `--engine silero` fails once, before reading any file: one
    line naming the package to install, exit 1, nothing on stdout."""
    if importlib.util.find_spec("silero_vad") is not None:
        pytest.skip("silero-vad is installed: test_silero_engine_without_torch covers the engine")
    out = tmp_path / "segs.npy"
    proc = subprocess.run([sys.executable, "-m", "spkid", "vad", "--engine", "silero", "--segments", "-o", out,
                           REPO / "tests" / "data" / "pyannote_sample.flac"], capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and proc.stdout == "" and not out.exists(), proc.stderr
    assert len(lines) == 1 and lines[0].startswith("spkid vad: error:") and "pip install silero-vad --no-deps" in lines[0]

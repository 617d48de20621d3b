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


def test_the_bundled_model_records_the_ensemble_it_is():
    spec, _ = modelfile.read(REPO / "spkid" / "data" / "default_model.pt")
    members = spec.training["ensemble"]
    assert [(r["model"], r["weight"]) for r in members] == [("librispeech.pt", 0.7), ("multi.pt", 0.15), ("broad.pt", 0.15)]
    assert spec.model["name"] == "ensemble" and spec.model["kwargs"]["weights"] == [0.7, 0.15, 0.15]
    assert spec.model["kwargs"]["dim"] == 256 and spec.training["projection"]["variance_kept"] > 0.95
    assert spec.calibration and spec.calibration["qmf"]["c"] < 0  # duration-aware: short trials get lower thresholds


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

"""recipes/soup.py: the weight average the bundled model is made of (recipes/train_default.sh), run as a user runs
it, on model files written by spkid."""

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


def test_the_bundled_model_records_the_soup_it_is():
    spec, _ = modelfile.read(REPO / "spkid" / "data" / "default_model.pt")
    soup = spec.training["soup"]
    assert [(r["model"], r["weight"]) for r in soup] == [("librispeech.pt", 0.7), ("multi.pt", 0.15), ("broad.pt", 0.15)]
    assert np.isclose(sum(r["weight"] for r in soup), 1.0)
    assert spec.calibration and spec.calibration["qmf"]["c"] < 0  # duration-aware: short trials get lower thresholds


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

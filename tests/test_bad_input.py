"""Bad input, table-driven: every subcommand answers with one line `spkid <cmd>: error: FILE: problem`, exit 1
(2 for usage errors), no traceback without -v, and no partial output left behind; `| head -1` ends quietly."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, SPEAKERS, sh, synth_voice

MODEL = REPO / "spkid" / "data" / "default_model.pt"


class _Boom:
    """Unpickling this runs `touch MARKER`: a model file must never be unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict[str, Path]:
    """Good audio, every kind of bad file, one embedding stream (the only torch run here) and a gallery."""
    d = tmp_path_factory.mktemp("bad")
    good = []
    for s, (name, (f0, formants)) in enumerate(SPEAKERS.items()):
        (d / "spk" / name).mkdir(parents=True)
        for i in range(2):
            p = d / "spk" / name / f"{name}_{i}.wav"
            sf.write(p, synth_voice(f0, formants, 2.0, seed=10 * s + i), 16000, subtype="PCM_16")
            good.append(p)
    b = d / "in"
    b.mkdir()
    (b / "empty.wav").write_bytes(b"")
    sf.write(b / "zero.wav", np.zeros(0, np.float32), 16000, subtype="PCM_16")
    sf.write(b / "full.flac", synth_voice(150.0, (600.0, 1700.0), 2.0), 16000)
    data = (b / "full.flac").read_bytes()
    (b / "truncated.flac").write_bytes(data[: len(data) // 3])
    (b / "random.wav").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (b / "folder.wav").mkdir()
    paths = {"good": good[0], "good2": good[1], "missing": b / "missing.wav", "empty": b / "empty.wav",
             "zero": b / "zero.wav", "truncated": b / "truncated.flac", "random": b / "random.wav",
             "directory": b / "folder.wav", "root": d}
    # lists
    lst = d / "lists"
    lst.mkdir()
    (lst / "good.txt").write_text("".join(f"{p}\n" for p in good))
    (lst / "crlf.txt").write_bytes(b"\r\n".join([b"", str(good[0]).encode(), b"  ", str(good[1]).encode(), b"", b""]))
    (lst / "latin1.txt").write_bytes(str(good[0]).encode() + b"\n" + "caf\u00e9.wav\n".encode("latin-1"))
    (lst / "nested.txt").write_text(f"{lst / 'good.txt'}\n")
    paths.update({f"list_{p.stem}": p for p in lst.iterdir()})
    # feature .npy files for embed (the default model takes 40 fbank dims)
    f = d / "feats"
    f.mkdir()
    ok = np.random.default_rng(1).standard_normal((300, 40)).astype(np.float32)
    np.save(f / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(f / "int.npy", np.zeros((300, 40), np.int64))
    np.save(f / "flat.npy", ok.reshape(-1))
    nan = ok.copy()
    nan[5, 3] = np.nan
    nan[7, 1] = np.inf
    np.save(f / "nan.npy", nan)
    np.save(f / "dims.npy", np.random.default_rng(2).standard_normal((300, 13)).astype(np.float32))
    paths.update({f"npy_{p.stem}": p for p in f.iterdir()})
    # model files
    m = d / "models"
    m.mkdir()
    paths["marker"] = m / "MARKER"
    (m / "pickle.pt").write_bytes(pickle.dumps(_Boom(paths["marker"])))
    import torch

    torch.save({"format": "spkid-model/1", "config": "{}", "state_dict": {"x": _Boom(paths["marker"])}}, m / "zip.pt")
    torch.save({"format": "spkid-model/99", "config": "{}", "state_dict": {}}, m / "v99.pt")
    paths.update({f"model_{p.stem}": p for p in m.iterdir()})
    # one network on 40 fbank dims, to embed feature files with (the bundled model, a fusion, embeds audio only)
    from spkid import modelfile
    from spkid.models import SMALL, build_model

    kwargs = {**SMALL["lstm_ge2e"], "feat_dim": 40}
    paths["net"] = d / "net.pt"
    modelfile.save(paths["net"], build_model("lstm_ge2e", **kwargs), modelfile.ModelSpec(
        model={"name": "lstm_ge2e", "kwargs": kwargs}, features={"kind": "fbank", "n_filters": 40},
        embedding={"window_s": 1.5, "hop_s": 0.75, "min_s": 0.5}))
    assert not paths["marker"].exists()
    # one embed run, then a gallery built from its output without torch
    emb = d / "emb.npy"
    sh(f"OMP_NUM_THREADS=1 spkid -q embed {lst / 'good.txt'} -m {MODEL} --threads 1 -o {emb}", check=True)
    paths["emb"] = emb
    paths["gallery"] = d / "gallery"
    sh(f"spkid -q enroll --from-embeddings {emb} -g {d / 'gallery'}", check=True)
    return paths


def _out_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file()] if out.exists() else []


def assert_error(proc, cmd: str, *needles: str, code: int = 1) -> str:
    err = proc.stderr.decode(errors="replace").strip()
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    if code == 1:
        last = err.splitlines()[-1] if err else ""
        assert last.startswith(f"spkid {cmd}: error: "), err
        assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err
        for n in needles:
            assert n in last, (n, err)
    return err


# --- audio inputs ---------------------------------------------------------------------------------------------

AUDIO_CASES = [
    ("missing", "no such file"),
    ("empty", "empty file"),
    ("zero", "no samples"),
    ("truncated", "cannot decode audio"),
    ("random", "cannot decode audio"),
    ("directory", "no audio files below this folder"),  # a folder argument expands to its audio files
]
# (cmd name, command template, writes a folder?); {good} {bad} {out}
FILE_COMMANDS = {
    "convert": "spkid convert {good} {bad} -d {out} --root {root}",
    "vad-trim": "spkid vad --trim {good} {bad} -d {out} --root {root}",
    "vad": "spkid vad {good} {bad} -o {out}/vad.npy",
    "features": "spkid features {good} {bad} -d {out} --root {root}",
}


@pytest.mark.parametrize("case,message", AUDIO_CASES, ids=[c for c, _ in AUDIO_CASES])
@pytest.mark.parametrize("name", list(FILE_COMMANDS))
def test_bad_audio_file(w, tmp_path: Path, name: str, case: str, message: str):
    out = tmp_path / "out"
    bad = w[case]
    cmd = FILE_COMMANDS[name].format(good=w["good"], bad=bad, out=out, root=w["root"])
    proc = sh(cmd)
    assert_error(proc, name.split("-")[0], str(bad), message)
    assert proc.stdout == b""
    assert _out_files(out) == []


@pytest.mark.parametrize("case,message", [("missing", "no such file"), ("zero", "no samples"), ("random", "cannot decode audio")])
def test_bad_audio_embed(w, tmp_path: Path, case: str, message: str):
    out = tmp_path / "emb.npy"
    proc = sh(f"spkid embed {w['good']} {w[case]} -m {MODEL} --threads 1 -o {out}")
    assert_error(proc, "embed", str(w[case]), message)
    assert not out.exists() and _out_files(tmp_path) == []


# --- lists ----------------------------------------------------------------------------------------------------

def test_list_with_blank_lines_and_crlf_works(w, tmp_path: Path):
    proc = sh(f"spkid vad {w['list_crlf']} -o {tmp_path / 'v.npy'}", check=True)
    assert "Traceback" not in proc.stderr.decode()
    assert np.load(tmp_path / "v.npy").shape == (2, 2)
    proc = sh(f"spkid convert -d {tmp_path / 'c'} < {w['list_crlf']}", check=True)
    assert [ln.split("\t")[1] for ln in proc.stdout.decode().splitlines()] == ["alice", "alice"]


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_non_utf8_list(w, tmp_path: Path, how: str):
    arg = str(w["list_latin1"]) if how == "file" else f"- < {w['list_latin1']}"
    proc = sh(f"spkid convert {arg} -d {tmp_path / 'o'}")
    where = str(w["list_latin1"]) if how == "file" else "<stdin>"
    assert_error(proc, "convert", f"{where}:2:", "not valid UTF-8")
    assert _out_files(tmp_path / "o") == []


def test_paths_with_spaces_and_tabs(w, tmp_path: Path):
    d = tmp_path / "odd name"
    d.mkdir()
    spaced, tabbed = d / "a b.wav", d / "tab\there.wav"
    shutil.copy(w["good"], spaced)
    shutil.copy(w["good"], tabbed)
    (tmp_path / "l.txt").write_text(f"{spaced}\tspk\n")
    proc = sh(f"spkid convert {shlex.quote(str(tmp_path / 'l.txt'))} {shlex.quote(str(tabbed))} -d {tmp_path / 'o'}",
              check=True)
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 2 and lines[0] == f"{tmp_path / 'o' / 'a b.flac'}\tspk"
    assert (tmp_path / "o" / "a b.flac").is_file() and (tmp_path / "o" / "tab\there.flac").is_file()


def test_a_list_naming_a_list(w, tmp_path: Path):
    proc = sh(f"spkid convert {w['list_nested']} -d {tmp_path / 'o'}")
    assert_error(proc, "convert", str(w["list_good"]), "is a list file")
    assert _out_files(tmp_path / "o") == []


# --- .npy inputs ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case,message", [
    ("npy_object", "object dtype; refusing to unpickle"),
    ("npy_int", "expected a float (frames, dims)"),
    ("npy_flat", "expected a float (frames, dims)"),
    ("npy_nan", "NaN or Inf"),
    ("npy_dims", "13 feature dims, but the model takes 40"),
], ids=["object-dtype", "int-dtype", "1d-shape", "nan-inf", "wrong-dims"])
def test_bad_feature_npy_embed(w, tmp_path: Path, case: str, message: str):
    out = tmp_path / "emb.npy"
    proc = sh(f"spkid embed {w[case]} -m {w['net']} --threads 1 -o {out}")
    assert_error(proc, "embed", str(w[case]), message)
    assert not out.exists() and _out_files(tmp_path) == []


@pytest.mark.parametrize("case,message", [
    ("npy_object", "object dtype"),
    ("npy_flat", "expected an integer (N, 2)"),
    ("npy_nan", "expected an integer (N, 2)"),
    ("random", "not a .npy"),
], ids=["object-dtype", "1d-shape", "float-dtype", "not-npy"])
def test_bad_vad_npy_features(w, tmp_path: Path, case: str, message: str):
    out = tmp_path / "f"
    proc = sh(f"spkid features {w['good']} --vad {w[case]} -d {out}")
    assert_error(proc, "features", str(w[case]), message)
    assert _out_files(out) == []


@pytest.mark.parametrize("case", ["npy_object", "npy_nan", "random"], ids=["object-dtype", "nan-inf-keyed", "not-npy"])
def test_bad_embedding_stream_identify(w, tmp_path: Path, case: str):
    src = w[case]
    if case == "npy_nan":  # a keyed matrix with NaN values
        src = tmp_path / "nan_keyed.npy"
        with open(src, "wb") as f:
            np.lib.format.write_array(f, np.array(["a", "b"]))
            np.lib.format.write_array(f, np.array([[np.nan, 1.0], [0.0, 1.0]], np.float32))
    proc = sh(f"spkid identify --from-embeddings {src} -g {w['gallery']}")
    assert_error(proc, "identify", str(src))
    assert proc.stdout == b""


# --- model files ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case,message", [
    ("model_pickle", "not a loadable spkid model file"),
    ("model_zip", "not a loadable spkid model file"),
    ("model_v99", "spkid-model/99"),
], ids=["plain-pickle", "torch-zip-pickle", "format-99"])
def test_bad_model_file(w, tmp_path: Path, case: str, message: str):
    out = tmp_path / "emb.npy"
    proc = sh(f"spkid embed {w['good']} --model {w[case]} --threads 1 -o {out}", cwd=tmp_path)
    assert_error(proc, "embed", str(w[case]), message)
    assert not w["marker"].exists() and not (tmp_path / "MARKER").exists()
    assert not out.exists()


# --- galleries ------------------------------------------------------------------------------------------------

def _break_gallery(src: Path, dst: Path, how: str) -> None:
    shutil.copytree(src, dst)
    if how == "missing":
        (dst / "embeddings.npy").unlink()
    elif how == "truncated":
        data = (dst / "embeddings.npy").read_bytes()
        (dst / "embeddings.npy").write_bytes(data[: len(data) // 2])
    elif how == "format":
        meta = json.loads((dst / "gallery.json").read_text())
        meta["format"] = "spkid-gallery/99"
        (dst / "gallery.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("how,where,message", [
    ("missing", "", "embeddings.npy is missing"),
    ("truncated", "embeddings.npy", "unreadable"),
    ("format", "gallery.json", "spkid-gallery/99"),
])
def test_broken_gallery_identify(w, tmp_path: Path, how: str, where: str, message: str):
    g = tmp_path / "g"
    _break_gallery(w["gallery"], g, how)
    proc = sh(f"spkid identify --from-embeddings {w['emb']} -g {g}")
    assert_error(proc, "identify", str(g / where) if where else str(g), message)
    assert proc.stdout == b""


def test_broken_gallery_enroll_keeps_it(w, tmp_path: Path):
    g = tmp_path / "g"
    _break_gallery(w["gallery"], g, "format")
    before = sorted((p.name, p.read_bytes()) for p in g.iterdir())
    proc = sh(f"spkid enroll --from-embeddings {w['emb']} -g {g}")
    assert_error(proc, "enroll", str(g / "gallery.json"), "spkid-gallery/99")
    assert sorted((p.name, p.read_bytes()) for p in g.iterdir()) == before


# --- score / trials -------------------------------------------------------------------------------------------

def test_score_trials_naming_keys_without_scores(tmp_path: Path):
    (tmp_path / "s.txt").write_text("a x 0.9\nb y 0.1\na y 0.3\n")
    (tmp_path / "t.txt").write_text("1 a x\n0 b y\n0 a y\n1 c z\n")
    proc = sh(f"spkid score {tmp_path / 's.txt'} --trials {tmp_path / 't.txt'}")
    assert_error(proc, "score", str(tmp_path / "t.txt"), "no score", "(c z)")


@pytest.mark.parametrize("args", ["--p-target 2", "--c-miss 0", "--far 5"])
def test_score_usage_errors_exit_2(tmp_path: Path, args: str):
    (tmp_path / "s.txt").write_text("0.9 target\n0.1 nontarget\n")
    proc = sh(f"spkid score {tmp_path / 's.txt'} {args}")
    assert_error(proc, "score", code=2)
    assert proc.stdout == b""


# --- | head -1 ------------------------------------------------------------------------------------------------

def _big_list(w, d: Path, n: int = 1500) -> Path:
    """n distinct small wavs (hard links to one file), so list-writing commands print more than a pipe holds."""
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        os.link(w["good"], d / f"u{i:04d}.wav")
    lst = d.parent / "big.txt"
    lst.write_text("".join(f"{d / f'u{i:04d}.wav'}\n" for i in range(n)))
    return lst


def test_head_closes_the_pipe_quietly(w, tmp_path: Path):
    big = _big_list(w, tmp_path / "spk" / "s")
    # outputs exist already (a resumed run): convert and features only print the (long) list
    for p in sorted((tmp_path / "spk" / "s").iterdir()):
        (tmp_path / "c" / "s").mkdir(parents=True, exist_ok=True)
        os.link(w["good"], tmp_path / "c" / "s" / f"{p.stem}.flac")
    n = 3000
    keys = [f"clip{i:05d}/{'x' * 30}" for i in range(n)]
    (tmp_path / "trials.txt").write_text("".join(f"1 {k} {keys[(i + 1) % n]}\n" for i, k in enumerate(keys)))
    from spkid import streams

    real = streams.read_embeddings(str(w["emb"]))
    vecs = np.random.default_rng(0).standard_normal((n, real.values.shape[1])).astype(np.float32)
    meta = {k: v for k, v in real.meta.items() if k != "format"}
    streams.write_embeddings(keys, vecs, meta, str(tmp_path / "keyed.npy"))
    (tmp_path / "scores.txt").write_text("".join(f"{v:.4f} {'target' if i % 3 else 'nontarget'}\n"
                                                  for i, v in enumerate(vecs[:, 0])))
    cmds = {
        "convert": f"spkid convert {big} -d {tmp_path / 'c'}",
        "features": f"spkid features {w['list_good']} -d {tmp_path / 'f'}",
        "vad": f"spkid vad --trim {w['list_crlf']} -d {tmp_path / 'v'}",
        "identify": f"spkid identify --from-embeddings {w['emb']} -g {w['gallery']}",
        "verify": f"spkid verify --trials {tmp_path / 'trials.txt'} --embeddings {tmp_path / 'keyed.npy'}",
        "score": f"spkid score {tmp_path / 'scores.txt'}",
    }
    for name, cmd in cmds.items():
        proc = sh(f"{cmd} | head -1")
        err = proc.stderr.decode(errors="replace")
        assert "Traceback" not in err and "rror" not in err, (name, err)
        assert proc.returncode in (0, 1), (name, proc.returncode, err)
        assert len(proc.stdout.decode().splitlines()) == 1, name

"""ONNX forms and model identity: every architecture exports and equals torch on real speech; the identity is stored
in the model file and carried into the ONNX metadata; altered files are refused; the ONNX path never imports torch."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, SHARED_DATA, SPEAKERS, clip_files, sh, synth_voice
from spkid import embedding, modelfile, onnxnet
from spkid.errors import SpkidError

torch = pytest.importorskip("torch")
from spkid import onnxexport  # noqa: E402
from spkid.models import MODELS, SMALL, build_model  # noqa: E402

FEATURES = {"kind": "fbank", "n_filters": 40}
BUNDLED_SHA = "e67af01a62867cb2b0e2e22f5321087bb99fd32f8fa47d05c4571ad074a62ebc"  # galleries record it
EARLIER_BUNDLED_SHA = "41772e33450428e129b7c0d165e00a39ce6fcaa78cdee9ea129b39d541aee4d7"  # the fusion before speed copies
has_resemblyzer = __import__("importlib").util.find_spec("resemblyzer") is not None


def speech() -> list[np.ndarray]:
    """Four utterances of four speakers: LibriSpeech clips of ../shared/data when present, else the shipped
    clips, else generated voices."""
    lib = SHARED_DATA / "librispeech_tc100"
    files = [sorted(d.glob("*.flac"))[0] for d in sorted(lib.iterdir())[:4]] if lib.is_dir() else []
    files = files or [clip_files("enroll", s.name)[0] for s in sorted({p.parent for p in clip_files("enroll")})[:4]]
    if len(files) == 4:
        return [sf.read(f, dtype="float32")[0][: 16000 * 8] for f in files]
    return [synth_voice(f0, formants, 4.0, seed=i) for i, (f0, formants) in enumerate(list(SPEAKERS.values())[:4])]


def make_model(path: Path, name: str = "ecapa_tdnn", seed: int = 0, **extra) -> Path:
    torch.manual_seed(seed)
    kwargs = {**SMALL[name], "feat_dim": 40, **extra}
    net = build_model(name, **kwargs)
    spec = modelfile.ModelSpec(model={"name": name, "kwargs": kwargs}, features=FEATURES,
                               embedding={"window_s": 1.5, "hop_s": 0.75, "min_s": 0.5})
    modelfile.save(path, net, spec)
    return path


def calibration(threshold: float = 0.5):
    from spkid.calibration import Calibration, Threshold

    return Calibration(a=2.0, b=-1.0, p_target=0.01, thresholds={"eer": Threshold(threshold, 0.01, 0.01)})


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(1 - (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def compare_backends(model: str, onnx_file: Path) -> None:
    """Utterance embeddings of real speech through torch and onnxruntime: windows batched (dynamic batch) and
    whole utterances of different lengths (dynamic frames)."""
    sigs = speech()
    for window in (None, 0.0):
        want = embedding.Embedder.from_model(model, "cpu", backend="torch", window_s=window).embed_signals(sigs, 16000)
        emb = embedding.Embedder.from_model(str(onnx_file), "cpu", window_s=window, threads=1)
        assert emb.model.backend == "onnx"
        got = emb.embed_signals(sigs, 16000)
        assert got.shape == want.shape and cosine_distance(got, want) < 1e-4


@pytest.mark.parametrize("name", list(MODELS))
def test_every_architecture_exports_and_equals_torch(tmp_path: Path, name: str):
    model = make_model(tmp_path / f"{name}.pt", name)
    sha = onnxexport.export(model, tmp_path / f"{name}.onnx")
    assert sha == modelfile.sha256(model) == onnxnet.read_meta(tmp_path / f"{name}.onnx", verify=True).sha256
    compare_backends(str(model), tmp_path / f"{name}.onnx")


@pytest.mark.skipif(not has_resemblyzer, reason="resemblyzer not installed (pip install 'spkid[pretrained]')")
def test_resemblyzer_exports_and_equals_torch(tmp_path: Path):
    from spkid import pretrained

    assert onnxexport.export("resemblyzer", tmp_path / "ge2e.onnx") == pretrained.sha256()
    compare_backends("resemblyzer", tmp_path / "ge2e.onnx")


def test_projected_lstm_is_exported_as_the_plain_lstm_it_equals():
    torch.manual_seed(3)
    net = build_model("lstm_ge2e", feat_dim=40, hidden=48, proj_size=16, num_layers=3, embed_dim=24).eval()
    plain = onnxexport.exportable(net)
    assert plain is not net and plain.lstm.proj_size == 0
    x = torch.randn(5, 77, 40)
    with torch.inference_mode():
        assert torch.allclose(plain(x), net(x), atol=1e-5)


def test_identity_is_stored_in_the_model_file_and_carried_to_onnx(tmp_path: Path):
    model = make_model(tmp_path / "m.pt")
    spec, state = modelfile.read(model)
    sha = modelfile.fingerprint(spec, state)
    assert modelfile.header(model) == (spec, sha)
    assert modelfile.identity(model, spec, state) == modelfile.sha256(model) == sha
    # a plain torch.save of the loaded dict (the record is gone): the identity is computed, and is the same
    blob = torch.load(model, weights_only=True)
    torch.save(blob, tmp_path / "plain.pt")
    assert modelfile.header(tmp_path / "plain.pt") is None and modelfile.sha256(tmp_path / "plain.pt") == sha
    # calibrating keeps the identity; the ONNX form carries the identity and the config, calibration included
    cal = calibration()
    modelfile.save_calibrated(model, tmp_path / "cal.pt", cal)
    assert modelfile.header(tmp_path / "cal.pt")[1] == sha
    onnxexport.export(tmp_path / "cal.pt", tmp_path / "cal.onnx")
    meta = onnxnet.read_meta(tmp_path / "cal.onnx", verify=True)
    assert meta.sha256 == sha and meta.spec.model == spec.model and meta.spec.features == spec.features
    assert meta.spec.calibration == cal.to_dict() and meta.embed_dim == modelfile.build(spec, state).embed_dim
    props = onnxnet.metadata((tmp_path / "cal.onnx").read_bytes())
    assert props["architecture"] == "ecapa_tdnn" and json.loads(props["config"])["embedding"]["window_s"] == 1.5


def test_auto_backend_uses_the_onnx_form_beside_a_model_file_of_the_same_identity(tmp_path: Path):
    model = make_model(tmp_path / "m.pt")
    assert embedding.resolve_model(str(model)).backend == "torch"  # no ONNX form yet
    with pytest.raises(SpkidError, match="spkid export"):
        embedding.resolve_model(str(model), "onnx")
    sha = onnxexport.export(model, tmp_path / "m.onnx")
    ref = embedding.resolve_model(str(model))
    assert (ref.backend, ref.onnx, ref.sha256, ref.path) == ("onnx", tmp_path / "m.onnx", sha, model)
    assert embedding.resolve_model(str(model), "torch").backend == "torch"
    assert embedding.resolve_model(str(tmp_path / "m.onnx"), "torch").path == model  # torch runs the model file
    # recalibrated in place: still the same model, and the model file's newer calibration is the one used
    cal = calibration(0.3)
    modelfile.save_calibrated(model, model, cal)
    ref = embedding.resolve_model(str(model))
    assert ref.backend == "onnx" and modelfile.model_calibration(ref) == cal
    # retrained: the ONNX form beside it is another model now, so torch runs it (and --backend onnx is refused)
    make_model(model, seed=1)
    assert embedding.resolve_model(str(model)).backend == "torch"
    with pytest.raises(SpkidError, match="another model"):
        embedding.resolve_model(str(model), "onnx")
    with pytest.raises(SpkidError, match="no ONNX form|export"):
        embedding.resolve_model("resemblyzer", "onnx")


def _record(model: Path) -> bytes:
    with zipfile.ZipFile(model) as z:
        return next(z.read(n) for n in z.namelist() if n.endswith(modelfile.HEADER))


def _with_record(blob: dict, record: bytes, out: Path) -> Path:
    """torch.save of `blob` plus the identity record `record`, as `modelfile.save` lays them out."""
    buf = io.BytesIO()
    torch.save(blob, buf)
    with zipfile.ZipFile(buf, "a") as z:
        z.writestr(f"{z.namelist()[0].split('/')[0]}/{modelfile.HEADER}", record)
    out.write_bytes(buf.getvalue())
    return out


def _tamper(model: Path, out: Path) -> Path:
    """`model` with one weight changed, its identity record kept: what a buggy writer or an edit leaves."""
    blob = torch.load(model, weights_only=True)
    name = sorted(blob["state_dict"])[0]
    blob["state_dict"][name] = blob["state_dict"][name] + 0.01
    return _with_record(blob, _record(model), out)


def test_a_model_file_whose_stored_identity_does_not_match_its_weights_is_refused(tmp_path: Path):
    bad = _tamper(make_model(tmp_path / "m.pt"), tmp_path / "bad.pt")
    with pytest.raises(SpkidError, match="does not match its weights"):
        modelfile.verify(bad)
    with pytest.raises(SpkidError, match="does not match its weights"):
        onnxexport.export(bad, tmp_path / "bad.onnx")
    with pytest.raises(SpkidError, match="does not match its weights"):
        modelfile.save_calibrated(bad, tmp_path / "cal.pt", calibration())
    assert not (tmp_path / "bad.onnx").exists() and not (tmp_path / "cal.pt").exists()
    out = sh(f"spkid export {bad} -o {tmp_path / 'bad.onnx'}")
    err = out.stderr.decode()
    assert out.returncode == 1 and err.startswith(f"spkid export: error: {bad}: the model's stored identity")
    assert err.count("\n") == 1 and not (tmp_path / "bad.onnx").exists()
    # and nothing runs it: the weights read for inference are checked against the stored identity too
    clip = sorted((Path(__file__).resolve().parents[1] / "examples" / "clips" / "probe").glob("*/*.flac"))[0]
    out = sh(f"spkid embed {clip} -m {bad} --backend torch -o {tmp_path / 'e.npy'}")
    assert out.returncode == 1 and "does not match its weights" in out.stderr.decode()
    assert not (tmp_path / "e.npy").exists()
    # a damaged record is refused by every read, not only by the checks of writers
    record = json.loads(_record(tmp_path / "m.pt"))
    broken = _with_record(torch.load(tmp_path / "m.pt", weights_only=True),
                          json.dumps({**record, "model_sha256": "not a sha"}).encode(), tmp_path / "broken.pt")
    with pytest.raises(SpkidError, match="damaged identity record"):
        embedding.resolve_model(str(broken))


def test_an_onnx_graph_that_does_not_match_its_record_is_refused(tmp_path: Path):
    a = onnxexport.export(make_model(tmp_path / "a.pt", seed=0), tmp_path / "a.onnx")
    onnxexport.export(make_model(tmp_path / "b.pt", seed=1), tmp_path / "b.onnx")
    props = onnxnet.metadata((tmp_path / "a.onnx").read_bytes())
    spec, state = modelfile.read(tmp_path / "b.pt")
    graph_b = onnxexport.to_onnx(modelfile.build(spec, state), 40)
    (tmp_path / "mixed.onnx").write_bytes(onnxnet.with_metadata(graph_b, props))  # b's weights, a's record
    assert onnxnet.read_meta(tmp_path / "mixed.onnx").sha256 == a
    with pytest.raises(SpkidError, match="does not match its model record"):
        onnxnet.read_meta(tmp_path / "mixed.onnx", verify=True)
    (tmp_path / "plain.onnx").write_bytes(graph_b)  # no spkid record at all
    with pytest.raises(SpkidError, match="no spkid model record"):
        embedding.resolve_model(str(tmp_path / "plain.onnx"))


def test_bundled_model_ships_both_forms_with_one_identity():
    pt, onnx = embedding.DEFAULT_MODEL, embedding.DEFAULT_MODEL.with_suffix(".onnx")
    assert modelfile.sha256(pt) == BUNDLED_SHA  # galleries record it: it changes only with a new bundled model
    assert modelfile.verify(pt)[2] == BUNDLED_SHA
    meta = onnxnet.read_meta(onnx, verify=True)
    assert meta.sha256 == BUNDLED_SHA and meta.spec.to_json() == modelfile.header(pt)[0].to_json()
    assert max(pt.stat().st_size, onnx.stat().st_size) < 20_000_000  # #19's limit for the bundled model
    ref = embedding.resolve_model(None)
    assert (ref.label, ref.backend, ref.sha256, ref.path) == ("default", "onnx", BUNDLED_SHA, pt)
    sigs = speech()
    onnx_e = embedding.Embedder.from_model(None, "cpu").embed_signals(sigs, 16000)
    torch_e = embedding.Embedder.from_model(None, "cpu", backend="torch").embed_signals(sigs, 16000)
    assert cosine_distance(onnx_e, torch_e) < 1e-4


def test_a_gallery_of_an_earlier_bundled_model_is_refused_with_the_way_out(tmp_path: Path):
    clips = clip_files("enroll")[:2]
    if len(clips) < 2:
        pytest.skip("needs the shipped example clips (examples/clips)")
    gal = tmp_path / "g"
    out = sh(f"spkid enroll {clips[0]} --speaker a -g {gal} && spkid enroll {clips[1]} --speaker b -g {gal}")
    assert out.returncode == 0, out.stderr.decode()
    meta = json.loads((gal / "gallery.json").read_text())
    assert meta["model"]["sha256"] == BUNDLED_SHA and meta["model"]["label"] == "default"
    meta["model"]["sha256"] = EARLIER_BUNDLED_SHA  # as enrolled by the spkid before the model changed
    (gal / "gallery.json").write_text(json.dumps(meta))
    out = sh(f"spkid identify {clips[0]} -g {gal}")
    err = out.stderr.decode()
    assert out.returncode == 1 and out.stdout == b"" and err.count("\n") == 1, err
    assert err.startswith(f"spkid identify: error: {gal} was enrolled with an earlier bundled model (sha256 {EARLIER_BUNDLED_SHA[:12]}...)")
    assert "enrol its speakers again in a new gallery" in err and "--model" in err


def test_spkid_export_writes_the_onnx_form_beside_the_model(tmp_path: Path):
    model = make_model(tmp_path / "m.pt")
    out = sh(f"spkid export {model}")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"" and onnxnet.read_meta(tmp_path / "m.onnx", verify=True).sha256 == modelfile.sha256(model)
    out = sh(f"spkid export {tmp_path / 'nope.pt'} -o {tmp_path / 'x.onnx'}")
    assert out.returncode == 1 and out.stderr.decode() == f"spkid export: error: {tmp_path / 'nope.pt'}: no such model file or folder, " \
        "nor a model of `spkid models` (give a `spkid train` output, a published model folder, a catalogue name, " \
        "or `resemblyzer`)\n"
    out = sh(f"spkid export {model} -o {model}")
    assert out.returncode == 1 and b"would overwrite the model file" in out.stderr and modelfile.verify(model)


NO_TORCH = """
import sys
from spkid import embedding, vad, gallery, scoring
import soundfile as sf
emb = embedding.Embedder.from_model({model!r}, "cpu", threads=1)
assert emb.model.backend == "onnx", emb.model.backend
x = sf.read({wav!r}, dtype="float32")[0]
e = emb.embed_files([{wav!r}])
assert e.shape == (1, emb.net.embed_dim), e.shape
assert embedding.resolve_model({model!r}).sha256 == emb.model.sha256
bad = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
assert not bad, bad[:5]
print(emb.model.sha256)
"""


@pytest.mark.parametrize("which", ["bundled", "exported"])
def test_embedding_with_an_onnx_model_never_imports_torch(tmp_path: Path, which: str):
    wav = str(clip_files("probe")[0])
    if which == "bundled":
        model = None
    else:
        model = str(make_model(tmp_path / "m.pt"))
        onnxexport.export(model, tmp_path / "m.onnx")
    code = NO_TORCH.format(model=model, wav=wav)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "onnxruntime" in imported and not [m for m in imported if m == "torch" or m.startswith("torch.")]
    assert proc.stdout.strip() == (BUNDLED_SHA if which == "bundled" else modelfile.sha256(model))


def test_device_cuda_without_an_onnxruntime_gpu_falls_back_to_torch_unless_onnx_is_asked_for():
    if onnxnet.has_cuda():
        pytest.skip("this onnxruntime has CUDA")
    if torch.cuda.is_available():
        assert embedding.Embedder.from_model(None, "cuda").model.backend == "torch"
    else:
        with pytest.raises(SpkidError, match="no CUDA GPU is available to torch"):
            embedding.Embedder.from_model(None, "cuda")
    with pytest.raises(SpkidError, match="no CUDA provider"):
        embedding.Embedder.from_model(None, "cuda", backend="onnx")


def test_onnx_threads_are_explicit_and_shared_among_workers():
    cores = onnxnet.default_threads(1)
    assert cores >= 1 and onnxnet.default_threads(cores * 4) == 1
    net = embedding.Embedder.from_model(None, "cpu", threads=1).net
    assert net.session.get_session_options().intra_op_num_threads == 1
    net = embedding.Embedder.from_model(None, "cpu", jobs=2).net
    assert net.session.get_session_options().intra_op_num_threads == max(1, cores // 2)

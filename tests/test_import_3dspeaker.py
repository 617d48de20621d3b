"""3D-Speaker's CAM++, ERes2Net and ERes2NetV2 read into spkid, checked against 3D-Speaker's own networks.

The reference is the `speakerlab` package (3D-Speaker's code, 0.0.6), whose model modules import only torch. Its
networks are built with the configurations 3D-Speaker's `infer_sv.py` publishes, given seeded random weights
(batch-norm running statistics included), and saved as ModelScope publishes them (`configuration.json` naming the
checkpoint file), as a bare checkpoint under its published name, and as a training folder (`config.yaml` +
`models/CKPT-EPOCH-<n>-00/embedding_model.ckpt`). spkid must give the reference's embedding of real speech within
1e-4 cosine distance. The reference front end is 3D-Speaker's `FBank`: torchaudio's Kaldi fbank of float audio
(in [-1, 1]) with its defaults, minus the utterance mean, computed here with kaldi-native-fbank (same options).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from spkid.errors import SpkidError

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "tests" / "data" / "pyannote_sample.flac"  # real speech, quiet (peak 0.014): stresses the log floor
SECONDS = 4
MAX_COSINE_DISTANCE = 1e-4

speakerlab = pytest.importorskip("speakerlab", reason="3D-Speaker's package (speakerlab) is not installed")
knf = pytest.importorskip("kaldi_native_fbank", reason="kaldi-native-fbank is not installed")

# The published configurations (3D-Speaker's speakerlab/bin/infer_sv.py and the ModelScope configuration.json files)
CAMPPLUS = ("speakerlab.models.campplus.DTDNN", "CAMPPlus", {"feat_dim": 80, "embedding_size": 192})
CAMPPLUS_VOX = ("speakerlab.models.campplus.DTDNN", "CAMPPlus", {"feat_dim": 80, "embedding_size": 512})
ERES2NET = ("speakerlab.models.eres2net.ERes2Net", "ERes2Net", {"feat_dim": 80, "embedding_size": 192})
ERES2NETV2 = ("speakerlab.models.eres2net.ERes2NetV2", "ERes2NetV2",
              {"feat_dim": 80, "embedding_size": 192, "baseWidth": 26, "scale": 2, "expansion": 2})
MODELSCOPE = {  # model id: (reference network, configuration.json "model" section)
    "speech_campplus_sv_zh-cn_16k-common": (CAMPPLUS, {
        "type": "cam++-sv", "model_config": {"sample_rate": 16000, "fbank_dim": 80, "emb_size": 192},
        "pretrained_model": "campplus_cn_common.bin"}),
    "speech_eres2net_sv_en_voxceleb_16k": (ERES2NET, {
        "type": "eres2net-sv", "model_config": {"sample_rate": 16000, "embed_dim": 192, "channels": 32},
        "pretrained_model": "pretrained_eres2net.ckpt"}),
    "speech_eres2netv2_sv_zh-cn_16k-common": (ERES2NETV2, {
        "type": "eres2netv2-sv", "model_config": {"sample_rate": 16000, "embed_dim": 192, "baseWidth": 26,
                                                  "scale": 2, "expansion": 2},
        "pretrained_model": "pretrained_eres2netv2.ckpt"}),
}


def reference(spec: tuple[str, str, dict], seed: int) -> torch.nn.Module:
    """3D-Speaker's network `spec` with seeded random weights and batch-norm statistics, in eval mode."""
    import importlib

    module, cls, kwargs = spec
    torch.manual_seed(seed)
    net = getattr(importlib.import_module(module), cls)(**kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.3)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif t.is_floating_point() and t.dim() == 1:  # BN affine, conv/linear biases
                base = 1.0 if name.endswith("weight") else 0.0
                t.copy_(base + torch.randn(t.shape, generator=g) * 0.1)
    return net.eval()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    if not SPEECH.is_file():
        pytest.skip(f"{SPEECH} is absent")
    x, sr = sf.read(SPEECH, dtype="float32")
    assert sr == 16000
    return x[: SECONDS * sr]


def reference_features(x: np.ndarray) -> np.ndarray:
    """3D-Speaker's FBank(80, mean_nor=True) of float audio: Kaldi fbank defaults (Povey window, dither 0)."""
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = 16000
    opts.mel_opts.num_bins = 80
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(16000, x.tolist())
    fb.input_finished()
    feats = np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])
    return feats - feats.mean(axis=0, keepdims=True)


def reference_embedding(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(reference_features(x)).float()[None])[0].double().numpy()


def spkid_embedding(model: Path, x: np.ndarray) -> np.ndarray:
    from spkid.embedding import Embedder

    return Embedder.from_model(str(model), use_vad=False).embed_signals([x], 16000)[0].astype(np.float64)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def publish(folder: Path, net: torch.nn.Module, model: dict) -> Path:
    """`net` saved as ModelScope publishes 3D-Speaker's models: configuration.json + the state dict it names."""
    folder.mkdir(parents=True)
    config = {"framework": "pytorch", "task": "speaker-verification", "model": model,
              "pipeline": {"type": "speaker-verification"}}
    (folder / "configuration.json").write_text(json.dumps(config, indent=4), encoding="utf-8")
    torch.save(net.state_dict(), folder / model["pretrained_model"])
    return folder


@pytest.mark.parametrize("model_id", list(MODELSCOPE))
def test_modelscope_folder_equals_reference(model_id, speech, tmp_path):
    spec, model = MODELSCOPE[model_id]
    net = reference(spec, seed=len(model_id))
    folder = publish(tmp_path / model_id, net, model)
    want = reference_embedding(net, speech)
    got = spkid_embedding(folder, speech)
    assert np.isfinite(want).all() and np.std(want) > 0
    assert cosine_distance(want, got) < MAX_COSINE_DISTANCE


def test_detected_and_sized_from_the_weights(speech, tmp_path):
    from spkid import importers
    from spkid.frontends import frontend

    spec, model = MODELSCOPE["speech_eres2netv2_sv_zh-cn_16k-common"]
    folder = publish(tmp_path / "m", reference(spec, seed=1), model)
    imported = importers.load(folder)
    assert imported.family == "3D-Speaker"
    assert imported.spec.model == {"name": "eres2netv2", "kwargs": {
        "feat_dim": 80, "embed_dim": 192, "m_channels": 64, "num_blocks": [3, 4, 6, 3], "base_width": 26,
        "scale": 2, "expansion": 2, "two_emb_layer": False}}
    assert imported.spec.features["kind"] == "kaldi-fbank" and imported.spec.features["norm"] == "cmn"
    assert imported.spec.features["sample_scale"] == 1.0 and imported.spec.features["window"] == "povey"
    assert imported.spec.embedding["window_s"] == 0.0
    assert imported.description.startswith("ERes2NetV2, 192-d")
    # 3D-Speaker's features of float audio: quiet bins meet the log floor (6 % of this clip's values), so the
    # 16-bit sample scale of Kaldi's tools would differ by up to 6.4 there
    got = frontend(imported.spec.features).compute(speech)
    assert np.abs(got - reference_features(speech)).max() < 1e-3


def test_bare_checkpoint_under_its_published_name(speech, tmp_path):
    """`infer_sv.py`'s pretrained/<model>/ folder: the checkpoint alone (CAM++ VoxCeleb, 512-d)."""
    net = reference(CAMPPLUS_VOX, seed=3)
    folder = tmp_path / "speech_campplus_sv_en_voxceleb_16k"
    folder.mkdir()
    torch.save(net.state_dict(), folder / "campplus_voxceleb.bin")
    want = reference_embedding(net, speech)
    for model in (folder, folder / "campplus_voxceleb.bin"):
        got = spkid_embedding(model, speech)
        assert got.shape == (512,) and cosine_distance(want, got) < MAX_COSINE_DISTANCE


TRAINING_CONFIG = """\
exp_dir: exp/cam++
sample_rate: 16000
fbank_dim: 80
embedding_size: 192
num_epoch: 3
feature_extractor:
  obj: speakerlab.process.processor.FBank
  args:
    n_mels: <fbank_dim>
    sample_rate: <sample_rate>
    mean_nor: true
embedding_model:
  obj: speakerlab.models.campplus.DTDNN.CAMPPlus
  args:
    feat_dim: <fbank_dim>
    embedding_size: <embedding_size>
"""


def test_training_folder_takes_the_last_epoch(speech, tmp_path):
    final, earlier = reference(CAMPPLUS, seed=4), reference(CAMPPLUS, seed=5)
    (tmp_path / "config.yaml").write_text(TRAINING_CONFIG, encoding="utf-8")
    for epoch, net in ((2, earlier), (3, final)):
        (tmp_path / "models" / f"CKPT-EPOCH-{epoch}-00").mkdir(parents=True)
        torch.save(net.state_dict(), tmp_path / "models" / f"CKPT-EPOCH-{epoch}-00" / "embedding_model.ckpt")
    got = spkid_embedding(tmp_path, speech)
    assert cosine_distance(reference_embedding(final, speech), got) < MAX_COSINE_DISTANCE


def one_line_error(path: Path, *fragments: str) -> None:
    from spkid import importers

    with pytest.raises(SpkidError) as e:
        importers.load(path)
    message = str(e.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_unknown_and_damaged_layouts_are_one_line(tmp_path):
    spec, model = MODELSCOPE["speech_campplus_sv_zh-cn_16k-common"]
    net = reference(spec, seed=6)

    (tmp_path / "empty").mkdir()
    one_line_error(tmp_path / "empty", "3D-Speaker", "configuration.json")

    folder = publish(tmp_path / "truncated", net, model)
    blob = (folder / "campplus_cn_common.bin").read_bytes()
    (folder / "campplus_cn_common.bin").write_bytes(blob[: len(blob) // 2])
    one_line_error(folder, "campplus_cn_common.bin", "cannot read")

    folder = publish(tmp_path / "missing", net, model)
    (folder / "campplus_cn_common.bin").unlink()
    one_line_error(folder, "campplus_cn_common.bin", "missing")

    folder = publish(tmp_path / "wrong-size", net, {**model, "model_config": {"fbank_dim": 80, "emb_size": 512}})
    one_line_error(folder, "emb", "512", "192")

    folder = publish(tmp_path / "wrong-network", net, {**model, "type": "eres2netv2-sv"})
    one_line_error(folder, "CAM++", "ERes2NetV2")

    state = net.state_dict()
    del state["xvector.block2.tdnnd3.linear1.weight"]
    folder = tmp_path / "pruned"
    folder.mkdir()
    torch.save(state, folder / "campplus_cn_common.bin")
    one_line_error(folder, "damaged CAM++", "missing xvector.block2.tdnnd3.linear1.weight")

    folder = tmp_path / "other"
    folder.mkdir()
    torch.save({"encoder.weight": torch.zeros(3, 3)}, folder / "campplus_cn_common.bin")
    one_line_error(folder, "not a CAM++, ERes2Net or ERes2NetV2 checkpoint")


def test_onnx_export_keeps_dynamic_frames_and_segments(tmp_path):
    """CAM++'s 100-frame segment context must follow the input length in the ONNX graph (3 segments, the last one
    partial, at 450 frames), as must ERes2NetV2's shapes."""
    import onnxruntime as ort

    from spkid import importers, modelfile, onnxexport

    for key in ("speech_campplus_sv_zh-cn_16k-common", "speech_eres2netv2_sv_zh-cn_16k-common"):
        spec, model = MODELSCOPE[key]
        imported = importers.load(publish(tmp_path / key, reference(spec, seed=7), model))
        net = modelfile.build(imported.spec, imported.state)
        data = onnxexport.to_onnx(net, 80)
        assert onnxexport.check(net, data, 80, key) < 1e-5
        x = torch.randn(1, 450, 80, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            want = net(x)[0].double().numpy()
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0][0].astype(np.float64)
        assert cosine_distance(want, got) < 1e-5

"""spkid.importers.wespeaker and .pyannote: WeSpeaker's published model folders and pyannote's packaging of its
ResNet34 give the embeddings of the reference networks (`wespeaker-unofficial`, the `test` extra) on real speech.

Each test builds the reference network from the published configuration with random weights (BatchNorm running
statistics randomised too), saves it in the published layout, and compares spkid's embedding (its own network and
Kaldi fbank) with the reference network's on the reference front end (kaldi-native-fbank with WeSpeaker's options,
then the utterance mean subtracted): cosine distance below 1e-4.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, clip_files, sh

torch = pytest.importorskip("torch")
knf = pytest.importorskip("kaldi_native_fbank", reason="kaldi-native-fbank is in the `test` extra: "
                          "pip install -e '.[test]'")
WESPEAKER = importlib.util.find_spec("wespeaker")
if WESPEAKER is None:
    pytest.skip("wespeaker-unofficial (WeSpeaker's model code) is a reference package of `make install` (Makefile "
                "REFERENCE)",
                allow_module_level=True)

from spkid import importers  # noqa: E402
from spkid.embedding import Embedder  # noqa: E402
from spkid.errors import SpkidError  # noqa: E402

MAX_COSINE_DISTANCE = 1e-4  # the bound
CLIPS_ENROLL = REPO / "examples" / "clips" / "enroll"  # folders of real speech: the speaker is the folder
# what is measured (float64 distances of 1e-13 .. 1e-10); random networks barely tell front ends apart (the Povey
# window instead of the Hamming one moves them by only ~1e-5), so the tests hold them to this too
TIGHT = 1e-7
SAMPLE = REPO / "tests" / "data" / "pyannote_sample.flac"

# voxceleb_resnet34_LM's config.yaml as WeSpeaker publishes it (examples/voxceleb/v2/conf/resnet_lm.yaml as dumped
# by training); MODEL and MODEL_ARGS are filled in per test
CONFIG = """\
exp_dir: exp/ResNet34-TSTP-emb256-fbank80-num_frms200-aug0.6-spTrue-saFalse-ArcMargin-SGD-epoch150-LM
gpus: "[0,1]"
num_avg: 1
enable_amp: False
do_lm: True
seed: 42
num_epochs: 5
save_epoch_interval: 1
log_batch_interval: 100
dataloader_args:
  batch_size: 64
  num_workers: 16
  pin_memory: False
  prefetch_factor: 8
  drop_last: True
dataset_args:
  shuffle: True
  shuffle_args:
    shuffle_size: 2500
  filter: True
  filter_args:
    min_num_frames:100
    max_num_frames:800
  resample_rate: 16000
  speed_perturb: True
  num_frms: 600
  aug_prob: 0.6
  fbank_args:
    num_mel_bins: 80
    frame_shift: 10
    frame_length: 25
    dither: 1.0
  spec_aug: False
  spec_aug_args:
    num_t_mask: 1
    num_f_mask: 1
    max_t: 10
    max_f: 8
    prob: 0.6
model: MODEL
model_init: null
model_args:
MODEL_ARGS
projection_args:
  project_type: "arc_margin"
  scale: 32.0
  easy_margin: False
  embed_dim: EMBED
  num_class: 5994
margin_scheduler: MarginScheduler
margin_update:
  initial_margin: 0.5
  final_margin: 0.5
  increase_start_epoch: 1
  fix_start_epoch: 1
  update_margin: True
  increase_type: "exp"
loss: CrossEntropyLoss
loss_args: {}
optimizer: SGD
optimizer_args:
  momentum: 0.9
  nesterov: True
  weight_decay: 0.0001
scheduler: ExponentialDecrease
scheduler_args:
  initial_lr: 1.0e-4
  final_lr: 2.5e-5
  warm_up_epoch: 1
  warm_from_zero: True
"""


def wespeaker_module(name: str) -> types.ModuleType:
    """A module of the installed `wespeaker` package without running its __init__ (which imports its CLI:
    torchaudio, silero-vad, ...): bare parent packages pointing at the installed folders."""
    root = Path(WESPEAKER.submodule_search_locations[0])
    for pkg, folder in (("wespeaker", root), ("wespeaker.models", root / "models")):
        if pkg not in sys.modules or not hasattr(sys.modules[pkg], "__path__"):
            module = types.ModuleType(pkg)
            module.__path__ = [str(folder)]
            sys.modules[pkg] = module
    return importlib.import_module(f"wespeaker.models.{name}")


def randomize(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded random weights, BatchNorm running statistics included (scaled to keep activations moderate)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.num_features, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)
                if module.affine:
                    module.weight.copy_(torch.rand(module.num_features, generator=g) * 0.5 + 0.5)
                    module.bias.copy_(torch.randn(module.num_features, generator=g) * 0.1)
            else:
                for p in module.parameters(recurse=False):
                    p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
    return net.eval()


def speech() -> list[np.ndarray]:
    """Real speech: the first 4 s of the pyannote sample and one LibriSpeech clip."""
    x, sr = sf.read(SAMPLE, dtype="float32")
    assert sr == 16000
    y, _ = sf.read(clip_files("probe")[0], dtype="float32")
    return [x[: 4 * sr], y[: 3 * sr]]


def reference_fbank(x: np.ndarray, window: str = "hamming") -> torch.Tensor:
    """WeSpeaker's front end: Kaldi fbank (80 bins, 25/10 ms, dither 0, `window`) on 16-bit-scaled samples, CMN."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = 16000
    opts.frame_opts.dither = 0.0
    opts.frame_opts.frame_length_ms = 25
    opts.frame_opts.frame_shift_ms = 10
    opts.frame_opts.snip_edges = True
    opts.frame_opts.window_type = window
    opts.mel_opts.num_bins = 80
    opts.use_energy = False
    f = knf.OnlineFbank(opts)
    f.accept_waveform(16000, (np.asarray(x, np.float64) * 32768).tolist())
    f.input_finished()
    feats = np.array([f.get_frame(i) for i in range(f.num_frames_ready)], np.float32)
    return torch.from_numpy(feats - feats.mean(axis=0))[None]


def reference_embeddings(net: torch.nn.Module, signals: list[np.ndarray], window: str = "hamming") -> np.ndarray:
    with torch.no_grad():
        out = [net(reference_fbank(x, window)) for x in signals]
    return np.concatenate([(o[-1] if isinstance(o, tuple) else o).numpy() for o in out])


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 1 - (a * b).sum(1)


def publish(folder: Path, net: torch.nn.Module, model: str, model_args: dict, embed_dim: int,
            weights: str = "avg_model.pt") -> Path:
    """`net` as WeSpeaker publishes a model: its state dict plus the training head (`projection.weight`, the
    ArcMargin classes x embedding) in `weights`, and config.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    state = dict(net.state_dict())
    state["projection.weight"] = torch.randn(5994, embed_dim)
    torch.save(state, folder / weights)
    args = "\n".join(f"  {k}: {v!r}" if isinstance(v, str) else f"  {k}: {v}" for k, v in model_args.items())
    text = CONFIG.replace("MODEL_ARGS", args).replace("MODEL", model).replace("EMBED", str(embed_dim))
    (folder / "config.yaml").write_text(text)
    return folder


def spkid_embeddings(path: Path, signals: list[np.ndarray]) -> np.ndarray:
    embedder = Embedder.from_model(importers_ref(path), use_vad=False)
    return embedder.embed_signals(signals, 16000)


def importers_ref(path: Path):
    """The lead's `--model DIR` path when it is in (`resolve_model`), else the importer straight."""
    from spkid import modelfile
    from spkid.embedding import ModelRef

    imported = importers.family_module("pyannote" if (path / "pytorch_model.bin").exists() or path.suffix == ".bin"
                                       else "wespeaker").load(path)
    sha = modelfile.fingerprint(imported.spec, imported.state)
    return ModelRef(str(path), path, sha, spec=imported.spec, state=imported.state, family=imported.family)


def check_equal(folder: Path, ref: torch.nn.Module, signals: list[np.ndarray]) -> float:
    mine = spkid_embeddings(folder, signals)
    worst = float(cosine_distance(mine, reference_embeddings(ref, signals)).max())
    assert worst < MAX_COSINE_DISTANCE and worst < TIGHT, worst
    return worst


@pytest.fixture(scope="module")
def signals() -> list[np.ndarray]:
    torch.set_num_threads(1)
    return speech()


def test_resnet34_lm_equals_wespeaker(tmp_path: Path, signals):
    resnet = wespeaker_module("resnet")
    args = {"feat_dim": 80, "embed_dim": 256, "pooling_func": "TSTP", "two_emb_layer": False}
    ref = randomize(resnet.ResNet34(**args), 0)
    folder = publish(tmp_path / "unpacked" / "voxceleb_resnet34_LM", ref, "ResNet34", args, 256)
    assert importers.family_module("wespeaker").matches(folder)
    assert importers.family_module("wespeaker").matches(tmp_path / "unpacked")  # the .zip's folder, unpacked
    imported = importers.family_module("wespeaker").load(folder)
    assert imported.family == "WeSpeaker" and imported.description == "ResNet34, 256-d embedding"
    assert imported.spec.features["window"] == "hamming" and imported.spec.features["norm"] == "cmn"
    assert imported.spec.embedding["window_s"] == 0.0
    assert not any(k.startswith("projection.") for k in imported.state)
    check_equal(folder, ref, signals)
    # the check can tell front ends apart: Kaldi's default Povey window instead of WeSpeaker's Hamming one
    povey = cosine_distance(spkid_embeddings(folder, signals), reference_embeddings(ref, signals, "povey"))
    assert povey.max() > 10 * TIGHT


def test_two_embedding_layers_and_a_single_pt(tmp_path: Path, signals):
    """`two_emb_layer: True` (seg_bn_1 running statistics randomised) and a folder whose checkpoint is another .pt."""
    resnet = wespeaker_module("resnet")
    args = {"feat_dim": 80, "embed_dim": 128, "pooling_func": "TSTP", "two_emb_layer": True}
    ref = randomize(resnet.ResNet18(**args), 1)
    folder = publish(tmp_path / "r18", ref, "ResNet18", args, 128, weights="model_150.pt")
    check_equal(folder, ref, signals)


def test_resnet293_equals_wespeaker(tmp_path: Path, signals):
    resnet = wespeaker_module("resnet")
    args = {"feat_dim": 80, "embed_dim": 256, "pooling_func": "TSTP", "two_emb_layer": False}
    ref = randomize(resnet.ResNet293(**args), 2)
    folder = publish(tmp_path / "voxceleb_resnet293_LM", ref, "ResNet293", args, 256)
    check_equal(folder, ref, [signals[1][:24000]])


@pytest.mark.parametrize("model,channels", [("ECAPA_TDNN_GLOB_c512", 512), ("ECAPA_TDNN_c1024", 1024)])
def test_ecapa_equals_wespeaker(tmp_path: Path, signals, model: str, channels: int):
    ecapa = wespeaker_module("ecapa_tdnn")
    args = {"feat_dim": 80, "embed_dim": 192, "pooling_func": "ASTP"}
    ref = randomize(getattr(ecapa, model)(**args), 3)
    folder = publish(tmp_path / model, ref, model, args, 192)
    imported = importers.family_module("wespeaker").load(folder)
    assert imported.spec.model == {"name": "wespeaker_ecapa", "kwargs": {
        "feat_dim": 80, "embed_dim": 192, "channels": channels, "pooling": "ASTP",
        "global_context_att": "GLOB" in model, "emb_bn": False}}
    check_equal(folder, ref, signals)


def test_campplus_equals_wespeaker(tmp_path: Path, signals):
    """WeSpeaker's CAM++ (voxceleb campplus_lm.yaml: 512-d, TSTP) read into spkid's CAM++ (3D-Speaker's names)."""
    campplus = wespeaker_module("campplus")
    args = {"feat_dim": 80, "embed_dim": 512, "pooling_func": "TSTP"}
    ref = randomize(campplus.CAMPPlus(**args), 7)
    folder = publish(tmp_path / "voxceleb_CAM++_LM", ref, "CAMPPlus", args, 512)
    imported = importers.family_module("wespeaker").load(folder)
    assert imported.spec.model == {"name": "campplus", "kwargs": {"feat_dim": 80, "embed_dim": 512, "pool_eps": 1e-7}}
    check_equal(folder, ref, signals)


def test_bad_wespeaker_folders_are_one_line(tmp_path: Path):
    resnet = wespeaker_module("resnet")
    args = {"feat_dim": 80, "embed_dim": 256, "pooling_func": "TSTP", "two_emb_layer": False}
    ref = resnet.ResNet34(**args)
    wespeaker = importers.family_module("wespeaker")
    folder = publish(tmp_path / "a", ref, "ResNet50", args, 256)  # config names another network
    with pytest.raises(SpkidError, match=r"weights do not fit the configured network wespeaker_resnet \(missing"):
        wespeaker.load(folder)
    publish(folder, ref, "XVEC", args, 256)
    with pytest.raises(SpkidError, match="WeSpeaker model 'XVEC' is not one spkid reads"):
        wespeaker.load(folder)
    publish(folder, ref, "ResNet34", {**args, "mystery": 3}, 256)
    with pytest.raises(SpkidError, match=r"model_args \['mystery'\]"):
        wespeaker.load(folder)
    publish(folder, ref, "ResNet34", args, 256)
    (folder / "avg_model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SpkidError, match="cannot read its weights safely") as e:
        wespeaker.load(folder)
    assert "\n" not in str(e.value)
    (folder / "avg_model.pt").unlink()
    assert not wespeaker.matches(folder)  # no checkpoint
    (folder / "x.pt").write_bytes(b"")
    (folder / "y.pt").write_bytes(b"")
    assert not wespeaker.matches(folder)  # two candidates and no avg_model.pt
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("model: foo\n")
    (other / "avg_model.pt").write_bytes(b"")
    assert not wespeaker.matches(other)  # not WeSpeaker's config (no model_args)


def test_resnet_exports_to_onnx_with_dynamic_frames():
    from spkid.models.wespeaker import WeSpeakerECAPA, WeSpeakerResNet
    from spkid.onnxexport import check, to_onnx

    nets = (WeSpeakerResNet(feat_dim=80, embed_dim=256),
            WeSpeakerResNet(feat_dim=80, embed_dim=64, block="bottleneck", layers=(1, 1, 1, 1), two_emb_layer=True),
            WeSpeakerECAPA(feat_dim=80, channels=256, global_context_att=True))
    for net in nets:
        randomize(net, 4)
        worst = check(net, to_onnx(net, 80), 80, "test")
        assert worst < 1e-4


# pyannote's checkpoint pickles records of its own classes; stand-ins under the same module paths (only for
# writing the file here: spkid reads it without them)
@dataclasses.dataclass
class Specifications:
    problem: object
    resolution: object
    duration: float
    min_duration: float | None = None
    warm_up: tuple = (0.0, 0.0)
    classes: list | None = None
    powerset_max_classes: int | None = None
    permutation_invariant: bool = False


class Problem(enum.Enum):
    BINARY_CLASSIFICATION = 0
    REPRESENTATION = 3


class Resolution(enum.Enum):
    FRAME = 1
    CHUNK = 2


def write_pyannote(path: Path, net: torch.nn.Module, monkeypatch: pytest.MonkeyPatch, extra: object = None) -> Path:
    """`net` as pyannote/wespeaker-voxceleb-resnet34-LM's pytorch_model.bin: a Lightning checkpoint with the
    weights under "resnet.", hyper-parameters, and pyannote's records (TorchVersion, Specifications, enums)."""
    task = types.ModuleType("pyannote.audio.core.task")
    for cls in (Specifications, Problem, Resolution):
        monkeypatch.setattr(cls, "__module__", task.__name__)
        setattr(task, cls.__name__, cls)
    for name in ("pyannote", "pyannote.audio", "pyannote.audio.core"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, task.__name__, task)
    from torch.torch_version import TorchVersion

    checkpoint = {
        "epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.1.0",
        "state_dict": {f"resnet.{k}": v for k, v in net.state_dict().items()},
        "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"sample_rate": 16000, "num_channels": 1, "num_mel_bins": 80, "frame_length": 25,
                             "frame_shift": 10, "dither": 0.0, "window_type": "hamming", "use_energy": False},
        "pyannote.audio": {
            "versions": {"torch": TorchVersion("2.1.1"), "pyannote.audio": "3.1.0"},
            "architecture": {"module": "pyannote.audio.models.embedding.wespeaker", "class": "WeSpeakerResNet34"},
            "specifications": Specifications(Problem.REPRESENTATION, Resolution.CHUNK, 5.0),
        },
    }
    if extra is not None:
        checkpoint["extra"] = extra
    path.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path / "pytorch_model.bin")
    return path


def test_pyannote_resnet34_equals_wespeaker(tmp_path: Path, signals, monkeypatch: pytest.MonkeyPatch):
    resnet = wespeaker_module("resnet")
    ref = randomize(resnet.ResNet34(feat_dim=80, embed_dim=256, pooling_func="TSTP", two_emb_layer=False), 5)
    folder = write_pyannote(tmp_path / "wespeaker-voxceleb-resnet34-LM", ref, monkeypatch)
    # pyannote's copy of the network pools the unbiased standard deviation with no epsilon (its StatsPool)
    ref.pool.forward = lambda x: torch.cat([x.flatten(1, 2).mean(-1), x.flatten(1, 2).std(-1)], dim=1)
    monkeypatch.undo()  # spkid reads it without the stand-ins
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        torch.load(folder / "pytorch_model.bin", weights_only=True)  # why the stand-ins are needed
    pyannote = importers.family_module("pyannote")
    assert pyannote.matches(folder) and pyannote.matches(folder / "pytorch_model.bin")
    assert not importers.family_module("wespeaker").matches(folder)
    imported = pyannote.load(folder)
    assert imported.family == "pyannote" and imported.description.startswith("WeSpeakerResNet34 (WeSpeaker ResNet34)")
    assert imported.spec.model["kwargs"]["var_eps"] == 0.0  # pyannote pools without WeSpeaker's epsilon
    check_equal(folder, ref, signals)
    pipe_into_gallery(folder, tmp_path / "g")


def pipe_into_gallery(model: Path, g: Path) -> None:
    """`spkid embed --model MODEL | spkid enroll`, then `spkid identify` of a probe clip finds the model the gallery
    records (scores only: an imported model has no calibration)."""
    sh(f"spkid embed {CLIPS_ENROLL} --model {model} | spkid enroll -g {g}", check=True)
    proc = sh(f"spkid identify {clip_files('probe')[0]} -g {g} --json", check=True)
    record = json.loads(proc.stdout)
    assert record["threshold"] is None and len(record["top"]) >= 1 and b"no threshold" in proc.stderr


def test_pyannote_file_with_other_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import os

    class Payload:
        def __reduce__(self):
            return os.system, ("echo unsafe",)

    resnet = wespeaker_module("resnet")
    folder = write_pyannote(tmp_path / "p", resnet.ResNet34(feat_dim=80, embed_dim=256), monkeypatch, Payload())
    monkeypatch.undo()
    pyannote = importers.family_module("pyannote")
    assert pyannote.matches(folder)
    with pytest.raises(SpkidError, match=r"not read: it names (posix|os|nt)\.system, which spkid does not load") as e:
        pyannote.load(folder)
    assert "\n" not in str(e.value)
    (folder / "pytorch_model.bin").write_bytes((folder / "pytorch_model.bin").read_bytes()[:5000])
    assert not pyannote.matches(folder)  # a damaged zip


def test_cli_embed_reads_a_wespeaker_folder(tmp_path: Path):
    """`spkid embed --model DIR` with a published folder, and one clear line for a folder of no known layout."""
    resnet = wespeaker_module("resnet")
    args = {"feat_dim": 80, "embed_dim": 256, "pooling_func": "TSTP", "two_emb_layer": False}
    ref = randomize(resnet.ResNet34(**args), 6)
    folder = publish(tmp_path / "voxceleb_resnet34_LM", ref, "ResNet34", args, 256)
    clip = clip_files("probe")[0]
    sh(f"spkid embed {clip} --model {folder} --no-vad -o {tmp_path}/e.npy", check=True)
    pipe_into_gallery(folder, tmp_path / "g")
    from spkid import streams

    got = streams.read_embeddings(str(tmp_path / "e.npy")).values
    y, _ = sf.read(clip, dtype="float32")
    assert cosine_distance(got, reference_embeddings(ref, [y])).max() < MAX_COSINE_DISTANCE
    # its ONNX form (`spkid export DIR`) embeds alike
    sh(f"spkid export {folder} -o {tmp_path}/m.onnx && spkid embed {clip} --model {tmp_path}/m.onnx --no-vad "
       f"-o {tmp_path}/o.npy", check=True)
    assert cosine_distance(streams.read_embeddings(str(tmp_path / "o.npy")).values, got).max() < TIGHT
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "weights.bin").write_bytes(b"\0" * 100)
    bad = sh(f"spkid embed {clip} --model {empty} --no-vad -o {tmp_path}/f.npy")
    lines = bad.stderr.decode().strip().splitlines()
    assert bad.returncode == 1 and len(lines) == 1, bad.stderr
    assert "WeSpeaker: a folder with avg_model.pt" in lines[0] and "pyannote:" in lines[0]

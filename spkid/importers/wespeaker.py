"""WeSpeaker's model folders: `avg_model.pt` (or one other `*.pt`) beside the training `config.yaml`.

This is what WeSpeaker's hub publishes for each pretrained model (e.g. `voxceleb_resnet34_LM`, unpacked from its
`.tar.gz`) and what a recipe leaves in `exp/<name>/` (`config.yaml`, `models/avg_model.pt`). The configuration
names the network (`model: ResNet34`, `ECAPA_TDNN_GLOB_c512`, `CAMPPlus`, ...) and its `model_args`
(`feat_dim`, `embed_dim`, `pooling_func`, `two_emb_layer`, `emb_bn`), and the front end in
`dataset_args` (`resample_rate`, `fbank_args`: `num_mel_bins`, `frame_length` and `frame_shift` in ms). At
inference WeSpeaker computes Kaldi's fbank with the Hamming window and dither 0 on 16-bit-scaled samples and
subtracts the utterance mean, and embeds the whole utterance at once: that is the spec written here.

The checkpoint is a plain state dict (or one under "state_dict") in the network's own names, read with
`weights_only=True`; the training head (`projection.*`: the margin softmax weights) is dropped. The networks are
`spkid.models.wespeaker` (ResNet, ECAPA-TDNN) and `spkid.models.campplus` (CAM++: WeSpeaker's copy has
3D-Speaker's parameter names, and pools with WeSpeaker's 1e-7 added to the variance).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from spkid.errors import SpkidError
from spkid.importers import Imported, read_weights, tensors

FAMILY = "WeSpeaker"
EXPECTS = "a folder with avg_model.pt (or one *.pt) and WeSpeaker's config.yaml (model, model_args)"
CONFIG = "config.yaml"
WEIGHTS = "avg_model.pt"
HEAD = "projection."  # the training-only margin softmax (ArcMargin, AM, ...)
ECAPA = re.compile(r"ECAPA_TDNN(_GLOB)?_c(\d+)")
_MODEL_ARGS = re.compile(rb"^model_args\s*:", re.MULTILINE)


def _root(path: Path) -> Path:
    """`path`, or the one folder inside it when it holds only that (WeSpeaker's .zip unpacks into
    `voxceleb_resnet34_LM/`)."""
    if path.is_dir() and not (path / CONFIG).exists():
        try:
            entries = [e for e in path.iterdir() if not e.name.startswith(".")]
        except OSError:
            return path
        if len(entries) == 1 and entries[0].is_dir():
            return entries[0]
    return path


def _config_of(path: Path) -> Path:
    folder = path if path.is_dir() else path.parent
    return folder / CONFIG


def _weights_of(path: Path) -> Path | None:
    """The checkpoint: `path` itself (a .pt file), else the folder's avg_model.pt (also under models/), else its
    only *.pt; None when there is none or several."""
    if path.is_file():
        return path if path.suffix == ".pt" else None
    for candidate in (path / WEIGHTS, path / "models" / WEIGHTS):
        if candidate.is_file():
            return candidate
    found = sorted(path.glob("*.pt"))
    return found[0] if len(found) == 1 else None


def matches(path: Path) -> bool:
    """A folder (or a .pt file) with WeSpeaker's config.yaml beside it, one that has `model_args`."""
    path = _root(path)
    config = _config_of(path)
    if not config.is_file() or _weights_of(path) is None:
        return False
    try:
        with open(config, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return _MODEL_ARGS.search(head) is not None


def load(path: Path) -> Imported:
    from spkid.importers._yaml import read_yaml

    path = _root(path)
    config = _config_of(path)
    weights = _weights_of(path)
    if not config.is_file() or weights is None:
        raise SpkidError(f"{path}: not a WeSpeaker model folder; expected {EXPECTS}")
    cfg = read_yaml(config)
    arch = cfg.get("model")
    args = cfg.get("model_args") or {}
    if not isinstance(arch, str) or not isinstance(args, dict):
        raise SpkidError(f"{config}: expected `model: NAME` and a `model_args` mapping")
    dataset = cfg.get("dataset_args") or {}
    if not isinstance(dataset, dict):
        raise SpkidError(f"{config}: dataset_args must be a mapping")
    if dataset.get("frontend", "fbank") != "fbank":
        raise SpkidError(f"{config}: front end {dataset['frontend']!r}; spkid reads WeSpeaker models on fbank only")
    features = front_end(dataset, config)
    name, kwargs = network(arch, args, config)
    if kwargs["feat_dim"] != features["n_filters"]:
        raise SpkidError(f"{config}: model_args.feat_dim {kwargs['feat_dim']} but fbank_args.num_mel_bins "
                         f"{features['n_filters']}")
    state = checkpoint_state(read_weights(weights), weights)
    check_state(name, kwargs, state, weights)
    spec = make_spec(name, kwargs, features, {
        "source": f"WeSpeaker {weights.name} + {CONFIG}", "family": FAMILY, "architecture": arch,
        "model_args": {k: v for k, v in args.items() if isinstance(v, (str, int, float, bool))},
    })
    return Imported(FAMILY, f"{arch}, {kwargs['embed_dim']}-d embedding", spec, state)


def front_end(dataset: dict[str, Any], source: Path) -> dict[str, Any]:
    """The `KaldiFbankConfig` (as a dict) of WeSpeaker's `dataset_args`: its sample rate and fbank_args, dither 0
    (inference), the Hamming window (WeSpeaker's `compute_fbank`; a `window_type` in fbank_args overrides), CMN."""
    fbank = dataset.get("fbank_args") or {}
    if not isinstance(fbank, dict):
        raise SpkidError(f"{source}: dataset_args.fbank_args must be a mapping")
    return kaldi_fbank(fbank, dataset.get("resample_rate", 16000), f"{source}: bad fbank settings")


def kaldi_fbank(args: dict[str, Any], sample_rate: object, problem: str) -> dict[str, Any]:
    """The `KaldiFbankConfig` (as a dict) of torchaudio `kaldi.fbank` keywords as WeSpeaker's `fbank_args` and
    pyannote's `hyper_parameters` record them (lengths in ms; the Hamming window unless `window_type` says), the
    utterance mean removed; `problem` starts the one-line error for values that are not numbers."""
    from spkid.kaldifbank import KaldiFbankConfig

    try:
        cfg = KaldiFbankConfig(
            sample_rate=int(sample_rate),
            n_filters=int(args.get("num_mel_bins", 80)),
            win_len=float(args.get("frame_length", 25)) / 1000,
            win_step=float(args.get("frame_shift", 10)) / 1000,
            window=str(args.get("window_type", "hamming")),
            norm="cmn",
        )
    except (TypeError, ValueError) as e:
        raise SpkidError(f"{problem} ({e})") from None
    return cfg.to_dict()


def network(arch: str, args: dict[str, Any], source: Path) -> tuple[str, dict[str, Any]]:
    """spkid's registry name and constructor keywords for WeSpeaker's `model` and `model_args`."""
    from spkid.models.wespeaker import DEPTHS, VAR_EPS

    known = {"feat_dim", "embed_dim", "pooling_func"}
    if arch in DEPTHS:
        known |= {"two_emb_layer"}
    elif ECAPA.fullmatch(arch):
        known |= {"emb_bn"}
    elif arch != "CAMPPlus":
        raise SpkidError(f"{source}: WeSpeaker model {arch!r} is not one spkid reads; it reads "
                         f"{', '.join(DEPTHS)}, ECAPA_TDNN[_GLOB]_c512/c1024 and CAMPPlus")
    if unknown := sorted(set(args) - known):
        raise SpkidError(f"{source}: model_args {unknown} of {arch} are not ones spkid knows ({sorted(known)})")
    feat_dim, embed_dim = int(args.get("feat_dim", 80)), int(args.get("embed_dim", 256))
    pooling = str(args.get("pooling_func", "ASTP" if ECAPA.fullmatch(arch) else "TSTP"))
    if arch in DEPTHS:
        block, layers = DEPTHS[arch]
        return "wespeaker_resnet", {"feat_dim": feat_dim, "embed_dim": embed_dim, "block": block,
                                    "layers": list(layers), "m_channels": 32,
                                    "two_emb_layer": bool(args.get("two_emb_layer", False)), "pooling": pooling}
    m = ECAPA.fullmatch(arch)
    if m:
        return "wespeaker_ecapa", {"feat_dim": feat_dim, "embed_dim": embed_dim, "channels": int(m.group(2)),
                                   "pooling": pooling, "global_context_att": bool(m.group(1)),
                                   "emb_bn": bool(args.get("emb_bn", False))}
    if pooling != "TSTP":
        raise SpkidError(f"{source}: CAMPPlus with pooling_func {pooling!r}; spkid reads CAM++ with TSTP only")
    return "campplus", {"feat_dim": feat_dim, "embed_dim": embed_dim, "pool_eps": VAR_EPS}


def checkpoint_state(blob: dict, source: Path) -> dict:
    """The network's tensors of a WeSpeaker checkpoint: the state dict itself or its "state_dict", a DDP
    "module." prefix removed, the training head dropped."""
    if isinstance(blob.get("state_dict"), dict):
        blob = blob["state_dict"]
    state = tensors(blob, source)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(HEAD)}
    if not state:
        raise SpkidError(f"{source}: the checkpoint holds only the training head ({HEAD}*), no network")
    return state


def check_state(name: str, kwargs: dict[str, Any], state: dict, source: Path) -> None:
    """A one-line SpkidError when the weights do not fit the network the configuration describes."""
    import torch

    from spkid.models import build_model

    with torch.device("meta"):  # shapes only: nothing allocated or initialised
        want = build_model(name, **kwargs).state_dict()
    missing = sorted(want.keys() - state.keys())
    extra = sorted(state.keys() - want.keys())
    wrong = sorted(k for k in want.keys() & state.keys() if want[k].shape != state[k].shape)
    if missing or extra or wrong:
        parts = [f"{label} {keys[:3]}{' ...' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", extra), ("other shapes", wrong)) if keys]
        raise SpkidError(f"{source}: weights do not fit the configured network {name} ({'; '.join(parts)}); "
                         "is config.yaml the one trained with these weights?")


def make_spec(name: str, kwargs: dict[str, Any], features: dict[str, Any], training: dict[str, Any]):
    """The model spec of an imported WeSpeaker-style network: whole-utterance embedding, no calibration."""
    from spkid.modelfile import ModelSpec

    return ModelSpec(model={"name": name, "kwargs": kwargs}, features=features,
                     embedding={"window_s": 0.0, "hop_s": 1.5, "min_s": 0.5}, training=training)

"""3D-Speaker's speaker encoders (CAM++, ERes2Net, ERes2NetV2) as ModelScope publishes them or its recipes train them.

Layouts read:
- a ModelScope model folder (`iic/speech_campplus_sv_zh-cn_16k-common` and the others 3D-Speaker's `infer_sv.py`
  lists): `configuration.json`, whose `model.type` is `cam++-sv`, `eres2net-sv`, `eres2net-aug-sv` or
  `eres2netv2-sv` and whose `model.pretrained_model` names the checkpoint beside it (`campplus_cn_common.bin`,
  `pretrained_eres2netv2.ckpt`, ...); `model.model_config` holds the sizes (`emb_size`, `embed_dim`, `channels`,
  `baseWidth`, `scale`, `expansion`, `fbank_dim`);
- such a checkpoint on its own, under its published name, or a folder holding one (what `infer_sv.py` links into
  `pretrained/<model>/`);
- a training folder of 3D-Speaker's recipes: `config.yaml` (its `embedding_model.obj` a class of
  `speakerlab.models`, `<name>` references to top-level keys) and `models/CKPT-EPOCH-<n>-00/embedding_model.ckpt`
  (the epoch `num_epoch` names, else the last one).

Every checkpoint is a plain state dict in the naming of 3D-Speaker's modules, which `spkid.models.campplus` and
`spkid.models.eres2net` keep, so the weights are taken as they are. The network and its sizes are read from the
weights themselves (which modules exist, their shapes) and checked against what the configuration says.

Front end (3D-Speaker's `FBank`, ModelScope's pipelines): torchaudio's Kaldi fbank with its defaults (Povey window,
dither 0, 80 bins) of float audio as `torchaudio.load` gives it (in [-1, 1]: `sample_scale` 1, not Kaldi's 16-bit
range, so very quiet bins meet the log floor), minus the utterance mean. The whole utterance is one window.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from spkid.errors import SpkidError
from spkid.importers import Imported, read_weights

FAMILY = "3D-Speaker"
EXPECTS = ("a ModelScope folder (configuration.json of type cam++-sv, eres2net-sv, eres2net-aug-sv or eres2netv2-sv, "
           "with its campplus_*.bin or pretrained_*.ckpt), such a checkpoint under its published name, or a training "
           "folder (config.yaml with models/CKPT-EPOCH-*/embedding_model.ckpt)")

CONFIG_JSON = "configuration.json"
CONFIG_YAML = "config.yaml"
MAX_CONFIG = 1 << 20  # bytes
TYPES = {"cam++-sv": "campplus", "eres2net-sv": "eres2net", "eres2net-aug-sv": "eres2net",
         "eres2netv2-sv": "eres2netv2"}
# The checkpoints 3D-Speaker's infer_sv.py downloads, by file name
PUBLISHED = {
    "campplus_cn_common.bin": "campplus",
    "campplus_cn_en_common.pt": "campplus",
    "campplus_voxceleb.bin": "campplus",
    "pretrained_eres2net.ckpt": "eres2net",
    "pretrained_eres2net.pt": "eres2net",
    "pretrained_eres2net_aug.ckpt": "eres2net",
    "eres2net_base_model.ckpt": "eres2net",
    "eres2net_large_model.ckpt": "eres2net",
    "pretrained_eres2netv2.ckpt": "eres2netv2",
    "pretrained_eres2netv2w24s4ep4.ckpt": "eres2netv2",
}
CLASSES = {  # speakerlab's classes (training config.yaml `obj`)
    "speakerlab.models.campplus.DTDNN.CAMPPlus": "campplus",
    "speakerlab.models.eres2net.ERes2Net.ERes2Net": "eres2net",
    "speakerlab.models.eres2net.ERes2Net_huge.ERes2Net": "eres2net",
    "speakerlab.models.eres2net.ERes2NetV2.ERes2NetV2": "eres2netv2",
}
NAMES = {"campplus": "CAM++", "eres2net": "ERes2Net", "eres2netv2": "ERes2NetV2"}
CHECKPOINT = "embedding_model.ckpt"
_EPOCH = re.compile(r"CKPT-EPOCH-(\d+)-(\d+)")
_REF = re.compile(r"<([A-Za-z]\w*)>")


def matches(path: Path) -> bool:
    """Whether `path` has one of the layouts of the module docstring (file names and small config files only)."""
    try:
        if path.is_file():
            return path.name in PUBLISHED or _model_type(path.parent) is not None and _named(path.parent) == path.name
        if not path.is_dir():
            return False
        if _model_type(path) is not None:
            return True
        if any((path / name).is_file() for name in PUBLISHED):
            return True
        return (path / CONFIG_YAML).is_file() and _training_class(path) is not None
    except (OSError, SpkidError):
        return False


def load(path: Path) -> Imported:
    """The model at `path` (module docstring) as a spkid spec and weights; one-line SpkidError when it is not one."""
    from spkid.kaldifbank import KaldiFbankConfig
    from spkid.modelfile import ModelSpec

    layout = _locate(path)
    state = _tensor_state(read_weights(layout["checkpoint"]), layout["checkpoint"])
    name = _network(state, layout["checkpoint"])
    if layout["network"] is not None and layout["network"] != name:
        raise SpkidError(f"{layout['checkpoint']}: its weights are a {NAMES[name]} network, but "
                         f"{layout['config']} says {NAMES[layout['network']]}")
    src = layout["checkpoint"]
    try:
        kwargs = _campplus_kwargs(state) if name == "campplus" else _eres2net_kwargs(state, name, layout["feat_dim"])
    except (KeyError, IndexError, ValueError) as e:
        raise SpkidError(f"{src}: damaged {NAMES[name]} checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    _check_stated(kwargs, layout["stated"], layout["config"])
    _check_shapes(name, kwargs, state, src)
    features = KaldiFbankConfig(n_filters=kwargs["feat_dim"], norm="cmn" if layout["mean_nor"] else "none",
                                sample_scale=1.0).to_dict()
    spec = ModelSpec(
        model={"name": name, "kwargs": kwargs},
        features=features,
        embedding={"window_s": 0.0, "hop_s": 1.5, "min_s": 0.5},
        training={"source": f"{FAMILY} {layout['files']}", "family": FAMILY, **layout["summary"]},
    )
    n_params = sum(int(t.numel()) for k, t in state.items() if not k.endswith(("running_mean", "running_var",
                                                                                "num_batches_tracked")))
    description = f"{NAMES[name]}, {kwargs['embed_dim']}-d embeddings, {n_params / 1e6:.1f} M parameters"
    return Imported(FAMILY, description, spec, state)


# --- layouts -------------------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_CONFIG:
            raise SpkidError(f"{path}: too large for a model configuration")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise SpkidError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise SpkidError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise SpkidError(f"{path}: expected a JSON object")
    return data


def _model_section(folder: Path) -> dict[str, Any] | None:
    p = folder / CONFIG_JSON
    if not p.is_file():
        return None
    model = _read_json(p).get("model")
    return model if isinstance(model, dict) else None


def _model_type(folder: Path) -> str | None:
    """The network a ModelScope `configuration.json` in `folder` names (TYPES), else None."""
    model = _model_section(folder)
    return TYPES.get(str(model.get("type"))) if model else None


def _named(folder: Path) -> str | None:
    """The checkpoint file name `configuration.json` gives (`model.pretrained_model`)."""
    model = _model_section(folder) or {}
    name = model.get("pretrained_model")
    return name if isinstance(name, str) else None


def _training_class(folder: Path) -> str | None:
    from spkid.importers._yaml import read_yaml

    entry = read_yaml(folder / CONFIG_YAML).get("embedding_model")
    obj = entry.get("obj") if isinstance(entry, dict) else None
    return CLASSES.get(obj) if isinstance(obj, str) else None


def _locate(path: Path) -> dict[str, Any]:
    """Where the checkpoint is and what the configuration says: checkpoint, config (its path, for messages),
    network (None: not said), stated sizes, feat_dim, mean_nor, files (for the spec), summary."""
    folder = path.parent if path.is_file() else path
    out: dict[str, Any] = {"network": None, "stated": {}, "feat_dim": 80, "mean_nor": True, "summary": {}}
    model = _model_section(folder) if (folder / CONFIG_JSON).is_file() else None
    if model is not None and str(model.get("type")) in TYPES:
        kind = str(model["type"])
        name = model.get("pretrained_model")
        if not isinstance(name, str) or Path(name).name != name or not name:
            raise SpkidError(f"{folder / CONFIG_JSON}: model.pretrained_model must name the checkpoint file beside it, "
                             f"got {name!r}")
        if path.is_file() and path.name != name:
            raise SpkidError(f"{path}: {folder / CONFIG_JSON} names another checkpoint ({name})")
        ckpt = folder / name
        if not ckpt.is_file():
            raise SpkidError(f"{folder}: the checkpoint {name} that {CONFIG_JSON} names is missing")
        cfg = model.get("model_config") if isinstance(model.get("model_config"), dict) else {}
        rate = cfg.get("sample_rate", 16000)
        if rate != 16000:
            raise SpkidError(f"{folder / CONFIG_JSON}: sample_rate {rate!r}; 3D-Speaker's models take 16000 Hz")
        out.update(checkpoint=ckpt, config=folder / CONFIG_JSON, network=TYPES[kind], files=f"{CONFIG_JSON} + {name}",
                   summary={"type": kind, "model_config": cfg})
        out["stated"] = {k: cfg[v] for k, v in (("embed_dim", "emb_size"), ("embed_dim", "embed_dim"),
                                                ("m_channels", "channels"), ("base_width", "baseWidth"),
                                                ("scale", "scale"), ("expansion", "expansion"),
                                                ("feat_dim", "fbank_dim")) if v in cfg}
        if kind == "eres2net-aug-sv":
            out["stated"].update(m_channels=64, base_width=24, scale=3, expansion=4)
        out["feat_dim"] = out["stated"].get("feat_dim", 80)
        return out
    if path.is_file():
        out.update(checkpoint=path, config=path, network=PUBLISHED.get(path.name), files=path.name)
        return out
    if (folder / CONFIG_YAML).is_file():
        return _locate_training(folder, out)
    found = [name for name in PUBLISHED if (folder / name).is_file()]
    if len(found) != 1:
        raise SpkidError(f"{folder}: expected one 3D-Speaker checkpoint, found {', '.join(found) or 'none'}")
    out.update(checkpoint=folder / found[0], config=folder / found[0], network=PUBLISHED[found[0]], files=found[0])
    return out


def _locate_training(folder: Path, out: dict[str, Any]) -> dict[str, Any]:
    from spkid.importers._yaml import read_yaml

    cfg_path = folder / CONFIG_YAML
    cfg = read_yaml(cfg_path)
    entry = cfg.get("embedding_model")
    obj = entry.get("obj") if isinstance(entry, dict) else None
    if obj not in CLASSES:
        raise SpkidError(f"{cfg_path}: embedding_model.obj {obj!r} is not a 3D-Speaker network spkid reads "
                         f"({', '.join(CLASSES)})")
    args = _deref(entry.get("args") or {}, cfg)
    feats = _deref(cfg.get("feature_extractor") or {}, cfg)
    feat_args = feats.get("args", {}) if isinstance(feats, dict) else {}
    rate = cfg.get("sample_rate", feat_args.get("sample_rate", 16000))
    if rate != 16000:
        raise SpkidError(f"{cfg_path}: sample_rate {rate!r}; spkid reads 3D-Speaker's 16000 Hz models")
    ckpts = sorted((int(m.group(1)), int(m.group(2)), p) for p in (folder / "models").glob("CKPT-EPOCH-*")
                   if (m := _EPOCH.fullmatch(p.name)) and (p / CHECKPOINT).is_file())
    if not ckpts:
        raise SpkidError(f"{folder}: no models/CKPT-EPOCH-*/{CHECKPOINT} beside {CONFIG_YAML}")
    wanted = [c for c in ckpts if c[0] == cfg.get("num_epoch")]
    ckpt = (wanted or ckpts)[-1][2] / CHECKPOINT
    stated = {k: args[v] for k, v in (("embed_dim", "embedding_size"), ("m_channels", "m_channels"),
                                      ("base_width", "baseWidth"), ("scale", "scale"), ("expansion", "expansion"),
                                      ("feat_dim", "feat_dim")) if v in args}
    if obj.endswith("ERes2Net_huge.ERes2Net"):
        stated = {"m_channels": 64, "base_width": 24, "scale": 3, "expansion": 4, **stated}
    n_mels = feat_args.get("n_mels", stated.get("feat_dim", 80))
    out.update(checkpoint=ckpt, config=cfg_path, network=CLASSES[obj], stated=stated,
               feat_dim=stated.get("feat_dim", n_mels), mean_nor=bool(feat_args.get("mean_nor", True)),
               files=f"{CONFIG_YAML} + {ckpt.relative_to(folder)}",
               summary={"obj": obj, "args": args})
    return out


def _deref(node: Any, top: dict[str, Any], depth: int = 0) -> Any:
    """3D-Speaker's `<name>` references (a whole string) replaced by the top-level value they name."""
    if depth > 20:
        raise SpkidError("config.yaml: references nest too deeply")
    if isinstance(node, str) and (m := _REF.fullmatch(node)) and m.group(1) in top:
        return _deref(top[m.group(1)], top, depth + 1)
    if isinstance(node, dict):
        return {k: _deref(v, top, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [_deref(v, top, depth + 1) for v in node]
    return node


# --- weights -------------------------------------------------------------------------------------------------------

def _tensor_state(blob: dict, source: Path) -> dict:
    import torch

    state = {k: v for k, v in blob.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise SpkidError(f"{source}: no weights in the checkpoint (keys: {', '.join(map(str, list(blob)[:5]))})")
    return state


def _network(state: dict, source: Path) -> str:
    """Which network the weights are, from the modules they have."""
    if "head.conv1.weight" in state and "xvector.dense.linear.weight" in state:
        return "campplus"
    if "layer3_ds.weight" in state and "seg_1.weight" in state:
        return "eres2netv2"
    if "layer1_downsample.weight" in state and "seg_1.weight" in state:
        return "eres2net"
    raise SpkidError(f"{source}: not a CAM++, ERes2Net or ERes2NetV2 checkpoint (first keys: "
                     f"{', '.join(list(state)[:4])})")


def _campplus_kwargs(state: dict) -> dict[str, Any]:
    m = int(state["head.conv1.weight"].shape[0])
    freq = int(state["xvector.tdnn.linear.weight"].shape[1]) // m
    growth = int(state["xvector.block1.tdnnd1.cam_layer.linear_local.weight"].shape[0])
    bn_channels = int(state["xvector.block1.tdnnd1.linear1.weight"].shape[0])
    return {
        "feat_dim": freq * 8,
        "embed_dim": int(state["xvector.dense.linear.weight"].shape[0]),
        "growth_rate": growth,
        "bn_size": bn_channels // growth,
        "init_channels": int(state["xvector.tdnn.linear.weight"].shape[0]),
        "m_channels": m,
    }


def _eres2net_kwargs(state: dict, name: str, feat_dim: int) -> dict[str, Any]:
    m = int(state["conv1.weight"].shape[0])
    num_blocks = [len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    expansion = int(state["layer1.0.conv3.weight"].shape[0]) // m
    scale = len({k.split(".")[3] for k in state if k.startswith("layer1.0.convs.")})
    width4 = int(state["layer4.0.convs.0.weight"].shape[0])
    base_width = round(width4 * 64 / (8 * m))
    return {
        "feat_dim": feat_dim,
        "embed_dim": int(state["seg_1.weight"].shape[0]),
        "m_channels": m,
        "num_blocks": num_blocks,
        "base_width": base_width,
        "scale": scale,
        "expansion": expansion,
        "two_emb_layer": "seg_2.weight" in state,
    }


def _check_stated(kwargs: dict[str, Any], stated: dict[str, Any], config: Path) -> None:
    for key, value in stated.items():
        if key in kwargs and kwargs[key] != value:
            raise SpkidError(f"{config}: says {key} {value!r}, but the checkpoint's weights have {kwargs[key]!r}")


def _check_shapes(name: str, kwargs: dict[str, Any], state: dict, source: Path) -> None:
    """Build the network and compare every weight's name and shape: a one-line error for a damaged checkpoint."""
    from spkid.models import build_model

    net = build_model(name, **kwargs)
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
    wrong = sorted(k for k in want.keys() & have.keys() if want[k] != have[k])
    if missing or extra or wrong:
        parts = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if keys]
        raise SpkidError(f"{source}: damaged {NAMES[name]} checkpoint ({'; '.join(parts)})")

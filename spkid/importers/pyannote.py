"""pyannote's packaging of WeSpeaker's ResNets: `pytorch_model.bin` (e.g. pyannote/wespeaker-voxceleb-resnet34-LM,
or the `embedding/` folder of pyannote's diarization pipelines), with or without a `config.yaml` beside it.

The file is a PyTorch Lightning checkpoint written by pyannote.audio: the network's weights under "state_dict"
with the prefix "resnet." (WeSpeaker's own names after it), the front end's settings under "hyper_parameters"
(`sample_rate`, `num_mel_bins`, `frame_length`/`frame_shift` in ms, `window_type`, ...), and under
"pyannote.audio" the class (`WeSpeakerResNet34`, ...152, 221, 293) and records pickled as pyannote's own objects
(task `Specifications`, `Problem` and `Resolution` enums) and torch's `TorchVersion`. `torch.load(weights_only=True)`
refuses those classes, and spkid must not import pyannote to build them, so they are read as inert records:
each such global (only under `pyannote.`, Lightning's and omegaconf's modules, and `TorchVersion`) is allowlisted as
a stand-in class that only stores what the pickle gives it; no code of the file's choosing runs, and any other
global is still refused (one line naming it).

pyannote computes Kaldi's fbank (Hamming window, dither 0) on 16-bit-scaled samples and subtracts the utterance
mean, as WeSpeaker does; its copy of the network pools the unbiased standard deviation without WeSpeaker's 1e-7
(`var_eps` 0 here).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

from spkid.errors import SpkidError
from spkid.importers import Imported, check_size, tensors

FAMILY = "pyannote"
EXPECTS = "pyannote.audio's pytorch_model.bin of a WeSpeakerResNet (with or without config.yaml)"
WEIGHTS = "pytorch_model.bin"
PREFIX = "resnet."
CLASSES = {"WeSpeakerResNet34": "ResNet34", "WeSpeakerResNet152": "ResNet152", "WeSpeakerResNet221": "ResNet221",
           "WeSpeakerResNet293": "ResNet293"}
INERT = ("pyannote.", "pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.")
MAX_TRIES = 64  # distinct stand-in classes one checkpoint may need
_UNSUPPORTED = re.compile(r"GLOBAL (\S+) was not an allowed global")
_NAMED = re.compile(r"GLOBAL (\S+)")


def _weights_of(path: Path) -> Path:
    return path / WEIGHTS if path.is_dir() else path


def matches(path: Path) -> bool:
    """A pytorch_model.bin (or a folder holding one) whose pickle names pyannote.audio: torch's zip format read
    for its small `data.pkl` member only, nothing unpickled."""
    weights = _weights_of(path)
    if not weights.is_file() or weights.suffix not in (".bin", ".ckpt", ".pt"):
        return False
    try:
        with zipfile.ZipFile(weights) as z:
            pkl = next((i for i in z.infolist() if i.filename.endswith("data.pkl")), None)
            if pkl is None or pkl.file_size > 1 << 24:
                return False
            return b"pyannote.audio" in z.read(pkl)
    except (OSError, zipfile.BadZipFile):
        return False


def load(path: Path) -> Imported:
    from spkid.importers.wespeaker import check_state, kaldi_fbank, make_spec
    from spkid.models.wespeaker import DEPTHS

    weights = _weights_of(path)
    blob = read_checkpoint(weights)
    meta = blob.get("pyannote.audio")
    cls = meta.get("architecture", {}).get("class") if isinstance(meta, dict) else None
    if cls not in CLASSES:
        raise SpkidError(f"{weights}: pyannote model {cls or '(no architecture recorded)'}; spkid reads "
                         f"{', '.join(CLASSES)}")
    state_dict = blob.get("state_dict")
    if not isinstance(state_dict, dict):
        raise SpkidError(f"{weights}: no state_dict in the checkpoint")
    state = tensors(state_dict, weights, PREFIX)
    hp: dict[str, Any] = blob.get("hyper_parameters") if isinstance(blob.get("hyper_parameters"), dict) else {}
    features = kaldi_fbank(hp, hp.get("sample_rate", 16000), f"{weights}: bad front-end settings in hyper_parameters")
    if hp.get("use_energy"):
        raise SpkidError(f"{weights}: use_energy=True (an energy column); spkid's Kaldi fbank has none")
    arch = CLASSES[cls]
    block, layers = DEPTHS[arch]
    seg = state.get("seg_1.weight")
    embed_dim = int(seg.shape[0]) if seg is not None and seg.ndim == 2 else 256
    kwargs = {"feat_dim": features["n_filters"], "embed_dim": embed_dim, "block": block, "layers": list(layers),
              "m_channels": 32, "two_emb_layer": "seg_2.weight" in state, "pooling": "TSTP", "var_eps": 0.0}
    check_state("wespeaker_resnet", kwargs, state, weights)
    spec = make_spec("wespeaker_resnet", kwargs, features, {
        "source": f"pyannote {weights.name}", "family": FAMILY, "architecture": cls,
    })
    return Imported(FAMILY, f"{cls} (WeSpeaker {arch}), {embed_dim}-d embedding", spec, state)


class _Inert:
    """A stand-in for a class the checkpoint pickles (module docstring): it keeps its arguments and state, runs
    nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        obj = super().__new__(cls)
        obj.__dict__["args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state


def read_checkpoint(path: Path) -> dict:
    """pyannote's checkpoint read with `torch.load(weights_only=True)`, its pyannote/Lightning objects as inert
    records (module docstring); one-line SpkidError for anything else it would have to build."""
    import pickle

    import torch
    from torch.torch_version import TorchVersion

    check_size(path)
    stand_ins: dict[str, type] = {}
    for _ in range(MAX_TRIES):
        allowed: list[Any] = [TorchVersion, *((cls, name) for name, cls in stand_ins.items())]
        try:
            with torch.serialization.safe_globals(allowed):
                blob = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            m = _UNSUPPORTED.search(str(e))
            if m is None or not m.group(1).startswith(INERT) or m.group(1) in stand_ins:
                named = _NAMED.search(str(e))
                what = f"it names {named.group(1)}" if named else "it holds objects other than tensors and plain data"
                raise SpkidError(f"{path}: not read: {what}, which spkid does not load (only tensors, plain data "
                                 "and pyannote's records); re-save the weights with torch.save(model.state_dict())"
                                 ) from None
            module, _, name = m.group(1).rpartition(".")
            stand_ins[m.group(1)] = type(name, (_Inert,), {"__module__": module, "__qualname__": name})
            continue
        except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise SpkidError(f"{path}: cannot read its weights ({first})") from None
        if not isinstance(blob, dict):
            raise SpkidError(f"{path}: expected a checkpoint dict, got {type(blob).__name__}")
        return blob
    raise SpkidError(f"{path}: needs more than {MAX_TRIES} pyannote classes; not a pyannote embedding checkpoint")

"""Published speaker encoders of other toolkits, read into spkid's own implementations of their networks.

`--model PATH` may name a model folder (or file) as a toolkit publishes it. Each family module here knows one
layout:
- `wespeaker`: WeSpeaker's model folders (`avg_model.pt` or another `*.pt`, with `config.yaml`): ResNet34/221/293,
  CAM++ and ECAPA-TDNN;
- `speechbrain`: SpeechBrain's model folders (`hyperparams.yaml`, `embedding_model.ckpt`, ...): ECAPA-TDNN;
- `threedspeaker`: 3D-Speaker's checkpoints with their configuration: CAM++, ERes2Net, ERes2NetV2;
- `pyannote`: pyannote's packaging of WeSpeaker's ResNet34 (`pytorch_model.bin` + `config.yaml`).

A family module has `FAMILY` (its printed name), `EXPECTS` (one line: the files it reads), `matches(path)` (a
cheap test of the files present; no torch, no weights read) and `load(path) -> Imported`. `load` reads the
weights with `torch.load(weights_only=True)` (`read_weights`) and renames them into the state dict of a network
of `spkid.models`; the source project's code is never imported or run. The result is an ordinary
`modelfile.ModelSpec` (its front end, network and whole-utterance embedding) plus weights, so everything
downstream (embedding, galleries, `spkid export` to ONNX, `spkid train --init`) treats it as a spkid model. Its
identity is `modelfile.fingerprint` of that spec and those weights, so the same weights give the same identity
whichever layout they came in. Imported models carry no calibration: deciding commands print scores only until a
threshold or calibration is given (`spkid.decisions.choose_threshold`).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from spkid.errors import SpkidError

if TYPE_CHECKING:
    from spkid.modelfile import ModelSpec

log = logging.getLogger(__name__)

FAMILIES = ("wespeaker", "speechbrain", "threedspeaker", "pyannote")
MAX_WEIGHTS = 2 << 30  # bytes; the largest published encoder (ResNet293) is about 110 MB


@dataclass
class Imported:
    """A published model read into spkid: which `family`, a one-line `description` (architecture, embedding size),
    its `spec` and `state` (weights in the naming of the spkid network the spec names)."""

    family: str
    description: str
    spec: ModelSpec
    state: dict


def family_module(name: str) -> ModuleType:
    return importlib.import_module(f"spkid.importers.{name}")


def detect(path: str | Path) -> ModuleType | None:
    """The family module whose layout `path` (a folder or a file) has, else None."""
    p = Path(path)
    for name in FAMILIES:
        module = family_module(name)
        if module.matches(p):
            return module
    return None


def expected() -> str:
    """One line naming the layouts spkid reads, for the error about an unknown one."""
    return "; ".join(f"{family_module(n).FAMILY}: {family_module(n).EXPECTS}" for n in FAMILIES)


def load(path: str | Path) -> Imported:
    """The published model at `path`, read into spkid (module docstring); one-line SpkidError for an unknown
    layout (listing those expected) or a damaged one."""
    p = Path(path)
    module = detect(p)
    if module is None:
        raise SpkidError(f"{p}: not a model spkid knows; expected a spkid model file (`spkid train` output, .pt), "
                         f"its ONNX form (.onnx), or a published model folder: {expected()}")
    imported = module.load(p)
    log.info("%s: %s model, %s", p, imported.family, imported.description)
    return imported


def read_weights(path: str | Path) -> dict:
    """A checkpoint read with `torch.load(weights_only=True)` on the CPU (tensors and plain containers only: no
    code is unpickled); one-line SpkidError when it cannot be read that way."""
    import torch

    p = Path(path)
    check_size(p)
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad or unsafe file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise SpkidError(f"{p}: cannot read its weights safely (weights_only=True): {first}") from None
    if not isinstance(blob, dict):
        raise SpkidError(f"{p}: expected a dict of weights, got {type(blob).__name__}")
    return blob


def check_size(path: Path) -> None:
    """Refuse, in one line, a weights file that cannot be read or is larger than any published encoder."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise SpkidError(f"{path}: cannot read ({e.strerror or e})") from None
    if size > MAX_WEIGHTS:
        raise SpkidError(f"{path}: {size} bytes is larger than any published speaker encoder; not read")


def tensors(state: dict, source: str | Path, prefix: str = "") -> dict:
    """The tensors of `state` whose keys start with `prefix`, the prefix removed; SpkidError when there are none."""
    import torch

    out = {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)
           and isinstance(v, torch.Tensor)}
    if not out:
        raise SpkidError(f"{source}: no weights{f' under {prefix!r}' if prefix else ''} in the checkpoint")
    return out

"""Model files (DESIGN.md): `torch.save` of a plain dict, loaded with `weights_only=True` and `strict=True`.

```
{"format": "spkid-model/1",
 "config": '<JSON: {"model": {"name": ..., "kwargs": {...}},
                    "features": {<FeatureConfig fields>},
                    "embedding": {"window_s": ..., "hop_s": ..., "min_s": ...},   # how embed cuts long audio
                    "training": {<resolved training config and summary>},
                    "calibration": {...} | absent}'>,
 "state_dict": {...}}
```
The config says everything `embed` needs: which features to compute and which network to build, so no
architecture flags are ever needed again.

A model's identity (`sha256`) is the hash of what decides its embeddings: the architecture, the feature and
embedding configs and the weights. The calibration and training summary are left out, so calibrating a model
(`spkid score --calibrate --model-out`) does not orphan the galleries and embeddings made with it.

The identity is computed once, when the file is written, and stored in it: a small JSON record
`{"format", "model_sha256", "config"}` (`HEADER`) added to the zip archive that `torch.save` writes, after torch's
own records (torch.load ignores it). It can be read without torch (`header`), so `spkid embed` can check that a
model's ONNX form (`X.onnx` beside `X.pt`) is the same model and run it without importing torch. Reads trust the
stored identity; writers of derived files (`save_calibrated`, `spkid export`) and `verify` recompute it and refuse a
file whose stored identity does not match its weights. A file loaded, edited and saved again with plain `torch.save`
loses the record (so its identity is computed from what it now holds), as do files written before it existed.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spkid.calibration import Calibration
from spkid.errors import SpkidError

if TYPE_CHECKING:
    from spkid.embedding import ModelRef

FORMAT = "spkid-model/1"
HEADER = "spkid-model.json"  # the identity record's name inside the archive (under torch's own folder)
_SHA = re.compile(r"[0-9a-f]{64}")
MAX_HEADER = 16 << 20  # bytes
QSCALE = ":scale"  # the scales of an int8 weight `NAME` are `NAME:scale` (`quantize`)
QUANTIZE_MIN = 4096  # smaller weights (biases, norms, small layers) stay float32
QUANTIZE_GROUP = 64  # values of a row that share one int8 scale


@dataclass
class ModelSpec:
    """The JSON config of a model file."""

    model: dict[str, Any]  # {"name": registry name, "kwargs": constructor keywords}
    features: dict[str, Any]  # FeatureConfig fields
    embedding: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None

    def to_json(self) -> str:
        d = {"model": self.model, "features": self.features, "embedding": self.embedding, "training": self.training}
        if self.calibration is not None:
            d["calibration"] = self.calibration
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> ModelSpec:
        try:
            d = json.loads(text)
        except (TypeError, json.JSONDecodeError) as e:
            raise SpkidError(f"{source}: model config is not valid JSON ({e})") from None
        if not isinstance(d, dict) or not {"model", "features"} <= d.keys():
            raise SpkidError(f"{source}: model config lacks 'model' or 'features'")
        unknown = d.keys() - {"model", "features", "embedding", "training", "calibration"}
        if unknown:
            raise SpkidError(f"{source}: unknown model config keys {sorted(unknown)}")
        return cls(**d)


def sha256(path: str | Path) -> str:
    """The model's identity: sha256 of its architecture, feature and embedding configs and weights (hex).
    The stored one when the file has it (without torch), else computed from the file's contents."""
    head = header(path)
    if head is not None:
        return head[1]
    return fingerprint(*read(path))


def header(path: str | Path) -> tuple[ModelSpec, str] | None:
    """(spec, stored identity) of a model file, read without torch; None for a file without the record (written
    before it existed, or re-saved by plain `torch.save`). A malformed record is a SpkidError."""
    try:
        with zipfile.ZipFile(path) as z:
            info = next((i for i in z.infolist() if i.filename.rsplit("/", 1)[-1] == HEADER), None)
            if info is None:
                return None
            raw = z.read(info) if info.file_size <= MAX_HEADER else b""  # a hostile file's zip bomb stays unread
    except (OSError, zipfile.BadZipFile, KeyError):
        return None  # not a zip archive (or unreadable): `read` says what is wrong with it
    try:
        rec = json.loads(raw)
        ok = isinstance(rec, dict) and rec.get("format") == FORMAT and _SHA.fullmatch(str(rec.get("model_sha256")))
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise SpkidError(f"{path}: damaged identity record {HEADER!r} in the model file; write it again from its "
                         "source (`spkid train`), or re-save it with plain torch.save, which drops the record")
    return ModelSpec.from_json(rec.get("config"), str(path)), rec["model_sha256"]


def check_identity(spec: ModelSpec, state: dict, stored: str, source: str | Path) -> str:
    """Refuse weights whose identity is not `stored` (the file's record); returns the identity."""
    actual = fingerprint(spec, state)
    if actual != stored:
        raise SpkidError(f"{source}: the model's stored identity ({stored[:12]}...) does not match its weights and "
                         f"configs ({actual[:12]}...): the file was altered after spkid wrote it; write it again from "
                         "its source (`spkid train`), or re-save it with plain torch.save, which drops the record")
    return actual


def identity(path: str | Path, spec: ModelSpec, state: dict) -> str:
    """The identity of the model file `path` whose contents `read` gave: the stored one, checked against the
    weights already in memory (hashing them costs milliseconds next to reading them), else computed."""
    head = header(path)
    if head is None:
        return fingerprint(spec, state)
    _same_config(head[0], spec, path)
    return check_identity(spec, state, head[1], path)


def verify(path: str | Path) -> tuple[ModelSpec, dict, str]:
    """(spec, state_dict, identity) of a model file, its stored identity checked against its weights (a file
    without the record: computed). Used before writing anything that carries the identity on."""
    spec, state = read(path)
    return spec, state, identity(path, spec, state)


def _same_config(stored: ModelSpec, spec: ModelSpec, path: str | Path) -> None:
    if stored.to_json() != spec.to_json():
        raise SpkidError(f"{path}: the model's identity record holds another config than the model: the file was "
                         "altered after it was written; write it again from its source (`spkid train`)")


def fingerprint(spec: ModelSpec, state: dict) -> str:
    import torch

    h = hashlib.sha256()
    h.update(json.dumps({"model": spec.model, "features": spec.features, "embedding": spec.embedding},
                        sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save(path: str | Path, net, spec: ModelSpec) -> str:
    """Write a model file atomically (a temp file renamed into place), its identity stored in it; returns it."""

    return save_state(path, spec, net.state_dict())


def save_state(path: str | Path, spec: ModelSpec, state: dict) -> str:
    """`save` of the weights as they are to be stored (`quantize`d ones too); returns the identity."""
    return _write(path, spec, {k: v.detach().cpu() for k, v in state.items()})


def _write(path: str | Path, spec: ModelSpec, state: dict, keep_mode: bool = False) -> str:
    """torch.save the model dict, then add the identity record (`HEADER`) computed from exactly these weights."""
    import torch

    from spkid.fileio import atomic_write

    sha = fingerprint(spec, state)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "config": spec.to_json(), "state_dict": state}, buf)
    with zipfile.ZipFile(buf, "a") as z:
        folder = z.namelist()[0].split("/", 1)[0]  # torch.load finds its records under the first entry's folder
        record = {"format": FORMAT, "model_sha256": sha, "config": spec.to_json()}
        z.writestr(f"{folder}/{HEADER}", json.dumps(record, sort_keys=True))
    with atomic_write(path, "wb", keep_mode=keep_mode) as f:
        f.write(buf.getvalue())
    return sha


def read(path: str | Path) -> tuple[ModelSpec, dict]:
    """(spec, state_dict) of a model file, without building the network. Pickles are never executed."""
    import torch

    p = Path(path)
    if p.is_dir():
        raise SpkidError(f"{path}: is a directory, expected a model file")
    if not p.exists():
        raise SpkidError(f"{path}: no such model file")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpkidError(f"{path}: not a loadable spkid model file ({first[:200]})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise SpkidError(f"{path}: unknown model format {found!r}; this spkid reads {FORMAT!r}")
    if not isinstance(blob.get("state_dict"), dict):
        raise SpkidError(f"{path}: model file has no state_dict")
    return ModelSpec.from_json(blob.get("config"), str(path)), blob["state_dict"]


def load(path: str | Path, device: str = "cpu"):
    """Build the network a model file describes and load its weights strictly; returns (net in eval mode, spec)."""
    spec, state = read(path)
    return build(spec, state, path, device), spec


def quantize(state: dict, min_values: int = QUANTIZE_MIN) -> dict:
    """`state` with every float weight of at least `min_values` values in rows of at least `QUANTIZE_GROUP` stored in
    about a quarter of the bytes: int8, with one float32 scale for each `QUANTIZE_GROUP` consecutive values of a row
    (the whole row where its length is not a multiple), saved as `NAME` + `QSCALE` of shape (rows, groups):
    symmetric, rounded to nearest, the group's largest magnitude 127 steps. Weights in shorter rows stay float32:
    the GE2E LSTM's first layer, on 40 Mel bands, turns int8 rows into a 2.8-point loss of pooled EER on the
    development suite. `build` multiplies them back (`dequantize`): a quantized model runs in float32 like any
    other."""
    import torch

    out = {}
    for name, t in state.items():
        if not (torch.is_floating_point(t) and t.dim() >= 2 and t.numel() >= min_values
                and t[0].numel() >= QUANTIZE_GROUP):  # short rows (an LSTM's on 40 Mel bands) are too sensitive
            out[name] = t
            continue
        groups = _grouped(t.detach().float())
        scale = (groups.abs().amax(2) / 127).clamp_min(torch.finfo(torch.float32).tiny)
        out[name] = torch.round(groups / scale[:, :, None]).clamp(-127, 127).to(torch.int8).reshape(t.shape)
        out[name + QSCALE] = scale
    return out


def dequantize(state: dict) -> dict:
    """`state` with each int8 weight of `quantize` multiplied back into float32 (other tensors as they are)."""
    import torch

    out = {}
    for name, t in state.items():
        scale = state.get(name + QSCALE)
        if name.endswith(QSCALE):
            continue
        quantized = scale is not None and t.dtype == torch.int8
        out[name] = (_grouped(t.float()) * scale[:, :, None]).reshape(t.shape) if quantized else t
    return out


def group_size(row: int) -> int:
    """The values of a row of `row` values that share one scale (`quantize`)."""
    return QUANTIZE_GROUP if row % QUANTIZE_GROUP == 0 else row


def _grouped(t):
    """`t` as (rows, groups, group_size(row))."""
    row = t[0].numel()
    return t.reshape(len(t), row // group_size(row), group_size(row))


def build(spec: ModelSpec, state: dict, source: str | Path = "model", device: str = "cpu"):
    """The network `spec` describes with the weights `state` (int8 ones of `quantize` too) loaded strictly, in eval
    mode on `device`."""
    from spkid.models import build_model

    net = build_model(spec.model["name"], **spec.model.get("kwargs", {}))
    try:
        net.load_state_dict(dequantize(state), strict=True)
    except RuntimeError as e:
        raise SpkidError(f"{source}: weights do not match architecture {spec.model['name']!r} ({str(e)[:200]})") from None
    return net.to(device).eval()


def read_calibration(path: str | Path, spec: ModelSpec | None = None) -> Calibration | None:
    """The calibration in the config of the model file `path`, None when it has none. `spec`: that config when
    it has been read already (`Embedder.spec`), so that the file is not read again."""
    if spec is None:
        spec = read(path)[0]
    raw = spec.calibration
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpkidError(f"{Path(path)}: \"calibration\" must be a JSON object")
    return Calibration.from_dict(raw, str(Path(path)))


def model_calibration(ref: ModelRef | None, spec: ModelSpec | None = None) -> Calibration | None:
    """`read_calibration` of the model `ref` names (from the spec it carries: the file is not read again); None
    without a model and for the pretrained one."""
    if ref is None or ref.pretrained:
        return None
    return read_calibration(ref.path, spec or ref.spec)


def save_calibrated(model_in: str | Path, model_out: str | Path, cal: Calibration) -> Path:
    """Copy the model file `model_in` to `model_out` with `cal` under "calibration" in its config (atomic write;
    a `model_out` that exists keeps its permissions). Returns `model_out`. A published model of another toolkit
    (`spkid.importers`: a folder, file or catalogue name) is written as a spkid model file, its identity unchanged."""
    from spkid import embedding

    ref = embedding.resolve_model(str(model_in), "torch")
    if ref.family is not None:
        spec, state = ref.weights()
    else:
        spec, state, _ = verify(ref.path)  # the copy carries the identity on: it must be the right one
    spec.calibration = cal.to_dict()
    out = Path(model_out)
    _write(out, spec, state, keep_mode=True)
    return out

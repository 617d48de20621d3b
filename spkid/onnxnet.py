"""A model's ONNX form, run by onnxruntime: embeddings without importing torch.

`spkid export` (`spkid.onnxexport`) writes the network of a model file as an ONNX graph, input `features`
float32 `(batch, frames, feat_dim)`, output `embedding` `(batch, embed_dim)` (both axes dynamic), with the model's
record in the graph's `metadata_props`:

    format        "spkid-onnx/1"
    config        the model file's JSON config (architecture, features, embedding windows, training, calibration)
    model_sha256  the model's identity, the same as the model file's (`modelfile.fingerprint`)
    graph_sha256  sha256 of the serialized graph (its weights included): `read_meta(verify=True)` checks it
    architecture, feat_dim, embed_dim   for other tools

The record is read here with a few lines of protobuf decoding (no `onnx` package): a ModelProto's fields are
`graph` = 7 and `metadata_props` = 14 (`StringStringEntryProto`: key = 1, value = 2). onnxruntime is imported only
when a session is built (`OnnxNet`); this is how WeSpeaker, 3D-Speaker and sherpa-onnx deploy speaker encoders.

    >>> from spkid.onnxnet import OnnxNet
    >>> net = OnnxNet("model.onnx", threads=1)
    >>> e = net(windows)            # (n, frames, dims) float32 -> (n, D) float32
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spkid.errors import SpkidError

if TYPE_CHECKING:
    from spkid.modelfile import ModelSpec

FORMAT = "spkid-onnx/1"
INPUT, OUTPUT = "features", "embedding"
IDLE_FRAMES = 16  # a fusion's members not being run are fed this many frames of zeros (`OnnxNet.member`)
_GRAPH, _METADATA = 7, 14  # onnx.proto: ModelProto.graph, ModelProto.metadata_props


@dataclass
class OnnxMeta:
    """The model record of an ONNX file: its spec (config), identity, and the file's bytes (read once)."""

    spec: ModelSpec
    sha256: str
    embed_dim: int
    data: bytes = field(repr=False)
    input: str = INPUT  # the graph's input and output names
    output: str = OUTPUT


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return value, i
        shift += 7


def fields(buf: memoryview) -> list[tuple[int, memoryview | int | None]]:
    """The top-level (field number, bytes of a length-delimited field, the value of a varint, else None) of a
    protobuf message."""
    out: list[tuple[int, memoryview | int | None]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            out.append((num, value))
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            out.append((num, None))
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated field")
            out.append((num, buf[i : i + n]))
            i += n
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    return _encode_varint(num << 3 | 2) + _encode_varint(len(payload)) + payload


def with_metadata(model: bytes, props: dict[str, str]) -> bytes:
    """The serialized ModelProto `model` with `props` appended to its metadata_props (repeated fields concatenate)."""
    extra = b"".join(_field(_METADATA, _field(1, k.encode()) + _field(2, v.encode())) for k, v in props.items())
    return model + extra


def graph_sha256(data: bytes | memoryview) -> str:
    """sha256 of the serialized graph (field 7) of the ONNX model `data`."""
    graphs = [v for num, v in fields(memoryview(data)) if num == _GRAPH and isinstance(v, memoryview)]
    if len(graphs) != 1:
        raise ValueError("no graph")
    return hashlib.sha256(graphs[0]).hexdigest()


def metadata(data: bytes | memoryview) -> dict[str, str]:
    """The metadata_props of the ONNX model `data` (bytes of the file)."""
    props: dict[str, str] = {}
    for num, value in fields(memoryview(data)):
        if num == _METADATA and value is not None:
            entry = dict(fields(value))
            props[bytes(entry.get(1) or b"").decode()] = bytes(entry.get(2) or b"").decode()
    return props


def read_meta(path: str | Path, verify: bool = False) -> OnnxMeta:
    """The model record of a spkid ONNX file (no onnxruntime). `verify`: also check that the graph is the one the
    record was written for (its sha256), as before a model is copied or converted."""
    from spkid.modelfile import ModelSpec

    p = Path(path)
    if p.is_dir():
        raise SpkidError(f"{path}: is a directory, expected an ONNX model file")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise SpkidError(f"{path}: no such model file") from None
    try:
        props = metadata(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise SpkidError(f"{path}: not an ONNX model file ({e})") from None
    if props.get("format") is None and (foreign := _wespeaker_meta(p, data)) is not None:
        return foreign
    if props.get("format") != FORMAT:
        found = props.get("format")
        what = f"format {found!r}" if found else "no spkid model record"
        raise SpkidError(f"{path}: an ONNX file with {what}; spkid runs ONNX files written by `spkid export` "
                         f"({FORMAT!r})")
    sha = props.get("model_sha256", "")
    try:
        embed_dim = int(props.get("embed_dim", ""))
        int(sha, 16)
    except ValueError:
        raise SpkidError(f"{path}: damaged spkid model record (model_sha256, embed_dim)") from None
    if len(sha) != 64:
        raise SpkidError(f"{path}: damaged spkid model record (model_sha256)")
    if verify:
        try:
            actual = graph_sha256(data)
        except ValueError as e:
            raise SpkidError(f"{path}: not an ONNX model file ({e})") from None
        if actual != props.get("graph_sha256"):
            raise SpkidError(f"{path}: the ONNX graph does not match its model record (graph sha256 "
                             f"{actual[:12]}..., recorded {props.get('graph_sha256', '')[:12]}...): the file was "
                             "altered after `spkid export` wrote it; export it again")
    return OnnxMeta(ModelSpec.from_json(props.get("config"), str(path)), sha, embed_dim, data)


def graph_io(data: bytes | memoryview) -> tuple[list[tuple[str, list[int | str]]], list[tuple[str, list[int | str]]]]:
    """The graph's inputs and outputs: (name, shape) each, a dimension its size or its symbolic name.

    onnx.proto: GraphProto input = 11, output = 12; ValueInfoProto name = 1, type = 2; TypeProto tensor_type = 1;
    Tensor shape = 2; TensorShapeProto dim = 1; Dimension dim_value = 1, dim_param = 2."""
    graph = next((v for num, v in fields(memoryview(data)) if num == _GRAPH and isinstance(v, memoryview)), None)
    if graph is None:
        raise ValueError("no graph")

    def sub(buf, num):
        return [v for n, v in fields(buf) if n == num and isinstance(v, memoryview)]

    def value_info(buf) -> tuple[str, list[int | str]]:
        name = b"".join(bytes(v) for v in sub(buf, 1)).decode()
        dims: list[int | str] = []
        for t in sub(buf, 2):
            for tensor in sub(t, 1):
                for shape in sub(tensor, 2):
                    for dim in sub(shape, 1):
                        d = dict(fields(dim))
                        dims.append(d[1] if isinstance(d.get(1), int) else bytes(d.get(2) or b"?").decode())
        return name, dims

    return [value_info(v) for v in sub(graph, 11)], [value_info(v) for v in sub(graph, 12)]


def _wespeaker_meta(path: Path, data: bytes) -> OnnxMeta | None:
    """The record of one of WeSpeaker's published ONNX files (input `feats` `(batch, frames, 80)`, output `embs`
    `(batch, D)`), whose front end is WeSpeaker's: Kaldi fbank with a Hamming window, utterance mean removed. Its
    identity is the sha256 of the file. None for other graphs."""
    from spkid.kaldifbank import KaldiFbankConfig
    from spkid.modelfile import ModelSpec

    try:
        inputs, outputs = graph_io(data)
    except (ValueError, UnicodeDecodeError):
        return None
    shapes_in, shapes_out = dict(inputs), dict(outputs)
    feats, embs = shapes_in.get("feats"), shapes_out.get("embs")
    if feats is None or embs is None or len(feats) != 3 or len(embs) != 2:
        return None
    feat_dim, embed_dim = feats[2], embs[1]
    if not isinstance(feat_dim, int) or not isinstance(embed_dim, int):
        return None
    spec = ModelSpec(model={"name": "onnx", "kwargs": {"feat_dim": feat_dim, "embed_dim": embed_dim}},
                     features=KaldiFbankConfig(n_filters=feat_dim, norm="cmn", window="hamming").to_dict(),
                     embedding={"window_s": 0.0, "hop_s": 1.5, "min_s": 0.5},
                     training={"source": f"WeSpeaker ONNX file {path.name}", "family": "WeSpeaker"})
    return OnnxMeta(spec, hashlib.sha256(data).hexdigest(), embed_dim, data, input="feats", output="embs")


def default_threads(jobs: int = 1) -> int:
    """Intra-op threads when none are asked for: the usable cores shared among `jobs` parallel workers (so
    `-j N` never runs N x cores threads), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def has_cuda() -> bool:
    """Whether this onnxruntime can run on a CUDA GPU (the onnxruntime-gpu build)."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


class OnnxNet:
    """An onnxruntime session over a spkid ONNX file; called like the torch network, on numpy arrays.

    `threads`: intra-op threads (0: `default_threads(jobs)`); one inter-op thread. `device`: "cpu", "auto" (CUDA
    when this onnxruntime has it) or "cuda" (refused when it has not).
    """

    def __init__(self, path: str | Path, threads: int = 0, jobs: int = 1, device: str = "cpu",
                 meta: OnnxMeta | None = None) -> None:
        import onnxruntime as ort

        meta = meta or read_meta(path)
        self.path = Path(path)
        self.spec, self.sha256, self.embed_dim = meta.spec, meta.sha256, meta.embed_dim
        self.input, self.output = meta.input, meta.output
        self.feat_dim = int(meta.spec.model.get("kwargs", {}).get("feat_dim", 0)) or None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads if threads > 0 else default_threads(jobs)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3  # errors only: onnxruntime's warnings go to stderr unasked
        if meta.spec.model.get("name") == "fusion":  # its large merged graph: the extended optimisations cost
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # 90 ms a start, gain nothing
        if jobs > 1:  # idle threads of one worker must not spin on cores that the other workers use
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda"):
            if has_cuda():
                providers.insert(0, "CUDAExecutionProvider")
            elif device == "cuda":
                raise SpkidError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu), "
                                 "or use --backend torch")
        try:
            self.session = ort.InferenceSession(meta.data, opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
            raise SpkidError(f"{path}: onnxruntime cannot load it ({str(e).strip().splitlines()[0][:200]})") from None
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """`(n, frames, feat_dim)` float32 -> `(n, embed_dim)` float32."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        return self.session.run([self.output], {self.input: x})[0]

    def member(self, i: int) -> _Member:
        """Member `i` of a fusion's graph (`spkid.onnxexport.fusion_graph`), called like a network."""
        return _Member(self, f"m{i}.")


class _Member:
    """One member of a fusion's ONNX graph: inputs and outputs named `prefix` + features, embedding. onnxruntime wants
    every input of the graph fed, so the other members get `IDLE_FRAMES` frames of zeros (and their outputs are not
    asked for)."""

    def __init__(self, net: OnnxNet, prefix: str) -> None:
        self.session = net.session
        self.input, self.output = prefix + INPUT, prefix + OUTPUT
        self.idle = {i.name: np.zeros((1, IDLE_FRAMES, i.shape[2]), np.float32) for i in net.session.get_inputs()
                     if i.name != self.input}
        out = next((o for o in net.session.get_outputs() if o.name == self.output), None)
        if out is None or len(self.idle) == len(net.session.get_inputs()):
            raise SpkidError(f"{net.path}: the ONNX graph has no fusion member {prefix!r}; export the model again")
        self.embed_dim = int(out.shape[1])

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(windows, dtype=np.float32)
        return self.session.run([self.output], {**self.idle, self.input: x})[0]


def record(spec: ModelSpec, sha256: str, embed_dim: int, feat_dim: int, graph: str) -> dict[str, str]:
    """The metadata_props that `spkid export` stores (see the module docstring)."""
    return {"format": FORMAT, "config": spec.to_json(), "model_sha256": sha256, "graph_sha256": graph,
            "architecture": spec.model["name"], "feat_dim": str(feat_dim), "embed_dim": str(embed_dim),
            "input": json.dumps({"name": INPUT, "shape": ["batch", "frames", feat_dim], "dtype": "float32"}),
            "output": json.dumps({"name": OUTPUT, "shape": ["batch", embed_dim], "dtype": "float32"})}

"""`spkid export`: a model file's network as ONNX, with the model's record in the ONNX metadata (`spkid.onnxnet`).

Every architecture of `spkid.models` exports, and so does the pretrained resemblyzer encoder: input `features`
`(batch, frames, feat_dim)` float32, output `embedding` `(batch, embed_dim)`, batch and frames dynamic. The export
is checked before it is written: onnxruntime must give the torch network's embeddings (cosine distance < 1e-5) on
windows of another batch size and length than the traced ones.

Exporter: torch.onnx's TorchScript-based exporter (`dynamo=False`, opset 17). It needs only the `onnx` package;
the torch.export-based one (torch's default since 2.9) also needs onnxscript and onnx_ir, takes 10-20 times
longer here, and, like the TorchScript one, has no ONNX form of an LSTM with projections. Such an LSTM
(`lstm_ge2e` with `proj_size`) is exported as the plain LSTM it equals: with `m` the unprojected output
`o * tanh(c)` and `h = W_hr m`, the recurrence `W_hh h` is `(W_hh W_hr) m` and the next layer's input `W_ih h` is
`(W_ih W_hr) m`; `W_hr` is applied once, to the last state (products in float64).

    >>> from spkid import onnxexport
    >>> onnxexport.export("model.pt", "model.onnx")      # or "resemblyzer"; returns the identity
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spkid import onnxnet
from spkid.errors import SpkidError
from spkid.models.ensemble import Ensemble
from spkid.models.fusion import Fusion

log = logging.getLogger(__name__)

OPSET = 17
TRACE_SHAPE = (2, 200)  # (batch, frames) of the traced input
CHECK_SHAPE = (3, 137)  # another batch size and length: the dynamic axes must hold
MAX_COSINE_DISTANCE = 1e-5


class _FoldedProjectionLSTM(nn.Module):
    """`lstm_ge2e` with LSTM projections as a plain LSTM plus one projection (see the module docstring)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        lstm = net.lstm
        hidden, layers = lstm.hidden_size, lstm.num_layers
        self.lstm = nn.LSTM(lstm.input_size, hidden, layers, batch_first=True)
        with torch.no_grad():
            for k in range(layers):
                w_ih = getattr(lstm, f"weight_ih_l{k}").double()
                if k > 0:
                    w_ih = w_ih @ getattr(lstm, f"weight_hr_l{k - 1}").double()
                w_hh = getattr(lstm, f"weight_hh_l{k}").double() @ getattr(lstm, f"weight_hr_l{k}").double()
                getattr(self.lstm, f"weight_ih_l{k}").copy_(w_ih.float())
                getattr(self.lstm, f"weight_hh_l{k}").copy_(w_hh.float())
                getattr(self.lstm, f"bias_ih_l{k}").copy_(getattr(lstm, f"bias_ih_l{k}"))
                getattr(self.lstm, f"bias_hh_l{k}").copy_(getattr(lstm, f"bias_hh_l{k}"))
        self.proj = nn.Parameter(getattr(lstm, f"weight_hr_l{layers - 1}").detach().clone())
        self.linear = net.linear
        self.feat_dim, self.embed_dim = net.feat_dim, net.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (m, _) = self.lstm(x)
        h = m[-1] @ self.proj.t()
        return F.normalize(F.relu(self.linear(h)), dim=1, eps=1e-5)


def exportable(net: nn.Module) -> nn.Module:
    """`net`, or an equal network made of ops that have an ONNX form."""
    if isinstance(net, Ensemble):
        ens = copy.deepcopy(net)
        ens.members = nn.ModuleList(exportable(m) for m in net.members)
        return ens
    lstm = getattr(net, "lstm", None)
    if isinstance(lstm, nn.LSTM) and lstm.proj_size > 0:
        if lstm.bidirectional or not hasattr(net, "linear"):
            raise SpkidError(f"{type(net).__name__}: no ONNX form for a bidirectional LSTM with projections")
        return _FoldedProjectionLSTM(net).eval()
    return net


def to_onnx(net: nn.Module, feat_dim: int) -> bytes:
    """The ONNX bytes of `net` (eval mode), batch and frames dynamic."""
    x = torch.randn(TRACE_SHAPE[0], TRACE_SHAPE[1], feat_dim, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer warnings: not the user's
        try:
            torch.onnx.export(
                exportable(net), (x,), buf, dynamo=False, opset_version=OPSET,
                input_names=[onnxnet.INPUT], output_names=[onnxnet.OUTPUT],
                dynamic_axes={onnxnet.INPUT: {0: "batch", 1: "frames"}, onnxnet.OUTPUT: {0: "batch"}},
            )
        except SpkidError:
            raise
        except Exception as e:  # noqa: BLE001 - the exporter raises many types for an unsupported op
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SpkidError(f"{type(net).__name__} has no ONNX form ({first[:200]})") from None
    return buf.getvalue()


def check(net: nn.Module, data: bytes, feat_dim: int, source: str, prefix: str = "") -> float:
    """The largest cosine distance between torch's and onnxruntime's embeddings of random windows of another
    shape than the traced one; a SpkidError above `MAX_COSINE_DISTANCE`. `prefix`: the graph is a fusion's and
    `net` its member of inputs and outputs named `prefix` + features, embedding (`onnxnet.OnnxNet.member`)."""
    import onnxruntime as ort

    x = torch.randn(CHECK_SHAPE[0], CHECK_SHAPE[1], feat_dim, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = net(x).double().numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.zeros((1, onnxnet.IDLE_FRAMES, i.shape[2]), np.float32) for i in session.get_inputs()}
    feeds[prefix + onnxnet.INPUT] = x.numpy()
    got = session.run([prefix + onnxnet.OUTPUT], feeds)[0].astype(np.float64)
    if got.shape != want.shape:
        raise SpkidError(f"{source}: the ONNX graph gives shape {got.shape}, torch {want.shape}")
    cos = (want * got).sum(1) / np.maximum(np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1), 1e-12)
    worst = float(np.max(1 - cos))
    if not worst < MAX_COSINE_DISTANCE:
        raise SpkidError(f"{source}: the ONNX graph's embeddings differ from torch's (cosine distance {worst:.2e}); "
                         "not written")
    return worst


def fusion_graph(net: Fusion) -> bytes:
    """One ONNX graph of a fusion's members side by side: member i's input `m{i}.features`, output `m{i}.embedding`."""
    import onnx
    from onnx import compose

    merged = None
    for i, member in enumerate(net.members):
        part = compose.add_prefix(onnx.load_from_string(to_onnx(member, int(member.feat_dim))), f"m{i}.")
        g = part.graph
        for value in (*g.input, *g.output, *g.value_info):  # each member's batch and frames are its own
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param:
                    dim.dim_param = f"m{i}.{dim.dim_param}"
        merged = part if merged is None else compose.merge_models(merged, part, io_map=[])
    return merged.SerializeToString()


def compact(data: bytes) -> bytes:
    """`data` with each float32 initializer that holds int8 weights (`modelfile.quantize`: along some axis, every
    group of a row is an int8 vector times one float32 scale, exactly, however the exporter laid the weight out)
    stored as int8 and its scales, and turned back into the same float32 values in the graph: about a quarter of the
    bytes. Two ways, for the load time of a per-file call (`OnnxNet`): an LSTM's weights by Cast and Mul, which
    onnxruntime folds into constants when the session is built (its LSTM runs 1.5 times faster on constant, repacked
    weights); every other weight by DequantizeLinear, per group, which it leaves in the graph and runs per call
    (folding them all took 40-120 ms a start, running them costs ~1 ms a call). Then Reshape, and Transpose where the
    axis is not the first."""
    import onnx
    from onnx import helper, numpy_helper

    from spkid.modelfile import QUANTIZE_MIN

    model = onnx.load_from_string(data)
    graph = model.graph
    lstm = {name for node in graph.node if node.op_type == "LSTM" for name in node.input}
    kept, nodes = [], []
    for init in graph.initializer:
        found = None
        if init.data_type == onnx.TensorProto.FLOAT:
            w = numpy_helper.to_array(init)
            if w.ndim >= 2 and w.size >= QUANTIZE_MIN:
                found = _as_int8(w)
        if found is None:
            kept.append(init)
            continue
        q, scale, axis = found
        name = init.name
        order = [axis, *(d for d in range(w.ndim) if d != axis)]
        moved = np.array([w.shape[d] for d in order], np.int64)
        last = name if axis == 0 else f"{name}:moved"
        if name in lstm:
            kept += [numpy_helper.from_array(q, f"{name}:q8"), numpy_helper.from_array(scale, f"{name}:scale")]
            nodes += [helper.make_node("Cast", [f"{name}:q8"], [f"{name}:float"], to=onnx.TensorProto.FLOAT),
                      helper.make_node("Mul", [f"{name}:float", f"{name}:scale"], [f"{name}:groups"])]
        else:  # one group per row of (groups, size), its scale along axis 0
            kept += [numpy_helper.from_array(q.reshape(-1, q.shape[-1]), f"{name}:q8"),
                     numpy_helper.from_array(scale.reshape(-1), f"{name}:scale")]
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}:q8", f"{name}:scale"], [f"{name}:groups"],
                                          axis=0))
        kept.append(numpy_helper.from_array(moved, f"{name}:shape"))
        nodes.append(helper.make_node("Reshape", [f"{name}:groups", f"{name}:shape"], [last]))
        if axis:
            nodes.append(helper.make_node("Transpose", [last], [name], perm=[int(p) for p in np.argsort(order)]))
    if not nodes:
        return data
    del graph.initializer[:]
    graph.initializer.extend(kept)
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)
    return model.SerializeToString()


def _as_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(int8 q of shape (rows, groups, size), float32 scales (rows, groups, 1), axis) whose product, reshaped, is `w`
    with `axis` moved first, exactly in float32; else None. A group's scale is its peak over 127, rounded to float32
    one way or the other: each of the three is tried."""
    from spkid.modelfile import group_size

    tiny = np.finfo(np.float32).tiny
    for axis in range(w.ndim):
        moved = np.moveaxis(w, axis, 0)
        row = moved[0].size
        g = moved.reshape(len(moved), row // group_size(row), group_size(row))
        first = np.maximum((np.abs(g).max(2) / np.float32(127)).astype(np.float32), tiny)
        q = np.zeros(g.shape, np.int8)
        scale = np.zeros(first.shape, np.float32)
        todo = np.ones(first.shape, bool)
        for cand in (first, np.nextafter(first, np.float32(0)), np.nextafter(first, np.float32(np.inf))):
            r = np.rint(g / cand[..., None])
            ok = todo & (np.abs(r) <= 127).all(2) & ((r.astype(np.float32) * cand[..., None]) == g).all(2)
            q[ok], scale[ok] = r[ok].astype(np.int8), cand[ok]
            todo &= ~ok
            if not todo.any():
                return q, scale[..., None], axis
            if cand is first and not ok.any():
                break  # not a single group fits: not this axis
    return None


def export(model: str | Path, output: str | Path) -> str:
    """Write the ONNX form of `model` (a model file, `resemblyzer`, or a published model of another toolkit: a
    folder, file or catalogue name `spkid.importers` reads) to `output` atomically; returns its identity.

    A model file's stored identity is verified first (`modelfile.verify`): the ONNX file carries it on."""
    from spkid import embedding, modelfile, pretrained
    from spkid.fileio import atomic_write

    state: dict = {}
    if str(model) == pretrained.NAME:
        net, spec = pretrained.load("cpu")
        sha = pretrained.sha256()
    elif Path(model).suffix.lower() == ".onnx":
        raise SpkidError(f"{model}: is an ONNX file already; give the model it was exported from")
    else:
        ref = embedding.resolve_model(str(model), "torch")
        if ref.family is not None:
            spec, state = ref.weights()
            sha = ref.sha256
        else:
            spec, state, sha = modelfile.verify(ref.path)
        net = modelfile.build(spec, state, model, "cpu")
    embed_dim = int(net.embed_dim)
    fused = isinstance(net, Fusion)
    feat_dim = 0 if fused else int(net.feat_dim)
    data = fusion_graph(net) if fused else to_onnx(net, feat_dim)
    if any(k.endswith(modelfile.QSCALE) for k in state):
        data = compact(data)
    if fused:
        worst = max(check(m, data, int(m.feat_dim), f"{model}: member {i}", f"m{i}.") for i, m in enumerate(net.members))
    else:
        worst = check(net, data, feat_dim, str(model))
    props = onnxnet.record(spec, sha, embed_dim, feat_dim, onnxnet.graph_sha256(data))
    with atomic_write(output, "wb") as f:
        f.write(onnxnet.with_metadata(data, props))
    log.info("%s -> %s (%s, %.1f MB, identity %s..., cosine distance to torch %.1e)", model, output,
             spec.model["name"], len(data) / 1e6, sha[:12], worst)
    return sha

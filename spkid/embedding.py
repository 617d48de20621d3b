"""Utterance embeddings from a model file: which model (`ModelRef`), and the network run on prepared windows.

A model file (`spkid.modelfile`) says everything: which features to compute (`spec.features`, a front end of
`spkid.frontends`), which network to build, and how to cut long audio (`spec.embedding`, `utterance.EmbedConfig`).
`utterance.Preparer` turns each utterance into equal-length windows (VAD, features, windows); `Embedder` runs them
through the network in batches of one window length and averages: the embedding is the L2-normalised mean of the
L2-normalised window embeddings (resemblyzer's `embed_utterance`).

    >>> from spkid import embedding
    >>> emb = embedding.Embedder.from_model("model.pt")     # or "resemblyzer"
    >>> e = emb.embed_signals([x1, x2], 16000)               # (2, D) float32, unit rows

A model file is read once: `resolve_model` reads it with its stored identity (`modelfile.identity`), and the
`ModelRef` carries the spec (calibration included) and hands the weights on to `Embedder.from_model`.

Two backends run the network (`backend=`): "onnx", onnxruntime on the model's ONNX form (`spkid.onnxnet`; torch is
never imported), and "torch". "auto" takes the ONNX form when the model has one: a `.onnx` file named directly
(written by `spkid export`), or `X.onnx` beside the model file `X.pt` holding the same model (the identities stored
in both agree; they are read without torch). The bundled model ships both forms.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spkid.errors import SpkidError
from spkid.frontends import frontend
from spkid.scoring import unit
from spkid.utterance import (EmbedConfig, FusedPreparer, FusionWeights, LocalCenter, Prepared, Preparer, SpeedCopies,
                             fusion_centers, fusion_local_centers)

if TYPE_CHECKING:
    from spkid.gallery import Gallery
    from spkid.modelfile import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path(__file__).resolve().parent / "data" / "default_model.pt"
BACKENDS = ("auto", "torch", "onnx")
BATCH_SIZE = 64  # windows per forward pass
FILES_PER_GROUP = 64  # files prepared together by `embed_files`


@dataclass
class ModelRef:
    """Which model: `label` as the user named it, `path` of its file, `sha256` its identity, `spec` its config,
    `onnx` the ONNX file that runs it (None: torch runs the weights of `path`).

    `state` holds the weights read with the spec until `weights()` hands them over (to the network), so one
    command reads a model file once (`modelfile.model_calibration` reads the calibration from `spec`); `onnx_meta`
    likewise holds the ONNX file's record and bytes until the session is built.
    """

    label: str
    path: Path
    sha256: str
    pretrained: bool = False
    spec: ModelSpec | None = field(default=None, repr=False, compare=False)
    state: dict | None = field(default=None, repr=False, compare=False)
    onnx: Path | None = None
    family: str | None = None  # a published model of another toolkit (`spkid.importers`), read from `path`
    onnx_meta: Any = field(default=None, repr=False, compare=False)  # onnxnet.OnnxMeta of `onnx`

    @property
    def backend(self) -> str:
        return "torch" if self.onnx is None else "onnx"

    def weights(self) -> tuple[ModelSpec, dict]:
        """(spec, state_dict), handed over once; a second call reads the file again."""
        from spkid import modelfile

        if self.spec is None or self.state is None:
            if self.family is not None:
                from spkid import importers

                imported = importers.load(self.path)
                return imported.spec, imported.state
            return modelfile.read(self.path)
        state, self.state = self.state, None
        return self.spec, state


def resolve_model(arg: str | None, backend: str = "auto") -> ModelRef:
    """`--model` -> ModelRef: a model file, an ONNX file, `resemblyzer`, or None for the bundled model, to be run by
    `backend` (auto | torch | onnx; see the module docstring). A model file run by torch is read here (spec and
    weights) and not again; an ONNX form's record is read without torch."""
    from spkid import modelfile, pretrained

    if backend not in BACKENDS:
        raise SpkidError(f"unknown backend {backend!r}; choose from: {', '.join(BACKENDS)}")
    if arg is None or arg == "":
        if not DEFAULT_MODEL.is_file():
            raise SpkidError(f"no bundled model is installed ({DEFAULT_MODEL} is missing); pass --model FILE "
                             "(a `spkid train` output) or --model resemblyzer")
        return _read("default", DEFAULT_MODEL, backend)
    if arg == pretrained.NAME:
        if backend == "onnx":
            raise SpkidError(f"--model {arg} --backend onnx: write its ONNX form first (`spkid export {arg} -o "
                             f"ge2e.onnx`) and pass --model ge2e.onnx")
        path = pretrained.weights_path()
        return ModelRef(arg, path, pretrained.sha256(), pretrained=True, spec=pretrained.spec())
    p = Path(arg)
    if not p.exists():
        from spkid import catalogue

        cached = catalogue.resolve(arg)  # a catalogue name: its downloaded folder (never the network)
        if cached is None:
            raise SpkidError(f"{arg}: no such model file or folder, nor a model of `spkid models` (give a `spkid "
                             "train` output, a published model folder, a catalogue name, or `resemblyzer`)")
        p = cached
    if p.is_dir() or (p.suffix.lower() != ".onnx" and modelfile.header(p) is None and _published(p)):
        return _imported(arg, p, backend)
    return _read(arg, p, backend)


def _published(path: Path) -> bool:
    """Whether file `path` has the layout of a published model of another toolkit (`spkid.importers`)."""
    from spkid import importers

    return importers.detect(path) is not None


def _imported(label: str, path: Path, backend: str) -> ModelRef:
    """A published model of another toolkit (`spkid.importers`), run by torch (its ONNX form: `spkid export`)."""
    from spkid import importers, modelfile

    if backend == "onnx":
        raise SpkidError(f"{label} --backend onnx: write its ONNX form first (`spkid export {label} -o model.onnx`) "
                         "and pass --model model.onnx")
    imported = importers.load(path)
    sha = modelfile.fingerprint(imported.spec, imported.state)
    return ModelRef(label, path, sha, spec=imported.spec, state=imported.state, family=imported.family)


def _read(label: str, path: Path, backend: str) -> ModelRef:
    from spkid import modelfile, onnxnet

    if path.suffix.lower() == ".onnx":
        meta = onnxnet.read_meta(path)
        if backend != "torch":
            return ModelRef(label, path, meta.sha256, spec=meta.spec, onnx=path, onnx_meta=meta)
        pt = path.with_suffix(".pt")
        head = modelfile.header(pt) if pt.is_file() else None
        if head is None or head[1] != meta.sha256:
            raise SpkidError(f"{label} --backend torch: torch runs the model file it was exported from, expected "
                             f"beside it as {pt.name} (the same model); pass that file instead")
        path = pt
    elif backend != "torch":
        onnx, why = _onnx_form(label, path)
        if onnx is not None:
            return onnx
        if backend == "onnx":
            raise SpkidError(f"{label} --backend onnx: {why}; write it with `spkid export {label} -o "
                             f"{path.with_suffix('.onnx')}`")
        log.debug("%s: runs on torch (%s)", label, why)
    spec, state = modelfile.read(path)
    return ModelRef(label, path, modelfile.identity(path, spec, state), spec=spec, state=state)


def _onnx_form(label: str, path: Path) -> tuple[ModelRef | None, str]:
    """The ModelRef that runs model file `path` on its ONNX form `X.onnx` beside it, when that is the same model
    (identities stored in both, read without torch), with the model file's spec (its calibration may be newer);
    else None and why not."""
    from spkid import modelfile, onnxnet

    sibling = path.with_suffix(".onnx")
    if not sibling.is_file():
        return None, f"no ONNX form {sibling.name} beside it"
    head = modelfile.header(path)
    if head is None:
        return None, "the model file stores no identity (an older spkid wrote it); write it again to use its ONNX form"
    try:
        meta = onnxnet.read_meta(sibling)
    except SpkidError as e:
        log.warning("%s: not used (%s)", sibling, e)
        return None, f"{sibling.name} is not a usable ONNX form"
    if meta.sha256 != head[1]:
        return None, f"{sibling.name} is another model (identity {meta.sha256[:12]}..., the model's {head[1][:12]}...)"
    return ModelRef(label, path, head[1], spec=head[0], onnx=sibling, onnx_meta=meta), ""


def model_for_gallery(model: str | None, g: Gallery | None, backend: str = "auto") -> ModelRef:
    """The model to embed audio with for gallery `g`: `model` (--model), else the one the gallery records (a file
    that still exists, or resemblyzer), else the bundled model; refused when its sha256 is not the gallery's."""
    from spkid import gallery

    if model is not None or g is None:
        ref = resolve_model(model, backend)
    else:
        rec = g.meta.get("model") or {}
        path = rec.get("path")
        if rec.get("label") == "resemblyzer":
            ref = resolve_model("resemblyzer", backend)
        elif rec.get("label") == "default":  # the bundled model, wherever this installation keeps it
            ref = resolve_model(None, backend)
        elif path and Path(path).exists():
            ref = resolve_model(path, backend)
        elif rec.get("label") and _known(rec["label"]):  # enrolled from a pipe: the model as `embed` was given it
            ref = resolve_model(rec["label"], backend)
        else:
            try:
                ref = resolve_model(None, backend)
            except SpkidError:
                raise SpkidError(f"{g.path} was built with model {rec.get('label') or path!r}, which is not found; "
                                 "pass --model FILE (the same model)") from None
    if g is not None:
        bundled = model is None and (g.meta.get("model") or {}).get("label") == "default"
        if bundled and g.model_sha256 not in (None, ref.sha256):
            raise SpkidError(f"{g.path} was enrolled with an earlier bundled model (sha256 {g.model_sha256[:12]}...); "
                             f"this spkid bundles another (sha256 {ref.sha256[:12]}...), and scores across models "
                             "are meaningless: enrol its speakers again in a new gallery (`spkid enroll ... -g NEW`), "
                             "or pass --model with the model file that enrolled it")
        gallery.check_model(g.model_sha256, ref.sha256, f"the gallery {g.path}", f"the model {ref.label}")
    return ref


def _known(label: str) -> bool:
    """Whether `--model label` names a model here: a file or folder, or a downloaded catalogue model."""
    from spkid import catalogue

    if Path(label).exists():
        return True
    try:
        return catalogue.resolve(label) is not None
    except SpkidError:
        return False


def choose_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SpkidError("--device cuda: no CUDA GPU is available to torch; use --device cpu or auto")
    return device


@dataclass
class Embedder:
    """A loaded network plus its `Preparer`; `embed_prepared` runs windows of many utterances in batches.

    `net`: a torch module, or an `onnxnet.OnnxNet` (`model.backend == "onnx"`); both have `embed_dim`. A fusion of
    models (`spkid.models.fusion`) has one Embedder per member in `members`, and a `FusedPreparer`."""

    net: Any
    spec: Any  # modelfile.ModelSpec
    model: ModelRef
    prep: Preparer
    device: str = "cpu"
    batch_size: int = BATCH_SIZE
    members: list[Embedder] = field(default_factory=list)  # a fusion's members, and how they are weighed
    weights: FusionWeights | None = None
    center: np.ndarray | None = None  # a fusion's member: taken out of each unit utterance embedding (`fusion_centers`)
    local: LocalCenter | None = None  # a fusion's member: then centred on its nearest training speakers

    @classmethod
    def from_model(
        cls,
        model: str | ModelRef | None = None,
        device: str = "cpu",
        *,
        use_vad: bool = True,
        window_s: float | None = None,
        hop_s: float | None = None,
        batch_size: int = BATCH_SIZE,
        threads: int = 0,
        backend: str = "auto",
        jobs: int = 1,
    ) -> Embedder:
        """Load a model (a file, an ONNX file, `resemblyzer`, the bundled model for None, or a `ModelRef`, whose
        weights it takes) for inference on `backend` (auto | torch | onnx; a ModelRef was resolved with one).
        `window_s`/`hop_s` override the model's windows (window 0: the whole utterance). `threads`: CPU threads of
        the network (0: torch's default; onnxruntime: the cores shared among `jobs` parallel workers)."""
        from spkid import modelfile, pretrained

        if window_s is not None and window_s < 0:
            raise SpkidError(f"--window must be >= 0 seconds, got {window_s}")
        if batch_size < 1:
            raise SpkidError(f"batch size must be >= 1, got {batch_size}")
        ref = model if isinstance(model, ModelRef) else resolve_model(model, backend)
        if ref.onnx is not None and device == "cuda" and backend == "auto" and ref.path.suffix != ".onnx":
            from spkid.onnxnet import has_cuda

            if not has_cuda():  # this onnxruntime runs on the CPU only: torch runs the model file on the GPU
                ref = replace(resolve_model(str(ref.path), "torch"), label=ref.label)
        if ref.onnx is not None:
            from spkid.onnxnet import OnnxNet

            meta, ref.onnx_meta = ref.onnx_meta, None  # its bytes: read once, not kept past the session's start
            net = OnnxNet(ref.onnx, threads, jobs, device, meta=meta)
            spec, dev = ref.spec, net.device
        else:
            if threads > 0:
                import torch

                torch.set_num_threads(threads)
            dev = choose_device(device)
            if ref.pretrained:
                net, spec = pretrained.load(dev)
            else:
                spec, state = ref.weights()
                net = modelfile.build(spec, state, ref.path, dev)
        if spec.model["name"] == "fusion":
            return cls._fusion(net, spec, ref, Preparer(None, None, use_vad), dev, batch_size, window_s, hop_s)
        front = frontend(spec.features, str(ref.path))
        cfg = EmbedConfig.from_dict(spec.embedding, str(ref.path), window_s=window_s, hop_s=hop_s)
        return cls(net, spec, ref, Preparer(front, cfg, use_vad), dev, batch_size)

    @classmethod
    def _fusion(cls, net: Any, spec: ModelSpec, ref: ModelRef, base: Preparer, dev: str, batch_size: int,
                window_s: float | None, hop_s: float | None) -> Embedder:
        """The Embedder of a fusion of models (`spkid.models.fusion`): one per member (its network, front end and
        windows; `window_s`/`hop_s` override every member's), run by `embed_prepared` on a `FusedPreparer`'s windows."""
        from spkid.modelfile import ModelSpec

        members = []
        kwargs = spec.model["kwargs"]
        weights = FusionWeights.from_kwargs(kwargs, len(kwargs["members"]))
        nets = [net.member(i) if ref.onnx is not None else net.members[i] for i in range(len(kwargs["members"]))]
        dims = [int(n.embed_dim) for n in nets]
        centers, locals_ = fusion_centers(kwargs, dims), fusion_local_centers(kwargs, dims)
        for i, (cfg, mnet) in enumerate(zip(kwargs["members"], nets)):
            source = f"{ref.path}: member {i}"
            mspec = ModelSpec(model=cfg["model"], features=cfg["features"], embedding=cfg.get("embedding", {}))
            prep = replace(base, front=frontend(mspec.features, source),
                           cfg=EmbedConfig.from_dict(mspec.embedding, source, window_s=window_s, hop_s=hop_s))
            members.append(cls(mnet, mspec, ref, prep, dev, batch_size, center=centers[i], local=locals_[i]))
        first = members[0].prep
        prep = FusedPreparer(first.front, first.cfg, first.use_vad, [m.prep for m in members],
                             SpeedCopies.from_kwargs(kwargs))
        return cls(net, spec, ref, prep, dev, batch_size, members, weights)

    @property
    def meta(self) -> dict:
        """What an embedding stream records about its model (see `spkid.npyio.keyed_records`)."""
        return {"model_sha256": self.model.sha256, "model": self.model.label, "features": self.spec.features,
                "embedding": self.prep.cfg.to_dict()}

    def forward(self, windows: np.ndarray) -> np.ndarray:
        """Network outputs `(n, D)` float32 of equal-length windows `(n, length, dims)`, `batch_size` at a time."""
        if self.model.onnx is not None:
            out = [self.net(windows[a : a + self.batch_size]) for a in range(0, len(windows), self.batch_size)]
            return np.concatenate(out) if out else np.zeros((0, self.net.embed_dim), np.float32)
        import torch

        out = []
        with torch.inference_mode():
            for a in range(0, len(windows), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(windows[a : a + self.batch_size], dtype=np.float32))
                out.append(self.net(x.to(self.device)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.net.embed_dim), np.float32)

    def embed_prepared(self, items: Sequence[Prepared]) -> np.ndarray:
        """Embeddings `(len(items), D)` float32 (unit rows): windows grouped by length, then averaged."""
        if not items:
            return np.zeros((0, self.net.embed_dim), np.float32)
        if self.members:  # a fusion: each member's unit embedding times the root of its weight, side by side
            w = np.sqrt(self.weights.at(np.array([p.quality.speech_seconds for p in items])))
            # speed copies (`SpeedCopies`): each member's unit embeddings of an utterance and its copies, averaged
            parts = []
            for i, m in enumerate(self.members):
                mine = [(o, win[i]) for o, p in enumerate(items) for win in (p.windows, *p.copies) if win[i] is not None]
                e = m.embed_prepared([Prepared(win, items[o].quality) for o, win in mine])
                if len(mine) > len(items):
                    sums = np.zeros((len(items), e.shape[1]))
                    np.add.at(sums, [o for o, _ in mine], e)
                    e = unit(sums)
                parts.append(w[:, i : i + 1] * e)
            return np.concatenate(parts, axis=1).astype(np.float32)
        owners = np.concatenate([np.full(len(p.windows), i) for i, p in enumerate(items)])
        lengths = np.concatenate([np.full(len(p.windows), p.windows.shape[1]) for p in items])
        flat = [w for p in items for w in p.windows]
        sums = np.zeros((len(items), self.net.embed_dim))
        for length in sorted(set(lengths.tolist())):  # not np.unique, which imports numpy.ma: 6 ms a call
            idx = np.flatnonzero(lengths == length)
            e = unit(self.forward(np.stack([flat[i] for i in idx])))
            np.add.at(sums, owners[idx], e)
        e = unit(sums if self.center is None else unit(sums) - self.center)
        return (e if self.local is None else self.local.apply(e)).astype(np.float32)

    def embed_signals(self, signals: Iterable[np.ndarray], sr: int) -> np.ndarray:
        """Embeddings `(N, D)` of mono signals at `sr` Hz (VAD and windows as configured)."""
        items = [self.prep.prepare_signal(x, sr, f"signal {i}") for i, x in enumerate(signals)]
        return self.embed_prepared(items)

    def embed_files(self, paths: Sequence[str]) -> np.ndarray:
        """Embeddings `(N, D)` of audio or `.npy` feature files, batched across files."""
        out = []
        for a in range(0, len(paths), FILES_PER_GROUP):
            out.append(self.embed_prepared([self.prep.prepare_file(p) for p in paths[a : a + FILES_PER_GROUP]]))
        return np.concatenate(out) if out else np.zeros((0, self.net.embed_dim), np.float32)

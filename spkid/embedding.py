"""Utterance embeddings from a model file: front end, VAD, equal-length windows, batched network, averaging.

A model file (`spkid.modelfile`) says everything: which features to compute (`spec.features`: a
`spkid.features.FeatureConfig`, or another front end registered in `FRONTENDS`, e.g. resemblyzer's power Mel
spectrogram), which network to build, and how to cut long audio (`spec.embedding`, `EmbedConfig`).

Per utterance: the front end's `prepare` (resemblyzer: volume normalisation), then VAD (the voiced samples,
concatenated; the whole signal when none is found), then features of the whole voiced signal, cut into windows of
`window_s` seconds every `hop_s` seconds. Every window of an utterance has the same length, so a batch only ever
holds windows of one length: no padding enters a batch and the result does not depend on the batch size. The
embedding is the L2-normalised mean of the L2-normalised window embeddings (resemblyzer's `embed_utterance`).

Two ways to treat the end (`EmbedConfig.last`):
- "shift" (spkid models): the last window is shifted back to end at the last frame; an utterance shorter than one
  window is one window of its own length.
- "pad" (resemblyzer): windows start every hop from frame 0; the last one is kept when the audio covers at least
  `min_coverage` of it, and the audio is zero-padded to its end (`compute_partial_slices`).

    >>> from spkid import embedding
    >>> emb = embedding.Embedder.from_model("model.pt")     # or "resemblyzer"
    >>> e = emb.embed_signals([x1, x2], 16000)               # (2, D) float32, unit rows

torch is imported only when a network is loaded.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from spkid import streams
from spkid.errors import SpkidError

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path(__file__).resolve().parent / "data" / "default_model.pt"
BATCH_SIZE = 64  # windows per forward pass
GROUP_WINDOWS = 512  # windows gathered from many utterances before running the network
MIN_ENROLL_SPEECH_S = 2.0
CLIP_LEVEL = 0.999
# VAD for embedding keeps short pauses and segment edges: splicing words together cost EER on librispeech_tc100
# with resemblyzer (default VadConfig 0.86 %, these settings 0.71 %, no VAD 1.19 %, with one version of the VAD model)
EMBED_VAD = {"padding": 0.1, "min_silence": 0.3}
SILENCE_DBFS = -50.0
STATS_BLOCK = 1 << 20  # samples per block of the level and clipping statistics


class Frontend(Protocol):
    """What embedding needs from a feature extractor (FeatureConfig adapter, pretrained.MelConfig, ...)."""

    sample_rate: int
    dims: int
    frame_step: int  # samples between frames

    def n_frames(self, n_samples: int) -> int: ...
    def prepare(self, signal: np.ndarray) -> np.ndarray: ...
    def compute(self, signal: np.ndarray) -> np.ndarray: ...
    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class FeatureFrontend:
    """`spkid.features` behind the `Frontend` interface."""

    cfg: Any  # spkid.features.FeatureConfig

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def dims(self) -> int:
        return self.cfg.dims

    @property
    def frame_step(self) -> int:
        return self.cfg.frame_step

    def n_frames(self, n_samples: int) -> int:
        from spkid import features

        return features.n_frames(n_samples, self.cfg)

    def prepare(self, signal: np.ndarray) -> np.ndarray:
        return signal

    def compute(self, signal: np.ndarray) -> np.ndarray:
        from spkid import features

        return features.compute(signal, self.cfg)

    def to_dict(self) -> dict[str, Any]:
        return self.cfg.to_dict()


def _mel_frontend(raw: dict[str, Any]) -> Frontend:
    from spkid.pretrained import MelConfig

    return MelConfig.from_dict(raw)


def _feature_frontend(raw: dict[str, Any]) -> Frontend:
    from spkid.features import FeatureConfig

    return FeatureFrontend(FeatureConfig.from_dict(raw))


# Feature kinds that spkid.features does not compute: kind -> factory. Any other kind is a FeatureConfig.
FRONTENDS: dict[str, Callable[[dict[str, Any]], Frontend]] = {"ge2e_mel": _mel_frontend}


def frontend(raw: dict[str, Any], source: str = "model") -> Frontend:
    """The front end a model file's `spec.features` describes (the extension point for non-`features` kinds)."""
    if not isinstance(raw, dict):
        raise SpkidError(f"{source}: feature config must be a JSON object, got {type(raw).__name__}")
    try:
        return FRONTENDS.get(raw.get("kind", ""), _feature_frontend)(dict(raw))
    except SpkidError as e:
        raise SpkidError(f"{source}: {e}") from None


def read_feature_config(path: str | Path) -> Frontend:
    """The front end a `features.json` describes (a FeatureConfig, or a model's own front end such as ge2e_mel)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpkidError(f"{path}: no such file") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpkidError(f"{path}: not a JSON feature config ({e})") from None
    return frontend(raw, str(path))


@dataclass(frozen=True)
class EmbedConfig:
    """How long audio is cut (model file `spec.embedding`; `--window`/`--hop` override).

    window_s: s, window length (<= 0: the whole utterance is one window); hop_s: s between window starts;
    min_s: s, below this much speech a warning is given; min_coverage: "pad" only, the fraction of the last window
    the audio must cover for it to be kept; last: "shift" or "pad" (module docstring).
    """

    window_s: float = 3.0
    hop_s: float = 1.5
    min_s: float = 0.5
    min_coverage: float = 0.75
    last: str = "shift"

    def __post_init__(self) -> None:
        if self.last not in ("shift", "pad"):
            raise SpkidError(f"embedding config: last must be 'shift' or 'pad', got {self.last!r}")
        if self.window_s > 0 and not self.hop_s > 0:
            raise SpkidError(f"embedding config: hop must be > 0 s, got {self.hop_s}")
        if not 0 < self.min_coverage <= 1:
            raise SpkidError(f"embedding config: min_coverage must be in (0, 1], got {self.min_coverage}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, source: str = "model", **overrides: float | None) -> EmbedConfig:
        raw = dict(raw or {})
        if unknown := raw.keys() - {f.name for f in fields(cls)}:
            raise SpkidError(f"{source}: unknown embedding settings {sorted(unknown)}")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**raw)
        except TypeError as e:
            raise SpkidError(f"{source}: bad embedding settings ({e})") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_starts(n_samples: int, n_frames: int, frame_step: int, win: int, hop: int, cfg: EmbedConfig) -> tuple[list[int], int]:
    """Start frames of the windows of an utterance, and their common length in frames.

    `win` <= 0 means one window of the whole utterance. In "pad" mode the windows may reach past `n_frames`: the
    caller computes features of the audio zero-padded to `(start + length) * frame_step` samples.
    """
    if win <= 0:
        return [0], n_frames
    if cfg.last == "pad":
        steps = max(1, n_frames - win + hop + 1)
        starts = list(range(0, steps, hop))
        coverage = (n_samples - starts[-1] * frame_step) / (win * frame_step)
        if coverage < cfg.min_coverage and len(starts) > 1:
            starts.pop()
        return starts, win
    if n_frames <= win:
        return [0], n_frames
    starts = list(range(0, n_frames - win + 1, hop))
    if starts[-1] + win < n_frames:
        starts.append(n_frames - win)
    return starts, win


def cut(feats: np.ndarray, starts: Sequence[int], length: int) -> np.ndarray:
    """Windows `(len(starts), length, dims)` of a feature matrix (zero frames where a window runs past its end)."""
    need = max(starts) + length
    if need > len(feats):
        feats = np.concatenate([feats, np.zeros((need - len(feats), feats.shape[1]), feats.dtype)])
    view = np.lib.stride_tricks.sliding_window_view(feats, length, axis=0)  # (n, dims, length)
    return np.ascontiguousarray(view[np.asarray(starts)].transpose(0, 2, 1))


@dataclass
class Quality:
    """What a recording offers: seconds of audio and of speech, clipped fraction, level, resampling."""

    seconds: float
    speech_seconds: float
    clipped: float = 0.0
    rms_dbfs: float = 0.0
    resampled_from: int | None = None
    no_speech: bool = False

    def problems(self, min_speech_s: float = MIN_ENROLL_SPEECH_S) -> list[str]:
        """Human-readable warnings (enrolment quality)."""
        out = []
        if self.no_speech:
            out.append("no speech found by the VAD; the whole file was used")
        if self.speech_seconds < min_speech_s:
            out.append(f"only {self.speech_seconds:.1f} s of speech (under {min_speech_s:g} s gives unreliable embeddings)")
        if self.clipped > 0.001:
            out.append(f"{100 * self.clipped:.1f} % of samples are clipped")
        if self.rms_dbfs < SILENCE_DBFS:
            out.append(f"nearly silent (RMS {self.rms_dbfs:.0f} dBFS)")
        if self.resampled_from is not None:
            out.append(f"recorded at {self.resampled_from} Hz and resampled (run `spkid convert` to do it once)")
        return out


@dataclass
class Prepared:
    """One utterance ready for the network: windows `(n, length, dims)` float32 and its quality."""

    windows: np.ndarray
    quality: Quality


@dataclass
class Preparer:
    """The numpy half of embedding (picklable for joblib): audio or feature files -> windows."""

    front: Any  # Frontend
    cfg: EmbedConfig
    use_vad: bool = True

    @property
    def win_frames(self) -> int:
        return _frames(self.cfg.window_s, self.front) if self.cfg.window_s > 0 else 0

    @property
    def hop_frames(self) -> int:
        return max(1, _frames(self.cfg.hop_s, self.front))

    def signal(self, x: np.ndarray, sr: int, name: str = "signal") -> tuple[np.ndarray, Quality]:
        """Mono signal at any rate -> (the voiced signal at the model's rate, quality)."""
        from spkid import audio

        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 1:
            raise SpkidError(f"{name}: expected a mono signal, got shape {x.shape}")
        if len(x) == 0:
            raise SpkidError(f"{name}: no samples")
        q = Quality(seconds=len(x) / sr, speech_seconds=len(x) / sr)
        # in blocks: whole-signal temporaries (abs, a float64 square) would need several times a long recording
        blocks = [x[a : a + STATS_BLOCK] for a in range(0, len(x), STATS_BLOCK)]
        q.clipped = sum(int(np.count_nonzero(np.abs(b) >= CLIP_LEVEL)) for b in blocks) / len(x)
        rms = math.sqrt(sum(float(np.square(b, dtype=np.float64).sum()) for b in blocks) / len(x))
        q.rms_dbfs = 20 * math.log10(rms) if rms > 0 else -math.inf
        rate = self.front.sample_rate
        if sr != rate:
            x = audio.resample(x, sr, rate)
            q.resampled_from = sr
        x = self.front.prepare(x)
        if self.use_vad:
            x, q.no_speech = _voiced(x, rate)
        q.speech_seconds = len(x) / rate
        return x, q

    def windows(self, x: np.ndarray) -> np.ndarray:
        """Windows `(n, length, dims)` of a prepared signal at the model's rate."""
        step = self.front.frame_step
        if self.cfg.last == "pad":
            starts, length = window_starts(len(x), self.front.n_frames(len(x)), step, self.win_frames, self.hop_frames, self.cfg)
            need = (starts[-1] + length) * step
            if need >= len(x):
                x = np.pad(x, (0, need - len(x)))
            feats = self.front.compute(x)
        else:
            feats = self.front.compute(x)
            starts, length = window_starts(len(x), len(feats), step, self.win_frames, self.hop_frames, self.cfg)
        if len(feats) == 0:
            raise SpkidError("signal too short for a single feature frame")
        return cut(feats, starts, length)

    def prepare_signal(self, x: np.ndarray, sr: int, name: str = "signal") -> Prepared:
        y, q = self.signal(x, sr, name)
        try:
            return Prepared(self.windows(y), q)
        except SpkidError as e:
            raise SpkidError(f"{name}: {e}") from None

    def prepare_features(self, feats: np.ndarray, name: str = "features") -> Prepared:
        """Precomputed features `(frames, dims)` (VAD already applied by the pipeline): "shift" windows."""
        feats = np.asarray(feats)
        if feats.ndim != 2 or feats.dtype.kind != "f":
            raise SpkidError(f"{name}: expected a float (frames, dims) feature matrix, got {feats.dtype} {feats.shape}")
        if feats.shape[1] != self.front.dims:
            raise SpkidError(f"{name}: {feats.shape[1]} feature dims, but the model takes {self.front.dims} "
                             f"({self.front.to_dict().get('kind')}); compute features with the model's config")
        if len(feats) == 0:
            raise SpkidError(f"{name}: no feature frames")
        finite = np.isfinite(feats).all(axis=1)
        if not finite.all():
            raise SpkidError(f"{name}: NaN or Inf in {int((~finite).sum())} feature frame(s), e.g. frame "
                             f"{int(np.argmin(finite))}; recompute the features")
        cfg = EmbedConfig(self.cfg.window_s, self.cfg.hop_s, self.cfg.min_s, self.cfg.min_coverage, "shift")
        starts, length = window_starts(len(feats) * self.front.frame_step, len(feats), self.front.frame_step,
                                       self.win_frames, self.hop_frames, cfg)
        seconds = len(feats) * self.front.frame_step / self.front.sample_rate
        return Prepared(cut(feats.astype(np.float32, copy=False), starts, length), Quality(seconds, seconds))

    def prepare_file(self, path: str) -> Prepared:
        """An audio file, or a `.npy` feature matrix (checked against the model's features)."""
        if path.lower().endswith(".npy"):
            return self.prepare_features(load_features(path, self.front), path)
        from spkid import audio

        x, sr = audio.load(path)
        return self.prepare_signal(x, sr, path)


def _frames(seconds: float, front: Frontend) -> int:
    return int(round(seconds * front.sample_rate / front.frame_step))


def _voiced(x: np.ndarray, rate: int) -> tuple[np.ndarray, bool]:
    """The voiced samples of `x` (concatenated) and whether none were found (then `x` itself)."""
    from spkid import vad

    if rate != vad.SAMPLE_RATE:
        log.debug("VAD skipped: it needs %d Hz, the model takes %d Hz", vad.SAMPLE_RATE, rate)
        return x, False
    segs = vad.segments(x, rate, vad.VadConfig(**EMBED_VAD))
    if len(segs) == 0:
        return x, True
    if len(segs) == 1:
        return x[segs[0, 0] : segs[0, 1]], False
    return np.concatenate([x[s:e] for s, e in segs]), False


def load_features(path: str, front: Any | None = None) -> np.ndarray:
    """A `.npy` feature file (never unpickled); when a `features.json` lies in a parent folder (written by
    `spkid features`) and `front` is given, it must describe the model's features."""
    p = Path(path)
    if not p.is_file():
        raise SpkidError(f"{path}: no such file")
    feats = streams.read_array(path)  # the hardened .npy reader: damaged headers and cut data are SpkidErrors
    if front is not None:
        for parent in list(p.resolve().parents)[:6]:
            cfg = parent / "features.json"
            if cfg.is_file():
                _check_feature_json(cfg, front, path)
                break
    return feats


def _check_feature_json(cfg_path: Path, front: Any, path: str) -> None:
    import json

    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(raw, dict):
        return
    mine = front.to_dict()
    diff = sorted(k for k in mine.keys() | raw.keys() if k != "backend" and raw.get(k) != mine.get(k))
    if diff:
        shown = ", ".join(f"{k}={raw.get(k)!r} (model: {mine.get(k)!r})" for k in diff[:4])
        raise SpkidError(f"{path}: features were computed with other settings than the model's ({cfg_path}: {shown}); "
                         "recompute them with the model's feature config, or pass the audio instead")


@dataclass
class ModelRef:
    """Which model: `label` as the user named it, `path` of its weights, `sha256` its identity."""

    label: str
    path: Path
    sha256: str
    pretrained: bool = False


def resolve_model(arg: str | None) -> ModelRef:
    """`--model` -> ModelRef: a file, `resemblyzer`, or None for the bundled model (reads the weights to
    fingerprint them, `modelfile.sha256`)."""
    from spkid import modelfile, pretrained

    if arg is None or arg == "":
        if not DEFAULT_MODEL.is_file():
            raise SpkidError(f"no bundled model is installed ({DEFAULT_MODEL} is missing); pass --model FILE "
                             "(a `spkid train` output) or --model resemblyzer")
        return ModelRef("default", DEFAULT_MODEL, modelfile.sha256(DEFAULT_MODEL))
    if arg == pretrained.NAME:
        path = pretrained.weights_path()
        return ModelRef(arg, path, pretrained.sha256(), pretrained=True)
    p = Path(arg)
    if p.is_dir():
        raise SpkidError(f"{arg}: is a directory, expected a model file")
    if not p.is_file():
        raise SpkidError(f"{arg}: no such model file (give a `spkid train` output, or `resemblyzer`)")
    return ModelRef(arg, p, modelfile.sha256(p))


def choose_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SpkidError("--device cuda: no CUDA GPU is available to torch; use --device cpu or auto")
    return device


@dataclass
class Embedder:
    """A loaded network plus its `Preparer`; `embed_prepared` runs windows of many utterances in batches."""

    net: Any
    spec: Any  # modelfile.ModelSpec
    model: ModelRef
    prep: Preparer
    device: str = "cpu"
    batch_size: int = BATCH_SIZE

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
    ) -> Embedder:
        """Load a model file (or `resemblyzer`, or the bundled model for None) for inference."""
        import torch

        from spkid import modelfile, pretrained

        if threads > 0:
            torch.set_num_threads(threads)
        ref = model if isinstance(model, ModelRef) else resolve_model(model)
        dev = choose_device(device)
        if ref.pretrained:
            net, spec = pretrained.load(dev)
        else:
            net, spec = modelfile.load(ref.path, dev)
        front = frontend(spec.features, str(ref.path))
        cfg = EmbedConfig.from_dict(spec.embedding, str(ref.path), window_s=window_s, hop_s=hop_s)
        if batch_size < 1:
            raise SpkidError(f"batch size must be >= 1, got {batch_size}")
        return cls(net, spec, ref, Preparer(front, cfg, use_vad), dev, batch_size)

    @property
    def meta(self) -> dict:
        """What an embedding stream records about its model (see `spkid.streams.write_embeddings`)."""
        return {"model_sha256": self.model.sha256, "model": self.model.label, "features": self.spec.features,
                "embedding": self.prep.cfg.to_dict()}

    def forward(self, windows: np.ndarray) -> np.ndarray:
        """Network outputs `(n, D)` float32 of equal-length windows `(n, length, dims)`, `batch_size` at a time."""
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
        owners = np.concatenate([np.full(len(p.windows), i) for i, p in enumerate(items)])
        lengths = np.concatenate([np.full(len(p.windows), p.windows.shape[1]) for p in items])
        flat = [w for p in items for w in p.windows]
        sums = np.zeros((len(items), self.net.embed_dim))
        for length in np.unique(lengths):
            idx = np.flatnonzero(lengths == length)
            e = _unit(self.forward(np.stack([flat[i] for i in idx])).astype(np.float64))
            np.add.at(sums, owners[idx], e)
        return _unit(sums).astype(np.float32)

    def embed_signals(self, signals: Iterable[np.ndarray], sr: int) -> np.ndarray:
        """Embeddings `(N, D)` of mono signals at `sr` Hz (VAD and windows as configured)."""
        items = [self.prep.prepare_signal(x, sr, f"signal {i}") for i, x in enumerate(signals)]
        return self.embed_prepared(items)

    def embed_files(self, paths: Sequence[str]) -> np.ndarray:
        """Embeddings `(N, D)` of audio or `.npy` feature files, batched across files."""
        out = []
        for a in range(0, len(paths), 64):
            out.append(self.embed_prepared([self.prep.prepare_file(p) for p in paths[a : a + 64]]))
        return np.concatenate(out) if out else np.zeros((0, self.net.embed_dim), np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def group_by_windows(items: Iterable, count: Callable[[Any], int], limit: int = GROUP_WINDOWS) -> Iterable[list]:
    """Consecutive groups of items holding about `limit` windows each (bounded memory, full batches)."""
    group, n = [], 0
    for it in items:
        group.append(it)
        n += count(it)
        if n >= limit:
            yield group
            group, n = [], 0
    if group:
        yield group


def sliding_starts(n_samples: int, win: int, hop: int) -> np.ndarray:
    """Start samples of `win`-sample windows every `hop` samples over a recording; the last one is shifted back to
    end at the end, and a recording shorter than a window is one window."""
    if n_samples <= win:
        return np.zeros(1, np.int64)
    starts = np.arange(0, n_samples - win + 1, hop, dtype=np.int64)
    if starts[-1] + win < n_samples:
        starts = np.append(starts, n_samples - win)
    return starts


def voiced_in(segs: np.ndarray, a: int, b: int) -> np.ndarray:
    """The voiced `[start, end)` ranges `(K, 2)` of `segs` clipped to the window [a, b)."""
    segs = np.asarray(segs, dtype=np.int64).reshape(-1, 2)
    clipped = np.stack([np.maximum(segs[:, 0], a), np.minimum(segs[:, 1], b)], axis=1)
    return clipped[clipped[:, 1] > clipped[:, 0]]


def window_cores(starts: np.ndarray, win: int, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of the timeline each window speaks for: from the midpoint with the previous window's centre to
    the midpoint with the next one's (the first from its start, the last to its end), so they tile the recording."""
    centres = starts + win / 2
    mids = (centres[1:] + centres[:-1]) / 2
    begin = np.concatenate([[starts[0]], mids])
    end = np.concatenate([mids, [min(n_samples, starts[-1] + win)]])
    return begin, end


def merge_runs(decisions: Sequence[str | None], scores: np.ndarray, begin: np.ndarray, end: np.ndarray) -> list[tuple[float, float, str, float, int]]:
    """Merge consecutive windows with the same decision (None = no speaker: silence or rejected) into
    (begin, end, speaker, mean score, windows) runs, in the units of `begin`/`end`."""
    runs: list[tuple[float, float, str, float, int]] = []
    i = 0
    while i < len(decisions):
        d = decisions[i]
        j = i + 1
        while j < len(decisions) and decisions[j] == d:
            j += 1
        if d is not None:
            runs.append((float(begin[i]), float(end[j - 1]), d, float(np.mean(scores[i:j])), j - i))
        i = j
    return runs

"""Voice activity detection: small temporal-convolution networks over log-Mel frames, numpy only at inference.

The shipped model (`spkid/data/vad.npz`, made by `scripts/train_vad.py`) is the mean of three networks of one
shape on one front end: one trained without sound events (it hears music and short words said alone best), two
trained with sound events coming and going (seeds 0 and 1; they reject laughs, engines and animals best). Each is
a 3-tap convolution followed by six residual 3-tap convolutions dilated 1, 2, 4, ..., 32 frames: 2.6 s of
context, which is what lets it tell speech from music and sound effects (syllable-rate modulation, formant
motion, pitch that glides rather than holding and jumping). Front end: 32 ms Hann windows every 20 ms, 512-point
FFT, 32 log-Mel bands plus the log power of the 40 FFT bins from 62 to 1280 Hz (resolved voice harmonics). The
model gives one probability per 20 ms, repeated to the 10 ms grid that `speech_prob` returns; `segments`
smooths, applies hysteresis and minimum durations, and pads. The networks are trained on energy labels of clean
speech times silero-vad's probabilities on it, so pauses between phrases, breaths and lip noise are not speech,
as people label them; the defaults keep segment edges where people put them (little padding, pauses from 0.1 s
kept). `embed` trims with its own, more generous settings and its own network (`EMBED_MODEL_PATH`).

The front end, and the noise fill that lets the networks hear band-limited (8 kHz) speech, are `spkid.vadfront`'s.

    >>> from spkid import vad
    >>> p = vad.speech_prob(x, 16000)              # (len(x) // 160,) float32 in [0, 1], one per 10 ms
    >>> segs = vad.segments(x, 16000)              # int64 (K, 2) [start, end) in samples
    >>> vad.best_window(segs, len(x), 32000)       # the 2 s window holding the most voice
    >>> vad.span(segs)                             # first to last voiced sample

Only 16 kHz mono input is accepted; anything else is refused with a hint to run `spkid convert`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from spkid.errors import SpkidError
from spkid.vadfront import DETECT_FRAMES, SAMPLE_RATE, Fill, Frontend, band_fill

log = logging.getLogger(__name__)

FRAME_SHIFT = SAMPLE_RATE // 100  # samples per 10 ms output frame
MODEL_PATH = Path(__file__).resolve().parent / "data" / "vad.npz"
# The network `embed` (and verify, enroll, identify) trims with: the previous model, trained on energy labels with
# short pauses filled, kept with embed's own generous settings (`utterance.EMBED_VAD`), because the bundled speaker
# model's calibration was measured on what it keeps. `scripts/train_vad.py --teacher none --no-extra-speech
# --no-narrowband --examples 12000 --nonspeech-weight 1 -o spkid/data/vad_embed.npz` reproduces it.
EMBED_MODEL_PATH = MODEL_PATH.with_name("vad_embed.npz")
BLOCK_FRAMES = 8192  # model frames (164 s) per block of `VadModel.prob`: a 2-hour file needs ~60 MB, not GBs


@dataclass
class VadConfig:
    """How frame probabilities become segments (defaults chosen on scripts/train_vad.py's development set and
    real labelled speech: segment edges where people put them, as silero-vad's defaults do).

    frame:         s, window over which the 10 ms probabilities are averaged before each decision
    hop:           s, step between decisions (a multiple of 10 ms)
    threshold:     onset probability; higher = more aggressive (less is called speech)
    neg_threshold: offset probability for hysteresis; None = threshold - 0.15
    min_speech:    s, shorter speech runs are dropped
    min_silence:   s, shorter pauses inside speech are filled
    padding:       s, added to both ends of every segment (then overlapping segments merge)
    """

    frame: float = 0.03
    hop: float = 0.01
    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech: float = 0.25
    min_silence: float = 0.1
    padding: float = 0.05

    def __post_init__(self) -> None:
        steps = self.hop * 100
        if self.hop <= 0 or abs(steps - round(steps)) > 1e-6:
            raise SpkidError(f"vad: hop must be a positive multiple of 0.01 s, got {self.hop}")
        if self.frame < self.hop:
            raise SpkidError(f"vad: frame ({self.frame} s) must be at least hop ({self.hop} s)")
        if not 0.0 <= self.threshold <= 1.0:
            raise SpkidError(f"vad: threshold must be in [0, 1], got {self.threshold}")
        if self.neg_threshold is not None and not 0.0 <= self.neg_threshold <= self.threshold:
            raise SpkidError(f"vad: neg_threshold must be in [0, threshold], got {self.neg_threshold}")
        for name in ("min_speech", "min_silence", "padding"):
            if getattr(self, name) < 0:
                raise SpkidError(f"vad: {name} must be >= 0, got {getattr(self, name)}")


class _Net:
    """One network of a model file: input normalisation, BatchNorm-folded convolutions and the head (keys under
    `prefix`)."""

    def __init__(self, w: dict[str, np.ndarray], dilations: list[int], prefix: str = "") -> None:
        self.mean, self.scale = w[prefix + "mean"], 1.0 / w[prefix + "std"]
        self.layers = [(w[prefix + "conv0.w"], w[prefix + "conv0.b"], 1)]
        for i, d in enumerate(dilations):
            self.layers.append((w[f"{prefix}block{i}.w"], w[f"{prefix}block{i}.b"], int(d)))
        self.head_w, self.head_b = w[prefix + "head.w"], w[prefix + "head.b"]

    @property
    def context(self) -> int:
        return sum(d * (w.shape[0] // 2) for w, _, d in self.layers)

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        (w0, b0, _), blocks = self.layers[0], self.layers[1:]
        h = np.maximum(_conv((feats - self.mean) * self.scale, w0, b0, 1), 0.0)
        for w, b, d in blocks:
            h += np.maximum(_conv(h, w, b, d), 0.0)
        logit = (h @ self.head_w)[:, 0] + self.head_b[0]
        return 1.0 / (1.0 + np.exp(-np.clip(logit, -30, 30)))


class VadModel:
    """The numpy detector: front-end settings and one network (format `spkid-vad/1`), or several networks on the
    same front end whose probabilities are averaged with fixed weights (`spkid-vad/2`, `scripts/train_vad.py
    --combine`; the members' own metadata under `meta["members"]`), from a `.npz` written by scripts/train_vad.py."""

    def __init__(self, path: str | Path = MODEL_PATH) -> None:
        hint = "reinstall spkid" if Path(path).parent == MODEL_PATH.parent else "a .npz of scripts/train_vad.py"
        try:
            z = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SpkidError(f"{path}: cannot read the VAD model ({e}); {hint}") from None
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise SpkidError(f"{path}: not a VAD model ({hint})")
        try:
            with z:
                self.meta = json.loads(str(z["meta"]))
                w = {k: z[k].astype(np.float32) for k in z.files if k != "meta"}
            if self.meta.get("format") not in ("spkid-vad/1", "spkid-vad/2"):
                raise SpkidError(f"{path}: format {self.meta.get('format')!r} is not spkid-vad/1 or /2")
            self.frontend = Frontend(**self.meta["frontend"])
            if self.meta["format"] == "spkid-vad/2":
                members = self.meta["members"]
                self.nets = [_Net(w, m["dilations"], f"m{i}.") for i, m in enumerate(members)]
                self.weights = [float(v) for v in self.meta["weights"]]
            else:
                self.nets, self.weights = [_Net(w, self.meta["dilations"])], [1.0]
            self.hop = self.frontend.hop
            if self.hop % FRAME_SHIFT:
                raise SpkidError(f"{path}: model hop {self.hop} is not a multiple of {FRAME_SHIFT} samples")
            if len(self.weights) != len(self.nets):
                raise SpkidError(f"{path}: {len(self.weights)} weights for {len(self.nets)} networks")
            self.forward(np.zeros((1, self.frontend.n_mels + self.frontend.n_lin), np.float32))  # the arrays fit
        except SpkidError:
            raise
        except (KeyError, ValueError, TypeError, AttributeError) as e:  # a field or an array missing or misshapen
            raise SpkidError(f"{path}: not a usable VAD model ({type(e).__name__}: {e})") from None

    def features(self, x: np.ndarray) -> np.ndarray:
        """Front-end features `(ceil(len / hop), n_mels + n_lin)` float32 (see `Frontend`)."""
        return self.frontend(x)

    @property
    def context(self) -> int:
        """Model frames on each side that one output frame depends on (the receptive field's half-width)."""
        return max(net.context for net in self.nets)

    def prob(self, x: np.ndarray, block: int = BLOCK_FRAMES, fill: bool = True) -> np.ndarray:
        """Speech probability per model frame `(ceil(len / hop),)` of a float32 signal, computed over blocks of
        `block` frames with `context` frames of overlap on each side: the same numbers as
        `forward(frontend(x, fill=self.fill(x)))`, with memory bounded by the block instead of growing with the
        recording. `fill`: hear band-limited input with its empty band filled (`band_fill`)."""
        n = -(-len(x) // self.hop)
        if n <= block:  # one block: the detection reads the block's own spectra, at no cost
            return self.forward(self.frontend(x, fill=fill))
        found, ctx, parts = self.fill(x) if fill else None, self.context, []
        for a in range(0, n, block):
            b = min(n, a + block)
            lo, hi = max(0, a - ctx), min(n, b + ctx)
            parts.append(self.forward(self.frontend(x, lo, hi, found))[a - lo : b - lo])
        return np.concatenate(parts)

    def fill(self, x: np.ndarray) -> Fill | None:
        """`band_fill` of `x`, from at most `DETECT_FRAMES` of its frames spread evenly over it."""
        n = -(-len(x) // self.hop)
        power = np.abs(self.frontend.spectra(x, step=max(1, -(-n // DETECT_FRAMES)))) ** 2
        return band_fill(power, self.frontend.n_fft)

    def forward(self, feats: np.ndarray) -> np.ndarray:
        """Front-end features `(T, n_mels + n_lin)` -> `(T,)` speech probability per model frame (the weighted mean
        of the networks' probabilities)."""
        return sum(wt * net(feats) for wt, net in zip(self.weights, self.nets))


def _conv(h: np.ndarray, w: np.ndarray, b: np.ndarray, d: int) -> np.ndarray:
    """'Same' 1-D convolution over time: h `(T, Cin)`, w `(k, Cin, Cout)`, dilation d, zero padding."""
    k, t = w.shape[0], h.shape[0]
    pad = d * (k // 2)
    hp = np.zeros((t + 2 * pad, h.shape[1]), np.float32)
    hp[pad : pad + t] = h
    out = hp[0:t] @ w[0]
    for j in range(1, k):
        out += hp[j * d : j * d + t] @ w[j]
    out += b
    return out


@lru_cache(maxsize=4)
def load_model(path: str | Path = MODEL_PATH) -> VadModel:
    """The shipped model (cached)."""
    return VadModel(path)


def check_signal(signal: np.ndarray, sr: int, name: str = "signal") -> np.ndarray:
    """Mono float32 at 16 kHz, or SpkidError with a hint to run `spkid convert`."""
    x = np.asarray(signal)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise SpkidError(f"{name}: has {x.shape[1] if x.ndim == 2 else x.shape} channels; vad needs mono "
                         f"16 kHz audio: run `spkid convert` first (it downmixes and resamples)")
    if sr != SAMPLE_RATE:
        raise SpkidError(f"{name}: sample rate {sr} Hz; vad needs {SAMPLE_RATE} Hz: "
                         f"run `spkid convert` first (it resamples)")
    if x.dtype.kind in "iu":
        x = x / float(np.iinfo(x.dtype).max + 1)
    return x.astype(np.float32, copy=False)


def speech_prob(signal: np.ndarray, sr: int, model: VadModel | None = None) -> np.ndarray:
    """Speech probability for each 10 ms frame: float32 `(len(signal) // 160,)`.

    Frame i covers samples [160 i, 160 i + 160). `signal` is mono, 16 kHz, float in [-1, 1] (or integer PCM).
    Band-limited input is heard with its empty band filled (`band_fill`).
    """
    x = check_signal(signal, sr)
    model = model or load_model()
    n10 = len(x) // FRAME_SHIFT
    if n10 == 0:
        return np.zeros(0, np.float32)
    p = model.prob(x)
    return np.repeat(p, model.hop // FRAME_SHIFT)[:n10].astype(np.float32)


def decide(prob: np.ndarray, cfg: VadConfig) -> np.ndarray:
    """10 ms probabilities -> bool speech mask on the `cfg.hop` grid (smoothing and hysteresis only)."""
    if len(prob) == 0:
        return np.zeros(0, bool)
    w = max(1, int(round(cfg.frame * 100)))
    h = int(round(cfg.hop * 100))
    c = np.concatenate([[0.0], np.cumsum(prob, dtype=np.float64)])
    lo = np.clip(np.arange(len(prob)) - (w - 1) // 2, 0, len(prob))
    hi = np.clip(lo + w, 0, len(prob))
    smooth = (c[hi] - c[lo]) / np.maximum(hi - lo, 1)
    if h > 1:
        n = -(-len(smooth) // h)
        smooth = np.pad(smooth, (0, n * h - len(smooth)), mode="edge").reshape(n, h).mean(axis=1)
    on = cfg.threshold
    off = cfg.neg_threshold if cfg.neg_threshold is not None else max(on - 0.15, 0.0)
    # hysteresis: a run above the offset threshold is speech when some frame in it reaches the onset threshold
    above = smooth >= off
    starts, ends = runs(above)
    mask = np.zeros(len(smooth), bool)
    hit = np.concatenate([[0], np.cumsum(smooth >= on)])
    for s, e in zip(starts, ends):
        if hit[e] > hit[s]:
            mask[s:e] = True
    return mask


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of the True runs of a bool array."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def mask_to_segments(mask: np.ndarray, step: int, n_samples: int, cfg: VadConfig) -> np.ndarray:
    """Bool decisions every `step` samples -> int64 `(K, 2)` [start, end) samples, after min-duration rules."""
    starts, ends = runs(mask)
    if len(starts) == 0:
        return np.zeros((0, 2), np.int64)
    per_s = SAMPLE_RATE / step
    # fill short pauses first, so a word cut by a short pause counts as one run for min_speech
    gap_ok = (starts[1:] - ends[:-1]) >= cfg.min_silence * per_s
    keep_start = np.concatenate([[True], gap_ok])
    keep_end = np.concatenate([gap_ok, [True]])
    starts, ends = starts[keep_start], ends[keep_end]
    long = (ends - starts) >= cfg.min_speech * per_s - 1e-9
    starts, ends = starts[long], ends[long]
    if len(starts) == 0:
        return np.zeros((0, 2), np.int64)
    pad = int(round(cfg.padding * SAMPLE_RATE))
    s = np.clip(starts.astype(np.int64) * step - pad, 0, n_samples)
    e = np.clip(ends.astype(np.int64) * step + pad, 0, n_samples)
    # merge segments that padding made touch or overlap
    new = np.concatenate([[True], s[1:] > e[:-1]])
    out = np.stack([s[new], np.maximum.reduceat(e, np.flatnonzero(new))], axis=1)
    return out.astype(np.int64)


def segments(signal: np.ndarray, sr: int, cfg: VadConfig | None = None, model: VadModel | None = None) -> np.ndarray:
    """Voiced segments of a mono 16 kHz signal: int64 `(K, 2)` [start, end) in samples, sorted, disjoint.

    An empty `(0, 2)` array means no voice was found.
    """
    cfg = cfg or VadConfig()
    x = check_signal(signal, sr)
    prob = speech_prob(x, sr, model)
    return segments_from_prob(prob, len(x), cfg)


def segments_from_prob(prob: np.ndarray, n_samples: int, cfg: VadConfig) -> np.ndarray:
    """`segments` from precomputed 10 ms probabilities (see `speech_prob`)."""
    mask = decide(prob, cfg)
    return mask_to_segments(mask, int(round(cfg.hop * SAMPLE_RATE)), n_samples, cfg)


def voiced(signal: np.ndarray, segs: np.ndarray) -> np.ndarray:
    """The samples inside the segments, joined: `(sum of segment lengths,)`, same dtype as `signal`."""
    segs = np.asarray(segs, dtype=np.int64).reshape(-1, 2)
    if len(segs) == 0:
        return signal[:0]
    return np.concatenate([signal[s:e] for s, e in segs])


def span(segs: np.ndarray) -> tuple[int, int]:
    """(first voiced sample, last voiced sample + 1); (0, 0) when there is no segment."""
    segs = np.asarray(segs).reshape(-1, 2)
    if len(segs) == 0:
        return 0, 0
    return int(segs[0, 0]), int(segs[-1, 1])


def best_window(segs: np.ndarray, n_samples: int, length: int) -> tuple[int, int]:
    """The `length`-sample window [start, start + length) holding the most voiced samples (earliest on ties).

    A signal no longer than `length` gives (0, n_samples): the whole file, shorter than asked.
    No segment at all gives (0, 0), like the rest of `spkid vad`.
    """
    segs = np.asarray(segs, dtype=np.int64).reshape(-1, 2)
    if length <= 0:
        raise SpkidError(f"vad: window length must be positive, got {length}")
    if len(segs) == 0:
        return 0, 0
    if n_samples <= length:
        return 0, int(n_samples)
    # voice in [t, t + length) is piecewise linear in t; its maxima lie where a segment starts at t
    # or one ends at t + length (or at the ends of the signal)
    cand = np.unique(np.clip(np.concatenate([segs[:, 0], segs[:, 1] - length, [0, n_samples - length]]),
                             0, n_samples - length))
    voiced = _voiced_before(segs, cand + length) - _voiced_before(segs, cand)
    start = int(cand[np.argmax(voiced)])
    return start, start + length


def _voiced_before(segs: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Voiced samples in [0, t) for each t, given sorted disjoint segments."""
    lengths = segs[:, 1] - segs[:, 0]
    before = np.concatenate([[0], np.cumsum(lengths)])
    i = np.searchsorted(segs[:, 0], t, side="right") - 1
    inside = np.clip(t - segs[np.maximum(i, 0), 0], 0, lengths[np.maximum(i, 0)])
    return np.where(i >= 0, before[np.maximum(i, 0)] + inside, 0)

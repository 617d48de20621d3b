"""One utterance ready for a network: audio (or a feature file) -> VAD -> features -> equal-length windows.

A model file says how (`spec.features`: the front end, `spkid.frontends`; `spec.embedding`: `EmbedConfig`).
Per utterance: the front end's `prepare` (resemblyzer: volume normalisation), then VAD (the voiced samples,
concatenated; the whole signal when none is found), then features of the whole voiced signal, cut into windows of
`window_s` seconds every `hop_s` seconds. Every window of an utterance has the same length, so a batch only ever
holds windows of one length: no padding enters a batch and the result does not depend on the batch size.
`Preparer` does all of it and records the recording's `Quality`; `spkid.embedding` runs the network. No torch.
A fusion of models (`FusedPreparer`) makes each member's windows of one voiced signal, and, when the model asks for
them, of copies of a short utterance played faster and slower (`SpeedCopies`).

Two ways to treat the end (`EmbedConfig.last`):
- "shift" (spkid models): the last window is shifted back to end at the last frame; an utterance shorter than one
  window is one window of its own length.
- "pad" (resemblyzer): windows start every hop from frame 0; the last one is kept when the audio covers at least
  `min_coverage` of it, and the audio is zero-padded to its end (`compute_partial_slices`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from spkid.errors import SpkidError
from spkid.frontends import Frontend, load_features

if TYPE_CHECKING:
    from spkid.audio import Clip

log = logging.getLogger(__name__)

# Of the speech the VAD finds, the share where it is sure (probability >= SURE_PROB) must reach SURE_SHARE. Measured:
# shipped clips 0.61 at least (0.44 mixed with noise or music at 0 dB), librispeech_tc100 1st percentile 0.64; the
# music clip it calls 2.7 s of speech (music_credits1-cp) 0.07; the tests' generated voices 0.14 at least. Below
# 0.1 also fall 0-2 % of the short, noisy clips of ../shared/data/extra_speakers (command words, phone recordings),
# which `--no-vad` still scores.
SURE_PROB = 0.9
SURE_SHARE = 0.1
MIN_SPEECH_S = 0.5  # s of speech the VAD must find before verify, identify or enroll decide on an item
MIN_ENROLL_SPEECH_S = 2.0  # s; under this an enrolment is warned about (unreliable embedding)
CLIP_LEVEL = 0.999
CLIPPED_FRACTION = 0.001  # over this fraction of samples at CLIP_LEVEL: flagged as clipped
# VAD for embedding keeps short pauses and segment edges: splicing words together cost EER on librispeech_tc100
# with resemblyzer (default VadConfig 0.86 %, these settings 0.71 %, no VAD 1.19 %, with one version of the VAD model)
# Every setting is given (not left to VadConfig's defaults, which suit `spkid vad`'s tighter segments), so the voice
# embed keeps, and so the bundled model's calibration, does not move when `spkid vad`'s defaults do.
EMBED_VAD = {"frame": 0.03, "hop": 0.01, "threshold": 0.7, "neg_threshold": None, "min_speech": 0.25,
             "min_silence": 0.3, "padding": 0.1}
SILENCE_DBFS = -50.0
STATS_BLOCK = 1 << 20  # samples per block of the level and clipping statistics


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
    """What a recording offers: seconds of audio and of speech, clipped fraction, level, resampling.

    `vad`: the VAD ran, so `speech_seconds` is the speech it found (0 with `no_speech`, even when the whole file
    was embedded for want of any); without it (--no-vad, a feature file, a rate the VAD does not take) it is the
    length of what was embedded, and the decision gate (`decisions.require_speech`) does not apply.
    """

    seconds: float
    speech_seconds: float
    clipped: float = 0.0
    rms_dbfs: float = 0.0
    resampled_from: int | None = None
    no_speech: bool = False
    vad: bool = False
    sure_seconds: float | None = None  # of it, where the VAD is sure (probability >= SURE_PROB); None: not measured

    def flags(self) -> list[str]:
        """Machine-readable problems: no_speech, short_speech (under MIN_ENROLL_SPEECH_S), clipped (over 0.1 % of
        samples), too_quiet (RMS under SILENCE_DBFS), resampled, no_vad (speech not measured)."""
        out = []
        if self.vad and self.no_speech:
            out.append("no_speech")
        elif self.speech_seconds < MIN_ENROLL_SPEECH_S:
            out.append("short_speech")
        if self.clipped > CLIPPED_FRACTION:
            out.append("clipped")
        if self.rms_dbfs < SILENCE_DBFS:
            out.append("too_quiet")
        if self.resampled_from is not None:
            out.append("resampled")
        if not self.vad:
            out.append("no_vad")
        return out

    def problems(self, min_speech_s: float = MIN_ENROLL_SPEECH_S) -> list[str]:
        """Human-readable warnings (enrolment quality); resampling is warned about by every command that embeds."""
        out = []
        if self.no_speech:
            out.append("no speech found by the VAD (0.0 s of speech); the whole file was used")
        elif self.speech_seconds < min_speech_s:
            out.append(f"only {self.speech_seconds:.1f} s of speech (under {min_speech_s:g} s gives unreliable embeddings)")
        if self.clipped > CLIPPED_FRACTION:
            out.append(f"{100 * self.clipped:.1f} % of samples are clipped")
        if self.rms_dbfs < SILENCE_DBFS:
            out.append(f"nearly silent (RMS {self.rms_dbfs:.0f} dBFS)")
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON quality record (`verify`/`identify --json`, and per key in an embedding stream)."""
        return {"seconds": round(self.seconds, 3), "speech_seconds": round(self.speech_seconds, 3), "vad": self.vad,
                "no_speech": self.no_speech, "clipped": round(self.clipped, 6),
                "rms_dbfs": round(self.rms_dbfs, 1) if math.isfinite(self.rms_dbfs) else None,
                "resampled_from": self.resampled_from,
                "sure_seconds": None if self.sure_seconds is None else round(self.sure_seconds, 2), "flags": self.flags()}

    @classmethod
    def from_dict(cls, d: Any, source: str = "quality record") -> Quality:
        """A record of `to_dict` (e.g. from an embedding stream), its numbers checked."""
        if not isinstance(d, dict):
            raise SpkidError(f"{source}: a quality record must be a JSON object, got {type(d).__name__}")

        def num(key: str, default: float | None = None) -> float:
            v = d.get(key, default)
            if v is None and key == "rms_dbfs":
                return -math.inf
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < (-1e9 if key == "rms_dbfs" else 0):
                raise SpkidError(f"{source}: quality {key!r} must be a finite number, got {v!r}")
            return float(v)

        rate = d.get("resampled_from")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int)):
            raise SpkidError(f"{source}: quality 'resampled_from' must be an integer rate or null, got {rate!r}")
        sure = None if d.get("sure_seconds") is None else num("sure_seconds")  # older records: not measured
        return cls(num("seconds"), num("speech_seconds"), num("clipped", 0.0), num("rms_dbfs", 0.0), rate,
                   bool(d.get("no_speech", False)), bool(d.get("vad", False)), sure)


@dataclass
class Prepared:
    """One utterance ready for the network: windows `(n, length, dims)` float32 (a tuple of them, one per member, for
    a fusion of models: `FusedPreparer`) and its quality; `copies`: the windows of its speed copies (`SpeedCopies`),
    embedded with it and averaged into its embedding."""

    windows: np.ndarray
    quality: Quality
    copies: tuple = ()


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
        q.vad = self.use_vad and rate == _vad_rate()
        if self.use_vad and not q.vad:
            log.debug("VAD skipped: it needs %d Hz, the model takes %d Hz", _vad_rate(), rate)
        if q.vad:
            x, q.no_speech, q.sure_seconds = _voiced(x, rate)
        # no speech: the whole file is embedded (embed's fallback) but none of it counts as speech
        q.speech_seconds = 0.0 if q.no_speech else len(x) / rate
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

    def prepared(self, x: np.ndarray, q: Quality, copies: bool = True) -> Prepared:
        """A voiced signal at the model's rate (`signal`'s, or a window of a long recording) -> its `Prepared`
        (`copies`: with a fusion's speed copies, when it has them and `x` is short enough; `FusedPreparer`)."""
        return Prepared(self.windows(x), q)

    def prepare_signal(self, x: np.ndarray, sr: int, name: str = "signal") -> Prepared:
        y, q = self.signal(x, sr, name)
        try:
            return self.prepared(y, q)
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

    def prepare_file(self, path: str | Clip) -> Prepared:
        """An audio file, an `audio.Clip` in memory (stdin's audio), or a `.npy` feature matrix (checked against the
        model's features)."""
        if isinstance(path, str) and path.lower().endswith(".npy"):
            return self.prepare_features(load_features(path, self.front), path)
        from spkid import audio

        x, sr = audio.load(path)
        return self.prepare_signal(x, sr, str(path))


@dataclass
class FusedPreparer(Preparer):
    """The `Preparer` of a fusion of models (`spkid.models.fusion`): one voiced signal, made by the first member
    (its resampling, level and VAD, so one quality record), then each member's own features and windows:
    `Prepared.windows` is a tuple of one array per member. `front`, `cfg` and `use_vad` are the first member's.
    `copies`: the fusion's `SpeedCopies`, whose windows short utterances carry in `Prepared.copies`."""

    members: list[Preparer] = field(default_factory=list)
    copies: SpeedCopies | None = None

    def __post_init__(self) -> None:
        rates = {m.front.sample_rate for m in self.members}
        if len(rates) != 1:
            raise SpkidError(f"the members of a fusion take audio at different rates {sorted(rates)} Hz")

    def prepared(self, x: np.ndarray, q: Quality, copies: bool = True) -> Prepared:
        def windows(y: np.ndarray, which: Sequence[int] | None = None) -> tuple[np.ndarray | None, ...]:
            return tuple(m.windows(y if i == 0 else m.front.prepare(y)) if which is None or i in which else None
                         for i, m in enumerate(self.members))

        if self.copies is None or not copies:
            return Prepared(windows(x), q)
        made = self.copies.of(x, self.front.sample_rate)
        return Prepared(windows(x), q, tuple(windows(y, self.copies.members) for y in made))

    def prepare_signal(self, x: np.ndarray, sr: int, name: str = "signal") -> Prepared:
        y, q = self.members[0].signal(x, sr, name)
        try:
            return self.prepared(y, q)
        except SpkidError as e:
            raise SpkidError(f"{name}: {e}") from None

    def prepare_features(self, feats: np.ndarray, name: str = "features") -> Prepared:
        raise _features_refused(name)

    def prepare_file(self, path: str | Clip) -> Prepared:
        if isinstance(path, str) and path.lower().endswith(".npy"):
            raise _features_refused(path)
        return super().prepare_file(path)


def _features_refused(name: str) -> SpkidError:
    return SpkidError(f"{name}: a fusion of models computes each member's own features from the audio; give audio "
                      "files, not features")


@dataclass(frozen=True)
class FusionWeights:
    """How a fusion of models (`spkid.models.fusion`) weighs its members for an utterance of a given speech duration:
    `short` up to `short_s` seconds of speech, `long` from `long_s` seconds on, linearly in between (`long` None:
    `short` at every duration). Each is one positive weight per member, summing to 1, so the joint embedding of every
    utterance is a unit vector. The cosine of two utterances is then sum_i sqrt(w_i(a) w_i(b)) cos_i: the members'
    cosines weighted by both sides' durations (a member that is better on long speech counts for more there)."""

    short: tuple[float, ...]
    long: tuple[float, ...] | None = None
    short_s: float = 1.0
    long_s: float = 3.0

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], members: int) -> FusionWeights:
        """From a fusion's model kwargs (`weights`, and optionally `long_weights`, `short_s`, `long_s`)."""
        short, long = kwargs.get("weights"), kwargs.get("long_weights")
        for name, w in (("weights", short), ("long_weights", long)):
            if name == "long_weights" and w is None:
                continue
            ok = isinstance(w, list) and len(w) == members and all(isinstance(x, (int, float)) and x > 0 for x in w)
            if not ok or abs(sum(w) - 1) > 1e-6:
                raise SpkidError(f"fusion: {name} {w} must be {members} positive weights summing to 1")
        short_s, long_s = kwargs.get("short_s", 1.0), kwargs.get("long_s", 3.0)
        if not (isinstance(short_s, (int, float)) and isinstance(long_s, (int, float)) and 0 <= short_s < long_s):
            raise SpkidError(f"fusion: short_s {short_s} and long_s {long_s} must be seconds with short_s < long_s")
        return cls(tuple(map(float, short)), None if long is None else tuple(map(float, long)), float(short_s),
                   float(long_s))

    def at(self, seconds: np.ndarray) -> np.ndarray:
        """`(n, members)` weights of utterances of `seconds` seconds of speech."""
        short = np.array(self.short)
        if self.long is None:
            return np.tile(short, (len(seconds), 1))
        t = np.clip((np.asarray(seconds, np.float64) - self.short_s) / (self.long_s - self.short_s), 0, 1)[:, None]
        return (1 - t) * short + t * np.array(self.long)


@dataclass(frozen=True)
class SpeedCopies:
    """Test-time augmentation of a fusion's short utterances: an utterance with under `below_s` seconds of speech is
    also embedded played at each speed of `factors` (pitch and tempo together; 0.95 and 1.05 are about 0.85
    semitone either way), and the unit member embeddings of the original and its copies are averaged. On a second
    or two of speech an embedding still depends on the exact sounds said; the copies average some of that away
    (the development suite: pooled EER 6.26 -> 5.88 %, README). Longer speech is embedded once, so the cost stays
    on short clips, where the networks are fast; so are the overlapping windows of a long recording
    (`spkid.tracking`). `members`: the members that embed the copies (None: all; a member left out embeds the
    utterance once). Fusion kwargs `speed_copies`: `{"factors": [...], "below_s": S[, "members": [...]]}`."""

    factors: tuple[float, ...]
    below_s: float
    members: tuple[int, ...] | None = None

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> SpeedCopies | None:
        """From a fusion's model kwargs (`speed_copies`; absent or null: None), checked against its member count."""
        raw = kwargs.get("speed_copies")
        if raw is None:
            return None
        get = raw.get if isinstance(raw, dict) else lambda key: None
        factors, below, members = get("factors"), get("below_s"), get("members")
        n = len(kwargs.get("members") or ())
        ok = (isinstance(factors, list) and factors and all(isinstance(f, (int, float)) and 0.5 <= f <= 2 and f != 1
                                                            for f in factors)
              and isinstance(below, (int, float)) and below > 0
              and (members is None or (isinstance(members, list) and members and len(set(members)) == len(members)
                                       and all(type(i) is int and 0 <= i < n for i in members))))
        if not ok:
            raise SpkidError(f"fusion: speed_copies {raw!r} must be {{\"factors\": speeds in [0.5, 2] other than 1, "
                             f"\"below_s\": seconds > 0}}, and optionally \"members\": distinct indices of its {n} members")
        return cls(tuple(float(f) for f in factors), float(below), None if members is None else tuple(members))

    def to_dict(self) -> dict[str, Any]:
        return {"factors": list(self.factors), "below_s": self.below_s,
                **({} if self.members is None else {"members": list(self.members)})}

    def of(self, x: np.ndarray, rate: int) -> list[np.ndarray]:
        """The copies of `x`, the voiced signal of an utterance at `rate` Hz (none from `below_s` seconds on). Its length
        decides, not the speech found: a long file with none is embedded whole, once."""
        return [speed(x, f) for f in self.factors] if len(x) < self.below_s * rate else []


def speed(x: np.ndarray, factor: float) -> np.ndarray:
    """`x` played `factor` times as fast (pitch and tempo together), by band-limited resampling in the frequency
    domain: what is above the new Nyquist frequency is dropped, nothing aliases, and numpy is all it needs."""
    n = len(x)
    m = max(1, round(n / factor))
    spec = np.fft.rfft(x.astype(np.float64))
    out = np.zeros(m // 2 + 1, complex)
    k = min(len(out), len(spec))
    out[:k] = spec[:k]
    return (np.fft.irfft(out, m) * (m / n)).astype(np.float32)


def fusion_centers(kwargs: dict[str, Any], dims: Sequence[int]) -> list[np.ndarray | None]:
    """Per member of a fusion, the vector taken out of its unit utterance embeddings before they are normalised again
    (kwargs `centers`: a list of numbers or null per member; none: no member is centred), checked against the
    members' embedding sizes `dims`. A network trained on
    another domain (SpeechBrain's ECAPA-TDNN on VoxCeleb) puts all of our speech in one region of its space: the
    mean of its embeddings of training speakers' audio (`recipes/soup.py --center`) is that common part, and
    cosines after taking it out weigh what tells speakers apart here (the centring of a cosine or PLDA back end)."""
    members = len(kwargs["members"])
    raw = kwargs.get("centers")
    if raw is None:
        return [None] * members
    ok = isinstance(raw, list) and len(raw) == members and all(
        c is None or (isinstance(c, list) and c and all(isinstance(x, (int, float)) and math.isfinite(x) for x in c))
        for c in raw)
    if not ok:
        raise SpkidError(f"fusion: centers must be one list of numbers (or null) per member, for {members} members")
    for i, (c, dim) in enumerate(zip(raw, dims)):
        if c is not None and len(c) != dim:
            raise SpkidError(f"fusion: the center of member {i} has {len(c)} values, its embeddings {dim}")
    return [None if c is None else np.asarray(c, np.float64) for c in raw]


@dataclass(frozen=True)
class LocalCenter:
    """A fusion member's local centring: each unit utterance embedding loses `weight` times the mean of the `top_n`
    rows of `rows` (unit speaker means of training speakers' embeddings) closest to it, and is normalised again.

    The global centre (`fusion_centers`) takes out what all of our speech shares in a network trained elsewhere;
    what a corpus, a language or a channel shares is left, and it raises the cosines of different speakers heard
    the same way. The mean of an utterance's nearest training speakers estimates that part for each utterance, as
    adaptive score normalisation's cohort does for scores, but inside the embedding, so every cosine of every
    command and gallery search stays a plain cosine (`recipes/soup.py --local-center`)."""

    rows: np.ndarray  # (speakers, dim) unit rows
    top_n: int
    weight: float

    def apply(self, emb: np.ndarray) -> np.ndarray:
        """Unit rows `(n, dim)` -> unit rows, each centred on its own neighbourhood of training speakers."""
        if len(emb) == 0:
            return emb
        s = emb @ self.rows.T
        n = min(self.top_n, len(self.rows))
        near = np.argpartition(s, s.shape[1] - n, axis=1)[:, s.shape[1] - n :]
        out = emb - self.weight * self.rows[near].mean(axis=1)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record in a fusion's kwargs: each row scaled to a largest value of 127 and rounded, as int8 in
        base64 (a list of numbers would be 8 times larger); rows are normalised again when read."""
        import base64

        q = np.round(self.rows / np.abs(self.rows).max(axis=1, keepdims=True) * 127).astype(np.int8)
        return {"top_n": self.top_n, "weight": self.weight, "rows": len(self.rows),
                "int8": base64.b64encode(q.tobytes()).decode("ascii")}


def fusion_local_centers(kwargs: dict[str, Any], dims: Sequence[int]) -> list[LocalCenter | None]:
    """Per member of a fusion, its `LocalCenter` or None (kwargs `local_centers`: one record of
    `LocalCenter.to_dict` or null per member; absent: none), checked against the members' embedding sizes `dims`."""
    import base64
    import binascii

    members = len(kwargs["members"])
    raw = kwargs.get("local_centers")
    if raw is None:
        return [None] * members
    if not (isinstance(raw, list) and len(raw) == members):
        raise SpkidError(f"fusion: local_centers must be one record (or null) per member, for {members} members")
    out: list[LocalCenter | None] = []
    for i, (rec, dim) in enumerate(zip(raw, dims)):
        if rec is None:
            out.append(None)
            continue
        bad = f"fusion: the local centring of member {i}"
        if not isinstance(rec, dict) or not isinstance(rec.get("int8"), str):
            raise SpkidError(f"{bad} must be a record with its rows as base64 int8 (\"int8\")")
        top_n, weight, n = rec.get("top_n"), rec.get("weight"), rec.get("rows")
        if not (isinstance(top_n, int) and top_n >= 1 and isinstance(n, int) and n >= 1
                and isinstance(weight, (int, float)) and 0 < weight <= 1):
            raise SpkidError(f"{bad} needs top_n >= 1, rows >= 1 and 0 < weight <= 1; got {top_n}, {n}, {weight}")
        try:
            rows = np.frombuffer(base64.b64decode(rec["int8"], validate=True), np.int8)
        except (binascii.Error, ValueError) as e:
            raise SpkidError(f"{bad}: its rows are not base64 int8 ({e})") from None
        if rows.size != n * dim:
            raise SpkidError(f"{bad}: {rows.size} values for {n} rows of {dim}")
        rows = rows.reshape(n, dim).astype(np.float64)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        if (norms < 1e-6).any():
            raise SpkidError(f"{bad}: a row of zeros")
        out.append(LocalCenter(rows / norms, top_n, float(weight)))
    return out


def _frames(seconds: float, front: Frontend) -> int:
    return int(round(seconds * front.sample_rate / front.frame_step))


def _vad_rate() -> int:
    from spkid import vad

    return vad.SAMPLE_RATE


def _voiced(x: np.ndarray, rate: int) -> tuple[np.ndarray, bool, float]:
    """The voiced samples of `x` (concatenated), whether none were found (then `x` itself), and the seconds of
    frames where the VAD is sure (probability >= SURE_PROB)."""
    from spkid import vad

    prob = vad.speech_prob(x, rate, vad.load_model(vad.EMBED_MODEL_PATH))
    segs = vad.segments_from_prob(prob, len(x), vad.VadConfig(**EMBED_VAD))
    sure = float(np.count_nonzero(prob >= SURE_PROB)) * vad.FRAME_SHIFT / rate
    if len(segs) == 0:
        return x, True, sure
    if len(segs) == 1:
        return x[segs[0, 0] : segs[0, 1]], False, sure
    return np.concatenate([x[s:e] for s, e in segs]), False, sure

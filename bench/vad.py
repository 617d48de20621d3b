"""Benchmark `spkid vad` against an energy threshold, webrtcvad and silero-vad on held-out speech, noise and music.

Run by hand (one core, about a minute; webrtcvad and silero-vad are used when installed, `pip install -e .[bench]`):

    OMP_NUM_THREADS=1 python bench/vad.py            # add --quick for a smaller set, --json FILE to keep figures

Protocol (also imported by scripts/train_vad.py, which keeps everything held out here out of training):
- Reference labels come from the clean utterance: 10 ms frames within 35 dB of its loud frames (95th percentile
  of frame energy), pauses under 200 ms filled (`reference_labels`).
- Sessions: 1-2 utterances of one held-out speaker with 0.3-2 s of silence before, between and after them.
  Each session is mixed at 20, 10 and 0 dB SNR (speech power over reference-speech frames) with a held-out
  non-speech source: the last 40 % of each real noise clip, or one of the held-out music/effect clips.
- Frames within 150 ms of a reference boundary are not scored (collar). Agreement is frame accuracy on scored
  frames, recall is the share of speech frames detected, false alarm the share of non-speech frames flagged.
- "Non-speech flagged": the share of frames a detector calls speech in the pure held-out noise, music and effects.
- Speed: total audio seconds / total compute seconds over every clip, one thread, audio already in memory.
- Real recordings with human labels, each set and all pooled: the pyannote.audio package's 30 s telephone
  conversation (`REAL_LABELLED`, in tests/data, MIT) and the 14 30 s multi-talker recordings of pyannote.audio's
  own test database (its source distribution's tests/data, MIT; fetched once with pip, skipped when that fails).
  Speech is the union of the labelled turns, 10 ms frames, a 100 ms collar around every labelled boundary is
  not scored; agreement, miss (share of speech frames not found) and false alarm (share of non-speech frames
  flagged), every detector at its default settings. The turns are speaker turns: pauses inside a turn count as
  speech there, so every detector's miss is high on that set; nothing here is trained or tuned on it.
- Music never heard: the first 90 s of each hyperrogue-music track (Debian; scripts/train_vad.py's dev music,
  never trained on), share of frames flagged; skipped when the package is not installed.
- Sound effects never heard: the effects of two Debian games (btanks-data, lincity-ng-data; train_vad.py's dev
  effects, never trained on) at least 0.2 s long that silero-vad flags on at most 2 % of their frames (spoken
  lines are left out; laughs, screams, animals, engines and alarms stay), share of frames flagged.

Held out (never trained on): speakers at every 5th position of the numerically sorted speaker ids (offset 0),
the last 40 % of each noise clip, and the music/effect clips in `HELD_OUT_MUSIC` / `HELD_OUT_EFFECTS`.
`dude_miaowing` is a person making vocal sounds: it is neither training non-speech nor scored as non-speech
(its row is printed for information only).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SR = 16000
HOP = SR // 100  # 10 ms scoring frames

SNRS = (20, 10, 0)
COLLAR_S = 0.15
FLOOR_DB = 35.0
FILL_S = 0.2

BENCH_SPEAKER_EVERY = 5  # speakers at sorted position % 5 == 0 are the benchmark's
NOISE_CLIPS = ("doing_the_dishes.flac", "exercise_bike.flac", "pink_noise.flac", "running_tap.flac", "white_noise.flac")
VOCAL_NOISE = "dude_miaowing.flac"
NOISE_BENCH_FROM = 0.6  # the benchmark uses [0.6, 1.0) of each noise clip; training uses at most [0, 0.5)
HELD_OUT_MUSIC = ("music_credits1-cp.flac", "music_freezingpoint.flac", "music_race1-jt.flac", "music_spunkyrace-ks.flac")
HELD_OUT_EFFECTS = ("effect_rock_slide.flac", "effect_snow_slide.flac")


def load(path: Path) -> np.ndarray:
    """Mono float32 at 16 kHz (the shared data is already 16 kHz mono)."""
    x, sr = sf.read(str(path), dtype="float32")
    assert sr == SR and x.ndim == 1, path
    return x


def all_speakers() -> list[str]:
    root = DATA / "librispeech_tc100"
    return sorted((p.name for p in root.iterdir() if p.is_dir()), key=int)


def bench_speakers() -> list[str]:
    """The held-out speakers: every 5th of the numerically sorted ids."""
    return [s for i, s in enumerate(all_speakers()) if i % BENCH_SPEAKER_EVERY == 0]


def speaker_files(speaker: str) -> list[Path]:
    return sorted((DATA / "librispeech_tc100" / speaker).glob("*.flac"))


def frame_db(x: np.ndarray) -> np.ndarray:
    """Energy (dB) of consecutive 10 ms frames, `(len(x) // 160,)`."""
    n = len(x) // HOP
    fr = x[: n * HOP].astype(np.float64).reshape(n, HOP)
    return 10 * np.log10(np.mean(fr * fr, axis=1) + 1e-12)


def fill_short_gaps(mask: np.ndarray, max_len: int) -> np.ndarray:
    """Set runs of False shorter than `max_len` frames that lie between True runs to True."""
    mask = mask.copy()
    idx = np.flatnonzero(mask)
    if len(idx) < 2:
        return mask
    gaps = np.flatnonzero(np.diff(idx) > 1)
    for g in gaps:
        a, b = idx[g] + 1, idx[g + 1]
        if b - a < max_len:
            mask[a:b] = True
    return mask


def reference_labels(clean: np.ndarray) -> np.ndarray:
    """Bool `(len // 160,)`: 10 ms frames within 35 dB of the loud frames (95th pct), pauses < 200 ms filled."""
    e = frame_db(clean)
    if len(e) == 0:
        return np.zeros(0, bool)
    mask = e > np.percentile(e, 95) - FLOOR_DB
    return fill_short_gaps(mask, int(FILL_S * 100))


def scored(ref: np.ndarray) -> np.ndarray:
    """Bool mask of frames farther than the 150 ms collar from any reference boundary."""
    keep = np.ones(len(ref), bool)
    c = int(round(COLLAR_S * 100))
    for b in np.flatnonzero(np.diff(ref.astype(np.int8))) + 1:
        keep[max(0, b - c) : b + c] = False
    return keep


def speech_power(x: np.ndarray, ref: np.ndarray) -> float:
    """Mean power of `x` over its reference-speech 10 ms frames `ref` (over all of it when there are none)."""
    frames = x[: len(ref) * HOP].reshape(len(ref), HOP)
    return np.mean(frames[ref] ** 2) if ref.any() else np.mean(x**2)


def mix(speech: np.ndarray, ref: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled to `snr_db` (speech power over its reference-speech frames)."""
    p_s = speech_power(speech, ref)
    p_n = np.mean(noise**2) + 1e-12
    return speech + noise * np.sqrt(p_s / p_n / 10 ** (snr_db / 10))


def crop(rng: np.random.Generator, x: np.ndarray, n: int) -> np.ndarray:
    """A random n-sample window of x, looped when x is shorter."""
    if len(x) < n:
        x = np.tile(x, n // len(x) + 1)
    o = rng.integers(0, len(x) - n + 1)
    return x[o : o + n]


def noise_part(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return x[int(lo * len(x)) : int(hi * len(x))]


@dataclass
class Clip:
    name: str
    kind: str  # noise | music | effect
    signal: np.ndarray


def bench_nonspeech() -> list[Clip]:
    """The held-out pure non-speech clips: [60 %, 100 %) of each noise clip, held-out music and effects."""
    clips = [Clip(n, "noise", noise_part(load(DATA / "noise" / n), NOISE_BENCH_FROM, 1.0)) for n in NOISE_CLIPS]
    clips += [Clip(n, "music", load(DATA / "nonspeech" / n)) for n in HELD_OUT_MUSIC]
    clips += [Clip(n, "effect", load(DATA / "nonspeech" / n)) for n in HELD_OUT_EFFECTS]
    return clips


def make_session(rng: np.random.Generator, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Clean utterances with 0.3-2 s silences around them; returns (signal, reference labels)."""
    parts, labels = [], []
    for f in files:
        gap = int(rng.uniform(0.3, 2.0) * 100) * HOP
        parts.append(np.zeros(gap, np.float32))
        labels.append(np.zeros(gap // HOP, bool))
        x = load(f)
        x = x[: len(x) // HOP * HOP]
        parts.append(x)
        labels.append(reference_labels(x))
    gap = int(rng.uniform(0.3, 2.0) * 100) * HOP
    parts.append(np.zeros(gap, np.float32))
    labels.append(np.zeros(gap // HOP, bool))
    return np.concatenate(parts), np.concatenate(labels)


@dataclass
class Mixture:
    snr: int
    kind: str
    source: str
    signal: np.ndarray
    ref: np.ndarray


def bench_mixtures(n_sessions: int = 44, seed: int = 1234, speakers: list[str] | None = None,
                   sources: list[Clip] | None = None) -> list[Mixture]:
    """Held-out speaker sessions, each mixed at every SNR with one held-out non-speech source (cycled).

    scripts/train_vad.py passes its development speakers and sources to build a dev set the same way.
    """
    rng = np.random.default_rng(seed)
    sources = sources if sources is not None else bench_nonspeech()
    speakers = speakers if speakers is not None else bench_speakers()
    out = []
    for i in range(n_sessions):
        spk = speakers[i % len(speakers)]
        files = speaker_files(spk)
        pick = [files[j] for j in sorted(rng.choice(len(files), size=min(2, len(files)), replace=False))]
        speech, ref = make_session(rng, pick)
        src = sources[i % len(sources)]
        noise = crop(rng, src.signal, len(speech))
        gain = 10 ** (rng.uniform(-12, 0) / 20)
        for snr in SNRS:
            y = mix(speech, ref, noise, snr)
            y = y * (gain * 0.9 / max(np.abs(y).max(), 1e-9))
            out.append(Mixture(snr, src.kind, src.name, y.astype(np.float32), ref))
    return out


REAL_COLLAR_S = 0.1
REAL_LABELLED = {  # name: audio, RTTM (speech = the union of its turns); real recordings labelled by people
    "pyannote_sample": (REPO / "tests" / "data" / "pyannote_sample.flac", REPO / "tests" / "data" / "pyannote_sample.rttm"),
}
# pyannote.audio's own test database (its source distribution's tests/data, MIT): 14 real 30 s recordings of
# several talkers, with their speaker turns, fetched once with pip (26 MB) into bench/out/real
PYANNOTE_SDIST = ("pyannote.audio", "4.0.7", "3a903dfb5ca711d134cc2522561c9158b186836f5d62e8a57c46c6648e8a8229")
REAL_CACHE = REPO / "bench" / "out" / "real"


def rttm_turns(text: str) -> dict[str, list[tuple[float, float]]]:
    """RTTM text -> {recording: [(start s, duration s), ...]} of its SPEAKER lines."""
    out: dict[str, list[tuple[float, float]]] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) > 4 and f[0] == "SPEAKER":
            out.setdefault(f[1], []).append((float(f[3]), float(f[4])))
    return out


def turn_labels(turns: list[tuple[float, float]], n_frames: int) -> np.ndarray:
    """Bool 10 ms frames inside any turn (frame i covers [10 i, 10 i + 10) ms)."""
    mask = np.zeros(n_frames, bool)
    for start, dur in turns:
        mask[int(round(start * 100)) : int(round((start + dur) * 100))] = True
    return mask


def rttm_labels(path: Path, n_frames: int) -> np.ndarray:
    """Bool 10 ms frames inside any turn of a one-recording RTTM file."""
    return turn_labels([t for turns in rttm_turns(path.read_text()).values() for t in turns], n_frames)


def real_labelled() -> list[Mixture]:
    """The real recordings with human speech labels (`REAL_LABELLED`), as unmixed `Mixture`s (snr 0, kind real)."""
    out = []
    for name, (wav, rttm) in REAL_LABELLED.items():
        x = load(wav)
        out.append(Mixture(0, "real", name, x, rttm_labels(rttm, len(x) // HOP)))
    return out


def fetch_pyannote_tests(cache: Path = REAL_CACHE) -> Path | None:
    """The folder holding pyannote.audio's test recordings and RTTMs, downloading its source distribution with pip
    the first time (checked against `PYANNOTE_SDIST`'s sha256); None, with the reason on stderr, when that fails."""
    import hashlib
    import subprocess
    import tarfile

    name, version, sha = PYANNOTE_SDIST
    folder = cache / f"pyannote-{version}"
    if (folder / "done").is_file():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
           f"{name}=={version}", "-d", str(cache)]
    got = sorted(cache.glob(f"pyannote_audio-{version}.tar.gz"))
    if not got:
        run = subprocess.run(cmd, capture_output=True, text=True)
        got = sorted(cache.glob(f"pyannote_audio-{version}.tar.gz"))
        if not got:
            print(f"# pyannote.audio test recordings: `{' '.join(cmd)}` failed: "
                  f"{(run.stderr.strip().splitlines() or ['?'])[-1]}; section skipped", file=sys.stderr)
            return None
    if hashlib.sha256(got[0].read_bytes()).hexdigest() != sha:
        print(f"# {got[0]}: sha256 is not {sha}; section skipped", file=sys.stderr)
        return None
    folder.mkdir(exist_ok=True)
    with tarfile.open(got[0]) as tar:
        for m in tar.getmembers():  # only the data files, written under names of our own
            parts = m.name.split("/")
            if m.isfile() and parts[1:3] == ["tests", "data"] and parts[-1].endswith((".wav", ".rttm")):
                (folder / parts[-1]).write_bytes(tar.extractfile(m).read())
    (folder / "done").write_text(sha + "\n")
    return folder


def pyannote_tests() -> list[Mixture]:
    """pyannote.audio's 14 labelled test recordings (`fetch_pyannote_tests`), [] when they cannot be fetched."""
    folder = fetch_pyannote_tests()
    if folder is None:
        return []
    turns: dict[str, list[tuple[float, float]]] = {}
    for rttm in sorted(folder.glob("debug.*.rttm")):
        turns.update(rttm_turns(rttm.read_text(encoding="utf-8")))
    out = []
    for uri in sorted(turns):
        wav = folder / f"{uri}.wav"
        if not wav.is_file():  # trn00's file is named with an n-tilde, to test unicode paths
            wav = folder / f"{uri.replace('n', 'ñ', 1)}.wav"
        x, sr = sf.read(str(wav), dtype="float32")
        assert sr == SR and x.ndim == 1, wav
        out.append(Mixture(0, "real", uri, x, turn_labels(turns[uri], len(x) // HOP)))
    return out


def score_real(run, items: list[Mixture]) -> dict:
    """Agreement, miss (share of speech frames not found) and false alarm (share of non-speech frames flagged) over
    frames farther than `REAL_COLLAR_S` from any labelled boundary, pooled over `items`."""
    c = int(round(REAL_COLLAR_S * 100))
    tot = np.zeros(5)
    for m in items:
        keep = np.ones(len(m.ref), bool)
        for b in np.flatnonzero(np.diff(m.ref.astype(np.int8))) + 1:
            keep[max(0, b - c) : b + c] = False
        r, h = m.ref[keep], run(m.signal)[: len(m.ref)][keep]
        tot += [np.sum(r == h), len(r), np.sum(r & ~h), np.sum(r), np.sum(h & ~r)]
    return {"agreement": tot[0] / tot[1], "miss": tot[2] / max(tot[3], 1), "false_alarm": tot[4] / max(tot[1] - tot[3], 1)}


UNSEEN_MUSIC = Path("/usr/share/hyperrogue/music")  # Debian hyperrogue-music: never trained on (train_vad.py's dev)
UNSEEN_EXCERPT_S = 90.0
# Debian game sound effects never trained on (train_vad.py's dev effects): btanks-data, lincity-ng-data
UNSEEN_EFFECTS = {"/usr/share/games/btanks/data/sounds": "btanks-data",
                  "/usr/share/games/lincity-ng/sounds": "lincity-ng-data"}
AUDIO_SUFFIXES = (".ogg", ".oga", ".opus", ".mp3", ".flac", ".wav")
WORDLESS_SHARE = 0.02  # effects are scored (and trained on) only where silero-vad flags at most this share
MIN_EFFECT_S = 0.2


def audio_files(dirs) -> list[Path]:
    """The audio files under `dirs` (recursively), sorted."""
    return sorted(f for d in map(Path, dirs) for f in d.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES)


def read_excerpt(path: Path, seconds: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Up to `seconds` of an audio file (the start, or a seeded offset with `rng`), mono 16 kHz, peak 0.5."""
    from spkid import audio

    x, sr = audio.read(path)
    x = audio.downmix(x)  # then cut before resampling: a whole track would cost several times more
    n = min(len(x), int(seconds * sr))
    off = int(rng.integers(0, len(x) - n + 1)) if rng is not None else 0
    x = audio.resample(x[off : off + n], sr, SR)
    return (0.5 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def unseen_music() -> list[Clip]:
    """The first 90 s of each track of a game soundtrack no detector here was trained on (empty when the package
    is not installed), mono 16 kHz, peak 0.5."""
    paths = sorted(UNSEEN_MUSIC.glob("*.ogg")) if UNSEEN_MUSIC.is_dir() else []
    return [Clip(p.stem, "unseen", read_excerpt(p, UNSEEN_EXCERPT_S)) for p in paths]


def wordless(clips: list[Clip]) -> list[Clip]:
    """The clips silero-vad (through spkid.vadsilero) flags on at most `WORDLESS_SHARE` of their 10 ms frames:
    game sound effects include spoken lines and shouted words, which are neither trained on as non-speech nor
    scored as such. Laughs, grunts, screams, animals and machines stay: people do not label them speech."""
    from spkid import vadsilero

    return [c for c in clips if np.mean(vadsilero.speech_prob(c.signal) > vadsilero.THRESHOLD) <= WORDLESS_SHARE]


def effect_clips(dirs, seconds: float = UNSEEN_EXCERPT_S, skip: tuple[str, ...] = ()) -> list[Clip]:
    """The wordless (`wordless`) sound effects under `dirs`, at least `MIN_EFFECT_S` long, up to `seconds` each;
    files whose names match a glob of `skip` are left out."""
    paths = [p for p in audio_files(dirs) if not any(p.match(g) for g in skip)]
    clips = [Clip(str(p), "effect", read_excerpt(p, seconds)) for p in paths]
    return wordless([c for c in clips if len(c.signal) >= MIN_EFFECT_S * SR])


def unseen_effects() -> list[Clip]:
    """The wordless sound effects of `UNSEEN_EFFECTS` (empty when a package is missing or silero-vad is not
    installed: the selection needs it)."""
    from spkid import vadsilero
    from spkid.errors import SpkidError

    try:
        vadsilero.model_path()
    except SpkidError:
        return []
    dirs = [d for d in UNSEEN_EFFECTS if Path(d).is_dir()]
    return effect_clips(dirs) if len(dirs) == len(UNSEEN_EFFECTS) else []


def frames_from_segments(segs: np.ndarray, n_frames: int) -> np.ndarray:
    """(K, 2) sample segments -> bool 10 ms frames (a frame is speech when its centre lies in a segment)."""
    mask = np.zeros(n_frames, bool)
    for s, e in np.asarray(segs).reshape(-1, 2):
        a = int(np.ceil((s - HOP / 2) / HOP))
        b = int(np.ceil((e - HOP / 2) / HOP))
        mask[max(a, 0) : max(min(b, n_frames), 0)] = True
    return mask


def method_spkid(model: Path | None = None):
    from spkid import vad

    cfg = vad.VadConfig()
    net = vad.VadModel(model) if model else None
    vad.speech_prob(np.zeros(SR, np.float32), SR, model=net)  # load the weights outside the timing

    def run(x: np.ndarray) -> np.ndarray:
        return frames_from_segments(vad.segments(x, SR, cfg, net), len(x) // HOP)

    return run


ENERGY_DB = 20.0


def method_energy():
    """Max-relative energy threshold: 10 ms frames within 20 dB of the loud ones (95th pct), pauses filled."""

    def run(x: np.ndarray) -> np.ndarray:
        e = frame_db(x)
        return fill_short_gaps(e > np.percentile(e, 95) - ENERGY_DB, int(FILL_S * 100))

    return run


def method_webrtc():
    import webrtcvad

    v = webrtcvad.Vad(3)
    n30 = 3 * HOP

    def run(x: np.ndarray) -> np.ndarray:
        pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
        n = len(x) // HOP
        out = np.zeros(n, bool)
        for k in range(len(pcm) // n30):
            out[3 * k : 3 * k + 3] = v.is_speech(pcm[k * n30 : (k + 1) * n30].tobytes(), SR)
        return out

    return run


def method_silero():
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad

    torch.set_num_threads(1)
    model = load_silero_vad()

    def run(x: np.ndarray) -> np.ndarray:
        ts = get_speech_timestamps(torch.from_numpy(x), model, sampling_rate=SR)
        segs = np.array([[t["start"], t["end"]] for t in ts], np.int64).reshape(-1, 2)
        return frames_from_segments(segs, len(x) // HOP)

    return run


def methods(spkid_model: Path | None = None) -> dict:
    out = {"spkid": lambda: method_spkid(spkid_model), "energy": method_energy, "webrtcvad-3": method_webrtc, "silero-vad": method_silero}
    found = {}
    for name, make in out.items():
        try:
            found[name] = make()
        except ImportError as e:
            print(f"# {name}: not installed ({e}); skipped", file=sys.stderr)
    return found


def score_mixtures(run, mixtures: list[Mixture]) -> tuple[dict, float, float]:
    """Per-SNR agreement/recall/false alarm (and per kind); returns (table, compute s, audio s)."""
    acc: dict = {}
    t_comp = t_audio = 0.0
    for m in mixtures:
        t0 = time.perf_counter()
        hyp = run(m.signal)
        t_comp += time.perf_counter() - t0
        t_audio += len(m.signal) / SR
        k = scored(m.ref)
        r, h = m.ref[k], hyp[: len(m.ref)][k]
        for key in ((m.snr, "all"), (m.snr, m.kind)):
            a = acc.setdefault(key, np.zeros(4))
            a += [np.sum(r == h), len(r), np.sum(h & r), np.sum(r)]
            a2 = acc.setdefault(key + ("fa",), np.zeros(2))
            a2 += [np.sum(h & ~r), np.sum(~r)]
    table = {}
    for key, a in acc.items():
        if len(key) == 2:
            fa = acc[key + ("fa",)]
            table[key] = {"agreement": a[0] / a[1], "recall": a[2] / max(a[3], 1), "false_alarm": fa[0] / max(fa[1], 1)}
    return table, t_comp, t_audio


def score_nonspeech(run, clips: list[Clip]) -> tuple[dict, float, float]:
    flagged = {}
    t_comp = t_audio = 0.0
    for c in clips:
        t0 = time.perf_counter()
        hyp = run(c.signal)
        t_comp += time.perf_counter() - t0
        t_audio += len(c.signal) / SR
        flagged[c.name] = (c.kind, float(np.mean(hyp)) if len(hyp) else 0.0)
    return flagged, t_comp, t_audio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="11 sessions instead of 44")
    ap.add_argument("--only", nargs="*", help="methods to run (default: all installed)")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--spkid-model", type=Path, help="spkid's VAD network (.npz from scripts/train_vad.py; "
                                                       "default: the shipped one)")
    args = ap.parse_args()
    if not (DATA / "librispeech_tc100").is_dir():
        sys.exit(f"bench/vad.py: shared data not found at {DATA}")
    mixtures = bench_mixtures(11 if args.quick else 44)
    clips = bench_nonspeech()
    vocal = [Clip(VOCAL_NOISE, "vocal", noise_part(load(DATA / "noise" / VOCAL_NOISE), NOISE_BENCH_FROM, 1.0))]
    ms = methods(args.spkid_model)
    if args.only:
        ms = {k: v for k, v in ms.items() if k in args.only}
    n_speech = sum(len(m.signal) for m in mixtures) / SR / len(SNRS)
    print(f"# {len(mixtures) // len(SNRS)} sessions ({n_speech:.0f} s) x SNR {SNRS} dB; "
          f"{len(clips)} held-out non-speech clips ({sum(len(c.signal) for c in clips) / SR:.0f} s)")
    real = {"pyannote sample": real_labelled(), "pyannote tests": pyannote_tests()}
    real = {k: v for k, v in real.items() if v}
    real["all real"] = [m for v in real.values() for m in v]
    unseen = unseen_music()
    effects = unseen_effects()
    results = {}
    for name, run in ms.items():
        table, tc1, ta1 = score_mixtures(run, mixtures)
        flagged, tc2, ta2 = score_nonspeech(run, clips + vocal)
        results[name] = {"table": table, "flagged": flagged, "speed": (ta1 + ta2) / max(tc1 + tc2, 1e-9),
                         "real": {k: score_real(run, v) for k, v in real.items()},
                         "unseen": score_nonspeech(run, unseen)[0], "effects": score_nonspeech(run, effects)[0]}
    print(f"\n## real recordings, human labels (10 ms frames, collar {REAL_COLLAR_S * 1000:.0f} ms): "
          + "; ".join(f"{k} {len(v)} x {sum(len(m.signal) for m in v) / SR:.0f} s" for k, v in real.items()))
    print(f"{'set':<16} {'method':<12} {'agreement':>10} {'miss':>8} {'false alarm':>12}")
    for k in real:
        for name, r in results.items():
            q = r["real"][k]
            print(f"{k:<16} {name:<12} {q['agreement']:>10.3f} {q['miss'] * 100:>7.1f}% {q['false_alarm'] * 100:>11.1f}%")
    print("\n## agreement / recall / false alarm on speech+noise mixtures (collar 150 ms)")
    print(f"{'method':<12} " + " ".join(f"{f'{s} dB agr/rec/fa':>20}" for s in SNRS) + f" {'x real time':>12}")
    for name, r in results.items():
        cells = [r["table"][(s, "all")] for s in SNRS]
        print(f"{name:<12} " + " ".join(f"{c['agreement']:>8.3f}/{c['recall']:.3f}/{c['false_alarm']:.3f}" for c in cells)
              + f" {r['speed']:>12.0f}")
    print("\n## agreement by background kind (20 / 10 / 0 dB)")
    for name, r in results.items():
        row = []
        for kind in ("noise", "music", "effect"):
            row.append(f"{kind} " + "/".join(f"{r['table'][(s, kind)]['agreement']:.3f}" for s in SNRS
                                             if (s, kind) in r["table"]))
        print(f"{name:<12} " + "   ".join(row))
    print("\n## non-speech flagged as speech (share of frames, held-out clips)")
    names = [c.name for c in clips + vocal]
    print(f"{'clip':<28} " + " ".join(f"{n:>12}" for n in results))
    for cname in names:
        kind = next(r["flagged"][cname][0] for r in results.values())
        print(f"{cname[:-5]:<28} " + " ".join(f"{r['flagged'][cname][1] * 100:>11.1f}%" for r in results.values())
              + ("   (vocal sounds; not scored)" if kind == "vocal" else ""))
    for kind in ("noise", "music", "effect"):
        vals = {n: [v for k, v in r["flagged"].values() if k == kind] for n, r in results.items()}
        print(f"{'max ' + kind:<28} " + " ".join(f"{max(v) * 100:>11.1f}%" for v in vals.values()))
    for key, title, missing in (
        ("unseen", f"music never heard ({len(unseen)} tracks of {UNSEEN_MUSIC}, first {UNSEEN_EXCERPT_S:.0f} s each)",
         f"{UNSEEN_MUSIC} not found (apt-get install hyperrogue-music)"),
        ("effects", f"sound effects never heard ({len(effects)} wordless clips of {', '.join(UNSEEN_EFFECTS.values())}; "
                    f"selected by silero-vad, so its own figure is at most {WORDLESS_SHARE:.0%} a clip)",
         f"needs apt-get install {' '.join(UNSEEN_EFFECTS.values())} and silero-vad"),
    ):
        if not any(r[key] for r in results.values()):
            print(f"\n# {title.split(' (')[0]}: {missing}; skipped")
            continue
        print(f"\n## {title}: share of frames flagged, mean / worst / clips over 5 %")
        for name, r in results.items():
            v = np.array([f for _, f in r[key].values()])
            print(f"{name:<12} {v.mean() * 100:>6.1f}% {v.max() * 100:>6.1f}% {int(np.sum(v > 0.05)):>4}/{len(v)}")
    if args.json:
        dump = {n: {"agreement": {str(s): r["table"][(s, "all")] for s in SNRS},
                    "flagged": {k: v[1] for k, v in r["flagged"].items()}, "speed_x_rt": r["speed"], "real": r["real"],
                    "unseen_music": {k: v[1] for k, v in r["unseen"].items()},
                    "unseen_effects": {k: v[1] for k, v in r["effects"].items()}}
                for n, r in results.items()}
        Path(args.json).write_text(json.dumps(dump, indent=1))


if __name__ == "__main__":
    main()

"""Train the VAD networks shipped together as spkid/data/vad.npz (torch here only; inference in spkid/vad.py is numpy).

    apt-get install wesnoth-1.16-music warzone2100-music singularity-music asc-music planetblupi-music-ogg \
                    hyperrogue-music                       # Debian: 10 h of game music (GPL, no singing)
    apt-get install wesnoth-1.16-data supertux-data colobot-common-sounds extremetuxracer-data frozen-bubble-data \
                    chromium-bsu-data pingus-data sound-theme-freedesktop btanks-data lincity-ng-data  # sound effects
    pip install silero-vad --no-deps             # the teacher's weights, run through onnxruntime (no torch)
    # seeded; ~8 min a network on 2 cores (2 data processes, 1 torch thread); the shipped model is their mean:
    python scripts/train_vad.py -o /tmp/vad_words.npz                    # no sound events
    python scripts/train_vad.py --event-share 0.5 -o /tmp/vad_events0.npz
    python scripts/train_vad.py --event-share 0.5 --seed 1 -o /tmp/vad_events1.npz
    python scripts/train_vad.py --combine /tmp/vad_words.npz /tmp/vad_events0.npz /tmp/vad_events1.npz
    python scripts/train_vad.py --examples 400 --epochs 1 --extra-music --dev-music -o /tmp/vad.npz  # smoke run
    python scripts/train_vad.py --teacher none --no-extra-speech --no-narrowband --examples 12000 \
        --nonspeech-weight 1 -o spkid/data/vad_embed.npz   # the previous network, which `embed` keeps using

Data split (see bench/vad.py for the benchmark side; nothing the benchmark scores is trained on):
- speech: librispeech_tc100 speakers NOT in the benchmark (the benchmark takes every 5th sorted speaker id);
  of the rest, every 10th (sorted position % 10 == 3) is a development set used only for the printed dev scores.
- real noise: the first 50 % of each noise clip for training, 50-60 % for dev (the benchmark uses 60-100 %);
  dude_miaowing (a person making vocal sounds) is not used at all.
- music and effects: the clips not in bench.HELD_OUT_MUSIC / HELD_OUT_EFFECTS; first 80 % for training, the
  last 20 % for dev. The held-out clips are never read here.
- synthetic non-speech for variety: harmonic "music" (melodies, synth leads with glide and vibrato, chords,
  sustained detuned pads, string ensembles with vibrato, bass, slow and fast arpeggios, drums; any register,
  the voice's 80-400 Hz included; sparse solo lines, rests and staccato that switch on and off at syllable
  rate; reverberation up to 2.5 s), tones, sweeps, click trains, coloured and amplitude-modulated noise; the
  real music is also played at other speeds (0.7-1.4), reversed and reverberated, and any background may be
  mixed with a second one. Speech gets speed (0.9-1.1), gain, band-limiting and synthetic reverberation.
- more real music (`--extra-music`, by default the Debian game-music packages above but hyperrogue's): one
  excerpt of up to 90 s a track, 100 tracks. silero-vad flags at most 1.7 % of any excerpt, so none holds
  singing. hyperrogue's 17 tracks (`--dev-music`) are never trained on and are scored in the dev report:
  music by other composers, never heard, to choose settings by without touching the benchmark.
- `--unseen-music CLIP ...` keeps whole training-side music clips out of training and scores them in the dev
  report: the check of generalisation to music never heard (the dev ranges of trained clips are too easy).
- sound events, off by default (`--event-share`, with the teacher): that share of the backgrounds are sound
  effects (`--extra-effects`, the Debian game and desktop effects above but btanks' and lincity-ng's) at random
  times over a faint bed (`event_track`), and as many speech examples are pieces of speech alone (`sparse`).
  Effects in which silero-vad hears words (spoken lines, `bench.wordless`) and wesnoth's units' cries
  (`--skip-effects`) are left out. Networks trained so flag fewer of the never-heard effects; the network
  trained without them hears music and words alone best; `--combine` puts them together (the README's VAD
  section has the trials).
- the dev report also scores btanks' and lincity-ng's effects (`--dev-effects`, bench/vad.py's effects never
  heard, never trained on) and, with the teacher, words alone (`isolated_speech`).
- speech also from ../shared/data/extra_speakers (a quarter of the utterances; other languages, children, command
  words; none of it is benchmarked), and 15 % of the examples passed through 8 kHz (telephone audio), their
  features computed as spkid.vad computes them, with the empty band filled.
Labels come from the dry speech with the benchmark's reference rule (35 dB below loud frames, pauses < 200 ms
filled), times silero-vad's probability on the same dry speech (`--teacher silero`, the default): silero-vad (MIT)
is distilled where people and energy differ, pauses between phrases, breaths, the edges of words. Non-speech
examples keep target 0. Two things real recordings hold and people do not label as speech (with the teacher):
- voices in the background: a fifth of the speech examples get 1-3 other talkers, each 18-40 dB below the
  foreground speech (`--babble-share`); they are not speech in the targets;
- speech too faint to count: 15 % of the examples are played at -85 to -45 dBFS instead of -45 to -12
  (`--quiet-share`), their speech targets times silero-vad's probability on what is played, noise and all.
Neither is measured on anything trained here: the real labelled recordings of bench/vad.py are the check.
Off by default, `--turn-share` makes that share of the speech examples meetings of talkers at different levels:
each utterance is also played 0 to `--turn-db` dB quieter, all of it speech in the targets (the README's VAD
section has the trials). `--distill NPZ` moves the targets a `--distill-weight` of the way to a model's
probabilities on each example (the shipped networks' mean, for one network to learn what three agree on, to run in
a third of their time; the README's VAD section has the trial: not shipped).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import importlib.util
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve, lfilter, resample_poly

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "spkid" / "data" / "vad.npz"
_spec = importlib.util.spec_from_file_location("bench_vad", REPO / "bench" / "vad.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_vad"] = bench
_spec.loader.exec_module(bench)

from spkid.vadfront import Frontend  # noqa: E402

SR = bench.SR
HOP = bench.HOP
EXAMPLE_S = 6.0
NARROWBAND_SHARE = 0.15  # of examples, with --teacher silero: passed through 8 kHz
EXTRA_SPEECH_SHARE = 0.25  # of utterances, from extra_speakers when --extra-speech
TRAIN_NOISE = (0.0, 0.5)
DEV_NOISE = (0.5, 0.6)
TRAIN_CLIP = (0.0, 0.8)
DEV_CLIP = (0.8, 1.0)
DILATIONS = (1, 2, 4, 8, 16, 32)


def split_speakers() -> tuple[list[str], list[str]]:
    """(train, dev) speakers: never the benchmark's."""
    held = set(bench.bench_speakers())
    rest = [s for s in bench.all_speakers() if s not in held]
    ordered = bench.all_speakers()
    dev = [s for s in rest if ordered.index(s) % 10 == 3]
    return [s for s in rest if s not in dev], dev


def real_nonspeech(part: str, unseen: tuple[str, ...] = ()) -> list[bench.Clip]:
    """Training ('train') or dev ('dev') ranges of the real noise, music and effect clips not held out.

    Clips named in `unseen` are left out of both (see `--unseen-music`)."""
    nlo, nhi = TRAIN_NOISE if part == "train" else DEV_NOISE
    clo, chi = TRAIN_CLIP if part == "train" else DEV_CLIP
    out = [bench.Clip(n, "noise", bench.noise_part(bench.load(bench.DATA / "noise" / n), nlo, nhi))
           for n in bench.NOISE_CLIPS]
    for path in sorted((bench.DATA / "nonspeech").glob("*.flac")):
        if path.name in bench.HELD_OUT_MUSIC or path.name in bench.HELD_OUT_EFFECTS or path.name in unseen:
            continue
        kind = "music" if path.name.startswith("music") else "effect"
        out.append(bench.Clip(path.name, kind, bench.noise_part(bench.load(path), clo, chi)))
    return out


def midi_hz(m: np.ndarray | float) -> np.ndarray:
    return 440.0 * 2 ** ((np.asarray(m) - 69) / 12)


def instrument(rng: np.random.Generator) -> dict:
    """A random timbre: harmonic amplitudes, envelope, vibrato, detune, FM, glide; one per voice of a piece."""
    kind = rng.choice(["additive", "saw", "square", "fm", "pluck"])
    k = np.arange(1, 41)
    if kind == "saw":
        amp = 1.0 / k
    elif kind == "square":
        amp = np.where(k % 2 == 1, 1.0 / k, 0.0)
    else:
        amp = 1.0 / k ** rng.uniform(0.5, 2.5)
        if rng.random() < 0.3:
            amp = amp * (1 + 3 * np.exp(-0.5 * ((k - rng.uniform(2, 10)) / rng.uniform(1, 3)) ** 2))  # a resonance
    return {
        "kind": kind,
        "amp": amp * np.exp(-k / rng.uniform(4, 40)),  # brightness
        "attack": rng.uniform(0.002, 0.1),
        "decay": rng.uniform(2, 12) if kind == "pluck" else (rng.uniform(0.3, 6) if rng.random() < 0.5 else 0.0),
        "vibrato": (rng.uniform(0.003, 0.03), rng.uniform(4, 7)) if rng.random() < 0.35 else None,
        "detune": rng.uniform(0.002, 0.01) if rng.random() < 0.3 else 0.0,
        "fm": (rng.choice([1.0, 2.0, 3.5, 0.5]), rng.uniform(0.5, 4)) if kind == "fm" else None,
        "glide": rng.uniform(0.02, 0.12) if rng.random() < 0.25 else 0.0,
    }


def synth_note(rng: np.random.Generator, inst: dict, f0: float, n: int, prev_f0: float | None = None) -> np.ndarray:
    """One note of `inst` at f0 Hz, n samples; glides from prev_f0 when the instrument has portamento.

    A one-period wavetable read at the note's phase keeps this cheap.
    """
    t = np.arange(n) / SR
    f = np.full(n, f0)
    if inst["glide"] and prev_f0:
        g = max(1, int(inst["glide"] * SR))
        f[: min(g, n)] = np.geomspace(prev_f0, f0, g)[: min(g, n)]
    if inst["vibrato"]:
        depth, rate = inst["vibrato"]
        f = f * (1 + depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.3)))
    size = 2048
    k = np.arange(1, int(max(1, min(40, 7000 // f0))) + 1)
    theta = 2 * np.pi * np.arange(size) / size
    table = (inst["amp"][: len(k), None] * np.sin(k[:, None] * theta + rng.uniform(0, 6.3, size=(len(k), 1)))).sum(axis=0)
    pos = np.cumsum(f) * (size / SR)
    if inst["fm"]:
        ratio, index = inst["fm"]
        x = np.sin(2 * np.pi * pos / size + index * np.exp(-t * 3) * np.sin(2 * np.pi * ratio * pos / size))
    else:
        x = table[pos.astype(np.int64) % size]
    if inst["detune"]:
        x = x + table[(pos * (1 + inst["detune"])).astype(np.int64) % size]
    env = np.minimum(1.0, t / inst["attack"])
    if inst["decay"]:
        env = env * np.exp(-t * inst["decay"])
    release = min(n, int(0.02 * SR))
    env[n - release :] *= np.linspace(1, 0, release)
    return x * env


ROLES = {  # octave offset (semitones), note lengths (beats), chord (semitones above the note)
    "melody": (12, [0.25, 0.5, 0.5, 1, 1, 2], None),
    "lead": (12, [0.5, 1, 1, 2, 3], None),  # synth lead: glide and vibrato, the most speech-like contour
    "bass": (-12, [0.5, 1, 2], None),
    "chords": (12, [2, 4], "triad"),
    "pad": (0, [4, 8], "triad"),  # sustained, slow attack, detuned
    "strings": (12, [1, 2, 4], "triad"),  # ensemble of detuned voices with vibrato
    "arpeggio": (24, [0.25], None),
    "fast_arpeggio": (24, [0.125], None),
}


def role_instrument(rng: np.random.Generator, role: str) -> dict:
    inst = instrument(rng)
    if role == "lead":
        inst.update(kind=rng.choice(["saw", "square", "additive"]), glide=rng.uniform(0.03, 0.2),
                    vibrato=(rng.uniform(0.005, 0.03), rng.uniform(4, 7)), decay=0.0)
    elif role in ("pad", "strings"):
        inst.update(attack=rng.uniform(0.1, 0.8), decay=0.0, detune=rng.uniform(0.003, 0.012))
        if role == "strings":
            inst.update(vibrato=(rng.uniform(0.003, 0.012), rng.uniform(4.5, 6.5)), fm=None,
                        kind=rng.choice(["saw", "additive"]))
    return inst


def synth_music(rng: np.random.Generator, n: int) -> np.ndarray:
    """Harmonic music: melody/lead, chords, pads, strings, bass and arpeggios on a scale with their own
    instruments, drums, at a random tempo; sometimes reverberant."""
    beat = 60.0 / rng.uniform(60, 180)
    root = rng.integers(40, 58)
    scale = np.array([0, 2, 4, 5, 7, 9, 11] if rng.random() < 0.6 else [0, 2, 3, 5, 7, 8, 10])
    out = np.zeros(n)
    extra = ["chords", "bass", "melody", "arpeggio", "pad", "strings", "fast_arpeggio", "lead"]
    if rng.random() < 0.25:  # sparse: one voice alone (a bass line, a solo instrument), perhaps with drums
        roles = [rng.choice(["bass", "melody", "lead", "strings", "arpeggio"])]
    else:
        roles = [rng.choice(["melody", "melody", "lead", "strings", "pad"])]
        roles += list(rng.choice(extra, size=rng.integers(0, 4)))
    for role in roles:
        inst = role_instrument(rng, role)
        octave, lengths, chordtype = ROLES[role]
        if role in ("melody", "lead"):  # any register, the voice's 80-400 Hz included
            octave = 12 * int(rng.integers(-1, 3))
        # rests and staccato give on/off patterns at syllable rate, as speech has
        rest = rng.uniform(0.05, 0.4) if rng.random() < 0.5 else 0.1
        gate = rng.uniform(0.3, 0.9) if rng.random() < 0.3 else 1.0
        pos, prev, degree = 0, None, int(rng.integers(0, 7))
        voice = np.zeros(n)
        while pos < n:
            dur = min(int(beat * rng.choice(lengths) * SR), n - pos)
            if dur <= 32:
                break
            if rng.random() >= rest:
                step = rng.integers(-2, 3) if "arpeggio" not in role else rng.choice([-4, -2, 2, 4])
                degree = int(np.clip(degree + step, 0, 13))
                m = root + octave + scale[degree % 7] + 12 * (degree // 7)
                chord = [m, m + 3 + rng.integers(0, 2), m + 7] if chordtype else [m]
                copies = 3 if role == "strings" else 1
                for mm in chord:
                    for c in range(copies):
                        f0 = float(midi_hz(mm)) * (1 + (c - 1) * rng.uniform(0.002, 0.008))
                        ln = max(33, int(dur * gate))
                        voice[pos : pos + ln] += synth_note(rng, inst, f0, ln, prev)
                prev = float(midi_hz(chord[0]))
            pos += dur
        if role in ("pad", "strings") and rng.random() < 0.5:  # slow swell or tremolo
            t = np.arange(n) / SR
            voice *= 1 + rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * rng.uniform(0.2, 6) * t + rng.uniform(0, 6.3))
        out += voice / (np.abs(voice).max() + 1e-9) * rng.uniform(0.3, 1)
    if rng.random() < 0.6:
        out += synth_drums(rng, n, beat) * rng.uniform(0.2, 1.0)
    if rng.random() < 0.5:
        out = reverb(rng, out)
    return out


def synth_drums(rng: np.random.Generator, n: int, beat: float) -> np.ndarray:
    out = np.zeros(n)
    step = int(beat * SR / 2)
    pattern = rng.integers(0, 4, size=8)  # 0 rest, 1 kick, 2 snare, 3 hat
    for i, pos in enumerate(range(0, n, step)):
        kind = pattern[i % 8]
        ln = min(int(0.25 * SR), n - pos)
        t = np.arange(ln) / SR
        if kind == 1:
            f = 50 + 100 * np.exp(-t * 30)
            hit = np.sin(2 * np.pi * np.cumsum(f) / SR) * np.exp(-t * 12)
        elif kind == 2:
            hit = lfilter([1, -0.5], [1], rng.standard_normal(ln)) * np.exp(-t * 20) * 0.6
        elif kind == 3:
            hit = np.diff(rng.standard_normal(ln + 1)) * np.exp(-t * 60) * 0.3
        else:
            continue
        out[pos : pos + ln] += hit
    return out


def coloured_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Noise with a random spectral tilt (white to brown), optionally amplitude-modulated at 0.5-12 Hz."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1 / SR), 20.0)
    spec *= f ** (-rng.uniform(0, 1.0))
    x = np.fft.irfft(spec, n)
    if rng.random() < 0.5:
        t = np.arange(n) / SR
        depth = rng.uniform(0.3, 1.0)
        x *= 1 - depth / 2 + depth / 2 * np.sin(2 * np.pi * rng.uniform(0.5, 12) * t + rng.uniform(0, 6.3))
    return x


def synth_tones(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / SR
    kind = rng.integers(0, 3)
    if kind == 0:  # steady tones / beeps
        x = sum(np.sin(2 * np.pi * rng.uniform(100, 4000) * t + rng.uniform(0, 6.3)) for _ in range(rng.integers(1, 4)))
        if rng.random() < 0.5:
            x = x * (np.sin(2 * np.pi * rng.uniform(0.5, 6) * t) > 0)
    elif kind == 1:  # sweeps
        f = np.exp(np.interp(t, [0, t[-1]], np.log(rng.uniform(80, 6000, size=2))))
        if rng.random() < 0.5:
            f = rng.uniform(200, 3000) * (1 + rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * rng.uniform(0.2, 3) * t))
        x = np.sin(2 * np.pi * np.cumsum(f) / SR)
    else:  # click trains
        x = np.zeros(n)
        rate = rng.uniform(1, 40)
        idx = np.cumsum(rng.exponential(SR / rate, size=int(rate * n / SR) + 2)).astype(int)
        x[idx[idx < n]] = rng.standard_normal(np.sum(idx < n))
        x = lfilter([1], [1, -rng.uniform(0, 0.97)], x)
    return x


def vary_speed(rng: np.random.Generator, x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Change speed and pitch together by a factor in [lo, hi] (linear interpolation: cheap, good enough here)."""
    f = rng.uniform(lo, hi)
    pos = np.arange(0, len(x) - 1, f)
    return np.interp(pos, np.arange(len(x)), x)


def band_limit(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Random first-order high-pass and/or low-pass (telephone, cheap microphones)."""
    if rng.random() < 0.5:
        a = np.exp(-2 * np.pi * rng.uniform(50, 400) / SR)
        x = lfilter([1, -1], [1, -a], x)
    if rng.random() < 0.5:
        a = np.exp(-2 * np.pi * rng.uniform(2000, 7000) / SR)
        x = lfilter([1 - a], [1, -a], x)
    return x


def reverb(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    rt60 = rng.uniform(0.15, 0.9) if rng.random() < 0.8 else rng.uniform(0.9, 2.5)
    ln = int(rt60 * SR)
    t = np.arange(ln) / SR
    rir = rng.standard_normal(ln) * np.exp(-6.9 * t / rt60)
    rir[0] = rng.uniform(1, 5) * np.abs(rir).max()
    y = fftconvolve(x, rir)[: len(x)]
    return y * (np.std(x) / (np.std(y) + 1e-9))


def unseen_clips(names: tuple[str, ...]) -> list[bench.Clip]:
    """Whole training-side music clips kept out of training by `--unseen-music`, scored in the dev report."""
    held = set(bench.HELD_OUT_MUSIC) | set(bench.HELD_OUT_EFFECTS)
    for name in names:
        if name in held or not (bench.DATA / "nonspeech" / name).is_file():
            raise SystemExit(f"train_vad.py: --unseen-music {name}: not a training-side clip")
    return [bench.Clip(name, "unseen", bench.load(bench.DATA / "nonspeech" / name)) for name in names]


DEBIAN_MUSIC = {  # folder: Debian package
    "/usr/share/games/wesnoth/1.16/data/core/music": "wesnoth-1.16-music",
    "/usr/share/games/warzone2100/music": "warzone2100-music",
    "/usr/share/games/singularity/music": "singularity-music",
    "/usr/share/games/asc/music": "asc-music",
    "/usr/share/planetblupi/music": "planetblupi-music-ogg",
}
DEBIAN_DEV_MUSIC = {"/usr/share/hyperrogue/music": "hyperrogue-music"}
DEBIAN_EFFECTS = {  # folder: Debian package (game and desktop sound effects, GPL or CC BY-SA)
    "/usr/share/games/wesnoth/1.16/data/core/sounds": "wesnoth-1.16-data",
    "/usr/share/games/supertux2/sounds": "supertux-data",
    "/usr/share/games/colobot/sounds": "colobot-common-sounds",
    "/usr/share/games/etr/sounds": "extremetuxracer-data",
    "/usr/share/games/frozen-bubble/snd": "frozen-bubble-data",
    "/usr/share/games/chromium-bsu/wav": "chromium-bsu-data",
    "/usr/share/games/pingus/data/sounds": "pingus-data",
    "/usr/share/sounds/freedesktop/stereo": "sound-theme-freedesktop",
}
EXCERPT_S = 90.0
EFFECT_S = 30.0  # at most this much of each training effect (the start)
VOICE_EFFECTS = ("*-hit*", "*-die*")  # wesnoth's units' cries when hit and dying: grunts and shouts
EVENT_GAP_S = (0.1, 2.5)  # silence between the sound events of an `event_track`
SPARSE_S = (0.3, 1.0)  # pieces of speech alone (`speech_session(sparse=True)`), as long as most sound events
SPARSE_GAP_S = (0.3, 2.5)  # and the silence between them
# Loaded by main() before the data workers fork, so they share them instead of receiving a pickled copy.
EXTRA_MUSIC: list[np.ndarray] = []
EXTRA_EFFECTS: list[np.ndarray] = []


def found_audio(dirs: list[Path], what: str = "music") -> list[Path]:
    """The audio files under `dirs` (recursively), sorted; SystemExit naming the package of a missing folder."""
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        known = {**DEBIAN_MUSIC, **DEBIAN_DEV_MUSIC, **DEBIAN_EFFECTS, **bench.UNSEEN_EFFECTS}
        packages = [known[d] for d in missing if d in known]
        hint = f" (apt-get install {' '.join(packages)})" if packages else ""
        raise SystemExit(f"train_vad.py: {what} folder not found: {' '.join(missing)}{hint}")
    files = bench.audio_files(dirs)
    if dirs and not files:
        raise SystemExit(f"train_vad.py: no audio files under {' '.join(map(str, dirs))}")
    return files


def load_music(files: list[Path], seed: int) -> list[np.ndarray]:
    """One excerpt of up to 90 s (at a seeded offset) of each file, mono 16 kHz, peak 0.5."""
    rng = np.random.default_rng(seed)
    return [bench.read_excerpt(f, EXCERPT_S, rng) for f in files]


LEVEL_DB = (-45.0, -12.0)  # dBFS RMS of the examples
QUIET_DB = (-85.0, -45.0)  # dBFS RMS of the `--quiet-share` examples
BABBLE_DB = (18.0, 40.0)  # dB from the foreground speech down to each background talker's (`--babble-share`)
EXTRA_SPEECH = bench.DATA / "extra_speakers"  # other languages, children, command words: training only
TEACHER_SLACK = 2  # 10 ms frames: silero's probability is spread this far each way (its 32 ms frames lag)


def extra_speech_files() -> list[Path]:
    """Every clip of ../shared/data/extra_speakers (none of it is benchmarked)."""
    return sorted(EXTRA_SPEECH.glob("*/*/*.flac"))


def teacher_labels(dry: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Soft 10 ms targets for dry speech: the energy labels `lab` (pauses under 200 ms filled) times silero-vad's
    probability on the dry speech (spread over `TEACHER_SLACK` frames), so pauses that silero hears as pauses,
    breaths and lip noise are not speech, and nothing quieter than the energy floor is."""
    return lab.astype(np.float32) * teacher_prob(dry, len(lab))


def teacher_prob(x: np.ndarray, frames: int) -> np.ndarray:
    """silero-vad's probability per 10 ms frame of `x` (the first `frames`), each frame's the highest within
    `TEACHER_SLACK` frames."""
    from spkid import vadsilero

    p = vadsilero.speech_prob(x.astype(np.float32))[:frames]
    pad = np.pad(p, TEACHER_SLACK, mode="edge")
    return np.max(np.stack([pad[k : k + len(p)] for k in range(2 * TEACHER_SLACK + 1)]), axis=0)


def babble(rng: np.random.Generator, pools: Pools, x: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """`x` with 1-3 other talkers (their own sessions, pauses included) behind it, their speech `BABBLE_DB` below
    the foreground's: voices in the background, which people do not label as speech (nor does the target)."""
    fg = bench.speech_power(x, lab)
    for _ in range(rng.integers(1, 4)):
        y, ylab = speech_session(rng, pools, len(x))
        x = x + y * np.sqrt(fg / (bench.speech_power(y, ylab) + 1e-12) / 10 ** (rng.uniform(*BABBLE_DB) / 10))
    return x


class Pools:
    def __init__(self, speakers: list[str], part: str, unseen: tuple[str, ...] = (),
                 extra_speech: bool = False, event_share: float = 0.0, turn_share: float = 0.0,
                 turn_db: float = 0.0) -> None:
        self.speech = [bench.load(f) for s in speakers for f in bench.speaker_files(s)]
        self.extra = [bench.load(f) for f in extra_speech_files()] if extra_speech and part == "train" else []
        clips = real_nonspeech(part, unseen)
        self.noise = [c.signal for c in clips if c.kind == "noise"]
        self.music = [c.signal for c in clips if c.kind == "music"] + (EXTRA_MUSIC if part == "train" else [])
        self.effect = [c.signal for c in clips if c.kind == "effect"]
        self.events = EXTRA_EFFECTS if part == "train" and event_share > 0 else []
        self.event_share = event_share
        self.turn_share, self.turn_db = turn_share, turn_db


def event_track(rng: np.random.Generator, pools: Pools, n: int) -> np.ndarray:
    """n samples of sound events (`--extra-effects`) that come and go, `EVENT_GAP_S` apart, each at its own level
    and speed, over a faint bed of noise 15-40 dB below them: the laughs, knocks, animals, engines and alarms of
    real recordings, which people do not label speech."""
    x = np.zeros(n)
    t = int(rng.uniform(0.0, 1.0) * SR)
    while t < n:
        e = pools.events[rng.integers(len(pools.events))]
        if rng.random() < 0.5:
            e = vary_speed(rng, e, 0.8, 1.25)
        e = e[: n - t] * 10 ** (rng.uniform(-10, 10) / 20)
        x[t : t + len(e)] += e
        t += len(e) + int(rng.uniform(*EVENT_GAP_S) * SR)
    bed = bench.crop(rng, pools.noise[rng.integers(len(pools.noise))], n) if rng.random() < 0.5 else coloured_noise(rng, n)
    level = np.sqrt(np.mean(x**2)) / (np.sqrt(np.mean(bed**2)) + 1e-12)
    return x + bed * level * 10 ** (-rng.uniform(15, 40) / 20)


def background(rng: np.random.Generator, pools: Pools, n: int) -> np.ndarray:
    """One non-speech signal of n samples, unit RMS: an `event_track` for an `event_share` of them (when there are
    events: none with `--teacher none`, so that recipe draws what it always drew), else one of the kinds below."""
    if pools.events and rng.random() < pools.event_share:
        x = event_track(rng, pools, n)
        if rng.random() < 0.3:
            x = band_limit(rng, x)
        return x / (np.sqrt(np.mean(x**2)) + 1e-9)
    r = rng.random()
    if r < 0.2:
        x = bench.crop(rng, pools.noise[rng.integers(len(pools.noise))], n)
    elif r < 0.6:
        src = pools.music[rng.integers(len(pools.music))]
        x = bench.crop(rng, src, int(n * 1.5) + 1)
        if rng.random() < 0.7:
            x = vary_speed(rng, x, 0.7, 1.4)
        if rng.random() < 0.3:
            x = x[::-1]
        x = bench.crop(rng, x, n)
        if rng.random() < 0.3:
            x = reverb(rng, x)
    elif r < 0.68:
        x = bench.crop(rng, pools.effect[rng.integers(len(pools.effect))], n)
        if rng.random() < 0.5:
            x = vary_speed(rng, bench.crop(rng, x, int(n * 1.3) + 1), 0.8, 1.25)[:n]
    elif r < 0.88:
        x = synth_music(rng, n)
    elif r < 0.94:
        x = coloured_noise(rng, n)
    else:
        x = synth_tones(rng, n)
    if rng.random() < 0.3:
        x = band_limit(rng, x)
    return x / (np.sqrt(np.mean(x**2)) + 1e-9)


def nonspeech(rng: np.random.Generator, pools: Pools, n: int) -> np.ndarray:
    x = background(rng, pools, n)
    if rng.random() < 0.3:
        x = x + background(rng, pools, n) * 10 ** (rng.uniform(-15, 0) / 20)
    return x


def faded(x: np.ndarray) -> np.ndarray:
    """x with 20 ms linear fades in and out (a piece cut from an utterance, without clicks at its ends)."""
    m = len(x)
    return x * np.minimum(1.0, np.minimum(np.arange(m), np.arange(m)[::-1]) / (0.02 * SR))


def speech_session(rng: np.random.Generator, pools: Pools, n: int,
                   sparse: bool = False, turn_db: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Dry speech (utterances with random gaps), n samples, and its 10 ms reference labels. `sparse`: pieces of
    `SPARSE_S` cut from the utterances, `SPARSE_GAP_S` apart: words and short phrases alone, as an
    `event_track`'s sounds are (else a network learns that a short sound alone is not speech). `turn_db`: each
    utterance is also played 0 to `turn_db` dB quieter, turns of talkers at different levels, as in a meeting
    (all of it speech in the labels)."""
    parts, labels, total = [], [], 0
    first = True
    while total < n + 2 * SR:
        gap = int(rng.uniform(*(SPARSE_GAP_S if sparse else (0.0, 2.5 if not first else 1.0))) * 100) * HOP
        first = False
        parts.append(np.zeros(gap))
        labels.append(np.zeros(gap // HOP, bool))
        if pools.extra and rng.random() < EXTRA_SPEECH_SHARE:
            x = pools.extra[rng.integers(len(pools.extra))]
        else:
            x = pools.speech[rng.integers(len(pools.speech))]
        if sparse:
            m = min(len(x), int(rng.uniform(*SPARSE_S) * SR))
            a = int(rng.integers(0, len(x) - m + 1))
            x = faded(x[a : a + m])
        if rng.random() < 0.7:
            x = vary_speed(rng, x, 0.9, 1.1)
        x = x[: len(x) // HOP * HOP] * 10 ** ((rng.uniform(-6, 6) - (rng.uniform(0, turn_db) if turn_db else 0)) / 20)
        parts.append(x)
        labels.append(bench.reference_labels(x))
        total += gap + len(x)
    x, lab = np.concatenate(parts), np.concatenate(labels)
    off = rng.integers(0, (len(x) - n) // (2 * HOP) + 1) * 2 * HOP
    return x[off : off + n], lab[off // HOP : (off + n) // HOP]


def make_example(rng: np.random.Generator, pools: Pools, n: int, share: float, teacher: bool = False,
                 narrowband: bool = False, babble_share: float = 0.0,
                 quiet_share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(signal float32 (n,), labels (n // 160,): bool, or float soft targets with `teacher`); a `share` of the
    examples hold no speech. With `teacher`, a `babble_share` of the speech examples get background talkers
    (`babble`), and a `quiet_share` of all examples is played `QUIET_DB` quiet, their speech targets times
    silero-vad's probability on what is played (it hears less of speech that faint, as people do)."""
    r = rng.random()
    if r < share:
        x, lab = nonspeech(rng, pools, n), np.zeros(n // HOP, bool)
        if rng.random() < 0.05:
            x = x * 1e-4
    else:
        sparse = bool(pools.events) and rng.random() < pools.event_share
        turns = not sparse and bool(pools.turn_share) and rng.random() < pools.turn_share
        x, lab = speech_session(rng, pools, n, sparse, pools.turn_db if turns else 0.0)
        target = teacher_labels(x, lab) if teacher else lab
        if teacher and babble_share and rng.random() < babble_share:
            x = babble(rng, pools, x, lab)
        if rng.random() < 0.3:
            x = band_limit(rng, x)
        if rng.random() < 0.25:
            x = reverb(rng, x)
        if rng.random() < 0.9:
            ref = lab if lab.any() else np.ones_like(lab)
            x = bench.mix(x, ref, nonspeech(rng, pools, n), rng.uniform(-5, 25))
        else:
            x = x + rng.standard_normal(n) * 10 ** (rng.uniform(-90, -50) / 20)
    if narrowband and rng.random() < NARROWBAND_SHARE:  # 8 kHz audio (telephone) resampled to 16 kHz
        x = resample_poly(resample_poly(x, 1, 2), 2, 1)[:n]
    quiet = teacher and bool(quiet_share) and rng.random() < quiet_share
    gain = 10 ** (rng.uniform(*(QUIET_DB if quiet else LEVEL_DB)) / 20) / (np.sqrt(np.mean(x**2)) + 1e-12)
    x = np.clip(x * gain, -1, 1).astype(np.float32)
    if r < share:
        return x, lab
    return x, target * teacher_prob(x, len(target)) if quiet else target


def make_set(seed: int, count: int, speakers: list[str], part: str, fe: Frontend, share: float,
             unseen: tuple[str, ...], teacher: bool = False, extra_speech: bool = False,
             narrowband: bool = False, babble_share: float = 0.0,
             quiet_share: float = 0.0, event_share: float = 0.0, turn_share: float = 0.0,
             turn_db: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Features `(count, T, n_mels)` float32 and soft targets `(count, T)` for model frames."""
    rng = np.random.default_rng(seed)
    pools = Pools(speakers, part, unseen, extra_speech, event_share, turn_share, turn_db)
    n = int(EXAMPLE_S * SR)
    step = fe.hop // HOP
    feats, targets = [], []
    for _ in range(count):
        x, lab = make_example(rng, pools, n, share, teacher, narrowband, babble_share, quiet_share)
        # as spkid.vad hears it: band-limited input with its empty band filled (wideband input is left as it is)
        feats.append(fe(x, fill=narrowband or None))
        targets.append(lab.reshape(-1, step).mean(axis=1))
    return np.stack(feats).astype(np.float32), np.stack(targets).astype(np.float32)


def distilled(model, feats: np.ndarray, targets: np.ndarray, weight: float) -> np.ndarray:
    """Targets `(count, T)` moved a `weight` of the way to `model`'s probabilities on the features `(count, T, F)`
    (a `spkid.vad.VadModel`: one network, or the mean of several that one network is to learn)."""
    soft = np.stack([model.forward(f) for f in feats])
    return ((1 - weight) * targets + weight * soft).astype(np.float32)


def build_torch_model(n_in: int, channels: int):
    import torch
    from torch import nn

    class TCN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv0 = nn.Conv1d(n_in, channels, 3, padding=1)
            self.bn0 = nn.BatchNorm1d(channels)
            self.convs = nn.ModuleList(nn.Conv1d(channels, channels, 3, padding=d, dilation=d) for d in DILATIONS)
            self.bns = nn.ModuleList(nn.BatchNorm1d(channels) for _ in DILATIONS)
            self.head = nn.Conv1d(channels, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F, T) normalised -> (B, T) logits
            h = torch.relu(self.bn0(self.conv0(x)))
            for conv, bn in zip(self.convs, self.bns):
                h = h + torch.relu(bn(conv(h)))
            return self.head(h)[:, 0]

    return TCN()


def fold(conv, bn) -> tuple[np.ndarray, np.ndarray]:
    """Conv1d + eval BatchNorm -> numpy (k, Cin, Cout) weight and (Cout,) bias."""
    scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().numpy()
    w = conv.weight.detach().numpy() * scale[:, None, None]
    b = (conv.bias.detach().numpy() - bn.running_mean.numpy()) * scale + bn.bias.detach().numpy()
    return np.ascontiguousarray(w.transpose(2, 1, 0)), b


def export(model, mean: np.ndarray, std: np.ndarray, fe: Frontend, meta: dict, path: Path) -> None:
    arrays = {"mean": mean.astype(np.float32), "std": std.astype(np.float32)}
    arrays["conv0.w"], arrays["conv0.b"] = fold(model.conv0, model.bn0)
    for i, (conv, bn) in enumerate(zip(model.convs, model.bns)):
        arrays[f"block{i}.w"], arrays[f"block{i}.b"] = fold(conv, bn)
    arrays["head.w"] = model.head.weight.detach().numpy()[:, :, 0].T.copy()
    arrays["head.b"] = model.head.bias.detach().numpy()
    meta = dict(meta, frontend={k: getattr(fe, k) for k in fe.__dataclass_fields__}, dilations=list(DILATIONS))
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def check_export(model, path: Path, x, mean: np.ndarray, std: np.ndarray) -> None:
    """The numpy network must give the torch network's probabilities (BatchNorm folding, layouts, padding)."""
    import torch

    from spkid import vad

    with torch.no_grad():
        want = torch.sigmoid(model(x)).numpy()
    net = vad.VadModel(path)
    raw = x.numpy().transpose(0, 2, 1) * std + mean
    got = np.stack([net.forward(f.astype(np.float32)) for f in raw])
    err = np.abs(got - want).max()
    if err > 1e-3:
        raise AssertionError(f"numpy and torch VAD disagree by {err}")


def isolated_speech(speakers: list[str], seed: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """(signal, reference) pairs: pieces of 0.3-0.8 s cut from the speakers' utterances (mostly speech), each alone
    1 s into 3 s of faint noise, wideband and through 8 kHz; the reference is silero-vad's frames on the piece."""
    from spkid import vadsilero

    rng = np.random.default_rng(seed)
    out = []
    for f in [f for s in speakers for f in bench.speaker_files(s)[:3]]:
        x = bench.load(f)
        for _ in range(3):
            m = int(rng.uniform(0.3, 0.8) * SR)
            a = int(rng.integers(0, len(x) - m))
            w = faded(x[a : a + m])
            if np.mean(bench.reference_labels(w)) <= 0.5:
                continue
            ref = np.zeros(3 * SR // HOP, bool)
            p = vadsilero.speech_prob(w.astype(np.float32)) > vadsilero.THRESHOLD
            ref[SR // HOP : SR // HOP + len(p)] = p
            y = rng.standard_normal(3 * SR) * 3e-4
            y[SR : SR + m] += w
            out += [(y.astype(np.float32), ref), (resample_poly(resample_poly(y, 1, 2), 2, 1).astype(np.float32), ref)]
    return out


def dev_report(path: Path, dev_speakers: list[str], unseen: tuple[str, ...] = (),
               dev_music: list[np.ndarray] = (), cfg=None, dev_effects: list[bench.Clip] = (),
               isolated: bool = False) -> dict:
    """Agreement per SNR and non-speech flagged on the dev speakers and dev ranges, with the exported numpy model.

    Music clips kept out of training (`unseen`) are scored whole, one figure each; `dev_music` excerpts (from
    `--dev-music`) and `dev_effects` (`--dev-effects`) are summarised: mean and worst share flagged, and how
    many are over 5 %. `isolated`: the share of silero-vad's speech frames found in `isolated_speech`, wideband
    and 8 kHz (words alone, which sound events must not teach a network to miss)."""
    from spkid import vad

    model = vad.VadModel(path)
    cfg = cfg or vad.VadConfig()
    clips = real_nonspeech("dev", unseen)
    mixtures = bench.bench_mixtures(len(clips) * 3, seed=7, speakers=dev_speakers, sources=clips)

    def run(x: np.ndarray) -> np.ndarray:
        return bench.frames_from_segments(vad.segments(x, SR, cfg, model), len(x) // HOP)

    table, _, _ = bench.score_mixtures(run, mixtures)
    flagged, _, _ = bench.score_nonspeech(run, clips + unseen_clips(unseen))
    out = {f"agreement@{s}dB": round(table[(s, "all")]["agreement"], 4) for s in bench.SNRS}
    for kind in ("noise", "music", "effect"):
        out[f"max_flagged_{kind}"] = round(max(v for k, v in flagged.values() if k == kind), 4)
    for name, (kind, v) in flagged.items():
        if kind == "unseen":
            out[f"unseen:{name}"] = round(v, 4)
    for kind, dev_clips in (("music", [bench.Clip(str(i), "dev", x) for i, x in enumerate(dev_music)]),
                            ("effects", list(dev_effects))):
        if dev_clips:
            share = np.array([v for _, v in bench.score_nonspeech(run, dev_clips)[0].values()])
            out.update({f"dev_{kind}_mean": round(float(share.mean()), 4),
                        f"dev_{kind}_max": round(float(share.max()), 4),
                        f"dev_{kind}_over_5%": f"{int(np.sum(share > 0.05))}/{len(share)}"})
    if isolated:
        pairs = isolated_speech(dev_speakers)
        for name, part in (("wideband", pairs[0::2]), ("8kHz", pairs[1::2])):
            found = sum(np.sum(run(y) & ref) for y, ref in part)
            out[f"isolated_recall_{name}"] = round(float(found / sum(ref.sum() for _, ref in part)), 4)
    return out


def combine(paths: list[Path], weights: list[float], out: Path) -> None:
    """One `spkid-vad/2` file from trained networks on the same front end: spkid.vad averages their
    probabilities with `weights` (normalised to sum 1); each network's arrays are kept under `m<i>.`."""
    arrays, members = {}, []
    for i, path in enumerate(paths):
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != "spkid-vad/1":
                raise SystemExit(f"train_vad.py: {path}: not one network (format {meta.get('format')})")
            if members and meta["frontend"] != members[0]["frontend"]:
                raise SystemExit(f"train_vad.py: {path}: its front end differs from {paths[0]}'s")
            arrays.update({f"m{i}.{k}": z[k] for k in z.files if k != "meta"})
        members.append(dict(meta, file=path.name))
    total = sum(weights)
    meta = {"format": "spkid-vad/2", "trained_by": "scripts/train_vad.py --combine",
            "weights": [w / total for w in weights], "frontend": members[0]["frontend"], "members": members}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path,
                    help="the trained network's .npz (required when training); with --combine, default: %s"
                         % SHIPPED.relative_to(REPO))
    ap.add_argument("--combine", nargs="+", type=Path, metavar="NPZ",
                    help="instead of training: put these trained networks (same front end) into one model whose "
                         "probability is their weighted mean (--weights), and print its dev report")
    ap.add_argument("--weights", nargs="+", type=float, metavar="W",
                    help="with --combine: one weight per network (default: equal)")
    ap.add_argument("--examples", type=int, default=16000, help="6 s training examples to synthesise")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--channels", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    # one torch thread: on a shared 2-core machine two OpenMP threads spin-wait and run ~8x slower
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nonspeech-share", type=float, default=0.4, help="share of examples without speech")
    ap.add_argument("--nonspeech-weight", type=float, default=1.5, help="loss weight of non-speech frames")
    ap.add_argument("--unseen-music", nargs="*", default=[], metavar="CLIP",
                    help="training music clips (e.g. music_start1-jt.flac) to keep out of training entirely and "
                         "score whole in the dev report: a check of generalisation to music never heard")
    ap.add_argument("--extra-music", nargs="*", type=Path, default=[Path(d) for d in DEBIAN_MUSIC], metavar="DIR",
                    help="folders of more music for training (ogg, opus, mp3, flac, wav; searched recursively); "
                         "default: the Debian game-music folders the shipped model used; none: --extra-music alone")
    ap.add_argument("--dev-music", nargs="*", type=Path, default=[Path(d) for d in DEBIAN_DEV_MUSIC], metavar="DIR",
                    help="folders of music never trained on, scored in the dev report (one excerpt a file, as "
                         "--extra-music takes them); default: hyperrogue's; none: --dev-music alone")
    ap.add_argument("--extra-effects", nargs="*", type=Path, default=[Path(d) for d in DEBIAN_EFFECTS], metavar="DIR",
                    help="with --teacher silero and --event-share: folders of sound effects for that share of the "
                         "backgrounds, those silero-vad hears words in left out; default: the Debian game and "
                         "desktop effects of the module's DEBIAN_EFFECTS; none: --extra-effects alone")
    ap.add_argument("--dev-effects", nargs="*", type=Path, default=[Path(d) for d in bench.UNSEEN_EFFECTS],
                    metavar="DIR", help="with --teacher silero: folders of sound effects never trained on, scored in "
                                        "the dev report; default: bench/vad.py's effects never heard")
    ap.add_argument("--skip-effects", nargs="*", default=list(VOICE_EFFECTS), metavar="GLOB",
                    help="with --event-share: effects (file names) left out of training; default: %s, the cries "
                         "of wesnoth's units, "
                         "human voices that teach a network to miss short words" % " ".join(VOICE_EFFECTS))
    ap.add_argument("--event-share", type=float, default=0.0,
                    help="with --teacher silero: share of the backgrounds that are sound events coming and going, "
                         "and of the speech examples that are pieces of speech alone (default 0: the shipped "
                         "network has none; 0.15 is the README's trial)")
    ap.add_argument("--teacher", choices=("silero", "none"), default="silero",
                    help="soft targets for speech: the energy labels times silero-vad's probability on the dry "
                         "speech (needs `pip install silero-vad --no-deps` and onnxruntime); none: energy labels")
    ap.add_argument("--extra-speech", action=argparse.BooleanOptionalAction, default=True,
                    help=f"take {EXTRA_SPEECH_SHARE:.0%}% of the utterances from ../shared/data/extra_speakers")
    ap.add_argument("--narrowband", action=argparse.BooleanOptionalAction, default=True,
                    help=f"pass {NARROWBAND_SHARE:.0%}% of the examples through 8 kHz (telephone audio) and compute "
                         "features as spkid.vad does, with the empty band filled")
    ap.add_argument("--babble-share", type=float, default=0.2,
                    help="with --teacher silero: share of the speech examples with 1-3 other talkers %g-%g dB "
                         "below the foreground speech, not speech in the targets" % BABBLE_DB)
    ap.add_argument("--quiet-share", type=float, default=0.15,
                    help="with --teacher silero: share of the examples played at %g to %g dBFS, their speech "
                         "targets times silero-vad's probability on what is played" % QUIET_DB)
    ap.add_argument("--turn-share", type=float, default=0.0,
                    help="share of the (whole-utterance) speech examples whose utterances are each played 0 to "
                         "--turn-db dB quieter: talkers at different levels, all of it speech in the targets")
    ap.add_argument("--turn-db", type=float, default=25.0, help="with --turn-share: the quietest turn, dB down")
    ap.add_argument("--distill", type=Path, metavar="NPZ",
                    help="a VAD model file (one network or several put together) whose probability on each "
                         "example joins the targets: one network learns what several agree on")
    ap.add_argument("--distill-weight", type=float, default=0.5,
                    help="with --distill: the model's share of the targets (the rest: the labels)")
    ap.add_argument("--cache", type=Path, help="keep the synthesised features in this .npz and reuse them")
    args = ap.parse_args()
    if args.combine:
        args.weights = args.weights or [1.0] * len(args.combine)
        if len(args.weights) != len(args.combine) or min(args.weights) <= 0:
            ap.error(f"--weights: one positive weight per --combine file ({len(args.combine)}), got {args.weights}")
        for path in args.combine:
            if not path.is_file():
                ap.error(f"--combine: {path} not found")
        args.output = args.output or SHIPPED
        combine(args.combine, args.weights, args.output)
    elif args.output is None:
        ap.error("-o/--output is required when training (the shipped model is three networks put together: see --combine)")
    if args.examples < args.batch:
        ap.error(f"--examples ({args.examples}) must be at least --batch ({args.batch})")
    for name in ("babble_share", "quiet_share", "event_share", "turn_share", "distill_weight"):
        if not 0 <= getattr(args, name) <= 1:
            ap.error(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
    if args.turn_db < 0:
        ap.error(f"--turn-db is dB down and must be >= 0, got {args.turn_db}")

    t0 = time.time()
    fe = Frontend()
    if args.distill:
        from spkid.errors import SpkidError
        from spkid.vad import VadModel

        try:
            distill = VadModel(args.distill)
        except SpkidError as e:
            raise SystemExit(f"train_vad.py: --distill: {e}") from None
        if distill.frontend != fe:
            raise SystemExit(f"train_vad.py: --distill: {args.distill}: its front end is not this script's")
    train_spk, dev_spk = split_speakers()
    unseen = tuple(args.unseen_music)
    unseen_clips(unseen)
    if args.teacher == "silero":
        from spkid import vadsilero
        from spkid.errors import SpkidError

        try:
            vadsilero.model_path()
        except SpkidError as e:
            raise SystemExit(f"train_vad.py: --teacher silero: {e}") from None
    train_music, dev_music = found_audio(args.extra_music), found_audio(args.dev_music)
    teacher = args.teacher == "silero"
    effects = args.extra_effects if teacher and args.event_share > 0 else []
    dev_effects = args.dev_effects if teacher else []
    for dirs in (effects, dev_effects):  # a missing package stops the run now, not after the data is made
        found_audio(dirs, "effects")

    def report() -> None:
        rep = dev_report(args.output, dev_spk, unseen, load_music(dev_music, args.seed + 1),
                         dev_effects=bench.effect_clips(dev_effects) if dev_effects else [], isolated=teacher)
        print(json.dumps({"dev": rep, "seconds": round(time.time() - t0)}), file=sys.stderr)

    if args.combine:
        return report()
    tag = (f"examples={args.examples} seed={args.seed} frontend={fe} share={args.nonspeech_share} unseen={unseen} "
           f"music={[str(d) for d in args.extra_music]} teacher={args.teacher} extra_speech={args.extra_speech} "
           f"narrowband={args.narrowband} babble={args.babble_share} quiet={args.quiet_share} "
           f"effects={[str(d) for d in effects]} skip={args.skip_effects} events={args.event_share}"
           + (f" turns={args.turn_share}/{args.turn_db}" if args.turn_share else ""))
    if args.cache and args.cache.exists() and str(np.load(args.cache)["tag"]) == tag:
        with np.load(args.cache) as z:
            feats, targets = z["feats"], z["targets"]
    else:
        EXTRA_MUSIC[:] = load_music(train_music, args.seed)
        if effects:
            EXTRA_EFFECTS[:] = [c.signal for c in bench.effect_clips(effects, EFFECT_S, tuple(args.skip_effects))]
            print(f"effects: {len(EXTRA_EFFECTS)} wordless clips, {sum(map(len, EXTRA_EFFECTS)) / SR:.0f} s",
                  file=sys.stderr)
        half = args.examples // 2
        jobs = [(args.seed * 1000 + i, c, train_spk, "train", fe, args.nonspeech_share, unseen, teacher,
                 args.extra_speech, args.narrowband, args.babble_share, args.quiet_share,
                 args.event_share if effects else 0.0, args.turn_share, args.turn_db)
                for i, c in enumerate((half, args.examples - half))]
        # fork before torch is imported: the workers inherit this module (and bench's) as they are
        with multiprocessing.get_context("fork").Pool(2) as pool:
            parts = pool.starmap(make_set, jobs)
        feats = np.concatenate([p[0] for p in parts])
        targets = np.concatenate([p[1] for p in parts])
        if args.cache:
            np.savez(args.cache, tag=np.array(tag), feats=feats, targets=targets)
    if args.distill:  # after the cache: the same examples serve any model and weight
        targets = distilled(distill, feats, targets, args.distill_weight)
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    print(f"data: {feats.shape} in {time.time() - t0:.0f} s; speech share {targets.mean():.2f}", file=sys.stderr)
    mean = feats.reshape(-1, feats.shape[-1]).mean(axis=0)
    std = feats.reshape(-1, feats.shape[-1]).std(axis=0) + 1e-3
    x_all = torch.from_numpy(((feats - mean) / std).transpose(0, 2, 1).copy())
    y_all = torch.from_numpy(targets)
    del feats

    model = build_torch_model(x_all.shape[1], args.channels)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (len(x_all) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = 1.0 + (args.nonspeech_weight - 1.0) * (1.0 - target)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, weight=weight)

    step = 0
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_all), generator=gen)
        total = 0.0
        for i in range(len(x_all) // args.batch):
            idx = order[i * args.batch : (i + 1) * args.batch]
            loss = loss_fn(model(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            total += loss.item()
        print(f"epoch {epoch + 1}/{args.epochs} loss {total / (i + 1):.4f} ({time.time() - t0:.0f} s)", file=sys.stderr)
    model.eval()
    meta = {
        "format": "spkid-vad/1",
        "trained_by": "scripts/train_vad.py",
        "args": json.loads(json.dumps(vars(args), default=str)),
        "final_loss": round(total / (i + 1), 4),
        "train_speakers": len(train_spk),
        "seconds": round(time.time() - t0),
    }
    export(model, mean, std, fe, meta, args.output)
    check_export(model, args.output, x_all[:4], mean, std)
    report()


if __name__ == "__main__":
    main()

"""The development suite: held-out speakers of every shared corpus, scored per corpus, per duration band and under
simulated conditions, for several systems side by side; prints a markdown table of EERs with 95 % intervals.

Usage (by hand; measured on 2 shared CPU cores, one thread: the full suite with three systems took 18 minutes from
scratch beside a test run, 35 s once WORK holds the degraded audio and every embedding, which a second run reuses):

    OMP_NUM_THREADS=1 nice -n 5 python recipes/devsuite.py [WORK] [--quick] [--model PATH ...] [--json FILE]

WORK (default exp/devsuite) keeps split/ (recipes/devsplit.py's lists), audio/<condition>/ (degraded probes),
cache/<system>/ (keys.txt + values.npy per system and VAD, keyed by file, never recomputed) and trials.tsv (every trial with
both sides' speech seconds and every system's score; items.tsv names the files: the input of a duration-aware
calibration).

Data: only ../shared/data, only speakers recipes/devsplit.py holds out of training (never trained on).
Trials: within one corpus, every pair of its held-out files (each pair once; in list order, the second file is the
probe); all target pairs and at most --max-nontarget non-target pairs per corpus, drawn with a fixed seed.
Parts of the table:
  - per corpus, and all corpora pooled (one threshold for every corpus; pairs stay within a corpus);
  - per duration band of the trial: the shorter side's speech (the embedding VAD's seconds) < 1 s, 1-3 s, > 3 s;
  - simulated conditions on the held-out speakers of librispeech_tc100 and speechocean762, applied to the probe
    only (the enrolment side stays clean, as in deployments that enrol once under good conditions), next to the
    same trials clean: telephone (band 300-3400 Hz, 8 kHz, GSM 06.10 full-rate codec, through sox; the probe stays
    an 8 kHz file, so every system's own resampling runs), tempo +-10 % (sox tempo -s: pitch kept), pitch +-2
    semitones (sox pitch: duration kept), level -25 dB, +15 dB clipped to full scale, reverberation (a simulated
    room impulse response of spkid.augment, RT60 0.4-0.9 s, direct-to-reverberant 0-6 dB), noise at 5 dB SNR
    (spkid.augment.mix_at_snr; the last 40 % of the noise clips recipes/devsplit.py holds out of training).
  - the digits analogue, on the held-out speakers of the one-word corpora (speech_commands, dspspeech20,
    arabic_speech_commands), next to the same trials clean: both sides cut to the 0.4 s holding the most voice
    (spkid's VAD) and band-limited to 8 kHz files, as recordings of isolated digits are (a median of 0.4 s in the
    issue's hidden digits set; the resemblyzer encoder reads 21.5 % there, and 21.4 % here).
    Each degraded file has its own seed (from its name) and sox runs repeatable (-R: fixed dither), so the audio is
    the same on every machine with the same sox. Without sox its conditions are skipped with a message.
Systems (default: floor, resemblyzer, default; add --model PATH, repeatable):
  floor         20 MFCCs (40 Mel bands, Hamming; `spkid features -k mfcc -n 40 --n-ceps 20 -w hamming`), mean and
                std over the speech the embedding VAD keeps (recipes/stats_pool.py), centred on the mean over the
                clean held-out files, cosine: recipes/librispeech.sh's floor
  resemblyzer   the pretrained GE2E encoder (`--model resemblyzer`; skipped if the pretrained extra is missing)
  default       the bundled model
Scores are cosines of `spkid.embedding.Embedder` embeddings (the models' own VAD and windows, as `spkid verify`).
Intervals: 95 % percentile bootstrap over speakers (--bootstrap replicates): each replicate draws the part's speakers
with replacement; a target trial of speaker s counts as often as s was drawn, a non-target trial of s and t
c(s) * c(t) times. Trials share speakers, so resampling trials would give intervals that are too narrow. The same
draws serve every system, so the second table's paired differences to the bundled model are fair comparisons.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import devsplit  # noqa: E402
import stats_pool  # noqa: E402

COND_CORPORA = ("librispeech_tc100", "speechocean762")
WORD_CORPORA = ("speech_commands", "dspspeech20", "arabic_speech_commands")  # one word a clip
WORD_CUT_S = 0.4  # the digits analogue: each word cut to its 0.4 s holding the most voice, at 8 kHz
BANDS = (("speech < 1 s", 0.0, 1.0), ("speech 1-3 s", 1.0, 3.0), ("speech > 3 s", 3.0, np.inf))
QUICK_SPEAKERS, QUICK_FILES = 6, 4  # --quick: per corpus the first held-out speakers (by devsplit's hash), files each
FLOOR_FEATURES = {"kind": "mfcc", "n_filters": 40, "n_ceps": 20, "window": "hamming"}
SYSTEM_NAMES = {"floor": "MFCC mean+std floor", "resemblyzer": "resemblyzer encoder", "default": "bundled model"}


# ---------------------------------------------------------------- items and trials


@dataclass(frozen=True)
class Item:
    key: str  # condition/corpus/relative name, unique in the suite
    path: str
    corpus: str
    speaker: str  # corpus:speaker
    condition: str  # "clean" or a condition name

    @property
    def id(self) -> str:
        """The cache key: the name and the file's size and modification time (a remade file is analysed again)."""
        st = os.stat(self.path)
        return f"{self.key}|{st.st_size}|{st.st_mtime_ns}"


def seed_of(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def clean_items(split: devsplit.Split, data: Path, quick: bool) -> list[Item]:
    items = []
    for corpus in devsplit.CORPORA:
        root = data / corpus if corpus == devsplit.LIBRI else data / "extra_speakers" / corpus
        rows = [r for r in split.dev if r.corpus == corpus]
        if quick:
            keep = sorted({r.speaker for r in rows}, key=lambda s: (devsplit.speaker_hash(corpus, s), s))[:QUICK_SPEAKERS]
            seen: dict[str, int] = {}
            picked = []
            for r in rows:
                if r.speaker in keep and seen.get(r.speaker, 0) < QUICK_FILES:
                    seen[r.speaker] = seen.get(r.speaker, 0) + 1
                    picked.append(r)
            rows = picked
        for r in rows:
            rel = Path(r.path).relative_to(root).with_suffix("").as_posix()
            items.append(Item(f"clean/{corpus}/{rel}", r.path, corpus, r.label, "clean"))
    return items


@dataclass
class Trials:
    """Trials as indices into the suite's items: enrolment `a`, probe `b`, `target`; `group` names the corpus and
    condition they belong to ("corpus|condition")."""

    a: np.ndarray
    b: np.ndarray
    target: np.ndarray
    group: np.ndarray


def corpus_pairs(idx: Sequence[int], speakers: Sequence[str], max_non: int, seed_text: str) -> tuple[np.ndarray, ...]:
    """Every target pair and at most `max_non` non-target pairs (seeded by `seed_text`) of the items `idx`,
    in list order: (a, b, target) with a before b."""
    i, j = np.triu_indices(len(idx), 1)
    spk = np.asarray(speakers)
    target = spk[i] == spk[j]
    non = np.flatnonzero(~target)
    if len(non) > max_non:
        rng = np.random.default_rng(seed_of(seed_text))
        non = np.sort(rng.choice(non, max_non, replace=False))
    keep = np.sort(np.r_[np.flatnonzero(target), non])
    ids = np.asarray(idx)
    return ids[i[keep]], ids[j[keep]], target[keep]


def build_trials(items: list[Item], max_non: int) -> Trials:
    """Clean trials of every corpus, then each condition's copy of the clean trials of its corpora with the probe (or
    both sides) replaced by its degraded file (items of a condition are named like their clean file)."""
    by_key = {it.key: n for n, it in enumerate(items)}
    parts = []
    for corpus in devsplit.CORPORA:
        idx = [n for n, it in enumerate(items) if it.corpus == corpus and it.condition == "clean"]
        if len(idx) < 2:
            continue
        a, b, t = corpus_pairs(idx, [items[n].speaker for n in idx], max_non, f"nontarget/{corpus}")
        parts.append((a, b, t, f"{corpus}|clean"))
    conditions = sorted({it.condition for it in items} - {"clean"}, key=CONDITION_NAMES.index)
    clean_parts = list(parts)
    def degraded(idx: np.ndarray, cond: str) -> np.ndarray:
        return np.array([by_key[items[n].key.replace("clean/", f"{cond}/", 1)] for n in idx], dtype=np.int64)

    for cond in conditions:
        for a, b, t, g in clean_parts:
            corpus = g.split("|")[0]
            if corpus not in CONDITIONS[cond].corpora:
                continue
            parts.append((degraded(a, cond) if CONDITIONS[cond].both else a, degraded(b, cond), t, f"{corpus}|{cond}"))
    return Trials(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                  np.concatenate([p[2] for p in parts]), np.concatenate([np.full(len(p[0]), p[3]) for p in parts]))


# ---------------------------------------------------------------- conditions (probe side)


def _write(path: Path, x: np.ndarray, sr: int) -> None:
    tmp = path.with_name(path.stem + ".tmp.flac")
    sf.write(str(tmp), np.clip(x, -1.0, 32767 / 32768), sr, subtype="PCM_16")
    os.replace(tmp, path)


def _sox(src: str, dst: Path, *effects: str) -> None:
    tmp = dst.with_name(dst.stem + ".tmp.flac")
    subprocess.run(["sox", "-q", "-R", src, "-b", "16", str(tmp), *effects], check=True, capture_output=True)
    os.replace(tmp, dst)


def _telephone(src: str, dst: Path, rng: np.random.Generator) -> None:
    gsm = dst.with_name(dst.stem + ".tmp.gsm")
    try:
        subprocess.run(["sox", "-q", "-R", src, "-r", "8000", "-c", "1", str(gsm), "sinc", "300-3400"], check=True,
                       capture_output=True)
        _sox(str(gsm), dst)
    finally:
        gsm.unlink(missing_ok=True)


def _level(db: float, clip: bool) -> Callable:
    def run(src: str, dst: Path, rng: np.random.Generator) -> None:
        x, sr = sf.read(src, dtype="float64")
        y = x * 10 ** (db / 20)
        _write(dst, np.clip(y, -1.0, 1.0) if clip else y, sr)
    return run


def _reverb(src: str, dst: Path, rng: np.random.Generator) -> None:
    from spkid.augment import reverberate, synth_rir

    x, sr = sf.read(src, dtype="float64")
    _write(dst, reverberate(x, synth_rir(sr, rng.uniform(0.4, 0.9), rng.uniform(0.0, 6.0), rng)), sr)


_NOISE: dict[str, np.ndarray] = {}


def _noise(files: Sequence[str], snr_db: float) -> Callable:
    def run(src: str, dst: Path, rng: np.random.Generator) -> None:
        from spkid.augment import mix_at_snr

        x, sr = sf.read(src, dtype="float64")
        f = files[int(rng.integers(len(files)))]
        if f not in _NOISE:
            n, nsr = sf.read(f, dtype="float64")
            assert nsr == sr, f
            _NOISE[f] = n[int(devsplit.NOISE_DEV_FROM * len(n)):]
        n = _NOISE[f]
        if len(n) < len(x):
            n = np.tile(n, -(-len(x) // len(n)))
        start = int(rng.integers(0, len(n) - len(x) + 1))
        y = mix_at_snr(x, n[start : start + len(x)], snr_db)
        peak = float(np.max(np.abs(y)))
        _write(dst, y / peak * 0.99 if peak > 0.99 else y, sr)  # keep the SNR, not the level, when it would clip
    return run


def _word_cut_8k(src: str, dst: Path, rng: np.random.Generator) -> None:
    """The WORD_CUT_S seconds of the clip holding the most voice (spkid's VAD at its defaults; the middle when it
    finds none), band-limited and written at 8 kHz (polyphase, 1:2) as a digits recording is."""
    from scipy.signal import resample_poly

    from spkid import vad

    x, sr = sf.read(src, dtype="float32")
    n = int(round(WORD_CUT_S * sr))
    a, b = vad.best_window(vad.segments(x, sr), len(x), n)
    if b <= a:
        a = max(0, (len(x) - n) // 2)
        b = min(len(x), a + n)
    _write(dst, resample_poly(x[a:b].astype(np.float64), 1, 2), sr // 2)


@dataclass(frozen=True)
class Condition:
    name: str
    folder: str  # under WORK/audio/
    tool: str | None  # an outside program it needs
    make: Callable[[str, Path, np.random.Generator], None] = field(repr=False)
    corpora: tuple[str, ...] = COND_CORPORA  # whose held-out files it degrades
    both: bool = False  # both sides of a trial degraded (else the probe only)


def _sox_effect(*effects: str) -> Callable:
    return lambda src, dst, rng: _sox(src, dst, *effects)


def all_conditions(noise_dev: Sequence[str]) -> tuple[Condition, ...]:
    """Every condition, in table order; the noise is mixed from `noise_dev` (recipes/devsplit.py's held-out clips)."""
    return (
        Condition("telephone GSM 8 kHz", "telephone_gsm", "sox", _telephone),
        Condition("tempo +10 %", "tempo_up10", "sox", _sox_effect("tempo", "-s", "1.1")),
        Condition("tempo -10 %", "tempo_down10", "sox", _sox_effect("tempo", "-s", "0.9")),
        Condition("pitch +2 semitones", "pitch_up2", "sox", _sox_effect("pitch", "200")),
        Condition("pitch -2 semitones", "pitch_down2", "sox", _sox_effect("pitch", "-200")),
        Condition("level -25 dB", "level_down25", None, _level(-25.0, False)),
        Condition("level +15 dB clipped", "level_up15_clipped", None, _level(15.0, True)),
        Condition("reverberation", "reverb", None, _reverb),
        Condition("noise 5 dB SNR", "noise_5db", None, _noise(noise_dev, 5.0)),
        Condition(f"words cut to {WORD_CUT_S:g} s, 8 kHz", "words_cut_8k", None, _word_cut_8k, WORD_CORPORA, True),
    )


CONDITIONS = {c.name: c for c in all_conditions(())}  # what each condition applies to (its corpora, which sides)
CONDITION_NAMES = tuple(CONDITIONS)


def available_conditions(noise_dev: Sequence[str]) -> list[Condition]:
    out = []
    missing: dict[str, list[str]] = {}
    for c in all_conditions(noise_dev):
        if c.tool is not None and shutil.which(c.tool) is None:
            missing.setdefault(c.tool, []).append(c.name)
            continue
        if c.name == "telephone GSM 8 kHz" and not _sox_has("gsm"):
            log(f"devsuite: this sox cannot write GSM; skipping {c.name}")
            continue
        out.append(c)
    for tool, names in missing.items():
        log(f"devsuite: {tool} not found; skipping {', '.join(names)} (install it, e.g. apt-get install {tool})")
    return out


def _sox_has(fmt: str) -> bool:
    out = subprocess.run(["sox", "-h"], capture_output=True, text=True).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("AUDIO FILE FORMATS")), "")
    return fmt in line.split()


def degrade(clean: list[Item], conditions: list[Condition], work: Path, jobs: int) -> list[Item]:
    """The degraded copy of each clean item of a condition's corpora under each condition (made once, then reused)."""
    todo, items = [], []
    for c in conditions:
        for it in clean:
            if it.corpus not in c.corpora:
                continue
            rel = it.key.split("/", 1)[1]
            dst = work / "audio" / c.folder / f"{rel}.flac"
            items.append(Item(f"{c.name}/{rel}", str(dst), it.corpus, it.speaker, c.name))
            if not dst.is_file():
                todo.append((c, it.path, dst, seed_of(f"{c.name}/{rel}")))
    if todo:
        log(f"devsuite: making {len(todo)} degraded probes under {work / 'audio'}")
        for _, _, dst, _ in todo:
            dst.parent.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max(1, jobs)) as ex:
            list(ex.map(lambda t: t[0].make(t[1], t[2], np.random.default_rng(t[3])), todo))
    return items


# ---------------------------------------------------------------- caches and systems


class Cache:
    """Values per item key for one system, in WORK/cache/<tag>/ (keys.txt + values.npy), saved as they grow."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.keys: list[str] = []
        self.values = np.zeros((0, 0), np.float32)
        kf, vf = folder / "keys.txt", folder / "values.npy"
        if kf.is_file() and vf.is_file():
            keys = kf.read_text(encoding="utf-8").splitlines()
            values = np.load(vf, allow_pickle=False)
            n = min(len(keys), len(values))
            self.keys, self.values = keys[:n], values[:n]
        self.index = {k: n for n, k in enumerate(self.keys)}

    def add(self, keys: Sequence[str], values: np.ndarray) -> None:
        values = np.asarray(values, np.float32)
        self.values = values if not self.keys else np.concatenate([self.values, values])
        for k in keys:
            self.index[k] = len(self.keys)
            self.keys.append(k)
        self.folder.mkdir(parents=True, exist_ok=True)
        np.save(self.folder / "values.tmp.npy", self.values, allow_pickle=False)
        os.replace(self.folder / "values.tmp.npy", self.folder / "values.npy")
        (self.folder / "keys.tmp").write_text("".join(f"{k}\n" for k in self.keys), encoding="utf-8")
        os.replace(self.folder / "keys.tmp", self.folder / "keys.txt")

    def get(self, keys: Sequence[str]) -> np.ndarray:
        return self.values[[self.index[k] for k in keys]]


def fill(cache: Cache, items: list[Item], compute: Callable[[list[Item]], np.ndarray], what: str, group: int = 64) -> None:
    """Compute and cache the values of `items` (the caller leaves out what is cached), `group` files at a time."""
    todo = list({it.id: it for it in items}.values())
    if not todo:
        return
    t0 = time.time()
    for s in range(0, len(todo), group):
        chunk = todo[s : s + group]
        cache.add([it.id for it in chunk], compute(chunk))
        log(f"devsuite: {what}: {s + len(chunk)}/{len(todo)} files ({time.time() - t0:.0f} s)")


def analyse(items: list[Item], work: Path) -> tuple[Cache, Cache]:
    """Per file: [seconds, speech seconds, sure-speech seconds] as the embedding VAD measures them on the file as it
    is (no level normalisation), and the floor's MFCC mean+std over that speech. One pass fills both caches."""
    from spkid.features import FeatureConfig, compute
    from spkid.frontends import FeatureFrontend
    from spkid.utterance import EmbedConfig, Preparer

    cfg = FeatureConfig(**FLOOR_FEATURES)
    prep = Preparer(FeatureFrontend(cfg), EmbedConfig(), use_vad=True)
    speech, floor = Cache(work / "cache" / f"speech_{vad_id()}"), Cache(work / "cache" / f"floor_mfcc20_{vad_id()}")

    def one(it: Item) -> tuple[np.ndarray, np.ndarray]:
        from spkid import audio

        x, sr = audio.load(it.path)
        y, q = prep.signal(x, sr, it.path)
        st = stats_pool.stats(compute(y, cfg))
        return np.array([q.seconds, q.speech_seconds, q.sure_seconds or 0.0]), st

    def both(chunk: list[Item]) -> np.ndarray:
        rows = [one(it) for it in chunk]
        floor.add([it.id for it in chunk], np.stack([r[1] for r in rows]))
        return np.stack([r[0] for r in rows])

    fill(speech, [it for it in items if it.id not in speech.index or it.id not in floor.index], both,
         "speech and MFCC statistics")
    return speech, floor


def vad_id() -> str:
    """The embedding VAD's identity (its weights and settings): every cache depends on it."""
    from spkid import utterance, vad

    h = hashlib.blake2b(Path(vad.EMBED_MODEL_PATH).read_bytes(), digest_size=6)
    h.update(json.dumps(utterance.EMBED_VAD, sort_keys=True).encode())
    return f"vad{h.hexdigest()}"


def neural_system(model: str | None, threads: int) -> tuple[str, Callable[[list[Item]], np.ndarray], str] | None:
    """(cache tag, embed function, label) of a model, or None (with a message) when it cannot be loaded."""
    from spkid.embedding import Embedder, resolve_model
    from spkid.errors import SpkidError

    try:
        ref = resolve_model(model)
        emb = Embedder.from_model(ref, threads=threads)
    except (SpkidError, ImportError, OSError) as e:
        log(f"devsuite: skipping {model or 'the bundled model'}: {e}")
        return None
    label = "default" if model is None else ("resemblyzer" if model == "resemblyzer" else Path(model).stem)
    tag = f"model_{ref.sha256[:16]}_{vad_id()}"  # by identity: the same model under another name reuses its cache
    return tag, lambda chunk: emb.embed_files([it.path for it in chunk]), label


# ---------------------------------------------------------------- metrics


def eer_sorted(scores: np.ndarray, target: np.ndarray, w: np.ndarray) -> np.ndarray:
    """EER of weighted trials (each trial counts `w` times), rows of `w` (R, N) being separate weightings; `scores`
    ascending (N,), `target` bool (N,). The same piecewise-linear ROC crossing as spkid.metrics.eer (tied scores
    move together); NaN for a weighting without target or non-target weight."""
    w = np.atleast_2d(w)
    first = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])
    ct = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w * target, axis=1)], axis=1)
    cn = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w * ~target, axis=1)], axis=1)
    n_t, n_n = ct[:, -1:], cn[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        p_miss = np.concatenate([ct[:, first] / n_t, np.ones((len(w), 1))], axis=1)
        p_fa = np.concatenate([(n_n - cn[:, first]) / n_n, np.zeros((len(w), 1))], axis=1)
        d = p_fa - p_miss
        i = np.argmax(d <= 0, axis=1)
        r = np.arange(len(w))
        alpha = d[r, i - 1] / (d[r, i - 1] - d[r, i])
        out = p_miss[r, i - 1] + alpha * (p_miss[r, i] - p_miss[r, i - 1])
    out[(n_t[:, 0] <= 0) | (n_n[:, 0] <= 0)] = np.nan
    return out


def speaker_weights(spk_a: np.ndarray, spk_b: np.ndarray, target: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Trial weights (R, N) for speaker draw counts (R, S): c(s) for a target trial, c(s) * c(t) for a non-target."""
    ca, cb = counts[:, spk_a], counts[:, spk_b]
    return np.where(target, ca, ca * cb).astype(np.float64)


def speaker_draws(n_speakers: int, replicates: int, seed: int) -> np.ndarray:
    """(R, S) counts: each replicate draws S speakers with replacement."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_speakers, (replicates, n_speakers))
    return np.stack([np.bincount(d, minlength=n_speakers) for d in draws])


@dataclass
class PartResult:
    name: str
    n_speakers: int
    n_target: int
    n_nontarget: int
    eer: dict[str, float]  # system -> EER (fraction)
    ci: dict[str, tuple[float, float]]
    diff_ci: dict[str, tuple[float, float, float]]  # system -> (EER - reference EER, low, high), paired draws


def score_part(name: str, spk_a: np.ndarray, spk_b: np.ndarray, target: np.ndarray, scores: dict[str, np.ndarray],
               replicates: int, seed: int, reference: str | None, batch: int = 50) -> PartResult:
    from spkid.metrics import eer

    speakers, inv = np.unique(np.r_[spk_a, spk_b], return_inverse=True)
    ia, ib = inv[: len(spk_a)], inv[len(spk_a) :]
    counts = speaker_draws(len(speakers), replicates, seed)
    boot: dict[str, np.ndarray] = {}
    point: dict[str, float] = {}
    for system, s in scores.items():
        point[system] = eer(s[target], s[~target])[0]
        order = np.argsort(s, kind="stable")
        vals = []
        for r in range(0, replicates, batch):
            w = speaker_weights(ia[order], ib[order], target[order], counts[r : r + batch])
            vals.append(eer_sorted(s[order], target[order], w))
        boot[system] = np.concatenate(vals) if vals else np.zeros(0)
    ci = {k: _interval(v) for k, v in boot.items()}
    diff = {}
    if reference in boot:
        for k, v in boot.items():
            if k != reference:
                lo, hi = _interval(v - boot[reference])
                diff[k] = (point[k] - point[reference], lo, hi)
    return PartResult(name, len(speakers), int(target.sum()), int((~target).sum()), point, ci, diff)


def _interval(v: np.ndarray) -> tuple[float, float]:
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return (float("nan"), float("nan"))
    return float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))


# ---------------------------------------------------------------- the table


def pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:.2f}"


def table(results: list[PartResult], systems: list[str], labels: dict[str, str]) -> str:
    head = ["part", "speakers", "target / non-target", *[f"{labels[s]}: EER % (95 % CI)" for s in systems]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        best = min((r.eer[s] for s in systems), default=np.nan)
        cells = []
        for s in systems:
            e = f"{pct(r.eer[s])} ({pct(r.ci[s][0])}–{pct(r.ci[s][1])})"
            cells.append(f"**{e}**" if r.eer[s] == best and len(systems) > 1 else e)
        lines.append(f"| {r.name} | {r.n_speakers} | {r.n_target:,} / {r.n_nontarget:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diff_table(results: list[PartResult], systems: list[str], labels: dict[str, str], reference: str) -> str:
    others = [s for s in systems if s != reference]
    head = ["part", *[f"{labels[s]} − {labels[reference]}: EER points (95 % CI)" for s in others]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [f"{100 * r.diff_ci[s][0]:+.2f} ({100 * r.diff_ci[s][1]:+.2f} to {100 * r.diff_ci[s][2]:+.2f})"
                 for s in others]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parts(items: list[Item], trials: Trials, speech_s: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(name, boolean mask over trials) for every row of the table, in order."""
    corpus = np.array([g.split("|")[0] for g in trials.group])
    cond = np.array([g.split("|")[1] for g in trials.group])
    clean = cond == "clean"
    out = [(c, clean & (corpus == c)) for c in devsplit.CORPORA if np.any(clean & (corpus == c))]
    out.append(("all corpora (pooled)", clean))
    shorter = np.minimum(speech_s[trials.a], speech_s[trials.b])
    out += [(name, clean & (shorter >= lo) & (shorter < hi)) for name, lo, hi in BANDS]
    # each group of conditions (by the corpora they degrade) after the same trials clean, its reference
    for corpora in dict.fromkeys(c.corpora for c in CONDITIONS.values()):
        names = [c for c in dict.fromkeys(cond[~clean]) if CONDITIONS[c].corpora == corpora]
        if names:
            out.append((f"clean ({' + '.join(corpora)}; the reference of what follows)", clean & np.isin(corpus, corpora)))
        out += [(f"{'both sides' if CONDITIONS[c].both else 'probe'}: {c}", cond == c) for c in names]
    return [(n, m) for n, m in out if m.any()]


# ---------------------------------------------------------------- main


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path, nargs="?", default=Path("exp/devsuite"))
    ap.add_argument("--data", type=Path, default=devsplit.DATA, help="the shared data folder (default: %(default)s)")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK_SPEAKERS} speakers per corpus, {QUICK_FILES} files each, 200 bootstrap replicates")
    ap.add_argument("--systems", default="floor,resemblyzer,default",
                    help="comma-separated: floor, resemblyzer, default (default: %(default)s)")
    ap.add_argument("--model", action="append", default=[], help="another model to score (repeatable)")
    ap.add_argument("--max-nontarget", type=int, default=20000, help="non-target trials per corpus (default: %(default)s)")
    ap.add_argument("--bootstrap", type=int, default=None, help="replicates (default 1000; 200 with --quick)")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch/onnxruntime threads (default: %(default)s)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel workers making degraded audio (default: %(default)s)")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    a = ap.parse_args()
    t_start = time.time()
    replicates = a.bootstrap if a.bootstrap is not None else (200 if a.quick else 1000)
    try:
        split = devsplit.split(a.data)
    except FileNotFoundError as e:
        sys.exit(f"devsuite: {e}")
    devsplit.write(split, a.work / "split")
    for line in devsplit.summary(split):
        log(line)

    clean = clean_items(split, a.data, a.quick)
    conditions = available_conditions(split.noise_dev)
    items = clean + degrade(clean, conditions, a.work, a.jobs)
    trials = build_trials(items, a.max_nontarget)
    log(f"devsuite: {len(clean)} clean files, {len(items) - len(clean)} degraded probes, {len(trials.a):,} trials")

    speech, floor = analyse(items, a.work)
    keys = [it.id for it in items]
    quality = speech.get(keys)
    speech_s = quality[:, 1]

    scores: dict[str, np.ndarray] = {}
    labels: dict[str, str] = {}
    requested = [s.strip() for s in a.systems.split(",") if s.strip()]
    unknown = [s for s in requested if s not in SYSTEM_NAMES]
    if unknown:
        sys.exit(f"devsuite: unknown system {', '.join(unknown)}; choose from {', '.join(SYSTEM_NAMES)} (or --model PATH)")
    if "floor" in requested:
        st = floor.get(keys).astype(np.float64)
        st -= st[[n for n, it in enumerate(items) if it.condition == "clean"]].mean(0)
        st /= np.linalg.norm(st, axis=1, keepdims=True) + 1e-12
        scores["floor"] = np.einsum("ij,ij->i", st[trials.a], st[trials.b])
        labels["floor"] = SYSTEM_NAMES["floor"]
    models: list[tuple[str, str | None]] = [(s, None if s == "default" else s) for s in requested if s != "floor"]
    models += [(m, m) for m in a.model]
    for name, model in models:
        t0 = time.time()
        sysinfo = neural_system(model, a.threads)
        if sysinfo is None:
            continue
        tag, embed, label = sysinfo
        cache = Cache(a.work / "cache" / tag)
        fill(cache, [it for it in items if it.id not in cache.index], embed, f"embeddings of {label}")
        e = cache.get(keys).astype(np.float64)
        e /= np.linalg.norm(e, axis=1, keepdims=True) + 1e-12
        sysname = name if model in (None, "resemblyzer") else f"model:{model}"
        scores[sysname] = np.einsum("ij,ij->i", e[trials.a], e[trials.b])
        labels[sysname] = SYSTEM_NAMES.get(name, f"`{model}`")
        log(f"devsuite: {label} ready ({time.time() - t0:.0f} s)")
    if not scores:
        sys.exit("devsuite: no system could be scored")

    spk = np.array([it.speaker for it in items])
    reference = "default" if "default" in scores else None
    results = []
    for n, (name, mask) in enumerate(parts(items, trials, speech_s)):
        results.append(score_part(name, spk[trials.a[mask]], spk[trials.b[mask]], trials.target[mask],
                                  {k: v[mask] for k, v in scores.items()}, replicates, a.seed + n, reference))
    systems = list(scores)
    write_trials(a.work, items, trials, quality, scores)
    elapsed = time.time() - t_start
    print(table(results, systems, labels))
    if reference is not None and len(systems) > 1:
        print()
        print(diff_table(results, systems, labels, reference))
    print(f"\n{'Quick suite' if a.quick else 'Full suite'}: {len(clean)} clean files of held-out speakers, "
          f"{len(items) - len(clean)} degraded probes (conditions on the probe side only; enrolment clean), "
          f"{replicates} speaker-bootstrap replicates, {elapsed / 60:.1f} min.")
    if a.json is not None:
        doc = {"quick": a.quick, "bootstrap": replicates, "seconds": round(elapsed, 1), "systems": labels,
               "parts": [r.__dict__ for r in results]}
        a.json.write_text(json.dumps(_finite(doc), indent=1) + "\n", encoding="utf-8")


def _finite(x: object) -> object:
    """`x` with NaN (a part or replicate without an EER) as null, so the JSON is strict."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def write_trials(work: Path, items: list[Item], trials: Trials, quality: np.ndarray, scores: dict[str, np.ndarray]) -> None:
    """WORK/items.tsv (key, path, speaker, corpus, condition, seconds, speech and sure-speech seconds) and
    WORK/trials.tsv (enrolment and probe keys, label, corpus, condition, both sides' speech seconds, each system's
    score): the input of a duration-aware calibration."""
    with open(work / "items.tsv", "w", encoding="utf-8") as f:
        f.write("key\tpath\tspeaker\tcorpus\tcondition\tseconds\tspeech_s\tsure_speech_s\n")
        for it, q in zip(items, quality):
            f.write(f"{it.key}\t{it.path}\t{it.speaker}\t{it.corpus}\t{it.condition}\t{q[0]:.3f}\t{q[1]:.3f}\t{q[2]:.2f}\n")
    cols = ["enroll", "probe", "target", "corpus", "condition", "enroll_speech_s", "probe_speech_s", *scores]
    with open(work / "trials.tsv", "w", encoding="utf-8") as f:
        f.write("\t".join(cols) + "\n")
        for n in range(len(trials.a)):
            ia, ib = trials.a[n], trials.b[n]
            corpus, cond = trials.group[n].split("|")
            row = [items[ia].key, items[ib].key, "target" if trials.target[n] else "nontarget", corpus, cond,
                   f"{quality[ia, 1]:.3f}", f"{quality[ib, 1]:.3f}", *[f"{v[n]:.5f}" for v in scores.values()]]
            f.write("\t".join(row) + "\n")


if __name__ == "__main__":
    main()

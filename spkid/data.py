"""Training data: speaker splits, random crops of audio or feature files, speaker-balanced batches.

Everything here is numpy (it runs in DataLoader workers). Every random choice is drawn from a seed that the
batch sampler hands out with each index, so a run is repeatable whatever the number of workers, and a resumed
run draws exactly what an uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from spkid.audio import check_samples
from spkid.augment import AugmentConfig, Augmenter
from spkid.errors import SpkidError
from spkid.frontends import Frontend, read_feature_config
from spkid.lists import Entry, plural


@dataclass(frozen=True)
class Utterance:
    path: str
    speaker: str
    length: int  # samples (audio) or frames (features)


def scan(entries: Sequence[Entry]) -> tuple[list[Utterance], bool]:
    """Utterances with their lengths, and whether the list holds feature files (`.npy`) rather than audio.

    Labels are required (DESIGN.md: a LABEL column or the parent folder). Mixed lists are refused.
    """
    if not entries:
        raise SpkidError("the training list is empty")
    is_feat = [e.path.endswith(".npy") for e in entries]
    if any(is_feat) and not all(is_feat):
        raise SpkidError("the training list mixes feature files (.npy) and audio; give one kind")
    utts = []
    for e in entries:
        if e.label is None:
            raise SpkidError(f"{e.path}: no speaker label (add PATH<TAB>LABEL or put files in speaker folders)")
        if is_feat[0]:
            try:
                arr = np.load(e.path, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise SpkidError(f"{e.path}: no such file") from None
            except (ValueError, OSError) as err:
                raise SpkidError(f"{e.path}: not a feature .npy ({err})") from None
            if arr.ndim != 2 or arr.dtype.kind != "f":
                raise SpkidError(f"{e.path}: features must be float (frames, dims), got {arr.dtype} {arr.shape}")
            length = arr.shape[0]
        else:
            try:
                info = sf.info(e.path)
            except FileNotFoundError:
                raise SpkidError(f"{e.path}: no such file") from None
            except (RuntimeError, sf.LibsndfileError) as err:
                raise SpkidError(f"{e.path}: cannot read audio ({err}); run `spkid convert` first") from None
            if info.channels != 1:
                raise SpkidError(f"{e.path}: has {info.channels} channels, expected mono; run `spkid convert` first")
            length = info.frames
        utts.append(Utterance(e.path, e.label, length))
    return utts, is_feat[0]


def samples_for(fe: Frontend, frames: int) -> int:
    """Samples that give at least `frames` frames (the front end's window is at most 4 hops longer)."""
    return (frames + 4) * fe.frame_step


def find_feature_config(paths: Sequence[str]) -> Frontend:
    """The front end of the `features.json` that `spkid features` wrote above the feature files (searched upwards)."""
    for parent in Path(paths[0]).resolve().parents:
        cand = parent / "features.json"
        if cand.is_file():
            return read_feature_config(cand)
    raise SpkidError(f"no features.json found above {paths[0]}; train from the folder `spkid features -d` wrote")


def split_speakers(speakers: Sequence[str], n_val: int, seed: int) -> tuple[list[str], list[str]]:
    """Sorted (train, validation) speaker lists; `n_val` speakers drawn with `seed`, disjoint from training."""
    spk = sorted(set(speakers))
    if n_val <= 0:
        return spk, []
    if n_val >= len(spk):
        raise SpkidError(f"{plural(len(spk), 'speaker')} cannot spare {n_val} for validation; lower --val-speakers")
    rng = np.random.default_rng(seed)
    val = set(rng.choice(spk, size=n_val, replace=False).tolist())
    return [s for s in spk if s not in val], sorted(val)


class BalancedBatches:
    """Speaker-balanced batches of `(utterance index, crop seed)` for epoch `e`, sharded across ranks.

    Classification losses: each item picks a speaker uniformly, then one of its utterances. N x M losses
    (GE2E, triplet): each batch holds `n_spk` speakers x `m_utt` utterances, rows grouped by speaker.
    Each rank gets every `world`-th slice of each global batch, so ranks see disjoint data of equal size.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, batches: int, seed: int, m_utt: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        self.labels = np.asarray(labels)
        self.by_spk = [np.flatnonzero(self.labels == s) for s in range(int(self.labels.max()) + 1)]
        self.batch_size, self.batches, self.seed, self.m_utt = batch_size, batches, seed, m_utt
        self.rank, self.world = rank, world
        self.epoch = 0
        if m_utt and batch_size % m_utt:
            raise SpkidError(f"batch size {batch_size} must be a multiple of utterances per speaker {m_utt}")
        if m_utt and batch_size // m_utt > len(self.by_spk):
            raise SpkidError(f"{plural(batch_size // m_utt, 'speaker')} per batch, but only {len(self.by_spk)} in training")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        per_rank = self.batch_size
        total = per_rank * self.world
        for _ in range(self.batches):
            if self.m_utt:
                n_spk = total // self.m_utt
                spks = rng.choice(len(self.by_spk), size=n_spk, replace=False)
                idx = np.concatenate([rng.choice(self.by_spk[s], self.m_utt, replace=len(self.by_spk[s]) < self.m_utt)
                                      for s in spks])
            else:
                spks = rng.integers(0, len(self.by_spk), size=total)
                idx = np.array([rng.choice(self.by_spk[s]) for s in spks])
            seeds = rng.integers(0, 2**62, size=total)
            lo = self.rank * per_rank
            yield [(int(i), int(s)) for i, s in zip(idx[lo:lo + per_rank], seeds[lo:lo + per_rank])]


class CropSet:
    """Random fixed-length crops of utterances as `(frames, dims)` float32 features (a map-style dataset).

    Audio is read with soundfile seeking (only the crop), augmented, then turned into features by the model's
    front end (`frontends.frontend`: `spkid.features`, or a pretrained model's own); feature files are memory-mapped. Utterances shorter than a crop are tiled
    (repeat padding, as WeSpeaker and the DeepSpeaker ResCNN recipe do) rather than zero-padded.
    With `speed_as_speakers`, the copy at the k-th speed factor gets label `label + k * n_speakers`.
    `crop_frames` may be a `(min, max)` range: then each batch draws its own length (BLSTM's 0.25-2 s windows);
    the sampler's seed picks it, so all items of a batch share it.
    """

    def __init__(self, utts: Sequence[Utterance], labels: Sequence[int], feats: Frontend, is_feat: bool,
                 crop_frames: tuple[int, int], augment: AugmentConfig | None = None,
                 speed_as_speakers: bool = False) -> None:
        self.utts, self.labels, self.feats, self.is_feat = list(utts), list(labels), feats, is_feat
        self.n_speakers = max(self.labels) + 1 if self.labels else 0
        self.speed_as_speakers = speed_as_speakers
        self.crop_frames = crop_frames
        self.augment = augment if augment is not None and (augment.noise or augment.reverb or augment.speed
                                                           or augment.gain or augment.telephone
                                                           or augment.specaug) else None
        self._augmenter: Augmenter | None = None

    def __len__(self) -> int:
        return len(self.utts)

    def frames_for(self, batch_seed: int) -> int:
        lo, hi = self.crop_frames
        return lo if lo == hi else int(np.random.default_rng(batch_seed).integers(lo, hi + 1))

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[np.ndarray, int]:
        index, seed, frames = item
        rng = np.random.default_rng(seed)
        u = self.utts[index]
        label = self.labels[index]
        if self.is_feat:
            arr = np.load(u.path, mmap_mode="r", allow_pickle=False)
            x = _crop(arr, frames, rng).astype(np.float32)
        else:
            speed = 1.0
            if self.augment is not None and self.augment.speed:
                k = int(rng.integers(len(self.augment.speed_factors)))
                speed = float(self.augment.speed_factors[k])
                if self.speed_as_speakers:
                    label += k * self.n_speakers  # a speed-perturbed copy is a new speaker (Kaldi, WeSpeaker)
            need = int(np.ceil(samples_for(self.feats, frames) * speed)) + 1
            start = int(rng.integers(0, u.length - need + 1)) if u.length > need else 0
            wave, _ = sf.read(u.path, start=start, frames=min(need, u.length), dtype="float32")
            check_samples(wave, u.path, start)
            if self.augment is not None:
                aug = Augmenter(_without_speed(self.augment), rng)
                if speed != 1.0:
                    from spkid.augment import speed_perturb

                    wave = speed_perturb(wave, speed)
                wave = aug(wave, self.feats.sample_rate).astype(np.float32)
            wave = _tile(self.feats.prepare(wave), samples_for(self.feats, frames))
            x = self.feats.compute(wave)[:frames]
        if self.augment is not None and self.augment.specaug:
            x = Augmenter(self.augment, rng).spec_augment(x)
        return np.ascontiguousarray(x, dtype=np.float32), label


def _without_speed(cfg: AugmentConfig) -> AugmentConfig:
    from dataclasses import replace

    return replace(cfg, speed=False, specaug=False)


def _tile(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) >= n:
        return x[:n]
    if len(x) == 0:
        return np.zeros(n, x.dtype)
    return np.tile(x, int(np.ceil(n / len(x))))[:n]


def _crop(arr: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    if len(arr) > frames:
        start = int(rng.integers(0, len(arr) - frames + 1))
        return np.asarray(arr[start:start + frames])
    reps = int(np.ceil(frames / max(len(arr), 1)))
    return np.tile(np.asarray(arr), (reps, 1))[:frames]


def load_utterance(u: Utterance, feats: Frontend, is_feat: bool, max_frames: int) -> np.ndarray:
    """The whole utterance's features (its first `max_frames`), for validation."""
    if is_feat:
        return np.asarray(np.load(u.path, mmap_mode="r", allow_pickle=False)[:max_frames], dtype=np.float32)
    wave, _ = sf.read(u.path, frames=min(u.length, samples_for(feats, max_frames)), dtype="float32")
    check_samples(wave, u.path)
    return feats.compute(feats.prepare(wave))[:max_frames]

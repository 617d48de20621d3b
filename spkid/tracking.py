"""Who speaks when: a long recording cut into sliding windows, each window's decision merged into runs.

`Track.load` reads the recording at the model's rate (`Preparer`'s front end), finds its voiced parts and plans
windows of `window_s` seconds every `hop_s` seconds (`sliding_starts`); a window is scored only when at least
`MIN_VOICED` of it is voiced (and `MIN_WINDOW_SPEECH_S` in all). `Track.windows` yields their `Prepared`
windows lazily (features are computed group by group, `group_by_windows`, as the network takes them, so memory
does not grow with the recording); `Track.runs` turns the kept windows' decisions into `(start, end, speaker,
score, windows)` runs in seconds, each window speaking for the part of the timeline nearest its centre
(`window_cores`). Running the network is `spkid.embedding`'s job. No torch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spkid.utterance import EMBED_VAD, Prepared, Preparer, Quality

log = logging.getLogger(__name__)

WINDOW_S = 2.0
HOP_S = 0.5
MIN_VOICED = 0.5  # a window with less voiced audio than this fraction is silence
MIN_WINDOW_SPEECH_S = 0.25
GROUP_WINDOWS = 512  # windows gathered from many utterances before running the network

Run = tuple[float, float, str, float, int]  # (start, end, speaker, mean score, windows)


@dataclass
class Track:
    """A recording at the model's rate (`signal`, after the front end's `prepare`), its voiced `[start, end)`
    sample ranges `segs` `(K, 2)`, and its `win`-sample windows: `starts` (samples), `kept` (indices of the
    windows voiced enough to be scored)."""

    signal: np.ndarray
    rate: int
    segs: np.ndarray
    win: int
    starts: np.ndarray
    kept: np.ndarray

    @classmethod
    def load(cls, path: str, prep: Preparer, window_s: float = WINDOW_S, hop_s: float = HOP_S,
             use_vad: bool = True) -> Track:
        """Read `path`, resample it to the front end's rate, find its voice (the whole recording without VAD, or
        when the VAD cannot run at that rate) and plan its windows."""
        from spkid import audio, vad

        x, sr = audio.load(path)
        rate = prep.front.sample_rate
        if sr != rate:
            log.warning("%s: recorded at %d Hz, resampled to %d Hz", path, sr, rate)
            x = audio.resample(x, sr, rate)
        x = prep.front.prepare(x)
        n = len(x)
        segs = (vad.segments(x, rate, vad.VadConfig(**EMBED_VAD), vad.load_model(vad.EMBED_MODEL_PATH))
                if use_vad and rate == vad.SAMPLE_RATE else np.array([[0, n]], np.int64))
        win, step = int(round(window_s * rate)), max(1, int(round(hop_s * rate)))
        starts = sliding_starts(n, win, step)
        kept = [i for i, a in enumerate(starts) if _voiced_enough(segs, int(a), min(n, int(a) + win), rate)]
        return cls(x, rate, segs, win, starts, np.array(kept, np.int64))

    def windows(self, prep: Preparer) -> Iterator[Prepared]:
        """The network's windows of each kept window's voiced audio, in order, computed as they are taken."""
        n = len(self.signal)
        for i in self.kept:
            a = int(self.starts[i])
            voiced = voiced_in(self.segs, a, min(n, a + self.win))
            seconds = int((voiced[:, 1] - voiced[:, 0]).sum()) / self.rate
            sig = np.concatenate([self.signal[s:e] for s, e in voiced])
            # once each: windows overlap (hop 0.5 s of 2 s), and a fusion's speed copies would triple the time
            yield prep.prepared(sig, Quality(seconds, seconds), copies=False)

    def speech_seconds(self) -> np.ndarray:
        """Seconds of voiced audio in each kept window (what `windows` embeds of it), in `kept` order."""
        n = len(self.signal)
        out = np.zeros(len(self.kept))
        for j, i in enumerate(self.kept):
            a = int(self.starts[i])
            voiced = voiced_in(self.segs, a, min(n, a + self.win))
            out[j] = int((voiced[:, 1] - voiced[:, 0]).sum()) / self.rate
        return out

    def runs(self, speakers: Sequence[str | None], scores: np.ndarray) -> list[Run]:
        """Runs in seconds from each kept window's speaker (None: rejected) and score, in `kept` order."""
        decisions: list[str | None] = [None] * len(self.starts)
        window_scores = np.zeros(len(self.starts))
        for j, i in enumerate(self.kept):
            window_scores[i] = scores[j]
            decisions[i] = speakers[j]
        begin, end = window_cores(self.starts, self.win, len(self.signal))
        return merge_runs(decisions, window_scores, begin / self.rate, end / self.rate)


def _voiced_enough(segs: np.ndarray, a: int, b: int, rate: int) -> bool:
    voiced = voiced_in(segs, a, b)
    length = int((voiced[:, 1] - voiced[:, 0]).sum())
    return not (length < MIN_VOICED * (b - a) or length / rate < MIN_WINDOW_SPEECH_S)


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


def merge_runs(decisions: Sequence[str | None], scores: np.ndarray, begin: np.ndarray, end: np.ndarray) -> list[Run]:
    """Merge consecutive windows with the same decision (None = no speaker: silence or rejected) into
    (begin, end, speaker, mean score, windows) runs, in the units of `begin`/`end`."""
    runs: list[Run] = []
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


def format_runs(runs: Sequence[Run], threshold: float | None, path: str, as_json: bool) -> str:
    """`START<TAB>END<TAB>SPEAKER<TAB>SCORE` lines (seconds), or JSON lines with the windows, threshold and file."""
    if as_json:
        return "".join(json.dumps({"start": round(a, 3), "end": round(b, 3), "speaker": spk, "score": sc, "windows": w,
                                   "threshold": threshold, "file": path}, ensure_ascii=False) + "\n"
                       for a, b, spk, sc, w in runs)
    return "".join(f"{a:.2f}\t{b:.2f}\t{spk}\t{sc:.6f}\n" for a, b, spk, sc, w in runs)

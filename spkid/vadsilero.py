"""silero-vad (MIT) as an alternative engine of `spkid vad`, through onnxruntime: numpy only, no torch.

The weights are those of the `silero-vad` package (`pip install silero-vad --no-deps`: its wheel holds them; spkid
does not ship them). Its "sequence" ONNX form takes many 32 ms frames (512 samples, each with the 64 samples before
it) in one call and carries the recurrent state from call to call, so a long recording costs a few calls, not one
per frame. `scripts/train_vad.py` uses the same probabilities as soft targets for spkid's own network.

    >>> from spkid import vadsilero
    >>> p = vadsilero.speech_prob(x)          # (len(x) // 160,) float32, one per 10 ms, like vad.speech_prob
    >>> segs = vadsilero.segments(x)          # int64 (K, 2), silero's default post-processing
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from spkid.errors import SpkidError

SAMPLE_RATE = 16000
FRAME = 512  # samples per silero frame (32 ms)
CONTEXT = 64  # samples of the previous frame each frame is given
BLOCK = 512  # frames per onnxruntime call (16 s)
STATE = 128
MODEL_FILE = "silero_vad_16k_sequence.onnx"
# silero-vad's own defaults for turning probabilities into segments
THRESHOLD = 0.5
MIN_SPEECH_S = 0.25
MIN_SILENCE_S = 0.1
PAD_S = 0.03


def model_path() -> Path:
    """The sequence ONNX file inside the installed `silero-vad` package (found without importing it: it imports
    torch), or SpkidError saying how to install it."""
    spec = importlib.util.find_spec("silero_vad")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "data" / MODEL_FILE
        if path.is_file():
            return path
    raise SpkidError(f"the silero engine needs the silero-vad package's weights ({MODEL_FILE}): "
                     f"`pip install silero-vad --no-deps` (onnxruntime is needed too, torch is not)")


class SileroModel:
    """An onnxruntime session of silero-vad's sequence model, one thread."""

    def __init__(self, path: str | Path | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise SpkidError("the silero engine needs onnxruntime: `pip install onnxruntime`") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.path = Path(path) if path else model_path()
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])

    def frame_prob(self, x: np.ndarray) -> np.ndarray:
        """Speech probability of each 512-sample frame `(ceil(len / 512),)` of a 16 kHz float32 signal."""
        n = -(-len(x) // FRAME)
        if n == 0:
            return np.zeros(0, np.float32)
        h = np.zeros((1, 1, STATE), np.float32)
        c = np.zeros((1, 1, STATE), np.float32)
        out = []
        for a in range(0, n, BLOCK):
            b = min(n, a + BLOCK)
            frames = np.zeros((b - a, CONTEXT + FRAME), np.float32)
            lo = a * FRAME - CONTEXT  # the block's first sample, context included
            flat = np.zeros((b - a) * FRAME + CONTEXT, np.float32)
            src = x[max(lo, 0) : b * FRAME]
            flat[max(lo, 0) - lo : max(lo, 0) - lo + len(src)] = src
            # frame k of the block: samples [lo + k FRAME, lo + k FRAME + CONTEXT + FRAME)
            frames[:] = np.lib.stride_tricks.as_strided(flat, (b - a, CONTEXT + FRAME),
                                                        (flat.strides[0] * FRAME, flat.strides[0]))
            p, h, c = self.session.run(["speech_probs", "hn", "cn"], {"input": frames, "h": h, "c": c})
            out.append(np.asarray(p, np.float32).reshape(-1))
        return np.concatenate(out)


@lru_cache(maxsize=2)
def load_model(path: str | None = None) -> SileroModel:
    return SileroModel(path)


def speech_prob(x: np.ndarray, model: SileroModel | None = None) -> np.ndarray:
    """silero's probabilities on the 10 ms grid of `spkid.vad.speech_prob`: `(len(x) // 160,)` float32; each 10 ms
    frame takes the probability of the 32 ms frame that holds its centre."""
    p = (model or load_model()).frame_prob(np.asarray(x, np.float32))
    n10 = len(x) // 160
    return p[np.minimum((np.arange(n10) * 160 + 80) // FRAME, max(len(p) - 1, 0))] if n10 else p[:0]


def segments_from_frame_prob(p: np.ndarray, n_samples: int, threshold: float = THRESHOLD,
                             min_speech: float = MIN_SPEECH_S, min_silence: float = MIN_SILENCE_S,
                             pad: float = PAD_S) -> np.ndarray:
    """silero's post-processing of its 32 ms probabilities: a segment starts at a frame >= `threshold` and ends
    where the probability stays under `threshold - 0.15` for `min_silence`; segments under `min_speech` are
    dropped; each is padded by `pad` (halfway when the pause to the next is under twice that).
    int64 `(K, 2)` [start, end) in samples."""
    off = max(threshold - 0.15, 0.01)
    segs: list[list[int]] = []
    start, quiet_from = None, None
    for i, v in enumerate(p):
        t = i * FRAME
        if start is None:
            if v >= threshold:
                start, quiet_from = t, None
            continue
        if v >= threshold:
            quiet_from = None
        elif v < off:
            quiet_from = t if quiet_from is None else quiet_from
            if t - quiet_from >= min_silence * SAMPLE_RATE:
                if quiet_from - start > min_speech * SAMPLE_RATE:
                    segs.append([start, quiet_from])
                start, quiet_from = None, None
    if start is not None and n_samples - start > min_speech * SAMPLE_RATE:
        segs.append([start, n_samples])
    padding = int(pad * SAMPLE_RATE)
    for k, seg in enumerate(segs):
        nxt = segs[k + 1] if k + 1 < len(segs) else None
        if k == 0:
            seg[0] = max(0, seg[0] - padding)
        if nxt is None:
            seg[1] = min(n_samples, seg[1] + padding)
            continue
        gap = nxt[0] - seg[1]
        if gap < 2 * padding:
            seg[1] += gap // 2
            nxt[0] -= gap // 2
        else:
            seg[1] += padding
            nxt[0] -= padding
    return np.asarray(segs, np.int64).reshape(-1, 2)


def segments(x: np.ndarray, model: SileroModel | None = None, **kw: float) -> np.ndarray:
    """Voiced segments by silero-vad at its default settings (or `threshold`, `min_speech`, `min_silence`, `pad`)."""
    x = np.asarray(x, np.float32)
    return segments_from_frame_prob((model or load_model()).frame_prob(x), len(x), **kw)

"""The MFCC mean+std floor: per-utterance mean and std of frame features, as a keyed embedding matrix.

Usage: spkid features -k mfcc ... < audio.txt | python recipes/stats_pool.py audio.txt > floor.npy

Reads the feature list (`spkid features` output, same order as AUDIO_LIST) on stdin and writes the keyed
matrix `spkid verify --trials -e` scores, keyed by the audio paths of AUDIO_LIST so the trials find them.
The statistics are centred on their mean over the list: the cosine of raw MFCC statistics is dominated by
the mean every utterance shares (bench/train_compare.py's floor does the same).
"""

from __future__ import annotations

import sys

import numpy as np

from spkid import streams


def stats(feats: np.ndarray) -> np.ndarray:
    """Per-dimension mean and std of one utterance's frames `(frames, dims)`: float64 `(2 * dims,)`."""
    f = np.asarray(feats, dtype=np.float64)
    return np.concatenate([f.mean(0), f.std(0)])


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__.splitlines()[2])
    audio = streams.read_list([sys.argv[1]])
    feats = streams.read_list(None)
    if len(audio) != len(feats):
        sys.exit(f"stats_pool: {len(feats)} feature files for {len(audio)} audio files")
    emb = np.stack([stats(np.load(e.path, allow_pickle=False)) for e in feats])
    streams.write_keyed([e.path for e in audio], (emb - emb.mean(0)).astype(np.float32))


if __name__ == "__main__":
    main()

"""Benchmark `spkid embed --model resemblyzer` against the resemblyzer package itself, on one CPU thread.

Needs the `pretrained` extra (`pip install resemblyzer`). Both run in this process, one after the other, so their
ratio is measured under the same machine load; CPU time (`time.process_time`) is reported beside wall time because
shared machines make wall time noisy.

1. Same waveform: N utterances, preprocessed by the package (`preprocess_wav`), cut to 3 s and volume-normalised. The package's
   `embed_utterance` one by one, against spkid's embedder (same front end, same partials, VAD off) batching the
   partials of all utterances. Also the largest difference between the two embeddings.
2. End to end on ../shared/data/librispeech_tc100 (711 files): the package's `preprocess_wav(path)` (librosa load,
   volume normalisation, webrtcvad trimming) + `embed_utterance`, against spkid reading the files with its own VAD
   (`Embedder.embed_files`, what `spkid embed --model resemblyzer` runs), for each --hop given. EER over all pairs
   of files (target = same speaker), and the floor of a 20-MFCC mean+std embedding.

    python bench/embed.py                       # all files, hops 0.77 (resemblyzer's) and 1.6
    python bench/embed.py --limit 200 --n3 32   # quicker
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "librispeech_tc100"


class Clock:
    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def eer_all_pairs(emb: np.ndarray, speakers: list[str]) -> float:
    from spkid import metrics

    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    s = e @ e.T
    spk = np.array(speakers)
    iu = np.triu_indices(len(spk), 1)
    same = spk[iu[0]] == spk[iu[1]]
    return metrics.eer(s[iu][same], s[iu][~same])[0]


def mfcc_floor(paths: list[str]) -> np.ndarray:
    from spkid import audio, features

    cfg = features.FeatureConfig(kind="mfcc", n_ceps=20, n_filters=40)
    out = []
    for p in paths:
        f = features.compute(audio.load(p)[0], cfg)
        out.append(np.concatenate([f.mean(0), f.std(0)]))
    x = np.array(out)
    return (x - x.mean(0)) / (x.std(0) + 1e-9)


def timed_forward(enc) -> list[float]:
    """Wrap the package encoder's forward to add its CPU seconds to the returned one-element list."""
    total = [0.0]
    inner = enc.forward

    def forward(*a, **k):
        t = time.process_time()
        try:
            return inner(*a, **k)
        finally:
            total[0] += time.process_time() - t

    enc.forward = forward
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--n3", type=int, default=64, help="3-second utterances for the same-waveform comparison")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0, help="files for the end-to-end run (0 = all)")
    ap.add_argument("--hops", default="0.77,1.6", help="spkid --hop values (s) for the end-to-end run")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import soundfile as sf
    from resemblyzer import VoiceEncoder, preprocess_wav
    from resemblyzer.audio import normalize_volume

    from spkid.embedding import Embedder

    rows = list(csv.DictReader(open(args.data / "utterances.tsv", encoding="utf-8"), delimiter="\t"))
    if args.limit:
        rows = rows[: args.limit]
    paths = [str(args.data / r["path"]) for r in rows]
    speakers = [r["speaker_id"] for r in rows]
    enc = VoiceEncoder("cpu", verbose=False)
    net_cpu = timed_forward(enc)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")

    # 1. same waveform, 3 s each
    w3 = []
    for p in paths:
        w = preprocess_wav(sf.read(p, dtype="float32")[0])
        if len(w) >= 48000:
            w3.append(normalize_volume(w[:48000], -30, increase_only=True))  # spkid's prepare() is then a no-op
        if len(w3) == args.n3:
            break
    exact = Embedder.from_model("resemblyzer", use_vad=False, batch_size=args.batch_size)
    for w in w3[:2]:
        enc.embed_utterance(w)
    exact.embed_signals(w3[:4], 16000)
    ratios, pk, sp = [], [], []
    for _ in range(args.reps):
        with Clock() as a:
            ref = np.stack([enc.embed_utterance(w) for w in w3])
        with Clock() as b:
            mine = exact.embed_signals(w3, 16000)
        pk.append(a)
        sp.append(b)
        ratios.append(a.cpu / b.cpu)
    i = int(np.argsort(ratios)[len(ratios) // 2])
    print(f"\n## Same waveform: {len(w3)} utterances of 3 s, one thread (median of {args.reps} runs)\n")
    print("| | utterances/s (CPU time) | utterances/s (wall) |")
    print("|---|---|---|")
    print(f"| resemblyzer `embed_utterance` | {len(w3) / pk[i].cpu:.1f} | {len(w3) / pk[i].wall:.1f} |")
    print(f"| spkid (batched partials) | {len(w3) / sp[i].cpu:.1f} | {len(w3) / sp[i].wall:.1f} |")
    print(f"| ratio | {pk[i].cpu / sp[i].cpu:.2f}x | {pk[i].wall / sp[i].wall:.2f}x |")
    print(f"\nlargest |difference| of embeddings: {np.abs(ref - mine).max():.2e}")

    # 2. end to end over the corpus
    print(f"\n## End to end: {len(paths)} files, {sum(float(r['duration_s']) for r in rows) / 60:.1f} min of audio, one thread\n")
    print("| system | files/s (CPU) | files/s (wall) | speed-up (CPU) | EER all pairs |")
    print("|---|---|---|---|---|")
    net_cpu[0] = 0.0
    with Clock() as c:
        pkg = np.stack([enc.embed_utterance(preprocess_wav(p)) for p in paths])
    base = c.cpu
    pkg_net = net_cpu[0]
    print(f"| resemblyzer `preprocess_wav` + `embed_utterance` | {len(paths) / c.cpu:.1f} | {len(paths) / c.wall:.1f} | 1.00x | "
          f"{100 * eer_all_pairs(pkg, speakers):.2f} % |")
    for hop in [float(h) for h in args.hops.split(",")]:
        emb = Embedder.from_model("resemblyzer", hop_s=hop, batch_size=args.batch_size)
        with Clock() as c:
            e = emb.embed_files(paths)
        print(f"| spkid embed --model resemblyzer --hop {hop:g} (spkid VAD) | {len(paths) / c.cpu:.1f} | {len(paths) / c.wall:.1f} | "
              f"{base / c.cpu:.2f}x | {100 * eer_all_pairs(e, speakers):.2f} % |")
    emb = Embedder.from_model("resemblyzer", use_vad=False, batch_size=args.batch_size)
    with Clock() as c:
        e = emb.embed_signals([preprocess_wav(p) for p in paths], 16000)
    print(f"| spkid on the package's preprocessed audio (webrtcvad trim) | {len(paths) / c.cpu:.1f} | {len(paths) / c.wall:.1f} | "
          f"{base / c.cpu:.2f}x | {100 * eer_all_pairs(e, speakers):.2f} % |")
    print(f"| floor: 20 MFCC mean+std | | | | {100 * eer_all_pairs(mfcc_floor(paths), speakers):.2f} % |")
    print(f"\nThe package spent {pkg_net:.1f} s of its {base:.1f} s CPU in the LSTM's forward pass ({pkg_net / base:.0%}). "
          f"Running the same network on the same partials, no implementation can be more than {base / pkg_net:.2f}x "
          "faster (the rest of its time would have to be free); beyond that only fewer or cheaper partials help.")


if __name__ == "__main__":
    main()

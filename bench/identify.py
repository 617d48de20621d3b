"""Benchmark the identification search (`spkid.search`, what `spkid identify` runs) on one core.

Random galleries of 100,000 and 1,000,000 enrolled speakers (192-d float32, unit rows) are written as
`embeddings.npy` and searched memory-mapped, as `spkid identify` reads them. Measured:
- single-query latency (median of many queries; page cache warm, and the first query of a fresh map),
- 1,000 queries against 100,000 speakers in one call,
against a baseline measured in the same run: numpy brute force on the in-memory matrix (`q @ G.T`, then
`argpartition` + sort of the candidates). Results are checked to agree.

Targets: one query < 20 ms (100k) and < 200 ms (1M); 1,000 queries x 100k < 2 s.

    python bench/identify.py                  # 100k and 1M (needs ~1 GB in --dir and ~2 GB of RAM)
    python bench/identify.py --sizes 100000   # quicker
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from spkid import search  # noqa: E402

DIM = 192


def make_gallery(path: Path, n: int, seed: int = 0) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    rng = np.random.default_rng(seed)
    for a in range(0, n, 100_000):
        b = min(n, a + 100_000)
        x = rng.standard_normal((b - a, DIM), dtype=np.float32)
        out[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    del out


def queries(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(q: np.ndarray, g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ g.T
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(s, part, 1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, 1), np.take_along_axis(vals, order, 1)


def timed(fn, *args):
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "spkid-bench-identify")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--n-single", type=int, default=30)
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"one thread, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, k={args.k}, {DIM}-d float32\n")
    print("| gallery | measurement | spkid.search (mmap) wall / CPU | brute force in RAM wall / CPU | target |")
    print("|---|---|---|---|---|")
    for n in [int(s) for s in args.sizes.split(",")]:
        path = args.dir / f"g{n}.npy"
        if not path.exists():
            make_gallery(path, n)
        g_map = np.load(path, mmap_mode="r", allow_pickle=False)
        q1 = queries(args.n_single + 1, seed=1)
        (i0, _), first_w, first_c = timed(search.top_k, q1[:1], g_map, args.k)
        walls, cpus = [], []
        for j in range(1, len(q1)):
            (i, s), w, c = timed(search.top_k, q1[j : j + 1], g_map, args.k)
            walls.append(w)
            cpus.append(c)
        g_ram = np.ascontiguousarray(g_map)
        bw, bc = [], []
        for j in range(1, len(q1)):
            (bi, bs), w, c = timed(brute, q1[j : j + 1], g_ram, args.k)
            bw.append(w)
            bc.append(c)
        assert np.array_equal(i, bi), "search disagrees with brute force"
        target = {100_000: "< 20 ms", 1_000_000: "< 200 ms"}.get(n, "")
        ms = lambda x: f"{1000 * np.median(x):.1f} ms"  # noqa: E731
        print(f"| {n:,} | 1 query, first on a fresh map | {1000 * first_w:.1f} / {1000 * first_c:.1f} ms | | |")
        print(f"| {n:,} | 1 query, median of {len(walls)} | {ms(walls)} / {ms(cpus)} | {ms(bw)} / {ms(bc)} | {target} |")
        if n == 100_000:
            qs = queries(1000, seed=2)
            (si, ss), w, c = timed(search.top_k, qs, g_map, args.k)
            (bi, bs), bw1, bc1 = timed(brute, qs, g_ram, args.k)
            agree = np.mean(np.all(si == bi, axis=1))
            print(f"| {n:,} | 1,000 queries at once | {w:.2f} / {c:.2f} s | {bw1:.2f} / {bc1:.2f} s | < 2 s |")
            print(f"\n(1,000-query results agree with brute force for {100 * agree:.1f} % of queries; "
                  f"score gap where not: {np.abs(ss - bs).max():.1e})\n" if agree < 1 else "")
        del g_ram, g_map


if __name__ == "__main__":
    main()

"""Benchmark identification search at scale: exact search (`spkid.search`, the baseline) against the gallery's
search index (`spkid.ann`, faiss, candidates re-ranked exactly by `spkid.decisions.rank`), in one run.

Galleries are built through spkid itself (`gallery.updated`, `gallery.with_index`, `gallery.save`) from clustered
synthetic embeddings: speakers with several utterances each, enrolled with aggregation "all" (one row per
utterance, a speaker scored by its best row, `identify`'s default), read back memory-mapped with the index as
`spkid identify` reads them. Two generators:
- `real` (default): 256-d, shaped like the bundled model's embeddings, measured on 1,711 utterances of 503 speakers
  (librispeech_tc100 + speechocean762, `spkid embed`): a common direction of norm 0.69, between-speaker spread over
  ~23 effective dimensions, within-speaker over ~84 (participation ratios; power-law spectra in random
  orientations), variances 0.35 and 0.21, set so that the cosines come out as measured (same speaker 0.80 against
  0.80 measured, different speakers 0.46 against 0.475);
- `isotropic`: 192-d, speakers in uniformly random directions, same-speaker cosine 0.75: the hardest case for an
  inverted-file index (no structure to exploit).
Queries: new utterances of enrolled speakers (genuine) and utterances of speakers never enrolled (impostors).

Measured per size: index build time (2 threads, as `spkid enroll` runs it), index size against the float32 matrix,
one-query latency on one thread (median; exact and indexed, for the best two speakers as `identify` asks by
default, and indexed for the top 10), recall@1 and recall@10 of the indexed search against
the exact one (speakers, genuine queries; impostor queries separately: their best match is a near tie among
strangers), the share of impostor decisions (a name or `unknown` at the exact search's equal-error threshold) that
agree, the private memory of a process answering 200 queries (the matrix is memory-mapped: its pages are the page
cache's, shared), and the whole `spkid identify` process for one query.

Goals at 10⁶ rows: one query ≤ 2 ms, recall@1 ≥ 0.995, build ≤ 5 min on 2 cores, memory ≤ 1.5× the float32 matrix.

    python bench/identify.py                                   # 10⁵ and 10⁶ rows, real-like (~10 min, ~6 GB disk)
    python bench/identify.py --kind isotropic                  # the worst case
    python bench/identify.py --sizes 100000 --queries 500      # quicker
    python bench/identify.py --sizes 10000000 --queries 500    # 10⁷ rows: ~12 GB on disk, written directly
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from spkid import ann, decisions, gallery, streams  # noqa: E402

PER_SPEAKER = 10
SHA = "b" * 64
KINDS = {  # dim, common-direction norm, (between trace, participation ratio), (within trace, participation ratio)
    "real": (256, 0.69, (0.35, 23.0), (0.21, 84.0)),
    "isotropic": (192, 0.0, (1.0, 192.0), (1 / 3, 192.0)),
}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def power_law(dim: int, trace: float, pr: float) -> np.ndarray:
    """Eigenvalues λ_i ∝ i^-a summing to `trace` whose participation ratio (Σλ)²/Σλ² is `pr` (a by bisection)."""
    i = np.arange(1, dim + 1, dtype=np.float64)
    lo, hi = 0.0, 8.0
    for _ in range(60):
        a = (lo + hi) / 2
        lam = i**-a
        lo, hi = (a, hi) if lam.sum() ** 2 / (lam**2).sum() > pr else (lo, a)
    return trace * lam / lam.sum()


class Generator:
    def __init__(self, kind: str, seed: int = 0):
        self.dim, m, (tb, pb), (tw, pw) = KINDS[kind]
        rng = np.random.default_rng(seed)
        basis = lambda: np.linalg.qr(rng.standard_normal((self.dim, self.dim)))[0]  # noqa: E731
        self.mean = m * basis()[:, 0]
        self.between = (basis() * np.sqrt(power_law(self.dim, tb, pb))).astype(np.float32)
        self.within = (basis() * np.sqrt(power_law(self.dim, tw, pw))).astype(np.float32)

    def speakers(self, n: int, seed: int) -> np.ndarray:
        z = np.random.default_rng(seed).standard_normal((n, self.dim), dtype=np.float32)
        return (self.mean + z @ self.between.T).astype(np.float32)

    def utterances(self, centers: np.ndarray, seed: int) -> np.ndarray:
        z = np.random.default_rng(seed).standard_normal(centers.shape, dtype=np.float32)
        return unit(centers + z @ self.within.T)


def build_gallery(path: Path, gen: Generator, n_rows: int) -> tuple[np.ndarray, float]:
    """An "all" gallery of n_rows / PER_SPEAKER speakers at `path`, indexed; returns (centers, build seconds)."""
    n_spk = n_rows // PER_SPEAKER
    centers = gen.speakers(n_spk, seed=1)
    vecs = np.empty((n_spk * PER_SPEAKER, gen.dim), np.float32)
    for u in range(PER_SPEAKER):
        vecs[u::PER_SPEAKER] = gen.utterances(centers, seed=100 + u)
    names = [f"spk{i:07d}" for i in range(n_spk) for _ in range(PER_SPEAKER)]
    g = gallery.updated(gallery.empty(gen.dim, {"model": {"sha256": SHA}, "aggregation": "all"}), names, vecs)
    del vecs
    t = time.perf_counter()
    gallery.with_index(g, build=True)
    build_s = time.perf_counter() - t
    gallery.save(path, g)
    return centers, build_s


def write_gallery_direct(path: Path, gen: Generator, n_rows: int) -> tuple[np.ndarray, float]:
    """`build_gallery` for galleries larger than memory allows `gallery.updated` (10⁷ rows: 10 GB): the gallery
    folder's arrays (DESIGN.md's format) written block by block into memory maps, then the index built by
    `gallery.with_index` from the mapped matrix and its two files and record added to the folder."""
    n_spk = n_rows // PER_SPEAKER
    centers = gen.speakers(n_spk, seed=1)
    path.mkdir(parents=True)
    mm = lambda name, shape, dt: np.lib.format.open_memmap(path / name, "w+", dt, shape)  # noqa: E731
    rows, means = mm("all_embeddings.npy", (n_rows, gen.dim), np.float32), mm("embeddings.npy", (n_spk, gen.dim), np.float32)
    sums = mm("sums.npy", (n_spk, gen.dim), np.float32)
    block = 100_000
    for a in range(0, n_spk, block):
        b = min(n_spk, a + block)
        u = np.stack([gen.utterances(centers[a:b], seed=100 + u + 1000 * a) for u in range(PER_SPEAKER)], axis=1)
        rows[a * PER_SPEAKER : b * PER_SPEAKER] = u.reshape(-1, gen.dim)
        sums[a:b] = u.sum(axis=1)
        means[a:b] = unit(sums[a:b])
    for arr in (rows, means, sums):
        arr.flush()
    del rows, means, sums
    np.save(path / "counts.npy", np.full(n_spk, PER_SPEAKER, np.int64))
    np.save(path / "seconds.npy", np.full(n_spk, np.nan))
    np.save(path / "all_index.npy", np.repeat(np.arange(n_spk, dtype=np.int64), PER_SPEAKER))
    (path / "speakers.txt").write_text("".join(f"spk{i:08d}\n" for i in range(n_spk)))
    meta = {"format": gallery.FORMAT, "model": {"sha256": SHA}, "aggregation": "all", "dim": gen.dim,
            "n_speakers": n_spk, "n_utterances": n_rows}
    (path / "gallery.json").write_text(json.dumps(meta))
    g = gallery.load(path)
    t = time.perf_counter()
    gallery.with_index(g, build=True)
    build_s = time.perf_counter() - t
    (path / ann.FILE).write_bytes(g.search_index.to_bytes())
    np.save(path / ann.SLOTS_FILE, g.search_index.slots)
    (path / "gallery.json").write_text(json.dumps({**meta, "index": g.search_index.record}))
    return centers, build_s


def one_by_one(fn, q: np.ndarray) -> tuple[np.ndarray, list[float]]:
    out, times = [], []
    for j in range(len(q)):
        t = time.perf_counter()
        out.append(fn(q[j : j + 1]))
        times.append(time.perf_counter() - t)
    return np.concatenate(out), times


def eer_threshold(target: np.ndarray, nontarget: np.ndarray) -> float:
    cands = np.sort(np.concatenate([target, nontarget]))
    frr = np.searchsorted(np.sort(target), cands, side="left") / len(target)
    far = 1 - np.searchsorted(np.sort(nontarget), cands, side="left") / len(nontarget)
    return float(cands[np.argmin(np.abs(frr - far))])


RSS_CODE = """
import sys, numpy as np
from spkid import decisions, gallery
import faiss; faiss.omp_set_num_threads(1)
g = gallery.load(sys.argv[1], with_index=sys.argv[2] == "index")
q = np.load(sys.argv[3])
for j in range(len(q)):
    decisions.rank(g, q[j:j + 1], 10, "best", exact=sys.argv[2] != "index")
# private memory of this process (RssAnon): the mapped matrix's pages are the page cache's, shared, and counted once
print(next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith("RssAnon:")))
"""


def process_rss(path: Path, mode: str, q: np.ndarray, tmp: Path) -> int:
    np.save(tmp / "q.npy", q)
    out = subprocess.run([sys.executable, "-c", RSS_CODE, str(path), mode, str(tmp / "q.npy")],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def one_identify(path: Path, gen: Generator, centers: np.ndarray, tmp: Path, exact: bool) -> float:
    probe = tmp / "probe.npy"
    streams.write_embeddings(["spk0000003/new.wav"], gen.utterances(centers[3:4], seed=9),
                             {"model_sha256": SHA, "model": "synthetic"}, str(probe))
    cmd = [sys.executable, "-m", "spkid", "identify", "--from-embeddings", str(probe), "-g", str(path), "--threshold", "0.7"]
    best = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run(cmd + (["--exact"] if exact else []), check=True, capture_output=True)
        best.append(time.perf_counter() - t)
    return min(best)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000", help="enrolled rows (speakers × 10 utterances)")
    ap.add_argument("--kind", choices=sorted(KINDS), default="real")
    ap.add_argument("--queries", type=int, default=2000, help="genuine queries (and a quarter as many impostors)")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "spkid-bench-identify")
    ap.add_argument("--keep", action="store_true", help="keep the galleries in --dir for the next run")
    args = ap.parse_args()
    import faiss

    gen = Generator(args.kind)
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"{args.kind} embeddings ({gen.dim}-d), {PER_SPEAKER} utterances a speaker, aggregation all, score by best; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; search on one thread, index build on 2\n")
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        path = args.dir / f"{args.kind}-{n}"
        faiss.omp_set_num_threads(2)
        meta_path = path / "gallery.json"
        if meta_path.is_file() and args.keep:
            centers, build_s = gen.speakers(n // PER_SPEAKER, seed=1), None
        else:
            shutil.rmtree(path, ignore_errors=True)
            centers, build_s = (write_gallery_direct if n > 2_000_000 else build_gallery)(path, gen, n)
        faiss.omp_set_num_threads(1)
        g = gallery.load(path, with_index=True)
        ix = g.search_index
        rng = np.random.default_rng(7)
        pick = rng.choice(len(centers), args.queries, replace=False)
        genuine = gen.utterances(centers[pick], seed=8)
        impostor = gen.utterances(gen.speakers(args.queries // 4, seed=2), seed=3)
        q = np.concatenate([genuine, impostor])
        exact_i, exact_s = decisions.rank(g, q, 10, "best", exact=True)  # all at once: the reference answers
        n_lat = 30 if n >= 1_000_000 else 100
        # latency as `identify` asks by default: the best speaker and the runner-up (for the margin)
        _, exact_t = one_by_one(lambda x: decisions.rank(g, x, 2, "best", exact=True)[0], q[:n_lat])
        got_2, ix_t = one_by_one(lambda x: decisions.rank(g, x, 2, "best")[0], q)
        got_i, ix10_t = one_by_one(lambda x: decisions.rank(g, x, 10, "best")[0], q[:300])
        got_i = np.concatenate([got_i, decisions.rank(g, q[300:], 10, "best")[0]])
        ng = len(genuine)
        r1 = lambda a, b: float(np.mean(a[:, 0] == b[:, 0]))  # noqa: E731
        r10 = lambda a, b: float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b)]))  # noqa: E731
        thr = eer_threshold(exact_s[:ng, 0], exact_s[ng:, 0])
        got_s = decisions.rank(g, q[ng:], 1, "best")[1][:, 0]
        agree_imp = float(np.mean((got_s >= thr) == (exact_s[ng:, 0] >= thr)))
        acc = float(np.mean(exact_i[:ng, 0] == pick))
        index_bytes = (path / ann.FILE).stat().st_size + (path / ann.SLOTS_FILE).stat().st_size
        matrix_bytes = g.matrix.nbytes
        sub = q[:200]
        rss_exact, rss_index = process_rss(path, "exact", sub, args.dir), process_rss(path, "index", sub, args.dir)
        cli_exact, cli_index = one_identify(path, gen, centers, args.dir, True), one_identify(path, gen, centers, args.dir, False)
        rows.append((n, ix, build_s, index_bytes, matrix_bytes, exact_t, ix_t, ix10_t, r1(got_2[:ng], exact_i[:ng]),
                     r10(got_i[:ng], exact_i[:ng]), r1(got_2[ng:], exact_i[ng:]), agree_imp, acc, thr,
                     rss_exact, rss_index, cli_exact, cli_index))
        if not args.keep:
            shutil.rmtree(path)
        g = ix = None  # the maps go before the next size is built
    ms = lambda t: f"{1000 * np.median(t):.2f} ms"  # noqa: E731
    mb = lambda b: f"{b / 2**20:,.0f} MB"  # noqa: E731
    print("| rows | cells / scanned | build (2 cores) | index / float32 matrix | 1 query exact | 1 query indexed "
          "| top 10 indexed | recall@1 | recall@10 | impostors: recall@1, same decision | private memory exact / indexed "
          "| `spkid identify`, 1 clip, exact / indexed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (n, ix, build_s, ib, mbytes, et, it, it10, rec1, rec10, imp1, agree, acc, thr, rse, rsi, ce, ci) in rows:
        build = "(kept)" if build_s is None else f"{build_s:.0f} s"
        print(f"| {n:,} | {ix.nlist:,} / {ix.record['nprobe']:,} | {build} | {mb(ib)} / {mb(mbytes)} ({ib / mbytes:.2f}×) "
              f"| {ms(et)} | {ms(it)} | {ms(it10)} | {rec1:.4f} | {rec10:.4f} | {imp1:.3f}, {agree:.4f} "
              f"| {mb(rse)} / {mb(rsi)} | {ce:.2f} s / {ci:.2f} s |")
    print("\nrecall: share of genuine queries whose exact best speaker the indexed search also ranks first (@1), and "
          "share of the exact top 10 found in the indexed top 10 (@10). Exact identification accuracy of the genuine "
          "queries: " + ", ".join(f"{r[12]:.3f} ({r[0]:,})" for r in rows) + "; equal-error thresholds: "
          + ", ".join(f"{r[13]:.3f}" for r in rows) + ".")


if __name__ == "__main__":
    main()

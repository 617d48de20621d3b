"""The gallery search index (`spkid.ann`, faiss) and sharded galleries: indexed answers equal exact ones at
recall-1 settings (AS-norm and --score-by included), updates keep the index in step, a stale or missing index
falls back to exact search with a warning, kill -9 during an indexing enroll leaves a whole gallery, and shards
searched together (or their JSON merged by `spkid score`) answer as the unsplit gallery."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import sh
from spkid import ann, decisions, gallery, streams

SHA = "c" * 64


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n_speakers: int, per: int, dim: int = 32, seed: int = 0, spread: float = 0.6):
    """Speakers with several utterances each: unit(center + spread * noise). Returns (names, vectors, centers)."""
    rng = np.random.default_rng(seed)
    centers = unit(rng.standard_normal((n_speakers, dim)))
    vecs = unit(np.repeat(centers, per, axis=0) + spread * unit(rng.standard_normal((n_speakers * per, dim))))
    names = [f"s{i:05d}" for i in range(n_speakers) for _ in range(per)]
    return names, vecs, centers


def probes(centers: np.ndarray, n: int, seed: int = 1, spread: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(centers), n, replace=False)
    return unit(centers[pick] + spread * unit(rng.standard_normal((n, centers.shape[1]))))


def built(names, vecs, aggregation: str) -> gallery.Gallery:
    g = gallery.empty(vecs.shape[1], {"model": {"sha256": SHA}, "aggregation": aggregation})
    return gallery.updated(g, names, vecs)


def assert_same(a, b):
    (ia, sa), (ib, sb) = a, b
    assert np.array_equal(ia, ib)
    np.testing.assert_allclose(sa, sb, atol=2e-6)


@pytest.mark.parametrize("aggregation,score_by", [("mean", "best"), ("all", "best"), ("all", "mean")])
@pytest.mark.parametrize("as_norm", [False, True])
def test_indexed_rank_equals_exact_at_recall_one_settings(aggregation: str, score_by: str, as_norm: bool):
    names, vecs, centers = clustered(300, 4)
    g = gallery.with_index(built(names, vecs, aggregation), build=True)
    assert g.search_index is not None and g.search_index.nlist > 1
    q = probes(centers, 40)
    cohort = unit(np.random.default_rng(5).standard_normal((50, 32))) if as_norm else None
    exact = decisions.rank(g, q, 5, score_by, cohort, exact=True)
    assert_same(decisions.rank(g, q, 5, score_by, cohort, nprobe=g.search_index.nlist, candidates=len(vecs)), exact)
    # at the default setting the best speaker is still found for these genuine probes
    assert np.array_equal(decisions.rank(g, q, 1, score_by, cohort)[0], exact[0][:, :1])


def test_a_query_with_too_few_candidates_is_searched_in_full():
    names, vecs, centers = clustered(300, 1)
    g = gallery.with_index(built(names, vecs, "mean"), build=True)
    q = probes(centers, 5)
    assert g.search_index.nlist > 1  # one cell scanned holds fewer than the 200 speakers asked for
    assert_same(decisions.rank(g, q, 200, "best", nprobe=1), decisions.rank(g, q, 200, "best", exact=True))


def test_default_setting_recall_on_a_clustered_gallery():
    names, vecs, centers = clustered(4000, 5, dim=64, seed=3)
    g = gallery.with_index(built(names, vecs, "all"), build=True)
    assert g.search_index.record["nprobe"] == ann.default_nprobe(g.search_index.nlist) < g.search_index.nlist
    q = probes(centers, 300, seed=4)
    got = decisions.rank(g, q, 1, "best")[0][:, 0]
    want = decisions.rank(g, q, 1, "best", exact=True)[0][:, 0]
    assert (got == want).mean() >= 0.99


def test_updates_keep_the_index_in_step_with_the_gallery():
    names, vecs, centers = clustered(200, 3)
    for aggregation in ("mean", "all"):
        g = gallery.with_index(built(names, vecs, aggregation), build=True)
        more_names, more, _ = clustered(30, 2, seed=9)
        again = [n for n in names[::7]]  # utterances added to enrolled speakers: their rows move or change
        g2 = gallery.updated(g, more_names + again, np.concatenate([more, unit(vecs[::7] + 0.1)]),
                             remove=["s00003", "s00150"])
        ix = g2.search_index
        assert ix is not None and ix.record["rows"] == len(g2.matrix) and ix.record["trained_rows"] == len(g.matrix)
        live = ix.slots[ix.slots >= 0]
        assert sorted(live) == list(range(len(g2.matrix))) and ix.faiss_index.ntotal == len(live)
        q = np.concatenate([probes(centers, 20), more[:5]])
        assert_same(decisions.rank(g2, q, 3, "best", nprobe=ix.nlist, candidates=len(g2.matrix)),
                    decisions.rank(g2, q, 3, "best", exact=True))


def test_outgrown_cells_are_rebuilt():
    names, vecs, _ = clustered(100, 2)
    g = gallery.with_index(built(names, vecs, "mean"), build=True)
    n2, v2, _ = clustered(400, 2, seed=2)
    g2 = gallery.with_index(gallery.updated(g, [f"x{n}" for n in n2], v2))
    assert g2.search_index.record["trained_rows"] == len(g2.matrix) == 500 and g2.search_index.nlist > g.search_index.nlist


def test_small_galleries_stay_exact_unless_asked():
    names, vecs, _ = clustered(50, 2)
    assert gallery.with_index(built(names, vecs, "mean")).search_index is None
    assert ann.n_cells(10) == 1 and ann.n_cells(10**6) == 4096 and ann.n_cells(10**7) == 16384


def embeddings_stream(path: Path, names, vecs) -> Path:
    keys = [f"{n}/u{i}.wav" for i, n in enumerate(names)]
    streams.write_embeddings(keys, vecs, {"model_sha256": SHA, "model": "m.pt", "features": {"kind": "fbank"}}, str(path))
    return path


def identify(g: str | list[str], probe: Path, *extra: str) -> subprocess.CompletedProcess:
    gs = " ".join(f"-g {x}" for x in ([g] if isinstance(g, str) else g))
    return sh(f"spkid identify --from-embeddings {probe} {gs} --threshold 0.7 -k 3 --json {' '.join(extra)}")


def top_of(out: bytes) -> list:
    return [(r["key"], r["decision"], [(c["speaker"], round(c["score"], 5)) for c in r["top"]])
            for r in map(json.loads, out.decode().splitlines())]


def test_cli_index_answers_as_exact_and_falls_back_when_stale(tmp_path: Path):
    names, vecs, centers = clustered(300, 3)
    enr = embeddings_stream(tmp_path / "enr.npy", names, vecs)
    probe = embeddings_stream(tmp_path / "probe.npy", [f"s{i:05d}" for i in range(0, 300, 10)], probes(centers, 30, seed=0))
    g = tmp_path / "g"
    assert sh(f"spkid enroll --from-embeddings {enr} -g {g} --aggregation all --index").returncode == 0
    meta = json.loads((g / "gallery.json").read_text())
    assert meta["index"]["matrix"] == "all_embeddings.npy" and (g / ann.FILE).is_file()
    exact = identify(str(g), probe, "--exact")
    nlist = meta["index"]["nlist"]
    full = identify(str(g), probe, f"--nprobe {nlist} --candidates 2000")
    assert exact.returncode == full.returncode == 0 and top_of(full.stdout) == top_of(exact.stdout)
    assert b"search index" not in full.stderr
    # a later enroll updates the index rather than dropping it
    more = embeddings_stream(tmp_path / "more.npy", ["new1", "new2", "s00001"], unit(np.ones((3, 32)) + vecs[:3]))
    assert sh(f"spkid enroll --from-embeddings {more} -g {g}").returncode == 0
    assert json.loads((g / "gallery.json").read_text())["index"]["rows"] == 903
    assert top_of(identify(str(g), probe, f"--nprobe {nlist} --candidates 2000").stdout) == top_of(identify(str(g), probe, "--exact").stdout)
    # the index of another gallery, then none at all: exact answers, one warning each
    want = top_of(identify(str(g), probe, "--exact").stdout)
    other = tmp_path / "other"
    shutil.copytree(g, other)
    assert sh(f"spkid enroll --from-embeddings {enr} -g {tmp_path / 'small'} --index").returncode == 0
    shutil.copy(tmp_path / "small" / ann.FILE, other / ann.FILE)
    shutil.copy(tmp_path / "small" / ann.SLOTS_FILE, other / ann.SLOTS_FILE)
    (other / ann.FILE).write_bytes((other / ann.FILE).read_bytes()[:-100])
    for broken in ("truncated", "missing"):
        out = identify(str(other), probe)
        assert out.returncode == 0 and top_of(out.stdout) == want, out.stderr
        warning = [ln for ln in out.stderr.decode().splitlines() if "search index" in ln]
        assert len(warning) == 1 and "searches are exact" in warning[0], out.stderr
        (other / ann.FILE).unlink(missing_ok=True)
    # listing leaves the gallery as it is; the next change rebuilds the index
    assert sh(f"spkid enroll -g {other} --list").returncode == 0 and not (other / ann.FILE).exists()
    assert sh(f"spkid enroll -g {other} --index").returncode == 0 and (other / ann.FILE).is_file()
    assert b"search index" not in identify(str(other), probe).stderr


def test_kill_9_during_an_indexing_enroll_leaves_a_whole_gallery(tmp_path: Path):
    names, vecs, _ = clustered(3000, 2, dim=64)
    first = embeddings_stream(tmp_path / "a.npy", names, vecs)
    n2, v2, _ = clustered(3000, 2, dim=64, seed=7)
    second = embeddings_stream(tmp_path / "b.npy", [f"b{n}" for n in n2], v2)
    g = tmp_path / "g"
    cmd = [sys.executable, "-m", "spkid", "enroll", "-g", str(g), "--from-embeddings"]
    subprocess.run(cmd + [str(first), "--index"], check=True, capture_output=True)
    pristine = tmp_path / "pristine"
    shutil.copytree(g, pristine)
    t0 = time.perf_counter()
    subprocess.run(cmd + [str(second)], check=True, capture_output=True, cwd=tmp_path)
    span = time.perf_counter() - t0
    shutil.rmtree(g)
    shutil.copytree(pristine, g)
    rng = random.Random(1)
    for _ in range(4):
        proc = subprocess.Popen(cmd + [str(second)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.0) * span)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        got = gallery.load(g, with_index=True)
        assert len(got.speakers) in (3000, 6000)
        assert got.search_index is not None and got.search_index.record["rows"] == len(got.matrix)
        if len(got.speakers) == 6000:
            shutil.rmtree(g)
            shutil.copytree(pristine, g)


def test_shards_answer_as_the_whole_gallery_and_merge_in_score(tmp_path: Path):
    names, vecs, centers = clustered(120, 3)
    enr = embeddings_stream(tmp_path / "enr.npy", names, vecs)
    probe_names = [f"s{i:05d}" for i in range(0, 120, 4)]
    probe = embeddings_stream(tmp_path / "probe.npy", probe_names, probes(centers, 30, seed=0))
    whole = tmp_path / "whole"
    assert sh(f"spkid enroll --from-embeddings {enr} -g {whole}").returncode == 0
    shards = [str(tmp_path / f"s{i}") for i in (1, 2, 3)]
    for i, s in enumerate(shards, 1):
        assert sh(f"spkid enroll --from-embeddings {enr} -g {s} --shard {i}/3").returncode == 0
    parts = [set(gallery.load(s).speakers) for s in shards]
    assert set().union(*parts) == set(gallery.load(whole).speakers) and sum(map(len, parts)) == 120
    assert all(len(p) > 20 for p in parts)
    want = identify(str(whole), probe)
    got = identify(shards, probe)
    assert got.returncode == 0 and top_of(got.stdout) == top_of(want.stdout)
    # a Slurm array: one identify per shard, then `spkid score` merges the records of each clip
    for i, s in enumerate(shards):
        (tmp_path / f"out{i}.jsonl").write_bytes(identify(s, probe).stdout)
    merged = sh(f"cat {tmp_path}/out*.jsonl | spkid score --json")
    single = sh("spkid score --json", input=want.stdout)
    assert merged.returncode == 0, merged.stderr
    assert json.loads(merged.stdout) == json.loads(single.stdout)
    other = embeddings_stream(tmp_path / "x.npy", ["zed"], vecs[:1])
    odd = tmp_path / "odd"
    assert sh(f"spkid enroll --from-embeddings {other} -g {odd} --threshold 0.5").returncode == 0
    bad = identify([shards[0], str(odd)], probe)
    assert bad.returncode != 0 and b"different threshold" in bad.stderr


def test_enroll_shard_refuses_a_bad_spec_and_an_empty_shard(tmp_path: Path):
    names, vecs, _ = clustered(3, 1)
    enr = embeddings_stream(tmp_path / "e.npy", names, vecs)
    bad = sh(f"spkid enroll --from-embeddings {enr} -g {tmp_path / 'g'} --shard 5/4")
    assert bad.returncode != 0 and b"--shard" in bad.stderr and not (tmp_path / "g").exists()
    outs = [sh(f"spkid enroll --from-embeddings {enr} -g {tmp_path / f'g{i}'} --shard {i}/8") for i in range(1, 9)]
    empty = [o for o in outs if o.returncode != 0]
    assert empty and all(b"none of the 3 speakers listed falls in this shard" in o.stderr for o in empty)
    assert sum(len(gallery.load(tmp_path / f"g{i}").speakers) for i in range(1, 9) if outs[i - 1].returncode == 0) == 3


def test_a_damaged_row_is_caught_when_the_index_reads_it(tmp_path: Path):
    """With an index, identify reads only candidate rows (not the whole matrix): a non-finite value in one of them
    is still the one-line damaged-gallery error, never a NaN score."""
    names, vecs, centers = clustered(300, 4)
    enr = embeddings_stream(tmp_path / "enr.npy", names, vecs)
    probe = embeddings_stream(tmp_path / "probe.npy", ["s00000"], probes(centers[:1], 1, seed=0))
    g = tmp_path / "g"
    assert sh(f"spkid enroll --from-embeddings {enr} -g {g} --aggregation all --index").returncode == 0
    rows = np.load(g / "all_embeddings.npy", mmap_mode="r+")
    rows[1, 5] = np.nan  # a row of s00000 that the index's fingerprint does not sample
    rows.flush()
    del rows
    for extra in ("", "--exact"):
        out = identify(str(g), probe, extra)
        errors = [ln for ln in out.stderr.decode().splitlines() if "error:" in ln]
        assert out.returncode == 1 and out.stdout == b"" and len(errors) == 1 and "is damaged" in errors[0], errors


def test_a_speaker_in_two_shards_is_listed_once_with_a_warning(tmp_path: Path):
    names, vecs, centers = clustered(20, 2)
    enr = embeddings_stream(tmp_path / "enr.npy", names, vecs)
    probe = embeddings_stream(tmp_path / "probe.npy", ["s00003"], probes(centers[3:4], 1, seed=0))
    for g in ("a", "b"):
        assert sh(f"spkid enroll --from-embeddings {enr} -g {tmp_path / g}").returncode == 0
    both = identify([str(tmp_path / "a"), str(tmp_path / "b")], probe)
    alone = identify(str(tmp_path / "a"), probe)
    assert both.returncode == 0 and top_of(both.stdout) == top_of(alone.stdout)
    warning = [ln for ln in both.stderr.decode().splitlines() if "more than one shard" in ln]
    assert len(warning) == 1 and "'s00003'" in warning[0], both.stderr

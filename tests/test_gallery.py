"""spkid.gallery and spkid.search: embedding streams with their model record, gallery updates, atomic writes under
kill -9, the writer lock, concurrent enrolls, and top-k search against brute force."""

from __future__ import annotations

import io
import json
import os
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
from spkid import filelock, gallery, search, streams
from spkid.errors import SpkidError

SHA_A = "a" * 64
SHA_B = "b" * 64


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_embeddings(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, dim)))


def write_stream(path: Path, keys, values, sha: str | None = SHA_A) -> Path:
    meta = None if sha is None else {"model_sha256": sha, "model": "m.pt", "features": {"kind": "fbank"}}
    streams.write_embeddings(keys, values, meta, str(path))
    return path


def test_stream_keeps_the_two_record_format_and_adds_the_model(tmp_path: Path):
    v = random_embeddings(3)
    p = write_stream(tmp_path / "e.npy", ["a/1.wav", "a/2.wav", "b/1.wav"], v)
    keys, values = streams.read_keyed(str(p))  # DESIGN.md's reader ignores the third record
    assert keys.tolist() == ["a/1.wav", "a/2.wav", "b/1.wav"] and np.array_equal(values, v)
    e = streams.read_embeddings(str(p))
    assert e.model_sha256 == SHA_A and e.meta["features"] == {"kind": "fbank"} and np.array_equal(e.values, v)
    with open(p, "rb") as f:
        records = [np.lib.format.read_array(f, allow_pickle=False) for _ in range(3)]
    assert records[2].ndim == 0 and json.loads(str(records[2]))["format"] == "spkid-embeddings/1"


def test_concatenated_streams_join_and_models_must_agree(tmp_path: Path):
    a = write_stream(tmp_path / "a.npy", ["x", "y"], random_embeddings(2, seed=1)).read_bytes()
    b = write_stream(tmp_path / "b.npy", ["z"], random_embeddings(1, seed=2)).read_bytes()
    e = streams.read_embeddings(io.BytesIO(a + b))
    assert e.keys.tolist() == ["x", "y", "z"] and e.values.shape == (3, 16) and e.model_sha256 == SHA_A
    c = write_stream(tmp_path / "c.npy", ["w"], random_embeddings(1), sha=SHA_B).read_bytes()
    with pytest.raises(SpkidError, match="different models"):
        streams.read_embeddings(io.BytesIO(a + c))
    plain = io.BytesIO()
    np.lib.format.write_array(plain, np.array(["k"]))
    np.lib.format.write_array(plain, np.ones((1, 4), np.float32))
    assert streams.read_embeddings(io.BytesIO(plain.getvalue())).meta == {}


def make(speakers: list[str], vecs: np.ndarray, aggregation: str = "mean", seconds=None) -> gallery.Gallery:
    g = gallery.empty(vecs.shape[1], {"model": {"sha256": SHA_A}, "aggregation": aggregation})
    return gallery.updated(g, speakers, vecs, seconds)


def test_update_in_steps_equals_update_at_once_and_roundtrips(tmp_path: Path):
    v = random_embeddings(6)
    labels = ["a", "b", "a", "c", "b", "a"]
    once = make(labels, v, seconds=[1.0] * 6)
    steps = gallery.updated(make(labels[:2], v[:2], seconds=[1.0] * 2), labels[2:], v[2:], [1.0] * 4)
    assert once.speakers == steps.speakers == ["a", "b", "c"]
    np.testing.assert_allclose(once.embeddings, steps.embeddings, atol=1e-6)
    np.testing.assert_allclose(once.embeddings[0], unit(v[[0, 2, 5]].sum(0, keepdims=True))[0], atol=1e-6)
    assert once.counts.tolist() == [3, 2, 1] and once.seconds.tolist() == [3.0, 2.0, 1.0]
    gallery.save(tmp_path / "g", once)
    back = gallery.load(tmp_path / "g")
    assert isinstance(back.embeddings, np.memmap) and back.speakers == once.speakers
    assert back.meta["n_speakers"] == 3 and back.meta["model"]["sha256"] == SHA_A
    np.testing.assert_array_equal(back.embeddings, once.embeddings)
    removed = gallery.updated(back, remove=["b"])
    assert removed.speakers == ["a", "c"] and removed.counts.tolist() == [3, 1]
    with pytest.raises(SpkidError, match="'zed' not enrolled"):
        gallery.updated(back, remove=["zed"])


def test_aggregation_all_keeps_every_embedding_sorted_by_speaker():
    v = random_embeddings(5)
    g = make(["b", "a", "b", "c", "a"], v, aggregation="all")
    assert g.speakers == ["b", "a", "c"] and g.all_index.tolist() == [0, 0, 1, 1, 2]
    np.testing.assert_array_equal(g.rows_of(1), v[[1, 4]])
    g2 = gallery.updated(g, remove=["a"])
    assert g2.all_index.tolist() == [0, 0, 1] and np.array_equal(g2.rows_of(1), v[[3]])


@pytest.mark.parametrize("name", ["unknown", "a\tb", "", " x"])
def test_bad_speaker_names(name: str):
    with pytest.raises(SpkidError, match="reserved|without tabs"):
        make([name], random_embeddings(1))


def test_load_errors(tmp_path: Path):
    with pytest.raises(SpkidError, match="no such gallery folder"):
        gallery.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpkidError, match="not a gallery folder"):
        gallery.load(tmp_path / "empty")
    gallery.save(tmp_path / "g", make(["a"], random_embeddings(1)))
    (tmp_path / "g" / "counts.npy").unlink()
    with pytest.raises(SpkidError, match="incomplete gallery"):
        gallery.load(tmp_path / "g")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("mine")
    with pytest.raises(SpkidError, match="not a gallery; refusing to replace it"):
        gallery.save(tmp_path / "junk", make(["a"], random_embeddings(1)))


@pytest.mark.parametrize("k", [1, 3, 40])
def test_top_k_equals_brute_force(k: int):
    rng = np.random.default_rng(k)
    rows, q = random_embeddings(300, 8, seed=1), random_embeddings(25, 8, seed=2)
    idx, sc = search.top_k(q, rows, k, chunk_rows=7)
    full = q @ rows.T
    want = np.argsort(-full, axis=1, kind="stable")[:, :k]
    assert np.array_equal(idx, want)
    np.testing.assert_allclose(sc, np.take_along_axis(full, want, 1), atol=1e-6)
    scale = rng.uniform(0.5, 2.0, 300).astype(np.float32)
    idx, _ = search.top_k(q, rows, k, row_scale=scale, chunk_rows=64)
    assert np.array_equal(idx, np.argsort(-(full * scale), axis=1, kind="stable")[:, :k])


def test_as_norm_inside_the_search_equals_scoring_as_norm():
    from spkid import scoring

    rows, q, cohort = random_embeddings(50, 8, 1), random_embeddings(6, 8, 2), random_embeddings(40, 8, 3)
    rm, rs = search.cohort_stats(rows, cohort, 10, chunk_rows=16)
    qm, qs = scoring.cohort_stats(q, cohort, 10)
    idx, sc = search.top_k(q, rows, 5, norm=search.Norm(rm, rs, qm, qs), chunk_rows=16)
    ref = scoring.as_norm(q @ rows.T, q, rows, cohort, 10)  # (Q, S): enroll side = queries, symmetric
    assert np.array_equal(idx, np.argsort(-ref, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(sc, np.take_along_axis(ref, idx, 1), atol=1e-4)


def test_grouped_search_scores_a_speaker_by_its_best_row():
    rows = random_embeddings(60, 8, 4)
    group = np.sort(np.random.default_rng(0).integers(0, 9, 60))
    q = random_embeddings(7, 8, 5)
    idx, sc = search.top_k_grouped(q, rows, group, 10, k=3, chunk_rows=11)
    full = q @ rows.T
    best = np.full((7, 10), -np.inf)
    for gid in range(10):
        if (group == gid).any():
            best[:, gid] = full[:, group == gid].max(1)
    assert np.array_equal(idx, np.argsort(-best, axis=1, kind="stable")[:, :3])
    np.testing.assert_allclose(sc, np.take_along_axis(best, idx, 1), atol=1e-6)


def test_lock_waits_for_a_live_holder_and_takes_over_a_stale_one(tmp_path: Path, caplog):
    g = tmp_path / "g"
    with filelock.GalleryLock(g):
        with pytest.raises(SpkidError, match=rf"locked by pid {os.getpid()} on .* for more than 0.2 s"):
            filelock.GalleryLock(g, wait_s=0.2).acquire()
    assert not (tmp_path / ".g.lock").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / ".g.lock").write_text(f"pid {dead} host h time t\n")  # a writer killed with -9 left it
    with caplog.at_level("WARNING"), filelock.GalleryLock(g, wait_s=0.2) as lock:
        assert f"pid {os.getpid()}" in (tmp_path / ".g.lock").read_text() and lock.fd is not None
    assert f"stale lock of pid {dead} on h, which is not running; taking it over" in caplog.text


def enroll_cmd(stream: Path, g: Path) -> list[str]:
    return [sys.executable, "-m", "spkid", "enroll", "--from-embeddings", str(stream), "-g", str(g)]


def batch(tmp_path: Path, name: str, prefix: str, n: int, dim: int = 192, seed: int = 0) -> Path:
    keys = [f"{prefix}{i:06d}/u.wav" for i in range(n)]
    return write_stream(tmp_path / name, keys, random_embeddings(n, dim, seed))


def wait_for_write(proc: subprocess.Popen, folder: Path, name: str) -> float:
    """Poll until the enroll starts writing its new gallery folder (or ends); returns the time it did."""
    while proc.poll() is None and not list(folder.glob(f".{name}.tmp-{proc.pid}-*")):
        time.sleep(0.002)
    return time.perf_counter()


def test_gallery_survives_kill_9_at_random_points(tmp_path: Path):
    """A writer killed at any moment leaves the old gallery or the new one, never a mix, and the next enroll
    (taking over the dead writer's lock) works."""
    g = tmp_path / "g"
    n = 8000
    first = batch(tmp_path, "first.npy", "a", n)
    subprocess.run(enroll_cmd(first, g), check=True, capture_output=True)
    old = set(gallery.load(g).speakers)
    pristine = tmp_path / "pristine"
    shutil.copytree(g, pristine)
    second = batch(tmp_path, "second.npy", "b", n, seed=1)
    new = old | {f"b{i:06d}" for i in range(n)}
    shutil.copytree(pristine, tmp_path / "timing")
    t0 = time.perf_counter()
    proc = subprocess.Popen(enroll_cmd(second, tmp_path / "timing"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t_write = wait_for_write(proc, tmp_path, "timing")
    proc.wait()
    span, write_span = time.perf_counter() - t0, time.perf_counter() - t_write
    rng = random.Random(0)
    for round_ in range(5):
        proc = subprocess.Popen(enroll_cmd(second, g), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if round_ < 2:  # anywhere in the run
            time.sleep(rng.uniform(0.2, 1.0) * span)
        else:  # while the new folder is being written or swapped in
            wait_for_write(proc, tmp_path, "g")
            time.sleep(rng.uniform(0.0, 1.0) * write_span)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = set(gallery.load(g).speakers)
        assert state in (old, new)
        if state == new:  # put the old one back for the next round
            shutil.rmtree(g)
            shutil.copytree(pristine, g)
    done = subprocess.run(enroll_cmd(second, g), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert set(gallery.load(g).speakers) == new
    assert not list(tmp_path.glob(".g.tmp-*")) and not (tmp_path / ".g.lock").exists()


def test_two_concurrent_enrolls_keep_both(tmp_path: Path):
    g = tmp_path / "g"
    a = batch(tmp_path, "a.npy", "alice", 3000, seed=2)
    b = batch(tmp_path, "b.npy", "bob", 3000, seed=3)
    procs = [subprocess.Popen(enroll_cmd(s, g), stderr=subprocess.PIPE, text=True) for s in (a, b)]
    errs = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    got = gallery.load(g)
    assert len(got.speakers) == 6000 and got.counts.sum() == 6000


def test_enroll_from_embeddings_does_not_import_torch(tmp_path: Path):
    stream = batch(tmp_path, "e.npy", "s", 5, dim=8)
    code = ("import sys\nfrom spkid.cli import main\n"
            f"try:\n    main(['enroll', '--from-embeddings', {str(stream)!r}, '-g', {str(tmp_path / 'g')!r}, '--list'])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split() == ["speaker", "utterances", "seconds"]
    assert sh(f"cat {stream} | spkid enroll -g {tmp_path / 'g2'}").returncode == 0

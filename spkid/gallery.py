"""Speaker galleries (`spkid enroll`): the folder format, read as one consistent version and validated file by
file, updated and written whole (the folder swap is `spkid.fileio`'s, the writers' lock `spkid.filelock`'s).
numpy only: no torch. A little over 400 lines, all of it the one format: its reader, its checks, its update.

**Gallery folder** (DESIGN.md), one row per speaker:
```
speakers.txt        one name a line, row order (UTF-8; no tabs or newlines in names; "unknown" is reserved)
embeddings.npy      float32 (S, D), L2-normalised speaker models (the mean direction of their utterances)
counts.npy          int64 (S,), utterances enrolled per speaker
sums.npy            float32 (S, D), sum of the unit utterance embeddings (so adding utterances later is exact)
seconds.npy         float64 (S,), seconds of speech enrolled (NaN where unknown: --no-vad, embeddings without quality records)
all_embeddings.npy  float32 (N, D), every enrolment embedding          (aggregation "all" only)
all_index.npy       int64 (N,), its speaker row, non-decreasing        (aggregation "all" only)
index.faiss         the search index over embeddings.npy ("mean") or all_embeddings.npy ("all")  (optional)
index_slots.npy     int64, the matrix row of each index id (-1: removed)                     (with index.faiss)
gallery.json        {"format": "spkid-gallery/1", "model": {"sha256", "label", "path"}, "features", "embedding",
                     "aggregation", "dim", "n_speakers", "n_utterances", "created", "updated",
                     "threshold": {"score", "source"} | absent, "calibration": {...} | absent,
                     "index": {"kind", "matrix", "rows", "dim", "nlist", "nprobe", "trained_rows", "fingerprint"}
                              | absent}
```
The index (`spkid.index`, faiss) is written with the rest of the folder and kept in step on every update (rows
remapped, changed rows re-encoded); a reader that finds it missing or not matching the matrix searches exactly.
Arrays are read with `allow_pickle=False`, the large ones memory-mapped. A gallery is written whole into a new
folder beside the old one (`.NAME.tmp-PID-XXXX`), which is then swapped into place atomically (Linux
`renameat2(RENAME_EXCHANGE)`; elsewhere two renames, with `.NAME.old-*` picked up again after a crash between
them; `spkid.fileio`): a crash leaves the old gallery or the new one, never a mix. Writers hold `.NAME.lock` beside
the folder (`spkid.filelock`), so concurrent `enroll` runs queue instead of losing each other's speakers.

Embedding streams (keyed matrices with their model record) are encoded by `spkid.npyio`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from spkid import fileio, filelock, folders, npyio
from spkid import ann
from spkid.calibration import Calibration, finite_number
from spkid.errors import SpkidError
from spkid.lists import decode_text, loads_json, name_key, nfc, printable, split_lines
from spkid.scoring import unit

log = logging.getLogger(__name__)

FORMAT = "spkid-gallery/1"
AGGREGATIONS = ("mean", "all")
RESERVED = "unknown"


def check_model(found: str | None, expected: str, what: str, where: str) -> None:
    """Refuse embeddings or a gallery of another model (sha256 mismatch) with a clear message."""
    if found is None:
        raise SpkidError(f"{what}: no record of the model that made them; re-create them with `spkid embed`")
    if found != expected:
        raise SpkidError(f"{what} comes from another model (sha256 {found[:12]}...) than {where} "
                         f"(sha256 {expected[:12]}...); scores across models are meaningless: use one model for both")


@dataclass
class Gallery:
    """A gallery in memory (large arrays may be read-only memory maps). See the module docstring for the files."""

    speakers: list[str]
    embeddings: np.ndarray
    counts: np.ndarray
    sums: np.ndarray
    seconds: np.ndarray
    meta: dict
    all_embeddings: np.ndarray | None = None
    all_index: np.ndarray | None = None
    path: Path | None = None
    search_index: ann.Index | None = None

    @property
    def matrix(self) -> np.ndarray:
        """The rows a search ranks, and the search index covers: every enrolment embedding ("all"), else the
        speaker models."""
        return self.embeddings if self.all_embeddings is None else self.all_embeddings

    @property
    def matrix_file(self) -> str:
        return "embeddings.npy" if self.all_embeddings is None else "all_embeddings.npy"

    def row_speakers(self, rows: np.ndarray) -> np.ndarray:
        """The speaker row of each row of `matrix` (-1 stays -1)."""
        if self.all_index is None:
            return rows
        return np.where(rows >= 0, np.asarray(self.all_index)[np.maximum(rows, 0)], -1)

    def first_rows(self) -> np.ndarray:
        """`(S + 1,)`: speaker i's enrolment embeddings are rows first_rows()[i] to first_rows()[i + 1] of
        all_embeddings (aggregation "all", whose rows are sorted by speaker)."""
        if not hasattr(self, "_first_rows"):
            self._first_rows = np.concatenate([[0], np.cumsum(np.asarray(self.counts))])
        return self._first_rows

    @property
    def aggregation(self) -> str:
        return self.meta.get("aggregation", "mean")

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def model_sha256(self) -> str | None:
        return (self.meta.get("model") or {}).get("sha256")

    def index(self, name: str) -> int:
        """The row of speaker `name` (NFC-normalised, as names are stored)."""
        try:
            return self._lookup()[nfc(name)]
        except KeyError:
            raise SpkidError(f"{self.path}: no speaker {printable(name)!r} enrolled ({len(self.speakers)} speakers; "
                             "`spkid enroll -g DIR --list` lists them)") from None

    def __contains__(self, name: str) -> bool:
        return nfc(name) in self._lookup()

    def _lookup(self) -> dict[str, int]:
        if not hasattr(self, "_names"):
            self._names = {nfc(s): i for i, s in enumerate(self.speakers)}
        return self._names

    def rows_of(self, i: int) -> np.ndarray:
        """Every enrolment embedding of speaker row i (`all`), or its model (`mean`): `(n, D)`."""
        if self.all_embeddings is None or self.all_index is None:
            return np.asarray(self.embeddings[i : i + 1])
        a, b = self.first_rows()[i : i + 2]
        return np.asarray(self.all_embeddings[a:b])


def empty(dim: int, meta: dict) -> Gallery:
    g = Gallery([], np.zeros((0, dim), np.float32), np.zeros(0, np.int64), np.zeros((0, dim), np.float32),
                np.zeros(0, np.float64), dict(meta))
    if meta.get("aggregation") == "all":
        g.all_embeddings, g.all_index = np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
    return g


def exists(path: str | Path) -> bool:
    return (Path(path) / "gallery.json").is_file() or folders.leftover_old(Path(path), "gallery.json") is not None


ARRAYS = {  # file: (dtype, shape in terms of S speakers, D dims, N enrolment embeddings)
    "embeddings.npy": (np.float32, ("S", "D")),
    "sums.npy": (np.float32, ("S", "D")),
    "counts.npy": (np.int64, ("S",)),
    "seconds.npy": (np.float64, ("S",)),
    "all_embeddings.npy": (np.float32, ("N", "D")),
    "all_index.npy": (np.int64, ("N",)),
}
FILES = ("gallery.json", "speakers.txt", *ARRAYS, ann.FILE, ann.SLOTS_FILE)
MAPPED = {"embeddings.npy", "sums.npy", "all_embeddings.npy"}  # the large ones, memory-mapped
MAX_TEXT_BYTES = 1 << 30  # speakers.txt / gallery.json read whole: a gigabyte is no gallery
CHECK_ROWS = 1 << 16  # rows per block of the finiteness check of memory-mapped arrays


def load(path: str | Path, mmap: bool = True, with_index: bool = False) -> Gallery:
    """Read a gallery folder; `mmap` maps the large arrays read-only instead of reading them; `with_index` reads
    the search index too, when gallery.json records one (one that is missing or does not match the matrix is
    left out with a warning: searches are then exact).

    One version, even while `spkid enroll` swaps a new one into place (`folders.read_snapshot`). Every file is
    checked (dtype, shape, finite values, speakers consistent); a damaged gallery is one SpkidError saying what
    is wrong.
    """
    p = Path(path)
    folder = p
    if not (p / "gallery.json").is_file():
        old = folders.leftover_old(p, "gallery.json")
        if old is not None:  # a crash between the two renames of a non-Linux swap: the old gallery is intact
            log.warning("%s: missing, reading %s (an interrupted update); the next `spkid enroll` restores it", p, old)
            folder = old
        elif p.is_dir():
            raise SpkidError(f"{path}: not a gallery folder (no gallery.json); build one with `spkid enroll LIST -g {path}`")
        elif not p.exists():
            raise SpkidError(f"{path}: no such gallery folder; build one with `spkid enroll LIST -g {path}`")
    return folders.read_snapshot(folder, FILES, lambda files, moved: _read(folder, p, files, mmap, moved, with_index))


def _damaged(folder: Path, name: str | None, detail: str) -> SpkidError:
    return SpkidError(f"{folder / name if name else folder}: {detail}; the gallery {folder} is damaged (spkid writes galleries whole: was "
                      "the folder changed by another program, or copied in part? A backup copy restores it)")


def _read(folder: Path, path: Path, files: dict[str, BinaryIO], mmap: bool, moved, with_index: bool) -> Gallery:
    def text(name: str) -> str:
        data = files[name].read(MAX_TEXT_BYTES + 1)
        if len(data) > MAX_TEXT_BYTES:
            raise _damaged(folder, name, f"over {MAX_TEXT_BYTES >> 20} MB")
        return decode_text(data, str(folder / name), "gallery text")

    if "gallery.json" not in files:
        if moved():
            raise folders.Swapped
        raise _damaged(folder, None, "gallery.json is missing")
    meta = loads_json(text("gallery.json"), str(folder / "gallery.json"))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise SpkidError(f"{folder / 'gallery.json'}: unknown gallery format {found!r}; this spkid reads {FORMAT!r}")
    aggregation = meta.get("aggregation", "mean")
    if aggregation not in AGGREGATIONS:
        raise _damaged(folder, "gallery.json", f"aggregation {aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
    need = ["speakers.txt", "embeddings.npy", "sums.npy", "counts.npy", "seconds.npy"]
    if aggregation == "all":
        need += ["all_embeddings.npy", "all_index.npy"]
    missing = [n for n in need if n not in files]
    if missing:
        if moved():
            raise folders.Swapped
        raise _damaged(folder, None, f"incomplete gallery ({missing[0]} is missing)")
    speakers = split_lines(text("speakers.txt"))
    arrays = {}
    for n in need[1:]:
        try:
            arrays[n] = npyio.read_npy_file(files[n], n, mmap and n in MAPPED)
        except SpkidError as e:
            raise _damaged(folder, n, f"unreadable ({str(e).removeprefix(f'{n}: ')})") from None
    _check_arrays(folder, speakers, arrays)
    _check_speakers(folder, speakers)
    g = Gallery(speakers, arrays["embeddings.npy"], arrays["counts.npy"], arrays["sums.npy"], arrays["seconds.npy"],
                meta, arrays.get("all_embeddings.npy"), arrays.get("all_index.npy"), path)
    if with_index and "index" in meta:
        g.search_index = _read_index(folder, files, meta["index"], g.matrix)
    # the large arrays' values are checked here unless a search index will read a few rows of them (the rows read
    # are checked then, `check_rows`): a query must not pay for reading a gigabyte it does not search
    for name in MAPPED if g.search_index is None else ():
        bad = _first_bad(arrays[name], name) if name in arrays else None
        if bad is not None:
            raise _damaged(folder, name, bad)
    return g


def check_rows(g: Gallery, name: str, values: np.ndarray) -> np.ndarray:
    """`values` read from the rows of the gallery array `name`, if all finite; else the damaged-gallery error."""
    if not np.isfinite(values).all():
        raise _damaged(g.path or Path("."), name, "holds a value that is not finite")
    return values


def _read_index(folder: Path, files: dict[str, BinaryIO], record: object, matrix: np.ndarray) -> ann.Index | None:
    """The stored search index, or None (with a warning saying why) when it cannot serve `matrix`."""
    try:
        slots = None
        if ann.SLOTS_FILE in files:
            try:
                slots = npyio.read_npy_file(files[ann.SLOTS_FILE], ann.SLOTS_FILE, False)
            except SpkidError as e:
                raise ann.IndexProblem(str(e)) from None
            if slots.dtype != np.int64 or slots.ndim != 1:
                raise ann.IndexProblem(f"{ann.SLOTS_FILE} holds {slots.dtype} {slots.shape}, expected int64 (n,)")
        return ann.load(files.get(ann.FILE), slots, record, matrix)
    except ann.IndexProblem as e:
        log.warning("%s: the search index cannot be used (%s): searches are exact until an enroll into the gallery "
                    "(e.g. `spkid enroll -g %s --index`) rebuilds it", folder, e, folder)
        return None


def _check_arrays(folder: Path, speakers: list[str], arrays: dict[str, np.ndarray]) -> None:
    emb = arrays["embeddings.npy"]
    dims = {"S": len(speakers), "D": emb.shape[1] if emb.ndim == 2 else -1,
            "N": len(arrays["all_index.npy"]) if "all_index.npy" in arrays and arrays["all_index.npy"].ndim == 1 else -1}
    for name, a in arrays.items():
        dtype, shape = ARRAYS[name]
        want = tuple(dims[s] for s in shape)
        if a.dtype != dtype or a.shape != want or (name == "embeddings.npy" and a.ndim == 2 and a.shape[1] == 0):
            raise _damaged(folder, name, f"holds {a.dtype} {a.shape}, expected {np.dtype(dtype)} {want} "
                                   f"({len(speakers)} speakers in speakers.txt)")
        bad = None if name in MAPPED else _first_bad(a, name)
        if bad is not None:
            raise _damaged(folder, name, bad)
    if "all_index.npy" in arrays:
        idx = np.asarray(arrays["all_index.npy"])
        if len(idx) and (idx.max() >= len(speakers) or (np.diff(idx) < 0).any()):
            raise _damaged(folder, "all_index.npy", "speaker rows out of range or not in order")
        if not np.array_equal(np.bincount(idx, minlength=len(speakers)), np.asarray(arrays["counts.npy"])):
            raise _damaged(folder, "all_index.npy", "does not match counts.npy")


def _first_bad(a: np.ndarray, name: str) -> str | None:
    """What is wrong with the values of `a` (checked in blocks of rows: `a` may be a large memory map), or None.
    Floats must be finite (seconds.npy: NaN is "unknown", and no value is negative); counts are at least 1,
    speaker rows at least 0."""
    for r in range(0, len(a), CHECK_ROWS):
        block = np.asarray(a[r : r + CHECK_ROWS]).reshape(min(CHECK_ROWS, len(a) - r), -1)
        if name == "seconds.npy":
            bad = np.isinf(block) | (block < 0)
        elif block.dtype.kind == "f":
            bad = ~np.isfinite(block)
        else:
            bad = block < (1 if name == "counts.npy" else 0)
        rows = np.flatnonzero(bad.any(axis=1))
        if len(rows):
            return f"invalid value {block[rows[0]][bad[rows[0]]][0]} at row {r + int(rows[0])}"
    return None


def _check_speakers(folder: Path, speakers: list[str]) -> None:
    """Every name valid and no two the same (NFC); the per-name `check_name` only where a fast test fails (a
    gallery of 200 k speakers is checked in about 0.1 s)."""
    keys = [nfc(s) for s in speakers]
    for i, s in enumerate(speakers):
        if not s or s != s.strip() or "\t" in s or keys[i] == RESERVED:
            try:
                check_name(s)
            except SpkidError as e:
                raise _damaged(folder, "speakers.txt", f"line {i + 1}: {e}") from None
    if len(set(keys)) < len(keys):
        seen: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k in seen:
                raise _damaged(folder, "speakers.txt", f"names {printable(k)!r} twice (lines {seen[k] + 1} and {i + 1})")
            seen[k] = i


def check_name(name: str) -> str:
    """A valid speaker name in its stored form (NFC), else SpkidError."""
    if not name or name != name.strip() or any(c in name for c in "\t\n\r"):
        raise SpkidError(f"speaker name {printable(name)!r}: must be non-empty, without tabs, newlines or surrounding spaces")
    name = nfc(name)
    if name_key(name) == RESERVED:
        alias = "" if name == RESERVED else f" (as {RESERVED!r})"
        raise SpkidError(f"speaker name {printable(name)!r} is reserved{alias} for rejected clips (open-set identification)")
    return name


def warn_lookalikes(existing: Sequence[str], new: Sequence[str]) -> None:
    """log.warning for each new name that differs from another name only in case, width or invisible characters
    (`lists.name_key`): probably one speaker typed two ways."""
    seen = {name_key(s): s for s in existing}
    for s in new:
        other = seen.setdefault(name_key(s), s)
        if other != s:
            log.warning("speaker '%s' looks like '%s' (they differ only in case, width or invisible characters); "
                        "they are kept as two speakers", printable(s), printable(other))


def updated(
    g: Gallery,
    labels: Sequence[str] = (),
    embeddings: np.ndarray | None = None,
    seconds: Sequence[float] | None = None,
    remove: Sequence[str] = (),
) -> Gallery:
    """A new in-memory gallery: `g` minus the speakers `remove`, plus utterance `embeddings` `(N, D)` of `labels`.

    A speaker model is the L2-normalised sum of its unit utterance embeddings, so enrolling in several runs
    gives the same model as enrolling everything at once.
    """
    remove = [nfc(r) for r in remove]
    labels = [nfc(lab) for lab in labels]
    missing = [r for r in remove if r not in g]
    if missing:
        raise SpkidError(f"--remove: {', '.join(repr(printable(m)) for m in missing)} not enrolled in {g.path} "
                         "(`spkid enroll -g DIR --list` lists the speakers)")
    gone = set(remove)
    keep = np.array([nfc(s) not in gone for s in g.speakers], dtype=bool)
    names = [s for s, k in zip(g.speakers, keep) if k]
    sums = np.asarray(g.sums, dtype=np.float64)[keep]
    counts = np.asarray(g.counts)[keep].copy()
    secs = np.asarray(g.seconds)[keep].copy()
    remap = np.full(len(g.speakers), -1, np.int64)  # old speaker row -> new
    remap[keep] = np.arange(int(keep.sum()))
    moved = remap  # old matrix row -> new (before any sorting), for the search index
    changed = np.zeros(0, np.int64)  # new matrix rows whose vector is new or changed
    all_emb = all_idx = None
    if g.all_embeddings is not None:
        sel = keep[g.all_index] if len(g.all_index) else np.zeros(0, bool)
        moved = np.where(sel, np.cumsum(sel) - 1, -1)
        all_emb = np.asarray(g.all_embeddings)[sel]
        all_idx = remap[np.asarray(g.all_index)[sel]]
    if embeddings is not None and len(labels):
        e = unit(np.asarray(embeddings, dtype=np.float32)).astype(np.float32)
        if e.shape[1] != sums.shape[1]:
            raise SpkidError(f"embeddings have dimension {e.shape[1]}, the gallery {g.path} has {sums.shape[1]}")
        row = {nfc(s): i for i, s in enumerate(names)}
        fresh = [check_name(lab) for lab in dict.fromkeys(labels) if lab not in row]
        warn_lookalikes(names, fresh)
        for lab in fresh:
            row[lab] = len(names)
            names.append(lab)
        n = len(names)
        grow = n - len(sums)
        sums = np.concatenate([sums, np.zeros((grow, sums.shape[1]))])
        counts = np.concatenate([counts, np.zeros(grow, np.int64)])
        secs = np.concatenate([secs, np.zeros(grow)])
        idx = np.array([row[lab] for lab in labels], dtype=np.int64)
        np.add.at(sums, idx, e)
        np.add.at(counts, idx, 1)
        add_secs = np.full(len(idx), np.nan) if seconds is None else np.asarray(seconds, dtype=np.float64)
        np.add.at(secs, idx, add_secs)
        if all_emb is not None:
            changed = np.arange(len(all_emb), len(all_emb) + len(e))
            all_emb = np.concatenate([all_emb, e])
            all_idx = np.concatenate([all_idx, idx])
        else:
            changed = np.unique(idx)
    if all_idx is not None:
        order = np.argsort(all_idx, kind="stable")
        all_emb, all_idx = all_emb[order], all_idx[order]
        sorted_pos = np.argsort(order)  # unsorted position -> sorted row
        moved = np.where(moved >= 0, sorted_pos[np.maximum(moved, 0)], -1) if len(moved) else moved
        changed = sorted_pos[changed]
    meta = dict(g.meta)
    meta.update(n_speakers=len(names), n_utterances=int(counts.sum()), dim=int(sums.shape[1]))
    new = Gallery(names, unit(sums).astype(np.float32), counts.astype(np.int64), sums.astype(np.float32), secs, meta,
                  all_emb, all_idx, g.path)
    if g.search_index is not None:
        new.search_index = g.search_index.updated(new.matrix, moved, changed)
    return new


def with_index(g: Gallery, build: bool = False) -> Gallery:
    """`g` with its search index brought up to date: (re)built when asked (`build`), when gallery.json records one
    that could not be used, when the gallery has reached `ann.MIN_ROWS` rows, or when it has outgrown its cells."""
    rows = len(g.matrix)
    wanted = g.search_index is not None or "index" in g.meta or rows >= ann.MIN_ROWS
    if rows and (build or (wanted and (g.search_index is None or g.search_index.stale_cells()))):
        t = time.perf_counter()
        g.search_index = ann.build(g.matrix, g.matrix_file)
        log.info("built the search index of %s: %d rows in %d cells, %.1f s", g.path, rows, g.search_index.nlist,
                 time.perf_counter() - t)
    elif not rows:
        g.search_index = None
    return g


def save(path: str | Path, g: Gallery) -> None:
    """Write `g` as the gallery folder `path`: built beside it, then swapped into place atomically."""
    dst = Path(path)
    if dst.exists() and not dst.is_dir():
        raise SpkidError(f"{dst}: exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not (dst / "gallery.json").is_file():
        raise SpkidError(f"{dst}: a non-empty folder that is not a gallery; refusing to replace it")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta = {"format": FORMAT, **{k: v for k, v in g.meta.items() if k not in ("format", "index")}}
    if g.search_index is not None:
        meta["index"] = g.search_index.record
    meta.setdefault("created", now)
    meta["updated"] = now
    if isinstance(meta.get("threshold"), dict):
        finite_number(meta["threshold"].get("score"), meta["threshold"].get("source", "threshold"), "the threshold")
    try:
        meta_json = json.dumps(meta, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError as e:
        raise SpkidError(f"{dst}: cannot store a non-finite number in gallery.json ({e})") from None
    with folders.atomic_dir(dst) as tmp:
        fileio.write_npy(tmp / "embeddings.npy", np.ascontiguousarray(g.embeddings, dtype=np.float32))
        fileio.write_npy(tmp / "sums.npy", np.ascontiguousarray(g.sums, dtype=np.float32))
        fileio.write_npy(tmp / "counts.npy", np.asarray(g.counts, dtype=np.int64))
        fileio.write_npy(tmp / "seconds.npy", np.asarray(g.seconds, dtype=np.float64))
        if g.all_embeddings is not None:
            fileio.write_npy(tmp / "all_embeddings.npy", np.ascontiguousarray(g.all_embeddings, dtype=np.float32))
            fileio.write_npy(tmp / "all_index.npy", np.asarray(g.all_index, dtype=np.int64))
        if g.search_index is not None:
            fileio.write_bytes(tmp / ann.FILE, g.search_index.to_bytes())
            fileio.write_npy(tmp / ann.SLOTS_FILE, g.search_index.slots)
        fileio.write_bytes(tmp / "speakers.txt", "".join(f"{s}\n" for s in g.speakers).encode("utf-8"))
        fileio.write_bytes(tmp / "gallery.json", meta_json.encode("utf-8"))
    g.meta, g.path = meta, dst


def speaker_table(g: Gallery) -> list[tuple[str, int, float]]:
    """(name, utterances, speech seconds; NaN when unknown) per speaker, in row order."""
    return [(s, int(c), float(t)) for s, c, t in zip(g.speakers, np.asarray(g.counts), np.asarray(g.seconds))]


def fmt_seconds(t: float) -> str:
    return "-" if math.isnan(t) else f"{t:.1f}"


def gallery_json(path: str | Path) -> Path:
    """GALLERY/gallery.json (or a gallery.json path itself); SpkidError when it is not there."""
    p = Path(path)
    if p.is_dir():
        p = p / "gallery.json"
        if not p.is_file():
            raise SpkidError(f"{path}: not a gallery folder (no gallery.json); build one with `spkid enroll`")
    elif not p.is_file():
        raise SpkidError(f"{path}: no such gallery folder")
    return p


def _read_json_object(p: Path) -> dict:
    obj = loads_json(fileio.read_text(p, "JSON"), str(p))
    if not isinstance(obj, dict):
        raise SpkidError(f"{p}: expected a JSON object")
    return obj


def save_calibration(gallery: str | Path, cal: Calibration) -> Path:
    """Store `cal` under "calibration" in GALLERY/gallery.json (`gallery_json`), keeping every other key and the
    file's permissions; replaced atomically, under the gallery's writer lock (an enroll swapping the folder
    meanwhile would otherwise lose the calibration, or pair the new arrays with the old gallery.json). Returns the
    gallery.json path."""
    p = gallery_json(gallery)
    with filelock.GalleryLock(p.parent):
        p = gallery_json(gallery)  # the folder as it is now that no writer runs
        obj = _read_json_object(p)
        obj["calibration"] = cal.to_dict()
        data = (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        with fileio.atomic_write(p, "wb", keep_mode=True) as f:
            f.write(data)
    return p


def load_calibration(gallery: str | Path) -> Calibration | None:
    """The calibration stored in GALLERY/gallery.json (`gallery_json`), None when there is none."""
    p = gallery_json(gallery)
    raw = _read_json_object(p).get("calibration")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpkidError(f"{p}: \"calibration\" must be a JSON object")
    return Calibration.from_dict(raw, str(p))

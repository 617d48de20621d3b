"""Speaker galleries (`spkid enroll`): atomic folder swaps, a lock for concurrent writers. numpy only: no torch.

**Gallery folder** (DESIGN.md), one row per speaker:
```
speakers.txt        one name a line, row order (UTF-8; no tabs or newlines in names; "unknown" is reserved)
embeddings.npy      float32 (S, D), L2-normalised speaker models (the mean direction of their utterances)
counts.npy          int64 (S,), utterances enrolled per speaker
sums.npy            float32 (S, D), sum of the unit utterance embeddings (so adding utterances later is exact)
seconds.npy         float64 (S,), seconds of speech enrolled (NaN where unknown: enrolled from embeddings)
all_embeddings.npy  float32 (N, D), every enrolment embedding          (aggregation "all" only)
all_index.npy       int64 (N,), its speaker row, non-decreasing        (aggregation "all" only)
gallery.json        {"format": "spkid-gallery/1", "model": {"sha256", "label", "path"}, "features", "embedding",
                     "aggregation", "dim", "n_speakers", "n_utterances", "created", "updated",
                     "threshold": {"score", "source"} | absent, "calibration": {...} | absent}
```
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

import numpy as np

from spkid import fileio
from spkid.calibration import Calibration
from spkid.errors import SpkidError
from spkid.lists import split_lines
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
        try:
            return self._lookup()[name]
        except KeyError:
            raise SpkidError(f"{self.path}: no speaker {name!r} enrolled ({len(self.speakers)} speakers; "
                             "`spkid enroll -g DIR --list` lists them)") from None

    def _lookup(self) -> dict[str, int]:
        if not hasattr(self, "_names"):
            self._names = {s: i for i, s in enumerate(self.speakers)}
        return self._names

    def rows_of(self, i: int) -> np.ndarray:
        """Every enrolment embedding of speaker row i (`all`), or its model (`mean`): `(n, D)`."""
        if self.all_embeddings is None or self.all_index is None:
            return np.asarray(self.embeddings[i : i + 1])
        a, b = np.searchsorted(self.all_index, [i, i + 1])
        return np.asarray(self.all_embeddings[a:b])


def empty(dim: int, meta: dict) -> Gallery:
    g = Gallery([], np.zeros((0, dim), np.float32), np.zeros(0, np.int64), np.zeros((0, dim), np.float32),
                np.zeros(0, np.float64), dict(meta))
    if meta.get("aggregation") == "all":
        g.all_embeddings, g.all_index = np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
    return g


def exists(path: str | Path) -> bool:
    return (Path(path) / "gallery.json").is_file() or fileio.leftover_old(Path(path), "gallery.json") is not None


def load(path: str | Path, mmap: bool = True) -> Gallery:
    """Read a gallery folder; `mmap` maps the large arrays read-only instead of reading them."""
    p = Path(path)
    if not (p / "gallery.json").is_file():
        old = fileio.leftover_old(p, "gallery.json")
        if old is not None:  # a crash between the two renames of a non-Linux swap: the old gallery is intact
            log.warning("%s: missing, reading %s (an interrupted update); the next `spkid enroll` restores it", p, old)
            p = old
        elif p.is_dir():
            raise SpkidError(f"{path}: not a gallery folder (no gallery.json); build one with `spkid enroll -g {path}`")
        else:
            raise SpkidError(f"{path}: no such gallery folder; build one with `spkid enroll LIST -g {path}`")
    try:
        meta = json.loads((p / "gallery.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SpkidError(f"{p / 'gallery.json'}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise SpkidError(f"{p / 'gallery.json'}: unknown gallery format {found!r}; this spkid reads {FORMAT!r}")
    mode = "r" if mmap else None
    try:
        speakers = split_lines((p / "speakers.txt").read_text(encoding="utf-8"))
        emb = _npy(p / "embeddings.npy", mode)
        counts = _npy(p / "counts.npy", None)
        sums = _npy(p / "sums.npy", mode)
        seconds = _npy(p / "seconds.npy", None)
        all_emb = all_idx = None
        if meta.get("aggregation") == "all":
            all_emb = _npy(p / "all_embeddings.npy", mode)
            all_idx = _npy(p / "all_index.npy", None)
    except FileNotFoundError as e:
        raise SpkidError(f"{p}: incomplete gallery ({Path(e.filename).name} is missing); rebuild it with `spkid enroll`") from None
    s = len(speakers)
    ok = (emb.ndim == 2 and emb.shape[0] == s and emb.dtype == np.float32 and counts.shape == (s,) and sums.shape == emb.shape
          and seconds.shape == (s,))
    if all_emb is not None:
        ok = ok and all_emb.ndim == 2 and all_emb.shape[1] == emb.shape[1] and all_idx.shape == (all_emb.shape[0],)
    if not ok:
        raise SpkidError(f"{p}: inconsistent gallery files (speakers.txt has {s} names, embeddings {emb.shape}); "
                         "rebuild it with `spkid enroll`")
    return Gallery(speakers, emb, counts, sums, seconds, meta, all_emb, all_idx, Path(path))


def _npy(path: Path, mmap_mode: str | None) -> np.ndarray:
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except ValueError as e:
        raise SpkidError(f"{path}: unreadable ({e})") from None


def check_name(name: str) -> str:
    if not name or name != name.strip() or any(c in name for c in "\t\n\r"):
        raise SpkidError(f"speaker name {name!r}: must be non-empty, without tabs, newlines or surrounding spaces")
    if name == RESERVED:
        raise SpkidError(f"speaker name {RESERVED!r} is reserved for rejected clips (open-set identification)")
    return name


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
    missing = [r for r in remove if r not in g._lookup()]
    if missing:
        raise SpkidError(f"--remove: {', '.join(map(repr, missing))} not enrolled in {g.path} "
                         "(`spkid enroll -g DIR --list` lists the speakers)")
    keep = np.array([s not in set(remove) for s in g.speakers], dtype=bool)
    names = [s for s, k in zip(g.speakers, keep) if k]
    sums = np.asarray(g.sums, dtype=np.float64)[keep]
    counts = np.asarray(g.counts)[keep].copy()
    secs = np.asarray(g.seconds)[keep].copy()
    all_emb = all_idx = None
    if g.all_embeddings is not None:
        old_rows = np.flatnonzero(keep)
        remap = np.full(len(g.speakers), -1, np.int64)
        remap[old_rows] = np.arange(len(old_rows))
        sel = keep[g.all_index] if len(g.all_index) else np.zeros(0, bool)
        all_emb = np.asarray(g.all_embeddings)[sel]
        all_idx = remap[np.asarray(g.all_index)[sel]]
    if embeddings is not None and len(labels):
        e = unit(np.asarray(embeddings, dtype=np.float32)).astype(np.float32)
        if e.shape[1] != sums.shape[1]:
            raise SpkidError(f"embeddings have dimension {e.shape[1]}, the gallery {g.path} has {sums.shape[1]}")
        row = {s: i for i, s in enumerate(names)}
        for lab in dict.fromkeys(labels):
            if lab not in row:
                row[check_name(lab)] = len(names)
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
            all_emb = np.concatenate([all_emb, e])
            all_idx = np.concatenate([all_idx, idx])
    if all_idx is not None:
        order = np.argsort(all_idx, kind="stable")
        all_emb, all_idx = all_emb[order], all_idx[order]
    meta = dict(g.meta)
    meta.update(n_speakers=len(names), n_utterances=int(counts.sum()), dim=int(sums.shape[1]))
    return Gallery(names, unit(sums).astype(np.float32), counts.astype(np.int64), sums.astype(np.float32), secs, meta, all_emb, all_idx, g.path)


def save(path: str | Path, g: Gallery) -> None:
    """Write `g` as the gallery folder `path`: built beside it, then swapped into place atomically."""
    dst = Path(path)
    parent = dst.parent
    parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and not dst.is_dir():
        raise SpkidError(f"{dst}: exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not (dst / "gallery.json").is_file():
        raise SpkidError(f"{dst}: a non-empty folder that is not a gallery; refusing to replace it")
    with fileio.atomic_dir(dst) as tmp:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        meta = {"format": FORMAT, **{k: v for k, v in g.meta.items() if k != "format"}}
        meta.setdefault("created", now)
        meta["updated"] = now
        fileio.write_npy(tmp / "embeddings.npy", np.ascontiguousarray(g.embeddings, dtype=np.float32))
        fileio.write_npy(tmp / "sums.npy", np.ascontiguousarray(g.sums, dtype=np.float32))
        fileio.write_npy(tmp / "counts.npy", np.asarray(g.counts, dtype=np.int64))
        fileio.write_npy(tmp / "seconds.npy", np.asarray(g.seconds, dtype=np.float64))
        if g.all_embeddings is not None:
            fileio.write_npy(tmp / "all_embeddings.npy", np.ascontiguousarray(g.all_embeddings, dtype=np.float32))
            fileio.write_npy(tmp / "all_index.npy", np.asarray(g.all_index, dtype=np.int64))
        fileio.write_bytes(tmp / "speakers.txt", "".join(f"{s}\n" for s in g.speakers).encode("utf-8"))
        fileio.write_bytes(tmp / "gallery.json", (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
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
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SpkidError(f"{p}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(obj, dict):
        raise SpkidError(f"{p}: expected a JSON object")
    return obj


def save_calibration(gallery: str | Path, cal: Calibration) -> Path:
    """Store `cal` under "calibration" in GALLERY/gallery.json (`gallery_json`), keeping every other key and the
    file's permissions; replaced atomically. Returns the gallery.json path."""
    p = gallery_json(gallery)
    obj = _read_json_object(p)
    obj["calibration"] = cal.to_dict()
    data = (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
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

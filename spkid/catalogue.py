"""The catalogue of published speaker encoders (`spkid/data/catalogue.json`) and their download cache. No stdio.

A model is a folder `<home>/models/<name>/` laid out as its project publishes it (a WeSpeaker zip unpacked to
`avg_model.pt` + `config.yaml`, SpeechBrain's files side by side...), so `spkid.importers` reads it like any
folder a user downloaded by hand. `<home>` is `$SPKID_HOME`, else `$XDG_CACHE_HOME/spkid`, else `~/.cache/spkid`.
`$SPKID_CATALOGUE` names more catalogue files (`os.pathsep`-separated, same format) whose entries are added,
replacing packaged ones of the same name.

`pull` downloads each file to `<home>/downloads/<name>/<file>.part` (resumed with an HTTP Range request where the
server allows it), checks its size and sha256, unpacks archives (no absolute paths, no `..`, no links, bounded
size), assembles the model in a temporary folder beside its place and renames it there (`folders.atomic_dir`),
all under the model's lock (`filelock.GalleryLock`). An interrupted or failed pull leaves no model folder, only
`.part` files to resume from. A published sha256 is checked; where none is published (`null`), the computed one
is logged as a warning and recorded in the folder's `spkid-download.json` with `"checked": false`.

`resolve` never touches the network: a known name gives its cached folder (or says how to pull it); an unknown
one gives None, so a caller can try it as a path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from spkid import __version__
from spkid.errors import SpkidError, check_interrupted

log = logging.getLogger(__name__)

FORMAT = "spkid-catalogue/1"
PACKAGED = Path(__file__).resolve().parent / "data" / "catalogue.json"
MANIFEST = "spkid-download.json"  # written last into a model's folder: what was downloaded, from where, its sha256
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
ARCHIVES = (".zip", ".tar.gz", ".tgz", ".tar")
CHUNK = 1 << 20
TIMEOUT_S = 60.0
RETRIES = 3
PULL_WAIT_S = 3600.0  # a second pull of one model waits this long for the first (a large file on a slow line)
MAX_MEMBERS = 10_000  # an archive with more entries is refused
MAX_UNPACKED = 16 << 30  # nor may its files add up to more bytes than this

_MODEL_KEYS = {"name", "family", "architecture", "params_m", "embed_dim", "trained_on", "eer", "licence", "page",
               "files", "expect"}
_EER_KEYS = {"percent", "test", "source", "note"}
_FILE_KEYS = {"url", "name", "sha256", "size", "extract"}

Progress = Callable[[str, int, "int | None"], None]  # (file name, bytes so far, total or None)


@dataclass(frozen=True)
class Download:
    """One published file: fetched from `url` as `name`; `sha256`/`size` as published (None: not published);
    `extract`: an archive (.zip, .tar.gz, .tgz, .tar) unpacked into the model folder."""

    url: str
    name: str
    sha256: str | None = None
    size: int | None = None
    extract: bool = False


@dataclass(frozen=True)
class Eer:
    """A published equal error rate, in %, on `test`, as `source` gives it."""

    percent: float | None
    test: str | None
    source: str
    note: str = ""


@dataclass(frozen=True)
class Model:
    name: str
    family: str
    architecture: str
    licence: str
    page: str
    files: tuple[Download, ...]
    eer: Eer
    params_m: float | None = None
    embed_dim: int | None = None
    trained_on: str = ""
    expect: tuple[str, ...] = ()  # files the assembled folder must hold
    origin: str = ""  # the catalogue file it came from

    def to_dict(self) -> dict:
        d = asdict(self)
        d["files"] = [asdict(f) for f in self.files]
        d["expect"] = list(self.expect)
        return d


def home() -> Path:
    """The cache folder: `$SPKID_HOME`, else `$XDG_CACHE_HOME/spkid`, else `~/.cache/spkid`."""
    if os.environ.get("SPKID_HOME"):
        return Path(os.environ["SPKID_HOME"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "spkid"
    return Path.home() / ".cache" / "spkid"


def models_dir() -> Path:
    return home() / "models"


def model_dir(name: str) -> Path:
    return models_dir() / name


def _downloads_dir(name: str) -> Path:
    return home() / "downloads" / name


def catalogue_files() -> list[Path]:
    """The packaged catalogue, then those `$SPKID_CATALOGUE` names, in order (later entries win)."""
    extra = [Path(p).expanduser() for p in os.environ.get("SPKID_CATALOGUE", "").split(os.pathsep) if p]
    return [PACKAGED, *extra]


def load() -> dict[str, Model]:
    """Every known model by name, in catalogue order."""
    out: dict[str, Model] = {}
    for path in catalogue_files():
        for m in read_catalogue(path):
            out.pop(m.name, None)
            out[m.name] = m
    return out


def get(name: str) -> Model:
    """The catalogue entry `name`; one-line SpkidError naming the known ones otherwise."""
    models = load()
    if name not in models:
        raise SpkidError(f"unknown model {name!r}; known: {', '.join(models)} (`spkid models` lists them)")
    return models[name]


def read_catalogue(path: Path) -> list[Model]:
    """The models of one catalogue file; its mistakes (unknown keys, unsafe names, missing fields) are one
    SpkidError naming the file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SpkidError(f"{path}: cannot read the model catalogue ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpkidError(f"{path}: not a JSON model catalogue ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or not isinstance(raw.get("models"), list):
        raise SpkidError(f"{path}: not a model catalogue (expected {{\"format\": \"{FORMAT}\", \"models\": [...]}})")
    return [_model(entry, path) for entry in raw["models"]]


def _check_keys(d: object, allowed: set[str], required: set[str], where: str) -> dict:
    if not isinstance(d, dict):
        raise SpkidError(f"{where}: expected a JSON object")
    if unknown := d.keys() - allowed:
        raise SpkidError(f"{where}: unknown keys {sorted(unknown)}")
    if missing := required - d.keys():
        raise SpkidError(f"{where}: missing keys {sorted(missing)}")
    return d


def _safe_file_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") \
            or name.startswith(".") or name == MANIFEST:
        raise SpkidError(f"{where}: {name!r} is not a plain file name")
    return name


def _model(entry: object, path: Path) -> Model:
    where = f"{path}: model {entry.get('name', '?') if isinstance(entry, dict) else '?'!s}"
    d = _check_keys(entry, _MODEL_KEYS, {"name", "family", "architecture", "licence", "files"}, where)
    name = d["name"]
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise SpkidError(f"{where}: the name must be lower-case letters, digits, '.', '_' or '-'")
    files = []
    if not isinstance(d["files"], list) or not d["files"]:
        raise SpkidError(f"{where}: 'files' must be a non-empty list")
    for f in d["files"]:
        fd = _check_keys(f, _FILE_KEYS, {"url", "name"}, f"{where}: file")
        if not isinstance(fd["url"], str) or not fd["url"].startswith(("http://", "https://")):
            raise SpkidError(f"{where}: {fd['url']!r} is not an http(s) URL")
        fname = _safe_file_name(fd["name"], where)
        sha = fd.get("sha256")
        if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            raise SpkidError(f"{where}: {fname}: sha256 must be 64 lower-case hex digits or null")
        size = fd.get("size")
        if size is not None and not (isinstance(size, int) and size >= 0):
            raise SpkidError(f"{where}: {fname}: size must be a byte count or null")
        extract = bool(fd.get("extract", False))
        if extract and not fname.lower().endswith(ARCHIVES):
            raise SpkidError(f"{where}: {fname}: only {', '.join(ARCHIVES)} archives can be extracted")
        files.append(Download(fd["url"], fname, sha, size, extract))
    e = d.get("eer") or {}
    e = _check_keys(e, _EER_KEYS, set(), f"{where}: eer")
    eer = Eer(e.get("percent"), e.get("test"), str(e.get("source") or ""), str(e.get("note") or ""))
    expect = tuple(_safe_file_name(x, where) for x in d.get("expect") or ())
    return Model(name=name, family=str(d["family"]), architecture=str(d["architecture"]), licence=str(d["licence"]),
                 page=str(d.get("page") or ""), files=tuple(files), eer=eer, params_m=d.get("params_m"),
                 embed_dim=d.get("embed_dim"), trained_on=str(d.get("trained_on") or ""), expect=expect,
                 origin=str(path))


def cached(name: str) -> Path | None:
    """The model's folder if it is downloaded (complete: it holds the manifest), else None."""
    folder = model_dir(name)
    return folder if (folder / MANIFEST).is_file() else None


def resolve(name: str) -> Path | None:
    """The cached folder of catalogue model `name`; None when `name` is not in the catalogue; a SpkidError when
    it is known but not downloaded. Never touches the network."""
    if not NAME_RE.fullmatch(name) or name not in load():
        return None
    folder = cached(name)
    if folder is None:
        raise SpkidError(f"model {name} is not downloaded; run `spkid models pull {name}`")
    return folder


def manifest(name: str) -> dict | None:
    """What `pull` recorded about a cached model (files, URLs, sha256, whether each was checked), or None."""
    folder = cached(name)
    if folder is None:
        return None
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@dataclass
class PullReport:
    name: str
    folder: Path
    downloaded: bool  # False: it was cached already
    files: list[dict] = field(default_factory=list)


def pull(name: str, *, force: bool = False, timeout_s: float = TIMEOUT_S, retries: int = RETRIES,
         progress: Progress | None = None) -> PullReport:
    """Download catalogue model `name` into the cache (module docstring); with `force`, again even if cached.
    Errors (network, HTTP status, size or sha256 mismatch, an unsafe archive) are one SpkidError; the model
    folder is then absent (or the old one untouched)."""
    from spkid.fileio import make_dirs  # here: `spkid --help` imports this module, and not these
    from spkid.filelock import GalleryLock
    from spkid.folders import clean_leftovers

    model = get(name)
    dst = model_dir(name)
    if not force and cached(name):
        return PullReport(name, dst, False)
    make_dirs(dst.parent)
    with GalleryLock(dst, wait_s=PULL_WAIT_S, what="model"):
        clean_leftovers(dst, MANIFEST)
        if not force and cached(name):  # another pull finished while we waited for the lock
            return PullReport(name, dst, False)
        parts = _downloads_dir(name)
        make_dirs(parts)
        try:
            records = _assemble(model, dst, parts, timeout_s, retries, progress)
        finally:
            for d in (parts, parts.parent):  # where nothing is left to resume
                with contextlib.suppress(OSError):
                    d.rmdir()
    return PullReport(name, dst, True, records)


def _assemble(model: Model, dst: Path, parts: Path, timeout_s: float, retries: int,
              progress: Progress | None) -> list[dict]:
    """Fetch every file of `model` into `parts`, then build its folder and swap it into place at `dst`."""
    name = model.name
    records = []
    fetched: list[tuple[Download, Path]] = []
    for f in model.files:
        path, digest = _fetch(f, parts, timeout_s, retries, progress)
        fetched.append((f, path))
        records.append({"name": f.name, "url": f.url, "size": path.stat().st_size, "sha256": digest,
                        "checked": f.sha256 is not None})
        if f.sha256 is None:
            log.warning("%s: %s: no sha256 is published to check it against; its sha256 is %s (recorded in %s)",
                        name, f.name, digest, dst / MANIFEST)
    try:
        _build(model, dst, fetched, records)
    except SpkidError:
        shutil.rmtree(parts, ignore_errors=True)  # downloads that make no model (unsafe, damaged) are not resumed
        raise
    shutil.rmtree(parts, ignore_errors=True)
    return records


def _build(model: Model, dst: Path, fetched: list[tuple[Download, Path]], records: list[dict]) -> None:
    from spkid.folders import atomic_dir

    name = model.name
    with atomic_dir(dst) as tmp:
        for f, path in fetched:
            if f.extract:
                unpack(path, tmp)
            else:
                if (tmp / f.name).exists():
                    raise SpkidError(f"{name}: {f.name} is given twice")
                shutil.copyfile(path, tmp / f.name)
        missing = [e for e in model.expect if not (tmp / e).is_file()]
        if missing:
            raise SpkidError(f"{name}: the download lacks {', '.join(missing)} "
                             f"(it holds {', '.join(sorted(p.name for p in tmp.iterdir())) or 'nothing'})")
        doc = {"format": "spkid-download/1", "name": name, "family": model.family, "catalogue": model.origin,
               "spkid": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": records}
        (tmp / MANIFEST).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        check_interrupted()


def remove(name: str) -> bool:
    """Delete a cached model (and its partial downloads); False if there was nothing to delete. The folder is
    renamed aside before it is deleted, so it vanishes at once for readers."""
    from spkid.filelock import GalleryLock
    from spkid.folders import real_path

    if not NAME_RE.fullmatch(name):
        raise SpkidError(f"{name!r} is not a model name")
    dst = model_dir(name)
    parts = _downloads_dir(name)
    found = parts.exists()
    shutil.rmtree(parts, ignore_errors=True)
    if not dst.exists():
        return found
    with GalleryLock(dst, what="model"):
        aside = dst.parent / f".{dst.name}.old-{os.getpid()}-{os.urandom(3).hex()}"
        os.rename(real_path(dst), aside)
        shutil.rmtree(aside, ignore_errors=True)
    return True


def _fetch(f: Download, parts: Path, timeout_s: float, retries: int, progress: Progress | None) -> tuple[Path, str]:
    """`f` downloaded into `parts` (resuming its `.part`), size and sha256 checked; (its path, its sha256)."""
    done = parts / f.name
    part = parts / (f.name + ".part")
    if done.exists():  # checked by a pull that failed later (another file): check again, it is cheap
        os.replace(done, part)
    for attempt in range(retries + 1):
        try:
            _download(f.url, part, f.size, timeout_s, progress, f.name)
            break
        except _Retryable as e:
            if attempt == retries:
                raise SpkidError(f"{f.url}: {e}; run the same command again to resume "
                                 f"({_size(part)} kept in {part})") from None
            log.info("%s: %s; resuming (%d of %d)", f.name, e, attempt + 1, retries)
            time.sleep(min(2.0 ** attempt * 0.5, 5.0))
    got = part.stat().st_size
    if f.size is not None and got != f.size:
        part.unlink()
        raise SpkidError(f"{f.url}: {got} bytes downloaded, the catalogue says {f.size}; the download was removed")
    digest = sha256_file(part)
    if f.sha256 is not None and digest != f.sha256:
        part.unlink()
        raise SpkidError(f"{f.url}: sha256 {digest} differs from the catalogue's {f.sha256}; "
                         "the download was removed")
    os.replace(part, done)
    return done, digest


class _Retryable(Exception):
    """A transfer cut short (timeout, reset, early end): the `.part` is kept and the transfer resumed."""


def _size(path: Path) -> str:
    n = path.stat().st_size if path.exists() else 0
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} bytes"


def _download(url: str, part: Path, size: int | None, timeout_s: float, progress: Progress | None,
              label: str) -> None:
    """Fetch `url` into `part`, continuing an existing `part` with a Range request: a 206 answer appends, a 200
    answer (the server ignores ranges) starts again."""
    import http.client
    import socket
    import urllib.error
    import urllib.request

    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:  # not a prefix of the file we want
        part.unlink()
        have = 0
    if size is not None and have == size:
        return
    headers = {"User-Agent": f"spkid/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing after `have`: complete if the server says the file is that long
            total = _range_total(e.headers.get("Content-Range", ""))
            if total == have:
                return
            part.unlink()
            raise _Retryable("the server refused to resume (HTTP 416); starting again") from None
        if e.code in (408, 429, 500, 502, 503, 504):
            raise _Retryable(f"HTTP {e.code} {e.reason}") from None
        raise SpkidError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (TimeoutError, socket.timeout):
        raise _Retryable(f"no answer within {timeout_s:g} s") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise _Retryable(f"no answer within {timeout_s:g} s") from None
        if isinstance(reason, ConnectionError):
            raise _Retryable(f"connection failed ({reason})") from None
        raise SpkidError(f"{url}: {getattr(reason, 'strerror', None) or reason}") from None
    except (ConnectionError, http.client.HTTPException) as e:
        raise _Retryable(f"connection failed ({e})") from None
    with resp:
        if have and resp.status == 206:
            start = _range_start(resp.headers.get("Content-Range", ""))
            if start != have:
                raise SpkidError(f"{url}: the server resumed at byte {start}, not {have}")
            mode = "ab"
        else:
            if resp.status != 200:
                raise SpkidError(f"{url}: unexpected HTTP {resp.status}")
            have, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else size
        if size is not None and total is not None and total != size:
            raise SpkidError(f"{url}: the server offers {total} bytes, the catalogue says {size}")
        got = have
        try:
            with open(part, mode) as out:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    got += len(chunk)
                    if progress:
                        progress(label, got, total)
                    check_interrupted()
                out.flush()
                os.fsync(out.fileno())
        except (TimeoutError, socket.timeout):
            raise _Retryable(f"stalled for {timeout_s:g} s at byte {got}") from None
        except (ConnectionError, http.client.IncompleteRead) as e:
            raise _Retryable(f"connection lost at byte {got} ({type(e).__name__})") from None
        if total is not None and got < total:
            raise _Retryable(f"connection closed at byte {got} of {total}")


def _range_start(content_range: str) -> int | None:
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", content_range)
    return int(m.group(1)) if m else None


def _range_total(content_range: str) -> int | None:
    m = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", content_range)
    return int(m.group(1)) if m else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class _Member:
    parts: tuple[str, ...]  # the path inside the archive, checked safe
    is_dir: bool
    size: int
    open: Callable[[], BinaryIO]


def unpack(archive: Path, dst: Path, max_bytes: int = MAX_UNPACKED, max_members: int = MAX_MEMBERS) -> None:
    """Unpack a .zip/.tar(.gz) into the folder `dst`. Refused (one SpkidError): absolute paths, `..`, links and
    device files, more than `max_members` entries or `max_bytes` bytes (counted as written, not as declared).
    A single top-level folder holding everything is stripped, so `model/avg_model.pt` lands as `avg_model.pt`."""
    try:
        with _open_archive(archive) as members:
            _unpack(archive, members, dst, max_bytes, max_members)
    except (SpkidError, OSError, KeyboardInterrupt):
        raise
    except Exception as e:  # zipfile.BadZipFile (a CRC too), tarfile.TarError, EOFError, zlib.error
        raise SpkidError(f"{archive.name}: damaged archive ({e})") from None


def _unpack(archive: Path, members: list[_Member], dst: Path, max_bytes: int, max_members: int) -> None:
    if len(members) > max_members:
        raise SpkidError(f"{archive.name}: more than {max_members} entries; refusing to unpack")
    if all(m.is_dir for m in members):
        raise SpkidError(f"{archive.name}: the archive holds no files")
    tops = {m.parts[0] for m in members}
    strip = 1 if len(tops) == 1 and all(len(m.parts) > 1 or m.is_dir for m in members) else 0
    written = 0
    for m in members:
        rel = m.parts[strip:]
        if not rel:
            continue
        target = dst.joinpath(*rel)
        if m.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise SpkidError(f"{archive.name}: {'/'.join(m.parts)} appears twice")
        with m.open() as src, open(target, "wb") as out:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise SpkidError(f"{archive.name}: unpacks to more than {max_bytes:,} bytes; refusing")
                out.write(chunk)
        check_interrupted()


def _safe_parts(name: str, archive: Path) -> tuple[str, ...]:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise SpkidError(f"{archive.name}: absolute path {name!r} in the archive; refusing to unpack")
    parts = tuple(x for x in p.parts if x not in ("", "."))
    if ".." in parts:
        raise SpkidError(f"{archive.name}: path {name!r} leaves the folder; refusing to unpack")
    return parts


@contextlib.contextmanager
def _open_archive(archive: Path) -> Iterator[list[_Member]]:
    """The checked entries of a zip or tar archive, readable while the block runs."""
    if archive.name.lower().endswith(".zip"):
        import zipfile

        with zipfile.ZipFile(archive) as zf:
            yield list(_zip_members(zf, archive))
    else:
        import tarfile

        with tarfile.open(archive, "r:*") as tf:
            yield list(_tar_members(tf, archive))


def _zip_members(zf, archive: Path) -> Iterator[_Member]:
    for info in zf.infolist():
        if info.filename.startswith("__MACOSX/"):
            continue
        parts = _safe_parts(info.filename, archive)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise SpkidError(f"{archive.name}: {info.filename} is a link; refusing to unpack")
        if parts:
            yield _Member(parts, info.is_dir(), info.file_size, lambda info=info: zf.open(info))


def _tar_members(tf, archive: Path) -> Iterator[_Member]:
    for info in tf:
        parts = _safe_parts(info.name, archive)
        if not (info.isfile() or info.isdir()):
            raise SpkidError(f"{archive.name}: {info.name} is a link or a special file; refusing to unpack")
        if parts:
            yield _Member(parts, info.isdir(), info.size, lambda info=info: tf.extractfile(info))


def describe_eer(m: Model) -> str:
    """`0.797 % VoxCeleb1-O (cleaned)`, or `-` where none is published."""
    if m.eer.percent is None:
        return "-"
    figure = f"{m.eer.percent:.3f}"
    figure = figure[:-1] if figure.endswith("0") else figure  # 0.80 as published, 0.797 kept
    return f"{figure} % {m.eer.test or ''}".strip()


def listing(models: Iterable[Model] | None = None) -> list[dict]:
    """Every model as a JSON-ready dict with `cached` (bool) and `path` (its folder or None)."""
    out = []
    for m in (load().values() if models is None else models):
        folder = cached(m.name)
        out.append({**m.to_dict(), "cached": folder is not None, "path": str(folder) if folder else None})
    return out

"""`spkid models` and `spkid.catalogue`: the catalogue, and downloads from a real HTTP server on 127.0.0.1 serving
models made here (resumed with Range requests after a dropped connection, refused on a wrong sha256, unpacked
safely, assembled atomically, one pull at a time). No test needs the internet."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from spkid import catalogue
from spkid.errors import SpkidError


class Server:
    """Files by URL path, with Range support; per-path modes: `drop` (the first answer stops halfway and closes
    the connection), `wrong` (other bytes), `norange` (ignores Range, always 200), `slow` (5 ms per 4 KiB),
    `stall` (answers nothing for 3 s). Counts the requests and the body bytes sent per path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, set[str]] = {}
        self.requests: dict[str, list[str | None]] = {}  # path -> the Range header of each request
        self.sent: dict[str, int] = {}
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                try:
                    owner.handle(self)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def add(self, path: str, data: bytes, *modes: str) -> str:
        self.files[path] = data
        self.modes[path] = set(modes)
        return self.url(path)

    def handle(self, h) -> None:
        path = h.path
        rng = h.headers.get("Range")
        with self.lock:
            self.requests.setdefault(path, []).append(rng)
            first = len(self.requests[path]) == 1
        if path not in self.files:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        data, modes = self.files[path], self.modes[path]
        if "stall" in modes:
            time.sleep(3)
        if "wrong" in modes:
            data = bytes(b ^ 0x55 for b in data)
        start = 0
        if rng and "norange" not in modes:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if "drop" in modes and first:
            body = body[: len(body) // 2]
        step = 4096
        for i in range(0, len(body), step):
            h.wfile.write(body[i:i + step])
            with self.lock:
                self.sent[path] = self.sent.get(path, 0) + len(body[i:i + step])
            if "slow" in modes:
                time.sleep(0.005)
        h.wfile.flush()
        if "drop" in modes and first:
            h.connection.shutdown(socket.SHUT_RDWR)
            h.close_connection = True

    def close(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """SPKID_HOME and SPKID_CATALOGUE in tmp_path, for this process and the spkid subprocesses."""
    home, cat = tmp_path / "home", tmp_path / "catalogue.json"
    monkeypatch.setenv("SPKID_HOME", str(home))
    monkeypatch.setenv("SPKID_CATALOGUE", str(cat))
    return {**os.environ, "SPKID_HOME": str(home), "SPKID_CATALOGUE": str(cat)}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_catalogue(models: list[dict]) -> None:
    doc = {"format": catalogue.FORMAT, "models": [
        {"family": "WeSpeaker", "architecture": "test network", "licence": "CC0-1.0", **m} for m in models]}
    Path(os.environ["SPKID_CATALOGUE"]).write_text(json.dumps(doc), encoding="utf-8")


def spkid(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spkid", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=timeout)


def model_zip(files: dict[str, bytes], top: str = "voxceleb_tiny_LM") -> bytes:
    """A zip as WeSpeaker publishes one: every file below one top-level folder."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{top}/", "")
        for name, data in files.items():
            zf.writestr(f"{top}/{name}", data)
    return buf.getvalue()


WEIGHTS = os.urandom(300_000)
CONFIG = b"model: ResNet34\nmodel_args:\n  feat_dim: 80\n  embed_dim: 256\n"


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("spkid models: error: ")]
    assert len(errors) == 1 and errors == lines[-1:], proc.stderr
    return errors[0]


def no_model_left(name: str) -> None:
    models = catalogue.models_dir()
    assert not (models / name).exists()
    assert not [p for p in models.iterdir() if ".tmp-" in p.name] if models.exists() else True


def test_pull_unpacks_an_archive_and_places_plain_files_whole(server, env):
    archive = model_zip({"avg_model.pt": WEIGHTS, "config.yaml": CONFIG})
    hparams, ckpt = b"embedding_model: !new:Ecapa\n", os.urandom(50_000)
    write_catalogue([
        {"name": "tiny-zip", "expect": ["avg_model.pt", "config.yaml"],
         "files": [{"url": server.add("/ws/tiny.zip", archive), "name": "tiny.zip", "sha256": sha(archive),
                    "size": len(archive), "extract": True}]},
        {"name": "tiny-files", "family": "SpeechBrain",
         "files": [{"url": server.add("/sb/hyperparams.yaml", hparams), "name": "hyperparams.yaml"},
                   {"url": server.add("/sb/embedding_model.ckpt", ckpt), "name": "embedding_model.ckpt",
                    "sha256": None}]},
    ])
    proc = spkid("models", "pull", "tiny-zip", "tiny-files", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # progress and messages go to stderr
    folder = catalogue.model_dir("tiny-zip")
    assert sorted(p.name for p in folder.iterdir()) == ["avg_model.pt", "config.yaml", catalogue.MANIFEST]
    assert (folder / "avg_model.pt").read_bytes() == WEIGHTS and (folder / "config.yaml").read_bytes() == CONFIG
    files = catalogue.model_dir("tiny-files")
    assert (files / "hyperparams.yaml").read_bytes() == hparams and (files / "embedding_model.ckpt").read_bytes() == ckpt
    # the published hash was checked; the unpublished ones are printed and recorded, and said to be unchecked
    rec = {f["name"]: f for f in catalogue.manifest("tiny-zip")["files"]}
    assert rec["tiny.zip"]["checked"] is True and rec["tiny.zip"]["sha256"] == sha(archive)
    rec = {f["name"]: f for f in catalogue.manifest("tiny-files")["files"]}
    assert rec["embedding_model.ckpt"] == {"name": "embedding_model.ckpt", "url": server.url("/sb/embedding_model.ckpt"),
                                           "size": len(ckpt), "sha256": sha(ckpt), "checked": False}
    warnings = [x for x in proc.stderr.splitlines() if "warning" in x and "no sha256 is published" in x]
    assert len(warnings) == 2 and any(sha(ckpt) in w for w in warnings), proc.stderr
    # nothing else is left in the cache: no partial downloads, temp folders or locks
    assert sorted(p.name for p in catalogue.home().iterdir()) == ["models"]
    assert sorted(p.name for p in catalogue.models_dir().iterdir()) == ["tiny-files", "tiny-zip"]
    assert catalogue.resolve("tiny-zip") == folder
    # pulling again downloads nothing
    before = sum(len(v) for v in server.requests.values())
    again = spkid("models", "pull", "tiny-zip", env=env)
    assert again.returncode == 0 and "already in" in again.stderr
    assert sum(len(v) for v in server.requests.values()) == before


def test_a_dropped_connection_is_resumed_with_a_range_request(server, env):
    write_catalogue([{"name": "tiny", "files": [
        {"url": server.add("/m/avg_model.pt", WEIGHTS, "drop"), "name": "avg_model.pt", "sha256": sha(WEIGHTS)}]}])
    # with no retries the pull fails, keeps what it got, and leaves no model
    proc = spkid("models", "pull", "tiny", "--retries", "0", env=env)
    assert proc.returncode == 1
    assert "run the same command again to resume" in one_error_line(proc)
    no_model_left("tiny")
    part = catalogue.home() / "downloads" / "tiny" / "avg_model.pt.part"
    half = part.stat().st_size
    assert half == len(WEIGHTS) // 2
    # the next pull asks for the rest only
    proc = spkid("models", "pull", "tiny", env=env)
    assert proc.returncode == 0, proc.stderr
    assert server.requests["/m/avg_model.pt"] == [None, f"bytes={half}-"]
    assert server.sent["/m/avg_model.pt"] == len(WEIGHTS)  # every byte sent once
    assert (catalogue.model_dir("tiny") / "avg_model.pt").read_bytes() == WEIGHTS
    assert not part.parent.exists()


def test_one_pull_resumes_by_itself_and_restarts_where_the_server_ignores_ranges(server, env):
    write_catalogue([
        {"name": "resumes", "files": [{"url": server.add("/a.pt", WEIGHTS, "drop"), "name": "a.pt",
                                       "size": len(WEIGHTS)}]},
        {"name": "restarts", "files": [{"url": server.add("/b.pt", WEIGHTS, "drop", "norange"), "name": "b.pt",
                                        "sha256": sha(WEIGHTS)}]},
    ])
    proc = spkid("models", "pull", "resumes", "restarts", env=env)
    assert proc.returncode == 0, proc.stderr
    assert server.requests["/a.pt"] == [None, f"bytes={len(WEIGHTS) // 2}-"] and server.sent["/a.pt"] == len(WEIGHTS)
    assert len(server.requests["/b.pt"]) == 2 and server.sent["/b.pt"] == len(WEIGHTS) * 3 // 2  # 200: from byte 0
    assert (catalogue.model_dir("resumes") / "a.pt").read_bytes() == WEIGHTS
    assert (catalogue.model_dir("restarts") / "b.pt").read_bytes() == WEIGHTS


def test_wrong_bytes_are_refused_and_nothing_is_kept(server, env):
    write_catalogue([{"name": "tampered", "files": [
        {"url": server.add("/ok.yaml", CONFIG), "name": "config.yaml", "sha256": sha(CONFIG)},
        {"url": server.add("/bad.pt", WEIGHTS, "wrong"), "name": "avg_model.pt", "sha256": sha(WEIGHTS)}]}])
    proc = spkid("models", "pull", "tampered", env=env)
    assert proc.returncode == 1 and proc.stdout == ""
    line = one_error_line(proc)
    assert "sha256" in line and sha(WEIGHTS) in line and "/bad.pt" in line
    no_model_left("tampered")
    assert not (catalogue.home() / "downloads" / "tampered" / "avg_model.pt.part").exists()  # not resumed later
    path = spkid("models", "path", "tampered", env=env)
    assert path.returncode == 1 and "is not downloaded; run `spkid models pull tampered`" in one_error_line(path)


def test_http_errors_timeouts_and_size_mismatches_are_one_line(server, env):
    write_catalogue([
        {"name": "missing", "files": [{"url": server.url("/nothing-here.pt"), "name": "a.pt"}]},
        {"name": "silent", "files": [{"url": server.add("/stall.pt", WEIGHTS, "stall"), "name": "a.pt"}]},
        {"name": "short", "files": [{"url": server.add("/short.pt", WEIGHTS), "name": "a.pt",
                                     "size": len(WEIGHTS) + 1}]},
    ])
    proc = spkid("models", "pull", "missing", env=env)
    assert proc.returncode == 1 and "HTTP 404" in one_error_line(proc)
    proc = spkid("models", "pull", "silent", "--timeout", "1", "--retries", "0", env=env)
    assert proc.returncode == 1 and "no answer within 1 s" in one_error_line(proc)
    proc = spkid("models", "pull", "short", env=env)
    assert proc.returncode == 1 and "the catalogue says" in one_error_line(proc)
    for name in ("missing", "silent", "short"):
        no_model_left(name)
    unknown = spkid("models", "pull", "no-such-model", env=env)
    assert unknown.returncode == 1 and "unknown model 'no-such-model'" in one_error_line(unknown)


def test_the_list_shows_what_is_cached_and_path_and_rm_follow_it(server, env):
    write_catalogue([{"name": "tiny", "params_m": 6.63,
                      "eer": {"percent": 0.797, "test": "VoxCeleb1-O (cleaned)", "source": "a README"},
                      "files": [{"url": server.add("/t.pt", WEIGHTS), "name": "avg_model.pt"}]}])
    listed = json.loads(spkid("models", "--json", env=env).stdout)
    names = [m["name"] for m in listed]
    assert "wespeaker-resnet34-lm" in names and names[-1] == "tiny"  # the packaged ones, then the extra file's
    assert listed[-1]["cached"] is False and listed[-1]["path"] is None
    assert listed[-1]["files"][0]["url"] == server.url("/t.pt")
    assert spkid("-q", "models", "pull", "tiny", env=env).returncode == 0
    listed = json.loads(spkid("models", "--json", "tiny", env=env).stdout)
    assert [(m["name"], m["cached"], m["path"]) for m in listed] == [("tiny", True, str(catalogue.model_dir("tiny")))]
    table = spkid("models", env=env).stdout.splitlines()
    assert table[0].split() == ["NAME", "FAMILY", "PARAMS", "EER", "SOURCE", "LICENCE", "CACHED"]
    row = next(x for x in table if x.startswith("tiny "))
    assert row.split()[:5] == ["tiny", "WeSpeaker", "6.63M", "0.797", "%"] and row.split()[-1] == "yes"
    assert next(x for x in table if x.startswith("wespeaker-resnet34-lm ")).split()[-1] == "no"
    path = spkid("models", "path", "tiny", env=env)
    assert path.returncode == 0 and path.stdout == f"{catalogue.model_dir('tiny')}\n"
    assert spkid("models", "rm", "tiny", env=env).returncode == 0
    assert not catalogue.model_dir("tiny").exists()
    assert spkid("models", "path", "tiny", env=env).returncode == 1
    long = spkid("models", "-l", "tiny", env=env).stdout
    assert server.url("/t.pt") in long and "sha256 not published" in long


def test_two_pulls_of_one_model_download_it_once(server, env):
    big = os.urandom(1_500_000)  # about 2 s at the slow server's pace
    write_catalogue([{"name": "shared", "files": [{"url": server.add("/big.pt", big, "slow"), "name": "w.pt"}]}])
    procs = [subprocess.Popen([sys.executable, "-m", "spkid", "models", "pull", "shared"], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(server.requests["/big.pt"]) == 1 and server.sent["/big.pt"] == len(big)
    assert (catalogue.model_dir("shared") / "w.pt").read_bytes() == big


def test_a_killed_pull_leaves_no_model_and_the_next_resumes(server, env):
    big = os.urandom(1_500_000)
    write_catalogue([{"name": "killed", "files": [{"url": server.add("/k.pt", big, "slow"), "name": "w.pt",
                                                   "sha256": sha(big)}]}])
    proc = subprocess.Popen([sys.executable, "-m", "spkid", "models", "pull", "killed"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = catalogue.home() / "downloads" / "killed" / "w.pt.part"
    deadline = time.monotonic() + 30
    while (not part.exists() or part.stat().st_size < 200_000) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    no_model_left("killed")
    with pytest.raises(SpkidError, match="not downloaded"):
        catalogue.resolve("killed")
    done = spkid("models", "pull", "killed", env=env)
    assert done.returncode == 0, done.stderr
    resumed_at = int(server.requests["/k.pt"][1].removeprefix("bytes=").rstrip("-"))
    assert resumed_at >= 200_000 and server.sent["/k.pt"] < 2 * len(big)
    assert (catalogue.model_dir("killed") / "w.pt").read_bytes() == big


def test_a_pulled_model_is_used_by_name_without_the_network(server, env, wav_list, tmp_path):
    """The user's path: pull a 3D-Speaker CAM++ (spkid's network, seeded random weights, in ModelScope's layout),
    stop the server, then `spkid embed -m NAME` reads it from the cache."""
    torch = pytest.importorskip("torch")
    from spkid.models.campplus import CAMPPlus

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(CAMPPlus(feat_dim=80, embed_dim=192).eval().state_dict(), buf)
    weights = buf.getvalue()
    config = json.dumps({"framework": "pytorch", "task": "speaker-verification",
                         "model": {"type": "cam++-sv", "model_config": {"sample_rate": 16000, "fbank_dim": 80,
                                                                         "emb_size": 192},
                                   "pretrained_model": "campplus_cn_common.bin"}}).encode()
    write_catalogue([{"name": "tiny-campplus", "family": "3D-Speaker",
                      "expect": ["campplus_cn_common.bin", "configuration.json"], "files": [
                          {"url": server.add("/ms/campplus_cn_common.bin", weights), "name": "campplus_cn_common.bin",
                           "sha256": sha(weights)},
                          {"url": server.add("/ms/configuration.json", config), "name": "configuration.json"}]}])
    assert spkid("models", "pull", "tiny-campplus", env=env).returncode == 0
    server.close()
    out = tmp_path / "emb.npy"
    proc = subprocess.run([sys.executable, "-m", "spkid", "embed", "-m", "tiny-campplus", "--no-vad", "-o", str(out)],
                          stdin=open(wav_list), capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "3D-Speaker" in proc.stderr
    from spkid import streams

    emb = streams.read_embeddings(str(out))
    assert emb.values.shape == (len(wav_list.read_text().splitlines()), 192)
    assert np.isfinite(emb.values).all()


def _zip(entries: list[tuple[str, bytes]], link: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _tar(add) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        add(tf)
    return buf.getvalue()


def _tar_link(tf: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("model/avg_model.pt")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tf.addfile(info)


def _tar_file(tf: tarfile.TarFile, name: str = "model/avg_model.pt", data: bytes = b"w" * 1000) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(("name", "data", "message"), [
    ("dotdot.zip", _zip([("model/../../evil.txt", b"x")]), "leaves the folder"),
    ("absolute.zip", _zip([("/tmp/evil.txt", b"x")]), "absolute path"),
    ("link.zip", _zip([("model/config.yaml", b"x")], link="model/avg_model.pt"), "is a link"),
    ("link.tar.gz", _tar(_tar_link), "is a link or a special file"),
    ("dotdot.tgz", _tar(lambda tf: _tar_file(tf, "../evil.txt")), "leaves the folder"),
    ("bomb.tar.gz", _tar(lambda tf: _tar_file(tf, data=b"\0" * 5000)), "unpacks to more than"),
    ("damaged.zip", b"PK\x03\x04 not really a zip", "damaged archive"),
])
def test_unsafe_or_damaged_archives_are_refused(tmp_path, name, data, message):
    archive = tmp_path / name
    archive.write_bytes(data)
    dst = tmp_path / "out" / "model"
    dst.mkdir(parents=True)
    with pytest.raises(SpkidError, match=message):
        catalogue.unpack(archive, dst, max_bytes=4096)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()


def test_tar_archives_unpack_with_their_top_folder_stripped(tmp_path):
    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(_tar(lambda tf: (_tar_file(tf), _tar_file(tf, "model/sub/config.yaml", CONFIG))))
    dst = tmp_path / "dst"
    dst.mkdir()
    catalogue.unpack(archive, dst)
    assert (dst / "avg_model.pt").read_bytes() == b"w" * 1000 and (dst / "sub" / "config.yaml").read_bytes() == CONFIG


def test_an_archive_without_the_expected_files_is_not_installed(server, env):
    archive = model_zip({"final.pt": WEIGHTS})
    write_catalogue([{"name": "odd", "expect": ["avg_model.pt", "config.yaml"], "files": [
        {"url": server.add("/odd.zip", archive), "name": "odd.zip", "extract": True}]}])
    proc = spkid("models", "pull", "odd", env=env)
    assert proc.returncode == 1
    assert "lacks avg_model.pt, config.yaml (it holds final.pt)" in one_error_line(proc)
    no_model_left("odd")
    assert not (catalogue.home() / "downloads").exists()


def test_resolve_reads_only_the_cache(env, tmp_path):
    write_catalogue([{"name": "offline", "files": [{"url": "http://127.0.0.1:9/never.pt", "name": "w.pt"}]}])
    assert catalogue.resolve("model.pt") is None and catalogue.resolve("not-in-the-catalogue") is None
    with pytest.raises(SpkidError, match=r"^model offline is not downloaded; run `spkid models pull offline`$"):
        catalogue.resolve("offline")


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "x", "files": [{"url": "http://h/a", "name": "a"}], "colour": "red"}, r"unknown keys \['colour'\]"),
    ({"name": "Bad Name", "files": [{"url": "http://h/a", "name": "a"}]}, "lower-case"),
    ({"name": "x", "files": [{"url": "http://h/a", "name": "../a"}]}, "not a plain file name"),
    ({"name": "x", "files": [{"url": "ftp://h/a", "name": "a"}]}, "not an http"),
    ({"name": "x", "files": [{"url": "http://h/a", "name": "a", "sha256": "abc"}]}, "64 lower-case hex"),
    ({"name": "x", "files": [{"url": "http://h/a.rar", "name": "a.rar", "extract": True}]}, "archives can be"),
])
def test_catalogue_mistakes_are_one_line_naming_the_file(env, entry, message):
    write_catalogue([entry])
    with pytest.raises(SpkidError, match=message) as e:
        catalogue.load()
    assert os.environ["SPKID_CATALOGUE"] in str(e.value)
    proc = spkid("models", env=env)
    assert proc.returncode == 1 and proc.stdout == "" and os.environ["SPKID_CATALOGUE"] in one_error_line(proc)


def test_the_packaged_catalogue():
    models = catalogue.read_catalogue(catalogue.PACKAGED)
    names = [m.name for m in models]
    assert len(names) == len(set(names)) >= 9
    assert {m.family for m in models} == {"WeSpeaker", "SpeechBrain", "3D-Speaker", "pyannote"}
    for m in models:
        assert m.licence and m.page.startswith("https://") and m.expect, m.name
        assert all(f.url.startswith("https://") for f in m.files), m.name
        assert m.eer.percent is None or (0 < m.eer.percent < 5 and m.eer.source and m.eer.test), m.name
        assert m.eer.percent is not None or m.eer.note, m.name  # a missing figure says why


def test_the_cli_defaults_are_the_catalogue_modules():
    from spkid.cli import models

    assert (models.TIMEOUT_S, models.RETRIES) == (catalogue.TIMEOUT_S, catalogue.RETRIES)


def test_cache_location_follows_spkid_home_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("SPKID_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert catalogue.model_dir("m") == tmp_path / "xdg" / "spkid" / "models" / "m"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert catalogue.home() == tmp_path / "me" / ".cache" / "spkid"
    monkeypatch.setenv("SPKID_HOME", str(tmp_path / "h"))
    assert catalogue.home() == tmp_path / "h"

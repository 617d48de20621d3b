"""Property tests (hypothesis) of the readers of user input: the list parser, the keyed-matrix reader, the trials,
scores and identification-results parsers, and the audio loader. Whatever the input, each returns a well-formed
result or raises SpkidError: never another exception (a traceback for the user), never a hang. The audio loader
runs in a worker process, so a crash or a hang inside a decoder (libsndfile, ffmpeg) is caught and named too.

Examples are derandomized (the same ones every run) and their counts moderate; `bench/fuzz.py` runs the same
`TARGETS` for minutes. Two systematic sweeps add what random edits reach only by luck (a stream cut at every
byte, every audio header field at extreme values), and the regression tests at the end are the inputs that
found a bug, one per bug.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import synth_voice
from spkid import audio, lists, npyio, streams
from spkid.errors import SpkidError
from spkid.lists import Entry
from spkid.report import identification_report
from spkid.trials import ScoreList, labelled, parse_trials, read_input

PER_EXAMPLE_S = 20  # a hang: no answer in this long (generous: a loaded 2-core machine)
SETTINGS = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def fuzz(examples: int) -> settings:
    return settings(SETTINGS, max_examples=examples)


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float = PER_EXAMPLE_S):
    def alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def ok_or_spkid_error(check: Callable[[Any], None], value: Any) -> None:
    """`check(value)` may raise SpkidError; any other exception, or a hang, fails the test."""
    with time_limit():
        try:
            check(value)
        except SpkidError:
            pass


def _text_file(content: bytes, suffix: str = ".txt") -> tempfile._TemporaryFileWrapper:
    f = tempfile.NamedTemporaryFile(suffix=suffix)
    f.write(content)
    f.flush()
    return f


# ---------------------------------------------------------------------------------------------------------------
# targets (shared with bench/fuzz.py): a strategy of inputs, and a check that returns, raises SpkidError, or fails

# lists
LIST_CHARS = st.one_of(st.sampled_from("\t\t #\r\n/ab.wav"), st.characters(codec="utf-8"))
LIST_LINES = st.tuples(st.lists(st.text(LIST_CHARS, max_size=30), max_size=12), st.integers(1, 3))
LIST_BYTES = st.binary(max_size=400) | st.lists(st.sampled_from(
    [b"a.wav", b"\t", b"\n", b"\r", b"#", b" ", b"\xff", b"\xef\xbb\xbf", b"\xc3", b"\x00", "caf\u00e9".encode()]),
    max_size=30).map(b"".join)
NAME = st.text(st.characters(codec="utf-8", exclude_characters="\t\r\n"), min_size=1, max_size=12).filter(
    lambda s: s == s.strip() and not s.startswith(("#", "\ufeff")))  # what a list line can carry as it is
PAIRS = st.lists(st.tuples(NAME, NAME), max_size=6)


def check_list_lines(value: tuple[list[str], int]) -> None:
    for e in lists.parse_list(*value):
        assert e.path and e.path == e.path.strip() and "\t" not in e.path
        assert e.label is None or (e.label and "\t" not in e.label)  # a folder's name may end in a space


def check_list_file(data: bytes) -> None:
    with _text_file(data) as f:
        streams.read_list([f.name])


def check_list_round_trip(pairs: list[tuple[str, str]]) -> None:
    entries = [Entry(p, label) for p, label in pairs]
    with _text_file(lists.format_list(entries).encode("utf-8")) as f:
        assert streams.read_list([f.name]) == entries


# keyed matrices (embedding streams)
def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def embedding_stream(keys: list[str], seed: int) -> tuple[bytes, bytes]:
    """(the stream without its model record, the whole stream) as `spkid embed` writes it."""
    values = np.random.default_rng(seed).standard_normal((len(keys), 4)).astype(np.float32)
    body = npy(np.array(keys)) + npy(values)
    record = {"format": npyio.STREAM_FORMAT, "model_sha256": "ab" * 32, "model": "m.pt", "features": {}, "embedding": {}}
    return body, body + npy(np.array(json.dumps(record)))


A0, A = embedding_stream(["a.wav", "b/c.wav", "d"], 0)
B0, B = embedding_stream(["e\u00e9.wav"], 1)
VALID = A + B  # two shards joined with `cat`
HEADER_AT = [i for start in (0, len(npy(np.array(["a.wav", "b/c.wav", "d"]))), len(A0), len(A))
             for i in range(start, start + 140)]


@st.composite
def damaged_streams(draw) -> bytes:
    """VALID with 1-4 edits, mostly in the records' headers."""
    buf = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        pos = min(draw(st.sampled_from(HEADER_AT) | st.integers(0, len(buf))), len(buf))
        op = draw(st.sampled_from(["set", "set", "insert", "delete", "cut"]))
        if op == "set" and pos < len(buf):
            buf[pos] = draw(st.sampled_from(b"0123456789-(),:'{}[]<>|fUiObV \n\x00\xff") | st.integers(0, 255))
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del buf[pos : pos + draw(st.integers(1, 8))]
        elif op == "cut":
            del buf[pos:]
    return bytes(buf)


class Raw(str):
    """Header text put in as it is (its repr is itself)."""

    def __repr__(self) -> str:
        return str(self)


DESCR = st.one_of(
    st.sampled_from(["<f4", "<f8", ">f4", "<f2", "<U5", "<U0", "|V0", "|V8", "|O", "<i8", "|b1", "<c8", "|S3", "x9",
                     "<M8[s]", "<f16", "", "<U99999999999"]),
    st.text(max_size=6),
    st.lists(st.tuples(st.sampled_from(["a", "", "b"]), st.sampled_from(["<f4", "|O", "<U2", "x"])), max_size=2),
    st.integers(-3, 3),
)
NESTED = st.integers(1, 4000).flatmap(lambda n: st.sampled_from([
    Raw("(" + "-" * n + "1,)"), Raw("(" * n + "1" + ")" * n), Raw("[" * n + "]" * n), Raw("(" * n)]))
SHAPE = st.one_of(st.lists(st.integers(-3, 2**65) | st.sampled_from([0, 1, 3, 4]), max_size=3).map(tuple),
                  st.text(max_size=6), st.integers(), NESTED)


@st.composite
def npy_records(draw) -> bytes:
    """A record with any header (any version, dtype, shape, header length) after 0-2 good records, then any bytes."""
    prefix = draw(st.sampled_from([b"", npy(np.array(["a.wav", "b"])), A0]))
    version = draw(st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00"]) | st.binary(min_size=2, max_size=2))
    fortran = draw(st.booleans() | st.integers(-1, 2) | st.none())
    extra = draw(st.sampled_from(["", "'x': 1, ", "'descr': '<f4', "]))
    header = "{" + extra + f"'descr': {draw(DESCR)!r}, 'fortran_order': {fortran!r}, 'shape': {draw(SHAPE)!r}, }}"
    raw = header.encode("utf-8", "replace") + b"\n"
    size = max(len(raw) + draw(st.integers(-100, 100) | st.just(0)), 0)
    width = 2 if version[0] == 1 else 4
    head = b"\x93NUMPY" + version + (size % (1 << (8 * width))).to_bytes(width, "little")
    return prefix + head + raw + draw(st.binary(max_size=120))


STREAMS = damaged_streams() | npy_records() | st.tuples(st.sampled_from([b"", b"\x93NUMPY", A0]),
                                                          st.binary(max_size=300)).map(b"".join)


def read_stream(data: bytes) -> npyio.Embeddings:
    return streams.read_embeddings(io.BytesIO(data))


def check_stream(data: bytes) -> None:
    e = read_stream(data)
    assert e.keys.ndim == 1 and e.keys.dtype.kind == "U"
    assert e.values.dtype == np.float32 and e.values.shape[0] == len(e.keys) and np.isfinite(e.values).all()


# trials, scores, identification results
WORD = st.one_of(
    st.sampled_from(["0", "1", "target", "nontarget", "TARGET", "nonTarget", "-1", "2", "0.5", "-0", "1e309", "-inf",
                     "nan", "NaN", "1_000", "0x1A", "\u0661\u0662", "a.wav", "b.wav", "c", "a.wav", "{", "}", "#"]),
    st.text(st.characters(codec="utf-8", exclude_characters="\t\n\r "), min_size=1, max_size=6),
)
LINE = st.tuples(st.lists(WORD, max_size=5), st.sampled_from(["\t", " ", "  ", " \t"])).map(lambda t: t[1].join(t[0]))
LINES = st.lists(LINE | st.text(max_size=20), max_size=10)
JSON = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.integers(-(10**400), 10**400)
                    | st.text(max_size=4), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                    max_leaves=6)
CANDIDATE = st.fixed_dictionaries({"speaker": st.sampled_from(["alice", "bob", "unknown"]) | JSON,
                                   "score": st.floats() | st.integers(-(10**400), 10**400) | JSON})
RECORD = st.fixed_dictionaries(
    {"key": st.sampled_from(["c1.wav", "c2.wav"]) | JSON, "top": st.lists(CANDIDATE, max_size=3) | JSON},
    optional={"label": st.sampled_from(["alice", "bob", "dave"]) | JSON, "enrolled": st.booleans() | JSON,
              "decision": st.sampled_from(["alice", "unknown"]) | JSON, "threshold": st.floats() | JSON},
)
ID_LINES = st.tuples(st.lists(RECORD.map(json.dumps) | st.sampled_from(["{", "[" * 3000, '{"key": ' + "9" * 5000 + "}"]),
                              min_size=1, max_size=6), st.integers(1, 5))


def check_trials(lines: list[str]) -> None:
    t = parse_trials(lines)
    assert len(t.enroll) == len(t.test) == len(t.label) > 0
    assert len(set(zip(t.enroll, t.test))) == len(t.enroll)


def check_scores(value: tuple[list[str], list[str]]) -> None:
    """Scores, then (when they parse) labelled with trials, as `spkid score --trials` does."""
    parsed = read_input(value[0])
    if isinstance(parsed, ScoreList):
        assert np.isfinite(parsed.score).all()
        try:
            trials = parse_trials(value[1])
        except SpkidError:
            trials = None
        data = labelled(parsed, trials)
        assert len(data.target) and len(data.nontarget)


def check_identify(value: tuple[list[str], int]) -> None:
    """Identification results, then their report, as `spkid score` does with `identify --json` output."""
    records = read_input(value[0])
    if isinstance(records, list):
        assert all(r.top and all(np.isfinite(s) for _, s in r.top) for r in records)
        identification_report(records, value[1])


TARGETS: dict[str, tuple[st.SearchStrategy, Callable[[Any], None]]] = {
    "list": (LIST_LINES, check_list_lines),
    "list-file": (LIST_BYTES, check_list_file),
    "list-round-trip": (PAIRS, check_list_round_trip),
    "stream": (STREAMS, check_stream),
    "trials": (LINES, check_trials),
    "scores": (st.tuples(LINES, LINES), check_scores),
    "identify": (ID_LINES, check_identify),
}

# the audio loader, in a worker process: a crash or hang in a decoder must not take the fuzzer with it
WORKER = """
import sys
import numpy as np
from spkid import audio
from spkid.errors import SpkidError
for line in sys.stdin:
    try:
        x, sr = audio.load(line.rstrip("\\n"), rate=16000)
        good = x.ndim == 1 and x.dtype == "float32" and sr == 16000 and len(x) and np.isfinite(x).all()
        out = f"ok {x.shape}" if good else f"BUG: returned {x.dtype} {x.shape} at {sr} Hz, finite: {np.isfinite(x).all()}"
    except SpkidError as e:
        out = f"SpkidError: {e}"
    except BaseException as e:
        out = f"BUG {type(e).__name__}: {e}"
    print(out.replace("\\n", " ")[:300], flush=True)
"""


class Loader:
    """`audio.load(path, rate=16000)` in a worker process: its answer (`ok ...`, `SpkidError: ...`, `BUG ...`), or
    `crash ...`/`hang` (then the worker is restarted)."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd  # not the checkout: `python -c` imports from its working folder first
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, cwd=self.cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def __call__(self, path: Path, timeout: float = PER_EXAMPLE_S) -> str:
        if self.proc is None:
            self.start()
        self.proc.stdin.write(f"{path}\n".encode())
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if line:
            return line.decode(errors="replace").rstrip("\n")
        answer = f"hang (no answer in {timeout:g} s)" if not ready else f"crash (exit {self.proc.wait()})"
        self.stop()
        return answer


def good_answer(answer: str) -> bool:
    return answer.startswith(("ok ", "SpkidError"))


def seed_files(folder: Path) -> dict[str, bytes]:
    """Small valid files of the formats soundfile reads: what the mutations start from."""
    x = synth_voice(170.0, (650.0, 1500.0), 0.25, sr=16000, seed=4)
    out = {}
    for name, kw in {"pcm16.wav": dict(subtype="PCM_16"), "float.wav": dict(subtype="FLOAT"), "u8.wav": dict(subtype="PCM_U8"),
                     "a.flac": {}, "a.ogg": dict(format="OGG", subtype="VORBIS"), "a.mp3": dict(format="MP3"),
                     "a.aiff": dict(format="AIFF", subtype="PCM_16"), "a.au": dict(format="AU", subtype="PCM_16"),
                     "a.sph": dict(format="NIST", subtype="PCM_16")}.items():
        sf.write(folder / name, x, 16000, **kw)
        out[name] = (folder / name).read_bytes()
    sf.write(folder / "stereo44.wav", np.stack([x[:4000], x[:4000]], axis=1), 44100, subtype="PCM_16")
    out["stereo44.wav"] = (folder / "stereo44.wav").read_bytes()
    return out


SUFFIXES = [".wav", ".flac", ".ogg", ".mp3", ".aiff", ".au", ".sph", ".WAV"]
FIELD_VALUES = [0x7FFFFFFF, 999983, 0xFFFFFFFF, 0x80000000, 1, 0, 2, 3, 7, 8, 24, 255, 1000, 8000, 0x7FFF, 0x8000,
                0xFFFF, 44100]
SPECIAL_FLOATS = [np.nan, np.inf, -np.inf, 1e30, -3e38]


def header_fields(content: bytes) -> list[tuple[int, int, str]]:
    """(offset, width, byte order) of a file's header fields: channels, rate, sizes, sample format."""
    if content.startswith(b"RIFF"):  # WAV: riff size, fmt size, format, channels, rate, byte rate, align, bits, data size
        return [(4, 4, "little"), (16, 4, "little"), (20, 2, "little"), (22, 2, "little"), (24, 4, "little"),
                (28, 4, "little"), (32, 2, "little"), (34, 2, "little"), (40, 4, "little")]
    if content.startswith(b".snd"):  # AU: data offset, size, encoding, rate, channels
        return [(o, 4, "big") for o in (4, 8, 12, 16, 20)]
    if content.startswith(b"FORM") and b"COMM" in content:  # AIFF: channels, frames, bits, rate exponent/mantissa
        c = content.index(b"COMM")
        return [(c + 4, 4, "big"), (c + 8, 2, "big"), (c + 10, 4, "big"), (c + 14, 2, "big"), (c + 16, 2, "big"),
                (c + 18, 4, "big")]
    if content.startswith(b"fLaC"):  # STREAMINFO: block sizes, frame sizes, rate/channels/bits/total samples
        return [(8, 2, "big"), (10, 2, "big"), (12, 4, "big"), (18, 4, "big"), (20, 4, "big"), (22, 4, "big")]
    return [(o, 4, "little") for o in range(0, 64, 4)]


def mutate(draw, seed: bytes) -> bytes:
    """1-3 edits of `seed`: a header field set to an extreme value, a sample set to NaN/Inf/huge, a digit of a text
    header replaced, bytes set, cut, inserted or deleted."""
    buf = bytearray(seed)
    fields = header_fields(seed)
    for _ in range(draw(st.integers(1, 3))):
        pos = min(draw(st.integers(0, 80) | st.integers(0, len(buf))), len(buf))
        op = draw(st.sampled_from(["field", "field", "float", "text", "byte", "cut", "insert", "delete"]))
        if op == "field":
            pos, width, order = draw(st.sampled_from(fields))
            value = draw(st.sampled_from(FIELD_VALUES) | st.integers(0, 2**32 - 1)) % (1 << (8 * width))
            buf[pos : pos + width] = value.to_bytes(width, order)
        elif op == "float":
            at = max(len(buf) - 4 * draw(st.integers(1, 64)), 0)
            buf[at : at + 4] = np.float32(draw(st.sampled_from(SPECIAL_FLOATS))).tobytes()
        elif op == "text":  # NIST SPHERE keeps its fields as text: `sample_rate -i 16000`
            digits = [k for k in range(min(len(buf), 1024)) if chr(buf[k]).isdigit()]
            if digits:
                k = draw(st.sampled_from(digits))
                buf[k : k + 1] = draw(st.sampled_from([b"0", b"9" * 12, b"-1", b"99999999999999999999", b"x"]))
        elif op == "byte" and pos < len(buf):
            buf[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            del buf[pos : pos + draw(st.integers(1, 64))]
    return bytes(buf)


def audio_files(seeds: dict[str, bytes]) -> st.SearchStrategy[tuple[str, bytes]]:
    """(suffix, content): a damaged seed (mostly under its own suffix), or random bytes behind a format's magic."""
    @st.composite
    def files(draw) -> tuple[str, bytes]:
        if draw(st.integers(0, 4)) == 0:
            magic = draw(st.sampled_from([b"", b"RIFF", b"fLaC", b"OggS", b"ID3", b"FORM", b".snd", b"NIST_1A\n   1024\n"]))
            return draw(st.sampled_from(SUFFIXES)), magic + draw(st.binary(max_size=600))
        name = draw(st.sampled_from(sorted(seeds)))
        return draw(st.sampled_from([Path(name).suffix] * 4 + SUFFIXES)), mutate(draw, seeds[name])

    return files()


# ---------------------------------------------------------------------------------------------------------------
# the tests


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@fuzz(300)
@given(value=LIST_LINES)
def test_list_parser_on_any_lines(value):
    ok_or_spkid_error(check_list_lines, value)


@fuzz(150)
@given(data=LIST_BYTES)
def test_list_file_of_any_bytes(data: bytes):
    ok_or_spkid_error(check_list_file, data)


@fuzz(150)
@given(pairs=PAIRS)
@example(pairs=[("a\x85b.wav", "x"), ("c\u2028d.wav", "y\x0cz")])  # str.splitlines() split these lines: fixed
def test_list_round_trip(pairs):
    check_list_round_trip(pairs)  # never an error: format_list writes what read_list reads back


@fuzz(400)
@given(data=STREAMS)
def test_any_stream(data: bytes):
    ok_or_spkid_error(check_stream, data)


def test_a_stream_cut_at_every_byte_is_refused():
    """A cut stream is an error at every offset except where a complete stream ends (before or after the model
    record of the first shard, or at the very end)."""
    complete = {len(A0): 3, len(A): 3, len(VALID): 4}
    for k in range(len(VALID) + 1):
        with time_limit():
            if k in complete:
                assert len(read_stream(VALID[:k]).keys) == complete[k]
            else:
                with pytest.raises(SpkidError):
                    read_stream(VALID[:k])


def test_an_array_cut_at_every_byte_is_refused(scratch: Path):
    data = npy(np.arange(40, dtype=np.int64).reshape(20, 2))
    path = scratch / "vad.npy"
    for k in range(len(data)):
        path.write_bytes(data[:k])
        with time_limit(), pytest.raises(SpkidError):
            streams.read_array(str(path))


@fuzz(300)
@given(lines=LINES)
def test_trials_parser(lines: list[str]):
    ok_or_spkid_error(check_trials, lines)


@fuzz(300)
@given(value=st.tuples(LINES, LINES))
def test_scores_parser_and_join(value):
    ok_or_spkid_error(check_scores, value)


@fuzz(300)
@given(value=ID_LINES)
def test_identification_results_parser(value):
    ok_or_spkid_error(check_identify, value)


@pytest.fixture(scope="module")
def loader(scratch: Path):
    lo = Loader(scratch)
    yield lo
    lo.stop()


@pytest.fixture(scope="module")
def seeds(scratch: Path) -> dict[str, bytes]:
    return seed_files(scratch)


def test_audio_loader_reads_the_seeds(loader, seeds, scratch: Path):
    """The seeds are good audio: the loader reads every one (so the mutations start from real files)."""
    for name, content in seeds.items():
        (scratch / f"seed-{name}").write_bytes(content)
        assert loader(scratch / f"seed-{name}").startswith("ok "), name


@fuzz(150)
@given(data=st.data())
def test_audio_loader_on_damaged_and_random_files(data, loader, seeds, scratch: Path):
    suffix, content = data.draw(audio_files(seeds))
    path = scratch / f"fuzzed{suffix}"
    path.write_bytes(content)
    answer = loader(path)
    assert good_answer(answer), f"{answer} for {content[:80]!r}... ({len(content)} bytes, {suffix})"


def test_every_header_field_at_extreme_values(loader, seeds, scratch: Path):
    """Systematically, what the random edits reach only by luck: every header field of every seed (the numbers of
    NIST's text header included) set to each extreme value."""
    bad = []
    for name, seed in seeds.items():
        variants = []
        if seed.startswith(b"NIST"):
            head = seed[:1024].decode("latin-1")
            for field in ("sample_count", "sample_rate", "channel_count", "sample_n_bytes"):
                line = next(x for x in head.split("\n") if x.startswith(field))
                for v in ("0", "-1", "999983", "2147483647", "99999999999999999999"):
                    variants.append((f"{field}={v}", seed.replace(line.encode(), f"{line.rsplit(' ', 1)[0]} {v}".encode(), 1)))
        elif not seed.startswith((b"OggS", b"ID3", b"\xff")):
            for pos, width, order in header_fields(seed):
                for v in (0, 1, 7, 0x8000, 999983, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF):
                    b = bytearray(seed)
                    b[pos : pos + width] = (v % (1 << (8 * width))).to_bytes(width, order)
                    variants.append((f"{pos}:{width}={v:#x}", bytes(b)))
        for what, content in variants:
            path = scratch / f"field{Path(name).suffix}"
            path.write_bytes(content)
            answer = loader(path)
            if not good_answer(answer):
                bad.append(f"{name} {what}: {answer}")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------------------------------------------------
# regressions: inputs that found bugs


def npy_header(header: str, version: bytes = b"\x01\x00") -> bytes:
    raw = header.encode() + b"\n"
    return b"\x93NUMPY" + version + len(raw).to_bytes(2 if version[0] == 1 else 4, "little") + raw


@pytest.mark.parametrize("data", [
    npy_header("{'descr': '<U1', 'fortran_order': False, 'shape': (" + "-" * 3000 + "1,)}"),  # RecursionError
    npy_header("{'descr': '<U1', 'fortran_order': False, 'shape': ((1,)}", b"\x02\x00"),  # tokenize.TokenError
    npy_header("{'descr': '<U1'}", b"\x09\x00"),  # no such .npy version
    npy(np.array(["a"])) + npy(np.zeros((1, 2), np.float32)) + npy(np.array("[" * 100000)),  # deep JSON record
], ids=["deep-header", "unbalanced-v2-header", "version-9", "deep-json-record"])
def test_stream_regressions(data: bytes):
    with pytest.raises(SpkidError):
        read_stream(data)


def test_a_header_claiming_gigabytes_allocates_nothing_first():
    data = npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (300000000,), }") + b"\0" * 64
    tracemalloc.start()
    try:
        with pytest.raises(SpkidError, match="truncated data"):
            read_stream(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20  # it used to allocate (and zero) the 1.2 GB the header claims


@pytest.mark.parametrize("line", [
    '{"key": "a", "label": "x", "top": [{"speaker": "x", "score": ' + "9" * 400 + "}]}",  # OverflowError
    '{"key": "a", "label": "x", "top": [{"speaker": "x", "score": 1}], "threshold": ' + "9" * 400 + "}",
    '{"key": "a", "top": [{"speaker": "x", "score": ' + "9" * 5000 + "}]}",  # ValueError: int of > 4300 digits
    '{"key": ' + "[" * 100000 + "}",  # RecursionError
])
def test_identification_results_regressions(line: str):
    with pytest.raises(SpkidError):
        read_input([line])


def _wav(rate: int, data: bytes, bits: int = 16, fmt: int = 1) -> bytes:
    fmt_chunk = struct.pack("<HHIIHH", fmt, 1, rate, (rate * bits // 8) & 0xFFFFFFFF, bits // 8, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("content, message", [
    (_wav(2**31 - 1, b"\0\0" * 100), "tap filter"),  # MemoryError designing a 1.2e11-tap filter
    (_wav(999983, b"\1\0" * 1000), "tap filter"),  # 17 s and GBs designing a 58 M-tap filter
    (_wav(1, b"\1\0" * 1000), "under 1000 Hz"),  # upsampled 16000-fold
    (_wav(16000, np.array([0.1, np.nan, np.inf], "<f4").tobytes(), bits=32, fmt=3), "NaN or infinite"),
], ids=["rate-2^31", "rate-prime", "rate-1", "nan-samples"])
def test_audio_regressions(content: bytes, message: str, scratch: Path):
    path = scratch / "regression.wav"
    path.write_bytes(content)
    with time_limit(10), pytest.raises(SpkidError, match=message):
        audio.load(path, rate=16000)

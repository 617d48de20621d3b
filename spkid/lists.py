"""Audio lists and output layouts: parsing and formatting list text, speaker labels, shards, output paths. No stdio.

**List** (DESIGN.md): UTF-8 text, one `PATH` or `PATH<TAB>LABEL` a line; blank and `#` lines skipped; order kept.
The key of an entry is its path as written; without a label the speaker is the parent folder's name
(`label_depth=N` takes the N-th ancestor). Reading a list from a file or stdin is `spkid.streams.read_list`'s job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spkid.errors import SpkidError

LIST_SUFFIXES = (".txt", ".lst", ".list", ".scp")
# what `spkid.audio` reads: through libsndfile, and through an ffmpeg subprocess (when ffmpeg is on PATH)
SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd", ".sph",
                      ".nist", ".w64", ".rf64", ".caf")
FFMPEG_SUFFIXES = (".m4a", ".aac", ".mp4", ".opus", ".webm", ".wma", ".m4b", ".3gp", ".amr", ".mka", ".mkv")
AUDIO_SUFFIXES = SOUNDFILE_SUFFIXES + FFMPEG_SUFFIXES


@dataclass(frozen=True)
class Entry:
    """One list item: `path` as written (also its key) and its speaker `label` (None when unknown)."""

    path: str
    label: str | None = None

    @property
    def key(self) -> str:
        return self.path

    @property
    def shown(self) -> str:
        """How messages name the entry."""
        return "<stdin>" if self.path == "-" else self.path

    def with_label(self, label: str | None) -> Entry:
        """The same entry (its key, its segment) with another speaker label."""
        return dataclasses.replace(self, label=label)


@dataclass(frozen=True)
class KaldiEntry(Entry):
    """An entry of a Kaldi data folder: `utt` (the utterance or segment id) is its key; a segment (`start` not None)
    is `[start, end)` seconds of the recording at `path` (`end` < 0: to its end).

    `command` True: `path` is not a file but a `wav.scp` piped command (`UTT CMD |`, the `|` dropped) whose
    stdout is the recording (`spkid.audio.source` runs it). Only `kaldi_entries(..., allow_commands=True)` makes
    such entries, so the user's `--allow-commands` travels with the entries themselves, to `-j` worker processes
    too: no global setting, and a reader never runs anything the user did not allow."""

    utt: str = ""
    start: float | None = None
    end: float | None = None
    command: bool = False

    @property
    def key(self) -> str:
        return self.utt

    @property
    def shown(self) -> str:
        where = f"`{printable(self.path)} |`" if self.command else self.path
        if self.start is None:
            return f"{self.utt} ({where})"
        return f"{self.utt} ({where} {self.start:g}-{self.end:g} s)"


KALDI_WAV_SCP = "wav.scp"


def is_kaldi_input(arg: str) -> bool:
    """A Kaldi data folder (a folder holding `wav.scp`) or a file named `wav.scp`."""
    return os.path.basename(os.path.normpath(arg)) == KALDI_WAV_SCP or os.path.isfile(os.path.join(arg, KALDI_WAV_SCP))


def kaldi_entries(arg: str, read_text: Callable[[str], str], segments: bool = True,
                  command: str = "...", allow_commands: bool = False) -> list[Entry]:
    """The entries of a Kaldi data folder (or of its `wav.scp` named directly), in `wav.scp` (or `segments`) order.

    `wav.scp`: `UTT PATH` lines (the path is the rest of the line, spaces kept). A piped command (`UTT CMD |`,
    Kaldi's rxfilename: the rest of the line ending in `|`) is refused with one line unless `allow_commands` (the
    user's `--allow-commands`): then its entry is a `KaldiEntry` with `command=True` and `path=CMD`, run only when
    its audio is read (`spkid.audio.source`). `utt2spk` beside it, when present, gives each utterance's
    speaker (every utterance needs one). `segments` beside it (`SEG UTT START END`, seconds, END -1 = to the end)
    turns the entries into segments keyed by SEG, labelled by `utt2spk`'s line for SEG. With `segments=False`
    (commands that write per-file outputs and lists of paths) the entries are plain `Entry(PATH, SPEAKER)`, keyed by
    their paths, and a folder with segments, or with piped commands (a command is no path), is refused.
    `read_text` reads a user's text file (`fileio.read_text`); `command` names the spkid command in messages.
    """
    folder = os.path.dirname(arg) if os.path.basename(os.path.normpath(arg)) == KALDI_WAV_SCP else arg
    scp = os.path.join(folder, KALDI_WAV_SCP) if os.path.isdir(arg) else arg
    recordings: dict[str, str] = {}
    piped: set[str] = set()
    for n, fields in _kaldi_lines(read_text(scp), scp, 2):
        utt, path = fields
        if path.endswith("|"):
            if not segments:
                raise SpkidError(f"{scp}:{n}: {utt} is a piped command, and `spkid {command}` takes audio files by "
                                 "path (its outputs and lists name them), so it runs no commands; write the audio to "
                                 "files first (Kaldi's `wav-copy scp:wav.scp ark,scp:wav.ark,plain.scp`), or give the "
                                 "folder to embed, enroll, identify or features with --allow-commands")
            if not allow_commands:
                raise SpkidError(f"{scp}:{n}: {utt} is a piped command; spkid runs commands from data files only when "
                                 "asked: pass --allow-commands to run it (or write the audio to files, e.g. with "
                                 "Kaldi's `wav-copy scp:wav.scp ark,scp:wav.ark,plain.scp`)")
            path = path[:-1].strip()
            if not path:
                raise SpkidError(f"{scp}:{n}: {utt} has an empty command before its `|`")
            piped.add(utt)
        if utt in recordings:
            raise SpkidError(f"{scp}:{n}: utterance {utt!r} listed twice")
        recordings[utt] = path
    spk_path = os.path.join(folder, "utt2spk")
    speakers = None
    if os.path.isfile(spk_path):
        speakers = {}
        for n, fields in _kaldi_lines(read_text(spk_path), spk_path, 2, exact=True):
            speakers[fields[0]] = fields[1]
    seg_path = os.path.join(folder, "segments")
    if os.path.isfile(seg_path):
        if not segments:
            raise SpkidError(f"{seg_path}: `spkid {command}` works on whole recordings, not segments; give "
                             "wav.scp alone (or a folder without segments), or embed the segments with `spkid embed`")
        items = []
        for n, (seg, utt, start, end) in _kaldi_lines(read_text(seg_path), seg_path, 4, exact=True):
            if utt not in recordings:
                raise SpkidError(f"{seg_path}:{n}: recording {utt!r} is not in {scp}")
            try:
                a, b = float(start), float(end)
            except ValueError:
                raise SpkidError(f"{seg_path}:{n}: expected SEG UTT START END (seconds), got {start!r} {end!r}") from None
            if not (math.isfinite(a) and math.isfinite(b) and a >= 0 and (b > a or b < 0)):
                raise SpkidError(f"{seg_path}:{n}: segment {seg!r} has start {start} and end {end} (seconds); "
                                 "need 0 <= START < END (or END -1: to the end)")
            items.append((seg, utt, a, b))
    else:
        items = [(utt, utt, None, None) for utt in recordings]
    if len({k for k, *_ in items}) != len(items):
        raise SpkidError(f"{seg_path}: a segment id is listed twice")
    if speakers is not None:
        missing = [k for k, *_ in items if k not in speakers]
        if missing:
            raise SpkidError(f"{spk_path}: no speaker for {plural(len(missing), 'utterance')}, e.g. {missing[0]!r}")
    labels = [speakers[key] if speakers is not None else None for key, *_ in items]
    if not segments:  # whole files, for commands that write per-file outputs and lists of paths
        return [Entry(recordings[rec], label) for (_, rec, _, _), label in zip(items, labels)]
    return [KaldiEntry(recordings[rec], label, key, a, b, rec in piped)
            for (key, rec, a, b), label in zip(items, labels)]


def parse_utt2spk(text: str, source: str) -> list[Entry]:
    """A Kaldi `utt2spk` table (`UTT SPEAKER` lines) as labelled entries keyed by the utterance ids."""
    return [KaldiEntry("", spk, utt) for _, (utt, spk) in _kaldi_lines(text, source, 2, exact=True)]


def _kaldi_lines(text: str, source: str, n_fields: int, exact: bool = False) -> Iterable[tuple[int, list[str]]]:
    """(line number, fields) of a Kaldi table: whitespace-separated, the last field taking the rest of the line
    unless `exact`; blank lines skipped."""
    for n, line in enumerate(split_lines(text), 1):
        if not line.strip():
            continue
        fields = line.strip().split(None, n_fields - 1)
        if len(fields) < n_fields or (exact and len(fields[-1].split()) > 1):
            raise SpkidError(f"{source}:{n}: expected {n_fields} whitespace-separated fields, found "
                             f"{len(line.split())}")
        yield n, fields


def is_list_file(arg: str) -> bool:
    return arg.lower().endswith(LIST_SUFFIXES)


def label_from_path(path: str, depth: int = 1) -> str | None:
    """The name of the `depth`-th ancestor folder of `path` (1 = parent), or None when there is none."""
    parts = Path(path).parts[:-1]
    if depth < 1 or len(parts) < depth:
        return None
    return parts[-depth]


def folder_entries(folder: str, label_depth: int = 1, suffixes: tuple[str, ...] = AUDIO_SUFFIXES,
                   command: str = "...") -> list[Entry]:
    """The files below `folder` whose names end in `suffixes` (any case), as the entries of a list naming them: in
    tree order (sorted by path components), each labelled by its parent folder (`label_depth` N: the N-th
    ancestor), so `voices/alice/1.wav` is alice's. Paths start with `folder` as given. Hidden files and folders
    (`.name`, e.g. macOS's `._x.wav`) are skipped, symlinked folders are not followed (as `find`). A folder holding
    none is an error that shows the list to pipe instead (`find FOLDER -name '*.flac' | spkid COMMAND`)."""
    import shlex

    def unreadable(e: OSError) -> None:
        raise SpkidError(f"{e.filename}: cannot read this folder ({e.strerror or e})")

    found, others = [], {}
    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            if name.lower().endswith(suffixes):
                found.append(os.path.join(dirpath, name))
            else:
                ext = os.path.splitext(name)[1].lower() or name
                others[ext] = others.get(ext, 0) + 1
    if not found:
        n = sum(others.values())
        ext = max(others, key=others.get) if others else ".flac"
        pattern = f"*{ext}" if ext.startswith(".") else ext
        held = f"{n} other file{'s' if n != 1 else ''}" if n else "nothing"
        raise SpkidError(f"{folder}: no audio files below this folder (it holds {held}; audio is known by its suffix: "
                         f"{' '.join(suffixes[:6])} ...); name other files in a list, e.g. "
                         f"`find {shlex.quote(str(folder))} -name '{pattern}' | spkid {command}`")
    found.sort(key=lambda p: Path(p).parts)
    return [Entry(p, label_from_path(p, label_depth)) for p in found]


def parse_list(lines: Iterable[str], label_depth: int = 1, source: str = "list") -> list[Entry]:
    """Parse list lines: `PATH` or `PATH<TAB>LABEL`; blank and `#` lines skipped, CRLF tolerated.

    A path may contain spaces; only a TAB separates the label. A line with more than one TAB is an error.
    """
    entries = []
    for n, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n").rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) > 2:
            raise SpkidError(f"{source}:{n}: expected PATH or PATH<TAB>LABEL, found {len(fields)} tab-separated fields")
        path = fields[0].strip()
        label = fields[1].strip() if len(fields) == 2 and fields[1].strip() else None
        if not path:
            raise SpkidError(f"{source}:{n}: empty path")
        entries.append(Entry(path, label if label is not None else label_from_path(path, label_depth)))
    return entries


def split_lines(text: str) -> list[str]:
    """Lines ended by LF, CRLF or CR. Not `str.splitlines()`, which also splits at \\v, \\f, \\x1c-\\x1e, \\x85,
    U+2028 and U+2029: characters a file name or a label may hold."""
    lines = _LINE_END.split(text)
    return lines[:-1] if lines[-1] == "" else lines


_LINE_END = re.compile(r"\r\n|\r|\n")


def decode_text(data: bytes, source: str, what: str | None = None) -> str:
    """The bytes of a user's text file (a BOM is dropped) as str; one error naming `source` and the line otherwise.

    `what` names the expected content in the error (`expected trials`); without it the hint is a list file.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        hint = f"expected {what}" if what else "is it a list file?"
        raise SpkidError(f"{source}:{line}: not valid UTF-8 text ({hint})") from None


def format_list(entries: Iterable[Entry]) -> str:
    return "".join(f"{e.path}\t{e.label}\n" if e.label is not None else f"{e.path}\n" for e in entries)


def labels_for(keys: Sequence[str], listed: Iterable[Entry] | None, label_depth: int,
               source: str = "--labels") -> list[str]:
    """Speaker labels of embedding keys: from the entries of a labels list (`listed`, read from `source`), or,
    when `listed` is None, the list format's folder rule."""
    if listed is not None:
        mapping = {e.key: e.label for e in listed}
        missing = [k for k in keys if mapping.get(k) is None]
        if missing:
            raise SpkidError(f"{source}: no label for {len(missing)} key(s), e.g. {missing[0]!r}")
        return [mapping[k] for k in keys]
    out = []
    for k in keys:
        lab = label_from_path(k, label_depth)
        if lab is None:
            raise SpkidError(f"cannot tell the speaker of {k!r} (no parent folder at depth {label_depth}); "
                             "give --labels FILE (PATH<TAB>LABEL lines)")
        out.append(lab)
    return out


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """`I/N` (1-based I) -> (I-1, N); None passes through."""
    if spec is None:
        return None
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise SpkidError(f"--shard {spec!r}: expected I/N, e.g. 1/4") from None
    if not (n >= 1 and 1 <= i <= n):
        raise SpkidError(f"--shard {spec!r}: need 1 <= I <= N")
    return i - 1, n


def shard(entries: list, spec: str | None) -> list:
    """Every N-th entry starting at I (1-based), so `--shard 1/N` ... `--shard N/N` cover the list once."""
    s = parse_shard(spec)
    return entries if s is None else entries[s[0] :: s[1]]


def speaker_shard(names: Sequence[str], spec: str | None) -> list[bool]:
    """Which `names` fall in shard `I/N` (1-based) when speakers are split by a hash of their stored name (NFC):
    a speaker's utterances all land in one shard, whatever list or run they come in. All True for None."""
    s = parse_shard(spec)
    if s is None:
        return [True] * len(names)
    i, n = s
    return [int.from_bytes(hashlib.blake2b(nfc(x).encode("utf-8"), digest_size=8).digest(), "big") % n == i for x in names]


def default_root(paths: Iterable[str]) -> Path:
    """The deepest folder holding every path: output files keep their layout below it."""
    parents = [str(Path(p).resolve().parent) for p in paths]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


def output_path(src: str, out_dir: str | os.PathLike, root: str | os.PathLike, suffix: str) -> Path:
    """Where a file made from `src` goes: `out_dir / (src relative to root)`, with `suffix` replacing the extension.

    The extension is replaced case-insensitively, so TIMIT's `SA1.WAV` becomes `SA1.flac`.
    """
    try:
        rel = Path(src).resolve().relative_to(Path(root).resolve())
    except ValueError:
        raise SpkidError(f"{src}: not under --root {root}") from None
    return Path(out_dir) / rel.with_suffix(suffix)


MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def loads_json(text: str, source: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A user's JSON text, nested at most `max_depth` deep (checked before parsing: the parser recurses, and
    100 k nested brackets must be one error line, not a RecursionError); one SpkidError naming `source`."""
    depth = deepest = 0
    for c in _JSON_STRING.sub("", text):
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    if deepest > max_depth:
        raise SpkidError(f"{source}: JSON nested {deepest} deep (at most {max_depth} is read)")
    try:
        return json.loads(text)
    except ValueError as e:  # JSONDecodeError, and int() of a 5000-digit number
        raise SpkidError(f"{source}: not valid JSON ({getattr(e, 'msg', e)}"
                         f"{f', line {e.lineno}' if hasattr(e, 'lineno') else ''})") from None
    except RecursionError:
        raise SpkidError(f"{source}: JSON nested too deeply") from None


def nfc(name: str) -> str:
    """A speaker name as stored and compared: Unicode NFC (the composed form), so NFC and NFD spellings meet."""
    return unicodedata.normalize("NFC", name)


_INVISIBLE = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co"}


def name_key(name: str) -> str:
    """What two names that look alike share: NFKC, case-folded, without invisible characters (zero-width space,
    bidi controls). `alice`, `Alice`, `ａｌｉｃｅ` and `ali\\u200bce` have one key."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(c for c in folded if unicodedata.category(c) not in _INVISIBLE)


def printable(text: str) -> str:
    """`text` safe to show on a terminal: control, format (bidi overrides, zero-width), separator and surrogate
    characters as `\\xNN` / `\\uNNNN` escapes (a backslash itself stays), so an ESC sequence or a right-to-left
    override in a name is shown, not obeyed."""
    if text.isprintable():
        return text
    out = []
    for c in text:
        if unicodedata.category(c) in _INVISIBLE or (not c.isprintable() and c != " "):
            o = ord(c)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
        else:
            out.append(c)
    return "".join(out)


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """`n` and the noun that fits it, for messages: plural(1, "file") -> "1 file", plural(3, "file") -> "3 files",
    plural(2, "process", "processes") -> "2 processes". Large counts get thousands separators (12,000 files)."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"

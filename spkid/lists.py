"""Audio lists and output layouts: parsing and formatting list text, speaker labels, shards, output paths. No stdio.

**List** (DESIGN.md): UTF-8 text, one `PATH` or `PATH<TAB>LABEL` a line; blank and `#` lines skipped; order kept.
The key of an entry is its path as written; without a label the speaker is the parent folder's name
(`label_depth=N` takes the N-th ancestor). Reading a list from a file or stdin is `spkid.streams.read_list`'s job.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from spkid.errors import SpkidError

LIST_SUFFIXES = (".txt", ".lst", ".list", ".scp")


@dataclass(frozen=True)
class Entry:
    """One list item: `path` as written (also its key) and its speaker `label` (None when unknown)."""

    path: str
    label: str | None = None

    @property
    def key(self) -> str:
        return self.path


def is_list_file(arg: str) -> bool:
    return arg.lower().endswith(LIST_SUFFIXES)


def label_from_path(path: str, depth: int = 1) -> str | None:
    """The name of the `depth`-th ancestor folder of `path` (1 = parent), or None when there is none."""
    parts = Path(path).parts[:-1]
    if depth < 1 or len(parts) < depth:
        return None
    return parts[-depth]


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

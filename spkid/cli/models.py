"""`spkid models`: the catalogue of published encoders, and their download cache (`spkid.catalogue`)."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Annotated

import typer

from spkid import streams
from spkid.cli._common import err_console, show_progress
from spkid.errors import SpkidError, UsageError

if TYPE_CHECKING:
    from spkid.catalogue import Model

log = logging.getLogger(__name__)
app = typer.Typer(rich_markup_mode=None)

ACTIONS = ("list", "pull", "path", "rm")
TIMEOUT_S, RETRIES = 60.0, 3  # catalogue.TIMEOUT_S and RETRIES (a test pins them): the catalogue is imported on use


def _params(m: Model) -> str:
    return f"{m.params_m:g}M" if m.params_m is not None else "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n" for r in rows)


def _list_text(models: list[Model], long: bool) -> str:
    from spkid import catalogue

    if not long:
        rows = [["NAME", "FAMILY", "PARAMS", "EER", "SOURCE", "LICENCE", "CACHED"]]
        for m in models:
            rows.append([m.name, m.family, _params(m), catalogue.describe_eer(m),
                         m.eer.source if m.eer.percent is not None else "-",
                         m.licence.split(" (")[0], "yes" if catalogue.cached(m.name) else "no"])
        return _table(rows)
    blocks = []
    for m in models:
        folder = catalogue.cached(m.name)
        lines = [m.name,
                 f"  family:       {m.family}",
                 f"  architecture: {m.architecture}" + (f", {m.embed_dim}-d" if m.embed_dim else ""),
                 f"  parameters:   {_params(m)}",
                 f"  trained on:   {m.trained_on or '-'}",
                 f"  EER:          {catalogue.describe_eer(m)}" + (f" ({m.eer.note})" if m.eer.note else ""),
                 f"  source:       {m.eer.source or '-'}",
                 f"  licence:      {m.licence}",
                 f"  page:         {m.page or '-'}",
                 f"  cached:       {folder if folder else 'no'}"]
        for f in m.files:
            lines.append(f"  download:     {f.url}")
            lines.append(f"                as {f.name}" + (", unpacked" if f.extract else "")
                         + f"; sha256 {f.sha256 or 'not published'}"
                         + (f"; {f.size} bytes" if f.size is not None else ""))
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


class _Bar:
    """A rich progress bar per file on stderr when it is a terminal (not with -q); otherwise silent."""

    def __init__(self) -> None:
        self.progress = None
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> _Bar:
        if show_progress():
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), TimeRemainingColumn(), console=err_console(),
                                     transient=True)
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if self.progress is None:
            return
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total)
        self.progress.update(self.tasks[name], completed=done, total=total)


@app.command()
def models(
    action: Annotated[str, typer.Argument(metavar="list|pull|path|rm",
                                          help="list the catalogue (the default; `spkid models NAME...` lists "
                                               "those); pull (download) models into the cache; print the cached "
                                               "folder of each model (path); rm (delete) cached models.")] = "list",
    names: Annotated[list[str] | None, typer.Argument(metavar="NAME...", show_default=False,
                                                      help="Catalogue names (pull, path, rm; list: only these).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="list: one JSON array with every field (URLs, sha256, "
                                                         "cached folder).")] = False,
    long: Annotated[bool, typer.Option("--long", "-l", help="list: every field, download URLs included, a block "
                                                            "per model.")] = False,
    force: Annotated[bool, typer.Option("--force", help="pull: download again even if cached.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS", min=1.0,
                                           help="pull: give up on a server silent this long (then resume).")] = TIMEOUT_S,
    retries: Annotated[int, typer.Option("--retries", metavar="N", min=0,
                                         help="pull: resume a cut-off transfer this many times before failing.")] = RETRIES,
) -> None:
    """List the published encoders spkid can import, download them, and find them in the cache.

    The table gives each model's family, parameters, published EER with its source, and licence, and whether
    it is downloaded. `pull` fetches a model into the cache ($SPKID_HOME, else $XDG_CACHE_HOME/spkid, else
    ~/.cache/spkid): each file is resumed where a previous pull stopped, checked against its published size
    and sha256 (where none is published, the computed sha256 is printed and recorded beside the model), and the
    model folder appears whole or not at all. `--model NAME` in embed, enroll, verify, identify, export and
    train --init then reads it from the cache and never touches the network. $SPKID_CATALOGUE names extra
    catalogue files (same JSON format as spkid/data/catalogue.json) to add or override entries.

    \b
    Examples:
      spkid models                                   # the table; --json or -l for every field
      spkid models pull wespeaker-resnet34-lm
      spkid embed -m wespeaker-resnet34-lm < wavs.txt > emb.npy
      ls "$(spkid models path wespeaker-resnet34-lm)"
      spkid models rm wespeaker-resnet34-lm
    """
    from spkid import catalogue

    names = list(names or [])
    if action not in ACTIONS:
        if action not in catalogue.load():
            raise UsageError(f"{action!r} is neither list, pull, path nor rm, nor a model name")
        action, names = "list", [action, *names]
    if action == "list":
        known = catalogue.load()
        unknown = [n for n in names if n not in known]
        if unknown:
            catalogue.get(unknown[0])  # raises, naming the known ones
        chosen = [known[n] for n in names] if names else list(known.values())
        if as_json:
            streams.write_text(json.dumps(catalogue.listing(chosen), indent=2) + "\n")
        else:
            streams.write_text(_list_text(chosen, long))
        return
    if as_json or long:
        raise UsageError("--json and --long go with `spkid models list`")
    if not names:
        raise UsageError(f"give the model names to {action}; `spkid models` lists them")
    if action == "pull":
        for name in names:
            catalogue.get(name)  # every name known before anything downloads
        for name in names:
            with _Bar() as bar:
                report = catalogue.pull(name, force=force, timeout_s=timeout, retries=retries, progress=bar)
            if report.downloaded:
                size = sum(f["size"] for f in report.files)
                log.info("%s: downloaded %.1f MB into %s", name, size / 1e6, report.folder)
            else:
                log.info("%s: already in %s (--force downloads it again)", name, report.folder)
    elif action == "path":
        folders = []
        for name in names:
            folder = catalogue.resolve(name)
            if folder is None:
                catalogue.get(name)  # raises: unknown
            folders.append(str(folder))
        streams.write_text("".join(f + "\n" for f in folders))
    elif action == "rm":
        for name in names:
            if catalogue.remove(name):
                log.info("%s: removed from %s", name, catalogue.models_dir())
            else:
                raise SpkidError(f"model {name} is not downloaded ({catalogue.model_dir(name)})")

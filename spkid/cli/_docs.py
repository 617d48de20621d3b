"""Generate `man/spkid.1`, `man/spkid-<command>.1` and `completions/spkid.{bash,zsh,fish}` from the typer app.

    python -m spkid.cli._docs            # (re)write the files
    python -m spkid.cli._docs --check    # exit 1 and name the stale files if the committed ones differ

Man pages come from the commands' own help: the docstring (with its `\\b` example blocks), every parameter's
`get_help_record()`, defaults and choices, plus exit codes and files. Not click-man: it keeps only
`isinstance(p, click.Option)`, and typer vendors click, so every option would be silently dropped.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import typer
from typer._click import Context

from spkid import __version__
from spkid.cli import COMMANDS, _completion, app

DATE = "2026-11-22"  # fixed, so regenerating is reproducible; bump with the version
REPO = Path(__file__).resolve().parents[2]
SHELLS = ("bash", "zsh", "fish")

EXIT_STATUS = [
    ("0", "Success (items skipped with --skip-bad included)."),
    ("1", "Runtime error, printed as one line: spkid COMMAND: error: ... (-v adds the traceback). "
          "For verify -q: the trial was rejected."),
    ("2", "Usage error (unknown option, bad value). For verify -q: an error."),
    ("130", "Interrupted (Ctrl-C); no partial output files are left."),
]


def _esc(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.split("\n"))


def _paragraphs(help_text: str) -> str:
    """Help text to roff: plain paragraphs are filled; `\\b` blocks stay verbatim (.nf)."""
    out = []
    for block in re.split(r"\n\s*\n", help_text.strip()):
        lines = block.split("\n")
        if lines[0].strip() == "\b":
            body = "\n".join(lines[1:])
            indent = min((len(x) - len(x.lstrip()) for x in lines[1:] if x.strip()), default=0)
            body = "\n".join(x[indent:] for x in lines[1:])
            out.append(".PP\n.nf\n.RS 4\n" + _esc(body) + "\n.RE\n.fi")
        else:
            out.append(".PP\n" + _esc(" ".join(x.strip() for x in lines)))
    return "\n".join(out)


def _options(cmd, ctx: Context) -> str:
    out = []
    for param in cmd.get_params(ctx):
        rec = param.get_help_record(ctx)
        if rec is None:
            continue
        term, desc = rec
        out.append(f".TP\n.B {_esc(term)}\n{_esc(desc)}")
    return "\n".join(out)


def _page(name: str, cmd, ctx: Context, see_also: list[str]) -> str:
    help_text = cmd.help or ""
    summary = help_text.strip().split("\n")[0].rstrip(".")
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    parts = [
        f'.TH {name.upper()} 1 "{DATE}" "spkid {__version__}" "spkid manual"',
        ".SH NAME",
        f"{_esc(name)} \\- {_esc(summary)}",
        ".SH SYNOPSIS",
        f".B {_esc(name.replace('-', ' '))}\n{_esc(usage)}",
        ".SH DESCRIPTION",
        _paragraphs(help_text),
    ]
    if hasattr(cmd, "commands"):
        parts += [".SH COMMANDS"]
        for sub in COMMANDS:
            if sub in cmd.commands:
                parts.append(f".TP\n.BR spkid\\-{sub} (1)\n{_esc(cmd.commands[sub].get_short_help_str(200))}")
    parts += [".SH OPTIONS", _options(cmd, ctx), ".SH EXIT STATUS"]
    parts += [f".TP\n.B {code}\n{_esc(text)}" for code, text in EXIT_STATUS]
    parts += [
        ".SH ENVIRONMENT",
        ".TP\n.B OMP_NUM_THREADS\nCPU threads for numeric work (torch, FFT).",
        ".SH FILES",
        ".TP\n.I features.json\nThe exact feature configuration, written by spkid features beside the features.",
        ".TP\n.I enroll/\nA gallery: speakers.txt, embeddings.npy, counts.npy, gallery.json (model sha256, threshold, calibration).",
        ".TP\n.I model.pt\nA model file (spkid\\-model/1), loaded with torch weights_only=True, never unpickled.",
        ".SH SEE ALSO",
        ", ".join(f"\\fB{_esc(s)}\\fR(1)" for s in see_also),
    ]
    return "\n".join(parts) + "\n"


def render() -> dict[Path, str]:
    """Every generated file: path relative to the repository -> content."""
    root = typer.main.get_command(app)
    files: dict[Path, str] = {}
    with Context(root, info_name="spkid", **(root.context_settings or {})) as ctx:  # -h beside --help
        files[Path("man/spkid.1")] = _page("spkid", root, ctx, [f"spkid-{c}" for c in COMMANDS if c in root.commands])
        for name in COMMANDS:
            if name not in root.commands:
                continue
            cmd = root.commands[name]
            with Context(cmd, info_name=name, parent=ctx) as sub:
                see = ["spkid"] + [f"spkid-{c}" for c in COMMANDS if c != name and c in root.commands]
                files[Path(f"man/spkid-{name}.1")] = _page(f"spkid-{name}", cmd, sub, see)
    top, commands = _completion.command_tree(root, COMMANDS)
    for shell in SHELLS:
        files[Path(f"completions/spkid.{shell}")] = _completion.RENDER[shell](top, commands)
    return files


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    stale = []
    for rel, text in render().items():
        path = REPO / rel
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(rel))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print("stale generated files (run `python -m spkid.cli._docs`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `spkid` command: one typer app, one module per subcommand, listed here once in pipeline order; a call
builds it with the one subcommand it runs (`build`).

`main()` turns errors into one line (`spkid <cmd>: error: ...`, exit 1; options that do not go together exit 2),
leaves other usage errors to typer (exit 2),
shows the traceback with -v, and ends quietly on a broken pipe (`| head`).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Annotated

import typer
from typer import Abort, Exit
from typer._click.exceptions import ClickException

from spkid import __version__
from spkid.cli import _common
from spkid.errors import SpkidError, UsageError, catch_interrupts, check_interrupted


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spkid {__version__}")
        raise typer.Exit()


def root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging, and tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Speaker recognition from raw audio to an error-rate report, as composable Unix subcommands.

    \b
    Pipeline (each command reads the previous one's stdout):
      find wavs -name '*.flac' | spkid convert -d conv | spkid vad --trim -d voiced \\
        | spkid features -d feats > feats.txt
      spkid train feats.txt -o model.pt
      spkid embed -m model.pt < test.txt | spkid identify -g enroll/
      spkid verify --trials trials.txt -g enroll/ | spkid score --plot det.png
    """
    _common.setup_logging(verbose, quiet)


COMPLETE_VAR = "_SPKID_COMPLETE"
# Subcommands, one module each, in pipeline order (this is also the order of `spkid --help`).
COMMANDS = ("convert", "vad", "features", "train", "export", "embed", "enroll", "verify", "identify", "score", "models")
_APP: typer.Typer | None = None


def build(commands: tuple[str, ...] = COMMANDS) -> typer.Typer:
    """The `spkid` app with these subcommands. `main` builds it with only the command it runs: importing every
    command module and converting every command's options costs a per-file call about 0.07 s."""
    built = typer.Typer(name="spkid", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                        rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})
    built.callback()(root)
    for name in commands:
        built.add_typer(importlib.import_module(f"spkid.cli.{name}").app)
    return built


def __getattr__(name: str) -> typer.Typer:
    """`spkid.cli.app`: the app with every subcommand (help, man pages, completions), built once when asked for."""
    global _APP
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _APP is None:
        _APP = build()
    return _APP


def _command_name(args: list[str]) -> str:
    return next((a for a in args if a in COMMANDS), "")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    cmd = _common.STATE.command = _command_name(args)
    if COMPLETE_VAR in os.environ:
        from typer._completion_classes import completion_init  # registers bash/zsh/fish; typer does it only with add_completion

        completion_init()
    prefix = f"spkid {cmd}: " if cmd else "spkid: "
    catch_interrupts()
    try:
        cli = build((cmd,)) if cmd and COMPLETE_VAR not in os.environ else __getattr__("app")
        rv = cli(args=args, prog_name="spkid", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
        check_interrupted()  # a Ctrl-C that Python swallowed (errors.catch_interrupts)
    except Exit as e:
        code = e.exit_code
    except ClickException as e:
        e.show()
        code = e.exit_code
    except (Abort, KeyboardInterrupt):
        print(f"\n{prefix}interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        code = _broken_pipe()
    except (SpkidError, OSError) as e:
        if _common.STATE.verbose:
            traceback.print_exc()
        msg = str(e) if isinstance(e, SpkidError) else _os_message(e)
        print(f"{prefix}error: {msg}", file=sys.stderr)
        code = 2 if isinstance(e, UsageError) else 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = _broken_pipe()
    sys.exit(code)


def _os_message(e: OSError) -> str:
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}"


def _broken_pipe() -> int:
    """Python docs, "Note on SIGPIPE": point stdout at devnull so the interpreter's final flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1

"""The `spkid` shell: help, version, exit codes, one-line errors, -v tracebacks, broken pipes, no torch on help."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer

from spkid.cli import COMMANDS, app
from conftest import clip_files, sh


def test_help_lists_commands_in_pipeline_order():
    out = sh("spkid", check=False)
    assert out.returncode == 2  # no arguments: help and usage exit code, like git
    text = out.stdout.decode() + out.stderr.decode()
    listed = [c for c in COMMANDS if f"\n  {c} " in text]
    assert listed and listed == sorted(listed, key=COMMANDS.index)
    registered = [c.name for c in typer.main.get_command(app).commands.values()]
    assert registered == [c for c in COMMANDS if c in registered]


def test_version():
    out = sh("spkid --version", check=True)
    assert out.stdout.decode().startswith("spkid ")


def test_help_and_cli_import_do_not_import_torch():
    code = (
        "import sys; from spkid.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "for c in [c for c in sys.modules['spkid.cli'].COMMANDS]:\n"
        "    try:\n        main([c, '--help'])\n    except SystemExit:\n        pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_a_call_imports_only_what_its_command_uses():
    """One call builds the app with its own subcommand: no other command module, no pydantic (typer 0.29 builds a
    TypeAdapter per option), and no rich while stderr is not a terminal (plain log lines)."""
    code = (
        "import sys; from spkid.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('spkid.cli.') and not m.startswith('spkid.cli._')),"
        " sorted({m.split('.')[0] for m in sys.modules} & {'pydantic', 'rich', 'torch'}), file=sys.stderr)\n"
    )
    clip = str(clip_files("probe")[0])
    err = subprocess.run([sys.executable, "-c", code, "vad", clip], check=True, capture_output=True).stderr
    assert err.decode().splitlines()[-1] == "['spkid.cli.vad'] []"
    env = {**os.environ, "TTY_COMPATIBLE": "1"}  # a terminal as rich decides it: its log handler
    err = subprocess.run([sys.executable, "-c", code, "vad", clip], check=True, capture_output=True, env=env).stderr
    assert err.decode().splitlines()[-1].endswith("['spkid.cli.vad'] ['rich']")  # after the progress bar's escapes


@pytest.mark.parametrize("cmd", [c for c in COMMANDS])
def test_every_command_has_help_with_an_example(cmd: str):
    if cmd not in [c.name for c in typer.main.get_command(app).commands.values()]:
        pytest.skip(f"{cmd} not implemented yet")
    out = sh(f"spkid {cmd} --help", check=True).stdout.decode()
    assert out.startswith(f"Usage: spkid {cmd}") and "Example" in out


def test_usage_error_exits_2():
    out = sh("spkid convert --rate nope -d x a.wav")
    assert out.returncode == 2 and "Invalid value" in out.stderr.decode()
    out = sh("spkid nosuchcommand")
    assert out.returncode == 2


def test_runtime_error_is_one_line_and_verbose_shows_traceback(tmp_path):
    out = sh(f"spkid convert {tmp_path / 'nope.wav'} -d {tmp_path / 'o'}")
    err = out.stderr.decode()
    assert out.returncode == 1 and err == f"spkid convert: error: {tmp_path / 'nope.wav'}: no such file\n"
    out = sh(f"spkid -v convert {tmp_path / 'nope.wav'} -d {tmp_path / 'o'}")
    assert out.returncode == 1 and "Traceback" in out.stderr.decode()


def test_broken_pipe_ends_quietly():
    code = (
        "import typer; from spkid.cli import app, main\n"
        "@app.command('flood')\n"
        "def flood():\n    import sys\n    for i in range(200000): sys.stdout.write(f'line {i}\\n')\n"
        "main(['flood'])\n"
    )
    out = subprocess.run(
        ["bash", "-c", f"{sys.executable} -c \"{code}\" | head -1"], capture_output=True, text=True
    )
    assert out.stdout == "line 0\n"
    assert out.stderr == ""

"""Shell completions (completions/spkid.{bash,zsh,fish}): complete in the real shells, agree with the CLI's command
tree, and never start Python (a TAB costs milliseconds, issue 16). zsh and fish are tested where installed."""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import typer

from conftest import REPO
from spkid.cli import COMMANDS, app

SCRIPTS = {shell: REPO / f"completions/spkid.{shell}" for shell in ("bash", "zsh", "fish")}
BASH = shutil.which("bash")

BASH_HARNESS = """\
source "$1"
compopt() { printf 'compopt %s\\n' "$*"; }  # only a real TAB can apply it: show what was asked
shift
COMP_WORDS=("$@")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_spkid_completion spkid
printf '%s\\n' "${COMPREPLY[@]}"
"""


def bash_complete(*words: str, cwd: Path = REPO, env: dict | None = None) -> list[str]:
    """What the bash completion function offers for the last of `words` (split as bash's COMP_WORDS, "" = a TAB
    after a space), as lines: candidates, and `compopt -o ...` where it hands over to readline's file names."""
    proc = subprocess.run([BASH, "--norc", "--noprofile", "-c", BASH_HARNESS, "bash", str(SCRIPTS["bash"]), *words],
                          capture_output=True, text=True, cwd=cwd, env=env)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def _tree() -> dict[str, set[str]]:
    """Every command's option strings, from the click command tree ("" = spkid's own)."""
    from typer._click import Context

    root = typer.main.get_command(app)
    with Context(root, info_name="spkid", **root.context_settings) as ctx:
        tree = {"": {o for p in root.get_params(ctx) for o in p.opts}}
        for name in COMMANDS:
            cmd = root.commands[name]
            with Context(cmd, info_name=name, parent=ctx) as sub:
                tree[name] = {o for p in cmd.get_params(sub) if p.param_type_name == "option"
                              for o in p.opts + p.secondary_opts}
    return tree


def test_bash_completes_commands_options_and_choices():
    assert bash_complete("spkid", "ve") == ["verify"]
    assert bash_complete("spkid", "ide") == ["identify"]
    assert bash_complete("spkid", "") == list(COMMANDS)
    assert bash_complete("spkid", "-v", "id") == ["identify"]  # spkid's own options before the command
    assert bash_complete("spkid", "verify", "--dev") == ["--device"]
    assert bash_complete("spkid", "verify", "--device", "") == ["auto", "cpu", "cuda"]
    assert bash_complete("spkid", "verify", "--device", "=", "c") == ["cpu", "cuda"]  # --device=c
    assert bash_complete("spkid", "verify", "--device", "=") == ["auto", "cpu", "cuda"]
    assert bash_complete("spkid", "convert", "-f", "") == ["flac", "wav"]
    assert bash_complete("spkid", "embed", "--backend", "o") == ["onnx"]
    assert bash_complete("spkid", "features", "--backend", "") == ["numpy", "psf"]
    assert bash_complete("spkid", "train", "--device", "") == ["auto", "cpu", "cuda"]  # a str option's metavar
    assert "ecapa_tdnn" in bash_complete("spkid", "train", "--model", "")
    assert "--model" in bash_complete("spkid", "identify", "--mo")
    embed = bash_complete("spkid", "embed", "-")
    assert {"-m", "--model", "-o", "--output", "--device", "--backend", "-j", "--jobs", "-h", "--help"} <= set(embed)
    assert not {"--gallery", "-g"} & set(embed)  # another command's
    assert bash_complete("spkid", "-") == ["-v", "--verbose", "-q", "--quiet", "--version", "-h", "--help"]


def test_bash_completes_paths_where_a_parameter_names_one(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    (tmp_path / "my clips").mkdir()
    assert bash_complete("spkid", "verify", "a.wav", "") == ["compopt -o default"]  # positional: file names
    assert bash_complete("spkid", "verify", "-g", "") == ["compopt -o dirnames"]  # DIR: folders
    assert bash_complete("spkid", "verify", "--trials", "") == ["compopt -o default"]  # FILE
    assert bash_complete("spkid", "train", "--noise", "") == ["compopt -o default"]  # LIST|DIR
    assert bash_complete("spkid", "verify", "--jobs", "") == []  # N: nothing, not file names
    assert bash_complete("spkid", "verify", "--threshold", "") == []
    # FILE|resemblyzer: the word and the file names (one with a space stays one candidate)
    got = bash_complete("spkid", "verify", "-m", "", cwd=tmp_path)
    assert got[0] == "compopt -o filenames" and sorted(got[1:]) == ["model.pt", "my clips", "resemblyzer"]
    assert bash_complete("spkid", "embed", "--model", "re", cwd=tmp_path)[1:] == ["resemblyzer"]


@pytest.fixture
def no_python(tmp_path):
    """An environment whose PATH holds only decoys (`spkid`, `python`, `python3`, `env`) that leave a mark when run;
    the test fails if one ran."""
    bin_ = tmp_path / "decoys"
    bin_.mkdir()
    for name in ("spkid", "python", "python3", "env"):
        (bin_ / name).write_text(f"#!/bin/sh\ntouch {tmp_path}/ran-{name}\n")
        (bin_ / name).chmod(0o755)
    yield {"PATH": str(bin_), "HOME": str(tmp_path)}
    assert list(tmp_path.glob("ran-*")) == []


def _interactive_bash_tab(line: str, expect: str, cwd: Path) -> str:
    """Type `line` and a TAB into an interactive bash (on a pseudo-terminal) that sourced the script; the screen
    once `expect` shows (or after 20 s)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(cwd)
        os.execv(BASH, ["bash", "--norc", "--noprofile", "-i"])
    screen = ""
    try:
        os.write(fd, f"PS1='$ '; source {SCRIPTS['bash']}; echo ready\n".encode())
        os.write(fd, line.encode() + b"\t")
        deadline = time.monotonic() + 20
        while expect not in screen.rpartition("ready")[2] and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                screen += os.read(fd, 65536).decode(errors="replace")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    return screen.rpartition("ready")[2]


def test_a_real_tab_completes_file_and_folder_names(tmp_path):
    """What the function hands to readline (`compopt -o default/dirnames`) completes names at a real prompt."""
    (tmp_path / "enroll_dir").mkdir()
    (tmp_path / "trials.txt").write_text("")
    assert "spkid verify -g enroll_dir/" in _interactive_bash_tab("spkid verify -g enr", "enroll_dir/", tmp_path)
    assert "spkid verify --trials trials.txt " in _interactive_bash_tab("spkid verify --trials tr", "trials.txt ",
                                                                         tmp_path)


def test_completion_never_starts_python(no_python):
    """A TAB runs only bash builtins: with nothing but the decoys to run, commands, options and choices complete."""
    assert bash_complete("spkid", "ve", env=no_python) == ["verify"]
    assert bash_complete("spkid", "verify", "--device", "", env=no_python) == ["auto", "cpu", "cuda"]
    assert "--model" in bash_complete("spkid", "embed", "-", env=no_python)
    for script in SCRIPTS.values():
        assert "_SPKID_COMPLETE" not in script.read_text(encoding="utf-8")


def test_every_option_of_the_cli_completes():
    """The scripts follow the command tree: each command offers exactly its own options."""
    tree = _tree()
    assert set(bash_complete("spkid", "-")) == tree[""]
    for name in COMMANDS:
        assert set(bash_complete("spkid", name, "-")) == tree[name], name
        fish = SCRIPTS["fish"].read_text(encoding="utf-8")
        assert f"-a {name} " in fish


def test_the_old_dynamic_completion_still_answers():
    """Scripts generated by older versions call back `_SPKID_COMPLETE=complete_bash spkid`: it keeps working."""
    env = {**os.environ, "_SPKID_COMPLETE": "complete_bash", "COMP_WORDS": "spkid ve", "COMP_CWORD": "1"}
    proc = subprocess.run(["spkid"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.split() == ["verify"], proc.stderr


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish not installed")
@pytest.mark.parametrize(("line", "expected"), [
    ("spkid ve", ["verify"]),
    ("spkid -v id", ["identify"]),
    ("spkid verify --dev", ["--device"]),
    ("spkid verify --device ", ["auto", "cpu", "cuda"]),
    ("spkid convert --format ", ["flac", "wav"]),
    ("spkid verify --jobs ", []),
])
def test_fish_completes(line, expected, no_python):
    script = f"source {SCRIPTS['fish']}; complete -C '{line}'"
    proc = subprocess.run([shutil.which("fish"), "--no-config", "-c", script], capture_output=True, text=True,
                          cwd=REPO, env=no_python)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    assert [x.split("\t")[0] for x in proc.stdout.splitlines()] == expected


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish not installed")
def test_fish_completes_options_and_files(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    script = (f"source {SCRIPTS['fish']}; complete -C 'spkid embed -'; echo; complete -C 'spkid verify -m '; echo; "
              "complete -C 'spkid verify m'")
    proc = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    options, model, positional = ([x.split("\t")[0] for x in part.splitlines() if x]
                                  for part in proc.stdout.split("\n\n"))
    assert {"-m", "--model", "--device", "--backend"} <= set(options) and "--gallery" not in options
    assert sorted(model) == ["model.pt", "resemblyzer"]
    assert positional == ["model.pt"]


# zsh completes only inside its line editor: drive an interactive zsh on a pseudo-terminal (zpty), with compadd
# wrapped to record every candidate offered, then type the line and a TAB.
ZSH_HARNESS = """\
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PS1=''; fpath=(${(q)1} \\$fpath); autoload -U compinit; compinit -u -D"
zpty -w z 'compadd() { if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\\ * ]]; then builtin compadd "$@"; return; fi; \\
local -a h; builtin compadd -A h "$@"; (( $#h )) && print -rl -- $h >> '${(q)2}'; builtin compadd "$@"; }'
zpty -w z "zstyle ':completion:*' list-prompt ''; zstyle ':completion:*' menu no; LISTMAX=100000"
zpty -w z "tab() { zle complete-word; : > ${(q)2}.done }; zle -N tab; bindkey '^I' tab"
zpty -n -w z "$3"$'\\t'
for i in {1..600}; do [[ -e $2.done ]] && break; sleep 0.05; done
zpty -d z
"""


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
@pytest.mark.parametrize(("line", "expected"), [
    ("spkid ve", {"verify"}),
    ("spkid -v id", {"identify"}),
    ("spkid verify --dev", {"--device"}),
    ("spkid verify --device ", {"auto", "cpu", "cuda"}),
    ("spkid verify --device=c", {"cpu", "cuda"}),
    ("spkid embed -", {"-m", "--model", "-o", "--output", "--window", "--hop", "--no-vad", "--device", "--backend",
                       "--threads", "-b", "--batch-size", "-j", "--jobs", "--shard", "--skip-bad", "--allow-commands", "--format", "-h",
                           "--help"}),
    ("spkid verify -m ", {"model.pt", "resemblyzer"}),
    ("spkid verify --jobs ", set()),
])
def test_zsh_completes(tmp_path, line, expected):
    """Installed as its README says: the script as `_spkid` in a folder of $fpath, autoloaded by compinit."""
    fpath = tmp_path / "fpath"
    fpath.mkdir()
    shutil.copy(SCRIPTS["zsh"], fpath / "_spkid")
    work = tmp_path / "work"
    work.mkdir()
    (work / "model.pt").write_bytes(b"")
    out = tmp_path / "offered"
    subprocess.run(["zsh", "-f", "-c", ZSH_HARNESS, "zsh", str(fpath), str(out), line], cwd=work, timeout=60,
                   check=True, capture_output=True)
    assert (tmp_path / "offered.done").exists()
    offered = set(out.read_text().split()) if out.exists() else set()
    assert offered == expected

"""Generated man pages and shell completions: up to date, renderable, and completing in a real bash."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import REPO, sh


def test_generated_files_are_up_to_date():
    proc = sh(f"cd {REPO} && python -m spkid.cli._docs --check")
    assert proc.returncode == 0, proc.stderr.decode()


@pytest.mark.skipif(shutil.which("man") is None, reason="man not installed")
def test_man_page_renders():
    proc = subprocess.run(["man", "-l", str(REPO / "man/spkid-identify.1")], capture_output=True, text=True,
                          env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "MAN_KEEP_FORMATTING": "0"})
    assert proc.returncode == 0, proc.stderr
    text = re.sub(".\x08", "", proc.stdout)  # groff's overstrike bold when not on a terminal
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "SEE ALSO"):
        assert section in text
    assert "--gallery" in text.replace("‐", "-")


def _complete(words: str) -> list[str]:
    """Complete the last word of `words` through the generated bash completion function, in a real bash."""
    script = REPO / "completions/spkid.bash"
    cmd = (f"source {script}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); "
           f"[[ '{words}' == *' ' ]] && COMP_WORDS+=('') && COMP_CWORD=$((COMP_CWORD + 1)); "
           "_spkid_completion spkid; printf '%s\\n' \"${COMPREPLY[@]}\"")
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_bash_completes_commands_and_option_values():
    assert _complete("spkid ide") == ["identify"]
    assert "--model" in _complete("spkid identify --mo")
    assert "ecapa_tdnn" in _complete("spkid train --model ")

"""Generated man pages and shell completions: up to date and renderable (the completions in real shells:
test_completion.py)."""

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

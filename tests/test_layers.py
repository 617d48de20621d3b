"""The layering of DESIGN.md, as `.importlinter` states it: the real contract passes, and a weakened one fails."""

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")

pytestmark = pytest.mark.skipif(LINT is None, reason="lint-imports (import-linter) is not installed: pip install -e '.[test]'")


def _lint(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache", str(config)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _layers(config: configparser.ConfigParser) -> list[str]:
    return [line.strip() for line in config["importlinter:contract:layers"]["layers"].splitlines() if line.strip()]


def _write(config: configparser.ConfigParser, path: Path) -> Path:
    with open(path, "w") as f:
        config.write(f)
    return path


def _read() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    return config


def test_contracts_hold():
    out = _lint(ROOT / ".importlinter")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_removing_a_layer_breaks_the_contract(tmp_path):
    config = _read()
    layers = _layers(config)
    core = next(line for line in layers if line.startswith("audio"))
    config["importlinter:contract:layers"]["layers"] = "\n" + "\n".join(x for x in layers if x != core)
    out = _lint(_write(config, tmp_path / "weakened.ini"))
    assert out.returncode != 0
    assert "spkid.gallery" in out.stdout  # an unplaced core module is named


def test_swapping_core_and_networks_breaks_the_contract(tmp_path):
    config = _read()
    layers = _layers(config)
    nets = next(i for i, line in enumerate(layers) if line.startswith("embedding"))
    layers[nets], layers[nets + 1] = layers[nets + 1], layers[nets]
    config["importlinter:contract:layers"]["layers"] = "\n" + "\n".join(layers)
    out = _lint(_write(config, tmp_path / "swapped.ini"))
    assert out.returncode != 0
    assert "BROKEN" in out.stdout

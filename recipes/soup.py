"""Average the weights of models fine-tuned from one start: a "model soup" (Wortsman et al., ICML 2022; the
interpolation of a fine-tuned model with its start is WiSE-FT, Wortsman et al., CVPR 2022). Models that share a
start usually sit in one basin of the loss, so their weighted mean is itself a good model, and often better
than each ingredient away from the data each was fine-tuned on; it costs nothing at inference.

    python recipes/soup.py OUT.pt MODEL=WEIGHT [MODEL=WEIGHT ...]

MODEL is a spkid model file (or `resemblyzer`, the pretrained encoder); the weights must be positive and sum to 1.
Every ingredient must have the same architecture, feature and embedding settings. The soup is written atomically
with its recipe in its training record (each ingredient's identity, weight and description) and no calibration:
fit one on held-out trials (`spkid score --calibrate`), as recipes/train_default.sh does.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def ingredient(text: str) -> tuple[str, float]:
    model, sep, weight = text.rpartition("=")
    try:
        w = float(weight)
    except ValueError:
        w = math.nan
    if not sep or not model or not math.isfinite(w) or w <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected MODEL=WEIGHT with a positive weight")
    return model, w


def read(model: str):
    """(spec, state, identity) of a model file or of the pretrained encoder."""
    from spkid import modelfile, pretrained

    if model == pretrained.NAME:
        return pretrained.spec(), pretrained.state_dict(), pretrained.sha256()
    return modelfile.verify(model)


def cook(ingredients: list[tuple[str, float]]):
    """(spec, state) of the weighted mean of the ingredients; SpkidError when they do not mix."""
    import torch

    from spkid.errors import SpkidError
    from spkid.modelfile import ModelSpec

    total = sum(w for _, w in ingredients)
    if abs(total - 1) > 1e-6:
        raise SpkidError(f"the weights sum to {total:g}, not 1")
    parts = [(m, w, *read(m)) for m, w in ingredients]
    _, _, first, state0, _ = parts[0]
    for m, _, spec, state, _ in parts[1:]:
        for what in ("model", "features", "embedding"):
            if getattr(spec, what) != getattr(first, what):
                raise SpkidError(f"{m}: its {what} settings differ from {parts[0][0]}'s; only models of one "
                                 "architecture, front end and windows can be averaged")
        if {k: tuple(v.shape) for k, v in state.items()} != {k: tuple(v.shape) for k, v in state0.items()}:
            raise SpkidError(f"{m}: its weights' names or shapes differ from {parts[0][0]}'s")
    # integer buffers (BatchNorm's batch counters) are not weights: the first ingredient's are kept
    soup = {k: sum(w * state[k].double() for _, w, _, state, _ in parts).to(v.dtype) if torch.is_floating_point(v)
            else v.clone() for k, v in state0.items()}
    recipe = [{"model": m, "model_sha256": sha, "weight": w, "description": spec.training.get("config", {})
               .get("description") or spec.training.get("description") or spec.training.get("source", "")}
              for m, w, spec, _, sha in parts]
    desc = "Weight average (model soup) of " + ", ".join(f"{w:g} x {Path(m).name}" for m, w in ingredients)
    spec = ModelSpec(model=first.model, features=first.features, embedding=first.embedding,
                     training={"description": desc, "soup": recipe})
    return spec, soup


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the model file to write")
    ap.add_argument("ingredients", nargs="+", type=ingredient, metavar="MODEL=WEIGHT")
    a = ap.parse_args(argv)
    from spkid import modelfile
    from spkid.errors import SpkidError

    try:
        spec, state = cook(a.ingredients)
        sha = modelfile.save(a.out, modelfile.build(spec, state, a.out), spec)
    except SpkidError as e:
        print(f"soup: error: {e}", file=sys.stderr)
        return 1
    print(f"soup: wrote {a.out} ({spec.training['description']}; identity {sha[:12]})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

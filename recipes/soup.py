"""Combine models: average the weights of models fine-tuned from one start (a "model soup"), or, with --ensemble
or --fusion, run them side by side and average their scores.

A soup (Wortsman et al., ICML 2022; the interpolation of a fine-tuned model with its start is WiSE-FT, Wortsman et
al., CVPR 2022): models that share a start usually sit in one basin of the loss, so their weighted mean is itself a
good model, often better than each ingredient away from the data each was fine-tuned on, at no cost at inference.
Every ingredient must have the same architecture, feature and embedding settings.

An ensemble (`spkid.models.ensemble`): one network holding the members, whose embedding is theirs side by side,
each scaled by the square root of its weight, so a cosine is the weighted mean of the members' cosines (score
fusion). It costs the sum of the members' time, and gains more than a soup where the members have learnt
different things. The members need the same feature and embedding settings only. `--dim N --fit LIST` keeps the
N leading directions of the side-by-side embeddings of LIST's audio (an uncentred PCA: the cosines barely move
when the members agree), so the ensemble's embedding is no larger than one member's; fit it on training
speakers, never on the speakers you test on.

A fusion (`--fusion`, `spkid.models.fusion`): whole models side by side, each on its own front end and windows
(SpeechBrain's ECAPA-TDNN on 80 log Mel bands of the whole utterance beside GE2E networks on 40 power Mel bands in
1.6 s windows), scored like an ensemble; `--long-weights` makes the weights follow each utterance's speech
(MODEL=WEIGHT's up to `--short-s` seconds, these from `--long-s` on, linearly between). `--center I --fit LIST`
centres member I (0-based; repeatable): its unit embeddings of LIST's audio are averaged per corpus (the label's
prefix before ':', as recipes/devsplit.py writes them), and the mean of those means, stored in the model's config,
is taken out of each of that member's utterance embeddings (`spkid.utterance.fusion_centers`); fit it on training
speakers. `--local-center I --fit LIST` then centres member I locally (`spkid.utterance.LocalCenter`): its unit
(centred) embeddings of LIST's audio are averaged per speaker (the label), and each utterance embedding loses
`--local-weight` times the mean of its `--local-top-n` nearest speaker means, stored (int8) in the model's
config. `--speed-copies F,F` makes the fusion embed each utterance with under `--speed-copies-below` seconds of
speech also played at those speeds, averaging the embeddings (`spkid.utterance.SpeedCopies`; centring in the same
call is fitted before they are added; `--speed-copies-members` limits them to some members). One MODEL=1 that is
already a fusion is taken as it is (its configuration and training record kept), so a fusion can be centred again
without its members. `--int8` stores the large weights as int8
(`spkid.modelfile.quantize`), about a quarter of the bytes.

    python recipes/soup.py [--ensemble [--dim N --fit LIST] | --fusion [--long-weights W,W --short-s S --long-s S]
                           [--center I ...] [--local-center I ...] [--fit LIST] [--speed-copies F,F]] [--int8]
                           OUT.pt MODEL=WEIGHT ...

MODEL is a spkid model file, `resemblyzer` (the pretrained encoder) or a published model folder of another toolkit
(`spkid.importers`); the weights must be positive and sum to 1.
The result is written atomically with its recipe in its training record (each ingredient's identity, weight and
description) and no calibration: fit one on held-out trials (`spkid score --calibrate`), as
recipes/train_default.sh does.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

SPEED_COPIES_BELOW_S = 3.0  # --speed-copies-below: the seconds of speech under which an utterance gets copies


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
    """(spec, state, identity) of a model file, of the pretrained encoder, or of a published model of another toolkit
    (a folder `spkid.importers` reads)."""
    from spkid import embedding, modelfile, pretrained

    if model == pretrained.NAME:
        return pretrained.spec(), pretrained.state_dict(), pretrained.sha256()
    if Path(model).is_dir():
        ref = embedding.resolve_model(model, "torch")
        return (*ref.weights(), ref.sha256)
    return modelfile.verify(model)


def cook(ingredients: list[tuple[str, float]], ensemble: bool = False, fusion: dict | None = None):
    """(spec, state) of the weighted mean of the ingredients, of their ensemble, or of their fusion (`fusion`: the
    duration-dependent weights, `long_weights`, `short_s`, `long_s`, of `spkid.utterance.FusionWeights`; {} for
    none); SpkidError when they do not mix."""
    import torch

    from spkid.errors import SpkidError
    from spkid.frontends import FUSION_KIND
    from spkid.modelfile import ModelSpec

    total = sum(w for _, w in ingredients)
    if abs(total - 1) > 1e-6:
        raise SpkidError(f"the weights sum to {total:g}, not 1")
    parts = [(m, w, *read(m)) for m, w in ingredients]
    _, _, first, state0, _ = parts[0]
    if len(parts) == 1 and first.model["name"] == "fusion" and fusion is None and not ensemble:
        return ModelSpec(model=first.model, features=first.features, embedding=first.embedding,
                         training=first.training), state0
    for m, _, spec, state, _ in parts[1:] if fusion is None else []:
        for what in ("features", "embedding") if ensemble else ("model", "features", "embedding"):
            if getattr(spec, what) != getattr(first, what):
                kind = "front end and windows" if ensemble else "architecture, front end and windows"
                raise SpkidError(f"{m}: its {what} settings differ from {parts[0][0]}'s; only models of one "
                                 f"{kind} can be {'run together' if ensemble else 'averaged'}")
        if not ensemble and {k: tuple(v.shape) for k, v in state.items()} != {k: tuple(v.shape) for k, v in state0.items()}:
            raise SpkidError(f"{m}: its weights' names or shapes differ from {parts[0][0]}'s")
    recipe = [{"model": m, "model_sha256": sha, "weight": w, "description": spec.training.get("config", {})
               .get("description") or spec.training.get("description") or spec.training.get("source", "")}
              for m, w, spec, _, sha in parts]
    names = ", ".join(f"{w:g} x {Path(m).name}" for m, w in ingredients)
    if fusion is not None:
        members = [{"model": spec.model, "features": spec.features, "embedding": spec.embedding}
                   for _, _, spec, _, _ in parts]
        model = {"name": "fusion", "kwargs": {"members": members, "weights": [w for _, w in ingredients], **fusion}}
        state = {f"members.{i}.{k}": v for i, (_, _, _, st, _) in enumerate(parts) for k, v in st.items()}
        training = {"description": f"Fusion (score average) of {names}", "fusion": recipe}
        return ModelSpec(model=model, features={"kind": FUSION_KIND}, embedding={}, training=training), state
    if ensemble:
        model = {"name": "ensemble", "kwargs": {"members": [spec.model for _, _, spec, _, _ in parts],
                                                "weights": [w for _, w in ingredients]}}
        state = {f"members.{i}.{k}": v for i, (_, _, _, st, _) in enumerate(parts) for k, v in st.items()}
        training = {"description": f"Ensemble (score average) of {names}", "ensemble": recipe}
        return ModelSpec(model=model, features=first.features, embedding=first.embedding, training=training), state
    # integer buffers (BatchNorm's batch counters) are not weights: the first ingredient's are kept
    soup = {k: sum(w * state[k].double() for _, w, _, state, _ in parts).to(v.dtype) if torch.is_floating_point(v)
            else v.clone() for k, v in state0.items()}
    spec = ModelSpec(model=first.model, features=first.features, embedding=first.embedding,
                     training={"description": f"Weight average (model soup) of {names}", "soup": recipe})
    return spec, soup


def embed_list(spec, state, paths: list[str], out: Path):
    """Embeddings (torch) of the audio files `paths` with the model `spec`/`state`, written beside `out` meanwhile."""
    import os
    import tempfile

    from spkid import modelfile
    from spkid.embedding import Embedder

    fd, tmp = tempfile.mkstemp(suffix=".pt", dir=out.parent)
    os.close(fd)
    try:
        modelfile.save(tmp, modelfile.build(spec, state, tmp), spec)
        return Embedder.from_model(tmp, backend="torch").embed_files(paths)
    finally:
        os.unlink(tmp)


def project(spec, state, dim: int, fit: Path, out: Path):
    """(spec, state) of the ensemble `spec`/`state` projected onto the `dim` leading directions of its embeddings of
    the audio files listed in `fit`."""
    import numpy as np
    import torch

    from spkid import streams
    from spkid.errors import SpkidError
    from spkid.lists import plural

    paths = [e.path for e in streams.read_list([str(fit)])]
    if len(paths) < dim:
        raise SpkidError(f"--fit {fit}: {plural(len(paths), 'file')} cannot fit {dim} directions; list at least "
                         f"{dim} files of training speakers")
    emb = embed_list(spec, state, paths, out)
    _, sv, vt = np.linalg.svd(emb.astype(np.float64), full_matrices=False)
    basis = vt[:dim] * np.sign(vt[:dim][np.arange(dim), np.abs(vt[:dim]).argmax(1)])[:, None]  # fixed signs
    kept = float((sv[:dim] ** 2).sum() / (sv**2).sum())
    spec.model["kwargs"]["dim"] = dim
    spec.training["projection"] = {"dim": dim, "fitted_on": str(fit), "files": len(paths), "variance_kept": kept}
    return spec, {**state, "projection": torch.from_numpy(basis.astype(np.float32))}


def fit_list(spec, members: list[int], fit: Path, option: str):
    """(the fusion's member embedding sizes, the entries of the list `fit`), refusing members `option` (--center or
    --local-center) names that the fusion does not have, and an empty list."""
    from spkid import streams
    from spkid.errors import SpkidError
    from spkid.models import build_model

    dims = [int(build_model(m["model"]["name"], **m["model"].get("kwargs", {})).embed_dim)
            for m in spec.model["kwargs"]["members"]]
    if bad := [i for i in members if not 0 <= i < len(dims)]:
        raise SpkidError(f"{option} {bad[0]}: the fusion has members 0 to {len(dims) - 1}")
    entries = streams.read_list([str(fit)])
    if not entries:
        raise SpkidError(f"--fit {fit}: lists no audio files")
    return dims, entries


def member_embeddings(spec, state, dims: list[int], members: list[int], entries, out: Path) -> dict:
    """{member: its unit utterance embeddings (float64) of the files of `entries`}, as the fusion `spec` makes them."""
    import numpy as np

    emb = embed_list(spec, state, [e.path for e in entries], out).astype(np.float64)
    blocks = {}
    for i in sorted(set(members)):
        part = emb[:, sum(dims[:i]) : sum(dims[: i + 1])]
        blocks[i] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return blocks


def center(spec, state, members: list[int], fit: Path, out: Path):
    """The fusion `spec` with `members` centred on the mean over corpora of their mean unit embeddings of the audio
    files listed in `fit` (module docstring)."""
    import numpy as np

    dims, entries = fit_list(spec, members, fit, "--center")
    corpora = np.array([(e.label or "").partition(":")[0] if ":" in (e.label or "") else "" for e in entries])
    centers: list = [None] * len(dims)
    norms = {}
    for i, part in member_embeddings(spec, state, dims, members, entries, out).items():
        mean = np.mean([part[corpora == c].mean(0) for c in sorted(set(corpora))], axis=0)
        centers[i] = [float(x) for x in mean.astype(np.float32)]
        norms[str(i)] = round(float(np.linalg.norm(mean)), 4)
    spec.model["kwargs"]["centers"] = centers
    spec.training["centering"] = {"fitted_on": str(fit), "files": len(entries), "corpora": len(set(corpora)),
                                  "center_norms": norms}
    return spec


def local_center(spec, state, members: list[int], fit: Path, out: Path, top_n: int, weight: float):
    """The fusion `spec` with `members` centred locally on the per-speaker means of their unit embeddings of the
    audio files listed in `fit` (module docstring)."""
    import numpy as np

    from spkid.errors import SpkidError
    from spkid.utterance import LocalCenter

    dims, entries = fit_list(spec, members, fit, "--local-center")
    labels = np.array([e.label or "" for e in entries])
    if len(set(labels) - {""}) < top_n or "" in labels:
        raise SpkidError(f"--fit {fit}: local centring needs a speaker label on every line and at least "
                         f"{top_n} speakers (--local-top-n)")
    spec.model["kwargs"].pop("local_centers", None)  # fitted on the embeddings before any local centring
    local: list = [None] * len(dims)
    for i, part in member_embeddings(spec, state, dims, members, entries, out).items():
        means = np.stack([part[labels == s].mean(0) for s in sorted(set(labels))])
        local[i] = LocalCenter(means / np.linalg.norm(means, axis=1, keepdims=True), top_n, weight).to_dict()
    spec.model["kwargs"]["local_centers"] = local
    spec.training["local_centering"] = {"fitted_on": str(fit), "files": len(entries), "speakers": len(set(labels)),
                                        "members": sorted(set(members)), "top_n": top_n, "weight": weight}
    return spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ensemble", action="store_true", help="run the models side by side (score average) instead of "
                    "averaging their weights")
    ap.add_argument("--fusion", action="store_true", help="run whole models side by side, each on its own front end "
                    "and windows (score average; the models may differ in anything)")
    ap.add_argument("--long-weights", type=lambda t: [float(x) for x in t.split(",")], metavar="W,W,...",
                    help="with --fusion: the members' weights from --long-s seconds of speech on (MODEL=WEIGHT's up to "
                    "--short-s, linearly in between)")
    ap.add_argument("--short-s", type=float, default=1.0, help="with --long-weights (default: %(default)s)")
    ap.add_argument("--long-s", type=float, default=3.0, help="with --long-weights (default: %(default)s)")
    ap.add_argument("--int8", action="store_true", help="store the large weights as int8 with one scale per row "
                    "(a quarter of the bytes; `spkid.modelfile.quantize`)")
    ap.add_argument("--dim", type=int, default=0, help="with --ensemble: project its embedding onto this many "
                    "leading directions (0: none)")
    ap.add_argument("--center", type=int, action="append", default=[], metavar="I",
                    help="with --fusion and --fit: centre member I (0-based; repeatable)")
    ap.add_argument("--local-center", type=int, action="append", default=[], metavar="I",
                    help="with a fusion and --fit: centre member I locally, on its nearest training speakers (repeatable)")
    ap.add_argument("--local-top-n", type=int, default=50, help="with --local-center: the speakers averaged "
                    "(default: %(default)s)")
    ap.add_argument("--local-weight", type=float, default=0.5, help="with --local-center: the share of their mean "
                    "taken out, in (0, 1] (default: %(default)s)")
    ap.add_argument("--speed-copies", type=lambda t: [float(x) for x in t.split(",")], metavar="F,F,...",
                    help="with a fusion: also embed short utterances played at these speeds, and average")
    ap.add_argument("--speed-copies-below", type=float, help="with --speed-copies: the seconds of speech under "
                    f"which an utterance gets them (default: {SPEED_COPIES_BELOW_S:g})")
    ap.add_argument("--speed-copies-members", type=lambda t: [int(x) for x in t.split(",")], metavar="I,I,...",
                    help="with --speed-copies: only these members embed the copies (default: all)")
    ap.add_argument("--fit", type=Path, help="with --dim, --center or --local-center: the audio list (training "
                    "speakers, labelled) to fit on")
    ap.add_argument("out", type=Path, help="the model file to write")
    ap.add_argument("ingredients", nargs="+", type=ingredient, metavar="MODEL=WEIGHT")
    a = ap.parse_args(argv)
    if a.dim < 0 or (a.dim and not (a.ensemble and a.fit)):
        ap.error("--dim N (N > 0) goes with --ensemble and --fit LIST")
    if a.center and not (a.fusion and a.fit):
        ap.error("--center I goes with --fusion and --fit LIST")
    if a.local_center and not a.fit:
        ap.error("--local-center I goes with --fit LIST")
    if a.local_top_n < 1 or not 0 < a.local_weight <= 1:
        ap.error("--local-top-n must be >= 1 and --local-weight in (0, 1]")
    if a.fit and not (a.dim or a.center or a.local_center):
        ap.error("--fit LIST goes with --dim, --center or --local-center")
    if a.ensemble and a.fusion:
        ap.error("--ensemble and --fusion are two ways of running models side by side: choose one")
    if (a.speed_copies_below is not None or a.speed_copies_members is not None) and not a.speed_copies:
        ap.error("--speed-copies-below and --speed-copies-members go with --speed-copies F,F")
    if a.long_weights and not a.fusion:
        ap.error("--long-weights goes with --fusion")
    from spkid import modelfile
    from spkid.errors import SpkidError
    from spkid.utterance import SpeedCopies

    try:
        durations = {"long_weights": a.long_weights, "short_s": a.short_s, "long_s": a.long_s} if a.long_weights else {}
        spec, state = cook(a.ingredients, a.ensemble, durations if a.fusion else None)
        if a.dim:
            spec, state = project(spec, state, a.dim, a.fit, a.out)
        if a.center:
            spec = center(spec, state, a.center, a.fit, a.out)
        if a.local_center:
            if spec.model["name"] != "fusion":
                raise SpkidError("--local-center centres a fusion's member: pass --fusion, or one fusion MODEL=1")
            spec = local_center(spec, state, a.local_center, a.fit, a.out, a.local_top_n, a.local_weight)
        if a.speed_copies:
            if spec.model["name"] != "fusion":
                raise SpkidError("--speed-copies is a fusion's: pass --fusion, or one fusion MODEL=1")
            rec = {"factors": a.speed_copies, "below_s": SPEED_COPIES_BELOW_S if a.speed_copies_below is None else a.speed_copies_below}
            if a.speed_copies_members is not None:
                rec["members"] = a.speed_copies_members
            copies = SpeedCopies.from_kwargs({"members": spec.model["kwargs"]["members"], "speed_copies": rec})
            spec.model["kwargs"]["speed_copies"] = copies.to_dict()
        modelfile.build(spec, state, a.out)  # refuses what does not make a network
        sha = modelfile.save_state(a.out, spec, modelfile.quantize(state) if a.int8 else state)
    except SpkidError as e:
        print(f"soup: error: {e}", file=sys.stderr)
        return 1
    print(f"soup: wrote {a.out} ({spec.training['description']}; identity {sha[:12]})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`spkid verify`: is it the same speaker? Two clips, a clip against an enrolled speaker, or a trials list."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import typer

from spkid import decisions, lists, streams
from spkid.cli._common import JobsOpt, SkipBadOpt
from spkid.cli.embed import BatchOpt, DeviceOpt, HopOpt, ModelOpt, NoVadOpt, ThreadsOpt, WindowOpt
from spkid.errors import SpkidError

log = logging.getLogger("spkid.verify")
app = typer.Typer(rich_markup_mode=None)

OperatingPoint = Literal["eer", "min_dcf", "bayes", "far"]
ThresholdOpt = Annotated[float | None, typer.Option("--threshold", "-t", metavar="SCORE", help="Accept scores >= SCORE (default: the gallery's or the model's calibration).")]
PointOpt = Annotated[OperatingPoint, typer.Option("--operating-point", help="Which calibrated threshold to use: equal error rate, minimum DCF, Bayes decision at the calibration prior, or the target FAR.")]
CohortOpt = Annotated[str | None, typer.Option("--cohort", metavar="FILE", help="Keyed matrix of cohort embeddings (`spkid embed` output, other speakers) for AS-norm.")]
ScoreByOpt = Annotated[Literal["best", "mean"], typer.Option("--score-by", help="Galleries that keep every enrolment embedding: score a speaker by its best or its mean cosine.")]
GalleryOpt = Annotated[str | None, typer.Option("--gallery", "-g", metavar="DIR", help="A gallery folder built by `spkid enroll`.")]


def load_cohort(path: str, sha: str) -> np.ndarray:
    c = streams.read_embeddings(path)
    return decisions.check_cohort(c.values, c.model_sha256, sha, path)


def _fmt(x: float) -> str:
    return f"{x:.6f}"


@app.command()
def verify(
    inputs: Annotated[list[str] | None, typer.Argument(metavar="[CLIP [CLIP]]", help="Two clips to compare, or one clip with --gallery and --speaker.", show_default=False)] = None,
    gallery_dir: GalleryOpt = None,
    speaker: Annotated[str | None, typer.Option("--speaker", "-s", metavar="NAME", help="The enrolled speaker the clip claims to be (with --gallery).")] = None,
    trials: Annotated[str | None, typer.Option("--trials", metavar="FILE", help="Trials list (VoxCeleb `1 a b` or Kaldi `a b target`): write one score line per trial.")] = None,
    embeddings: Annotated[str | None, typer.Option("--embeddings", "-e", metavar="FILE", help="With --trials: score these precomputed embeddings (`spkid embed` output) instead of audio.")] = None,
    root: Annotated[str | None, typer.Option("--root", metavar="DIR", help="With --trials: folder that relative audio paths in the trials are under.")] = None,
    model: ModelOpt = None,
    threshold: ThresholdOpt = None,
    point: PointOpt = "eer",
    cohort: CohortOpt = None,
    score_by: ScoreByOpt = "best",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing; exit 0 accept, 1 reject, 2 error (like grep -q).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of text.")] = False,
    output: Annotated[str | None, typer.Option("--output", "-o", metavar="FILE", help="With --trials: write the scores to FILE (atomically).")] = None,
    window: WindowOpt = None,
    hop: HopOpt = None,
    no_vad: NoVadOpt = False,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = 0,
    batch_size: BatchOpt = 64,
    jobs: JobsOpt = 1,
    skip_bad: SkipBadOpt = False,
) -> None:
    """Score two clips, or a clip against an enrolled speaker, and decide; or score a whole trials list.

    The score is the cosine similarity of the embeddings (AS-norm with --cohort). The threshold comes from
    --threshold, else from the gallery (a threshold stored by `enroll --threshold`, or a calibration written by
    `spkid score --calibrate SCORES -g DIR`), else from the model's calibration; stderr says which, and what FAR/FRR
    it was chosen for. Without any, only the score is printed. Text output: SCORE<TAB>accept|reject.
    With --trials the output is ENROLL<TAB>TEST<TAB>SCORE<TAB>LABEL lines for `spkid score`; each file is
    embedded once (or --embeddings gives them); with --gallery the ENROLL column names enrolled speakers.

    \b
    Examples:
      spkid verify a.wav b.wav --model resemblyzer
      spkid verify clip.wav -g enroll/ --speaker alice -q && echo welcome
      spkid verify --trials trials.txt --root vox1/wav -m model.pt | spkid score
      spkid verify --trials trials.txt --embeddings emb.npy --cohort cohort.npy > scores.txt
    """
    params = dict(locals())
    if not quiet:
        _verify(**params)
        return
    try:
        accepted = _verify(**params)
    except SpkidError as e:
        print(f"spkid verify: error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    raise typer.Exit(0 if accepted else 1)


def _verify(inputs, gallery_dir, speaker, trials, embeddings, root, model, threshold, point, cohort, score_by, quiet,
            as_json, output, window, hop, no_vad, device, threads, batch_size, jobs, skip_bad) -> bool | None:
    from spkid import gallery

    args = list(inputs or [])
    g = gallery.load(gallery_dir) if gallery_dir else None
    if trials is not None:
        if args:
            raise SpkidError("--trials scores a trials list; give no clips as arguments")
        if quiet:
            raise SpkidError("-q decides one trial; it does not apply to --trials")
        _trials(trials, g, embeddings, root, model, cohort, score_by, output, window, hop, no_vad, device, threads,
                batch_size, jobs, skip_bad)
        return None
    if embeddings is not None:
        raise SpkidError("--embeddings goes with --trials")
    if speaker is not None and g is None:
        raise SpkidError("--speaker needs --gallery DIR (the gallery the speaker is enrolled in)")
    if g is not None and speaker is None:
        raise SpkidError("with --gallery, name the claimed speaker: --speaker NAME (or use `spkid identify` to search)")
    want = 1 if g is not None else 2
    if len(args) != want:
        raise SpkidError(f"expected {want} clip{'s' * (want > 1)}{' (with --gallery --speaker)' if g else ''}, got {len(args)}")
    from spkid.cli.embed import embed_entries
    from spkid.embedding import Embedder, model_for_gallery

    ref = model_for_gallery(model, g)
    emb = Embedder.from_model(ref, device, use_vad=not no_vad, window_s=window, hop_s=hop, batch_size=batch_size,
                              threads=threads)
    entries = [lists.Entry(a) for a in args]
    _, vecs, quals = embed_entries(emb, entries, desc="verify")
    for e, q in zip(entries, quals):
        if q.speech_seconds < emb.prep.cfg.min_s:
            log.warning("%s: only %.2f s of speech; the score is unreliable", e.path, q.speech_seconds)
    cohort_emb = load_cohort(cohort, ref.sha256) if cohort else None
    if g is not None:
        row = g.index(speaker)
        enroll_vec = np.asarray(g.embeddings[row])
        score = float(decisions.speaker_scores(g, np.array([row]), vecs[:1], score_by)[0])
        enroll_name, test_vec, test_name = speaker, vecs[0], args[0]
    else:
        enroll_vec, test_vec = vecs[0], vecs[1]
        score = float(enroll_vec @ test_vec)
        enroll_name, test_name = args
    if cohort_emb is not None:
        from spkid import scoring

        score = scoring.as_norm_pair(score, enroll_vec, test_vec, cohort_emb, scoring.AS_NORM_TOP_N)
    from spkid import modelfile

    model_cal = modelfile.model_calibration(ref, emb.spec)
    thr = decisions.choose_threshold(threshold, g, model_cal, ref.label, point, cohort_emb is not None)
    if thr.score is None and quiet:
        raise SpkidError(f"-q needs a decision, but there is {decisions.NO_THRESHOLD}")
    accepted = None if thr.score is None else score >= thr.score
    decision = None if accepted is None else ("accept" if accepted else "reject")
    if quiet:
        return accepted
    if as_json:
        obj = {"enroll": enroll_name, "test": test_name, "score": score, "decision": decision, **thr.to_json(),
               "as_norm": cohort_emb is not None, "model_sha256": ref.sha256}
        streams.write_text(json.dumps(obj) + "\n")
    else:
        streams.write_text(f"{_fmt(score)}\t{decision}\n" if decision else f"{_fmt(score)}\n")
        log.info("%s", thr.describe())
    return accepted


def _trials(path, g, embeddings, root, model, cohort, score_by, output, window, hop, no_vad, device, threads, batch_size,
            jobs, skip_bad) -> None:
    from spkid import gallery, scoring
    from spkid.trials import parse_trials

    with streams.open_input(path) as f:
        text = lists.decode_text(f.read(), "<stdin>" if path == "-" else path, "trials")
    t = parse_trials(lists.split_lines(text), path)
    if g is not None:
        missing = sorted({e for e in t.enroll if e not in g._lookup()})
        if missing:
            raise SpkidError(f"{path}: {len(missing)} enroll names are not speakers of {g.path}, e.g. {missing[0]!r}")
        files = list(dict.fromkeys(t.test))
    else:
        files = list(dict.fromkeys(t.enroll + t.test))
    if embeddings is not None:
        src = streams.read_embeddings(embeddings)
        sha = src.model_sha256
        if sha is None and (g is not None or model is not None or cohort):
            raise SpkidError(f"{embeddings}: the embeddings record no model, so they cannot be checked against "
                             f"{'the gallery' if g is not None else '--model' if model is not None else 'the cohort'}; "
                             "re-create them with `spkid embed`")
        if g is not None:
            gallery.check_model(g.model_sha256, sha, f"the gallery {g.path}", f"the embeddings in {embeddings}")
        if model is not None:
            from spkid import embedding

            gallery.check_model(sha, embedding.resolve_model(model).sha256, f"the embeddings in {embeddings}", f"--model {model}")
        index = {str(k): i for i, k in enumerate(src.keys)}
        absent = [f for f in files if f not in index and _rooted(f, root) not in index]
        if absent:
            raise SpkidError(f"{embeddings}: no embedding for {len(absent)} of the {len(files)} files in {path}, "
                             f"e.g. {absent[0]!r}; embed them first")
        vec = {f: scoring.unit(src.values[index.get(f, index.get(_rooted(f, root)))], np.float32) for f in files}
        ref = None
    else:
        from spkid.cli.embed import embed_entries
        from spkid.embedding import Embedder, model_for_gallery

        ref = model_for_gallery(model, g)
        sha = ref.sha256
        emb = Embedder.from_model(ref, device, use_vad=not no_vad, window_s=window, hop_s=hop, batch_size=batch_size,
                                  threads=threads)
        entries = [lists.Entry(_rooted(f, root)) for f in files]
        good, vecs, _ = embed_entries(emb, entries, jobs=jobs, skip_bad=skip_bad, desc="verify")
        by_path = {e.path: v for e, v in zip(good, vecs)}
        vec = {f: by_path[_rooted(f, root)] for f in files if _rooted(f, root) in by_path}
    keep = [i for i in range(len(t.enroll)) if t.test[i] in vec and (g is not None or t.enroll[i] in vec)]
    if len(keep) < len(t.enroll):
        log.warning("%d of %d trials dropped: their files were skipped", len(t.enroll) - len(keep), len(t.enroll))
    test = np.stack([vec[t.test[i]] for i in keep])
    if g is not None:
        rows = np.array([g.index(t.enroll[i]) for i in keep])
        enroll_m = np.asarray(g.embeddings[rows])
        scores = decisions.speaker_scores(g, rows, test, score_by)
    else:
        enroll_m = np.stack([vec[t.enroll[i]] for i in keep])
        scores = np.einsum("nd,nd->n", enroll_m, test).astype(np.float64)
    if cohort:
        scores = scoring.as_norm(scores, enroll_m, test, load_cohort(cohort, sha), scoring.AS_NORM_TOP_N)
    lines = "".join(f"{t.enroll[i]}\t{t.test[i]}\t{_fmt(s)}\t{'target' if t.label[i] else 'nontarget'}\n"
                    for i, s in zip(keep, scores))
    streams.write_text(lines, output)


def _rooted(name: str, root: str | None) -> str:
    return str(Path(root) / name) if root and not Path(name).is_absolute() else name

"""`spkid verify`: is it the same speaker? Two clips, a clip against an enrolled speaker, or a trials list."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from spkid import lists, streams
from spkid.cli._common import choose_threshold, embed_entries, embedder, gate_embeddings, load_cohort
from spkid.cli._options import (BackendOpt, BatchOpt, CohortOpt, DeviceOpt, EmbedOptions, HopOpt, JobsOpt, MinSpeechOpt, ModelOpt,
                                NoVadOpt, PointOpt, RuleOptions, ScoreByOpt, SkipBadOpt, ThreadsOpt, ThresholdOpt,
                                WindowOpt)
from spkid.utterance import MIN_SPEECH_S
from spkid.errors import SpkidError, UsageError

if TYPE_CHECKING:
    from spkid.gallery import Gallery

log = logging.getLogger("spkid.verify")
app = typer.Typer(rich_markup_mode=None)

GalleryOpt = Annotated[str | None, typer.Option("--gallery", "-g", metavar="DIR", help="A gallery folder built by `spkid enroll`.")]


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
    min_speech: MinSpeechOpt = MIN_SPEECH_S,
    window: WindowOpt = None,
    hop: HopOpt = None,
    no_vad: NoVadOpt = False,
    device: DeviceOpt = "auto",
    backend: BackendOpt = "auto",
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
      arecord -f S16_LE -r 16000 -c 1 -t wav -d 5 | spkid verify - -g enroll/ --speaker alice -q && echo welcome
      spkid verify clip.wav -g enroll/ --speaker alice -q && echo welcome
      spkid verify --trials trials.txt --root vox1/wav -m model.pt | spkid score
      spkid verify --trials trials.txt --embeddings emb.npy --cohort cohort.npy > scores.txt
    """
    opts = EmbedOptions(model, device, threads, window, hop, no_vad, batch_size, backend)
    rule = RuleOptions(threshold, point, cohort, score_by)
    args = list(inputs or [])
    if trials is not None:
        if args:
            raise UsageError("--trials scores a trials list; give no clips as arguments")
        if quiet:
            raise UsageError("-q decides one trial; it does not apply to --trials")
        _trials(trials, _gallery(gallery_dir), embeddings, root, opts, rule, output, min_speech, jobs, skip_bad)
        return
    if embeddings is not None:
        raise UsageError("--embeddings goes with --trials")
    if speaker is not None and gallery_dir is None:
        raise UsageError("--speaker needs --gallery DIR (the gallery the speaker is enrolled in)")
    if gallery_dir is not None and speaker is None:
        raise UsageError("with --gallery, name the claimed speaker: --speaker NAME (or use `spkid identify` to search)")
    want = 1 if gallery_dir is not None else 2
    if len(args) != want:
        raise UsageError(f"expected {want} clip{'s' * (want > 1)}{' (with --gallery --speaker)' if gallery_dir else ''}, "
                         f"got {len(args)}")
    if not quiet:
        _pair(args, _gallery(gallery_dir), speaker, opts, rule, min_speech, as_json)
        return
    try:
        accepted = _pair(args, _gallery(gallery_dir), speaker, opts, rule, min_speech, as_json, quiet=True)
    except SpkidError as e:
        print(f"spkid verify: error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    raise typer.Exit(0 if accepted else 1)


def _gallery(path: str | None) -> Gallery | None:
    from spkid import gallery

    return gallery.load(path) if path else None


def _pair(args: list[str], g: Gallery | None, speaker: str | None, opts: EmbedOptions, rule: RuleOptions,
          min_speech: float, as_json: bool, quiet: bool = False) -> bool | None:
    """Score one trial (two clips, or a clip against `speaker` of `g`) and decide; with `quiet`, only decide.
    A clip with less than `min_speech` seconds of speech is refused: no score without speech behind it."""
    from spkid import decisions
    from spkid.embedding import model_for_gallery

    if g is not None:
        g.index(speaker)  # an unknown name fails before any work
    clip = None
    if "-" in args:
        if args.count("-") > 1:
            raise UsageError("`-` names stdin's one audio clip; give it once")
        clip = streams.stdin_audio()
        if clip is None:
            raise SpkidError("-: stdin holds no audio (WAV, FLAC, OGG or MP3 bytes); pipe a clip, or name its file")
    ref = model_for_gallery(opts.model, g, opts.backend)
    emb = embedder(opts, ref)
    entries = [lists.Entry(a) for a in args]
    _, vecs, quals = embed_entries(emb, entries, desc="verify", min_speech=min_speech, purpose="verification",
                                   clip=clip, summary=False)
    for e, q in zip(entries, quals):
        if q.speech_seconds < emb.prep.cfg.min_s:
            log.warning("%s: only %.2f s of speech; the score is unreliable", e.path, q.speech_seconds)
    cohort = load_cohort(rule.cohort, ref.sha256) if rule.cohort else None
    if g is not None:
        score = decisions.claim_score(g, speaker, vecs[0], rule.score_by, cohort)
        names = (speaker, _shown(args[0]))
    else:
        score = decisions.pair_score(vecs[0], vecs[1], cohort)
        names = (_shown(args[0]), _shown(args[1]))
    enroll_s = (decisions.enrolled_seconds(g.seconds, g.index(speaker)) if g is not None
                else decisions.speech_seconds(quals[0]))
    thr = choose_threshold(rule, g, ref, emb.spec, as_norm=cohort is not None).at(enroll_s, decisions.speech_seconds(quals[-1]))
    if thr.score is None and quiet:
        raise SpkidError(f"-q needs a decision, but there is {decisions.NO_THRESHOLD}")
    quality = {"enroll": None if g is not None else quals[0].to_dict(), "test": quals[-1].to_dict()}
    result = decisions.VerifyResult(*names, score, thr, cohort is not None, ref.sha256, quality)
    if quiet:
        return result.accepted
    if as_json:
        streams.write_text(result.to_json() + "\n")
    else:
        streams.write_text(result.to_text() + "\n")
        log.info("%s", thr.describe())
    return result.accepted


def _trials(path: str, g: Gallery | None, embeddings: str | None, root: str | None, opts: EmbedOptions,
            rule: RuleOptions, output: str | None, min_speech: float, jobs: int, skip_bad: bool) -> None:
    """One ENROLL TEST SCORE LABEL line per trial of the trials file `path`, and the seconds of speech of both
    sides when any is known (`-` where not); files without enough speech are refused (strict) or skipped with
    their trials (--skip-bad)."""
    from spkid import decisions, gallery, trials

    with streams.open_input(path) as f:
        text = lists.decode_text(f.read(), "<stdin>" if path == "-" else path, "trials")
    t = trials.parse_trials(lists.split_lines(text), path)
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
        if sha is None and (g is not None or opts.model is not None or rule.cohort):
            raise SpkidError(f"{embeddings}: the embeddings record no model, so they cannot be checked against "
                             f"{'the gallery' if g is not None else '--model' if opts.model is not None else 'the cohort'}; "
                             "re-create them with `spkid embed`")
        if g is not None:
            gallery.check_model(g.model_sha256, sha, f"the gallery {g.path}", f"the embeddings in {embeddings}")
        if opts.model is not None:
            from spkid import embedding

            gallery.check_model(sha, embedding.resolve_model(opts.model).sha256, f"the embeddings in {embeddings}",
                                f"--model {opts.model}")
        rows = gate_embeddings(src, min_speech, "verification", skip_bad)
        vec = decisions.vectors_for(files, src.keys[rows], src.values[rows], lambda f: _rooted(f, root), embeddings,
                                    path, skipped={str(k) for k in src.keys} - {str(k) for k in src.keys[rows]})
        by_key = {} if src.quality is None else {str(k): decisions.speech_seconds(q) for k, q in zip(src.keys, src.quality)}
        speech = {f: by_key.get(f, by_key.get(_rooted(f, root))) for f in vec}
    else:
        from spkid.embedding import model_for_gallery

        ref = model_for_gallery(opts.model, g, opts.backend)
        sha = ref.sha256
        entries = [lists.Entry(_rooted(f, root)) for f in files]
        good, vecs, quals = embed_entries(embedder(opts, ref, jobs), entries, jobs=jobs, skip_bad=skip_bad, desc="verify",
                                      min_speech=min_speech, purpose="verification")
        by_path = {e.path: v for e, v in zip(good, vecs)}
        vec = {f: by_path[_rooted(f, root)] for f in files if _rooted(f, root) in by_path}
        seconds = {e.path: decisions.speech_seconds(q) for e, q in zip(good, quals)}
        speech = {f: seconds[_rooted(f, root)] for f in vec}
    cohort = load_cohort(rule.cohort, sha) if rule.cohort else None
    kept, scores = decisions.score_trials(t, vec, g, rule.score_by, cohort)
    if len(kept) < len(t.enroll):
        log.warning("%d of %d trials dropped: their files were skipped", len(t.enroll) - len(kept), len(t.enroll))
    sides = np.array([[decisions.enrolled_seconds(g.seconds, g.index(t.enroll[i])) if g is not None else speech.get(t.enroll[i]),
                       speech.get(t.test[i])] for i in kept], dtype=np.float64)  # None -> NaN: unknown
    known = not np.isnan(sides).all()
    streams.write_text(trials.format_scores(t, kept, scores, sides if known else None), output)


def _shown(arg: str) -> str:
    return "<stdin>" if arg == "-" else arg


def _rooted(name: str, root: str | None) -> str:
    return str(Path(root) / name) if root and not Path(name).is_absolute() else name

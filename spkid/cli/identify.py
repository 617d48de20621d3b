"""`spkid identify`: who is speaking? Each clip against every enrolled speaker (open set), or who talks when."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import numpy as np
import typer

from spkid import decisions, lists, streams, tracking
from spkid.cli._common import InputsArg, JobsOpt, LabelDepthOpt, SkipBadOpt
from spkid.cli.embed import BatchOpt, DeviceOpt, ModelOpt, NoVadOpt, ThreadsOpt, embeddings_source
from spkid.cli.verify import CohortOpt, PointOpt, ScoreByOpt, ThresholdOpt, load_cohort
from spkid.errors import SpkidError

log = logging.getLogger("spkid.identify")
app = typer.Typer(rich_markup_mode=None)

MIN_SPEECH_S = 0.5


@app.command()
def identify(
    inputs: InputsArg = None,
    gallery_dir: Annotated[str, typer.Option("--gallery", "-g", metavar="DIR", help="The gallery folder built by `spkid enroll`.")] = ...,
    long_input: Annotated[str | None, typer.Option("--in", metavar="FILE", help="Find where enrolled speakers talk in this long recording (sliding windows).")] = None,
    model: ModelOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, metavar="K", help="Candidates to list per clip.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines (the schema `spkid score` reads) instead of text.")] = False,
    threshold: ThresholdOpt = None,
    point: PointOpt = "eer",
    cohort: CohortOpt = None,
    score_by: ScoreByOpt = "best",
    from_embeddings: Annotated[bool, typer.Option("--from-embeddings", help="The input is a keyed embedding matrix (`spkid embed` output); detected by itself on stdin.")] = False,
    label_depth: LabelDepthOpt = 1,
    min_speech: Annotated[float, typer.Option("--min-speech", min=0.0, metavar="SECONDS", help="Refuse clips with less speech than this.")] = MIN_SPEECH_S,
    window: Annotated[float | None, typer.Option("--window", metavar="SECONDS", help=f"With --in: sliding window length (default {tracking.WINDOW_S:g}); else the model's window for long clips.")] = None,
    hop: Annotated[float | None, typer.Option("--hop", min=0.01, metavar="SECONDS", help=f"With --in: step between windows (default {tracking.HOP_S:g}); else the model's.")] = None,
    no_vad: NoVadOpt = False,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = 0,
    batch_size: BatchOpt = 64,
    jobs: JobsOpt = 1,
    skip_bad: SkipBadOpt = False,
) -> None:
    """Name the enrolled speaker of each clip, or `unknown` when the best score is below the threshold.

    Text output, one line per clip: KEY, DECISION (the speaker or unknown), SCORE (of the best speaker),
    MARGIN (best minus second best), BEST, then NAME:SCORE of the top K with --top-k. The threshold is chosen as
    in `spkid verify` (--threshold, the gallery's, the model's calibration); without one every clip gets its
    best speaker (closed set) and a note says how to get one. The search is one matrix product per block of
    clips, reading the gallery memory-mapped in chunks, so galleries larger than RAM work. Clips with under
    --min-speech seconds of speech are refused (skipped with --skip-bad). Embeddings piped from `spkid embed`
    are used as they are.

    --in LONG.wav slides a --window over the recording every --hop seconds, scores each window that is at least
    half voiced, merges consecutive windows given the same speaker, and prints START END SPEAKER SCORE
    (seconds) for each run.

    \b
    Examples:
      spkid identify clip1.wav clip2.wav -g enroll/ --top-k 3
      spkid embed -m model.pt test.txt | spkid identify -g enroll/ --json | spkid score
      spkid identify --in meeting.flac -g enroll/ --window 2 --hop 0.5
    """
    from spkid import gallery

    g = gallery.load(gallery_dir)
    if len(g.speakers) == 0:
        raise SpkidError(f"{gallery_dir}: the gallery has no speakers; enroll some with `spkid enroll LIST -g {gallery_dir}`")
    if long_input is not None:
        if inputs:
            raise SpkidError("--in takes one long recording; give no clips as arguments")
        _long(long_input, g, model, window, hop, threshold, point, cohort, score_by, as_json, no_vad, device, threads, batch_size)
        return
    src = embeddings_source(inputs, from_embeddings)
    ref = None
    if src is not None:
        emb = streams.read_embeddings(src)
        gallery.check_model(emb.model_sha256, g.model_sha256 or "", f"the embeddings in {emb.source}", f"the gallery {g.path}")
        keys = [str(k) for k in emb.keys]
        labels = [lists.label_from_path(k, label_depth) for k in keys]
        from spkid.scoring import unit

        queries = unit(emb.values, np.float32)
        sha = emb.model_sha256
        if model is not None:
            from spkid.embedding import model_for_gallery

            ref = model_for_gallery(model, g)
    else:
        from spkid.cli.embed import embed_entries
        from spkid.embedding import Embedder, model_for_gallery

        entries = streams.read_list(inputs, label_depth)
        if not entries:
            raise SpkidError("the input list is empty")
        ref = model_for_gallery(model, g)
        sha = ref.sha256
        emb_ = Embedder.from_model(ref, device, use_vad=not no_vad, window_s=window, hop_s=hop, batch_size=batch_size,
                                   threads=threads)

        def long_enough(entry, prepared) -> None:
            q = prepared.quality
            if q.speech_seconds < min_speech:
                extra = f" in {q.seconds:.2f} s of audio" if q.seconds > q.speech_seconds + 0.01 else ""
                raise SpkidError(f"{entry.path}: only {q.speech_seconds:.2f} s of speech{extra}; identification needs at "
                                 f"least {min_speech:g} s (--min-speech)")

        good, queries, _ = embed_entries(emb_, entries, jobs=jobs, skip_bad=skip_bad, desc="identify", check=long_enough)
        keys = [e.key for e in good]
        labels = [e.label for e in good]
    norm = decisions.as_norm_stats(g, queries, load_cohort(cohort, sha)) if cohort else None
    from spkid import modelfile

    model_cal = modelfile.model_calibration(ref, None if src is not None else emb_.spec)
    thr = decisions.choose_threshold(threshold, g, model_cal, ref.label if ref else "", point, norm is not None)
    if thr.score is None:
        log.info("closed set: every clip gets its best speaker; %s", thr.source)
    else:
        log.info("%s", thr.describe())
    idx, scores = decisions.rank(g, queries, max(top_k, 2), score_by, norm)
    records = decisions.identify_records(keys, labels, g.speakers, idx, scores, top_k, thr.score)
    streams.write_text("".join((r.to_json() if as_json else r.to_text(top_k > 1)) + "\n" for r in records))


def _long(path, g, model, window, hop, threshold, point, cohort, score_by, as_json, no_vad, device, threads, batch_size) -> None:
    from spkid.embedding import Embedder, model_for_gallery

    win_s = tracking.WINDOW_S if window is None else window
    hop_s = tracking.HOP_S if hop is None else hop
    if not win_s > 0:
        raise SpkidError(f"--window must be > 0 seconds with --in, got {win_s}")
    ref = model_for_gallery(model, g)
    emb = Embedder.from_model(ref, device, batch_size=batch_size, threads=threads)
    track = tracking.Track.load(path, emb.prep, win_s, hop_s, use_vad=not no_vad)
    # features are computed group by group as the network takes them: memory does not grow with the recording
    windows = track.windows(emb.prep)
    parts = [emb.embed_prepared(group) for group in tracking.group_by_windows(windows, lambda p: len(p.windows))]
    if not len(track.kept):
        log.warning("%s: no window of %g s holds enough speech; nothing to identify", path, win_s)
        streams.write_text("")
        return
    vecs = np.concatenate(parts)
    norm = decisions.as_norm_stats(g, vecs, load_cohort(cohort, ref.sha256)) if cohort else None
    from spkid import modelfile

    thr = decisions.choose_threshold(threshold, g, modelfile.model_calibration(ref, emb.spec), ref.label, point, norm is not None)
    log.info("%s", thr.describe() if thr.score is not None else f"closed set: every voiced window gets its best speaker; {thr.source}")
    idx, scores = decisions.rank(g, vecs, 1, score_by, norm)
    best = [float(s) for s in scores[:, 0]]
    named = [g.speakers[i] if thr.score is None or s >= thr.score else None for i, s in zip(idx[:, 0], best)]
    runs = track.runs(named, np.array(best))
    if as_json:
        text = "".join(json.dumps({"start": round(a, 3), "end": round(b, 3), "speaker": spk, "score": sc, "windows": w,
                                   "threshold": thr.score, "file": path}, ensure_ascii=False) + "\n"
                       for a, b, spk, sc, w in runs)
    else:
        text = "".join(f"{a:.2f}\t{b:.2f}\t{spk}\t{sc:.6f}\n" for a, b, spk, sc, w in runs)
    streams.write_text(text)

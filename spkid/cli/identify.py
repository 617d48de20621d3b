"""`spkid identify`: who is speaking? Each clip against every enrolled speaker (open set), or who talks when."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from spkid import streams
from spkid.cli._common import InputsArg, JobsOpt, LabelDepthOpt, SkipBadOpt
from spkid.cli.embed import BatchOpt, DeviceOpt, ModelOpt, NoVadOpt, ThreadsOpt, embeddings_source
from spkid.cli.verify import AS_NORM_TOP_N, CohortOpt, PointOpt, ScoreByOpt, ThresholdOpt, choose_threshold, load_cohort
from spkid.errors import SpkidError

if TYPE_CHECKING:
    from spkid.gallery import Gallery
    from spkid.search import Norm

log = logging.getLogger("spkid.identify")
app = typer.Typer(rich_markup_mode=None)

MIN_SPEECH_S = 0.5
LONG_WINDOW_S = 2.0
LONG_HOP_S = 0.5
LONG_MIN_VOICED = 0.5  # a window with less voiced audio than this fraction is silence


def rank(g: Gallery, queries: np.ndarray, k: int, score_by: str, norm: Norm | None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k speaker rows and scores `(Q, k)` of unit query embeddings against the gallery, best first."""
    from spkid import search

    if g.all_embeddings is None:
        return search.top_k(queries, g.embeddings, k, norm=norm)
    if score_by == "best":
        return search.top_k_grouped(queries, g.all_embeddings, g.all_index, len(g.speakers), k, norm=norm)
    return search.top_k(queries, g.sums, k, row_scale=1.0 / np.maximum(np.asarray(g.counts), 1), norm=norm)


def as_norm_stats(g: Gallery, queries: np.ndarray, cohort: np.ndarray) -> Norm:
    from spkid import scoring, search

    rm, rs = search.cohort_stats(g.embeddings, cohort, AS_NORM_TOP_N)
    qm, qs = scoring.cohort_stats(queries, cohort, AS_NORM_TOP_N)
    return search.Norm(rm, rs, qm, qs)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


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
    window: Annotated[float | None, typer.Option("--window", metavar="SECONDS", help=f"With --in: sliding window length (default {LONG_WINDOW_S:g}); else the model's window for long clips.")] = None,
    hop: Annotated[float | None, typer.Option("--hop", min=0.01, metavar="SECONDS", help=f"With --in: step between windows (default {LONG_HOP_S:g}); else the model's.")] = None,
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
        labels = [streams.label_from_path(k, label_depth) for k in keys]
        queries = _unit(emb.values)
        sha = emb.model_sha256
        if model is not None:
            from spkid.cli.embed import model_for_gallery

            ref = model_for_gallery(model, g)
    else:
        from spkid.cli.embed import embed_entries, load_embedder, model_for_gallery

        entries = streams.read_list(inputs, label_depth)
        if not entries:
            raise SpkidError("the input list is empty")
        ref = model_for_gallery(model, g)
        sha = ref.sha256
        emb_ = load_embedder(model, device, threads, window, hop, no_vad, batch_size, ref=ref)

        def long_enough(entry, prepared) -> None:
            q = prepared.quality
            if q.speech_seconds < min_speech:
                extra = f" in {q.seconds:.2f} s of audio" if q.seconds > q.speech_seconds + 0.01 else ""
                raise SpkidError(f"{entry.path}: only {q.speech_seconds:.2f} s of speech{extra}; identification needs at "
                                 f"least {min_speech:g} s (--min-speech)")

        good, queries, _ = embed_entries(emb_, entries, jobs=jobs, skip_bad=skip_bad, desc="identify", check=long_enough)
        keys = [e.key for e in good]
        labels = [e.label for e in good]
    norm = as_norm_stats(g, queries, load_cohort(cohort, sha)) if cohort else None
    thr = choose_threshold(threshold, g, ref, point, norm is not None)
    if thr.score is None:
        log.info("closed set: every clip gets its best speaker; %s", thr.source)
    else:
        log.info("%s", thr.describe())
    idx, scores = rank(g, queries, max(top_k, 2), score_by, norm)
    known = set(g.speakers)
    out = []
    for i, key in enumerate(keys):
        names = [g.speakers[j] for j in idx[i]]
        best, score = names[0], float(scores[i, 0])
        margin = float(scores[i, 0] - scores[i, 1]) if idx.shape[1] > 1 else None
        decision = best if thr.score is None or score >= thr.score else "unknown"
        k = min(top_k, len(names))
        if as_json:
            label = labels[i]
            out.append(json.dumps({
                "key": key, "label": label, "enrolled": label is not None and label in known,
                "top": [{"speaker": n, "score": float(s)} for n, s in zip(names[:k], scores[i, :k])],
                "decision": decision, "threshold": thr.score, "margin": margin,
            }, ensure_ascii=False) + "\n")
        else:
            cols = [key, decision, f"{score:.6f}", "-" if margin is None else f"{margin:.6f}", best]
            if top_k > 1:
                cols += [f"{n}:{s:.6f}" for n, s in zip(names[:k], scores[i, :k])]
            out.append("\t".join(cols) + "\n")
    streams.write_text("".join(out))


def _long(path, g, model, window, hop, threshold, point, cohort, score_by, as_json, no_vad, device, threads, batch_size) -> None:
    from spkid import audio, embedding, vad
    from spkid.cli.embed import load_embedder, model_for_gallery

    win_s = LONG_WINDOW_S if window is None else window
    hop_s = LONG_HOP_S if hop is None else hop
    if not win_s > 0:
        raise SpkidError(f"--window must be > 0 seconds with --in, got {win_s}")
    ref = model_for_gallery(model, g)
    emb = load_embedder(model, device, threads, None, None, True, batch_size, ref=ref)
    prep = emb.prep
    x, sr = audio.load(path)
    rate = prep.front.sample_rate
    if sr != rate:
        log.warning("%s: recorded at %d Hz, resampled to %d Hz", path, sr, rate)
        x = audio.resample(x, sr, rate)
    x = prep.front.prepare(x)
    n = len(x)
    segs = (np.array([[0, n]], np.int64) if no_vad or rate != vad.SAMPLE_RATE
            else vad.segments(x, rate, vad.VadConfig(**embedding.EMBED_VAD)))
    win, step = int(round(win_s * rate)), max(1, int(round(hop_s * rate)))
    starts = embedding.sliding_starts(n, win, step)
    kept: list[int] = []

    def voiced_windows():
        for i, a in enumerate(starts):
            b = min(n, a + win)
            voiced = embedding.voiced_in(segs, a, b)
            length = int((voiced[:, 1] - voiced[:, 0]).sum())
            if length < LONG_MIN_VOICED * (b - a) or length / rate < 0.25:
                continue
            sig = np.concatenate([x[s:e] for s, e in voiced])
            kept.append(i)
            yield embedding.Prepared(prep.windows(sig), embedding.Quality(length / rate, length / rate))

    # features are computed group by group as the network takes them: memory does not grow with the recording
    parts = [emb.embed_prepared(group) for group in embedding.group_by_windows(voiced_windows(), lambda p: len(p.windows))]
    if not kept:
        log.warning("%s: no window of %g s holds enough speech; nothing to identify", path, win_s)
        streams.write_text("")
        return
    vecs = np.concatenate(parts)
    norm = as_norm_stats(g, vecs, load_cohort(cohort, ref.sha256)) if cohort else None
    thr = choose_threshold(threshold, g, ref, point, norm is not None)
    log.info("%s", thr.describe() if thr.score is not None else f"closed set: every voiced window gets its best speaker; {thr.source}")
    idx, scores = rank(g, vecs, 1, score_by, norm)
    decisions: list[str | None] = [None] * len(starts)
    window_scores = np.zeros(len(starts))
    for j, i in enumerate(kept):
        s = float(scores[j, 0])
        window_scores[i] = s
        decisions[i] = g.speakers[idx[j, 0]] if thr.score is None or s >= thr.score else None
    begin, end = embedding.window_cores(starts, win, n)
    runs = embedding.merge_runs(decisions, window_scores, begin / rate, end / rate)
    if as_json:
        text = "".join(json.dumps({"start": round(a, 3), "end": round(b, 3), "speaker": spk, "score": sc, "windows": w,
                                   "threshold": thr.score, "file": path}, ensure_ascii=False) + "\n"
                       for a, b, spk, sc, w in runs)
    else:
        text = "".join(f"{a:.2f}\t{b:.2f}\t{spk}\t{sc:.6f}\n" for a, b, spk, sc, w in runs)
    streams.write_text(text)

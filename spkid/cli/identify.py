"""`spkid identify`: who is speaking? Each clip against every enrolled speaker (open set), or who talks when."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from spkid import lists, streams, tracking
from spkid.cli._common import (choose_threshold, embed_entries, embeddings_source, embedder, gate_embeddings,
                               load_cohort)
from spkid.cli._options import (AllowCommandsOpt, BackendOpt, BatchOpt, CohortOpt, DeviceOpt, EmbedOptions, FromEmbeddingsOpt, InputsArg, JobsOpt,
                                LabelDepthOpt, MinSpeechOpt, ModelOpt, NoVadOpt, PointOpt, RuleOptions, ScoreByOpt,
                                SkipBadOpt, ThreadsOpt, ThresholdOpt)
from spkid.errors import SpkidError, UsageError
from spkid.utterance import MIN_SPEECH_S

if TYPE_CHECKING:
    from spkid.embedding import ModelRef
    from spkid.gallery import Gallery

log = logging.getLogger("spkid.identify")
app = typer.Typer(rich_markup_mode=None)

IDENTIFY_HEADER = "key\tdecision\tscore\tmargin\tbest"  # on a terminal only: pipes stay headerless


@app.command()
def identify(
    inputs: InputsArg = None,
    gallery_dirs: Annotated[list[str], typer.Option("--gallery", "-g", metavar="DIR", help="The gallery folder built by `spkid enroll`; repeat for the shards of one gallery (`enroll --shard I/N`): their top K are merged.")] = ...,
    long_input: Annotated[str | None, typer.Option("--in", metavar="FILE", help="Find where enrolled speakers talk in this long recording (sliding windows).")] = None,
    model: ModelOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, metavar="K", help="Candidates to list per clip.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines (the schema `spkid score` reads) instead of text.")] = False,
    threshold: ThresholdOpt = None,
    point: PointOpt = "eer",
    cohort: CohortOpt = None,
    score_by: ScoreByOpt = "best",
    from_embeddings: FromEmbeddingsOpt = False,
    label_depth: LabelDepthOpt = 1,
    min_speech: MinSpeechOpt = MIN_SPEECH_S,
    window: Annotated[float | None, typer.Option("--window", metavar="SECONDS", help=f"With --in: sliding window length (default {tracking.WINDOW_S:g}); else the model's window for long clips.")] = None,
    hop: Annotated[float | None, typer.Option("--hop", min=0.01, metavar="SECONDS", help=f"With --in: step between windows (default {tracking.HOP_S:g}); else the model's.")] = None,
    no_vad: NoVadOpt = False,
    device: DeviceOpt = "auto",
    backend: BackendOpt = "auto",
    threads: ThreadsOpt = 0,
    batch_size: BatchOpt = 64,
    jobs: JobsOpt = 1,
    skip_bad: SkipBadOpt = False,
    allow_commands: AllowCommandsOpt = False,
    exact: Annotated[bool, typer.Option("--exact", help="Score every enrolled row, even where the gallery has a search index.")] = False,
    nprobe: Annotated[int | None, typer.Option("--nprobe", min=1, metavar="N", help="With a search index: index cells to scan per clip (default the index's; more is slower and nearer to exact).")] = None,
    candidates: Annotated[int | None, typer.Option("--candidates", min=1, metavar="N", help="With a search index: rows it proposes per clip, then scored exactly (default 128).")] = None,
) -> None:
    """Name the enrolled speaker of each clip, or `unknown` when the best score is below the threshold.

    Text output, one line per clip: KEY, DECISION (the speaker or unknown), SCORE (of the best speaker),
    MARGIN (best minus second best), BEST, then NAME:SCORE of the top K with --top-k. The threshold is chosen as
    in `spkid verify` (--threshold, the gallery's, the model's calibration); without one every clip gets its
    best speaker (closed set) and a note says how to get one. The search is one matrix product per block of
    clips, reading the gallery memory-mapped in chunks, so galleries larger than RAM work; a gallery with a
    search index (`enroll --index`, built by itself from 200,000 rows) proposes candidates that are then scored
    exactly (--exact: skip it). Several -g shards are searched in turn and their top K merged. Clips with under
    --min-speech seconds of speech are refused (skipped with --skip-bad). Embeddings piped from `spkid embed`
    are used as they are.

    --in LONG.wav slides a --window over the recording every --hop seconds, scores each window that is at least
    half voiced, merges consecutive windows given the same speaker, and prints START END SPEAKER SCORE
    (seconds) for each run.

    \b
    Examples:
      spkid identify clip1.wav clip2.wav -g enroll/ --top-k 3
      arecord -f S16_LE -r 16000 -c 1 -t wav -d 5 | spkid identify - -g enroll/    # from the microphone
      spkid embed -m model.pt test.txt | spkid identify -g enroll/ --json | spkid score
      spkid identify --in meeting.flac -g enroll/ --window 2 --hop 0.5
      spkid identify clips.txt -g shard1/ -g shard2/ -g shard3/ --json    # a gallery split by `enroll --shard`
    """
    shards = _load_shards(gallery_dirs, exact)
    g = shards[0]
    opts = EmbedOptions(model, device, threads, window, hop, no_vad, batch_size, backend)
    rule = RuleOptions(threshold, point, cohort, score_by)
    search = Search(shards, exact, nprobe, candidates)
    if long_input is not None:
        if inputs:
            raise UsageError("--in takes one long recording; give no clips as arguments")
        _long(long_input, search, opts, rule, as_json)
        return
    src = embeddings_source(inputs, from_embeddings)
    if src is not None:
        keys, labels, queries, quality, sha, ref = _from_embeddings(src, g, opts.model, label_depth, min_speech, skip_bad)
        spec = None
    else:
        from spkid.embedding import model_for_gallery

        entries, clip = streams.read_inputs(inputs, label_depth, command=f"identify -g {gallery_dirs[0]}",
                                            allow_commands=allow_commands)
        if not entries:
            raise SpkidError("the input list is empty")
        ref = model_for_gallery(opts.model, g, opts.backend)
        emb = embedder(opts, ref, jobs)
        spec, sha = emb.spec, ref.sha256
        good, queries, quals = embed_entries(emb, entries, jobs=jobs, skip_bad=skip_bad, desc="identify",
                                             min_speech=min_speech, purpose="identification", clip=clip)
        keys, labels, quality = [e.key for e in good], [e.label for e in good], [q.to_dict() for q in quals]
    records = _decide(search, queries, keys, labels, quality, sha, ref, spec, rule, top_k)
    header = "" if as_json or not streams.stdout_is_terminal() else IDENTIFY_HEADER + ("\ttop" if top_k > 1 else "") + "\n"
    streams.write_text(header + "".join((r.to_json() if as_json else r.to_text(top_k > 1)) + "\n" for r in records))


def _from_embeddings(src: str, g: Gallery, model: str | None, label_depth: int, min_speech: float, skip_bad: bool):
    """Keys, labels, unit queries, quality records and model sha256 of the rows of an embedding stream with enough
    speech (the same gate as for audio), and the model that made them (for its calibration: the same threshold
    chain as for audio), None when that model is not found here."""
    from spkid import gallery
    from spkid.embedding import model_for_gallery
    from spkid.scoring import unit

    emb = streams.read_embeddings(src)
    gallery.check_model(emb.model_sha256, g.model_sha256 or "", f"the embeddings in {emb.source}", f"the gallery {g.path}")
    rows = gate_embeddings(emb, min_speech, "identification", skip_bad)
    keys = [str(emb.keys[i]) for i in rows]
    quality = None if emb.quality is None else [emb.quality[i] for i in rows]
    try:
        ref = model_for_gallery(model, g)
    except SpkidError as e:
        if model is not None:
            raise
        log.warning("%s; its calibration is not used", e)
        ref = None
    labels = [lists.label_from_path(k, label_depth) for k in keys]
    return keys, labels, unit(emb.values[rows], np.float32), quality, emb.model_sha256, ref


@dataclass
class Search:
    """The galleries one identify call searches (shards of one model), and how."""

    shards: list[Gallery]
    exact: bool
    nprobe: int | None
    candidates: int | None

    def rank(self, queries: np.ndarray, k: int, rule: RuleOptions, cohort: np.ndarray | None):
        from spkid import decisions

        return decisions.rank_shards(self.shards, queries, k, rule.score_by, cohort, self.exact, self.nprobe,
                                     self.candidates)

    def seconds(self) -> np.ndarray:
        """Seconds of speech enrolled per speaker (NaN: unknown), in the order of `rank`'s speaker list."""
        return np.concatenate([np.asarray(g.seconds, np.float64) for g in self.shards])


def _load_shards(dirs: list[str], exact: bool) -> list[Gallery]:
    """Every -g gallery (with its search index unless --exact): one model, one threshold, some speakers."""
    from spkid import gallery

    shards = [gallery.load(d, with_index=not exact) for d in dirs]
    first = shards[0]
    for d, g in zip(dirs[1:], shards[1:]):
        gallery.check_model(g.model_sha256, first.model_sha256 or "", f"the gallery {d}", f"the gallery {dirs[0]}")
        for key in ("threshold", "calibration"):
            if g.meta.get(key) != first.meta.get(key):
                raise SpkidError(f"the galleries {dirs[0]} and {d} hold different {key}s; shards of one gallery decide "
                                 f"with one (set it on every shard, or pass --threshold)")
    if not any(g.speakers for g in shards):
        d = dirs[0]
        raise SpkidError(f"{d}: the gallery has no speakers; enroll some with `spkid enroll LIST -g {d}`")
    return shards


def _decide(search: Search, queries: np.ndarray, keys: list[str], labels: list[str | None], quality: list | None,
            sha: str | None, ref: ModelRef | None, spec, rule: RuleOptions, top_k: int):
    from spkid import decisions

    cohort = load_cohort(rule.cohort, sha) if rule.cohort else None
    thr = choose_threshold(rule, search.shards[0], ref, spec, as_norm=cohort is not None)
    log.info("%s", thr.describe() if thr.score is not None else f"closed set: every clip gets its best speaker; {thr.source}")
    speakers, idx, scores = search.rank(queries, max(top_k, 2), rule, cohort)
    return decisions.identify_records(keys, labels, speakers, idx, scores, top_k, thr, quality, search.seconds())


def _long(path: str, search: Search, opts: EmbedOptions, rule: RuleOptions, as_json: bool) -> None:
    from spkid import decisions
    from spkid.embedding import model_for_gallery

    g = search.shards[0]

    win_s = tracking.WINDOW_S if opts.window is None else opts.window
    hop_s = tracking.HOP_S if opts.hop is None else opts.hop
    if not win_s > 0:
        raise UsageError(f"--window must be > 0 seconds with --in, got {win_s}")
    ref = model_for_gallery(opts.model, g, opts.backend)
    emb = embedder(EmbedOptions(opts.model, opts.device, opts.threads, batch_size=opts.batch_size, backend=opts.backend), ref)
    track = tracking.Track.load(path, emb.prep, win_s, hop_s, use_vad=not opts.no_vad)
    # features are computed group by group as the network takes them: memory does not grow with the recording
    windows = track.windows(emb.prep)
    parts = [emb.embed_prepared(group) for group in tracking.group_by_windows(windows, lambda p: len(p.windows))]
    if not len(track.kept):
        log.warning("%s: no window of %g s holds enough speech; nothing to identify", path, win_s)
        streams.write_text("")
        return
    vecs = np.concatenate(parts)
    cohort = load_cohort(rule.cohort, ref.sha256) if rule.cohort else None
    thr = choose_threshold(rule, g, ref, emb.spec, as_norm=cohort is not None)
    log.info("%s", thr.describe() if thr.score is not None else f"closed set: every voiced window gets its best speaker; {thr.source}")
    speakers, idx, scores = search.rank(vecs, 1, rule, cohort)
    named, best = decisions.name_windows(speakers, idx, scores, thr, search.seconds(),
                                          None if opts.no_vad else track.speech_seconds())
    streams.write_text(tracking.format_runs(track.runs(named, best), thr.score, path, as_json))

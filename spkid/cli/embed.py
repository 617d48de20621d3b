"""`spkid embed`: audio or feature files in, a keyed embedding matrix (with its model record) out.

Also the helpers `enroll`, `verify` and `identify` share: model options, embedding a list of entries in batches
with `--skip-bad`, and reading embeddings instead of audio.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import typer

from spkid import lists, streams
from spkid.cli._common import (InputsArg, ItemError, JobsOpt, OutputOpt, ShardOpt, SkipBadOpt, _guard, keep,
                               progress_bar, report_skipped)
from spkid.errors import SpkidError, check_interrupted
from spkid.lists import Entry

if TYPE_CHECKING:
    from spkid.embedding import Embedder
    from spkid.utterance import Prepared, Preparer, Quality

log = logging.getLogger("spkid.embed")
app = typer.Typer(rich_markup_mode=None)

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", metavar="FILE|resemblyzer",
                 help="Model file written by `spkid train`, or `resemblyzer` (pretrained GE2E encoder; needs "
                      "`pip install 'spkid[pretrained]'`). Default: the model a -g gallery records, else the bundled one."),
]
DeviceOpt = Annotated[Literal["auto", "cpu", "cuda"], typer.Option("--device", help="auto = CUDA when available, else CPU.")]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=0, metavar="N", help="CPU threads for torch (0 = torch's default).")]
WindowOpt = Annotated[float | None, typer.Option("--window", min=0.0, metavar="SECONDS", help="Window length for long audio (default: the model's; 0 = whole utterance).")]
HopOpt = Annotated[float | None, typer.Option("--hop", min=0.01, metavar="SECONDS", help="Step between windows (default: the model's).")]
NoVadOpt = Annotated[bool, typer.Option("--no-vad", help="Embed the whole signal instead of its voiced part.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, metavar="N", help="Windows per forward pass (results do not depend on it).")]

PREPARE_CHUNK = 64  # files prepared (in parallel with -j) before their windows go through the network


def _prepare(prep: Preparer, entry: Entry) -> Prepared:
    return prep.prepare_file(entry.path)


def embed_entries(
    emb: Embedder, entries: Sequence[Entry], *, jobs: int = 1, skip_bad: bool = False, desc: str = "embed",
    check: Callable[[Entry, Prepared], None] | None = None,
) -> tuple[list[Entry], np.ndarray, list[Quality]]:
    """Embed every entry (files prepared `jobs` at a time, windows batched across files).

    Strict by default (the first bad file fails naming it); with `skip_bad` bad files are warned about and
    counted. `check(entry, prepared)` may raise SpkidError to refuse an item (e.g. too short).
    Returns the good entries, their embeddings `(N, D)` and their quality records, in input order.
    """
    fn = partial(_prepare, emb.prep)
    good: list[Entry] = []
    quals: list[Quality] = []
    vecs: list[np.ndarray] = []
    errors: list[ItemError] = []
    with progress_bar(len(entries), desc) as advance:
        for a in range(0, len(entries), PREPARE_CHUNK):
            check_interrupted()
            chunk = entries[a : a + PREPARE_CHUNK]
            if jobs > 1 and len(chunk) > 1:
                from joblib import Parallel, delayed

                outs = Parallel(n_jobs=jobs)(delayed(_guard)(fn, e) for e in chunk)
            else:
                outs = [_guard(fn, e) for e in chunk]
            ready: list[tuple[Entry, Prepared]] = []
            for e, out in zip(chunk, outs):
                if not isinstance(out, ItemError) and check is not None:
                    try:
                        check(e, out)
                    except SpkidError as err:
                        out = ItemError(e, str(err))
                if keep(out, skip_bad, errors):
                    ready.append((e, out))
            if ready:
                vecs.append(emb.embed_prepared([p for _, p in ready]))
                good += [e for e, _ in ready]
                quals += [p.quality for _, p in ready]
            for _ in chunk:
                advance()
    if errors:
        report_skipped(len(good), len(entries), errors)
    dim = emb.net.embed_dim
    return good, (np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32)), quals


def warn_no_speech(entries: Sequence[Entry], quals: Sequence[Quality]) -> None:
    for e, q in zip(entries, quals):
        if q.no_speech:
            log.warning("%s: no speech found by the VAD; embedded the whole file", e.path)
        if q.resampled_from is not None:
            log.debug("%s: resampled from %d Hz", e.path, q.resampled_from)


@app.command()
def embed(
    inputs: InputsArg = None,
    model: ModelOpt = None,
    output: OutputOpt = None,
    window: WindowOpt = None,
    hop: HopOpt = None,
    no_vad: NoVadOpt = False,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = 0,
    batch_size: BatchOpt = 64,
    jobs: JobsOpt = 1,
    shard: ShardOpt = None,
    skip_bad: SkipBadOpt = False,
) -> None:
    """Embed every listed audio file (or `.npy` feature file); write the keyed matrix to stdout.

    The model file says which features to compute and how to cut long audio. Per file: VAD keeps the voiced
    part (--no-vad: everything), its features are cut into windows of --window seconds every --hop seconds,
    every window is embedded (equal-length windows batched together: the result does not depend on
    --batch-size), and the L2-normalised mean is the file's embedding. A `.npy` input is a feature matrix
    computed with the model's feature config (`spkid features`). Output: keys `(N,)` (the paths as listed),
    float32 `(N, D)`, then a record naming the model (its sha256), which enroll, verify and identify check.

    \b
    Examples:
      spkid embed wavs.txt -m model.pt > emb.npy
      spkid convert -d conv < wavs.txt | spkid embed --model resemblyzer | spkid enroll -g enroll/
      spkid embed --model resemblyzer --shard 1/4 big.txt -o emb1.npy    # cat emb*.npy joins shards
    """
    entries = lists.shard(streams.read_list(inputs), shard)
    if not entries:
        raise SpkidError("the input list is empty")
    from spkid.embedding import Embedder

    emb = Embedder.from_model(model, device, use_vad=not no_vad, window_s=window, hop_s=hop, batch_size=batch_size,
                              threads=threads)
    good, vecs, quals = embed_entries(emb, entries, jobs=jobs, skip_bad=skip_bad)
    warn_no_speech(good, quals)
    streams.write_embeddings([e.key for e in good], vecs, emb.meta, output)


def embeddings_source(inputs: list[str] | None, forced: bool) -> str | None:
    """Where embeddings come from instead of audio: with `forced` (--from-embeddings) the one input (or stdin);
    otherwise stdin when it starts with a `.npy` record (an embedding stream, not a text list); else None."""
    args = list(inputs or [])
    if forced:
        if len(args) > 1:
            raise SpkidError("--from-embeddings reads one embedding file (or stdin); join several with `cat`")
        return args[0] if args else "-"
    if args in ([], ["-"]) and streams.stdin_is_npy():
        return "-"
    return None

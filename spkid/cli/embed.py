"""`spkid embed`: audio or feature files in, a keyed embedding matrix (with its model record) out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from spkid import lists, streams
from spkid.cli._common import embed_entries, embedder
from spkid.cli._options import (AllowCommandsOpt, BackendOpt, BatchOpt, DeviceOpt, EmbedOptions, HopOpt, InputsArg, JobsOpt, ModelOpt, NoVadOpt,
                                OutputOpt, ShardOpt, SkipBadOpt, ThreadsOpt, WindowOpt)
from spkid.errors import SpkidError, UsageError

if TYPE_CHECKING:
    from spkid.lists import Entry
    from spkid.utterance import Quality

log = logging.getLogger("spkid.embed")
app = typer.Typer(rich_markup_mode=None)


def _warn_no_speech(entries: Sequence[Entry], quals: Sequence[Quality]) -> None:
    for e, q in zip(entries, quals):
        if q.no_speech:
            log.warning("%s: no speech found by the VAD; embedded the whole file (its quality record says so: "
                        "enroll, verify and identify refuse it)", e.shown)


@app.command()
def embed(
    inputs: InputsArg = None,
    model: ModelOpt = None,
    output: OutputOpt = None,
    window: WindowOpt = None,
    hop: HopOpt = None,
    no_vad: NoVadOpt = False,
    device: DeviceOpt = "auto",
    backend: BackendOpt = "auto",
    threads: ThreadsOpt = 0,
    batch_size: BatchOpt = 64,
    jobs: JobsOpt = 1,
    shard: ShardOpt = None,
    skip_bad: SkipBadOpt = False,
    allow_commands: AllowCommandsOpt = False,
    fmt: Annotated[Literal["npy", "kaldi"], typer.Option("--format", help="npy: the keyed matrix; kaldi: -o OUT writes OUT.ark and OUT.scp (float32 vectors keyed by Kaldi ids, for a Kaldi PLDA back end).")] = "npy",
) -> None:
    """Embed every listed audio file (or `.npy` feature file); write the keyed matrix to stdout.

    The model file says which features to compute and how to cut long audio. Per file: VAD keeps the voiced
    part (--no-vad: everything), its features are cut into windows of --window seconds every --hop seconds,
    every window is embedded (equal-length windows batched together: the result does not depend on
    --batch-size), and the L2-normalised mean is the file's embedding. A `.npy` input is a feature matrix
    computed with the model's feature config (`spkid features`). Output: keys `(N,)` (the paths as listed; Kaldi ids),
    float32 `(N, D)`, then a record naming the model (its sha256), which enroll, verify and identify check, with
    what the VAD found in each file (seconds of speech, flags): they refuse items without enough speech.

    \b
    Examples:
      spkid embed wavs.txt -m model.pt > emb.npy
      arecord -f S16_LE -r 16000 -c 1 -t wav -d 5 | spkid embed - -o mic.npy    # audio on stdin: one clip
      spkid convert -d conv < wavs.txt | spkid embed --model resemblyzer | spkid enroll -g enroll/
      spkid embed --model resemblyzer --shard 1/4 big.txt -o emb1.npy    # cat emb*.npy joins shards
      spkid embed data/test --format kaldi -o xvector    # Kaldi data folder in, xvector.ark + xvector.scp out
      spkid embed data/test --allow-commands -o emb.npy  # its wav.scp pipes `UTT sox ... -t wav - |` commands
    """
    if fmt == "kaldi" and output in (None, "-"):
        raise UsageError("--format kaldi writes two files, OUT.ark and OUT.scp: give -o OUT")
    streams.check_binary_output(output)  # before any work
    entries, clip = streams.read_inputs(inputs, command="embed", allow_commands=allow_commands)
    entries = lists.shard(entries, shard)
    if not entries:
        raise SpkidError("the input list is empty")
    emb = embedder(EmbedOptions(model, device, threads, window, hop, no_vad, batch_size, backend), jobs=jobs)
    good, vecs, quals = embed_entries(emb, entries, jobs=jobs, skip_bad=skip_bad, clip=clip)
    _warn_no_speech(good, quals)
    if fmt == "kaldi":
        ark, scp = streams.write_kaldi([e.key for e in good], vecs, output)
        log.info("wrote %s and %s", ark, scp)
        return
    streams.write_embeddings([e.key for e in good], vecs, emb.meta, output, quality=[q.to_dict() for q in quals])

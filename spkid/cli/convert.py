"""`spkid convert`: any audio in, mono 16-bit FLAC/WAV at one rate out, and the new list on stdout."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Literal

import typer

from spkid import audio, lists, streams
from spkid.cli._common import write_outputs
from spkid.cli._options import (InputsArg, JobsOpt, LabelDepthOpt, OutDirOpt, OverwriteOpt, RootOpt, ShardOpt,
                                SkipBadOpt)
from spkid.lists import Entry

app = typer.Typer(rich_markup_mode=None)


def _convert_one(entry: Entry, *, out_dir: str, root: Path, rate: int, fmt: str) -> None:
    dst = lists.output_path(entry.path, out_dir, root, audio.FORMATS[fmt][1])
    x, _ = audio.load(entry.path, rate=rate)
    audio.write(dst, x, rate, fmt)


@app.command()
def convert(
    inputs: InputsArg = None,
    out_dir: OutDirOpt = ...,
    rate: Annotated[int, typer.Option("--rate", "-r", min=1000, metavar="HZ", help="Output sample rate (Hz).")] = 16000,
    fmt: Annotated[Literal["flac", "wav"], typer.Option("--format", "-f", help="Output container (16-bit PCM).")] = "flac",
    root: RootOpt = None,
    jobs: JobsOpt = 1,
    shard: ShardOpt = None,
    skip_bad: SkipBadOpt = False,
    overwrite: OverwriteOpt = False,
    label_depth: LabelDepthOpt = 1,
) -> None:
    """Convert audio to mono 16-bit FLAC/WAV at one sample rate; print the list of written files.

    Reads WAV, FLAC, OGG/Vorbis, MP3, AIFF and NIST SPHERE (TIMIT's .WAV) directly, and m4a/aac/mp4/opus/webm/wma
    through ffmpeg when it is on PATH. Channels are averaged; resampling uses an anti-aliasing
    polyphase filter (>= 60 dB stopband). Files are written atomically under -d with the input layout kept
    below --root (TIMIT's SA1.WAV becomes SA1.flac); existing outputs are kept unless --overwrite, so an
    interrupted run resumes. The printed list carries the labels along (PATH<TAB>LABEL).

    \b
    Examples:
      find data -name '*.m4a' | spkid convert -d flac > flac.txt
      spkid convert TIMIT/TRAIN/**/*.WAV --root TIMIT -d timit16k -j 4 --format wav
      spkid convert wavs.txt -d conv | spkid vad --trim -d voiced | spkid features -d feats
    """
    everything = streams.read_list(inputs, label_depth, "convert -d DIR")
    base = Path(root) if root else lists.default_root([e.path for e in everything])
    entries = lists.shard(everything, shard)
    suffix = audio.FORMATS[fmt][1]
    planned = [lists.output_path(e.path, out_dir, base, suffix) for e in entries]
    fn = partial(_convert_one, out_dir=out_dir, root=base, rate=rate, fmt=fmt)
    out = write_outputs(fn, entries, planned, overwrite=overwrite, jobs=jobs, skip_bad=skip_bad, desc="convert")
    out.log_summary()
    streams.write_list(Entry(str(p), e.label) for e, p in zip(entries, planned) if e.path not in out.failed)

"""`spkid vad`: where the voice is. A list in, an int64 `.npy` of sample ranges (or voiced-only audio) out."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import typer

from spkid import audio, lists, streams
from spkid import vad as core
from spkid.cli._common import map_entries, write_outputs
from spkid.cli._options import (InputsArg, JobsOpt, LabelDepthOpt, OutputOpt, OverwriteOpt, RootOpt, ShardOpt,
                                SkipBadOpt)
from spkid.lists import Entry
from spkid.vad import SAMPLE_RATE, VadConfig

log = logging.getLogger(__name__)
app = typer.Typer(rich_markup_mode=None)

_D = VadConfig()


def _find(x: np.ndarray, cfg: VadConfig, engine: str, model: str | None = None) -> np.ndarray:
    """The segments of `x` with spkid's network (`model`: another network file, loaded once per process) or
    silero-vad's probabilities, the same post-processing."""
    if engine == "silero":
        from spkid import vadsilero

        return core.segments_from_prob(vadsilero.speech_prob(core.check_signal(x, SAMPLE_RATE)), len(x), cfg)
    return core.segments(x, SAMPLE_RATE, cfg, core.load_model(model) if model else None)


def _detect(entry: Entry, *, cfg: VadConfig, engine: str = "spkid", model: str | None = None) -> tuple[np.ndarray, int]:
    x = audio.load_expected(entry.path, SAMPLE_RATE)
    return _find(x, cfg, engine, model), len(x)


def _trim_one(entry: Entry, *, cfg: VadConfig, out_dir: str, root: Path, fmt: str,
              engine: str = "spkid", model: str | None = None) -> tuple[np.ndarray, int]:
    x = audio.load_expected(entry.path, SAMPLE_RATE)
    segs = _find(x, cfg, engine, model)
    if len(segs):
        dst = lists.output_path(entry.path, out_dir, root, audio.FORMATS[fmt][1])
        audio.write(dst, (x[a:b] for a, b in segs), SAMPLE_RATE, fmt)  # the voiced segments, not joined in memory
    return segs, len(x)


def _split_length(inputs: list[str] | None) -> tuple[list[str] | None, int | None]:
    """`spkid vad LIST LENGTH`: a last positional made of digits that is not a file is the window length."""
    if inputs and inputs[-1].isdigit() and not Path(inputs[-1]).exists():
        length = int(inputs[-1])
        if length <= 0:
            raise typer.BadParameter(f"LENGTH must be a positive number of samples, got {length}")
        return inputs[:-1] or None, length
    return inputs, None


@app.command()
def vad(
    inputs: InputsArg = None,
    segments: Annotated[bool, typer.Option("--segments", help="Write every voiced segment as int64 (M, 3): [entry, start, end).")] = False,
    trim: Annotated[bool, typer.Option("--trim", help="Write voiced-only audio under -d and print the new list.")] = False,
    out_dir: Annotated[str | None, typer.Option("--out-dir", "-d", metavar="DIR", help="Folder for --trim output (input layout kept below it).")] = None,
    fmt: Annotated[Literal["flac", "wav"], typer.Option("--format", "-f", help="Container of --trim output (16-bit PCM).")] = "flac",
    threshold: Annotated[float, typer.Option("--threshold", "-a", min=0.0, max=1.0, help="Speech probability that starts a segment; higher is more aggressive.")] = _D.threshold,
    neg_threshold: Annotated[float | None, typer.Option("--neg-threshold", min=0.0, max=1.0, help="Probability below which a segment ends (hysteresis) [default: threshold - 0.15].")] = None,
    frame: Annotated[float, typer.Option("--frame", metavar="S", help="Seconds of 10 ms probabilities averaged for each decision.")] = _D.frame,
    hop: Annotated[float, typer.Option("--hop", metavar="S", help="Seconds between decisions (a multiple of 0.01).")] = _D.hop,
    min_speech: Annotated[float, typer.Option("--min-speech", metavar="S", help="Drop speech shorter than this.")] = _D.min_speech,
    min_silence: Annotated[float, typer.Option("--min-silence", metavar="S", help="Fill pauses shorter than this.")] = _D.min_silence,
    padding: Annotated[float, typer.Option("--padding", metavar="S", help="Seconds added to both ends of each segment.")] = _D.padding,
    engine: Annotated[Literal["spkid", "silero"], typer.Option("--engine", help="Speech probabilities from spkid's network, or from silero-vad through onnxruntime (needs `pip install silero-vad --no-deps`; no torch).")] = "spkid",
    model: Annotated[Path | None, typer.Option("--model", "-m", metavar="FILE", help="spkid's VAD networks from this .npz (written by scripts/train_vad.py) instead of the bundled spkid/data/vad.npz.")] = None,
    output: OutputOpt = None,
    root: RootOpt = None,
    jobs: JobsOpt = 1,
    shard: ShardOpt = None,
    skip_bad: SkipBadOpt = False,
    overwrite: OverwriteOpt = False,
    label_depth: LabelDepthOpt = 1,
) -> None:
    """Find the voice in 16 kHz mono audio; write int64 sample ranges as .npy, or voiced-only audio with --trim.

    \b
    INPUT... [LENGTH]: a last argument made of digits (and not a file) is LENGTH, in samples.
      LIST LENGTH   (N, 2) [start, end): the LENGTH-sample window holding the most voice in each file
                    (the older `find_VAD.py list length`); a file shorter than LENGTH gives [0, its length)
      LIST          (N, 2) [start, end): first to last voiced sample
      --segments    (M, 3) [entry, start, end): every voiced segment; entry is the 0-based list position
                    (in the whole list, also with --shard)
      --trim -d DIR voiced segments joined, written under DIR (atomically, layout kept); prints the new list
    A file with no voice gets [0, 0] and a warning (with --trim it is left out of the list). Rows of items
    skipped by --skip-bad are [0, 0] too, so row i stays entry i. Stereo or non-16 kHz audio is refused:
    run `spkid convert` first. The detector is three small numpy networks that tell speech from noise, music and
    sound events (spkid/data/vad.npz, or -m FILE from scripts/train_vad.py); it never imports torch. The defaults
    put segment edges where people label them (pauses from 0.1 s kept apart, 0.05 s padding); `embed` trims more
    generously on its own. --engine silero takes the probabilities from silero-vad instead (its weights, through
    onnxruntime: `pip install silero-vad --no-deps`).

    \b
    Examples:
      spkid vad wavs.txt 32000 > vad.npy
      cat wavs.txt | spkid vad - 16000 -o vad.npy
      spkid vad --segments --min-silence 0.5 < wavs.txt > segs.npy
      spkid convert -d conv < raw.txt | spkid vad --trim -d voiced | spkid features -d feats
    """
    inputs, length = _split_length(inputs)
    if trim and (segments or length is not None):
        raise typer.BadParameter("--trim writes audio; it takes neither --segments nor LENGTH")
    if trim and not out_dir:
        raise typer.BadParameter("--trim needs -d/--out-dir DIR")
    if out_dir and not trim:
        raise typer.BadParameter("-d/--out-dir is for --trim; the .npy goes to stdout or -o FILE")
    if segments and length is not None:
        raise typer.BadParameter("--segments writes every segment; it takes no LENGTH")
    if not trim:
        streams.check_binary_output(output)  # before any work
    if model and engine == "silero":
        raise typer.BadParameter("-m/--model is a file of spkid's networks; --engine silero runs silero-vad's own")
    net = str(model) if model else None
    if net:
        core.load_model(net)  # a file that is not a VAD model fails once, before any audio is read
    cfg = VadConfig(frame=frame, hop=hop, threshold=threshold, neg_threshold=neg_threshold,
                    min_speech=min_speech, min_silence=min_silence, padding=padding)
    everything = streams.read_list(inputs, label_depth, "vad")
    positions = lists.shard(list(range(len(everything))), shard)
    entries = [everything[i] for i in positions]
    if trim:
        # the layout below --root is the whole list's, so every shard writes where an unsharded run would
        base = Path(root) if root else lists.default_root([e.path for e in everything])
        _run_trim(entries, cfg, out_dir, base, fmt, jobs=jobs, skip_bad=skip_bad, overwrite=overwrite, engine=engine,
                  model=net)
        return
    if engine == "silero":
        from spkid import vadsilero

        vadsilero.model_path()  # a missing package fails once, before any file is read
    results = map_entries(partial(_detect, cfg=cfg, engine=engine, model=net), entries, jobs=jobs, skip_bad=skip_bad,
                          desc="vad")
    done = {e.path: r for e, r in results}
    rows = []
    for pos, e in zip(positions, entries):
        segs, n = done.get(e.path, (np.zeros((0, 2), np.int64), 0))
        if e.path in done and len(segs) == 0:
            log.warning("%s: no voice found%s", e.path, "" if segments else "; writing [0, 0]")
        if segments:
            rows.extend([pos, s, t] for s, t in segs)
        elif len(segs) == 0:
            rows.append((0, 0))
        else:
            rows.append(core.best_window(segs, n, length) if length is not None else core.span(segs))
    out = np.asarray(rows, dtype=np.int64).reshape(-1, 3 if segments else 2)
    streams.write_array(out, output)


def _run_trim(entries: list[Entry], cfg: VadConfig, out_dir: str, base: Path, fmt: str, *,
              jobs: int, skip_bad: bool, overwrite: bool, engine: str = "spkid", model: str | None = None) -> None:
    suffix = audio.FORMATS[fmt][1]
    planned = [lists.output_path(e.path, out_dir, base, suffix) for e in entries]
    fn = partial(_trim_one, cfg=cfg, out_dir=out_dir, root=base, fmt=fmt, engine=engine, model=model)
    out = write_outputs(fn, entries, planned, overwrite=overwrite, jobs=jobs, skip_bad=skip_bad, desc="vad")
    results = {path: segs for path, (segs, _) in out.results.items()}
    listed = []
    silent = 0
    for e, p in zip(entries, planned):
        if e.path in out.failed:
            continue
        if e.path in results and len(results[e.path]) == 0:
            log.warning("%s: no voice found; left out of the list", e.path)
            silent += 1
            continue
        listed.append(Entry(str(p), e.label))
    out.log_summary(*([f"{silent:,} without voice"] if silent else []))
    streams.write_list(listed)

"""`spkid features`: an audio list in, one float32 `.npy` of frame features per file out, and the new list on stdout."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import typer

from spkid import fileio, lists, streams
from spkid.cli._common import write_outputs
from spkid.cli._options import (AllowCommandsOpt, InputsArg, JobsOpt, LabelDepthOpt, OutDirOpt, OverwriteOpt, RootOpt, ShardOpt,
                                SkipBadOpt)
from spkid.cmvn import Norm
from spkid.errors import SpkidError, UsageError
from spkid.features import Backend, FeatureConfig, LogType, Window
from spkid.lists import Entry, KaldiEntry

app = typer.Typer(rich_markup_mode=None)

_D = FeatureConfig()
CONFIG_NAME = "features.json"
KindChoice = Literal["fbank", "mfcc", "specdb", "spectrogram", "kaldi-fbank", "sb-fbank"]  # Kind, kaldifbank's and sbfbank's KIND
# what kaldi-fbank takes from the options when they are given (else Kaldi's defaults); the others do not apply to it
KALDI_OPTIONS = {"rate": "sample_rate", "n_filters": "n_filters", "win_len": "win_len", "win_step": "win_step",
                 "preemph": "preemph", "low_freq": "low_freq", "high_freq": "high_freq", "norm": "norm",
                 "cmn_window": "cmn_window", "window": "window"}
NOT_KALDI = {"n_ceps": "--n-ceps", "lifter": "--lifter", "append_energy": "--append-energy", "nfft": "--nfft",
             "log_type": "--log", "backend": "--backend"}
# what sb-fbank (SpeechBrain's Fbank) takes from the options when they are given (else SpeechBrain's defaults)
SB_OPTIONS = {"rate": "sample_rate", "n_filters": "n_filters", "win_len": "win_len", "win_step": "win_step",
              "nfft": "nfft", "low_freq": "low_freq", "high_freq": "high_freq", "norm": "norm", "cmn_window": "cmn_window"}
NOT_SB = {"n_ceps": "--n-ceps", "lifter": "--lifter", "append_energy": "--append-energy", "preemph": "--preemph",
          "window": "--window", "log_type": "--log", "backend": "--backend"}


@dataclass(frozen=True)
class _Job(Entry):
    """A list entry with its voiced sample ranges and its output file (small and picklable: each -j worker gets
    only its own); a Kaldi entry also has its id, a segment its `[start, end)` seconds, and a piped `wav.scp`
    command (`command`, allowed by --allow-commands: `lists.KaldiEntry`) its command as `path`."""

    keep: tuple[tuple[int, int], ...] | None = None
    dst: str = ""
    utt: str = ""
    start: float | None = None
    end: float | None = None
    command: bool = False

    @property
    def key(self) -> str:
        return self.utt or self.path


def _features_one(job: _Job, *, cfg: Any) -> int:
    from spkid import audio, features

    keep = None if job.keep is None else np.array(job.keep, dtype=np.int64).reshape(-1, 2)
    if job.start is not None or job.command:  # a Kaldi segment, or a piped command's output: decoded in memory
        src = audio.source(job)
        if job.start is not None:  # the segment's samples of the recording
            x, sr = audio.load_segment(src, job.start, job.end)
            audio.check_expected(src, 1, sr, cfg.sample_rate)
        else:
            x = audio.load_expected(src, cfg.sample_rate)
        if isinstance(cfg, FeatureConfig):
            feats = features.compute(x, cfg)
        else:
            feats = cfg.compute(cfg.prepare(x)) if len(x) else np.zeros((0, cfg.dims), np.float32)
    elif isinstance(cfg, FeatureConfig):
        feats = features.compute_file(job.path, cfg, keep=keep)
    else:  # a model's own front end (e.g. the pretrained encoder's): its `prepare`, then `compute`, of the voiced samples
        x = audio.load_expected(job.path, cfg.sample_rate)
        if keep is not None:
            x = np.concatenate([x[max(a, 0) : b] for a, b in keep] or [x[:0]])
        feats = cfg.compute(cfg.prepare(x)) if len(x) else np.zeros((0, cfg.dims), np.float32)
    if len(feats) == 0:
        raise SpkidError(f"{job.path}: no voiced frames (VAD ranges {list(job.keep or ())}); nothing to write")
    with fileio.atomic_write(job.dst, "wb") as f:
        np.lib.format.write_array(f, feats, allow_pickle=False)
    return len(feats)


def _vad_ranges(path: str, n_entries: int, positions: list[int]) -> dict[int, np.ndarray]:
    """Voiced sample ranges `(K, 2)` of the entries at `positions` of the whole list, from a `spkid vad` array
    made from the same list: `(N, 2)`, one row per entry, or `(M, 3)` `[entry, start, end)` segments."""
    vad = streams.read_array(path)
    if vad.ndim != 2 or vad.shape[1] not in (2, 3) or vad.dtype.kind not in "iu":
        raise SpkidError(f"{path}: expected an integer (N, 2) or (M, 3) array as `spkid vad` writes, "
                         f"got {vad.dtype} {vad.shape}")
    if vad.shape[1] == 2:
        if len(vad) != n_entries:
            raise SpkidError(f"{path}: {len(vad)} VAD rows for {n_entries} list entries; "
                             "make it with `spkid vad` from the same list")
        return {i: vad[i : i + 1].astype(np.int64) for i in positions}
    if len(vad) and not 0 <= vad[:, 0].min() <= vad[:, 0].max() < n_entries:
        raise SpkidError(f"{path}: VAD segments name entries up to {vad[:, 0].max()}, but the list has "
                         f"{n_entries}; make it with `spkid vad --segments` from the same list")
    vad = vad[np.argsort(vad[:, 0], kind="stable")].astype(np.int64)
    lo = np.searchsorted(vad[:, 0], positions, side="left")
    hi = np.searchsorted(vad[:, 0], positions, side="right")
    return {i: vad[a:b, 1:] for i, a, b in zip(positions, lo, hi)}


def _ranges(segments: np.ndarray) -> tuple[tuple[int, int], ...]:
    return tuple((int(a), int(b)) for a, b in segments)


def _model_config(model: str) -> Any:
    """The feature config a model file records (a FeatureConfig, or its own front end's config)."""
    from spkid import embedding
    from spkid.frontends import frontend

    ref = embedding.resolve_model(model)
    front = frontend(ref.spec.features, str(ref.path))
    return getattr(front, "cfg", front)


def _check_config(out_dir: str, cfg: Any, overwrite: bool) -> None:
    """Refuse to mix features of two configs in one folder: an existing features.json must match."""
    from spkid.frontends import read_feature_config

    path = Path(out_dir) / CONFIG_NAME
    if overwrite or not path.exists():
        return
    try:
        a = read_feature_config(path).to_dict()
    except SpkidError as e:
        raise SpkidError(f"{e}; remove it, use another -d, or --overwrite") from None
    b = cfg.to_dict()
    if a != b:
        diff = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k))
        raise SpkidError(f"{path} was written with other settings ({diff}); use another -d, or --overwrite to redo all")


def _kaldi_config(ctx: typer.Context, values: dict[str, Any]) -> Any:
    """kaldi-fbank's config: Kaldi's defaults, replaced by the options given on the command line."""
    from spkid.kaldifbank import KaldiFbankConfig

    values = {**values, "window": {"hann": "hanning"}.get(values["window"], values["window"])}  # Kaldi's name
    return _toolkit_config(ctx, values, KaldiFbankConfig, KALDI_OPTIONS, NOT_KALDI,
                           "Kaldi's 512-point FFT and natural log are fixed")


def _sb_config(ctx: typer.Context, values: dict[str, Any]) -> Any:
    """sb-fbank's config: SpeechBrain's Fbank defaults, replaced by the options given on the command line."""
    from spkid.sbfbank import SbFbankConfig

    return _toolkit_config(ctx, values, SbFbankConfig, SB_OPTIONS, NOT_SB,
                           "SpeechBrain's Hamming window, no pre-emphasis and dB scale are fixed")


def _toolkit_config(ctx: typer.Context, values: dict[str, Any], cls: Any, options: dict[str, str],
                    not_options: dict[str, str], fixed: str) -> Any:
    """A toolkit front end's config (`cls`): its defaults, replaced by the `options` given on the command line;
    any of `not_options` given is a usage error."""
    kind = cls.kind

    def given(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

    if wrong := [flag for name, flag in not_options.items() if given(name)]:
        raise typer.BadParameter(f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to --kind {kind} ({fixed})",
                                 param_hint="--kind")
    try:
        return cls(**{field: values[name] for name, field in options.items() if given(name)})
    except SpkidError as e:
        raise typer.BadParameter(str(e).removeprefix(f"feature config ({kind}): ")) from None


@app.command()
def features(
    ctx: typer.Context,
    inputs: InputsArg = None,
    out_dir: OutDirOpt = ...,
    kind: Annotated[KindChoice, typer.Option("--kind", "-k", help="fbank: log Mel filterbank; mfcc; specdb: log |spectrum|; spectrogram: |spectrum|; kaldi-fbank: Kaldi's fbank (80 filters from 20 Hz, Povey window unless --window, dither 0, snip-edges, ln; of the options below it takes -r, -n, --win-len, --win-step, --preemph, --low-freq, --high-freq, --window, --norm, --cmn-window; WeSpeaker's models use --window hamming --norm cmn); sb-fbank: SpeechBrain's Fbank (80 filters, centred 25 ms Hamming frames, 400-point FFT, dB floored 80 dB below the peak; it takes -r, -n, --win-len, --win-step, --nfft, --low-freq, --high-freq, --norm, --cmn-window; SpeechBrain's speaker models use --norm cmn).")] = _D.kind,
    n_filters: Annotated[int, typer.Option("--n-filters", "-n", min=1, metavar="N", help="Mel filters (fbank, mfcc).")] = _D.n_filters,
    n_ceps: Annotated[int, typer.Option("--n-ceps", min=1, metavar="N", help="MFCC coefficients kept.")] = _D.n_ceps,
    lifter: Annotated[int, typer.Option("--lifter", min=0, metavar="L", help="MFCC cepstral lifter (psf's ceplifter; 0 = off).")] = _D.lifter,
    append_energy: Annotated[bool, typer.Option("--append-energy", help="fbank: add the log frame energy as a column; mfcc: it replaces c0 (psf's appendEnergy).")] = _D.append_energy,
    rate: Annotated[int, typer.Option("--rate", "-r", min=1000, metavar="HZ", help="Sample rate the audio must have (else: run `spkid convert`).")] = _D.sample_rate,
    win_len: Annotated[float, typer.Option("--win-len", metavar="S", help="Window length (seconds).")] = _D.win_len,
    win_step: Annotated[float, typer.Option("--win-step", metavar="S", help="Hop between frames (seconds).")] = _D.win_step,
    nfft: Annotated[int, typer.Option("--nfft", min=0, metavar="N", help="FFT size; 0 = the next power of two at or above the window (512 at 16 kHz).")] = _D.nfft,
    preemph: Annotated[float, typer.Option("--preemph", metavar="C", help="Pre-emphasis coefficient (0 = off).")] = _D.preemph,
    low_freq: Annotated[float, typer.Option("--low-freq", metavar="HZ", help="Lowest Mel band edge.")] = _D.low_freq,
    high_freq: Annotated[float, typer.Option("--high-freq", metavar="HZ", help="Highest Mel band edge; <= 0 counts down from Nyquist (0 = Nyquist).")] = _D.high_freq,
    window: Annotated[Window, typer.Option("--window", "-w", help="Analysis window (rectangular is psf's default).")] = _D.window,
    log_type: Annotated[LogType, typer.Option("--log", help="db: 20*log10 (the older tools); ln: natural log (psf's logfbank, mfcc).")] = _D.log,
    norm: Annotated[Norm, typer.Option("--norm", help="Per-utterance normalisation: cmn, cmvn, or sliding-window cmn (Kaldi apply-cmvn-sliding --center).")] = _D.norm,
    cmn_window: Annotated[int, typer.Option("--cmn-window", min=1, metavar="FRAMES", help="Window of --norm sliding.")] = _D.cmn_window,
    vad: Annotated[str | None, typer.Option("--vad", metavar="FILE", help="Keep only frames inside voiced ranges of this `spkid vad` .npy ((N, 2) or (M, 3), made from the same list).")] = None,
    backend: Annotated[Backend, typer.Option("--backend", help="numpy (fast, bounded memory) or psf (python_speech_features itself).")] = _D.backend,
    model: Annotated[str | None, typer.Option("--model", "-m", metavar="FILE|resemblyzer", help="Compute the features this model reads (its recorded config; the options above are ignored), e.g. to fine-tune it with `spkid train --init` from feature files.")] = None,
    root: RootOpt = None,
    jobs: JobsOpt = 1,
    shard: ShardOpt = None,
    skip_bad: SkipBadOpt = False,
    overwrite: OverwriteOpt = False,
    label_depth: LabelDepthOpt = 1,
    allow_commands: AllowCommandsOpt = False,
) -> None:
    """Compute frame features of mono audio; write one float32 (frames, dims) .npy per file; print the new list.

    Outputs go under -d with the input layout kept below --root and .npy replacing the audio suffix, written
    atomically; existing ones are kept unless --overwrite, so a rerun resumes. -d/features.json records the
    exact config (what `spkid train` and `embed` read back); a folder holding features of other settings is
    refused. The numbers equal python_speech_features' under the same settings (within 1e-3 dB); files are
    streamed, so a 2-hour file needs about its output's memory. Stereo or other-rate audio is refused: run
    `spkid convert` first. With --vad, frames whose centre lies outside the voiced ranges are dropped before
    --norm; a file left with no frame is an error (skipped with --skip-bad).

    \b
    Examples:
      spkid convert -d conv < raw.txt | spkid vad --trim -d voiced | spkid features -d feats > feats.txt
      spkid features wavs.txt -d mfcc --kind mfcc --n-filters 40 --n-ceps 20 --norm cmvn -j 4
      spkid features data/train -d fbank80 --kind kaldi-fbank --norm cmn    # a Kaldi data folder (wav.scp)
      spkid features wavs.txt -d sbfbank --kind sb-fbank --norm cmn         # SpeechBrain's ECAPA front end
      spkid vad wavs.txt 32000 > vad.npy && spkid features wavs.txt --vad vad.npy -d feats --norm sliding
      spkid features train.txt -d mel --model resemblyzer | spkid train -m lstm_ge2e --init resemblyzer -o ft.pt
    """
    if model is not None:
        cfg = _model_config(model)
    elif kind == "kaldi-fbank":
        cfg = _kaldi_config(ctx, locals())
    elif kind == "sb-fbank":
        cfg = _sb_config(ctx, locals())
    else:
        try:
            cfg = FeatureConfig(kind=kind, sample_rate=rate, n_filters=n_filters, win_len=win_len, win_step=win_step,
                                nfft=nfft, preemph=preemph, low_freq=low_freq, high_freq=high_freq, window=window,
                                log=log_type, n_ceps=n_ceps, lifter=lifter, append_energy=append_energy, norm=norm,
                                cmn_window=cmn_window, backend=backend)
        except SpkidError as e:
            raise typer.BadParameter(str(e).removeprefix("feature config: ")) from None
    everything = streams.read_list(inputs, label_depth, "features -d DIR", segments=True, allow_commands=allow_commands)
    positions = lists.shard(list(range(len(everything))), shard)
    entries = [everything[i] for i in positions]
    if vad and any(isinstance(e, KaldiEntry) for e in everything):
        raise UsageError("--vad gives sample ranges of whole files, and a Kaldi data folder's entries are named by "
                         "their ids; trim the audio with `spkid vad --trim` first, or leave out --vad")
    ranges = _vad_ranges(vad, len(everything), positions) if vad else {}
    base = Path(root) if root else lists.default_root([e.path for e in everything if not isinstance(e, KaldiEntry)])
    planned = [_kaldi_output(e, out_dir) if isinstance(e, KaldiEntry) else lists.output_path(e.path, out_dir, base, ".npy")
               for e in entries]
    _check_config(out_dir, cfg, overwrite)
    config_path = Path(out_dir) / CONFIG_NAME
    config_existed = config_path.exists()
    try:  # from the config's write on: a Ctrl-C right after it must not leave it behind either
        with fileio.atomic_write(config_path, "w") as f:
            f.write(json.dumps(cfg.to_dict(), indent=1) + "\n")
        items = [_Job(e.path, e.label, _ranges(ranges[i]) if vad else None, str(p), getattr(e, "utt", ""),
                      getattr(e, "start", None), getattr(e, "end", None), getattr(e, "command", False))
                 for i, e, p in zip(positions, entries, planned)]
        fn = partial(_features_one, cfg=cfg)
        out = write_outputs(fn, items, planned, overwrite=overwrite, jobs=jobs, skip_bad=skip_bad, desc="features")
    except BaseException:
        if not config_existed:  # a failed first run leaves no half-made folder behind
            config_path.unlink(missing_ok=True)
        raise
    out.log_summary()
    streams.write_list(Entry(str(p), e.label) for e, p in zip(entries, planned) if e.key not in out.failed)


def _kaldi_output(entry: KaldiEntry, out_dir: str) -> Path:
    """Where the features of a Kaldi utterance or segment go: `-d/ID.npy`."""
    if not entry.utt or "/" in entry.utt or entry.utt in (".", ".."):
        raise SpkidError(f"{entry.shown}: the Kaldi id {entry.utt!r} cannot name a file (it holds a '/')")
    return Path(out_dir) / f"{entry.utt}.npy"

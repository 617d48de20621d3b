"""`spkid train`: a labelled audio or feature list in, a model file out (GPU or CPU, resumable, torchrun-ready)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Literal

import typer

from spkid import streams
from spkid.cli._common import STATE, err_console, show_progress
from spkid.cli._options import InputsArg, LabelDepthOpt
from spkid.errors import SpkidError
from spkid.lists import plural

app = typer.Typer(rich_markup_mode=None)

# Registry names as Literals: choices in --help and TAB completion without importing torch
# (a test asserts they equal spkid.models.MODELS and spkid.losses.LOSSES).
ModelName = Literal["blstm", "vgg_attn", "resnet18_attn", "thin_resnet", "se_resnet34", "rescnn", "lstm_ge2e",
                    "ecapa_tdnn", "resnet34"]
LossName = Literal["softmax", "aam", "ge2e", "triplet"]


def parse_crop(text: str) -> tuple[str, float]:
    """`2.0` or `2s` -> seconds; `200f` -> frames."""
    t = text.strip().lower()
    try:
        if t.endswith("f"):
            return "frames", float(int(t[:-1]))
        return "seconds", float(t[:-1] if t.endswith("s") else t)
    except ValueError:
        raise SpkidError(f"--crop {text!r}: expected seconds (2.0, 2s) or frames (200f)") from None


@app.command()
def train(
    inputs: InputsArg = None,
    output: Annotated[str, typer.Option("--output", "-o", metavar="FILE", help="The model file to write.")] = ...,
    config: Annotated[str | None, typer.Option("--config", "-c", metavar="FILE",
                                               help="Training config (JSON or TOML; see configs/). Options below override it.")] = None,
    model: Annotated[ModelName | None, typer.Option("--model", "-m", help="Architecture.")] = None,
    loss: Annotated[LossName | None, typer.Option("--loss", help="Training objective.")] = None,
    small: Annotated[bool | None, typer.Option("--small/--full-size", help="Start from the architecture's CPU-sized preset.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", "-e", min=1, metavar="N")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", min=1, metavar="N")] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, metavar="N", help="Batches per epoch (default: about one pass over the training utterances).")] = None,
    crop: Annotated[str | None, typer.Option("--crop", metavar="SECONDS|Nf", help="Training crop: seconds (2.0) or frames (200f).")] = None,
    lr: Annotated[float | None, typer.Option("--lr", metavar="RATE", help="Peak learning rate.")] = None,
    noise: Annotated[str | None, typer.Option("--noise", metavar="LIST|DIR", help="Noise files for additive-noise augmentation (a list file or a folder).")] = None,
    val_speakers: Annotated[int | None, typer.Option("--val-speakers", min=0, metavar="N", help="Speakers held out for the per-epoch validation EER.")] = None,
    time_budget: Annotated[float | None, typer.Option("--time-budget", metavar="SECONDS", help="Stop training after this long (0 = no limit).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", metavar="N", help="Seed: CPU runs are repeatable.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=0, metavar="N", help="DataLoader worker processes.")] = None,
    device: Annotated[str, typer.Option("--device", metavar="auto|cpu|cuda", help="auto = CUDA when available, else CPU.")] = "auto",
    threads: Annotated[int, typer.Option("--threads", min=0, metavar="N", help="CPU threads for torch (0 = torch's default).")] = 0,
    run_dir: Annotated[str | None, typer.Option("--run-dir", metavar="DIR", help="Checkpoint, log.jsonl and config.json (default: OUTPUT with .run).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run folder's last complete epoch.")] = False,
    init: Annotated[str | None, typer.Option("--init", metavar="MODEL", help="Start from this model file's weights (fine-tuning), e.g. `resemblyzer`.")] = None,
    label_depth: LabelDepthOpt = 1,
) -> None:
    """Train a speaker-embedding network; write a model file that `embed` and friends load.

    Input is a labelled list of audio files (features are computed on the fly, with the config recorded) or of
    feature files from `spkid features` (their features.json is recorded). Speakers are split into training
    and validation sets (EER every epoch); crops are drawn speaker-balanced. Augmentation (noise, reverb,
    speed, gain, telephone band, SpecAugment), model and loss options live in the config file; configs/ holds
    one per reproduced system. Every epoch writes an atomic checkpoint: --resume continues after a crash or
    kill. With torchrun it trains on several GPUs or nodes (DistributedDataParallel).

    \b
    Examples:
      spkid train train.txt -c configs/ecapa_tdnn.toml --noise noise/ -o model.pt
      spkid features -d feats < wavs.txt | spkid train -m thin_resnet --loss softmax -o dvec.pt
      spkid train train.txt -c configs/ecapa_tdnn.toml -o model.pt --resume
      torchrun --nproc-per-node 4 -m spkid train train.txt -c configs/resnet34.toml -o model.pt
    \b
    Reads: PATH[<TAB>LABEL] lists of audio or .npy feature files. Writes: OUTPUT (spkid-model/1),
    and RUN_DIR/{config.json,checkpoint.pt,log.jsonl}.
    """
    from spkid import training  # torch is imported here, not on --help

    overrides: dict = {}
    for name, value in {"model": model, "loss": loss, "small": small, "epochs": epochs, "batch_size": batch_size,
                        "batches_per_epoch": steps, "lr": lr, "val_speakers": val_speakers, "time_budget": time_budget, "seed": seed,
                        "workers": workers}.items():
        if value is not None:
            overrides[name] = value
    base = training.load_config(config) if config else training.TrainConfig()
    raw = training.config_dict(base)
    raw.update(overrides)
    if crop is not None:
        unit, value = parse_crop(crop)
        fe = base.frontend()
        raw["crop"] = value if unit == "seconds" else value * fe.frame_step / fe.sample_rate
        raw["crop_min"] = min(raw["crop_min"], raw["crop"])
    if noise is not None:
        raw["augment"] = {**raw["augment"], "noise": True, "noise_files": _noise_files(noise)}
    cfg = training.TrainConfig(**raw)
    if threads:
        import torch

        torch.set_num_threads(threads)
    entries = streams.read_list(inputs, label_depth, "train")
    with _progress() as progress:
        summary = training.train(cfg, entries, output, run_dir or str(Path(output).with_suffix(".run")),
                                 device=device, resume=resume, init=_resolve_init(init), progress=progress)
    if not STATE.quiet:
        last = summary["history"][-1] if summary["history"] else {}
        eer = f", validation EER {100 * last['val_eer']:.2f} %" if last.get("val_eer") is not None else ""
        typer.echo(f"spkid train: wrote {output} ({plural(summary['parameters'], 'parameter')}, "
                   f"{plural(summary['epochs_done'], 'epoch')}{eer})", err=True)


def _noise_files(arg: str) -> list[str]:
    p = Path(arg)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in (".flac", ".wav", ".ogg", ".mp3"))
    else:
        files = [e.path for e in streams.read_list([arg])]
    if not files:
        raise SpkidError(f"--noise {arg}: no audio files found")
    return files


def _resolve_init(init: str | None) -> str | None:
    if init == "resemblyzer":
        from spkid import pretrained

        return str(pretrained.model_file())
    if init is not None and (Path(init).is_dir() or (Path(init).is_file() and _published(init))):
        raise SpkidError(f"--init {init}: fine-tuning a published model of another toolkit is not supported "
                         "(spkid trains only its own architectures); use it with --model in embed, enroll, verify "
                         "and identify, and calibrate it with `spkid score --calibrate --model-out`")
    return init


def _published(path: str) -> bool:
    from spkid import importers, modelfile

    return modelfile.header(path) is None and importers.detect(path) is not None


@contextlib.contextmanager
def _progress():
    """A rich bar over all steps when stderr is a terminal; None otherwise (the per-epoch log lines suffice)."""
    if not show_progress():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("train epoch {task.fields[epoch]} loss {task.fields[loss]:.3f}"), BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=err_console(), transient=True) as bar:
        task = bar.add_task("train", total=None, epoch=1, loss=0.0)

        def update(step: int, total: int, stats: dict) -> None:
            bar.update(task, completed=step, total=total, **stats)

        yield update

"""Every option that more than one subcommand takes, defined once (typer `Annotated` types), and the bundles of
options that travel together: how to embed (`EmbedOptions`) and how to decide (`RuleOptions`).

Nothing here imports torch: `spkid --help` and TAB completion stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import typer

InputsArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Audio/feature files, folders (the audio files below them, labelled by their folders), list files "
             "(*.txt *.lst *.list *.scp: PATH[<TAB>LABEL] a line), Kaldi data folders (wav.scp, utt2spk, segments; "
             "keys are the Kaldi ids) or wav.scp files, or - for a list on stdin (the default); "
             "embed, enroll, verify and identify also take one audio clip piped on stdin.",
        show_default=False,
        metavar="INPUT...",
    ),
]
OutDirOpt = Annotated[str, typer.Option("--out-dir", "-d", metavar="DIR", help="Folder for the written files (created; input layout kept below it).")]
RootOpt = Annotated[
    str | None,
    typer.Option("--root", metavar="DIR", help="Strip this folder from input paths to lay out outputs (default: the inputs' common folder)."),
]
JobsOpt = Annotated[int, typer.Option("--jobs", "-j", min=1, metavar="N", help="Parallel worker processes (joblib).")]
ShardOpt = Annotated[
    str | None,
    typer.Option("--shard", metavar="I/N", help="Process only every N-th entry starting at the I-th (1-based); `cat` joins shard outputs."),
]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Warn about and skip unreadable items instead of failing (exit 1 only if all fail).")]
AllowCommandsOpt = Annotated[
    bool,
    typer.Option("--allow-commands",
                 help="Run the piped commands of a Kaldi wav.scp (`UTT CMD |` lines) with `sh -c` in the current folder and "
                      "read the audio they write to stdout (refused without it). Only for data folders you trust."),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Redo outputs that exist already (default: keep them, so a rerun resumes).")]
LabelDepthOpt = Annotated[
    int,
    typer.Option("--label-depth", min=1, metavar="N", help="Without a LABEL column, the speaker is this ancestor folder's name (1 = parent; LibriSpeech/VoxCeleb: 2)."),
]
OutputOpt = Annotated[str | None, typer.Option("--output", "-o", metavar="FILE", help="Write to FILE (atomically) instead of stdout.")]

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", metavar="MODEL|resemblyzer",
                 help="Model file written by `spkid train` (or its .onnx), a published model of WeSpeaker, "
                      "SpeechBrain, 3D-Speaker or pyannote (its folder or file, or a `spkid models` name once pulled), "
                      "or `resemblyzer` (pretrained GE2E encoder; needs `pip install 'spkid[pretrained]'`). "
                      "Default: the model a -g gallery records, else the bundled one."),
]
DeviceOpt = Annotated[Literal["auto", "cpu", "cuda"], typer.Option("--device", help="auto = CUDA when available, else CPU.")]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=0, metavar="N", help="CPU threads of the network (0: torch's default; onnxruntime: the cores divided by -j).")]
BackendOpt = Annotated[
    Literal["auto", "torch", "onnx"],
    typer.Option("--backend", help="Run the network with onnxruntime (no torch import) or torch; auto = ONNX when the model has an ONNX form (a .onnx file, or X.onnx beside X.pt), else torch."),
]
WindowOpt = Annotated[float | None, typer.Option("--window", min=0.0, metavar="SECONDS", help="Window length for long audio (default: the model's; 0 = whole utterance).")]
HopOpt = Annotated[float | None, typer.Option("--hop", min=0.01, metavar="SECONDS", help="Step between windows (default: the model's).")]
NoVadOpt = Annotated[bool, typer.Option("--no-vad", help="Embed the whole signal instead of its voiced part.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, metavar="N", help="Windows per forward pass (results do not depend on it).")]
FromEmbeddingsOpt = Annotated[
    bool,
    typer.Option("--from-embeddings", help="The input is a keyed embedding matrix (`spkid embed` output), not a list; detected by itself on stdin."),
]

OperatingPoint = Literal["eer", "min_dcf", "bayes", "far"]
ThresholdOpt = Annotated[float | None, typer.Option("--threshold", "-t", metavar="SCORE", help="Accept scores >= SCORE (default: the gallery's or the model's calibration).")]
PointOpt = Annotated[OperatingPoint, typer.Option("--operating-point", help="Which calibrated threshold to use: equal error rate, minimum DCF, Bayes decision at the calibration prior, or the target FAR.")]
CohortOpt = Annotated[str | None, typer.Option("--cohort", metavar="FILE", help="Keyed matrix of cohort embeddings (`spkid embed` output, other speakers) for AS-norm.")]
ScoreByOpt = Annotated[Literal["best", "mean"], typer.Option("--score-by", help="Galleries that keep every enrolment embedding: score a speaker by its best or its mean cosine.")]
MinSpeechOpt = Annotated[
    float,
    typer.Option("--min-speech", min=0.0, metavar="SECONDS",
                 help="Refuse items with less speech than this (skipped with --skip-bad); --no-vad scores everything."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON lines instead of text.")]


@dataclass(frozen=True)
class EmbedOptions:
    """How audio becomes embeddings: the model (None: the gallery's, else the bundled one) and how it runs."""

    model: str | None = None
    device: str = "auto"
    threads: int = 0
    window: float | None = None
    hop: float | None = None
    no_vad: bool = False
    batch_size: int = 64
    backend: str = "auto"


@dataclass(frozen=True)
class RuleOptions:
    """How a score becomes a decision: a fixed threshold or a calibrated operating point, AS-norm, score-by."""

    threshold: float | None = None
    point: str = "eer"
    cohort: str | None = None
    score_by: str = "best"

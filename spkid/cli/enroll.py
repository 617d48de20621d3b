"""`spkid enroll`: build or update a speaker gallery folder from audio (or from `spkid embed` output)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from spkid import filelock, lists, streams
from spkid.cli._common import embed_entries, embeddings_source, embedder, gate_embeddings
from spkid.cli._options import (AllowCommandsOpt, BackendOpt, BatchOpt, DeviceOpt, EmbedOptions, FromEmbeddingsOpt, HopOpt, InputsArg, JobsOpt,
                                LabelDepthOpt, MinSpeechOpt, ModelOpt, NoVadOpt, SkipBadOpt, ThreadsOpt, WindowOpt)
from spkid.errors import SpkidError, UsageError
from spkid.lists import plural, printable
from spkid.report import format_table
from spkid.utterance import MIN_SPEECH_S

if TYPE_CHECKING:
    import numpy as np

    from spkid.gallery import Gallery

log = logging.getLogger("spkid.enroll")
app = typer.Typer(rich_markup_mode=None)

GalleryOpt = Annotated[str, typer.Option("--gallery", "-g", metavar="DIR", help="The gallery folder (created when missing).")]


@dataclass
class Addition:
    """What one enroll call adds: a label and an embedding `(N, D)` per utterance, its seconds of speech as the VAD
    measured them (NaN where not measured: --no-vad, embeddings without quality records; a duration-aware
    calibration then decides on the speaker with its duration-free thresholds), and the model record gallery.json
    keeps."""

    labels: list[str]
    vectors: np.ndarray
    seconds: list[float] | None
    meta: dict

    @property
    def sha256(self) -> str:
        return self.meta["model"]["sha256"]


@app.command()
def enroll(
    inputs: InputsArg = None,
    gallery_dir: GalleryOpt = ...,
    model: ModelOpt = None,
    from_embeddings: FromEmbeddingsOpt = False,
    labels: Annotated[str | None, typer.Option("--labels", metavar="FILE", help="Speaker of each key: a list file of PATH<TAB>LABEL lines, Kaldi's utt2spk or a Kaldi data folder (default: the list's labels, or the key's folder).")] = None,
    speaker: Annotated[str | None, typer.Option("--speaker", "-s", metavar="NAME", help="Enroll every input (clips, a folder, audio on stdin, embeddings) as this one speaker.")] = None,
    label_depth: LabelDepthOpt = 1,
    aggregation: Annotated[Literal["mean", "all"] | None, typer.Option("--aggregation", help="New gallery: keep one mean embedding per speaker (mean, the default) or every enrolment embedding (all).")] = None,
    remove: Annotated[list[str] | None, typer.Option("--remove", metavar="NAME", help="Remove this speaker (repeatable).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="Print speakers, utterance counts and seconds of speech (after any change).")] = False,
    threshold: Annotated[float | None, typer.Option("--threshold", metavar="SCORE", help="Store a decision threshold in the gallery (verify/identify use it when given none).")] = None,
    min_speech: MinSpeechOpt = MIN_SPEECH_S,
    window: WindowOpt = None,
    hop: HopOpt = None,
    no_vad: NoVadOpt = False,
    device: DeviceOpt = "auto",
    backend: BackendOpt = "auto",
    threads: ThreadsOpt = 0,
    batch_size: BatchOpt = 64,
    jobs: JobsOpt = 1,
    skip_bad: SkipBadOpt = False,
    allow_commands: AllowCommandsOpt = False,
    wait: Annotated[float, typer.Option("--wait", min=0, metavar="SECONDS", help="How long to wait for another enroll holding the gallery's lock.")] = 600.0,
    index: Annotated[bool, typer.Option("--index", help="Build the gallery's search index now, whatever its size (it is built by itself from 200,000 rows, and kept up to date on every change once there).")] = False,
    shard: Annotated[str | None, typer.Option("--shard", metavar="I/N", help="Enroll only the speakers of shard I of N (split by a hash of the name, so each speaker lands in one shard); `identify -g` takes every shard.")] = None,
) -> None:
    """Add the listed utterances to the gallery DIR (one model per speaker), or remove or list speakers.

    Labels come from the list (PATH<TAB>LABEL, or the parent folder; --label-depth) or from --labels. Audio is
    embedded with --model (default: the model the gallery was built with, else the bundled one); embeddings
    piped from `spkid embed` are used as they are (no torch). The gallery records the model's sha256, and
    embeddings of another model are refused. The folder is rewritten atomically (a crash leaves the old or the
    new gallery), and a lock file beside it makes concurrent enrolls queue, so none loses the other's speakers.
    Warnings flag utterances with under 2 s of speech, clipping, near-silence or resampling.

    Large galleries get a search index (faiss: candidates scored exactly by `identify`), built with --index or by
    itself from 200,000 rows, and updated with the gallery. --shard I/N keeps the speakers of one shard, so a
    gallery too large for one disk or machine is built and searched in parts (`identify -g s1 -g s2 ...`).

    \b
    Examples:
      spkid enroll enroll.txt -g enroll/ --model resemblyzer
      spkid enroll voices/ -g enroll/                       # voices/alice/*.wav, voices/bob/*.flac, ...
      spkid enroll hans1.wav hans2.wav --speaker hans -g enroll/
      spkid embed -m model.pt enroll.txt | spkid enroll -g enroll/
      spkid enroll -g enroll/ --remove alice --list
      spkid enroll big.txt -g shard2/ --shard 2/8                # one task of a Slurm array
    """
    from spkid import calibration, gallery

    if speaker is not None and labels is not None:
        raise UsageError("--speaker names every input's speaker; --labels names them key by key: give one of them")
    if speaker is not None:
        speaker = gallery.check_name(speaker)
    if threshold is not None:
        calibration.finite_number(threshold, "--threshold", "the threshold")
    lists.parse_shard(shard)
    g_path = Path(gallery_dir)
    # with --list/--remove/--threshold and no inputs, stdin is read only when something is piped in
    editing_only = (inputs is None and bool(list_ or remove or threshold is not None or index) and not from_embeddings
                    and not streams.stdin_is_piped())
    existing = gallery.load(g_path) if gallery.exists(g_path) else None
    if existing is not None and aggregation is not None and aggregation != existing.aggregation:
        raise UsageError(f"{g_path}: the gallery keeps aggregation {existing.aggregation!r}; "
                         f"--aggregation {aggregation} applies to a new gallery only")
    add = None
    if not editing_only:
        src = embeddings_source(inputs, from_embeddings)
        if src is not None:
            add = _from_stream(src, existing, model, labels, speaker, label_depth, min_speech, skip_bad, shard)
        else:
            opts = EmbedOptions(model, device, threads, window, hop, no_vad, batch_size, backend)
            add = _from_audio(inputs, existing, opts, labels, speaker, label_depth, min_speech, jobs, skip_bad, shard,
                              allow_commands)
    if existing is None and add is None:
        raise SpkidError(f"{g_path}: no such gallery; build one with `spkid enroll LIST -g {g_path}`")

    changing = add is not None or bool(remove) or threshold is not None or index
    with filelock.locked(g_path, wait):
        g = gallery.load(g_path, mmap=False, with_index=changing) if gallery.exists(g_path) else None
        if g is None:
            if add is None:
                raise SpkidError(f"{g_path}: no such gallery; build one with `spkid enroll LIST -g {g_path}`")
            g = gallery.empty(add.vectors.shape[1], {**add.meta, "aggregation": aggregation or "mean"})
            g.path = g_path
        elif add is not None:
            gallery.check_model(g.model_sha256, add.sha256, f"the gallery {g_path}",
                                "the embeddings to enroll")
        before = set(g.speakers)
        if add is None:
            new = gallery.updated(g, remove=remove or ())
        else:
            new = gallery.updated(g, add.labels, add.vectors, add.seconds, remove=remove or ())
        if threshold is not None:
            new.meta["threshold"] = {"score": threshold, "source": "spkid enroll --threshold"}
        if changing:
            new = gallery.with_index(new, build=index)
            gallery.save(g_path, new)
    if add is not None:
        added = set(add.labels)
        log.info("enrolled %s of %s (%d new) into %s, now %s", plural(len(add.labels), "utterance"),
                 plural(len(added), "speaker"), len(added - before), g_path, plural(len(new.speakers), "speaker"))
    if remove:
        log.info("removed %s from %s, now %s", ", ".join(map(printable, remove)), g_path,
                 plural(len(new.speakers), "speaker"))
    if list_:
        rows = [["speaker", "utterances", "seconds"]]
        rows += [[printable(s), str(c), gallery.fmt_seconds(t)] for s, c, t in gallery.speaker_table(new)]
        streams.write_text(format_table(rows))


def _in_shard(names: list[str], shard: str | None) -> list[int]:
    """The positions of `names` in shard I/N (every one without --shard); none at all is an error."""
    keep = [i for i, ok in enumerate(lists.speaker_shard(names, shard)) if ok]
    if not keep:
        raise SpkidError(f"--shard {shard}: none of the {plural(len(set(names)), 'speaker')} listed falls in this shard")
    return keep


def _from_stream(src: str, existing: Gallery | None, model: str | None, labels: str | None, speaker: str | None,
                 label_depth: int, min_speech: float, skip_bad: bool, shard: str | None) -> Addition:
    """Embeddings piped from `spkid embed` (or --from-embeddings FILE), used as they are (no network, no torch),
    those without enough speech refused."""
    from spkid import embedding, gallery

    emb = streams.read_embeddings(src)
    sha = emb.model_sha256
    if model is not None:
        ref = embedding.resolve_model(model)
        if sha is None:
            log.warning("%s: the embeddings record no model; trusting --model %s", emb.source, model)
            sha = ref.sha256
        else:
            gallery.check_model(sha, ref.sha256, f"the embeddings in {emb.source}", f"--model {model}")
    elif sha is None:
        raise SpkidError(f"{emb.source}: the embeddings record no model; pass --model FILE (the model that made them)")
    if existing is not None:
        gallery.check_model(existing.model_sha256, sha, f"the gallery {existing.path}", f"the embeddings in {emb.source}")
    if len(emb.keys) == 0:
        raise SpkidError(f"{emb.source}: no embeddings to enroll")
    rows = gate_embeddings(emb, min_speech, "enrolment", skip_bad)
    keys = [str(emb.keys[i]) for i in rows]
    names = [speaker] * len(keys) if speaker is not None else _checked_names(_labels_for(keys, labels, label_depth))
    keep = _in_shard(names, shard)
    rows, keys, names = [rows[i] for i in keep], [keys[i] for i in keep], [names[i] for i in keep]
    _warn_duplicates(keys)
    label = emb.meta.get("model") or model
    path = Path(label) if label and label != "resemblyzer" and Path(label).exists() else None
    meta = {"model": {"sha256": sha, "label": label, "path": str(path.resolve()) if path else None},
            "features": emb.meta.get("features"), "embedding": emb.meta.get("embedding")}
    from spkid.decisions import speech_seconds

    seconds = None if emb.quality is None else [speech_seconds(emb.quality[i]) for i in rows]
    return Addition(names, emb.values[rows], None if seconds is None else [math.nan if x is None else x for x in seconds],
                    meta)


def _from_audio(inputs: list[str] | None, existing: Gallery | None, opts: EmbedOptions, labels: str | None,
                speaker: str | None, label_depth: int, min_speech: float, jobs: int, skip_bad: bool,
                shard: str | None, allow_commands: bool = False) -> Addition:
    """The listed audio, embedded with the gallery's model (or --model): items without enough speech refused,
    other quality problems warned about."""
    from spkid.embedding import model_for_gallery

    entries, clip = streams.read_inputs(inputs, label_depth, command="enroll -g DIR", allow_commands=allow_commands)
    if not entries:
        raise SpkidError("the input list is empty")
    if speaker is not None:
        entries = [e.with_label(speaker) for e in entries]
    elif labels:
        names = _labels_for([e.key for e in entries], labels, label_depth)
        entries = [e.with_label(n) for e, n in zip(entries, names)]
    unlabelled = [e.shown for e in entries if e.label is None]
    if unlabelled:
        if unlabelled[0] == "<stdin>":
            raise UsageError("<stdin>: audio on stdin has no speaker label; name it with --speaker NAME")
        raise SpkidError(f"{unlabelled[0]}: no speaker label (no LABEL column and no parent folder); "
                         "give PATH<TAB>LABEL lines, --labels FILE or --speaker NAME")
    entries = [e.with_label(n) for e, n in zip(entries, _checked_names([e.label for e in entries]))]
    entries = [entries[i] for i in _in_shard([e.label for e in entries], shard)]
    _warn_duplicates([e.key for e in entries])
    ref = model_for_gallery(opts.model, existing, opts.backend)
    emb = embedder(opts, ref, jobs)
    good, vectors, quals = embed_entries(emb, entries, jobs=jobs, skip_bad=skip_bad, desc="enroll",
                                         min_speech=min_speech, purpose="enrolment", clip=clip)
    for e, q in zip(good, quals):
        for problem in q.problems():
            log.warning("%s (%s): %s", e.shown, printable(e.label), problem)
    meta = {"model": {"sha256": ref.sha256, "label": ref.label, "path": str(ref.path.resolve())},
            "features": emb.spec.features, "embedding": emb.prep.cfg.to_dict()}
    return Addition([e.label for e in good], vectors, [q.speech_seconds if q.vad else math.nan for q in quals], meta)


def _labels_for(keys: list[str], labels_file: str | None, label_depth: int) -> list[str]:
    """Speaker labels of `keys`: from the list file `--labels` (`PATH<TAB>LABEL`), or the list format's folder rule."""
    listed = streams.read_labels(labels_file, label_depth) if labels_file else None
    return lists.labels_for(keys, listed, label_depth, f"--labels {labels_file}")


def _checked_names(names: list[str]) -> list[str]:
    """Every label as the gallery stores it (NFC), checked before any work: a bad name fails at once."""
    from spkid import gallery

    return [gallery.check_name(n) for n in names]


def _warn_duplicates(keys: list[str]) -> None:
    seen: set[str] = set()
    dups = [k for k in keys if k in seen or seen.add(k)]
    if dups:
        log.warning("%d key(s) listed more than once (e.g. %s); each copy counts as an utterance", len(dups), dups[0])

"""The training loop behind `spkid train`: config, epochs, validation EER, atomic checkpoints, resume, DDP.
(About 450 lines: the loop and the state it saves and resumes are one job; data loading is `spkid.data`'s.)

One process trains on CPU or one GPU; `torchrun --nproc-per-node N -m spkid train ...` starts N processes
that train with DistributedDataParallel (NCCL on GPUs, gloo on CPUs), each on its own slice of every batch.
Rank 0 alone validates, logs and writes files.

Run folder (`--run-dir`, default `<output>.run/`): `config.json` (the resolved config), `checkpoint.pt`
(atomic, after every epoch: model, loss, optimiser, scaler, epoch, history, speakers), `log.jsonl` (one line
per epoch: loss, accuracy, validation EER, crops/s). The final model file (DESIGN.md) goes to `--output`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spkid import data, metrics, modelfile
from spkid.augment import AugmentConfig
from spkid.errors import SpkidError
from spkid.fileio import atomic_write
from spkid.frontends import Frontend, frontend
from spkid.lists import Entry, plural
from spkid.losses import LOSSES, build_loss
from spkid.models import MODELS, SMALL, build_model, count_parameters

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "spkid-checkpoint/1"


@dataclass
class TrainConfig:
    """Everything a run depends on. Read from JSON/TOML (`load_config`), overridden by CLI options, saved with the run.

    Units: `crop` seconds (or frames with `crop_frames`), `lr` per step, `time_budget` seconds.
    - model / model_kwargs / small: registry name, constructor keywords, and whether to start from the
      registry's CPU-sized preset (`spkid.models.SMALL`) before applying `model_kwargs`.
    - loss / loss_kwargs: `softmax`, `aam` (loss_kwargs `margin`, `scale`, and the margin warm-up
      `warmup_start`/`warmup_epochs`, advanced every step), `ge2e`, `triplet`.
      N x M losses take `m_utt` utterances per speaker per batch (batch_size must be a multiple).
    - crop: training crop in seconds; `crop_min` < crop draws a length per batch in [crop_min, crop].
    - batches_per_epoch: 0 = enough batches to see each training utterance about once.
    - val_speakers: speakers held out (split by speaker) for the per-epoch validation EER.
    - time_budget: stop after this many seconds of training (0 = no limit); the model of the last complete
      step is saved. For comparing systems at the same budget.
    """

    description: str = ""
    model: str = "ecapa_tdnn"
    small: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    embed_dim: int = 192
    loss: str = "aam"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=lambda: {"kind": "fbank", "n_filters": 64, "norm": "cmn"})
    crop: float = 2.0
    crop_min: float = 0.0
    epochs: int = 10
    batch_size: int = 64
    m_utt: int = 4
    batches_per_epoch: int = 0
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 2e-5
    warmup_epochs: float = 1.0
    grad_clip: float = 5.0
    val_speakers: int = 10
    val_max_s: float = 8.0
    augment: dict[str, Any] = field(default_factory=dict)
    speed_as_speakers: bool = False
    seed: int = 0
    workers: int = 0
    time_budget: float = 0.0

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise SpkidError(f"unknown model {self.model!r}; choose from: {', '.join(MODELS)}")
        if self.loss not in LOSSES:
            raise SpkidError(f"unknown loss {self.loss!r}; choose from: {', '.join(LOSSES)}")
        if self.optimizer not in ("adam", "sgd"):
            raise SpkidError(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        if not self.crop > 0 or self.crop_min < 0 or self.crop_min > self.crop:
            raise SpkidError(f"need 0 <= crop_min <= crop and crop > 0 (got crop={self.crop}, crop_min={self.crop_min})")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise SpkidError(f"{name} must be >= 1")
        self.frontend()
        self.augment_config()

    def frontend(self) -> Frontend:
        """The feature extractor `features` describes (`spkid.features` kinds, or a pretrained model's own)."""
        return frontend(self.features, "training config: features")

    def augment_config(self) -> AugmentConfig:
        known = {f.name for f in fields(AugmentConfig)}
        if unknown := self.augment.keys() - known:
            raise SpkidError(f"augment: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        raw = {k: tuple(v) if isinstance(v, list) else v for k, v in self.augment.items()}
        return AugmentConfig(**raw)

    def model_arguments(self, feat_dim: int) -> dict[str, Any]:
        kwargs = dict(SMALL[self.model]) if self.small else {}
        kwargs.update(embed_dim=self.embed_dim)
        kwargs.update(self.model_kwargs)
        kwargs["feat_dim"] = feat_dim
        return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a JSON or TOML training config; unknown keys are an error (no silent typos); `overrides` win."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpkidError(f"{path}: no such config file") from None
    try:
        raw = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise SpkidError(f"{path}: cannot parse config ({e})") from None
    if unknown := raw.keys() - {f.name for f in fields(TrainConfig)}:
        raise SpkidError(f"{path}: unknown keys {sorted(unknown)}")
    raw.update(overrides or {})
    try:
        return TrainConfig(**raw)
    except TypeError as e:
        raise SpkidError(f"{path}: {e}") from None


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(device: str, dist_info: Dist) -> str:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SpkidError("--device cuda: no CUDA device is available; use --device cpu")
        if device == "cuda":
            device = f"cuda:{dist_info.local_rank}"
    elif device != "cpu":
        raise SpkidError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return device


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up over the first `warmup` of training, then cosine decay to 1 % of the peak.

    `progress` in [0, 1] is the larger of steps done / planned and, with a time budget, seconds spent /
    budget: a run cut short by its budget still ends with a decayed learning rate.
    """
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    t = min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))


def _collate(batch: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.stack([b[0] for b in batch]))
    y = torch.tensor([b[1] for b in batch], dtype=torch.long)
    return x, y


class _Batches(torch.utils.data.Sampler):
    """BalancedBatches with each batch's crop length attached to its items: lists of (index, seed, frames)."""

    def __init__(self, batches: data.BalancedBatches, crops: data.CropSet) -> None:
        self.batches, self.crops = batches, crops

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            frames = self.crops.frames_for(batch[0][1])
            yield [(i, s, frames) for i, s in batch]


@torch.inference_mode()
def embed_utterances(net: nn.Module, feats: list[np.ndarray], device: str) -> np.ndarray:
    """L2-normalised embeddings of whole utterances, one forward pass each, `(N, D)` float32."""
    net.eval()
    out = []
    for x in feats:
        e = net(torch.from_numpy(x).unsqueeze(0).to(device)).float()
        out.append(torch.nn.functional.normalize(e, dim=1).cpu().numpy()[0])
    return np.stack(out)


def validation_eer(emb: np.ndarray, speakers: list[str]) -> float:
    """EER of all cosine pairs among the validation utterances (same speaker = target)."""
    scores = emb @ emb.T
    spk = np.asarray(speakers)
    iu = np.triu_indices(len(spk), 1)
    same = (spk[:, None] == spk[None, :])[iu]
    s = scores[iu]
    if same.all() or not same.any():
        return float("nan")
    return float(metrics.eer(s[same], s[~same])[0])


def train(
    cfg: TrainConfig,
    entries: list[Entry],
    output: str | Path,
    run_dir: str | Path,
    *,
    device: str = "auto",
    resume: bool = False,
    init: str | Path | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
) -> dict[str, Any]:
    """Train `cfg` on the labelled `entries` (audio or feature files); write the model file to `output`.

    Returns the training summary that is also stored in the model file. `progress(step, total, stats)` is
    called after every step on rank 0.
    """
    dist_info = init_distributed("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else device)
    device = resolve_device(device, dist_info)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    run_dir = Path(run_dir)
    utts, is_feat = data.scan(entries)
    init_spec = init_state = None
    if init is not None:  # fine-tuning: the starting model decides architecture and front end
        init_spec, init_state = modelfile.read(init)
        kind = init_spec.model.get("name")
        if kind in ("ensemble", "fusion"):
            members = ", ".join(r.get("model", "?") for r in init_spec.training.get(kind, []))
            what = "an ensemble of {} networks" if kind == "ensemble" else "a fusion of {} models"
            raise SpkidError(f"{init}: is {what.format(len(init_spec.model['kwargs']['members']))}, not trained as "
                             "one; fine-tune a single network (--init resemblyzer, or one of its members"
                             + (f": {members}" if members else "") + ", which recipes/train_default.sh trains)")
        if init_spec.model.get("name") != cfg.model:
            raise SpkidError(f"{init}: is a {init_spec.model.get('name')!r} model, cannot initialise {cfg.model!r}; "
                             f"use --model {init_spec.model.get('name')}")
        cfg = replace(cfg, features=init_spec.features, model_kwargs=init_spec.model.get("kwargs", {}),
                      embed_dim=init_spec.model.get("kwargs", {}).get("embed_dim", cfg.embed_dim))
    feat_cfg = data.find_feature_config([u.path for u in utts]) if is_feat else cfg.frontend()
    if is_feat and init_spec is not None and feat_cfg.to_dict() != init_spec.features:
        raise SpkidError(f"--init: the feature files were not computed with the starting model's front end "
                         f"({init_spec.features.get('kind')}); make them with `spkid features --model` and the "
                         "--init model, or train from audio")
    if is_feat:
        cfg = replace(cfg, features=feat_cfg.to_dict())
    train_spk, val_spk = data.split_speakers([u.speaker for u in utts], cfg.val_speakers, cfg.seed)
    spk_index = {s: i for i, s in enumerate(train_spk)}
    train_utts = [u for u in utts if u.speaker in spk_index]
    val_utts = [u for u in utts if u.speaker not in spk_index]
    labels = [spk_index[u.speaker] for u in train_utts]
    aug = cfg.augment_config()
    n_classes = len(train_spk) * (len(aug.speed_factors) if cfg.speed_as_speakers and aug.speed else 1)

    rate = feat_cfg.sample_rate / feat_cfg.frame_step  # frames per second
    crop_frames = (max(1, round((cfg.crop_min or cfg.crop) * rate)), max(1, round(cfg.crop * rate)))
    crops = data.CropSet(train_utts, labels, feat_cfg, is_feat, crop_frames, aug, cfg.speed_as_speakers)
    loss_fn = build_loss(cfg.loss, embed_dim=cfg.embed_dim, n_classes=n_classes, **cfg.loss_kwargs)
    m_utt = cfg.m_utt if getattr(loss_fn, "needs_nm_batches", False) else 0
    per_rank = cfg.batch_size // dist_info.world
    if per_rank < 1 or (m_utt and per_rank % m_utt):
        raise SpkidError(f"batch size {cfg.batch_size} does not split into {dist_info.world} ranks"
                         + (f" of whole speakers ({m_utt} utterances each)" if m_utt else ""))
    n_batches = cfg.batches_per_epoch or max(1, math.ceil(len(train_utts) / cfg.batch_size))
    batches = data.BalancedBatches(labels, per_rank, n_batches, cfg.seed, m_utt, dist_info.rank, dist_info.world)
    loader = torch.utils.data.DataLoader(
        crops, batch_sampler=_Batches(batches, crops), num_workers=cfg.workers, collate_fn=_collate,
        persistent_workers=cfg.workers > 0, pin_memory=device.startswith("cuda"),
    )

    model_args = init_spec.model["kwargs"] if init_spec else cfg.model_arguments(feat_cfg.dims)
    net = build_model(cfg.model, **model_args)
    if init_spec is not None:
        try:
            net.load_state_dict(modelfile.dequantize(init_state), strict=True)
        except RuntimeError as e:
            raise SpkidError(f"{init}: weights do not fit this model configuration ({str(e)[:160]})") from None
        log.info("initialised from %s", init)
    net.to(device)
    loss_fn.to(device)
    params = list(net.parameters()) + list(loss_fn.parameters())
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * n_batches
    warmup = 0.05 if cfg.time_budget else min(0.5, cfg.warmup_epochs / cfg.epochs)
    use_amp = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    model = net
    if dist_info.world > 1:
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device] if use_amp else None)

    start_epoch, history = 0, []
    ckpt_path = run_dir / "checkpoint.pt"
    if resume:
        if not ckpt_path.exists():
            raise SpkidError(f"--resume: no checkpoint at {ckpt_path}; start without --resume")
        ckpt = _load_checkpoint(ckpt_path)
        saved = json.loads(ckpt["config"])
        if {k: v for k, v in saved.items() if k != "time_budget"} != {
                k: v for k, v in config_dict(cfg).items() if k != "time_budget"}:
            raise SpkidError(f"--resume: {ckpt_path} was made with a different config; use the same options")
        net.load_state_dict(ckpt["model"])
        loss_fn.load_state_dict(ckpt["loss"])
        opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, history = int(ckpt["epoch"]), json.loads(ckpt["history"])
        log.info("resuming after epoch %d from %s", start_epoch, ckpt_path)
    if dist_info.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(run_dir / "config.json", "w") as f:
            json.dump(config_dict(cfg), f, indent=2, sort_keys=True)
        log.info("%s: %s, %s (%s), %s, %s, device %s, %s", cfg.model, plural(count_parameters(net), "parameter"),
                 plural(len(train_spk), "training speaker"), plural(n_classes, "class", "classes"),
                 plural(len(train_utts), "utterance"), plural(len(val_spk), "validation speaker"), device,
                 plural(dist_info.world, "process", "processes"))

    val_feats = [data.load_utterance(u, feat_cfg, is_feat, int(cfg.val_max_s * rate)) for u in val_utts] \
        if dist_info.main and val_utts else []
    spent = sum(r["seconds"] for r in history)  # training seconds before a resume
    t_start = time.perf_counter() - spent
    out_of_time = False
    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(cfg.seed * 100003 + epoch)  # dropout etc.: same draws after a resume
        batches.set_epoch(epoch)
        model.train()
        t0, n_crops, loss_sum, acc_sum, acc_n, steps = time.perf_counter(), 0, 0.0, 0.0, 0, 0
        for x, y in loader:
            step = epoch * n_batches + steps
            progress_done = step / total_steps
            if cfg.time_budget:
                progress_done = max(progress_done, (time.perf_counter() - t_start) / cfg.time_budget)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(progress_done, warmup)
            if hasattr(loss_fn, "set_epoch"):
                loss_fn.set_epoch(epoch + steps / n_batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                emb = model(x)
            loss, acc = loss_fn(emb.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            if not torch.isfinite(loss):
                raise SpkidError(f"epoch {epoch + 1}: the loss became {loss.item()}; lower --lr")
            steps += 1
            n_crops += len(y) * dist_info.world
            loss_sum += loss.item()
            if acc is not None:
                acc_sum, acc_n = acc_sum + float(acc), acc_n + 1
            if progress and dist_info.main:
                progress(epoch * n_batches + steps, total_steps, {"epoch": epoch + 1, "loss": loss_sum / steps})
            if cfg.time_budget and time.perf_counter() - t_start > cfg.time_budget:
                out_of_time = True
                break
        seconds = time.perf_counter() - t0
        if dist_info.main:
            row = {"epoch": epoch + 1, "loss": loss_sum / max(steps, 1), "accuracy": acc_sum / acc_n if acc_n else None,
                   "lr": opt.param_groups[0]["lr"], "crops_per_s": n_crops / max(seconds, 1e-9), "seconds": seconds,
                   "steps": steps}
            if val_feats:
                row["val_eer"] = validation_eer(embed_utterances(net, val_feats, device), [u.speaker for u in val_utts])
            history.append(row)
            with open(run_dir / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            log.info("epoch %d/%d: loss %.4f%s%s, %.0f crops/s", epoch + 1, cfg.epochs, row["loss"],
                     f", acc {row['accuracy']:.3f}" if row["accuracy"] is not None else "",
                     f", val EER {100 * row['val_eer']:.2f} %" if "val_eer" in row else "", row["crops_per_s"])
            if not out_of_time:
                _save_checkpoint(ckpt_path, cfg, net, loss_fn, opt, scaler, epoch + 1, history, train_spk)
        if out_of_time:
            if dist_info.main:
                log.info("time budget of %g s reached in epoch %d", cfg.time_budget, epoch + 1)
            break

    summary = {"config": config_dict(cfg), "speakers": len(train_spk), "classes": n_classes,
               "utterances": len(train_utts), "validation_speakers": val_spk, "parameters": count_parameters(net),
               "epochs_done": history[-1]["epoch"] if history else 0, "history": history,
               "train_seconds": time.perf_counter() - t_start, "device": device, "processes": dist_info.world}
    if dist_info.main:
        spec = modelfile.ModelSpec(
            model={"name": cfg.model, "kwargs": model_args},
            features=feat_cfg.to_dict(),
            embedding=init_spec.embedding if init_spec else {"window_s": max(cfg.crop, 2.0),
                                                             "hop_s": max(cfg.crop, 2.0) / 2, "min_s": 0.5},
            training=summary,
        )
        modelfile.save(output, net, spec)
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return summary


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as plain JSON types (tuples become lists), as saved in config.json and model files."""
    return json.loads(json.dumps(asdict(cfg), default=list))


def _save_checkpoint(path: Path, cfg: TrainConfig, net: nn.Module, loss_fn: nn.Module, opt, scaler,
                     epoch: int, history: list, speakers: list[str]) -> None:
    blob = {"format": CHECKPOINT_FORMAT, "config": json.dumps(config_dict(cfg), sort_keys=True), "epoch": epoch,
            "model": net.state_dict(), "loss": loss_fn.state_dict(), "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict(), "history": json.dumps(history),
            "speakers": speakers}
    with atomic_write(path, "wb") as f:
        torch.save(blob, f)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SpkidError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0][:160]})") from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise SpkidError(f"{path}: unknown checkpoint format; this spkid reads {CHECKPOINT_FORMAT!r}")
    return blob

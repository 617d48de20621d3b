"""Every training config, same data, same CPU budget: test EER, minDCF, parameters and crops/s in one table.

Usage: python bench/train_compare.py [--budget 300] [--configs ecapa_tdnn,thin_resnet] [--work DIR] [--threads 2]
                                     [--jobs 1] [--input features|audio] [--copies K] [--speed-speakers] [--reuse]

Data: ../shared/data/librispeech_tc100, split by speaker with a fixed seed (recipes/make_lists.py: 200 speakers
train, 51 test, speakers 19, 26 and 27 always in test). Trials: every pair of test files ("all": same-recording
segment pairs are the easy targets), and "cross": targets only between different recordings (19, 26, 27,
two chapters each). Each config in configs/ trains for the same wall-clock budget (`--time-budget`; the
learning rate decays over the budget). With `--input features` (the default) each config's features are
computed once, before the clock starts, and training reads the feature files: about twice the crops per second
on a CPU. Feature files cannot be augmented in the waveform during training, so `--copies K` and
`--speed-speakers` add augmented copies (noise, reverberation) and speed-perturbed speakers to them. With
`--input audio`, features are computed on the fly and configs that augment also get the real noise of
../shared/data/noise and simulated reverberation. The floor:
per-utterance mean and std of 20 MFCCs, cosine scored. Embeddings: whole utterances through the network (the
model file's own feature config). configs/default.toml is left out: it fine-tunes the pretrained encoder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "recipes"))

import make_lists  # noqa: E402

from spkid import metrics, modelfile  # noqa: E402
from spkid.features import FeatureConfig, compute  # noqa: E402


def load_trials(path: Path, index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b, lab = [], [], []
    for line in path.read_text().splitlines():
        x, y, t = line.split()
        a.append(index[x]), b.append(index[y]), lab.append(t == "target")
    return np.array(a), np.array(b), np.array(lab)


def evaluate(emb: np.ndarray, trials: dict[str, tuple]) -> dict[str, float]:
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    out = {}
    for name, (a, b, lab) in trials.items():
        s = np.einsum("ij,ij->i", emb[a], emb[b])
        out[f"eer_{name}"] = metrics.eer(s[lab], s[~lab])[0]
        out[f"mindcf_{name}"] = metrics.min_dcf(s[lab], s[~lab], 0.01)[0]
    return out


def mfcc_floor(waves: list[np.ndarray]) -> np.ndarray:
    cfg = FeatureConfig(kind="mfcc", n_filters=40, n_ceps=20, window="hamming")
    rows = []
    for w in waves:
        f = compute(w, cfg)
        rows.append(np.concatenate([f.mean(0), f.std(0)]))
    emb = np.stack(rows)
    return emb - emb.mean(0)  # centre: cosine of raw MFCC statistics is dominated by the common mean


def embed_model(model_path: Path, waves: list[np.ndarray]) -> np.ndarray:
    import torch

    net, spec = modelfile.load(model_path)
    feats = FeatureConfig.from_dict(spec.features)
    out = []
    with torch.inference_mode():
        for w in waves:
            x = torch.from_numpy(compute(w, feats)).unsqueeze(0)
            out.append(torch.nn.functional.normalize(net(x), dim=1)[0].numpy())
    return np.stack(out)


def precompute(fc: FeatureConfig, train: list, work: Path, copies: int = 0, speed_speakers: bool = False) -> Path:
    """Feature files of the training list for config `fc`, laid out as `spkid features -d` writes them (with its
    features.json), once per distinct setting; returns their labelled list.

    `copies` adds that many augmented copies of every utterance (real noise of ../shared/data/noise at 5-20 dB SNR,
    simulated reverberation half the time), same speaker; `speed_speakers` adds 0.9x and 1.1x speed copies as new
    speakers (Kaldi's and WeSpeaker's trick). Feature files cannot be augmented in the waveform at training time, so
    this is how a features-input run gets that variety."""
    from spkid.augment import AugmentConfig, Augmenter, speed_perturb
    from spkid.features import compute, compute_file

    key = json.dumps({"features": fc.to_dict(), "copies": copies, "speed": speed_speakers}, sort_keys=True)
    out = work / hashlib.sha1(key.encode()).hexdigest()[:12]
    lst = out / "list.txt"
    if lst.exists():
        return lst
    out.mkdir(parents=True, exist_ok=True)
    (out / "features.json").write_text(json.dumps(fc.to_dict(), indent=1) + "\n")
    noise = tuple(str(p) for p in sorted((DATA / "noise").glob("*.flac")) if "miaow" not in p.name)
    aug = Augmenter(AugmentConfig(noise=True, noise_files=noise, snr_db=(5.0, 20.0), reverb=True, reverb_prob=0.5), 0)
    lines = []

    def save(feats: np.ndarray, spk: str, name: str) -> None:
        f = out / spk / f"{name}.npy"
        f.parent.mkdir(exist_ok=True)
        np.save(f, feats)
        lines.append(f"{f}\t{spk}\n")

    for p, spk, _ in train:
        stem = Path(p).stem
        save(compute_file(p, fc), spk, stem)
        if copies or speed_speakers:
            wave = sf.read(p, dtype="float32")[0]
        for k in range(copies):
            save(compute(aug(wave, fc.sample_rate).astype(np.float32), fc), spk, f"{stem}_aug{k}")
        for factor in (0.9, 1.1) if speed_speakers else ():
            save(compute(speed_perturb(wave, factor), fc), f"{spk}_sp{factor}", f"{stem}_sp{factor}")
    lst.write_text("".join(lines))
    return lst


def train_command(name: str, model: Path, a: argparse.Namespace, train: list) -> list[str]:
    """The `spkid train` command line of config `name` (its feature files are computed here, for features input)."""
    from spkid.training import load_config

    cfg = load_config(REPO / "configs" / f"{name}.toml")
    if a.input == "audio":
        inputs = a.work / "train.txt"
    else:
        inputs = precompute(cfg.frontend().cfg, train, a.work / "feats", a.copies, a.speed_speakers)
    cmd = [sys.executable, "-m", "spkid", "train", str(inputs), "-c", str(REPO / "configs" / f"{name}.toml"),
           "-o", str(model), "--run-dir", str(a.work / f"{name}.run"), "--epochs", "100000", "--val-speakers", "0",
           "--time-budget", str(a.budget), "--threads", str(a.threads), "--seed", "0"]
    if a.input == "audio" and cfg.augment:  # configs that augment also get real noise
        cmd += ["--noise", str(DATA / "noise")]
    return cmd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=300, help="training seconds per config")
    ap.add_argument("--configs", default="", help="comma-separated config names (default: all in configs/)")
    ap.add_argument("--work", type=Path, default=Path("bench/out/train_compare"))
    ap.add_argument("--threads", type=int, default=2, help="torch threads per training")
    ap.add_argument("--jobs", type=int, default=1,
                    help="trainings at once (jobs x threads <= cores keeps the budgets comparable)")
    ap.add_argument("--reuse", action="store_true", help="skip training where the model file exists")
    ap.add_argument("--input", choices=("features", "audio"), default="features",
                    help="train from precomputed feature files (default) or from audio")
    ap.add_argument("--copies", type=int, default=0, help="features input: augmented copies (noise, reverb) per utterance")
    ap.add_argument("--speed-speakers", action="store_true", help="features input: 0.9x/1.1x speed copies as new speakers")
    a = ap.parse_args()
    if not (DATA / "librispeech_tc100").is_dir():
        raise SystemExit(f"train_compare: needs {DATA / 'librispeech_tc100'}")
    a.work.mkdir(parents=True, exist_ok=True)
    rows = make_lists.scan(DATA / "librispeech_tc100")
    train, test = make_lists.split(rows, 51, 0, ["19", "26", "27"])
    (a.work / "train.txt").write_text("".join(f"{p}\t{s}\n" for p, s, _ in train))
    every, cross = make_lists.trials(test)
    (a.work / "trials.txt").write_text("".join(every))
    (a.work / "trials_cross.txt").write_text("".join(cross))
    index = {p: i for i, (p, _, _) in enumerate(test)}
    trials = {"all": load_trials(a.work / "trials.txt", index), "cross": load_trials(a.work / "trials_cross.txt", index)}
    waves = [sf.read(p, dtype="float32")[0] for p, _, _ in test]

    results = [{"config": "floor: MFCC-20 mean+std", "params": 0, "crops_per_s": None, "epochs": None,
                **evaluate(mfcc_floor(waves), trials)}]
    names = [n for n in a.configs.split(",") if n] or sorted(p.stem for p in (REPO / "configs").glob("*.toml")
                                                             if p.stem != "default")
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    commands = {}
    for name in names:  # feature files first (before any clock starts), then the trainings, `--jobs` at a time
        model = a.work / f"{name}.pt"
        if not (a.reuse and model.exists()):
            commands[name] = train_command(name, model, a, train)

    def run(name: str) -> None:
        t = time.time()
        subprocess.run(commands[name], check=True, env=env)
        print(f"[{name}] trained in {time.time() - t:.0f} s", file=sys.stderr)

    with ThreadPoolExecutor(a.jobs) as pool:
        list(pool.map(run, commands))
    for name in names:
        model = a.work / f"{name}.pt"
        spec, _ = modelfile.read(model)
        hist = spec.training["history"]
        crops = sum(h["crops_per_s"] * h["seconds"] for h in hist) / max(sum(h["seconds"] for h in hist), 1e-9)
        results.append({"config": name, "params": spec.training["parameters"], "crops_per_s": crops,
                        "epochs": spec.training["epochs_done"], **evaluate(embed_model(model, waves), trials)})
    (a.work / "results.json").write_text(json.dumps(results, indent=2))
    n_tar = int(trials["all"][2].sum())
    print(f"\nSame data (200 train / 51 test speakers of librispeech_tc100, {a.input} input), {a.budget:g} s CPU "
          f"budget each, {a.threads} threads x {a.jobs} trainings at once; trials: all {n_tar} target / {len(trials['all'][2]) - n_tar} nontarget, "
          f"cross-recording {int(trials['cross'][2].sum())} target")
    print(f"{'config':<26}{'params':>10}{'crops/s':>9}{'epochs':>8}{'EER all':>9}{'minDCF':>8}{'EER cross':>11}{'minDCF':>8}")
    for r in results:
        crops = f"{r['crops_per_s']:.0f}" if r["crops_per_s"] else "-"
        print(f"{r['config']:<26}{r['params']:>10,}{crops:>9}{r['epochs'] or '-':>8}{100 * r['eer_all']:>8.2f}%"
              f"{r['mindcf_all']:>8.3f}{100 * r['eer_cross']:>10.2f}%{r['mindcf_cross']:>8.3f}")


if __name__ == "__main__":
    main()

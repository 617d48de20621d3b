"""`spkid train`: configs, a tiny run that learns 3 generated speakers, resume after kill -9, DDP on gloo."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import get_args

import pytest

torch = pytest.importorskip("torch")

from conftest import REPO, sh  # noqa: E402
from spkid import modelfile, training  # noqa: E402
from spkid.cli.train import LossName, ModelName  # noqa: E402
from spkid.errors import SpkidError  # noqa: E402
from spkid.losses import LOSSES  # noqa: E402
from spkid.models import MODELS  # noqa: E402

CONFIGS = sorted((REPO / "configs").glob("*.toml"))
FAST = "-m thin_resnet --small --loss softmax --crop 0.8 -b 12 --val-speakers 0 --threads 1 --seed 3"


def test_cli_choices_match_the_registries():
    assert get_args(ModelName) == tuple(MODELS)
    assert get_args(LossName) == tuple(LOSSES)


def test_every_registered_model_has_a_config():
    assert {training.load_config(c).model for c in CONFIGS} == set(MODELS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_configs_load_and_build(path: Path):
    cfg = training.load_config(path)
    assert cfg.description
    feats = cfg.frontend()
    net = training.build_model(cfg.model, **cfg.model_arguments(feats.dims))
    out = net(torch.zeros(2, 150, feats.dims))
    assert out.shape == (2, cfg.embed_dim)


def test_unknown_config_key_is_an_error(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "ecapa_tdnn"\nepohcs = 3\n')
    with pytest.raises(SpkidError, match=r"unknown keys \['epohcs'\]"):
        training.load_config(bad)
    bad.write_text('augment = { nosie = true }\n')
    with pytest.raises(SpkidError, match="augment: unknown keys"):
        training.load_config(bad)


def test_tiny_run_learns_three_speakers(wav_list: Path, tmp_path: Path):
    model = tmp_path / "m.pt"
    proc = sh(f"spkid train {wav_list} -o {model} {FAST} --epochs 6 --steps 8 --lr 3e-3", check=True)
    assert proc.stdout == b""  # stdout is for data only
    err = proc.stderr.decode()
    assert all(line.startswith("spkid train: ") for line in err.splitlines()) and "Warning" not in err, err
    assert ", 3 training speakers (3 classes), 9 utterances, 0 validation speakers, device cpu, 1 process\n" in err
    assert err.endswith(f"spkid train: wrote {model} ({modelfile.load(model)[1].training['parameters']:,} parameters, 6 epochs)\n")
    log = [json.loads(line) for line in (tmp_path / "m.run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 6
    assert log[-1]["loss"] < 0.5 * log[0]["loss"] and log[-1]["accuracy"] > 0.9
    net, spec = modelfile.load(model)
    assert spec.model["name"] == "thin_resnet" and spec.features["kind"] == "fbank"
    assert spec.training["epochs_done"] == 6 and spec.training["speakers"] == 3
    blob = torch.load(model, weights_only=True)
    assert blob["format"] == "spkid-model/1" and json.loads(blob["config"])["model"]["name"] == "thin_resnet"


def test_resume_after_kill_matches_an_uninterrupted_run(wav_list: Path, tmp_path: Path):
    args = f"{FAST} --epochs 4 --crop 0.5"
    sh(f"spkid train {wav_list} -o {tmp_path / 'a.pt'} {args}", check=True)
    run = tmp_path / "b.run"
    proc = subprocess.Popen(["bash", "-c", f"exec spkid train {wav_list} -o {tmp_path / 'b.pt'} {args}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "log.jsonl").exists() or len((run / "log.jsonl").read_text().splitlines()) < 2:
        assert time.time() < deadline and proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b.pt").exists()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")] or True  # a kill -9 may leave a temp file
    sh(f"spkid train {wav_list} -o {tmp_path / 'b.pt'} {args} --resume", check=True)
    a, b = torch.load(tmp_path / "a.pt", weights_only=True), torch.load(tmp_path / "b.pt", weights_only=True)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log][-2:] == [3, 4]


def test_resume_errors(wav_list: Path, tmp_path: Path):
    proc = sh(f"spkid train {wav_list} -o {tmp_path / 'x.pt'} {FAST} --epochs 1 --resume")
    assert proc.returncode == 1 and "--resume: no checkpoint" in proc.stderr.decode()
    sh(f"spkid train {wav_list} -o {tmp_path / 'x.pt'} {FAST} --epochs 1", check=True)
    proc = sh(f"spkid train {wav_list} -o {tmp_path / 'x.pt'} {FAST} --epochs 1 --lr 0.5 --resume")
    assert proc.returncode == 1 and "different config" in proc.stderr.decode()


def test_bad_inputs(tmp_path: Path, wav_list: Path):
    proc = sh(f"spkid train {wav_list} -o {tmp_path / 'x.pt'} --config {tmp_path / 'nope.toml'}")
    assert proc.returncode == 1 and "no such config file" in proc.stderr.decode()
    proc = sh(f"spkid train {wav_list} -o {tmp_path / 'x.pt'} --model nosuch")
    assert proc.returncode == 2
    proc = sh(f"spkid train {wav_list} -o {tmp_path / 'x.pt'} {FAST} --val-speakers 3")
    assert proc.returncode == 1 and "cannot spare 3 for validation" in proc.stderr.decode()
    assert not (tmp_path / "x.pt").exists()


def test_noise_augmentation_and_ge2e_batches(wav_list: Path, tmp_path: Path, speaker_dir: Path):
    noise = tmp_path / "noise"
    noise.mkdir()
    shutil.copy(sorted(speaker_dir.rglob("*.wav"))[0], noise / "n.wav")
    proc = sh(f"spkid train {wav_list} -o {tmp_path / 'g.pt'} -m lstm_ge2e --small --loss ge2e -b 8 "
              f"--crop 0.5 --epochs 1 --val-speakers 0 --noise {noise} --threads 1", check=True)
    assert proc.returncode == 0
    err = proc.stderr.decode()  # LSTM projections on CPU: no torch UserWarning about oneDNN, nothing but our lines
    assert all(line.startswith("spkid train: ") for line in err.splitlines()) and "Warning" not in err, err
    assert err.endswith(" parameters, 1 epoch)\n")
    spec, _ = modelfile.read(tmp_path / "g.pt")
    assert spec.training["config"]["augment"]["noise"] is True


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_torchrun_two_cpu_processes_on_gloo(wav_list: Path, tmp_path: Path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "--master-port", "29517", "-m", "spkid", "train", str(wav_list),
         "-o", str(tmp_path / "d.pt"), *FAST.split(), "--epochs", "2", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    spec, _ = modelfile.read(tmp_path / "d.pt")
    assert spec.training["processes"] == 2 and spec.training["epochs_done"] == 2


def test_fine_tune_from_the_pretrained_encoder(wav_list: Path, tmp_path: Path):
    """`--init resemblyzer`: the pretrained model decides architecture, front end and windows; training goes on."""
    from spkid import pretrained

    try:
        pretrained.weights_path()
    except SpkidError:
        pytest.skip("resemblyzer not installed (pip install 'spkid[pretrained]')")
    env = f"XDG_CACHE_HOME={tmp_path / 'cache'}"
    sh(f"{env} spkid train {wav_list} -o {tmp_path / 'ft.pt'} --init resemblyzer -m lstm_ge2e --loss ge2e -b 8 "
       f"--epochs 1 --steps 2 --val-speakers 0 --crop 1.6 --threads 1", check=True)
    spec, state = modelfile.read(tmp_path / "ft.pt")
    start = pretrained.state_dict()
    assert spec.features["kind"] == "ge2e_mel" and spec.model["kwargs"]["hidden"] == 256
    assert not torch.equal(state["linear.weight"], start["linear.weight"])  # it trained
    proc = sh(f"spkid train {wav_list} -o {tmp_path / 'x.pt'} --init resemblyzer -m ecapa_tdnn")
    assert proc.returncode == 1 and "use --model lstm_ge2e" in proc.stderr.decode()


def test_fine_tune_from_feature_files_of_the_models_front_end(wav_list: Path, tmp_path: Path):
    """`spkid features --model M | spkid train --init M`: the feature files carry the model's own front end;
    feature files of other settings are refused with the command that makes the right ones."""
    from spkid import pretrained
    from spkid.frontends import MelConfig

    try:
        pretrained.weights_path()
    except SpkidError:
        pytest.skip("resemblyzer not installed (pip install 'spkid[pretrained]')")
    env = f"XDG_CACHE_HOME={tmp_path / 'cache'}"
    proc = sh(f"{env} spkid features {wav_list} -d {tmp_path / 'mel'} --model resemblyzer "
              f"| {env} spkid train -o {tmp_path / 'ft.pt'} --init resemblyzer -m lstm_ge2e --loss ge2e -b 8 "
              f"--epochs 1 --steps 2 --val-speakers 0 --crop 1.6 --threads 1", check=True)
    assert proc.returncode == 0
    written = json.loads((tmp_path / "mel" / "features.json").read_text())
    assert written == MelConfig().to_dict()
    spec, _ = modelfile.read(tmp_path / "ft.pt")
    assert spec.features == written
    emb = sh(f"spkid embed -m {tmp_path / 'ft.pt'} {tmp_path / 'mel'}/*/*.npy | spkid enroll -g {tmp_path / 'g'}",
             check=True)
    assert emb.returncode == 0
    proc = sh(f"spkid features {wav_list} -d {tmp_path / 'fb'} | {env} spkid train -o {tmp_path / 'x.pt'} "
              f"--init resemblyzer -m lstm_ge2e --epochs 1 --steps 1 --val-speakers 0")
    assert proc.returncode == 1 and "make them with `spkid features --model`" in proc.stderr.decode()
    assert not (tmp_path / "x.pt").exists()


def test_crop_range_draws_one_length_per_batch(speaker_dir: Path, tmp_path: Path):
    """`crop_min` < `crop` (configs/default_multi.toml: 0.5-2.0 s): every batch is rectangular, lengths vary
    between batches over the whole range, short files are tiled to long crops, and a seed repeats the draws."""
    from spkid import data
    from spkid.lists import Entry

    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text('model = "thin_resnet"\nsmall = true\nloss = "ge2e"\ncrop = 2.5\ncrop_min = 0.5\n')
    cfg = training.load_config(cfg_path)
    fe = cfg.frontend()
    rate = fe.sample_rate / fe.frame_step
    lo, hi = round(cfg.crop_min * rate), round(cfg.crop * rate)
    entries = [Entry(str(p), p.parent.name) for p in sorted(speaker_dir.rglob("*.wav"))]
    utts, is_feat = data.scan(entries)
    labels = [sorted({u.speaker for u in utts}).index(u.speaker) for u in utts]

    def lengths(seed: int) -> list[int]:
        crops = data.CropSet(utts, labels, fe, is_feat, (lo, hi), cfg.augment_config())
        batches = data.BalancedBatches(labels, 6, 40, seed, m_utt=2)
        loader = torch.utils.data.DataLoader(crops, batch_sampler=training._Batches(batches, crops),
                                             collate_fn=training._collate)
        out = []
        for x, y in loader:
            assert x.shape[0] == 6 and x.shape[2] == fe.dims and len(y) == 6
            out.append(x.shape[1])
        return out

    a = lengths(0)
    assert all(lo <= n <= hi for n in a) and min(a) < lo + (hi - lo) / 4 and max(a) > hi - (hi - lo) / 4
    assert max(a) > 2.0 * rate  # longer than the 2 s files: tiled
    assert lengths(0) == a and lengths(1) != a


def test_gain_and_telephone_alone_reach_the_crops(speaker_dir: Path):
    """A config whose only waveform steps are gain or the telephone band still augments the training crops."""
    import numpy as np

    from spkid import data
    from spkid.augment import AugmentConfig
    from spkid.lists import Entry

    fe = training.TrainConfig().frontend()
    utts, _ = data.scan([Entry(str(p), p.parent.name) for p in sorted(speaker_dir.rglob("*.wav"))][:2])
    item = (0, 7, 100)
    clean = data.CropSet(utts, [0, 0], fe, False, (100, 100))[item][0]
    for aug in (AugmentConfig(telephone=True), AugmentConfig(gain=True, gain_db=(12.0, 12.0))):
        crops = data.CropSet(utts, [0, 0], fe, False, (100, 100), aug)
        x = crops[item][0]
        assert crops.augment is aug and x.shape == clean.shape and not np.allclose(x, clean, atol=1e-3)
        assert np.array_equal(x, crops[item][0])  # the item's seed decides the draws

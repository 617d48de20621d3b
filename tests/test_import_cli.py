"""Published models of other toolkits in spkid's pipes, as a user runs them: a model folder through `embed | enroll`,
`identify` and `verify` (scores only until a threshold or calibration is given), `score --calibrate --model-out`,
`spkid export` to ONNX and back, WeSpeaker's own ONNX files, and the one-line refusals.

The models are spkid's own implementations with seeded random weights, saved in the published layouts (the
equality with each reference package is tested in tests/test_import_<family>.py): these tests need no reference
package, so they run wherever spkid does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import sh  # noqa: E402

from spkid import decisions  # noqa: E402


def campplus_folder(folder: Path, seed: int = 0) -> Path:
    """A CAM++ as 3D-Speaker publishes it on ModelScope: configuration.json and the state dict it names."""
    from spkid.models.campplus import CAMPPlus

    torch.manual_seed(seed)
    net = CAMPPlus(feat_dim=80, embed_dim=192).eval()
    for m in net.modules():  # trained-like batch-norm statistics, not the identity ones
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    folder.mkdir(parents=True)
    model = {"type": "cam++-sv", "model_config": {"sample_rate": 16000, "fbank_dim": 80, "emb_size": 192},
             "pretrained_model": "campplus_cn_common.bin"}
    config = {"framework": "pytorch", "task": "speaker-verification", "model": model}
    (folder / "configuration.json").write_text(json.dumps(config), encoding="utf-8")
    torch.save(net.state_dict(), folder / model["pretrained_model"])
    return folder


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    return campplus_folder(tmp_path_factory.mktemp("published") / "speech_campplus_sv_zh-cn_16k-common")


def embeddings(path: Path) -> tuple[list[str], np.ndarray, str | None]:
    from spkid import streams

    e = streams.read_embeddings(str(path))
    return list(e.keys), e.values, e.model_sha256


def test_folder_through_pipes_scores_only_until_calibrated(published, speaker_dir, wav_list, tmp_path):
    g = tmp_path / "g"
    proc = sh(f"spkid embed -m {published} < {wav_list} | spkid enroll -g {g}", check=True)
    assert "3D-Speaker" in proc.stderr.decode()  # the family is detected and said
    meta = json.loads((g / "gallery.json").read_text())
    assert meta["model"]["label"] == str(published) and meta["model"]["path"] == str(published.resolve())

    # identify finds the model the gallery records; with no calibration it prints scores, never a decision
    clip = speaker_dir / "bob" / "bob_2.wav"
    proc = sh(f"spkid identify {clip} -g {g} --json", check=True)
    rec = json.loads(proc.stdout.decode().splitlines()[0])
    assert rec["threshold"] is None and rec["top"] and "accept" not in json.dumps(rec).lower()
    assert "no threshold" in proc.stderr.decode() and "spkid score --calibrate" in proc.stderr.decode()
    proc = sh(f"spkid verify {clip} -g {g} --speaker bob -q")
    assert proc.returncode != 0 and "needs a decision" in proc.stderr.decode()

    # calibrated on labelled scores: a spkid model file with the same identity, which decides
    trials = tmp_path / "trials.txt"
    trials.write_text("".join(f"{t} {speaker_dir / s / f'{s}_2.wav'} {int(s == t)}\n"
                              for s in ("alice", "bob", "carol") for t in ("alice", "bob", "carol")))
    proc = sh(f"spkid verify --trials {trials} -g {g}", check=True)
    # a random network scores every pair alike: labelled scores of a trained one stand in for its own
    rows = [line.split("\t") for line in proc.stdout.decode().splitlines()]
    assert len(rows) == 9
    rng = np.random.default_rng(0)
    (tmp_path / "scores.txt").write_text("".join(
        "\t".join([*r[:2], f"{(0.8 if r[3] == 'target' else 0.3) + 0.1 * rng.standard_normal():.6f}", r[3]]) + "\n"
        for r in rows))
    cal = tmp_path / "cal.pt"
    sh(f"spkid score --calibrate {tmp_path / 'scores.txt'} -m {published} --model-out {cal}", check=True)
    proc = sh(f"spkid verify {clip} -g {g} --speaker bob -m {cal} --json", check=True)
    assert json.loads(proc.stdout)["threshold"] is not None


def test_export_runs_the_folder_without_torch(published, wav_list, tmp_path):
    onnx = tmp_path / "campplus.onnx"
    sh(f"spkid export {published} -o {onnx}", check=True)
    sh(f"spkid embed -m {published} --no-vad < {wav_list} > {tmp_path / 'torch.npy'}", check=True)
    sh(f"spkid embed -m {onnx} --no-vad < {wav_list} > {tmp_path / 'onnx.npy'}", check=True)
    (k1, a, sha1), (k2, b, sha2) = embeddings(tmp_path / "torch.npy"), embeddings(tmp_path / "onnx.npy")
    assert k1 == k2 and len(k1) == 9
    assert float(np.max(1 - np.sum(a * b, axis=1))) < 1e-5
    assert sha1 == sha2 and sha1 is not None  # one identity: galleries and embeddings of either form mix


def test_wespeaker_onnx_file_runs_with_wespeakers_front_end(tmp_path):
    """An ONNX file as WeSpeaker publishes it (input `feats`, output `embs`, no spkid record): spkid runs it on
    WeSpeaker's front end (Kaldi fbank, Hamming window, utterance mean removed), torch-free."""
    from spkid.embedding import Embedder
    from spkid.kaldifbank import KaldiFbankConfig
    from spkid.models.campplus import CAMPPlus

    torch.manual_seed(1)
    net = CAMPPlus(feat_dim=80, embed_dim=192).eval()
    path = tmp_path / "voxceleb_CAM++.onnx"
    torch.onnx.export(net, torch.randn(1, 200, 80), str(path), input_names=["feats"], output_names=["embs"],
                      dynamic_axes={"feats": {0: "B", 1: "T"}, "embs": {0: "B"}}, dynamo=False)
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(32000)).astype(np.float32)
    emb = Embedder.from_model(str(path), use_vad=False)
    assert emb.model.backend == "onnx"
    got = emb.embed_signals([x], 16000)[0]
    feats = KaldiFbankConfig(n_filters=80, norm="cmn", window="hamming").compute(x)
    with torch.no_grad():
        want = net(torch.from_numpy(feats)[None]).numpy()[0]
    want /= np.linalg.norm(want)
    assert float(1 - got @ want) < 1e-5


@pytest.mark.parametrize("files", [{}, {"config.yaml": "model: unknown_net\n"}, {"weights.bin": "not torch"}])
def test_unknown_layout_is_one_line_naming_what_is_read(files, tmp_path, wav_list):
    folder = tmp_path / "model"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    proc = sh(f"spkid embed -m {folder} < {wav_list} > {tmp_path / 'out.npy'}")
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode != 0 and len(err) == 1 and err[0].startswith("spkid embed: error:")
    assert (tmp_path / "out.npy").stat().st_size == 0  # nothing but the shell's empty redirect


def test_train_init_from_a_published_model_is_refused(published, wav_list):
    proc = sh(f"spkid train {wav_list} -o /dev/null --init {published}")
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode != 0 and len(err) == 1 and "not supported" in err[0]


def test_no_threshold_message_names_the_commands():
    assert "--threshold" in decisions.NO_THRESHOLD and "spkid score --calibrate" in decisions.NO_THRESHOLD

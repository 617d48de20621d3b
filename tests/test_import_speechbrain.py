"""SpeechBrain's published speaker encoders in spkid: `spkid.sbfbank` equals SpeechBrain's Fbank, and a model folder
in the published layout (spkrec-ecapa-voxceleb's hyperparameters, random weights) gives the embedding SpeechBrain's
own modules give, on real speech. The reference is the `speechbrain` package of the `test` extra (1.1.2): its Fbank,
InputNormalization and ECAPA_TDNN, run as `EncoderClassifier.encode_batch` runs them. It imports torchaudio, which
has no build for this torch; those modules are pure torch, so a bare module stands in for torchaudio while they are
imported."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, clip_files, sh
from spkid import frontends, modelfile, onnxexport
from spkid.embedding import Embedder, ModelRef
from spkid.errors import SpkidError
from spkid.importers import speechbrain as sb_import
from spkid.sbfbank import KIND, SbFbankConfig, fbank, mel_banks

torch = pytest.importorskip("torch")
SAMPLE = REPO / "tests" / "data" / "pyannote_sample.flac"

# spkrec-ecapa-voxceleb's hyperparams.yaml (speechbrain/spkrec-ecapa-voxceleb on the Hugging Face hub, Apache-2.0):
# its published values, in its layout; `pretrained_path` names the hub repository, which spkid never reads.
PUBLISHED = """\
# Model: ECAPA big for Speaker verification

# Feature parameters
n_mels: 80

# Pretrain folder (HuggingFace)
pretrained_path: speechbrain/spkrec-ecapa-voxceleb

# Output parameters
out_n_neurons: 7205

# Model params
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>

mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False

embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [1024, 1024, 1024, 1024, 3072]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 128
    lin_neurons: 192

classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: 192
    out_neurons: !ref <out_n_neurons>

mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
        classifier: !ref <classifier>
        label_encoder: !ref <label_encoder>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
        classifier: !ref <pretrained_path>/classifier.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
"""
ECAPA_KWARGS = {"input_size": 80, "channels": [1024, 1024, 1024, 1024, 3072], "kernel_sizes": [5, 3, 3, 3, 1],
                "dilations": [1, 2, 3, 4, 1], "attention_channels": 128, "lin_neurons": 192}


@pytest.fixture(scope="module")
def sb():
    """SpeechBrain's reference modules, imported with a bare torchaudio module standing in (then taken out). At the
    end SpeechBrain's modules leave `sys.modules` too: its lazy modules would otherwise import the rest of
    SpeechBrain (and torchaudio) when any later test walks `sys.modules`."""
    try:
        import torchaudio  # noqa: F401 - a working torchaudio: nothing to stand in for
        stub = False
    except Exception:  # noqa: BLE001 - absent, or present and broken against this torch
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
        stub = True
    try:
        pytest.importorskip("speechbrain", reason="speechbrain is a reference package of `make install` (Makefile REFERENCE)")
        from speechbrain.dataio.encoder import CategoricalEncoder
        from speechbrain.lobes.features import Fbank
        from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, Classifier
        from speechbrain.processing.features import InputNormalization
    finally:
        if stub:
            sys.modules.pop("torchaudio", None)
    yield types.SimpleNamespace(Fbank=Fbank, InputNormalization=InputNormalization, ECAPA_TDNN=ECAPA_TDNN,
                                Classifier=Classifier, CategoricalEncoder=CategoricalEncoder)
    for name in [m for m in sys.modules if m == "speechbrain" or m.startswith("speechbrain.")]:
        del sys.modules[name]


def randomize(net, seed: int) -> None:
    """Seeded random weights, batch-norm affine parameters and running statistics included."""
    g = torch.Generator().manual_seed(seed)
    state = net.state_dict()
    for name, value in state.items():
        if not value.is_floating_point():
            continue
        if name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(value.shape, generator=g)
        elif name.endswith("running_mean"):
            state[name] = 0.2 * torch.randn(value.shape, generator=g)
        elif name.endswith("norm.weight"):
            state[name] = 0.8 + 0.4 * torch.rand(value.shape, generator=g)
        else:
            fan_in = value[0].numel() if value.dim() > 1 else 16
            state[name] = torch.randn(value.shape, generator=g) / fan_in**0.5
    net.load_state_dict(state)


def publish(sb, folder: Path, hyperparams: str = PUBLISHED, seed: int = 0, **kwargs) -> object:
    """A model folder as SpeechBrain publishes one: hyperparams.yaml, embedding_model.ckpt (`torch.save` of the
    ECAPA_TDNN's state dict), mean_var_norm_emb.ckpt (InputNormalization's saved statistics dict),
    classifier.ckpt and label_encoder.txt. Returns the reference network (eval mode)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hyperparams.yaml").write_text(hyperparams, encoding="utf-8")
    torch.manual_seed(seed)
    net = sb.ECAPA_TDNN(**{**ECAPA_KWARGS, **kwargs})
    randomize(net, seed)
    torch.save(net.state_dict(), folder / "embedding_model.ckpt")
    norm = sb.InputNormalization(norm_type="global", std_norm=False)
    norm.train()
    norm(torch.randn(8, 4, 192), torch.ones(8))  # global statistics of some embeddings, as training leaves them
    torch.save(norm._statistics_dict(), folder / "mean_var_norm_emb.ckpt")
    torch.save(sb.Classifier(192, out_neurons=20).state_dict(), folder / "classifier.ckpt")
    enc = sb.CategoricalEncoder()
    enc.update_from_iterable([f"id1{i:04d}" for i in range(20)])
    enc.save(folder / "label_encoder.txt")
    return net.eval()


def reference_embedding(sb, net, x: np.ndarray) -> np.ndarray:
    """What `EncoderClassifier.encode_batch(wav)` computes by default: Fbank, sentence mean removal, ECAPA_TDNN,
    relative length 1, no mean_var_norm_emb."""
    wav, lens = torch.from_numpy(np.asarray(x, np.float32))[None], torch.ones(1)
    with torch.no_grad():
        feats = sb.Fbank(n_mels=80)(wav)
        feats = sb.InputNormalization(norm_type="sentence", std_norm=False)(feats, lens)
        return net(feats, lens)[0, 0].numpy()


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def published(sb, tmp_path_factory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("sb") / "spkrec-ecapa-voxceleb"
    return folder, publish(sb, folder)


def speech() -> list[np.ndarray]:
    """Real speech: the first 4 s of the pyannote sample and a shipped LibriSpeech clip (16 kHz)."""
    x, sr = sf.read(SAMPLE, dtype="float32")
    assert sr == 16000
    y, sr = sf.read(clip_files("probe")[0], dtype="float32")
    assert sr == 16000
    return [x[: 4 * sr], y[: 5 * sr]]


# --- the front end -------------------------------------------------------------------------------------------------


def test_fbank_equals_speechbrain_on_real_speech(sb):
    ref_fbank = sb.Fbank(n_mels=80)
    worst = 0.0
    for path in [SAMPLE, *clip_files()[::5]]:
        x, sr = sf.read(path, dtype="float32")
        x = x[: 6 * sr]
        with torch.no_grad():
            ref = ref_fbank(torch.from_numpy(x)[None])[0].numpy()
        mine = fbank(x, sr)
        assert mine.shape == ref.shape and mine.dtype == np.float32, path
        above = ref > ref.max() - 80.0 + 1e-3  # above the top_db floor, which both apply
        assert above.mean() > 0.5, path  # LibriSpeech excerpts: up to 17 % of values at the floor (band-limited)
        np.testing.assert_allclose(mine[above], ref[above], atol=1e-3, rtol=0, err_msg=str(path))
        np.testing.assert_allclose(mine, ref, atol=1e-3, rtol=0, err_msg=str(path))  # the floor too
        worst = max(worst, float(np.abs(mine - ref).max()))
    assert worst < 1e-3  # measured 3.7e-4 dB


def test_sentence_normalisation_and_other_settings_equal_speechbrain(sb):
    x, sr = sf.read(clip_files("enroll")[0], dtype="float32")
    x = x[: 3 * sr]
    lens = torch.ones(1)
    for options, mine_options in [({}, {}),
                                  ({"n_mels": 40, "f_min": 20, "f_max": 7600}, {"n_filters": 40, "low_freq": 20,
                                                                               "high_freq": 7600}),
                                  ({"n_mels": 64, "n_fft": 512, "win_length": 20, "hop_length": 15},
                                   {"n_filters": 64, "nfft": 512, "win_len": 0.02, "win_step": 0.015})]:
        with torch.no_grad():
            feats = sb.Fbank(**{"n_mels": 80, **options})(torch.from_numpy(x)[None])
            for std_norm, norm in ((False, "cmn"), (True, "cmvn")):
                ref = sb.InputNormalization(norm_type="sentence", std_norm=std_norm)(feats, lens)[0].numpy()
                mine = SbFbankConfig(norm=norm, **mine_options).compute(x)
                np.testing.assert_allclose(mine, ref, atol=1e-3, rtol=0, err_msg=f"{options} {norm}")


def test_frames_tables_and_config():
    cfg = SbFbankConfig()
    assert (cfg.frame_len, cfg.frame_step, cfg.nfft, cfg.dims, cfg.top_freq) == (400, 160, 400, 80, 8000)
    for n in (0, 1, 159, 160, 401, 16000, 16001):
        assert cfg.n_frames(n) == len(cfg.compute(np.zeros(n, np.float32))) == 1 + n // 160
    silence = fbank(np.zeros(16000, np.float32))
    assert np.all(silence == np.float32(-100.0))  # 10 log10(amin)
    banks = mel_banks(80, 400, 16000, 0.0, 8000.0)
    assert banks.shape == (201, 80) and banks.any(axis=0).all() and banks.max() <= 1.0
    front = frontends.frontend({"kind": KIND, "n_filters": 40, "norm": "cmn"})
    assert isinstance(front, SbFbankConfig) and front.dims == 40 and front.frame_step == 160
    assert SbFbankConfig.from_dict(front.to_dict()) == front
    for bad, words in [({"nfft": 256}, "shorter than the window"), ({"high_freq": 9000}, "high_freq"),
                       ({"norm": "zca"}, "norm"), ({"n_filters": "80"}, "integer"), ({"colour": 1}, "unknown keys")]:
        with pytest.raises(SpkidError, match=words) as e:
            frontends.frontend({"kind": KIND, **bad})
        assert "\n" not in str(e.value)


def test_features_kind_sb_fbank(tmp_path: Path):
    clip = clip_files("probe")[0]
    out = sh(f"echo {clip} | spkid features -d {tmp_path / 'f'} --kind sb-fbank --norm cmn -n 40", check=True)
    path = out.stdout.decode().split("\t")[0].strip()
    x, sr = sf.read(clip, dtype="float32")
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), SbFbankConfig(n_filters=40, norm="cmn").compute(x))
    assert frontends.read_feature_config(tmp_path / "f" / "features.json") == SbFbankConfig(n_filters=40, norm="cmn")
    bad = sh(f"echo {clip} | spkid features -d {tmp_path / 'g'} --kind sb-fbank --preemph 0.97")
    assert bad.returncode == 2 and b"--preemph does not apply to --kind sb-fbank" in bad.stderr


# --- the model folder ----------------------------------------------------------------------------------------------


def test_published_layout_embeds_as_speechbrain(sb, published):
    folder, net = published
    imported = sb_import.load(folder)
    assert imported.family == "SpeechBrain" and "ECAPA-TDNN" in imported.description
    assert imported.spec.model == {"name": "sb_ecapa", "kwargs": {
        "feat_dim": 80, "embed_dim": 192, "channels": [1024, 1024, 1024, 1024, 3072], "kernel_sizes": [5, 3, 3, 3, 1],
        "dilations": [1, 2, 3, 4, 1], "attention_channels": 128, "res2net_scale": 8, "se_channels": 128,
        "global_context": True, "groups": [1, 1, 1, 1, 1]}}
    assert imported.spec.features == SbFbankConfig(n_filters=80, norm="cmn").to_dict()
    ref = ModelRef(str(folder), folder, modelfile.fingerprint(imported.spec, imported.state), spec=imported.spec,
                   state=imported.state)
    emb = Embedder.from_model(ref, use_vad=False)
    signals = speech()
    mine = emb.embed_signals(signals, 16000)
    for x, e in zip(signals, mine):
        d = cosine_distance(e, reference_embedding(sb, net, x))
        assert d < 1e-4, d  # measured < 1e-7
    # the network alone gives SpeechBrain's raw (not normalised) vectors from the same features
    feats = torch.randn(2, 120, 80, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        raw = modelfile.build(imported.spec, imported.state)(feats)
        np.testing.assert_allclose(raw.numpy(), net(feats)[:, 0].numpy(), rtol=1e-4, atol=1e-4)


def test_onnx_export_matches(sb, tmp_path: Path):
    folder = tmp_path / "small"
    small = {"channels": [64, 64, 64, 64, 192], "attention_channels": 16, "lin_neurons": 32}
    text = PUBLISHED.replace("[1024, 1024, 1024, 1024, 3072]", "[64, 64, 64, 64, 192]").replace(
        "attention_channels: 128", "attention_channels: 16").replace("lin_neurons: 192", "lin_neurons: 32")
    publish(sb, folder, text, seed=1, **small)
    imported = sb_import.load(folder)
    net = modelfile.build(imported.spec, imported.state)
    data = onnxexport.to_onnx(net, 80)
    assert onnxexport.check(net, data, 80, str(folder)) < 1e-4


def test_bad_folders_are_one_line(sb, published, tmp_path: Path):
    folder, _ = published

    def broken(name: str, text: str | None = None, weights: bytes | None = None) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "hyperparams.yaml").write_text(text if text is not None else PUBLISHED, encoding="utf-8")
        if weights is not None:
            (d / "embedding_model.ckpt").write_bytes(weights)
        else:
            (d / "embedding_model.ckpt").symlink_to(folder / "embedding_model.ckpt")
        return d

    xvector = PUBLISHED.replace("speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN", "speechbrain.lobes.models.Xvector.Xvector")
    cases = [
        (broken("xvector", xvector), "Xvector.*ECAPA"),
        (broken("global", PUBLISHED.replace("norm_type: sentence", "norm_type: global")), "norm_type 'global'"),
        (broken("deltas", PUBLISHED.replace("    n_mels: !ref <n_mels>\n", "    n_mels: !ref <n_mels>\n    deltas: True\n", 1)),
         "deltas"),
        (broken("narrow", PUBLISHED.replace("[1024, 1024, 1024, 1024, 3072]", "[512, 512, 512, 512, 1536]")),
         "do not fit"),
        (broken("damaged", weights=b"not a checkpoint"), "cannot read its weights"),
        (broken("yaml", "embedding_model: [unclosed"), "not valid YAML"),
    ]
    nockpt = tmp_path / "nockpt"
    nockpt.mkdir()
    (nockpt / "hyperparams.yaml").write_text(PUBLISHED, encoding="utf-8")
    cases.append((nockpt, "needs embedding_model.ckpt"))
    for path, words in cases:
        assert sb_import.matches(path)
        with pytest.raises(SpkidError, match=words) as e:
            sb_import.load(path)
        assert "\n" not in str(e.value), str(e.value)
    assert not sb_import.matches(tmp_path / "nothing") and not sb_import.matches(folder / "embedding_model.ckpt")


def test_embed_enroll_identify_through_pipes(sb, published, tmp_path: Path):
    """`spkid embed --model DIR` detects the layout, names the family, and its rows are SpeechBrain's embeddings;
    they pipe into `enroll` and `identify` (which, without a threshold for this uncalibrated model, name the best
    speaker of each clip)."""
    from spkid import streams

    folder, net = published
    enroll, probe = clip_files("enroll")[:4], clip_files("probe")[:2]
    (tmp_path / "enroll.txt").write_text("".join(f"{p}\n" for p in enroll))
    (tmp_path / "probe.txt").write_text("".join(f"{p}\n" for p in probe))
    out = sh(f"spkid embed {tmp_path / 'enroll.txt'} --model {folder} --no-vad -o {tmp_path / 'e.npy'}", check=True)
    assert b"SpeechBrain model, ECAPA-TDNN" in out.stderr
    keys, rows = streams.read_keyed(str(tmp_path / "e.npy"))
    assert list(keys) == [str(p) for p in enroll]
    for p, row in zip(enroll, rows):
        x, _ = sf.read(p, dtype="float32")
        assert cosine_distance(row, reference_embedding(sb, net, x)) < 1e-4, p
    sh(f"cat {tmp_path / 'e.npy'} | spkid enroll -g {tmp_path / 'g'}", check=True)
    got = sh(f"spkid embed {tmp_path / 'probe.txt'} --model {folder} --no-vad | spkid identify -g {tmp_path / 'g'}",
             check=True)
    lines = got.stdout.decode().splitlines()
    assert len(lines) == len(probe)
    speakers = {p.parent.name for p in enroll}
    assert all(line.split("\t")[1] in speakers for line in lines), lines

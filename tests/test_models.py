"""Model zoo: registry, shapes, published sizes, a training step, and Resemblyzer-compatible GE2E encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spkid.errors import SpkidError
from spkid.losses import build_loss
from spkid.models import MODELS, SMALL, build_model, count_parameters

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

FEAT, FRAMES, EMBED = 24, 40, 32
# test-sized variants: a few thousand parameters each, so the file runs in seconds
TINY = {
    "blstm": {"hidden": 16, "num_layers": 2},
    "vgg_attn": {"channels": (4, 8, 8, 16), "attn_dim": 16, "heads": 4},
    "resnet18_attn": {"base_width": 4, "attn_dim": 16, "heads": 4},
    "thin_resnet": {"channels": (4, 8, 8, 16), "layers": (1, 1, 1, 1)},
    "se_resnet34": {"base_width": 4, "layers": (1, 1, 1, 1)},
    "rescnn": {"channels": (4, 8, 8, 16), "blocks": 1},
    "lstm_ge2e": {"hidden": 16, "proj_size": 8},
    "ecapa_tdnn": {"channels": 32, "mfa_channels": 48, "se_bottleneck": 8, "attn_bottleneck": 8},
    "resnet34": {"base_width": 4, "layers": (1, 1, 1, 1)},
}
NORMALISED = {"blstm", "thin_resnet", "se_resnet34", "rescnn", "lstm_ge2e"}


def tiny(name: str) -> nn.Module:
    return build_model(name, feat_dim=FEAT, embed_dim=EMBED, **TINY[name])


def test_registry_names():
    assert list(MODELS) == [
        "blstm", "vgg_attn", "resnet18_attn", "thin_resnet", "se_resnet34", "rescnn", "lstm_ge2e", "ecapa_tdnn",
        "resnet34",
    ]  # fmt: skip
    assert set(TINY) == set(MODELS) == set(SMALL)


def test_unknown_model_and_option_are_errors():
    with pytest.raises(SpkidError, match="unknown model 'xvector'.*ecapa_tdnn"):
        build_model("xvector")
    with pytest.raises(SpkidError, match="chanels"):
        build_model("ecapa_tdnn", chanels=256)


@pytest.mark.parametrize("name", MODELS)
def test_output_shape_and_lengths(name):
    torch.manual_seed(0)
    model = tiny(name)
    assert model.feat_dim == FEAT and model.embed_dim == EMBED
    y = model(torch.randn(3, FRAMES, FEAT))
    assert y.shape == (3, EMBED) and y.dtype == torch.float32 and torch.isfinite(y).all()
    if name in NORMALISED:
        assert torch.allclose(y.norm(dim=1), torch.ones(3), atol=1e-4)
    model.eval()
    with torch.no_grad():  # one utterance of another length, as `embed` feeds whole files
        assert model(torch.randn(1, 17, FEAT)).shape == (1, EMBED)


@pytest.mark.parametrize("name", MODELS)
def test_one_adam_step_reduces_loss(name):
    torch.manual_seed(0)
    model = tiny(name)
    loss_fn = build_loss("aam", embed_dim=EMBED, n_classes=4)
    x, labels = torch.randn(8, FRAMES, FEAT), torch.arange(4).repeat_interleave(2)
    opt = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=1e-3)
    before, _ = loss_fn(model(x), labels)
    opt.zero_grad()
    before.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    after, _ = loss_fn(model(x), labels)
    assert torch.isfinite(before) and after.item() < before.item()


@pytest.mark.parametrize(
    ("name", "feat_dim", "published"),
    [
        ("resnet34", 80, 6.6e6),  # WeSpeaker ResNet34 (base 32, 256-d) on 80-dim fbank
        ("ecapa_tdnn", 80, 6.2e6),  # ECAPA-TDNN C=512 (Desplanques et al. 2020, Table 2)
        ("rescnn", 64, 24e6),  # Deep Speaker ResCNN (Li et al. 2017)
    ],
)
def test_default_sizes_match_published(name, feat_dim, published):
    n = count_parameters(build_model(name, feat_dim=feat_dim))
    assert abs(n - published) / published < 0.05, n


@pytest.mark.parametrize("name", MODELS)
def test_small_preset_is_smaller_and_runs(name):
    small = build_model(name, feat_dim=40, **SMALL[name])
    assert count_parameters(small) < count_parameters(build_model(name, feat_dim=40))
    small.eval()
    with torch.no_grad():
        assert small(torch.randn(1, 20, 40)).shape == (1, small.embed_dim)


def test_ge2e_encoder_matches_resemblyzer_layout():
    """Resemblyzer's VoiceEncoder: LSTM(40, 256, 3) + Linear(256, 256), relu(linear(hidden[-1])) / norm."""
    torch.manual_seed(0)
    lstm, linear = nn.LSTM(40, 256, 3, batch_first=True), nn.Linear(256, 256)
    state = {f"lstm.{k}": v for k, v in lstm.state_dict().items()}
    state |= {f"linear.{k}": v for k, v in linear.state_dict().items()}
    model = build_model("lstm_ge2e")
    model.load_state_dict(state, strict=True)
    mels = torch.rand(2, 30, 40)
    with torch.no_grad():
        _, (hidden, _) = lstm(mels)
        raw = F.relu(linear(hidden[-1]))
        expected = raw / torch.norm(raw, dim=1, keepdim=True)
        assert torch.allclose(model(mels), expected, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_kwargs_from_json_lists_build_the_same_model(name):
    """Checkpoint configs are JSON, so tuples come back as lists."""
    as_lists = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY[name].items()}
    a = build_model(name, feat_dim=FEAT, embed_dim=EMBED, **TINY[name])
    b = build_model(name, feat_dim=FEAT, embed_dim=EMBED, **as_lists)
    b.load_state_dict(a.state_dict(), strict=True)

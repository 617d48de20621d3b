"""Losses: registry, known answers against direct formulas, and a training step with a small model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spkid.errors import SpkidError
from spkid.losses import LOSSES, build_loss
from spkid.models import build_model

torch.set_num_threads(1)

N_SPK, M_UTT, EMBED = 4, 3, 16


def labels_nm(n: int = N_SPK, m: int = M_UTT) -> torch.Tensor:
    return torch.arange(n).repeat_interleave(m)


def test_registry_names():
    assert list(LOSSES) == ["softmax", "aam", "ge2e", "triplet"]
    assert {name: cls.needs_nm_batches for name, cls in LOSSES.items()} == {
        "softmax": False, "aam": False, "ge2e": True, "triplet": True,
    }  # fmt: skip


def test_unknown_loss_and_option_are_errors():
    with pytest.raises(SpkidError, match="unknown loss 'arcface'.*aam"):
        build_loss("arcface", embed_dim=8, n_classes=2)
    with pytest.raises(SpkidError, match="margn"):
        build_loss("aam", embed_dim=8, n_classes=2, margn=0.3)


@pytest.mark.parametrize("name", LOSSES)
def test_finite_loss_backward_and_one_step_reduces_it(name):
    torch.manual_seed(0)
    model = build_model("ecapa_tdnn", feat_dim=20, embed_dim=EMBED, channels=16, mfa_channels=32,
                        se_bottleneck=8, attn_bottleneck=8)  # fmt: skip
    loss_fn = build_loss(name, embed_dim=EMBED, n_classes=N_SPK)
    x, labels = torch.randn(N_SPK * M_UTT, 30, 20), labels_nm()
    opt = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=1e-3)
    before, acc = loss_fn(model(x), labels)
    assert before.dim() == 0 and torch.isfinite(before)
    assert acc is None or 0.0 <= float(acc) <= 1.0
    opt.zero_grad()
    before.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    after, _ = loss_fn(model(x), labels)
    assert after.item() < before.item()


def test_softmax_is_linear_classifier_cross_entropy():
    torch.manual_seed(0)
    loss_fn = build_loss("softmax", embed_dim=EMBED, n_classes=5)
    e, y = torch.randn(7, EMBED), torch.tensor([0, 1, 2, 3, 4, 0, 1])
    loss, acc = loss_fn(e, y)
    logits = e @ loss_fn.classifier.weight.T + loss_fn.classifier.bias
    assert torch.allclose(loss, F.cross_entropy(logits, y))
    assert acc.item() == pytest.approx((logits.argmax(1) == y).float().mean().item())


def aam_reference(e, w, y, s, m, easy):
    """ArcFace by the angles themselves: s cos(theta_y + m) for the target (with the fall-backs), s cos(theta_j)."""
    cos = F.normalize(e, dim=1) @ F.normalize(w, dim=1).T
    logits = s * cos.clone()
    for i, c in enumerate(y.tolist()):
        theta = math.acos(max(-1.0, min(1.0, cos[i, c].item())))
        if easy:
            target = math.cos(theta + m) if cos[i, c] > 0 else cos[i, c].item()
        else:
            target = math.cos(theta + m) if theta + m < math.pi else cos[i, c].item() - (1 + math.cos(math.pi - m))
        logits[i, c] = s * target
    return F.cross_entropy(logits, y)


@pytest.mark.parametrize("easy", [False, True])
def test_aam_known_answer(easy):
    torch.manual_seed(1)
    loss_fn = build_loss("aam", embed_dim=EMBED, n_classes=6, scale=30.0, margin=0.3, easy_margin=easy)
    e, y = torch.randn(40, EMBED), torch.randint(0, 6, (40,))
    e[0] = -loss_fn.weight[y[0]].detach()  # theta = pi: the fall-back branch
    loss, _ = loss_fn(e, y)
    assert loss.item() == pytest.approx(aam_reference(e, loss_fn.weight.detach(), y, 30.0, 0.3, easy).item(), rel=1e-4)
    loss_fn.set_margin(0.0)
    cos = F.normalize(e, dim=1) @ F.normalize(loss_fn.weight.detach(), dim=1).T
    assert loss_fn(e, y)[0].item() == pytest.approx(F.cross_entropy(30.0 * cos, y).item(), rel=1e-4)


def test_aam_margin_warmup_is_linear():
    loss_fn = build_loss("aam", embed_dim=4, n_classes=3, margin=0.2, warmup_start=1, warmup_epochs=4)
    margins = []
    for epoch in [0, 1, 2, 3, 5, 9, 2.5]:
        loss_fn.set_epoch(epoch)
        margins.append(loss_fn.margin)
    assert margins == pytest.approx([0.0, 0.0, 0.05, 0.1, 0.2, 0.2, 0.075])
    assert build_loss("aam", embed_dim=4, n_classes=3, margin=0.2).margin == pytest.approx(0.2)


def ge2e_reference(e, w, b):
    """Eqs. 6-9 of Wan et al. 2018, one utterance at a time."""
    n, m, _ = e.shape
    total = 0.0
    for j in range(n):
        for i in range(m):
            sims = []
            for k in range(n):
                others = [e[k, t] for t in range(m) if not (k == j and t == i)]
                c = torch.stack(others).mean(0)
                sims.append(w * F.cosine_similarity(e[j, i], c, dim=0) + b)
            s = torch.stack(sims)
            total += -s[j] + torch.logsumexp(s, 0)
    return total / (n * m)


def test_ge2e_known_answer_and_layouts():
    torch.manual_seed(2)
    loss_fn = build_loss("ge2e", embed_dim=EMBED, n_classes=0)
    assert loss_fn.similarity_weight.item() == 10.0 and loss_fn.similarity_bias.item() == -5.0
    e = torch.randn(N_SPK, M_UTT, EMBED)
    loss3, acc3 = loss_fn(e)
    assert loss3.item() == pytest.approx(ge2e_reference(e, 10.0, -5.0).item(), rel=1e-5)
    perm = torch.randperm(N_SPK * M_UTT)  # a shuffled flat batch with labels gives the same loss
    loss2, acc2 = loss_fn(e.reshape(-1, EMBED)[perm], labels_nm()[perm] * 7)
    assert loss2.item() == pytest.approx(loss3.item(), rel=1e-5) and acc2 == acc3


def test_ge2e_separated_speakers_score_perfectly_and_bad_batches_fail():
    loss_fn = build_loss("ge2e", embed_dim=EMBED, n_classes=0)
    centres = torch.eye(EMBED)[:N_SPK]
    e = centres[:, None, :] + 0.01 * torch.randn(N_SPK, M_UTT, EMBED)
    loss, acc = loss_fn(e)
    assert acc.item() == 1.0 and loss.item() < loss_fn(torch.randn(N_SPK, M_UTT, EMBED))[0].item()
    with pytest.raises(SpkidError, match="N speakers x M"):
        loss_fn(torch.randn(5, EMBED), torch.tensor([0, 0, 1, 1, 1]))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_triplet_batch_hard_known_answer(metric):
    loss_fn = build_loss("triplet", embed_dim=2, n_classes=0, margin=0.5, metric=metric)
    e = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.0, 2.0]])
    y = torch.tensor([0, 0, 1, 1])
    d = (1 - F.normalize(e) @ F.normalize(e).T) if metric == "cosine" else torch.cdist(e, e)
    # anchors: hardest positive is the other member, hardest negative the closest of the other pair
    hinges = [F.relu(d[a, p] - d[a, negs].min() + 0.5) for a, p, negs in [(0, 1, [2, 3]), (1, 0, [2, 3]),
                                                                         (2, 3, [0, 1]), (3, 2, [0, 1])]]  # fmt: skip
    expected = torch.stack(hinges).mean()
    loss, acc = loss_fn(e, y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert 0.0 <= acc.item() <= 1.0
    with pytest.raises(SpkidError, match="positive and a negative"):
        loss_fn(e[:2], torch.tensor([0, 1]))


def test_triplet_well_separated_is_zero():
    loss_fn = build_loss("triplet", embed_dim=2, n_classes=0, margin=0.2)
    loss, acc = loss_fn(torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]]), torch.tensor([0, 0, 1, 1]))
    assert loss.item() == 0.0 and acc.item() == 1.0

"""SpeechBrain's ECAPA-TDNN (`speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN`), the network of its published
speaker encoders (spkrec-ecapa-voxceleb: channels 1024 x 4 and 3072, 192-d embedding), in spkid's own code.

Reference: Desplanques, Thienpondt, Demuynck, "ECAPA-TDNN: Emphasized Channel Attention, Propagation and Aggregation
in TDNN Based Speaker Verification", Interspeech 2020. SpeechBrain's variant, which this one reproduces:
- every convolution pads its input to keep the length ("same"), by *reflecting* the frames at each edge
  (`dilation * (kernel - 1) // 2` of them), and has a bias;
- a TDNN block is convolution -> ReLU -> batch norm;
- in the Res2Net part the *first* channel group passes through unchanged, the second is convolved, and each later
  group is convolved after the previous group's output is added to it;
- an SE-Res2Net block is TDNN (1x1) -> Res2Net (dilated) -> TDNN (1x1) -> squeeze-excitation (time mean ->
  1x1 conv -> ReLU -> 1x1 conv -> sigmoid, scaling the channels), plus the input (through a 1x1 convolution when
  the channel count changes);
- the outputs of all SE-Res2Net blocks are concatenated (multi-layer feature aggregation) into a TDNN block;
- attentive statistics pooling: with `global_context`, each frame sees its channels together with the utterance's
  mean and standard deviation; TDNN -> tanh -> 1x1 conv gives per-channel frame weights (softmax over time),
  which weigh a mean and a standard deviation (variance floored at 1e-12 before the square root);
- batch norm of the pooled statistics, then a 1x1 convolution ("fc") to `embed_dim`.

Module and parameter names are SpeechBrain's (`blocks.1.res2net_block.blocks.0.conv.conv.weight`,
`asp_bn.norm.running_mean`, `fc.conv.bias`, ...), so the state dict of its `embedding_model.ckpt` loads as it is.
Constructor keywords follow its hyperparameters, with `feat_dim` for `input_size` and `embed_dim` for
`lin_neurons`. SpeechBrain's forward also takes relative lengths of padded batches; spkid never pads a batch
(`spkid.utterance`), and with all frames counted the two are the same computation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

STD_FLOOR = 1e-12  # variances of the pooling are floored here before the square root


class Conv(nn.Module):
    """1-D convolution on `(B, C, T)` keeping the length: the input reflected at both edges first."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"sb_ecapa: kernel sizes must be odd, got {kernel_size}")
        self.pad = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size, dilation=dilation, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (self.pad, self.pad), mode="reflect")
        return self.conv(x)


class LowRankConv(nn.Module):
    """A 1x1 convolution whose weight is the product of two thinner ones (`rank` channels between): a smaller
    stand-in for a large one, fitted from it by a truncated SVD (`factor_mfa`)."""

    def __init__(self, in_ch: int, out_ch: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Conv1d(in_ch, rank, 1, bias=False)
        self.conv = nn.Conv1d(rank, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.down(x))


class Norm(nn.Module):
    """Batch norm over the channels of `(B, C, T)` (the wrapper keeps SpeechBrain's `norm.norm.*` names)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class TDNNBlock(nn.Module):
    """Convolution -> ReLU -> batch norm."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dilation: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = Conv(in_ch, out_ch, kernel_size, dilation, groups)
        self.norm = Norm(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.relu(self.conv(x)))


class Res2NetBlock(nn.Module):
    """`scale` channel groups: the first kept, the others each through a TDNN block, fed the previous output too."""

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"sb_ecapa: channels {channels} are not divisible by res2net_scale {scale}")
        width = channels // scale
        self.width = width
        self.blocks = nn.ModuleList(TDNNBlock(width, width, kernel_size, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.width, dim=1)
        out = [parts[0]]
        y = parts[0]
        for i, block in enumerate(self.blocks):
            y = block(parts[i + 1] if i == 0 else parts[i + 1] + y)
            out.append(y)
        return torch.cat(out, dim=1)


class SEBlock(nn.Module):
    """Squeeze-excitation: channels scaled by sigmoid(conv2(relu(conv1(time mean))))."""

    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.conv1 = Conv(channels, se_channels)
        self.conv2 = Conv(se_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=2, keepdim=True)
        return x * torch.sigmoid(self.conv2(F.relu(self.conv1(s))))


class SERes2NetBlock(nn.Module):
    """TDNN (1x1) -> Res2Net -> TDNN (1x1) -> SE, plus the (projected) input."""

    def __init__(self, in_ch: int, out_ch: int, res2net_scale: int, se_channels: int, kernel_size: int,
                 dilation: int, groups: int = 1) -> None:
        super().__init__()
        self.tdnn1 = TDNNBlock(in_ch, out_ch, 1, 1, groups)
        self.res2net_block = Res2NetBlock(out_ch, res2net_scale, kernel_size, dilation)
        self.tdnn2 = TDNNBlock(out_ch, out_ch, 1, 1, groups)
        self.se_block = SEBlock(out_ch, se_channels)
        self.shortcut = Conv(in_ch, out_ch) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x)))) + skip


def _weighted_stats(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over time of `x` `(B, C, T)` with weights `w` (summing to 1 over time)."""
    mean = (w * x).sum(dim=2)
    var = (w * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2)
    return mean, var.clamp(min=STD_FLOOR).sqrt()


class AttentiveStatisticsPooling(nn.Module):
    """Channel- and context-dependent attentive statistics: `(B, C, T)` -> `(B, 2C, 1)` (weighted mean, std)."""

    def __init__(self, channels: int, attention_channels: int, global_context: bool) -> None:
        super().__init__()
        self.global_context = global_context
        self.tdnn = TDNNBlock(channels * (3 if global_context else 1), attention_channels, 1, 1)
        self.conv = Conv(attention_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = x
        if self.global_context:
            uniform = torch.ones_like(x[:, :1]) / x.shape[2]
            mean, std = _weighted_stats(x, uniform)
            attn = torch.cat([x, mean.unsqueeze(2).expand_as(x), std.unsqueeze(2).expand_as(x)], dim=1)
        weights = torch.softmax(self.conv(torch.tanh(self.tdnn(attn))), dim=2)
        mean, std = _weighted_stats(x, weights)
        return torch.cat([mean, std], dim=1).unsqueeze(2)


class SBECAPATDNN(nn.Module):
    """SpeechBrain's ECAPA-TDNN (module docstring): `(B, T, feat_dim)` features -> `(B, embed_dim)` embeddings.

    `channels`, `kernel_sizes`, `dilations`, `groups`: one entry per layer: the first TDNN block, the SE-Res2Net
    blocks, and last the aggregating TDNN block (`channels[-1]`); SpeechBrain's defaults are these keywords'
    defaults. Dropout, which SpeechBrain offers for training, does nothing at inference and is left out.
    """

    def __init__(
        self,
        feat_dim: int = 80,
        embed_dim: int = 192,
        channels: Sequence[int] = (512, 512, 512, 512, 1536),
        kernel_sizes: Sequence[int] = (5, 3, 3, 3, 1),
        dilations: Sequence[int] = (1, 2, 3, 4, 1),
        attention_channels: int = 128,
        res2net_scale: int = 8,
        se_channels: int = 128,
        global_context: bool = True,
        groups: Sequence[int] = (1, 1, 1, 1, 1),
        mfa_rank: int = 0,
    ) -> None:
        super().__init__()
        channels, kernel_sizes, dilations, groups = list(channels), list(kernel_sizes), list(dilations), list(groups)
        if not len(channels) == len(kernel_sizes) == len(dilations) == len(groups) or len(channels) < 3:
            raise ValueError("sb_ecapa: channels, kernel_sizes, dilations and groups need one entry per layer "
                             f"(at least 3), got {len(channels)}, {len(kernel_sizes)}, {len(dilations)}, {len(groups)}")
        self.feat_dim, self.embed_dim = feat_dim, embed_dim
        self.blocks = nn.ModuleList([TDNNBlock(feat_dim, channels[0], kernel_sizes[0], dilations[0], groups[0])])
        for i in range(1, len(channels) - 1):
            self.blocks.append(SERes2NetBlock(channels[i - 1], channels[i], res2net_scale, se_channels,
                                              kernel_sizes[i], dilations[i], groups[i]))
        self.mfa = TDNNBlock(sum(channels[1:-1]), channels[-1], kernel_sizes[-1], dilations[-1], groups[-1])
        if mfa_rank:  # the aggregating convolution, the largest layer, as a product of two thinner ones
            if kernel_sizes[-1] != 1 or groups[-1] != 1 or not 0 < mfa_rank < min(sum(channels[1:-1]), channels[-1]):
                raise ValueError(f"sb_ecapa: mfa_rank {mfa_rank} needs a 1x1 aggregating convolution without groups "
                                 "and fewer channels than it has")
            self.mfa.conv = LowRankConv(sum(channels[1:-1]), channels[-1], mfa_rank)
        self.asp = AttentiveStatisticsPooling(channels[-1], attention_channels, global_context)
        self.asp_bn = Norm(channels[-1] * 2)
        self.fc = Conv(channels[-1] * 2, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks[0](x.transpose(1, 2))
        outs = []
        for block in self.blocks[1:]:
            x = block(x)
            outs.append(x)
        x = self.mfa(torch.cat(outs, dim=1))
        return self.fc(self.asp_bn(self.asp(x))).squeeze(2)


def factor_mfa(kwargs: dict, state: dict, rank: int) -> tuple[dict, dict]:
    """(kwargs, state) of the same network with its aggregating 1x1 convolution `W` replaced by the best rank-`rank`
    product (truncated SVD, `W ~ (U S^1/2)(S^1/2 V^T)`), which has `rank * (in + out)` weights instead of
    `in * out`."""
    w = state["mfa.conv.conv.weight"][:, :, 0].double()
    u, sv, vt = torch.linalg.svd(w, full_matrices=False)
    root = sv[:rank].sqrt()
    out = {k: v for k, v in state.items() if k != "mfa.conv.conv.weight"}
    out["mfa.conv.down.weight"] = (root[:, None] * vt[:rank]).float()[:, :, None]
    out["mfa.conv.conv.weight"] = (u[:, :rank] * root).float()[:, :, None]
    return {**kwargs, "mfa_rank": rank}, out


MODELS: dict[str, type[nn.Module]] = {"sb_ecapa": SBECAPATDNN}

"""Figures for `spkid score --plot`: DET, ROC and score histograms (verification); CMC and top-1 scores (identification).

matplotlib is the optional `plot` extra, imported here lazily and drawn through the Agg canvas (no pyplot, no GUI,
no global backend switch). The format follows the file name: .png, .svg or .pdf. The figure's title is also the
file's Title metadata (PNG tEXt, SVG <dc:title>, PDF Info), so a script can tell plots apart without looking.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spkid import metrics
from spkid.errors import SpkidError
from spkid.lists import plural

TARGET_COLOUR = "#0072B2"  # Okabe-Ito blue / vermillion: readable with colour-blindness and in greyscale
NONTARGET_COLOUR = "#D55E00"
DET_TICKS = (0.0001, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)  # 0.01 % only when the axis reaches it
DET_RANGE = (0.0005, 0.5)  # NIST's 0.1 % .. 40 % ticks; extended down to 0.5 / N trials, at most to 0.005 %
SUFFIXES = (".png", ".svg", ".pdf")
MAX_POINTS = 20000


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SpkidError("plotting needs matplotlib; install the plot extra: pip install 'spkid[plot]'") from None
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _check_path(path: str | Path) -> Path:
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise SpkidError(f"{path}: plot file name must end in {', '.join(SUFFIXES)}")
    if not p.parent.is_dir():
        raise SpkidError(f"{path}: folder {p.parent} does not exist")
    return p


def _title(name: str | None, counts: str) -> str:
    """`NAME: COUNTS`, e.g. `dev_scores.txt: 200 target, 800 non-target trials`; just the counts without a name."""
    return f"{name}: {counts}" if name else counts


def _save(fig, p: Path, title: str) -> None:
    """Atomically (a temp file renamed into place): a Ctrl-C mid-write leaves no half-written plot."""
    from spkid.fileio import atomic_path

    with atomic_path(p) as tmp:
        fig.savefig(tmp, dpi=100, format=p.suffix.lower().lstrip("."), metadata={"Title": title})


def _thin(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    n = arrays[0].size
    if n <= MAX_POINTS:
        return arrays
    idx = np.unique(np.linspace(0, n - 1, MAX_POINTS).round().astype(np.int64))
    return tuple(a[idx] for a in arrays)


def _probit(p, lo: float) -> np.ndarray:
    """Normal deviate of a rate, clipped to [lo, 1 - lo] so zero rates sit on the axis edge."""
    from scipy.special import ndtri

    return ndtri(np.clip(np.asarray(p, dtype=np.float64), lo, 1 - lo))


def _percent(p: float) -> str:
    return f"{p * 100:g}"


def plot_verification(
    target: np.ndarray,
    nontarget: np.ndarray,
    path: str | Path,
    p_target: float = metrics.P_TARGET,
    c_miss: float = metrics.C_MISS,
    c_fa: float = metrics.C_FA,
    title: str | None = None,
) -> Path:
    """Write a DET curve (normal-deviate axes, NIST style), a ROC curve and target/non-target score histograms,
    with the EER and minDCF operating points marked, to `path` (.png, .svg or .pdf). `title`: what the scores are
    (their file's name), shown before the trial counts."""
    p = _check_path(path)
    tar, non = metrics._check(target, nontarget)
    op = metrics.operating_points(tar, non)
    eer, eer_thr = metrics._eer(op)
    dcf, dcf_thr = metrics._min_dcf(op, p_target, c_miss, c_fa)
    dcf_fa, dcf_miss = metrics.far_frr(tar, non, dcf_thr)
    area = metrics.auc(tar, non)
    pfa, pmiss = _thin(op.p_fa, op.p_miss)

    fig = _figure(16, 5.5)
    det, roc, hist = fig.subplots(1, 3, width_ratios=[1.15, 1, 1])
    title = _title(title, f"{tar.size} target, {plural(non.size, 'non-target trial')}")
    fig.suptitle(title)
    eer_label = f"EER {eer * 100:.2f}%"
    dcf_label = f"minDCF {dcf:.3f} (p_target {p_target:g})"

    lo = max(min(DET_RANGE[0], 0.5 / min(tar.size, non.size)), 5e-5)
    x_lo, x_hi = _probit(lo, lo), _probit(DET_RANGE[1], lo)
    det.plot(_probit(pfa, lo / 2), _probit(pmiss, lo / 2), color="black", lw=1.5, label="DET")
    det.plot([x_lo, x_hi], [x_lo, x_hi], color="grey", lw=0.8, ls=":")
    marks = dict(ms=8, mfc="none", mew=2, clip_on=False, zorder=5)
    det.plot(_probit(eer, lo), _probit(eer, lo), "o", mec=TARGET_COLOUR, label=eer_label, **marks)
    det.plot(_probit(dcf_fa, lo), _probit(dcf_miss, lo), "s", mec=NONTARGET_COLOUR, label=dcf_label, **marks)
    shown = [t for t in DET_TICKS if t >= lo * 0.999]
    ticks = _probit(np.array(shown), lo / 2)
    labels = [_percent(t) for t in shown]
    det.set_xticks(ticks, labels)
    det.set_yticks(ticks, labels)
    det.tick_params(labelsize=8)
    det.set_xlim(x_lo, x_hi)
    det.set_ylim(x_lo, x_hi)
    det.set_aspect("equal")
    det.grid(True, color="#dddddd")
    det.set_xlabel("false alarm rate (%)")
    det.set_ylabel("miss rate (%)")
    det.set_title("DET")
    det.legend(loc="upper right", fontsize="small")

    roc.plot(pfa, 1 - pmiss, color="black", lw=1.5, label=f"ROC (AUC {area:.4f})")
    roc.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    roc.plot(eer, 1 - eer, "o", mec=TARGET_COLOUR, label=eer_label, **marks)
    roc.plot(dcf_fa, 1 - dcf_miss, "s", mec=NONTARGET_COLOUR, label=dcf_label, **marks)
    roc.set_xlim(0, 1)
    roc.set_ylim(0, 1.01)
    roc.set_aspect("equal")
    roc.grid(True, color="#dddddd")
    roc.set_xlabel("false alarm rate")
    roc.set_ylabel("hit rate (1 - miss rate)")
    roc.set_title("ROC")
    roc.legend(loc="lower right", fontsize="small")

    bins = np.histogram_bin_edges(np.concatenate([tar, non]), bins=min(80, max(10, int(np.sqrt(tar.size + non.size)))))
    hist.hist(non, bins=bins, density=True, color=NONTARGET_COLOUR, alpha=0.5, label=f"non-target ({non.size})")
    hist.hist(tar, bins=bins, density=True, color=TARGET_COLOUR, alpha=0.5, label=f"target ({tar.size})")
    hist.axvline(eer_thr, color="black", lw=1.2, ls="--", label=f"EER threshold {eer_thr:.4g}")
    hist.axvline(dcf_thr, color="black", lw=1.2, ls=":", label=f"minDCF threshold {dcf_thr:.4g}")
    hist.set_ylim(0, hist.get_ylim()[1] * 1.35)  # headroom for the legend
    hist.set_xlabel("score")
    hist.set_ylabel("density")
    hist.set_title("score distributions")
    hist.legend(loc="upper left", fontsize="small")

    _save(fig, p, title)
    return p


def plot_identification(
    true_rank: np.ndarray, top_score_known: np.ndarray, top_score_unknown: np.ndarray, path: str | Path, title: str | None = None
) -> Path:
    """Write a cumulative match characteristic (rank-k accuracy against k) and histograms of the best candidate's
    score (known probes identified right, known probes identified wrong, probes of unknown speakers). `title`: what
    the results are (their file's name), shown before the probe counts."""
    p = _check_path(path)
    rank = np.asarray(true_rank)
    known = np.asarray(top_score_known, dtype=np.float64)
    unknown = np.asarray(top_score_unknown, dtype=np.float64)
    max_k = max(1, int(rank.max()) + 1) if (rank >= 0).any() else 1
    ks = np.arange(1, max_k + 1)
    cmc = [metrics.top_k_accuracy(rank, k) for k in ks]

    fig = _figure(11, 4.5)
    ax_cmc, ax_hist = fig.subplots(1, 2)
    title = _title(title, f"{plural(rank.size, 'probe')} of enrolled speakers, {unknown.size} of others")
    fig.suptitle(title)
    ax_cmc.plot(ks, cmc, "o-", color="black")
    ax_cmc.set_xlabel("rank k")
    ax_cmc.set_ylabel("top-k accuracy")
    ax_cmc.set_ylim(0, 1.01)
    ax_cmc.set_xticks(ks if ks.size <= 20 else ks[:: max(1, ks.size // 10)])
    ax_cmc.grid(True, color="#dddddd")
    ax_cmc.set_title(f"CMC (top-1 {cmc[0] * 100:.1f}%)")

    groups = [
        (known[rank == 0], TARGET_COLOUR, "known, top-1 right"),
        (known[rank != 0], "#CC79A7", "known, top-1 wrong"),
        (unknown, NONTARGET_COLOUR, "unknown speaker"),
    ]
    everything = np.concatenate([g[0] for g in groups])
    bins = np.histogram_bin_edges(everything, bins=min(60, max(10, int(np.sqrt(everything.size)))))
    for scores, colour, label in groups:
        if scores.size:
            ax_hist.hist(scores, bins=bins, color=colour, histtype="step", lw=2, label=f"{label} ({scores.size})")
    ax_hist.set_ylim(0, ax_hist.get_ylim()[1] * 1.3)
    ax_hist.set_xlabel("best candidate's score")
    ax_hist.set_ylabel("probes")
    ax_hist.set_title("top-1 scores")
    ax_hist.legend(loc="upper left", fontsize="small")
    _save(fig, p, title)
    return p


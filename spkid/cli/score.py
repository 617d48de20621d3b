"""`spkid score`: scores or identification results in, an error-rate report out; also fits score calibration."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from spkid import calibration, lists, metrics, report, streams
from spkid.errors import SpkidError, UsageError
from spkid.report import format_table
from spkid.trials import IdRecord, ScoreList, labelled, parse_trials, read_input

app = typer.Typer(rich_markup_mode=None)
log = logging.getLogger("spkid.score")

PTargetOpt = Annotated[
    float, typer.Option("--p-target", help="Prior of a target trial (0 < P < 1) for DCF and calibration.")
]


def _read_lines(src: str, what: str) -> list[str]:
    with streams.open_input(src) as f:
        if src == "-" and f.isatty():
            raise SpkidError(f"no input: give a {what} file or pipe it on stdin")
        data = f.read()
    return lists.split_lines(lists.decode_text(data, _source(src), what))


def _source(src: str) -> str:
    return "<stdin>" if src == "-" else src


def _plot_title(src: str, plot: str) -> str:
    """What a plot shows: its scores file's name, or with the scores on stdin the plot file's own (det.png: det)."""
    return Path(plot).stem if src == "-" else Path(src).name


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.8g}" if math.isfinite(v) else str(v)
    return str(v)


def _report_table(rep: dict) -> str:
    ci = rep.get("ci", {})
    header = ["metric", "value"] + ([f"ci{rep['ci_level'] * 100:g}_low", f"ci{rep['ci_level'] * 100:g}_high"] if ci else [])
    rows = [header]
    for k, v in rep.items():
        if k in ("ci", "confusion"):
            continue
        rows.append([k, _fmt(v)] + ([_fmt(ci[k][0]), _fmt(ci[k][1])] if k in ci else (["-", "-"] if ci else [])))
    return format_table(rows)


def _confusion_table(rows: list[str], cols: list[str], counts) -> str:
    lines = [["true\\decision", *cols]]
    lines += [[r, *(str(int(c)) for c in counts[i])] for i, r in enumerate(rows)]
    return format_table(lines)


def _calibration_table(cal: calibration.Calibration, written: str) -> str:
    top = [["metric", "value"], ["a", _fmt(cal.a)], ["b", _fmt(cal.b)], ["p_target", _fmt(cal.p_target)]]
    top += [[k, _fmt(v)] for k, v in cal.fitted_on.items() if k != "file"]
    top.append(["written", written])
    thr = [["threshold", "score", "far", "frr"]]
    thr += [[k, _fmt(t.score), _fmt(t.far), _fmt(t.frr)] for k, t in cal.thresholds.items()]
    out = format_table(top) + "\n" + format_table(thr)
    if cal.qmf is not None:
        q = cal.qmf
        rows = [["duration-aware", "value"], ["a", _fmt(q.a)], ["b", _fmt(q.b)], ["c", _fmt(q.c)],
                ["q", f"log(1 / (1/enroll + 1/test)), speech seconds clamped to [{q.min_s:g}, {q.max_s:g}]"]]
        rows += [[k, _fmt(v)] for k, v in q.fitted_on.items() if not isinstance(v, dict)]
        rows += [[f"combined_s_{k}", _fmt(v)] for k, v in q.fitted_on.get("combined_s", {}).items()]
        llr = [["threshold", "llr", "far", "frr"]] + [[k, _fmt(t.score), _fmt(t.far), _fmt(t.frr)] for k, t in q.thresholds.items()]
        out += "\n" + format_table(rows) + "\n" + format_table(llr)
    return out


def _json_safe(obj):
    """NaN/Inf become null: the output must be strict JSON for jq."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _usage(msg: str, hint: str) -> typer.BadParameter:
    return typer.BadParameter(msg, param_hint=hint)


def _labelled(src: str, trials: str | None) -> ScoreList:
    parsed = read_input(_read_lines(src, "scores"), _source(src))
    if not isinstance(parsed, ScoreList):
        raise SpkidError(f"{_source(src)}: identification results cannot be calibrated; give verification scores")
    tri = parse_trials(_read_lines(trials, "trials"), trials) if trials else None
    return labelled(parsed, tri)


@app.command()
def score(
    scores: Annotated[
        str | None,
        typer.Argument(
            metavar="SCORES|-",
            help="ENROLL TEST SCORE [LABEL] lines, SCORE LABEL lines, or `spkid identify --json` output; - or nothing: stdin.",
            show_default=False,
        ),
    ] = None,
    trials: Annotated[
        str | None,
        typer.Option("--trials", metavar="FILE", help="Label scores by (ENROLL, TEST): VoxCeleb `1 e t` or Kaldi `e t target` lines."),
    ] = None,
    p_target: PTargetOpt = metrics.P_TARGET,
    c_miss: Annotated[float, typer.Option("--c-miss", help="Cost of a miss (DCF, > 0).")] = metrics.C_MISS,
    c_fa: Annotated[float, typer.Option("--c-fa", help="Cost of a false alarm (DCF, > 0).")] = metrics.C_FA,
    far: Annotated[
        float, typer.Option("--far", min=0.0, max=1.0, help="Target false-alarm rate: report the threshold reaching it (and DIR at it).")
    ] = 0.01,
    threshold: Annotated[
        float | None, typer.Option("--threshold", metavar="T", help="Also report FAR, FRR and actual DCF at this threshold.")
    ] = None,
    llr: Annotated[
        bool, typer.Option("--llr", help="Scores are calibrated log-likelihood ratios: report Cllr and actual DCF at the Bayes threshold.")
    ] = False,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", min=0, metavar="N", help="Add 95% confidence intervals from N bootstrap resamples of the trials.")
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of --bootstrap.")] = 0,
    top_k: Annotated[
        int | None, typer.Option("--top-k", min=1, metavar="K", help="Identification: also report top-K accuracy [default: 5].")
    ] = None,
    confusion: Annotated[
        bool, typer.Option("--confusion", help="Identification: print the confusion table (true speaker x decision).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Write one JSON object instead of the text table.")] = False,
    plot: Annotated[
        str | None,
        typer.Option("--plot", metavar="FILE", help="Draw DET, ROC and score histograms (identification: CMC) to FILE.png|.svg|.pdf."),
    ] = None,
    calibrate: Annotated[
        str | None,
        typer.Option(
            "--calibrate", metavar="SCORES", help="Fit a linear calibration on these labelled scores and store it (-g or --model-out)."
        ),
    ] = None,
    gallery: Annotated[
        str | None, typer.Option("--gallery", "-g", metavar="DIR", help="--calibrate: store the calibration in DIR/gallery.json.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", metavar="IN", help="--calibrate: model file to copy with the calibration.")
    ] = None,
    model_out: Annotated[
        str | None, typer.Option("--model-out", metavar="OUT", help="--calibrate: write the model with its calibration here.")
    ] = None,
) -> None:
    """Report EER, minDCF, AUC, Cllr and more from scores, or identification accuracy from `identify --json`.

    Scores are ENROLL TEST SCORE LABEL lines (LABEL target|nontarget|1|0), ENROLL TEST SCORE lines with
    --trials, or SCORE LABEL lines as Kaldi's compute-eer reads; tab or space separated. The EER is interpolated
    exactly on the ROC; minDCF is normalised as in NIST/Kaldi (p_target 0.01, c_miss = c_fa = 1 by default).
    Trials are accepted when score >= threshold; rates are fractions. The text table is one `metric value` pair a
    line (with --bootstrap two more columns: the interval); --json gives the same keys.

    With --calibrate, fit llr = a * score + b by prior-weighted logistic regression (BOSARIS) and store it, with
    thresholds at the EER, minDCF, the Bayes decision and --far, in a gallery (-g) or a copy of a model
    (--model IN --model-out OUT); `verify` and `identify` use them. Scores with the seconds of speech of both
    sides (ENROLL TEST SCORE LABEL ENROLL_SPEECH TEST_SPEECH, as `verify --trials` writes them) also fit a
    duration-aware calibration, llr = a * score + b + c * log(1 / (1/E + 1/T)) (E, T: the speech seconds, each
    clamped to [0.25, 30]), with those thresholds on the llr: each trial is then decided at the raw threshold its
    durations give.

    \b
    Examples:
      spkid verify --trials trials.txt -g enroll/ | spkid score --plot det.png
      spkid score scores.txt --trials voxceleb1_test.txt --bootstrap 1000 --json
      printf '0.9 target\\n0.2 nontarget\\n0.4 target\\n' | spkid score
      spkid identify -g enroll/ --json < emb.npy | spkid score --top-k 5 --confusion
      spkid score --calibrate dev_scores.txt -g enroll/ --far 0.001
    """
    if not 0.0 < p_target < 1.0:
        raise _usage(f"{p_target} is not strictly between 0 and 1", "--p-target")
    for name, cost in (("--c-miss", c_miss), ("--c-fa", c_fa)):
        if not cost > 0:
            raise _usage(f"{cost} is not a positive cost", name)
    if calibrate is not None:
        if scores is not None:
            raise _usage("give the scores to calibrate on either as SCORES or with --calibrate, not both", "--calibrate")
        if (gallery is None) == (model_out is None) or (model is None) != (model_out is None):
            raise _usage("store the calibration with either -g GALLERY or --model IN --model-out OUT", "--calibrate")
        _calibrate(calibrate, trials, p_target, c_miss, c_fa, far, gallery, model, model_out, as_json)
        return
    for name, value in (("-g/--gallery", gallery), ("--model", model), ("--model-out", model_out)):
        if value is not None:
            raise _usage(f"{name} is only used with --calibrate SCORES", name)
    src = scores or "-"
    parsed = read_input(_read_lines(src, "scores"), _source(src))
    if isinstance(parsed, list):
        for name, bad in (("--trials", trials), ("--threshold", threshold), ("--llr", llr), ("--bootstrap", bootstrap)):
            if bad:
                raise UsageError(f"{name} applies to verification scores, but {_source(src)} holds identification results")
        _identification(parsed, top_k or 5, far, confusion, as_json, plot, src)
        return
    for name, bad in (("--top-k", top_k), ("--confusion", confusion)):
        if bad:
            raise UsageError(f"{name} applies to identification results (`spkid identify --json`), but {_source(src)} holds scores")
    tri = parse_trials(_read_lines(trials, "trials"), trials) if trials else None
    data = labelled(parsed, tri)
    cfg = metrics.VerificationConfig(
        p_target=p_target, c_miss=c_miss, c_fa=c_fa, far=far, threshold=threshold, llr=llr, bootstrap=bootstrap, seed=seed
    )
    rep = metrics.verification_report(data.target, data.nontarget, cfg)
    if plot:
        from spkid import plots

        plots.plot_verification(data.target, data.nontarget, plot, p_target, c_miss, c_fa, title=_plot_title(src, plot))
        log.info("plot written to %s", plot)
    streams.write_text(json.dumps(_json_safe(rep), indent=2) + "\n" if as_json else _report_table(rep))


def _identification(records: list[IdRecord], k: int, far: float, confusion: bool, as_json: bool, plot: str | None,
                    src: str) -> None:
    rep = report.identification_report(records, k, far)
    text = ""
    if confusion:
        rows, cols, counts = report.identification_confusion(records)
        rep["confusion"] = {"rows": rows, "columns": cols, "counts": counts.tolist()}
        text = "\n" + _confusion_table(rows, cols, counts)
    if plot:
        from spkid import plots

        plots.plot_identification(*report.identification_arrays(records), plot, title=_plot_title(src, plot))
        log.info("plot written to %s", plot)
    streams.write_text(json.dumps(_json_safe(rep), indent=2) + "\n" if as_json else _report_table(rep) + text)


def _calibrate(
    src: str,
    trials: str | None,
    p_target: float,
    c_miss: float,
    c_fa: float,
    far: float,
    gallery: str | None,
    model: str | None,
    model_out: str | None,
    as_json: bool,
) -> None:
    from spkid.gallery import gallery_json, save_calibration

    if gallery is not None:
        gallery_json(gallery)  # fail on a missing gallery before the fit, not after
    data = _labelled(src, trials)
    speech = data.speech
    if speech is not None and np.isnan(speech).any():
        log.warning("%s: %d of %d trials lack the seconds of speech of a side; the calibration is duration-free",
                    _source(src), int(np.isnan(speech).any(1).sum()), len(speech))
        speech = None
    by_label = (None, None) if speech is None else (speech[data.label], speech[~data.label])
    cal = calibration.calibrate(data.target, data.nontarget, p_target, far, _source(src), c_miss, c_fa, *by_label)
    if speech is not None and cal.qmf is None:
        log.warning("%s: duration-aware calibration %s", _source(src), cal.fitted_on.get("qmf", "not fitted"))
    if gallery is not None:
        written = str(save_calibration(gallery, cal))
    else:
        from spkid import modelfile

        written = str(modelfile.save_calibrated(model, model_out, cal))
    log.info("calibration written to %s", written)
    out = cal.to_dict() | {"written": written}
    streams.write_text(json.dumps(_json_safe(out), indent=2) + "\n" if as_json else _calibration_table(cal, written))

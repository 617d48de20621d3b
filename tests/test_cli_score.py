"""`spkid score`: real pipes, every input format, the table and JSON, plots, calibration, every error and exit code."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import sh
from spkid import metrics
from spkid.gallery import load_calibration
from spkid.cli import main


def run(args: list[str], capsys, monkeypatch, stdin: bytes = b"") -> tuple[int, str, str]:
    """`spkid ARGS` in-process through main() (one-line errors, exit codes), stdin from bytes."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def table(text: str) -> dict[str, str]:
    return {f[0]: f[1] for f in (line.split() for line in text.splitlines()) if len(f) >= 2}


@pytest.fixture
def labelled(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """tmp_path/scores.txt: ENROLL<TAB>TEST<TAB>SCORE<TAB>LABEL for 200 target and 800 non-target trials."""
    rng = np.random.default_rng(0)
    tar, non = np.round(rng.normal(0.6, 0.15, 200), 6), np.round(rng.normal(0.1, 0.15, 800), 6)
    rows = [f"spk{i % 20}/e{i}.wav\tspk{i % 20}/t{i}.wav\t{s}\ttarget" for i, s in enumerate(tar)]
    rows += [f"spk{i % 20}/e{i}.wav\tspk{(i + 1) % 20}/n{i}.wav\t{s}\tnontarget" for i, s in enumerate(non)]
    p = tmp_path / "scores.txt"
    p.write_text("\n".join(rows) + "\n")
    return p, tar, non


def test_printf_pipe_kaldi_format():
    out = sh("printf '0.9 target\\n0.2 nontarget\\n0.4 target\\n0.5 nontarget\\n' | spkid score", check=True)
    t = table(out.stdout.decode())
    assert t["n_target"] == "2" and t["n_nontarget"] == "2" and float(t["eer"]) == pytest.approx(0.5)
    assert float(t["auc"]) == pytest.approx(0.75)


def test_cat_scores_pipe_with_voxceleb_trials_and_awk(tmp_path, labelled):
    path, tar, non = labelled
    lines = path.read_text().splitlines()
    (tmp_path / "s3.txt").write_text("".join("\t".join(line.split("\t")[:3]) + "\n" for line in lines[::-1]))
    (tmp_path / "t.txt").write_text("".join(f"{1 if l.endswith('	target') else 0} {l.split()[0]} {l.split()[1]}\n" for l in lines))
    out = sh(f"cat {tmp_path}/s3.txt | spkid score --trials {tmp_path}/t.txt | awk '$1==\"eer\"{{print $2}}'", check=True)
    assert float(out.stdout) == pytest.approx(metrics.eer(tar, non)[0], abs=1e-7)


def test_table_is_stable_and_json_has_the_same_numbers(labelled, capsys, monkeypatch):
    path, tar, non = labelled
    code, out, _ = run(["score", str(path), "--threshold", "0.3"], capsys, monkeypatch)
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()][:5] == ["metric", "n_target", "n_nontarget", "eer", "eer_threshold"]
    t = table(out)
    code, out, _ = run(["score", str(path), "--threshold", "0.3", "--json"], capsys, monkeypatch)
    rep = json.loads(out)
    assert code == 0 and rep == metrics.verification_report(tar, non, metrics.VerificationConfig(threshold=0.3))
    assert float(t["min_dcf"]) == pytest.approx(rep["min_dcf"], rel=1e-7) and float(t["far"]) == pytest.approx(rep["far"])


def test_bootstrap_columns_and_seed(labelled, capsys, monkeypatch):
    path, _, _ = labelled
    args = ["score", str(path), "--bootstrap", "50", "--seed", "3"]
    code, out, _ = run(args, capsys, monkeypatch)
    again = run(args, capsys, monkeypatch)[1]
    assert code == 0 and out == again
    rows = {line.split()[0]: line.split() for line in out.splitlines()}
    assert rows["metric"] == ["metric", "value", "ci95_low", "ci95_high"]
    assert float(rows["eer"][2]) <= float(rows["eer"][1]) <= float(rows["eer"][3])
    assert rows["n_target"][2:] == ["-", "-"]


def test_llr_scores(capsys, monkeypatch):
    code, out, _ = run(["score", "--llr", "--json"], capsys, monkeypatch, b"3 target\n-2 nontarget\n0.5 target\n1 nontarget\n")
    rep = json.loads(out)
    assert code == 0 and rep["cllr"] == pytest.approx(metrics.cllr(np.array([3, 0.5]), np.array([-2.0, 1.0])))
    assert rep["bayes_threshold"] == pytest.approx(np.log(99))


ID = [
    {"key": "c1", "label": "alice", "top": [{"speaker": "alice", "score": 0.9}, {"speaker": "bob", "score": 0.2}], "decision": "alice", "threshold": 0.5},
    {"key": "c2", "label": "bob", "top": [{"speaker": "alice", "score": 0.6}, {"speaker": "bob", "score": 0.5}], "decision": "alice", "threshold": 0.5},
    {"key": "c3", "label": None, "top": [{"speaker": "bob", "score": 0.3}, {"speaker": "alice", "score": 0.1}], "decision": "unknown", "threshold": 0.5},
]


def test_identification_table_confusion_and_json(capsys, monkeypatch):
    data = "".join(json.dumps(r) + "\n" for r in ID).encode()
    code, out, _ = run(["score", "--confusion", "--top-k", "2"], capsys, monkeypatch, data)
    assert code == 0
    t = table(out)
    assert float(t["top1_accuracy"]) == 0.5 and float(t["topk_accuracy"]) == 1.0 and t["k"] == "2"
    assert float(t["decision_accuracy"]) == pytest.approx(2 / 3)
    conf = out.split("\n\n")[1].splitlines()
    assert conf[0].split() == ["true\\decision", "alice", "unknown"]
    assert conf[1].split() == ["alice", "1", "0"] and conf[2].split() == ["bob", "1", "0"] and conf[3].split() == ["unknown", "0", "1"]
    code, out, _ = run(["score", "--confusion", "--json"], capsys, monkeypatch, data)
    rep = json.loads(out)
    assert rep["confusion"]["counts"] == [[1, 0], [1, 0], [0, 1]] and rep["k"] == 5 and rep["dir_at_far"] == 0.5


def test_plots_are_written(tmp_path, labelled, capsys, monkeypatch):
    path, _, _ = labelled
    for name in ("det.png", "det.svg"):
        code, _, _ = run(["score", str(path), "--plot", str(tmp_path / name)], capsys, monkeypatch)
        assert code == 0
    assert (tmp_path / "det.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "det.svg").read_bytes()[:2000]
    data = "".join(json.dumps(r) + "\n" for r in ID).encode()
    code, _, _ = run(["score", "--plot", str(tmp_path / "cmc.png")], capsys, monkeypatch, data)
    assert code == 0 and (tmp_path / "cmc.png").stat().st_size > 1000


def test_plot_titles_name_the_scores_file_or_else_the_plot_file(tmp_path, labelled):
    """The figure's title (also the file's Title metadata): the scores file's name; from stdin, the plot file's."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    path, _, _ = labelled
    sh(f"cat {path} | spkid score --plot {tmp_path}/det.png", check=True)
    assert Image.open(tmp_path / "det.png").text["Title"] == "det: 200 target, 800 non-target trials"
    sh(f"printf '0.9 target\\n0.2 nontarget\\n' | spkid score - --plot {tmp_path}/one.png", check=True)
    assert Image.open(tmp_path / "one.png").text["Title"] == "one: 1 target, 1 non-target trial"
    sh(f"spkid score {path} --plot {tmp_path}/det.svg", check=True)
    assert b"<dc:title>scores.txt: 200 target, 800 non-target trials</dc:title>" in (tmp_path / "det.svg").read_bytes()
    (tmp_path / "id.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ID))
    sh(f"spkid score {tmp_path}/id.jsonl --plot {tmp_path}/cmc.png", check=True)
    assert Image.open(tmp_path / "cmc.png").text["Title"] == "id.jsonl: 2 probes of enrolled speakers, 1 of others"


def test_plot_without_matplotlib_names_the_extra(tmp_path, labelled):
    path, _, _ = labelled
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        f"from spkid.cli import main; main(['score', {str(path)!r}, '--plot', {str(tmp_path / 'x.png')!r}])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr == "spkid score: error: plotting needs matplotlib; install the plot extra: pip install 'spkid[plot]'\n"


def test_score_never_imports_torch(tmp_path, labelled):
    path, _, _ = labelled
    code = (
        "import sys\nimport spkid.cli.score\nfrom spkid.cli import main\n"
        f"try:\n    main(['score', {str(path)!r}, '--bootstrap', '5', '--plot', {str(tmp_path / 'p.png')!r}])\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize(
    "stdin,args,code,message",
    [
        (b"0.9 target\nnan nontarget\n", [], 1, "<stdin>:2: score is nan; scores must be finite"),
        (b"0.9 target\n0.4 target\n", [], 1, "<stdin>: 2 target and 0 non-target trials; error rates need both classes"),
        (b"a b 0.9 target\n0.4 nontarget\n", [], 1, "<stdin>:2: 2 fields, but line 1 has 4 (ENROLL TEST SCORE LABEL); mixed formats"),
        (b"a b 0.9\n", [], 1, "ENROLL TEST SCORE lines carry no labels; give a trials file (--trials FILE)"),
        (b"", [], 1, "<stdin>: no scores (the input is empty)"),
        (b"0.9 yes\n", [], 1, "<stdin>:1: label 'yes' is not one of target, nontarget, 1, 0"),
        (b"0.9 target\n0.1 nontarget\n", ["--confusion"], 2, "--confusion applies to identification results"),
        (b'{"key": "a", "label": "x", "top": [{"speaker": "x", "score": 1}]}\n', ["--bootstrap", "9"], 2, "--bootstrap applies to verification scores"),
        (b"0.9 target\n0.1 nontarget\n", ["--plot", "det.jpg"], 1, "det.jpg: plot file name must end in .png, .svg, .pdf"),
    ],
)
def test_errors_are_one_line_with_exit_code(stdin, args, code, message, capsys, monkeypatch):
    got, out, err = run(["score", *args], capsys, monkeypatch, stdin)
    assert got == code and out == ""
    assert err.startswith("spkid score: error: ") and message in err and err.count("\n") == 1


def test_trial_file_errors(tmp_path, capsys, monkeypatch):
    (tmp_path / "t.txt").write_text("1 a b\n0 a c\n1 d e\n")
    code, _, err = run(["score", "--trials", str(tmp_path / "t.txt")], capsys, monkeypatch, b"a\tb\t0.9\n")
    assert code == 1
    assert err == f"spkid score: error: 2 of 3 trials in {tmp_path / 't.txt'} have no score in <stdin>, e.g. (a c), (d e)\n"
    code, _, err = run(["score", "--trials", str(tmp_path / "nope.txt")], capsys, monkeypatch, b"a\tb\t0.9\n")
    assert code == 1 and err == f"spkid score: error: {tmp_path / 'nope.txt'}: no such file\n"
    code, _, err = run(["score", str(tmp_path / "nope.txt")], capsys, monkeypatch)
    assert code == 1 and err == f"spkid score: error: {tmp_path / 'nope.txt'}: no such file\n"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--p-target", "1.5"], "--p-target"),
        (["--c-fa", "0"], "--c-fa"),
        (["-g", "enroll"], "-g/--gallery is only used with --calibrate"),
        (["--calibrate", "s.txt"], "store the calibration with either -g GALLERY or --model IN --model-out OUT"),
        (["--calibrate", "s.txt", "--model", "m.pt"], "either -g GALLERY or --model IN --model-out OUT"),
        (["s.txt", "--calibrate", "s.txt", "-g", "enroll"], "either as SCORES or with --calibrate, not both"),
        (["--far", "2"], "--far"),
    ],
)
def test_usage_errors_exit_2(args, message, capsys, monkeypatch):
    code, out, err = run(["score", *args], capsys, monkeypatch, b"0.9 target\n0.1 nontarget\n")
    assert code == 2 and out == "" and message in err


@pytest.fixture
def gallery(tmp_path: Path) -> Path:
    g = tmp_path / "enroll"
    g.mkdir()
    (g / "gallery.json").write_text(json.dumps({"format": "spkid-gallery/1", "model_sha256": "0" * 64, "times": {"enroll": "x"}}))
    return g


def test_calibrate_into_gallery(labelled, gallery, capsys, monkeypatch):
    path, tar, non = labelled
    code, out, err = run(["score", "--calibrate", str(path), "-g", str(gallery), "--far", "0.005"], capsys, monkeypatch)
    assert code == 0, err
    obj = json.loads((gallery / "gallery.json").read_text())
    assert obj["model_sha256"] == "0" * 64 and obj["times"] == {"enroll": "x"}
    cal = load_calibration(gallery)
    assert set(cal.thresholds) == {"eer", "min_dcf", "bayes", "far@0.005"} and cal.p_target == 0.01
    assert cal.fitted_on["file"] == str(path) and cal.fitted_on["n_target"] == 200
    assert cal.threshold("far").far <= 0.005
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert float(rows["eer"][1]) == pytest.approx(cal.thresholds["eer"].score) and rows["written"][1] == str(gallery / "gallery.json")
    assert float(rows["a"][1]) == pytest.approx(cal.a)
    # labels from a trials file, calibration read from stdin, JSON out
    code, out, _ = run(["score", "--calibrate", "-", "-g", str(gallery), "--json"], capsys, monkeypatch, path.read_bytes())
    assert code == 0 and json.loads(out)["a"] == pytest.approx(cal.a)


def test_calibrate_refuses_a_folder_without_gallery_json(tmp_path, labelled, capsys, monkeypatch):
    path, _, _ = labelled
    code, out, err = run(["score", "--calibrate", str(path), "-g", str(tmp_path)], capsys, monkeypatch)
    assert code == 1 and out == ""
    assert err == f"spkid score: error: {tmp_path}: not a gallery folder (no gallery.json); build one with `spkid enroll`\n"


def test_calibrate_into_a_model_copy(tmp_path, labelled, capsys, monkeypatch):
    import torch

    from spkid import modelfile

    path, _, _ = labelled
    spec = modelfile.ModelSpec(model={"name": "tdnn", "kwargs": {}}, features={"n_filters": 40})
    torch.save({"format": modelfile.FORMAT, "config": spec.to_json(), "state_dict": {"w": torch.ones(3)}}, tmp_path / "m.pt")
    args = ["score", "--calibrate", str(path), "--model", str(tmp_path / "m.pt"), "--model-out", str(tmp_path / "cal.pt"), "--json"]
    code, out, err = run(args, capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["written"] == str(tmp_path / "cal.pt")
    cal = modelfile.read_calibration(tmp_path / "cal.pt")
    assert cal is not None and cal.a > 0
    assert modelfile.read(tmp_path / "cal.pt")[0].model == spec.model


def test_stdin_terminal_is_refused():
    import os
    import pty

    master, slave = pty.openpty()
    try:
        out = subprocess.run(["spkid", "score"], stdin=slave, capture_output=True, text=True, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert out.returncode == 1
    assert out.stderr == "spkid score: error: no input: give a scores file or pipe it on stdin\n"

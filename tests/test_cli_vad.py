"""`spkid vad`: the seed-compatible (N, 2) array, spans, --segments, --trim, refusals, and real pipes."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import clip_files, sh

SR = 16000
LEAD = SR  # one second of silence before and after each utterance


def voice_span(x: np.ndarray) -> tuple[int, int]:
    """First and last sample of the 10 ms frames within 35 dB of the loud ones (the benchmark's reference rule)."""
    n = len(x) // 160
    e = 10 * np.log10(np.mean(x[: n * 160].reshape(n, 160) ** 2, axis=1) + 1e-12)
    on = np.flatnonzero(e > np.percentile(e, 95) - 35)
    return int(on[0]) * 160, int(on[-1] + 1) * 160


@pytest.fixture
def speech_list(tmp_path: Path) -> tuple[Path, list[tuple[int, int]]]:
    """Three real utterances (shipped clips), each with 1 s of near-silence around it, in a list; returns (list, voice spans)."""
    rng = np.random.default_rng(0)
    paths, spans = [], []
    for spk in ("19", "1867", "4853"):
        src = clip_files("probe", spk)[0]
        x, sr = sf.read(src, dtype="float32")
        y = np.concatenate([np.zeros(LEAD), x, np.zeros(LEAD)]) + 1e-4 * rng.standard_normal(len(x) + 2 * LEAD)
        p = tmp_path / "in" / spk / f"{spk}.wav"
        p.parent.mkdir(parents=True)
        sf.write(p, y, SR, subtype="PCM_16")
        paths.append(p)
        s, e = voice_span(x)
        spans.append((LEAD + s, LEAD + e))
    lst = tmp_path / "speech.txt"
    lst.write_text("".join(f"{p}\n" for p in paths))
    return lst, spans


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def test_seed_compatible_windows_from_a_list(speech_list, tmp_path):
    lst, spans = speech_list
    proc = sh(f"spkid vad {lst} 16000 > {tmp_path}/vad.npy", check=True)
    out = np.load(tmp_path / "vad.npy")
    assert out.dtype == np.int64 and out.shape == (3, 2)
    assert np.all(out[:, 1] - out[:, 0] == 16000)
    for (s, e), (vs, ve) in zip(out, spans):
        assert vs - 0.3 * SR <= s and e <= ve + 0.3 * SR  # the window lies on the voice
    assert b"warning" not in proc.stderr


def test_span_without_length_and_a_real_stdin_pipe(speech_list):
    lst, spans = speech_list
    out = load_npy(sh(f"cat {lst} | spkid vad - | cat", check=True).stdout)
    assert out.shape == (3, 2)
    for (s, e), (vs, ve) in zip(out, spans):
        # the silence around the utterance is not voice, and most of the utterance is (the reference rule also
        # counts a recording's low-level tail, 20-35 dB below the speech, which the detector may leave out)
        assert vs - 0.3 * SR <= s < vs + 0.3 * SR and e <= ve + 0.3 * SR and e - s > 0.6 * (ve - vs)


def test_file_shorter_than_length_gives_the_whole_file(tmp_path):
    x, _ = sf.read(clip_files("enroll", "1116")[0], dtype="float32")
    p = tmp_path / "short.wav"
    sf.write(p, x[: SR // 2 * 3], SR)  # 1.5 s
    out = load_npy(sh(f"spkid vad {p} 32000", check=True).stdout)
    assert out.tolist() == [[0, SR // 2 * 3]]


def test_silence_and_noise_get_zero_rows_and_a_warning(tmp_path, speech_list):
    lst, _ = speech_list
    rng = np.random.default_rng(1)
    sf.write(tmp_path / "silence.wav", np.zeros(2 * SR), SR)
    sf.write(tmp_path / "noise.wav", 0.05 * rng.standard_normal(3 * SR), SR)
    first = lst.read_text().splitlines()[0]
    mixed = tmp_path / "mixed.txt"
    mixed.write_text(f"{tmp_path}/silence.wav\n{first}\n{tmp_path}/noise.wav\n")
    proc = sh(f"spkid vad {mixed} 16000", check=True)
    out = load_npy(proc.stdout)
    assert out[0].tolist() == [0, 0] and out[2].tolist() == [0, 0] and out[1, 1] - out[1, 0] == 16000
    err = proc.stderr.decode()
    assert "silence.wav: no voice found" in err and "noise.wav: no voice found" in err


@pytest.mark.parametrize("case", ["stereo", "rate"])
def test_stereo_and_other_rates_are_refused_with_a_hint(tmp_path, case):
    x = 0.1 * np.random.default_rng(0).standard_normal(SR)
    p = tmp_path / f"{case}.wav"
    if case == "stereo":
        sf.write(p, np.stack([x, x], axis=1), SR)
    else:
        sf.write(p, x, 8000)
    proc = sh(f"spkid vad {p} > {tmp_path}/out.npy")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.startswith("spkid vad: error:") and "spkid convert" in err and str(p) in err
    assert len(err.strip().splitlines()) == 1
    if case == "rate":  # the file, the rate found and the command that fixes it
        assert err == f"spkid vad: error: {p}: sample rate 8000 Hz, expected 16000 Hz; run `spkid convert --rate 16000 -d DIR` first\n"


def test_segments_shape_and_shard_positions(speech_list):
    lst, spans = speech_list
    out = load_npy(sh(f"spkid vad --segments {lst}", check=True).stdout)
    assert out.dtype == np.int64 and out.ndim == 2 and out.shape[1] == 3
    assert set(out[:, 0].tolist()) == {0, 1, 2}
    assert np.all(out[:, 2] > out[:, 1])
    for i in range(3):
        s = out[out[:, 0] == i, 1:]
        assert np.all(s[1:, 0] > s[:-1, 1])  # sorted, disjoint
    shard = load_npy(sh(f"spkid vad --segments --shard 2/2 {lst}", check=True).stdout)
    assert shard.tolist() == out[out[:, 0] == 1].tolist()  # entry index is the position in the whole list
    parallel = load_npy(sh(f"spkid vad --segments -j 2 {lst}", check=True).stdout)
    assert parallel.tolist() == out.tolist()


def test_trim_writes_voiced_audio_and_the_new_list(speech_list, tmp_path):
    lst, spans = speech_list
    silent = tmp_path / "in" / "quiet" / "silence.wav"
    silent.parent.mkdir()
    sf.write(silent, np.zeros(SR), SR)
    full = tmp_path / "all.txt"
    full.write_text(lst.read_text() + f"{silent}\n")
    proc = sh(f"spkid vad --trim -d {tmp_path}/voiced < {full}", check=True)
    listed = [line.split("\t") for line in proc.stdout.decode().splitlines()]
    assert [label for _, label in listed] == ["19", "1867", "4853"]  # the silent file is left out, with a warning
    assert "silence.wav: no voice found" in proc.stderr.decode()
    assert proc.stderr.decode().endswith("left out of the list\nspkid vad: 3 files written, 1 without voice\n")
    again = sh(f"spkid vad --trim -d {tmp_path}/voiced < {full}", check=True)  # resumes: keeps what is there
    assert again.stdout == proc.stdout
    assert again.stderr.decode().endswith("spkid vad: 0 files written, 3 kept (already there; --overwrite redoes them), 1 without voice\n")
    segs = load_npy(sh(f"spkid vad --segments {lst}", check=True).stdout)
    for i, (path, label) in enumerate(listed):
        assert Path(path) == tmp_path / "voiced" / label / f"{label}.flac"
        y, sr = sf.read(path)
        s = segs[segs[:, 0] == i]
        assert sr == SR and len(y) == int(np.sum(s[:, 2] - s[:, 1]))
        assert len(y) < spans[i][1] - spans[i][0] + 0.5 * SR  # the 2 s of silence around the voice are gone


def test_sharded_trim_writes_the_whole_lists_layout(speech_list, tmp_path):
    """Shards without --root lay their files out below the whole list's common folder, as one run would: two shards
    never write the same path, and `cat` of their lists is the unsharded list."""
    lst, _ = speech_list
    whole = sh(f"spkid vad --trim -d {tmp_path}/one < {lst}", check=True).stdout.decode()
    parts = [sh(f"spkid vad --trim -d {tmp_path}/one --shard {i}/2 --overwrite < {lst}", check=True).stdout.decode()
             for i in (1, 2)]
    lines = whole.splitlines()
    assert sorted(parts[0].splitlines() + parts[1].splitlines()) == sorted(lines)
    assert parts[0].splitlines() == lines[0::2] and parts[1].splitlines() == lines[1::2]
    assert len({line.split("\t")[0] for line in lines}) == 3


@pytest.mark.parametrize("args", [["--trim"], ["--trim", "-d", "x", "16000"], ["--segments", "16000"], ["-d", "x"]])
def test_usage_errors_exit_2(wav_list, args):
    from typer.testing import CliRunner

    from spkid.cli import app

    result = CliRunner().invoke(app, ["vad", str(wav_list), *args])
    assert result.exit_code == 2, result.output


def test_skip_bad_keeps_rows_aligned(speech_list, tmp_path):
    lst, _ = speech_list
    bad = tmp_path / "bad.txt"
    bad.write_text(lst.read_text().splitlines()[0] + f"\n{tmp_path}/missing.wav\n")
    strict = sh(f"spkid vad {bad} 16000")
    assert strict.returncode == 1 and strict.stdout == b"" and "missing.wav" in strict.stderr.decode()
    lenient = sh(f"spkid vad --skip-bad {bad} 16000", check=True)
    out = load_npy(lenient.stdout)
    assert out.shape == (2, 2) and out[1].tolist() == [0, 0] and out[0, 1] - out[0, 0] == 16000


@pytest.mark.skipif(importlib.util.find_spec("spkid.cli.features") is None, reason="spkid features not written yet")
def test_trim_pipes_into_features(speech_list, tmp_path):
    lst, _ = speech_list
    proc = sh(f"spkid vad --trim -d {tmp_path}/v < {lst} | spkid features -d {tmp_path}/f", check=True)
    assert len(proc.stdout.decode().splitlines()) == 3


def test_vad_command_never_imports_torch(wav_list, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from spkid.cli import main\n"
        f"try:\n    main(['vad', '--segments', '-o', {str(tmp_path / 'o.npy')!r}, {str(wav_list)!r}])\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert np.load(tmp_path / "o.npy").shape[1] == 3


def test_model_option_runs_a_network_file_of_the_training_script(speech_list, tmp_path):
    """`-m FILE`: the networks of a scripts/train_vad.py file instead of the bundled ones (here embed's own
    network, a `spkid-vad/1` file): the segments spkid.vad gives with that file, for a list and for --trim with
    two jobs; a file that is not a usable VAD model is refused in one line before any audio is read, and
    `--engine silero` does not take it."""
    import json

    from spkid import vad

    lst, _ = speech_list
    own = vad.EMBED_MODEL_PATH
    paths = lst.read_text().split()
    want = [vad.segments(sf.read(p, dtype="float32")[0], SR, vad.VadConfig(), vad.VadModel(own)) for p in paths]
    got = load_npy(sh(f"spkid vad --segments -m {own} {lst}", check=True).stdout)
    assert got.tolist() == [[i, a, b] for i, segs in enumerate(want) for a, b in segs]
    bundled = load_npy(sh(f"spkid vad --segments {lst}", check=True).stdout)
    assert bundled.tolist() != got.tolist()  # the other networks do draw other edges
    proc = sh(f"spkid vad --trim -d {tmp_path / 'v'} -j 2 -m {own} {lst}", check=True)
    trimmed = [line.split("\t")[0] for line in proc.stdout.decode().splitlines()]
    assert [sf.info(p).frames for p in trimmed] == [int(sum(b - a for a, b in segs)) for segs in want]

    with np.load(own) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    np.save(tmp_path / "array.npy", np.zeros(3))
    np.savez(tmp_path / "no_meta.npz", **{k: v for k, v in arrays.items() if k != "meta"})
    np.savez(tmp_path / "pickled.npz", meta=np.array([{"format": "spkid-vad/1"}], dtype=object))
    np.savez(tmp_path / "other.npz", **dict(arrays, meta=np.array(json.dumps(dict(meta, format="x/1")))))
    np.savez(tmp_path / "short.npz", **{k: v for k, v in arrays.items() if k != "block2.w"})
    np.savez(tmp_path / "misfit.npz", **dict(arrays, **{"block2.w": arrays["block2.w"][:, :7]}))
    odd_hop = dict(meta, frontend=dict(meta["frontend"], hop=170))
    np.savez(tmp_path / "hop.npz", **dict(arrays, meta=np.array(json.dumps(odd_hop))))
    two = dict(meta, format="spkid-vad/2", members=[meta, meta], weights=[1.0])  # two networks, one weight
    np.savez(tmp_path / "weights.npz", meta=np.array(json.dumps(two)),
             **{f"m{i}.{k}": v for i in (0, 1) for k, v in arrays.items() if k != "meta"})
    (tmp_path / "text.npz").write_text("not a model\n")
    for name, why in (("array.npy", "not a VAD model"), ("no_meta.npz", "not a usable VAD model (KeyError"),
                      ("pickled.npz", "not a usable VAD model (ValueError"), ("other.npz", "format 'x/1' is not"),
                      ("short.npz", "not a usable VAD model (KeyError"), ("misfit.npz", "not a usable VAD model"),
                      ("hop.npz", "model hop 170 is not a multiple of 160"), ("weights.npz", "1 weights for 2 networks"),
                      ("text.npz", "cannot read the VAD model"), ("gone.npz", "cannot read the VAD model")):
        proc = sh(f"spkid vad --segments -m {tmp_path / name} {tmp_path / 'nowhere.wav'}")
        err = proc.stderr.decode()
        assert proc.returncode == 1 and proc.stdout == b"" and err.count("\n") == 1, (name, err)
        assert err.startswith(f"spkid vad: error: {tmp_path / name}: ") and why in err, (name, err)
    proc = sh(f"spkid vad --segments -m {own} --engine silero {lst}")
    assert proc.returncode == 2 and "--engine silero runs silero-vad's own" in proc.stderr.decode()

"""`spkid features`: files and list on stdin, features.json round trip, real pipes, VAD frames, refusals, --skip-bad."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from conftest import sh, synth_voice
from spkid.features import FeatureConfig, compute


def listed(proc) -> list[list[str]]:
    return [line.split("\t") for line in proc.stdout.decode().splitlines()]


def test_list_in_npy_out_with_config_and_labels(wav_list, speaker_dir, tmp_path):
    out = tmp_path / "feats"
    proc = sh(f"spkid features {wav_list} -d {out} --kind mfcc --n-filters 64 --n-ceps 20 --norm cmvn --window povey", check=True)
    rows = listed(proc)
    wavs = sorted(speaker_dir.rglob("*.wav"))
    assert [Path(p) for p, _ in rows] == [out / w.relative_to(speaker_dir).with_suffix(".npy") for w in wavs]
    assert [label for _, label in rows] == [w.parent.name for w in wavs]
    cfg = FeatureConfig.from_json(out / "features.json")
    assert cfg == FeatureConfig(kind="mfcc", n_filters=64, n_ceps=20, norm="cmvn", window="povey")
    for (p, _), w in zip(rows, wavs):
        feats = np.load(p)
        assert feats.dtype == np.float32 and feats.shape == (199, 20) and np.isfinite(feats).all()
        np.testing.assert_allclose(feats, compute(sf.read(w, dtype="float32")[0], cfg), atol=1e-4)
    assert proc.stderr == b"spkid features: 9 files written\n"
    again = sh(f"spkid features {wav_list} -d {out} --kind mfcc --n-filters 64 --n-ceps 20 --norm cmvn --window povey",
               check=True)
    assert listed(again) == rows  # a rerun lists every file, and says it wrote none
    assert again.stderr == b"spkid features: 0 files written, 9 kept (already there; --overwrite redoes them)\n"

    # a rerun with other settings would mix two configs in one folder
    again = sh(f"spkid features {wav_list} -d {out} --kind fbank")
    assert again.returncode == 1
    assert b"features.json was written with other settings (kind: 'mfcc' -> 'fbank'" in again.stderr
    redo = sh(f"spkid features {wav_list} -d {out} --kind fbank --overwrite", check=True)
    assert np.load(listed(redo)[0][0]).shape == (199, 40)
    assert FeatureConfig.from_json(out / "features.json") == FeatureConfig()


def test_real_pipe_from_convert_and_stdin_dash(wav_list, tmp_path):
    proc = sh(f"cat {wav_list} | spkid convert -d {tmp_path}/conv | spkid features - -d {tmp_path}/f --log ln | cat",
              check=True)
    rows = listed(proc)
    assert len(rows) == 9 and all(p.endswith(".npy") and Path(p).is_file() for p, _ in rows)
    assert {label for _, label in rows} == {"alice", "bob", "carol"}
    assert np.load(rows[0][0]).shape == (199, 40)
    # a feature list is no audio list: the next command fails naming the file, and the pipe reports it
    bad = sh(f"spkid features {wav_list} -d {tmp_path}/f2 | spkid features -d {tmp_path}/g")
    assert bad.returncode == 1 and b"spkid features: error: " in bad.stderr and b"alice_0.npy: " in bad.stderr


def test_digital_silence_and_vad_frames(tmp_path):
    x = synth_voice(150.0, (700.0, 1200.0, 2500.0), 1.0)
    x[4000:12000] = 0
    (tmp_path / "a").mkdir()
    sf.write(tmp_path / "a" / "speech.wav", x, 16000, subtype="PCM_16")
    sf.write(tmp_path / "a" / "silence.wav", np.zeros(16000), 16000, subtype="PCM_16")
    lst = tmp_path / "l.txt"
    lst.write_text(f"{tmp_path}/a/speech.wav\n{tmp_path}/a/silence.wav\n")
    for norm in ("none", "sliding"):
        rows = listed(sh(f"spkid features {lst} -d {tmp_path}/{norm} --norm {norm} --append-energy", check=True))
        for p, _ in rows:
            feats = np.load(p)
            assert feats.shape == (99, 41) and np.isfinite(feats).all()

    np.save(tmp_path / "vad.npy", np.array([[1600, 4800], [0, 8000]], dtype=np.int64))
    rows = listed(sh(f"spkid features {lst} -d {tmp_path}/v --vad {tmp_path}/vad.npy", check=True))
    assert [np.load(p).shape[0] for p, _ in rows] == [20, 49]  # centres 160 i + 200 inside the ranges
    np.save(tmp_path / "segs.npy", np.array([[0, 1600, 4800], [0, 12000, 16000]], dtype=np.int64))
    proc = sh(f"spkid features {lst} -d {tmp_path}/s --vad {tmp_path}/segs.npy --skip-bad")
    assert proc.returncode == 0 and len(listed(proc)) == 1  # silence.wav has no segment: skipped, warned
    assert b"silence.wav: no voiced frames" in proc.stderr
    assert np.load(listed(proc)[0][0]).shape == (45, 40)
    np.save(tmp_path / "short.npy", np.array([[0, 100]], dtype=np.int64))
    proc = sh(f"spkid features {lst} -d {tmp_path}/x --vad {tmp_path}/short.npy")
    assert proc.returncode == 1 and b"1 VAD rows for 2 list entries" in proc.stderr


def test_refusals_and_skip_bad(tmp_path):
    x = synth_voice(150.0, (700.0, 1200.0), 0.5)
    d = tmp_path / "in"
    d.mkdir()
    sf.write(d / "good.wav", x, 16000)
    sf.write(d / "stereo.wav", np.stack([x, x], axis=1), 16000)
    sf.write(d / "r8k.wav", x, 8000)
    proc = sh(f"spkid features {d}/good.wav {d}/stereo.wav -d {tmp_path}/o1")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "spkid features: error:" in err and "stereo.wav: has 2 channels, expected mono; run `spkid convert` first" in err
    assert not list((tmp_path / "o1").rglob("*.npy"))  # strict: nothing half-done left behind
    proc = sh(f"spkid features {d}/r8k.wav -d {tmp_path}/o2")
    assert proc.returncode == 1 and proc.stderr.decode() == (
        f"spkid features: error: {d}/r8k.wav: sample rate 8000 Hz, expected 16000 Hz; "
        "run `spkid convert --rate 16000 -d DIR` first\n")

    proc = sh(f"spkid features {d}/good.wav {d}/stereo.wav {d}/r8k.wav -d {tmp_path}/o3 --skip-bad")
    assert proc.returncode == 0
    assert [Path(p).name for p, _ in listed(proc)] == ["good.npy"]
    assert b"done 1/3 (2 skipped)" in proc.stderr and proc.stderr.endswith(b"spkid features: 1 file written, 2 skipped\n")
    proc = sh(f"spkid features {d}/stereo.wav {d}/r8k.wav -d {tmp_path}/o4 --skip-bad")
    assert proc.returncode == 1 and b"all 2 items failed" in proc.stderr
    assert sh(f"spkid features {d}/r8k.wav -d {tmp_path}/o5 --rate 8000 -n 24", check=True).stdout

    usage = sh(f"spkid features {d}/good.wav -d {tmp_path}/o6 --nfft 256")
    assert usage.returncode == 2 and b"truncate frames" in usage.stderr
    proc = sh(f"spkid features {d}/good.wav -d {tmp_path}/o7 --model {tmp_path}/nope.pt")
    assert proc.returncode == 1 and proc.stderr.decode().strip() == \
        f"spkid features: error: {tmp_path}/nope.pt: no such model file or folder, nor a model of `spkid models` (give a " \
        "`spkid train` output, a published model folder, a catalogue name, or `resemblyzer`)"
    assert not (tmp_path / "o7").exists()


def test_shard_jobs_and_segments_index_the_whole_list(wav_list, tmp_path):
    # (M, 3) rows name positions in the whole list; shard 2/3 takes positions 1, 4, 7 (7 has no segment)
    segs = np.array([[4, 0, 8000], [1, 1600, 4800], [0, 0, 32000], [1, 12000, 16000]], dtype=np.int64)
    np.save(tmp_path / "segs.npy", segs)
    proc = sh(f"spkid features {wav_list} -d {tmp_path}/f --vad {tmp_path}/segs.npy --shard 2/3 -j 2 --skip-bad")
    assert proc.returncode == 0, proc.stderr
    rows = listed(proc)
    wavs = wav_list.read_text().split()
    assert [Path(p).stem for p, _ in rows] == [Path(wavs[1]).stem, Path(wavs[4]).stem]
    assert [np.load(p).shape[0] for p, _ in rows] == [45, 49]
    assert f"{Path(wavs[7]).name}: no voiced frames".encode() in proc.stderr

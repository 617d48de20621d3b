"""`spkid convert`: every input format and rate to mono 16 kHz PCM, anti-aliasing, layout, resume, bad input."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import sh, synth_voice

RATES = (8000, 22050, 44100, 48000)
SF_FORMATS = {  # suffix -> (soundfile format, subtype)
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
    ".aiff": ("AIFF", "PCM_16"),
    ".WAV": ("NIST", "PCM_16"),  # TIMIT: NIST SPHERE behind an upper-case .WAV
}
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (.ci/run installs it)")


def voice(rate: int, channels: int, seconds: float = 1.0) -> np.ndarray:
    x = synth_voice(150.0, (600.0, 1700.0), seconds, sr=rate)
    return x if channels == 1 else np.stack([x, 0.5 * x], axis=1)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Every format x rate x mono/stereo under tmp_path/in/<format>/..."""
    root = tmp_path / "in"
    for suffix, (fmt, subtype) in SF_FORMATS.items():
        for rate in RATES:
            if fmt == "MP3" and rate == 22050:
                continue  # MPEG-1 layer III has no 22.05 kHz mode in libsndfile's encoder; 8 kHz is MPEG-2.5
            for ch in (1, 2):
                d = root / fmt.lower()
                d.mkdir(parents=True, exist_ok=True)
                sf.write(d / f"r{rate}_c{ch}{suffix}", voice(rate, ch), rate, format=fmt, subtype=subtype)
    return root


def test_every_format_rate_and_layout(corpus: Path, tmp_path: Path):
    files = sorted(str(p) for p in corpus.rglob("*.*"))
    out = tmp_path / "out"
    proc = sh(f"printf '%s\\n' {' '.join(files)} | spkid convert -d {out} -j 2", check=True)
    listed = [line.split("\t") for line in proc.stdout.decode().splitlines()]
    assert len(listed) == len(files)
    for src, (dst, label) in zip(files, listed):
        rel = Path(src).relative_to(corpus)
        assert Path(dst) == out / rel.with_suffix(".flac")
        assert label == rel.parent.name
        info = sf.info(dst)
        assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
        assert abs(info.duration - 1.0) < 0.08, (src, info.duration)  # mp3/ogg add codec padding
        y, _ = sf.read(dst)
        assert np.abs(y).max() > 0.05


def test_wav_output_and_rate_option(corpus: Path, tmp_path: Path):
    src = corpus / "flac" / "r44100_c2.flac"
    proc = sh(f"spkid convert {src} -d {tmp_path / 'o'} --format wav --rate 8000", check=True)
    dst = proc.stdout.decode().split("\t")[0]
    assert dst.endswith("r44100_c2.wav")
    info = sf.info(dst)
    assert (info.samplerate, info.channels, info.format, info.subtype) == (8000, 1, "WAV", "PCM_16")


def test_stereo_is_downmixed_by_averaging(tmp_path: Path):
    left = 0.4 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    sf.write(tmp_path / "s.wav", np.stack([left, np.zeros_like(left)], 1), 16000, subtype="PCM_16")
    sh(f"spkid convert {tmp_path / 's.wav'} -d {tmp_path / 'o'}", check=True)
    y, sr = sf.read(tmp_path / "o" / "s.flac")
    assert y.ndim == 1 and np.allclose(y, left / 2, atol=2e-4)


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
def test_resampling_does_not_alias(rate: int, tmp_path: Path):
    """Tones above the new 8 kHz Nyquist must be attenuated by >= 60 dB, the in-band tone kept."""
    t = np.arange(2 * rate) / rate
    high = [f for f in (9300.0, 10600.0, 13100.0, 17900.0) if f < rate / 2 - 200]
    x = 0.2 * np.sin(2 * np.pi * 500 * t) + sum(0.2 * np.sin(2 * np.pi * f * t) for f in high)
    sf.write(tmp_path / "tones.wav", x, rate, subtype="PCM_24")
    sh(f"spkid convert {tmp_path / 'tones.wav'} -d {tmp_path / 'o'} --format wav", check=True)
    y, sr = sf.read(tmp_path / "o" / "tones.wav")
    y = y[2000:-2000]
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y)))) / (np.hanning(len(y)).sum() / 2)
    freqs = np.fft.rfftfreq(len(y), 1 / sr)
    inband = spec[np.abs(freqs - 500) < 20].max()
    assert 20 * np.log10(inband / 0.2) > -0.1
    for f in high:
        alias = abs(((f + sr / 2) % sr) - sr / 2)  # where a tone at f folds to
        leaked = spec[np.abs(freqs - alias) < 20].max()
        assert 20 * np.log10(leaked / 0.2) < -60, (f, alias, 20 * np.log10(leaked / 0.2))


@needs_ffmpeg
def test_m4a_through_ffmpeg(tmp_path: Path):
    sf.write(tmp_path / "a.wav", voice(44100, 2), 44100)
    m4a = tmp_path / "spk" / "a.m4a"
    m4a.parent.mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / "a.wav"), "-c:a", "aac", str(m4a)], check=True)
    proc = sh(f"find {tmp_path / 'spk'} -name '*.m4a' | spkid convert -d {tmp_path / 'flac'}", check=True)
    assert proc.stdout.decode() == f"{tmp_path / 'flac' / 'a.flac'}\tspk\n"
    info = sf.info(tmp_path / "flac" / "a.flac")
    assert (info.samplerate, info.channels) == (16000, 1) and abs(info.duration - 1.0) < 0.06


def test_m4a_without_ffmpeg_names_it(tmp_path: Path):
    (tmp_path / "a.m4a").write_bytes(b"\0" * 100)
    proc = sh(f"PATH={Path(shutil.which('spkid')).parent} spkid convert {tmp_path / 'a.m4a'} -d {tmp_path / 'o'}")
    assert proc.returncode == 1
    assert "needs ffmpeg on PATH" in proc.stderr.decode()


def bad_inputs(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    (d / "empty.wav").write_bytes(b"")
    (d / "text.wav").write_text("this is not audio\n")
    sf.write(d / "full.flac", voice(16000, 1, 2.0), 16000)
    data = (d / "full.flac").read_bytes()
    (d / "truncated.flac").write_bytes(data[: len(data) // 3])
    (d / "folder.wav").mkdir()
    return {
        "missing": d / "missing.wav",
        "empty": d / "empty.wav",
        "text": d / "text.wav",
        "truncated": d / "truncated.flac",
        "directory": d / "folder.wav",
    }


@pytest.mark.parametrize("case,message", [
    ("missing", "no such file"),
    ("empty", "empty file"),
    ("text", "cannot decode audio"),
    ("truncated", "cannot decode audio"),
    ("directory", "no audio files below this folder"),  # a folder argument expands to its audio files
])
def test_bad_input_one_line_exit_1_no_output(tmp_path: Path, speaker_dir: Path, case: str, message: str):
    bad = bad_inputs(tmp_path / "bad")[case]
    good = sorted(speaker_dir.rglob("*.wav"))[:2]
    out = tmp_path / "out"
    proc = sh(f"spkid convert {good[0]} {bad} {good[1]} -d {out} --root {tmp_path}")
    err = proc.stderr.decode().strip()
    assert proc.returncode == 1, err
    assert err.startswith("spkid convert: error: ") and str(bad) in err and message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert proc.stdout == b""
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True


def test_skip_bad_converts_the_good_and_counts_the_bad(tmp_path: Path, speaker_dir: Path):
    bads = bad_inputs(tmp_path / "bad")
    folder = bads.pop("directory")  # not an item: a folder argument without audio is a usage error, --skip-bad or not
    proc = sh(f"spkid convert {speaker_dir} {folder} -d {tmp_path / 'out0'} --skip-bad")
    assert proc.returncode == 1 and f"{folder}: no audio files below this folder" in proc.stderr.decode()
    good = sorted(speaker_dir.rglob("*.wav"))
    args = " ".join(map(str, [*good, *bads.values()]))
    proc = sh(f"spkid convert {args} -d {tmp_path / 'out'} --root {tmp_path} --skip-bad -j 2")
    assert proc.returncode == 0
    assert len(proc.stdout.decode().splitlines()) == len(good)
    err = proc.stderr.decode()
    assert f"done {len(good)}/{len(good) + len(bads)} ({len(bads)} skipped)" in err
    assert err.endswith(f"spkid convert: {len(good)} files written, {len(bads)} skipped\n")
    only_bad = " ".join(map(str, bads.values()))
    proc = sh(f"spkid convert {only_bad} -d {tmp_path / 'out2'} --skip-bad")
    assert proc.returncode == 1 and f"all {len(bads)} items failed" in proc.stderr.decode()


def test_resume_shard_and_overwrite(tmp_path: Path, wav_list: Path):
    out = tmp_path / "out"
    n = len(wav_list.read_text().splitlines())
    parts = [sh(f"spkid convert {wav_list} -d {out} --shard {i}/3", check=True).stdout for i in (1, 2, 3)]
    proc = sh(f"spkid convert {wav_list} -d {out}", check=True)
    whole = proc.stdout.decode().splitlines()
    assert len(whole) == n and sorted(whole) == sorted(b"".join(parts).decode().splitlines())
    assert proc.stderr.decode() == f"spkid convert: 0 files written, {n} kept (already there; --overwrite redoes them)\n"
    victim = Path(whole[0].split("\t")[0])
    victim.write_bytes(b"sentinel")  # kept: existing outputs are skipped, so a rerun resumes
    sh(f"spkid convert {wav_list} -d {out}", check=True)
    assert victim.read_bytes() == b"sentinel"
    proc = sh(f"spkid convert {wav_list} -d {out} --overwrite", check=True)
    assert sf.info(victim).samplerate == 16000
    assert proc.stderr.decode() == f"spkid convert: {n} files written\n" and proc.stdout.decode().splitlines() == whole
    for line in whole[1:]:
        Path(line.split("\t")[0]).unlink()
    proc = sh(f"spkid convert {wav_list} -d {out}", check=True)
    assert proc.stderr.decode() == f"spkid convert: {n - 1} files written, 1 kept (already there; --overwrite redoes it)\n"
    Path(whole[0].split("\t")[0]).unlink()
    proc = sh(f"spkid convert {wav_list} -d {out} --shard 1/{n}", check=True)
    assert proc.stderr.decode() == "spkid convert: 1 file written\n" and proc.stdout.decode().splitlines() == whole[:1]


def test_labels_are_carried_from_the_list(tmp_path: Path, speaker_dir: Path):
    src = sorted(speaker_dir.rglob("*.wav"))[0]
    proc = sh(f"printf '{src}\\tjohn\\n' | spkid convert -d {tmp_path / 'o'}", check=True)
    assert proc.stdout.decode().endswith("\tjohn\n")

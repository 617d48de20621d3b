"""Audio I/O: read any format to float32, downmix, resample with an anti-aliasing polyphase filter, write FLAC/WAV.

soundfile (libsndfile) reads WAV, FLAC, OGG/Vorbis, MP3, AIFF and NIST SPHERE (TIMIT's `.WAV`). Containers it
cannot read (m4a, aac, mp4, opus, webm, wma) are decoded by an `ffmpeg` subprocess when one is on PATH.
Every failure is a `SpkidError` naming the file. Audio held in memory (stdin's bytes) is read as a `Clip`, and
named pipes (`/dev/stdin`, `<(arecord ...)`) are read whole first: `read` accepts a path or a Clip, and so does
every reader built on it (`load`, `load_expected`, `load_segment`, `utterance.Preparer.prepare_file`).

A Kaldi `wav.scp` piped command (`UTT CMD |`) is run here, and only here: `source(entry)` runs it for an entry that
`lists.kaldi_entries` marked `command=True`, which it does only when the user passed `--allow-commands`. The
permission is a field of the entry, so it reaches `-j` worker processes with the entries they are given; nothing
else (no global, no environment variable) makes spkid run a command.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

from spkid.errors import SpkidError
from spkid.fileio import atomic_path
from spkid.lists import FFMPEG_SUFFIXES, LIST_SUFFIXES, Entry, plural, printable

FORMATS = {"flac": ("FLAC", ".flac"), "wav": ("WAV", ".wav")}


class AudioError(SpkidError):
    """An audio file that cannot be read or written."""


@dataclass(frozen=True)
class Clip:
    """Encoded audio held in memory, e.g. stdin's bytes (`spkid.streams.stdin_audio`): `name` names it in messages,
    `format` is what `sniff` found (None: unknown, libsndfile guesses)."""

    data: bytes = field(repr=False)
    name: str = "<stdin>"
    format: str | None = None

    def __str__(self) -> str:
        return self.name


def sniff(head: bytes) -> str | None:
    """The audio format that the first bytes of a stream announce, by magic bytes: "wav" (RIFF/RF64/BW64 + WAVE),
    "flac" (fLaC), "ogg" (OggS), "mp3" (an ID3v2 tag or an MPEG audio frame sync); None for anything else (a text
    list, a `.npy` record). Needs 12 bytes to be sure; a shorter `head` that agrees with a signature so far counts
    as that format (a list never starts so: `fLaC`+NUL, `OggS`+NUL, `ID3`+version byte 2-4 and 0xFF are not text)."""
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and b"WAVE".startswith(head[8:12]):
        return "wav"
    if head[:4] == b"fLaC" and (len(head) < 5 or head[4] & 0x7F == 0):  # STREAMINFO comes first
        return "flac"
    if head[:4] == b"OggS" and (len(head) < 5 or head[4] == 0):  # stream structure version 0
        return "ogg"
    if head[:3] == b"ID3" and (len(head) < 4 or head[3] in (2, 3, 4)):
        return "mp3"
    if head[:1] == b"\xff" and (len(head) < 2 or _mpeg_sync(head[1])) and head[:2] != b"\xff\xfe":  # UTF-16 BOM
        return "mp3"
    return None


def _mpeg_sync(b: int) -> bool:
    """The second byte of an MPEG audio frame header: 3 more sync bits, a version that is not reserved (01) and a
    layer that is not 00 (ADTS AAC has 00; libsndfile does not read it)."""
    return b & 0xE0 == 0xE0 and (b >> 3) & 3 != 1 and (b >> 1) & 3 != 0


def _read_clip(clip: Clip) -> tuple[np.ndarray, int]:
    if not clip.data:
        raise AudioError(f"{clip.name}: empty, no audio")
    data = _streamed_wav(clip.data) if clip.format == "wav" else clip.data
    try:
        x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, MemoryError) as e:
        what = f"{clip.format.upper()} " if clip.format else ""
        why = getattr(e, "error_string", "") or _short(e)  # libsndfile's own words, not the BytesIO's repr
        raise AudioError(f"{clip.name}: cannot decode {what}audio ({why.rstrip('.')})") from None
    return _checked(Path(clip.name), x, int(sr))


def _streamed_wav(data: bytes) -> bytes:
    """WAV bytes with the RIFF and data chunk sizes set to what is there, when a writer that could not seek back
    (a pipe: `arecord`, `sox ... -t wav -`) left them 0 or too large; libsndfile reads no samples from a 0."""
    if data[:4] != b"RIFF" or len(data) < 12:
        return data
    pos = 12
    while pos + 8 <= len(data):
        tag, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if tag == b"data":
            have = len(data) - pos - 8
            if size == 0 or size > have:
                out = bytearray(data)
                out[4:8] = struct.pack("<I", min(len(data) - 8, 0xFFFFFFFF))
                out[pos + 4 : pos + 8] = struct.pack("<I", min(have - have % 2, 0xFFFFFFFF))
                return bytes(out)
            return data
        pos += 8 + size + (size & 1)
    return data


def read(path: str | Path | Clip) -> tuple[np.ndarray, int]:
    """Decode `path` (a file, a named pipe, or a `Clip` in memory) to float32 `(samples, channels)` in [-1, 1] and
    its sample rate (Hz)."""
    if isinstance(path, Clip):
        return _read_clip(path)
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, expected an audio file")
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if not path.is_file() and path.suffix.lower() not in FFMPEG_SUFFIXES:
        # a pipe or a device (`/dev/stdin`, `<(arecord ...)`): libsndfile cannot seek in it; read it whole
        try:
            data = path.read_bytes()
        except OSError as e:
            raise AudioError(f"{path}: cannot read ({e.strerror or e})") from None
        return _read_clip(Clip(data, str(path), sniff(data[:12])))
    if path.suffix.lower() in LIST_SUFFIXES:
        raise AudioError(f"{path}: is a list file, not audio; a list names audio files, not other lists")
    if path.suffix.lower() in FFMPEG_SUFFIXES:
        return _read_ffmpeg(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        if path.stat().st_size == 0:
            raise AudioError(f"{path}: empty file") from None
        if shutil.which("ffmpeg") and path.suffix.lower() not in (".flac", ".wav", ".aiff", ".aif", ".sph"):
            return _read_ffmpeg(path)
        raise AudioError(f"{path}: cannot decode audio ({_short(e)})") from None
    except (RuntimeError, ValueError, TypeError, MemoryError) as e:
        raise AudioError(f"{path}: cannot decode audio ({_short(e)})") from None
    return _checked(path, data, int(sr))


COMMAND_TIMEOUT_S = 600.0  # a wav.scp command still running after 10 minutes is taken to be stuck
COMMAND_MAX_BYTES = 2 << 30  # 2 GiB of output (18 h of 16 kHz 16-bit mono): read whole into memory


def source(entry: Entry) -> str | Clip:
    """What to decode for a list entry: its path, or, for a `wav.scp` piped command (a `lists.KaldiEntry` with
    `command=True`, made only under `--allow-commands`), the `Clip` of what that command writes (`run_command`).
    The segments of one piped recording share one run when they come one after another."""
    if not getattr(entry, "command", False):
        return entry.path
    return run_command(entry.path, entry.key, keep=getattr(entry, "start", None) is not None)


_last_run: tuple[str, Clip] | None = None  # the last command's output, kept for the next segment of its recording


def run_command(command: str, name: str, *, keep: bool = False, timeout: float = COMMAND_TIMEOUT_S,
                max_bytes: int = COMMAND_MAX_BYTES) -> Clip:
    """Run a `wav.scp` piped command (`CMD` of `UTT CMD |`) as Kaldi does, with `sh -c CMD` in the current
    folder, and return the audio it writes to stdout (WAV or anything libsndfile reads) as a `Clip` named after
    `name` (the utterance id). stdin is closed (/dev/null); stdout is read whole, at most `max_bytes`; stderr is
    kept for the message. A non-zero exit, a signal, no output, more than `max_bytes` or more than `timeout`
    seconds is one `AudioError`: `UTT: command `CMD` failed (exit N: its last stderr line)`; the command's whole
    process group is killed on a timeout, an overflow or Ctrl-C. `keep`: remember this output, and give it back
    for the same command next time without running it again (the segments of one recording)."""
    global _last_run
    if keep and _last_run is not None and _last_run[0] == command:
        return _last_run[1]
    _last_run = None
    what = f"{printable(name)}: command `{printable(command)}`"
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=err, start_new_session=True)
        except OSError as e:
            raise AudioError(f"{what} could not start ({e.strerror or e})") from None
        fired = threading.Event()
        timer = threading.Timer(timeout, lambda: (fired.set(), _kill_group(proc)))
        timer.start()
        chunks, size, over = [], 0, False
        try:
            while chunk := proc.stdout.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    over = True
                    _kill_group(proc)
                    break
                chunks.append(chunk)
            code = proc.wait()
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
        finally:
            timer.cancel()
            proc.stdout.close()
        err.seek(max(0, err.seek(0, os.SEEK_END) - 4096))
        tail = [ln.strip() for ln in err.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    last = f": {printable(tail[-1])}" if tail else ""
    if over:
        limit = f"{max_bytes / (1 << 30):g} GiB" if max_bytes >= 1 << 30 else plural(max_bytes, "byte")
        raise AudioError(f"{what} wrote more than {limit}, the most spkid reads from a command; write the "
                         "recording to a file and list its path")
    if fired.is_set() and code != 0:
        raise AudioError(f"{what} failed (no end after {timeout:g} s{last})")
    if code != 0:
        status = f"killed by signal {-code}" if code < 0 else f"exit {code}"
        raise AudioError(f"{what} failed ({status}{last})")
    data = b"".join(chunks)
    if not data:
        raise AudioError(f"{what} failed (exit 0, but it wrote no audio{last})")
    fmt = sniff(data[:12])
    clip = Clip(_streamed_wav(data) if fmt == "wav" else data,
                f"{printable(name)}: the output of `{printable(command)} |`", fmt)
    if keep:
        _last_run = (command, clip)
    return clip


def _kill_group(proc: subprocess.Popen) -> None:
    """End a command started in its own session, with every process of its pipeline."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _checked(path: Path, data: np.ndarray, sr: int) -> tuple[np.ndarray, int]:
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no samples")
    check_samples(data, path)
    return data, sr


MAX_SAMPLE = 65536.0  # |sample| above this is not audio: float audio lies in [-1, 1], int16-scaled floats in ±32768


def check_samples(x: np.ndarray, path: str | Path, offset: int = 0) -> None:
    """Refuse NaN, infinite or absurd (|x| > MAX_SAMPLE) samples: the one check every reader of audio goes through
    (`read`, the streamed `features.compute_file`, training crops). `offset`: index of x's first sample in the file.

    Float WAV/AIFF/ffmpeg data can hold any float32; 1e30 overflows the power spectrum to inf and the embedding to
    NaN. A float64 sum is finite exactly when every sample is (float32 values cannot overflow it); it and max/min
    need no whole-signal temporary."""
    if x.size == 0 or x.dtype.kind != "f":
        return
    bad = None
    if not np.isfinite(np.sum(x, dtype=np.float64)):
        first = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0])  # only on the error path
        bad = f"NaN or infinite samples, the first at sample {offset + first}"
    else:
        peak = max(float(np.max(x)), -float(np.min(x)))
        if peak > MAX_SAMPLE:
            bad = f"samples reach {peak:.3g}; audio samples lie in [-1, 1]"
    if bad is not None:
        raise AudioError(f"{path}: invalid sample values ({bad}); the file is damaged or not audio")


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__


def _read_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise AudioError(f"{path}: reading {path.suffix} needs ffmpeg on PATH (e.g. `apt-get install ffmpeg`)")
    probe = subprocess.run(
        [exe, "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, text=True, errors="replace"
    )
    rate, channels = _parse_stream_info(probe.stderr)
    if rate is None:
        raise AudioError(f"{path}: ffmpeg found no audio stream ({_ffmpeg_reason(probe.stderr)})")
    proc = subprocess.run(
        [exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path), "-map", "0:a:0",
         "-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(channels), "-"],
        capture_output=True,
    )
    if proc.returncode != 0:
        raise AudioError(f"{path}: ffmpeg could not decode it ({_ffmpeg_reason(proc.stderr.decode(errors='replace'))})")
    data = np.frombuffer(proc.stdout, dtype="<f4")
    return _checked(path, data[: data.size - data.size % channels].reshape(-1, channels).astype(np.float32, copy=False), rate)


def _parse_stream_info(text: str) -> tuple[int | None, int]:
    import re

    for line in text.splitlines():
        if "Audio:" in line:
            m = re.search(r"(\d+) Hz", line)
            if not m:
                continue
            rate = int(m.group(1))
            if "mono" in line:
                ch = 1
            elif "stereo" in line:
                ch = 2
            else:
                c = re.search(r"(\d+) channels", line)
                ch = int(c.group(1)) if c else 2
                if "5.1" in line:
                    ch = 6
                elif "7.1" in line:
                    ch = 8
            return rate, ch
    return None, 0


def _ffmpeg_reason(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def downmix(data: np.ndarray) -> np.ndarray:
    """`(samples, channels)` -> mono `(samples,)` by averaging channels."""
    if data.shape[1] == 1:
        x = data[:, 0]  # contiguous: no copy of a long recording unless the buffer is read-only (ffmpeg's)
        return x if x.flags.writeable and x.flags.c_contiguous else x.copy()
    # a matrix-vector product: several times faster than a strided .mean(axis=1) on (samples, channels)
    return data.astype(np.float32, copy=False) @ np.full(data.shape[1], 1 / data.shape[1], np.float32)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample mono float32 with scipy's polyphase filter, anti-aliased at the lower Nyquist frequency.

    The low-pass is a Kaiser-window FIR designed for 70 dB stopband attenuation with the transition band
    from 85 % to 100 % of the lower Nyquist: everything above the new Nyquist is attenuated by at least 60 dB
    (scipy's default filter leaves aliases near -25 dB just above it), and the band to 0.85 x Nyquist is flat
    (6.8 kHz at 16 kHz). A narrower transition costs filter length: 80 dB from 90 % doubles the time.
    """
    if rate_in == rate_out:
        return x
    from scipy.signal import resample_poly

    up, down, h = _lowpass(rate_in, rate_out)
    y = resample_poly(x.astype(np.float32, copy=False), up, down, window=h)
    return y.astype(np.float32, copy=False)


MIN_RATE = 1000  # Hz, as `spkid convert --rate`
MAX_TAPS = 1 << 22  # 4 M taps: every common rate pair needs far fewer (44.1 kHz -> 16 kHz: 25 k; 22254 Hz: 640 k)


@functools.lru_cache(maxsize=16)
def _lowpass(rate_in: int, rate_out: int) -> tuple[int, int, np.ndarray]:
    from scipy.signal import firwin, kaiserord

    if min(rate_in, rate_out) < MIN_RATE:  # a damaged header's 1 Hz would be upsampled 16000-fold
        raise AudioError(f"cannot resample {rate_in} Hz to {rate_out} Hz: rates under {MIN_RATE} Hz are not audio of speech")
    frac = Fraction(rate_out, rate_in)
    up, down = frac.numerator, frac.denominator
    max_rate = max(up, down)
    numtaps, beta = kaiserord(70.0, 0.15 / max_rate)
    if numtaps > MAX_TAPS:  # e.g. 999983 Hz: a 58 M-tap filter (minutes, GBs); a corrupt header's rate: TBs
        raise AudioError(f"cannot resample {rate_in} Hz to {rate_out} Hz: their exact ratio {up}/{down} needs a "
                         f"{numtaps:,}-tap filter; convert it to a common rate first (sox, ffmpeg)")
    # float32 taps keep resample_poly in float32: float64 ones make it copy the whole signal to float64
    h = firwin(numtaps | 1, 0.925 / max_rate, window=("kaiser", beta)).astype(np.float32)
    h.flags.writeable = False
    return up, down, h


def load(path: str | Path, rate: int | None = None, mono: bool = True) -> tuple[np.ndarray, int]:
    """Read, downmix and (when `rate` is given) resample: returns float32 `(samples,)` and the rate (Hz)."""
    data, sr = read(path)
    x = downmix(data) if mono else data
    if rate is not None and sr != rate:
        try:
            x = resample(x, sr, rate)
        except SpkidError as e:
            raise AudioError(f"{path}: {e}") from None
        sr = rate
    return x, sr


SEEKABLE_FORMATS = ("WAV", "WAVEX", "W64", "RF64", "FLAC", "AIFF", "CAF")


def load_segment(path: str | Path | Clip, start: float, end: float) -> tuple[np.ndarray, int]:
    """Seconds `[start, end)` of a recording (a Kaldi `segments` line), downmixed: float32 `(samples,)` and the rate.

    Sample bounds are `round(seconds * rate)`; `end` < 0 reads to the end, and an `end` past the end is cut there
    (Kaldi's `extract-segments` allows such overshoot too). WAV, FLAC and the other seekable formats (files, or
    a `Clip` in memory: a piped command's output) read only the segment; the rest are decoded whole and sliced."""
    if isinstance(path, Clip):
        return _clip_segment(path, start, end)
    p = Path(path)
    info = None
    if p.is_file() and p.suffix.lower() not in FFMPEG_SUFFIXES:
        try:
            info = sf.info(str(p))
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError):
            info = None
    if info is not None and info.frames > 0 and info.format in SEEKABLE_FORMATS:
        sr, total = int(info.samplerate), int(info.frames)
        a, b = _segment_bounds(p, start, end, sr, total)
        try:
            data, _ = sf.read(str(p), start=a, stop=b, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
            raise AudioError(f"{path}: cannot decode audio ({_short(e)})") from None
        check_samples(data, p, a)
        return downmix(data), sr
    x, sr = load(path)
    a, b = _segment_bounds(p, start, end, sr, len(x))
    return x[a:b], sr


def _clip_segment(clip: Clip, start: float, end: float) -> tuple[np.ndarray, int]:
    data = _streamed_wav(clip.data) if clip.format == "wav" else clip.data
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            if f.frames > 0 and f.format in SEEKABLE_FORMATS and f.seekable():
                sr = int(f.samplerate)
                a, b = _segment_bounds(clip.name, start, end, sr, int(f.frames))
                f.seek(a)
                x = f.read(b - a, dtype="float32", always_2d=True)
                check_samples(x, clip.name, a)
                return downmix(x), sr
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError):
        pass  # decoded whole below, for its one error line
    x, sr = load(clip)
    a, b = _segment_bounds(clip.name, start, end, sr, len(x))
    return x[a:b], sr


def _segment_bounds(path: Path | str, start: float, end: float, sr: int, total: int) -> tuple[int, int]:
    a = int(round(start * sr))
    b = total if end < 0 else min(total, int(round(end * sr)))
    if a >= b:
        raise AudioError(f"{path}: the segment {start:g}-{end:g} s lies beyond the recording's "
                         f"{total / sr:.2f} s")
    return a, b


def load_expected(path: str | Path, rate: int) -> np.ndarray:
    """Read a file that must already be mono at `rate` (what `vad`, `features` and `embed` take).

    Refuses stereo and other rates with a hint to run `spkid convert`, rather than guessing silently.
    """
    data, sr = read(path)
    check_expected(path, data.shape[1], sr, rate)
    return data[:, 0]


def check_expected(path: str | Path, channels: int, sr: int, rate: int) -> None:
    """AudioError unless mono at `rate`: one line naming the file, what it has and the command that fixes it.

    `vad` and `features` refuse rather than resample: their outputs are sample or frame positions of the file.
    """
    if channels != 1:
        raise AudioError(f"{path}: has {channels} channels, expected mono; run `spkid convert` first")
    if sr != rate:
        raise AudioError(f"{path}: sample rate {sr} Hz, expected {rate} Hz; run `spkid convert --rate {rate} -d DIR` first")


WRITE_BLOCK = 1 << 20  # samples clipped and written at a time: no clipped copy of a whole recording


def write(path: str | Path, x: np.ndarray | Iterable[np.ndarray], rate: int, fmt: str = "flac") -> None:
    """Write mono float32 as 16-bit PCM `fmt` (flac|wav), atomically (temp file renamed into place).

    `x` is one signal or an iterable of signals written one after another (e.g. the voiced segments of a
    recording, without joining them in memory first).
    """
    if fmt not in FORMATS:
        raise SpkidError(f"unknown format {fmt!r}; choose flac or wav")
    parts = [x] if isinstance(x, np.ndarray) else x
    with atomic_path(path) as tmp:
        with sf.SoundFile(str(tmp), "w", rate, 1, format=FORMATS[fmt][0], subtype="PCM_16") as f:
            for part in parts:
                for a in range(0, len(part), WRITE_BLOCK):
                    f.write(np.clip(part[a : a + WRITE_BLOCK], -1.0, 32767 / 32768))

#!/usr/bin/env bash
# The data-prep pipeline on a generated example corpus, with real pipes:
# 44.1 kHz stereo WAV -> mono 16 kHz FLAC (-> voiced audio -> features, as those commands land).
set -euo pipefail
out=${1:-demo_out}
rm -rf "$out" && mkdir -p "$out"
python examples/make_audio.py "$out/raw"
find "$out/raw" -name '*.wav' | sort | spkid convert -d "$out/flac" -j 2 > "$out/flac.txt"
echo "converted $(wc -l < "$out/flac.txt") files:" >&2
cat "$out/flac.txt"

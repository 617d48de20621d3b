#!/usr/bin/env bash
# Render a tiny speaker corpus with espeak-ng voices (Debian: apt-get install espeak-ng): OUT/<voice>/<n>.wav
set -euo pipefail
out=${1:-examples/voices}
command -v espeak-ng >/dev/null || { echo "make_voices: needs espeak-ng (apt-get install espeak-ng)" >&2; exit 1; }
sentences=("The quick brown fox jumps over the lazy dog near the river bank."
           "Please call Stella and ask her to bring these things with her from the store."
           "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack."
           "We also need a small plastic snake and a big toy frog for the kids.")
for v in en-us+m1 en-us+f2 en-gb+m3 en-gb+f4 en-us+m7; do
  mkdir -p "$out/$v"
  for i in "${!sentences[@]}"; do
    espeak-ng -v "$v" -s 150 -w "$out/$v/$i.wav" "${sentences[$i]}"
  done
done

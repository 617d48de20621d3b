#!/usr/bin/env bash
# Train the bundled default model (spkid/data/default_model.pt):
#   recipes/train_default.sh [DATA_DIR] [WORK_DIR] [BUDGET_SECONDS]
# Needs the pretrained extra (pip install 'spkid[pretrained]'): the pretrained GE2E encoder is fine-tuned on
# the corpus's 200 training speakers (recipes/make_lists.py split) with real noise (../shared/data/noise),
# simulated reverberation, GE2E loss, for BUDGET seconds on the CPU. The 51 held-out speakers give the
# model card's EER; the calibration (thresholds at EER and at FAR 1 %) is fitted on their trials and stored
# in the model file, so `spkid verify` and `identify` have a threshold out of the box.
set -euo pipefail
data=${1:-../shared/data/librispeech_tc100}
work=${2:-exp/default}
budget=${3:-900}
noise=${NOISE:-$(dirname "$data")/noise}
mkdir -p "$work"
python recipes/make_lists.py "$data" "$work/lists"
spkid train "$work/lists/train.txt" -c configs/default.toml --init resemblyzer --noise "$noise" \
  --val-speakers 0 --epochs 1000 --time-budget "$budget" --threads "${THREADS:-2}" --seed 0 -o "$work/model.pt"
for m in resemblyzer "$work/model.pt"; do
  tag=$(basename "$m" .pt)
  spkid verify --trials "$work/lists/trials.txt" --model "$m" > "$work/scores_$tag.txt"
  echo "== $tag: all test trials" >&2; spkid score "$work/scores_$tag.txt" --plot "$work/det_$tag.png" >&2
  cut -f1,2 -d' ' "$work/lists/trials_cross.txt" | tr ' ' '\t' > "$work/keys_cross.txt"
  awk -F'\t' 'NR==FNR {k[$1"\t"$2]; next} ($1"\t"$2) in k' "$work/keys_cross.txt" "$work/scores_$tag.txt" \
    > "$work/scores_cross_$tag.txt"
  echo "== $tag: cross-recording trials" >&2; spkid score "$work/scores_cross_$tag.txt" >&2
done
spkid score --calibrate "$work/scores_model.txt" --model "$work/model.pt" --model-out "$work/default_model.pt"
echo "recipes/train_default.sh: wrote $work/default_model.pt; copy it to spkid/data/default_model.pt to bundle it" >&2

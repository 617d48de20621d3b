#!/usr/bin/env bash
# Train the multi-corpus candidate for the bundled model (configs/default_multi.toml):
#   recipes/train_multi.sh [DATA_ROOT] [WORK_DIR] [BUDGET_SECONDS] [INIT]
# DATA_ROOT (default ../shared/data) holds librispeech_tc100, extra_speakers and noise. recipes/devsplit.py holds
# whole speakers of every corpus (and half of the noise clips) out of training; INIT (default: the bundled model,
# spkid/data/default_model.pt; `resemblyzer` for the pretrained encoder, which needs the pretrained extra) is
# fine-tuned for BUDGET seconds on the CPU on the other speakers that have two or more clips, labels prefixed by
# corpus, with the training noise only. Then: the model card's librispeech_tc100 test EER (recipes/make_lists.py
# trials, as recipes/train_default.sh), a calibration fitted on those trials (stored in WORK_DIR/default_model.pt)
# and the development suite (recipes/devsuite.py) with the candidate beside the bundled model.
set -euo pipefail
root=${1:-../shared/data}
work=${2:-exp/multi}
budget=${3:-1800}
init=${4:-spkid/data/default_model.pt}
mkdir -p "$work"
python recipes/devsplit.py "$work/split" --data "$root"
# GE2E needs several clips of a speaker: one-clip speakers (mostly speech_commands) would give positives that are
# one recording under different augmentations
awk -F'\t' 'NR==FNR {n[$2]++; next} n[$2] >= 2' "$work/split/train_all.txt" "$work/split/train_all.txt" \
  > "$work/train.txt"
spkid train "$work/train.txt" -c configs/default_multi.toml --init "$init" --noise "$work/split/noise_train.txt" \
  --val-speakers 0 --epochs 1000 --time-budget "$budget" --threads "${THREADS:-2}" --seed 0 -o "$work/model.pt"
python recipes/make_lists.py "$root/librispeech_tc100" "$work/lists"
spkid verify --trials "$work/lists/trials.txt" --model "$work/model.pt" > "$work/scores_model.txt"
echo "== candidate: librispeech_tc100 test trials" >&2; spkid score "$work/scores_model.txt" >&2
spkid score --calibrate "$work/scores_model.txt" --model "$work/model.pt" --model-out "$work/default_model.pt"
python recipes/devsuite.py "$work/suite" --data "$root" --model "$work/model.pt" --json "$work/suite.json" \
  > "$work/suite.md"
cat "$work/suite.md"
echo "recipes/train_multi.sh: wrote $work/default_model.pt and the development table $work/suite.md" >&2

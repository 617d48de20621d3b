#!/usr/bin/env bash
# Train the bundled default model (spkid/data/default_model.pt and its ONNX form):
#   recipes/train_default.sh [DATA_ROOT] [WORK_DIR]
# DATA_ROOT (default ../shared/data) holds librispeech_tc100, extra_speakers and noise. Needs the pretrained extra
# (pip install 'spkid[pretrained]'), pip access to PyPI (step 5) and sox for the development suite's conditions.
# A fusion of two models, each on its own front end, about 40 min on 2 CPU cores (seeded, counted in epochs):
#  1. librispeech.pt: the pretrained GE2E encoder fine-tuned for 8 epochs on librispeech_tc100's 200
#     training speakers (recipes/make_lists.py split) with real noise and simulated reverberation
#     (configs/default.toml): the bundled model before #19, excellent on read speech;
#  2. multi.pt: librispeech.pt fine-tuned for 87 epochs on the training speakers
#     of every corpus (recipes/devsplit.py holds whole speakers of each out; speakers with two or more clips,
#     labels prefixed by corpus) with the augmentations of the development suite's conditions
#     (configs/default_multi.toml: noise, reverberation, speed, level with clipping, telephone band, 0.5-2 s crops);
#  3. broad.pt: librispeech.pt fine-tuned for 4 epochs on the same speakers with step 1's augmentations
#     (configs/default_broad.toml);
#  4. model.pt: the ensemble 0.7 x librispeech.pt + 0.15 x multi.pt + 0.15 x broad.pt (its cosine is the weighted
#     mean of theirs), projected onto the 256 leading directions of its embeddings of the training files: the
#     bundled model of stop 25, strong on short words;
#  5. ecapa.pt: SpeechBrain's ECAPA-TDNN trained on VoxCeleb (recipes/fetch_ecapa.py: from PyPI, sha256-checked),
#     its largest layer factored to rank 256; strong on longer speech and under every simulated condition;
#  6. fused.pt: both side by side (recipes/soup.py --fusion), weighed by each utterance's speech: 0.8 / 0.2 up to
#     1 s, 0.5 / 0.5 from 3 s on, the ECAPA-TDNN's embeddings centred on the mean of its embeddings of the training
#     files (--center 1 --fit: the mean over corpora of each corpus's mean) and then locally, on the mean of its 50
#     nearest training speakers (--local-center 1: half of it taken out), utterances with under 3 s of speech
#     embedded with copies played 5 % slower and faster, averaged (--speed-copies 0.95,1.05), with int8 weights
#     (--int8) to fit the package's 20 MB.
# The 51 held-out librispeech speakers give the model card's EER, and their trials (with both sides' speech
# seconds) the duration-aware calibration stored in WORK_DIR/default_model.pt, so `spkid verify` and `identify`
# have a threshold out of the box. Last, its ONNX form and the development suite beside the bundled model.
set -euo pipefail
root=${1:-../shared/data}
work=${2:-exp/default}
threads=${THREADS:-2}
mkdir -p "$work"
python recipes/make_lists.py "$root/librispeech_tc100" "$work/lists"
spkid train "$work/lists/train.txt" -c configs/default.toml --init resemblyzer --noise "$root/noise" \
  --val-speakers 0 --epochs "${EPOCHS_LIBRISPEECH:-8}" --threads "$threads" --seed 0 -o "$work/librispeech.pt"

python recipes/devsplit.py "$work/split" --data "$root"
# GE2E needs several clips of a speaker: one-clip speakers (mostly speech_commands) would give positives that are
# one recording under different augmentations
awk -F'\t' 'NR==FNR {n[$2]++; next} n[$2] >= 2' "$work/split/train_all.txt" "$work/split/train_all.txt" \
  > "$work/train_all.txt"
spkid train "$work/train_all.txt" -c configs/default_multi.toml --init "$work/librispeech.pt" \
  --noise "$work/split/noise_train.txt" --val-speakers 0 --epochs "${EPOCHS_MULTI:-87}" --threads "$threads" \
  --seed 0 -o "$work/multi.pt"
spkid train "$work/train_all.txt" -c configs/default_broad.toml --init "$work/librispeech.pt" \
  --noise "$work/split/noise_train.txt" --val-speakers 0 --threads "$threads" --seed 0 -o "$work/broad.pt"
python recipes/soup.py --ensemble --dim 256 --fit "$work/train_all.txt" "$work/model.pt" "$work/librispeech.pt=0.7" "$work/multi.pt=0.15" "$work/broad.pt=0.15"
python recipes/fetch_ecapa.py "$work/ecapa.pt" --mfa-rank 256 --cache "$work/ecapa"
python recipes/soup.py --fusion --int8 "$work/fused.pt" "$work/model.pt=0.8" "$work/ecapa.pt=0.2" \
  --long-weights 0.5,0.5 --short-s 1 --long-s 3 --center 1 --local-center 1 --fit "$work/train_all.txt" --speed-copies 0.95,1.05

spkid verify --trials "$work/lists/trials.txt" --model "$work/fused.pt" > "$work/scores_model.txt"
echo "== fused.pt: all test trials" >&2; spkid score "$work/scores_model.txt" --plot "$work/det_model.png" >&2
cut -f1,2 -d' ' "$work/lists/trials_cross.txt" | tr ' ' '\t' > "$work/keys_cross.txt"
awk -F'\t' 'NR==FNR {k[$1"\t"$2]; next} ($1"\t"$2) in k' "$work/keys_cross.txt" "$work/scores_model.txt" \
  > "$work/scores_cross_model.txt"
echo "== fused.pt: cross-recording trials" >&2; spkid score "$work/scores_cross_model.txt" >&2
spkid score --calibrate "$work/scores_model.txt" --model "$work/fused.pt" --model-out "$work/default_model.pt"
spkid export "$work/default_model.pt"
python recipes/devsuite.py "$work/suite" --data "$root" --model "$work/default_model.pt" --json "$work/suite.json" \
  > "$work/suite.md"
cat "$work/suite.md"
echo "recipes/train_default.sh: wrote $work/default_model.pt and .onnx; copy both to spkid/data/ to bundle them" >&2

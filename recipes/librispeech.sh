#!/usr/bin/env bash
# The whole toolkit on one corpus, with real pipes, ending in an EER / minDCF / top-1 report:
#
#   recipes/librispeech.sh DATA_DIR [WORK_DIR]
#
# DATA_DIR: LibriSpeech (`spk/chapter/utt.flac`), VoxCeleb (`id/video/utt.wav|m4a`) or
# ../shared/data/librispeech_tc100 (`spk/utt.flac` + utterances.tsv). Steps:
#   1. speaker-disjoint train/test lists, verification trials, enrol/probe lists (recipes/make_lists.py)
#   2. convert | vad --trim                   every file to mono 16 kHz FLAC, voiced part only
#   3. features | train                       train on feature files for BUDGET seconds
#   4. embed the test files; verify the trials | score --plot (DET, ROC, histograms)
#   5. embed | enroll one file per test speaker; identify the others | score (top-1)
#   6. the floor: features -k mfcc | per-utterance mean+std (recipes/stats_pool.py) | verify | score
# and prints a report (also WORK_DIR/report.json). Environment:
#   BUDGET=600          training seconds (wall clock)
#   INIT=resemblyzer    fine-tune the pretrained GE2E encoder (needs spkid[pretrained]) from its own front-end
#                       features (`spkid features --model resemblyzer`): minutes on a CPU beat the floor.
#   INIT=none           train CONFIG from scratch on FEATS filterbanks (in bench/train_compare.py, 10 minutes of
#                       one core take configs/ecapa_tdnn.toml to 2.3 % EER, below the floor)
#   CONFIG              default configs/default.toml (INIT=resemblyzer) or configs/ecapa_tdnn.toml (INIT=none)
#   FEATS               features options for INIT=none (default "-k fbank -n 64 --norm none", ecapa_tdnn's)
#   JOBS=2 THREADS=2    worker processes for data preparation, torch threads for training and embedding
#   CHECK_FLOOR=1       exit 1 unless the trained model's EER beats the MFCC floor's (what CI runs)
set -euo pipefail

data=${1:?usage: recipes/librispeech.sh DATA_DIR [WORK_DIR]}
work=${2:-exp/librispeech}
budget=${BUDGET:-600}
init=${INIT:-resemblyzer}
jobs=${JOBS:-2}
threads=${THREADS:-2}
if [ "$init" = none ]; then config=${CONFIG:-configs/ecapa_tdnn.toml}; else config=${CONFIG:-configs/default.toml}; fi
lists=$work/lists
step() { printf '\n== %s\n' "$*" >&2; }
mkdir -p "$work"

step "1. lists"
python recipes/make_lists.py "$data" "$lists" --map-to "$work/voiced" --suffix .flac >&2

step "2. convert | vad --trim"
spkid convert -d "$work/wav" --root "$data" -j "$jobs" < "$lists/source.txt" \
  | spkid vad --trim -d "$work/voiced" --root "$work/wav" -j "$jobs" > "$work/voiced.txt"
python recipes/make_lists.py "$data" "$lists" --map-to "$work/voiced" --suffix .flac --drop-missing >&2

step "3. features | train ($config, init $init, ${budget} s)"
if [ "$init" = none ]; then
  read -r -a feats <<< "${FEATS:--k fbank -n 64 --norm none}"
  init_args=()
else
  feats=(--model "$init")
  init_args=(--init "$init")
fi
spkid features "${feats[@]}" -d "$work/feats-$init" --root "$work/voiced" -j "$jobs" < "$lists/train.txt" \
  | spkid train -c "$config" "${init_args[@]}" --val-speakers 0 --epochs 100000 --time-budget "$budget" \
      --threads "$threads" --seed 0 -o "$work/model.pt"

step "4. embed | verify | score"
model=(-m "$work/model.pt" --no-vad --threads "$threads")  # the audio is voiced already
spkid embed "${model[@]}" < "$lists/test.txt" > "$work/test_emb.npy"
spkid verify --trials "$lists/trials.txt" -e "$work/test_emb.npy" \
  | tee "$work/scores.txt" | spkid score --plot "$work/det.png" --json > "$work/verify.json"

step "5. embed | enroll; identify | score"
rm -rf "$work/gallery"
spkid embed "${model[@]}" < "$lists/enroll.txt" | spkid enroll -g "$work/gallery" --labels "$lists/enroll.txt"
spkid identify "${model[@]}" -g "$work/gallery" -k 5 --json < "$lists/probe.txt" \
  | tee "$work/identify.jsonl" | spkid score --top-k 5 --json > "$work/identify.json"

step "6. floor: MFCC-20 mean+std"
spkid features -k mfcc -n 40 --n-ceps 20 -w hamming -d "$work/mfcc" --root "$work/voiced" -j "$jobs" < "$lists/test.txt" \
  | python recipes/stats_pool.py "$lists/test.txt" \
  | spkid verify --trials "$lists/trials.txt" -e - | tee "$work/scores_floor.txt" | spkid score --json > "$work/floor.json"

python - "$work" "${CHECK_FLOOR:-0}" <<'EOF'
import json, sys
from pathlib import Path

work, check = Path(sys.argv[1]), sys.argv[2] == "1"
v, f, i = (json.loads((work / n).read_text()) for n in ("verify.json", "floor.json", "identify.json"))
report = {"eer": v["eer"], "min_dcf": v["min_dcf"], "top1": i["top1_accuracy"], "top5": i["topk_accuracy"],
          "floor_eer": f["eer"], "floor_min_dcf": f["min_dcf"], "n_target": v["n_target"], "n_nontarget": v["n_nontarget"],
          "n_probes": i["n_clips"]}
(work / "report.json").write_text(json.dumps(report, indent=1) + "\n")
print(f"{'':24}{'EER':>9}{'minDCF':>9}{'top-1':>9}{'top-5':>9}")
print(f"{'trained model':24}{v['eer']:9.2%}{v['min_dcf']:9.3f}{report['top1']:9.2%}{report['top5']:9.2%}")
print(f"{'floor: MFCC mean+std':24}{f['eer']:9.2%}{f['min_dcf']:9.3f}")
print(f"({v['n_target']} target / {v['n_nontarget']} non-target trials, {report['n_probes']} identification probes "
      f"against {len(list((work / 'lists' / 'enroll.txt').open()))} enrolled speakers; DET plot: {work / 'det.png'})")
if check and not v["eer"] < f["eer"]:
    sys.exit(f"recipes/librispeech.sh: the model's EER {v['eer']:.2%} does not beat the floor's {f['eer']:.2%}")
EOF

#!/usr/bin/env bash
# The main job on the bundled model: enroll a few speakers, then identify other clips of them and of one speaker
# who was never enrolled (he should come out `unknown`), and print a table: clip, true speaker, decision, score,
# margin. Exits 1 when a decision is wrong.
#   examples/demo.sh [CLIPS_DIR] [WORK_DIR]
# CLIPS_DIR (default: examples/clips, real LibriSpeech speech, see its ATTRIBUTION.md) holds enroll/<speaker>/*
# and probe/<speaker>/* audio files; a probe speaker with no enroll/ folder is one never enrolled. Needs only the
# installed spkid (`make demo` runs it in the project's .venv): no corpus, no ffmpeg, no network.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
clips=${1:-$here/clips}
work=${2:-demo_out}
rm -rf "$work" && mkdir -p "$work"
if [ ! -d "$clips/enroll" ] || [ ! -d "$clips/probe" ]; then
  echo "demo: $clips needs enroll/<speaker>/ and probe/<speaker>/ audio files" >&2
  exit 1
fi
echo "== enrolling every speaker of $clips/enroll (a folder argument: the speaker is each file's folder)" >&2
spkid enroll "$clips/enroll" -g "$work/gallery"
spkid enroll -g "$work/gallery" --list >&2
echo "== identifying the probe clips" >&2
spkid identify "$clips/probe" -g "$work/gallery" --json > "$work/identify.jsonl"
python - "$work/identify.jsonl" <<'PY'
import json
import os
import sys

rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
table = [("clip", "true speaker", "decision", "score", "margin")]
wrong = 0
for r in rows:
    expected = r["label"] if r["enrolled"] else "unknown"
    right = r["decision"] == expected
    wrong += not right
    true = r["label"] if r["enrolled"] else f"{r['label']} (not enrolled)"
    margin = "" if r["margin"] is None else f"{r['margin']:.3f}"
    table.append((os.path.join(*r["key"].split(os.sep)[-2:]), true, r["decision"] + ("" if right else "  <- wrong"),
                  f"{r['top'][0]['score']:.3f}", margin))
width = [max(len(row[i]) for row in table) for i in range(5)]
for row in table:
    print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, width))).rstrip())
thr = rows[0]["threshold"] if rows else None
strangers = sorted({r["label"] for r in rows if not r["enrolled"]})
print(f"\n{len(rows) - wrong}/{len(rows)} decisions right ({sum(r['enrolled'] for r in rows)} clips of enrolled speakers, "
      f"{len(rows) - sum(r['enrolled'] for r in rows)} of never-enrolled {', '.join(strangers) or 'none'}).")
print("score: cosine with the best enrolled speaker"
      + (f"; under the threshold {thr:.3f} a clip is `unknown`" if thr is not None else "")
      + ". margin: best minus second-best score.")
sys.exit(1 if wrong else 0)
PY

#!/usr/bin/env bash
# The main job on the bundled model: enroll a few speakers, then identify held-out clips (and one speaker who
# was never enrolled, who should come out `unknown`), printing who spoke with scores.
#   examples/demo.sh [DATA_DIR] [WORK_DIR]
# DATA_DIR: any folder of <speaker>/<...>/<file>.flac|wav (default: ../shared/data/librispeech_tc100 beside
# the checkout; without one, espeak-ng voices are rendered with examples/make_voices.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
data=${1:-$here/../../shared/data/librispeech_tc100}
work=${2:-demo_out}
rm -rf "$work" && mkdir -p "$work"
if [ ! -d "$data" ]; then
  echo "demo: no corpus at $data; rendering espeak-ng voices instead" >&2
  bash "$here/make_voices.sh" "$work/voices"
  data=$work/voices
fi
data=$(cd "$data" && pwd)
# Speakers with at least 3 files: 4 are enrolled with 2 files each; a 5th is never enrolled.
python - "$data" "$work" <<'PY'
import sys
from pathlib import Path
data, work = Path(sys.argv[1]), Path(sys.argv[2])
files = {}
for p in sorted(data.rglob("*")):
    if p.suffix.lower() in (".flac", ".wav"):
        files.setdefault(p.relative_to(data).parts[0], []).append(p)
# most files first: in librispeech_tc100 that is 19, 26 and 27, held out of the bundled model's training
speakers = sorted((s for s, fs in files.items() if len(fs) >= 3), key=lambda s: (-len(files[s]), s))[:5]
enroll = [f"{f}\t{s}\n" for s in speakers[:4] for f in files[s][:2]]
probes = [f"{f}\t{s}\n" for s in speakers[:4] for f in files[s][2:4]] + [f"{f}\t{s}\n" for s in speakers[4:] for f in files[s][:2]]
(work / "enroll.txt").write_text("".join(enroll))
(work / "probes.txt").write_text("".join(probes))
PY
echo "== enrolling $(cut -f2 "$work/enroll.txt" | sort -u | tr '\n' ' ')" >&2
spkid enroll "$work/enroll.txt" -g "$work/gallery"
spkid enroll -g "$work/gallery" --list
echo "== identifying held-out clips (true speaker in the second column of probes.txt)" >&2
spkid identify "$work/probes.txt" -g "$work/gallery" --top-k 2

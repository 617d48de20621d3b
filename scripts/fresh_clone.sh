#!/usr/bin/env bash
# The README's quick start on a fresh clone, as a new user meets it: clone the committed repository into an empty
# folder (no ../shared beside it), hide ffmpeg and espeak-ng from PATH, run the quick start's commands (read from
# README.md: `make demo`, `make test`), and check the demo's table and the test run's skips.
#   scripts/fresh_clone.sh [--worktree] [REPO] [WORK_DIR]
# REPO: a git repository (default: the one holding this script); its HEAD is cloned, so commit first, or pass
# --worktree to clone a snapshot of REPO's working tree instead (its tracked and untracked, not ignored, files).
# WORK_DIR: an empty or missing folder (default: a new temporary one, removed at the end unless KEEP=1).
# Needs git, make, python3 and the package index that `make install` reaches. Exits 1 on the first failed check.
set -euo pipefail
snapshot=0
if [ "${1:-}" = --worktree ]; then snapshot=1; shift; fi
repo=${1:-$(cd "$(dirname "$0")/.." && pwd)}
work=${2:-}
if [ -z "$work" ]; then
  work=$(mktemp -d "${TMPDIR:-/tmp}/spkid-fresh.XXXXXX")
  [ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
elif [ -e "$work" ] && [ -n "$(ls -A "$work")" ]; then
  echo "fresh_clone: $work is not empty" >&2
  exit 2
fi
mkdir -p "$work"
fail() { echo "fresh_clone: FAILED: $*" >&2; exit 1; }
say() { echo "fresh_clone: $*" >&2; }

# PATH without the programs a user may not have: each PATH folder holding one is replaced by a folder of links
# to everything else in it
hidden=(ffmpeg ffprobe espeak-ng espeak)
newpath=
i=0
IFS=: read -r -a dirs <<< "$PATH"
for d in "${dirs[@]}"; do
  [ -d "$d" ] || continue
  has=0
  for h in "${hidden[@]}"; do [ -e "$d/$h" ] && has=1; done
  if [ "$has" = 1 ]; then
    i=$((i + 1))
    shadow="$work/path$i"
    mkdir -p "$shadow"
    for f in "$d"/*; do
      name=$(basename "$f")
      case " ${hidden[*]} " in *" $name "*) continue;; esac
      ln -s "$f" "$shadow/$name"
    done
    d=$shadow
  fi
  newpath=${newpath:+$newpath:}$d
done
export PATH=$newpath
for h in "${hidden[@]}"; do
  if command -v "$h" >/dev/null; then fail "$h is still on PATH"; fi
done

if [ "$snapshot" = 1 ]; then
  mkdir "$work/snapshot"
  (cd "$repo" && git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do
     [ -e "$f" ] && printf '%s\0' "$f"; done | tar --null -T - -cf -) | tar -xf - -C "$work/snapshot"
  git -C "$work/snapshot" init -q
  git -C "$work/snapshot" add -A
  git -C "$work/snapshot" -c user.name=fresh_clone -c user.email=fresh_clone@localhost commit -qm "working tree of $repo"
  repo=$work/snapshot
fi
git clone -q "$repo" "$work/spkid"
cd "$work/spkid"
[ ! -e ../shared ] || fail "$work/shared exists beside the clone"
say "cloned $(git log -1 --format='%h %s' | cut -c1-72) into $work/spkid; PATH has no ${hidden[*]}; no ../shared"

# the quick start's commands, as README.md shows them: the first ```sh block after "## Quick start"
mapfile -t cmds < <(awk '/^## Quick start/ {q = 1} q && /^```sh/ {b = 1; next} b && /^```/ {exit} b && NF' README.md)
[ "${#cmds[@]}" -ge 1 ] || fail "no commands found in README.md's quick start"
say "README quick start: $(printf '%s; ' "${cmds[@]}")"

for cmd in "${cmds[@]}"; do
  log="$work/$(echo "$cmd" | tr -c 'a-zA-Z0-9\n' '_').log"
  say "running \`$cmd\` (output: $log.out, $log.err)"
  start=$SECONDS
  if ! bash -c "$cmd" > "$log.out" 2> "$log.err"; then
    tail -20 "$log.err" >&2 || true
    tail -20 "$log.out" >&2 || true
    fail "\`$cmd\` exited non-zero"
  fi
  say "\`$cmd\` passed in $((SECONDS - start)) s"
  case $cmd in
    *"make demo"*)
      # the table: a header, one row per probe clip, then the summary; every decision right
      grep -E '^clip +true speaker +decision +score +margin$' "$log.out" >/dev/null || fail "demo: no table header"
      rows=$(awk '/^clip +true speaker/ {t = 1; next} t && NF == 0 {exit} t' "$log.out")
      [ "$(printf '%s\n' "$rows" | wc -l)" -ge 3 ] || fail "demo: too few rows"
      printf '%s\n' "$rows" | awk '{
          speaker = $1; sub("/.*", "", speaker)
          if ($0 ~ /\(not enrolled\)/) { if ($2 != speaker || $5 != "unknown") bad++ }
          else if ($2 != speaker || $3 != speaker) bad++
        } END { exit bad > 0 }' || fail "demo: a wrong decision in the table"
      grep -E '^([0-9]+)/\1 decisions right' "$log.out" >/dev/null || fail "demo: not every decision right"
      grep -F '(not enrolled)' "$log.out" | grep -q unknown || fail "demo: no never-enrolled speaker called unknown"
      sed -n '/^clip /,$p' "$log.out"
      ;;
    *"make test"*)
      summary=$(grep -E '^=+ .*(passed|failed).* =+$|^[0-9]+ passed' "$log.out" | tail -1)
      echo "$summary"
      # skips for a missing corpus must be whole-corpus tests, and say what is missing and where it comes from
      grep -E '^SKIPPED' "$log.out" | sed 's/^/  /' || true
      if grep -E '^SKIPPED' "$log.out" | grep -iE 'corpus|shared' | grep -vq 'needs the whole development corpus'; then
        fail "test: a skip for missing data that is not a whole-corpus test"
      fi
      ;;
  esac
done
say "OK: the README's quick start works on a fresh clone"

#!/usr/bin/env bash
# Directory import benchmark: a generated region-sized AAF "Complet" set (default 100 000 people) imported by
# `relais import --data` into a fresh data folder, then imported again (the idempotent re-import a nightly job
# does). Prints wall time and peak RSS against the goals (under 60 s and under 200 MiB on 2 cores).
# Usage: tests/bench/import.sh [PEOPLE]
set -euo pipefail
cd "$(dirname "$0")/../.."
people=${1:-100000}
command -v /usr/bin/time >/dev/null || { echo "install GNU time: apt-get install time" >&2; exit 1; }
cargo build --release -q -p relais
bin=target/release/relais
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 tests/bench/gen_aaf.py "$work/aaf" "$people" >/dev/null
size=$(du -sm "$work/aaf" | cut -f1)

measure() { # label, then the command; prints "label seconds rss_mib"
  local label=$1; shift
  /usr/bin/time -f '%e %M' -o "$work/time" "$@" >"$work/out" 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  read -r secs kib <"$work/time"
  printf '%s %s %s\n' "$label" "$secs" "$((kib / 1024))"
  tail -n 1 "$work/out" >&2
}

first=$(measure first "$bin" import --data "$work/data" "$work"/aaf/*.xml)
again=$(measure again "$bin" import --data "$work/data" "$work"/aaf/*.xml)
printf '\n%-28s %10s %10s %8s %s\n' "import of $people people" "time (s)" "RSS (MiB)" "goal" "verdict"
for row in "$first" "$again"; do
  read -r label secs rss <<<"$row"
  verdict=$(awk -v s="$secs" -v r="$rss" 'BEGIN { print (s < 60 && r < 200) ? "PASS" : "MISS" }')
  printf '%-28s %10s %10s %8s %s\n' "$label (${size} MB of XML)" "$secs" "$rss" "<60s <200MiB" "$verdict"
done

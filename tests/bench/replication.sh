#!/usr/bin/env bash
# Replication benchmark: relais (box → regional gateway) against rsync (client → rsync daemon), over the same
# emulated rural link (tests/link/: 2 Mbit/s, 100 ms each way, 1 % loss), in the same run, on the same files.
# What it measures and the goals: tests/bench/README.md. Run as root from anywhere: tests/bench/replication.sh
# Exit 0 when every measurement ran (goals missed or not); 1 when something could not run or answered wrong;
# 2 when a tool is missing or the link cannot be made here.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/bench"
LINK_SH="$ROOT/tests/link/link.sh"
CLIENT="$HERE/replication_client.py"

# Knobs (environment). The defaults are the benchmark; other values for trying the script out.
SCALE=${BENCH_SCALE:-10}              # the school day's sizes divided by this (1: the full day, ~1 h per tool)
EDIT_FILES=${BENCH_EDIT_FILES:-10}    # large files edited inside
EDIT_MB=${BENCH_EDIT_MB:-100}         # their size, MB: not scaled, since rsync's block size grows with it
BIG_MB=${BENCH_BIG_MB:-24}            # the goodput file, MB (10⁶ B): ~100 s on the link
RATE=${BENCH_RATE:-2mbit}             # the link, each way
DELAY_MS=${BENCH_DELAY_MS:-100}
LOSS=${BENCH_LOSS:-1}
RELAIS_BIN=${RELAIS_BIN:-}            # a relais binary to use as is; unset: cargo build --release -p relais
# BENCH_KEEP=1 keeps the scratch folder (both sides' logs and data) for a look afterwards.
LINK_BPS=$(python3 -c "import re,sys; m=re.fullmatch(r'(\d+(?:\.\d+)?)(k|m|g)?bit','$RATE'.lower()); \
sys.exit('BENCH_RATE: like 2mbit') if not m else print(int(float(m[1])*{None:1,'k':1e3,'m':1e6,'g':1e9}[m[2]]))")

BENCH_NAME=replication.sh
# shellcheck source=lib.sh
. "$ROOT/tests/bench/lib.sh"

# --- tools ---------------------------------------------------------------------------------------------------
missing=()
for tool in rsync python3 ip tc nft flock setsid; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
    say "replication.sh: missing ${missing[*]}. On Debian: apt-get install -y rsync python3 iproute2 nftables util-linux"
    exit 2
fi
[[ $EUID -eq 0 ]] || { say "replication.sh: run as root (network namespaces, and files written inside them)"; exit 2; }

relais_binary

# --- scratch space and teardown --------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/relais-bench-repl.XXXXXX")
PREFIX=rbr$$
PIDS=()
LINK_UP=
cleanup() {
    local rc=$? pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    # Also kills whatever still runs in the namespaces.
    [[ -n "$LINK_UP" ]] && "$LINK_SH" down "$PREFIX" >/dev/null 2>&1
    if [[ $rc -ne 0 && -d "$WORK" ]]; then
        say "---- last lines of the logs ----"
        for log in "$WORK"/*.log; do [[ -f "$log" ]] && { say "-- $log"; tail -n 15 "$log" >&2; }; done
    fi
    if [[ -n "${BENCH_KEEP:-}" ]]; then say "kept $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the link --------------------------------------------------------------------------------------------------
phase "link $PREFIX: $RATE, ${DELAY_MS} ms each way, ${LOSS} % loss"
set +e
out=$("$LINK_SH" up "$PREFIX" --rate "$RATE" --delay-ms "$DELAY_MS" --loss "$LOSS")
rc=$?
set -e
if [[ $rc -eq 3 ]]; then say "replication.sh: the emulated link cannot be made here (see above)"; exit 2; fi
[[ $rc -eq 0 ]] || die "link.sh up failed"
LINK_UP=1
BOX_IP=$(sed -n 's/^box=//p' <<<"$out")
GW_IP=$(sed -n 's/^gw=//p' <<<"$out")
in_box() { "$LINK_SH" exec "$PREFIX" box -- "$@"; }
in_gw() { "$LINK_SH" exec "$PREFIX" gw -- "$@"; }
# Bytes through the box's end of the line, both directions (Ethernet frames: payload, TLS, TCP/IP, headers).
wire() {
    echo $(($(in_box cat /sys/class/net/wan/statistics/rx_bytes) + $(in_box cat /sys/class/net/wan/statistics/tx_bytes)))
}
# Of which box → gateway.
wire_up() { in_box cat /sys/class/net/wan/statistics/tx_bytes; }
now() { date +%s.%N; }
# Changes the live link: rate, loss, delay.
relink() { "$LINK_SH" up "$PREFIX" --rate "$1" --loss "$2" --delay-ms "$3" >/dev/null; }

# --- the gateway and the box -------------------------------------------------------------------------------------
PW=banc-admin-mdp
TEACHER=prof.banc
TEACHER_PW=banc-prof-mdp
UAI=0290002S
GW_URL="https://$GW_IP:8443"
CA="$WORK/region/ca/root.crt"
phase "gateway on $GW_URL, box provisioned for it"
"$RELAIS_BIN" region init --data "$WORK/region" --host "$GW_IP" >"$WORK/init.log" 2>&1 || die "region init failed"
RELAIS_ADMIN_PASSWORD=$PW in_gw "$RELAIS_BIN" region serve --data "$WORK/region" --listen "$GW_IP:8443" \
    >"$WORK/region.log" 2>&1 &
PIDS+=($!)
"$RELAIS_BIN" region bundle --data "$WORK/region" --uai "$UAI" --name "École du banc" --url "$GW_URL" \
    --out "$WORK/bundle.zip" >>"$WORK/init.log" 2>&1 || die "region bundle failed"
"$RELAIS_BIN" provision apply "$WORK/bundle.zip" --data "$WORK/box" >>"$WORK/init.log" 2>&1 || die "provision failed"
# A session a second after the last one (and 2 s after a change); no rate of its own: the link is the limit
# and nothing else uses it here (a school sets `rate` to its line, so that users waiting come first).
sed -i -e 's/^sync_interval = .*/sync_interval = "1s"/' -e 's/^rate = .*/rate = "unlimited"/' "$WORK/box/relais.toml"
grep -q '^sync_interval = "1s"' "$WORK/box/relais.toml" || die "could not set sync_interval"
RELAIS_ADMIN_PASSWORD=$PW in_box "$RELAIS_BIN" serve --data "$WORK/box" --listen 127.0.0.1:8080 \
    >"$WORK/box.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 600); do
    [[ -f "$WORK/box/identity/box.crt" ]] && grep -q "listening on" "$WORK/region.log" && break
    sleep 0.1
done
[[ -f "$WORK/box/identity/box.crt" ]] || die "the box did not enroll within 60 s"
BOX_URL=http://127.0.0.1:8080
py_box() { in_box python3 "$CLIENT" "$@"; }
py_gw() { in_gw python3 "$CLIENT" "$@"; }
py_box user --url "$BOX_URL" --admin-password "$PW" --login "$TEACHER" --password "$TEACHER_PW"
py_gw wait-user --url "$GW_URL" --ca "$CA" --admin-password "$PW" --login "$TEACHER" --timeout 120

# rsync: a daemon in the gateway's namespace (no ssh: no encryption on rsync's side, TLS on relais's), the
# client in the box's. Protocol defaults: delta transfer on, no compression (the files are incompressible).
mkdir -p "$WORK/rsync-dst"
cat >"$WORK/rsyncd.conf" <<EOF
use chroot = no
pid file = $WORK/rsyncd.pid
[banc]
path = $WORK/rsync-dst
read only = no
uid = root
gid = root
EOF
in_gw rsync --daemon --no-detach --config="$WORK/rsyncd.conf" --address="$GW_IP" --port=8730 \
    --log-file="$WORK/rsyncd.log" &
PIDS+=($!)
RSYNC_URL="rsync://$GW_IP:8730/banc"
for _ in $(seq 100); do in_box rsync "$RSYNC_URL/" >/dev/null 2>&1 && break; sleep 0.1; done

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

# relais: upload DIR to the box under VIEW, then wait until the gateway lists the same files and ETags.
# Sets R_SECONDS, R_WIRE (and R_FIRST, R_CHUNKS: when the gateway got the first chunk, chunk bytes it got).
relais_run() {
    local dir=$1 view=$2 w0 t0 t1 t_up res m0 u0
    m0=$(py_box metrics --url "$BOX_URL")
    u0=$(wire_up)
    w0=$(wire)
    t0=$(now)
    py_box upload --url "$BOX_URL" --login "$TEACHER" --password "$TEACHER_PW" --src "$dir" --dest "$view"
    t_up=$(now)
    py_box listing --url "$BOX_URL" --login "$TEACHER" --password "$TEACHER_PW" --dest "$view" >"$WORK/expect.json"
    res=$(py_gw wait --url "$GW_URL" --ca "$CA" --login "$TEACHER" --password "$TEACHER_PW" --dest "$view" \
        --expect "$WORK/expect.json" --admin-password "$PW" --timeout 3600)
    t1=$(now)
    R_WIRE=$(($(wire) - w0))
    R_UP=$(($(wire_up) - u0))
    R_SECONDS=$(python3 -c "print(round($t1 - $t0, 2))")
    R_AFTER_UPLOAD=$(python3 -c "print(round($t1 - $t_up, 2))")
    R_FIRST=$(json '["first_chunk"]' <<<"$res")
    R_CHUNKS=$(json '["chunk_bytes_in"]' <<<"$res")
    # What the box's own counters say crossed (payload, before TLS and TCP/IP), for the log; R_PAYLOAD: the
    # request and answer bodies through its uplink scheduler, both ways (HTTP heads and TLS excluded).
    local m1
    m1=$(py_box metrics --url "$BOX_URL")
    python3 -c "import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); \
print('   box counters:', {k: b[k]-a.get(k,0) for k in b if b[k]-a.get(k,0)})" "$m0" "$m1" >&2
    R_PAYLOAD=$(python3 -c "import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); \
print(sum(b[k]-a.get(k,0) for k in b if k.startswith('uplink_bytes_total')))" "$m0" "$m1")
    [[ $(python3 -c "import json; print(len(json.load(open('$WORK/expect.json'))))") -eq \
        $(find "$dir" -type f | wc -l) ]] || die "the box does not list every file of $dir"
}
# rsync: DIR to the daemon under SUB. Sets S_SECONDS, S_WIRE.
rsync_run() {
    local dir=$1 sub=$2 w0 t0 t1 u0
    u0=$(wire_up)
    w0=$(wire)
    t0=$(now)
    in_box rsync -a --stats "$dir/" "$RSYNC_URL/$sub/" >"$WORK/rsync-$sub.log" 2>&1 || die "rsync failed"
    t1=$(now)
    S_WIRE=$(($(wire) - w0))
    S_UP=$(($(wire_up) - u0))
    S_SECONDS=$(python3 -c "print(round($t1 - $t0, 2))")
    diff -r "$dir" "$WORK/rsync-dst/$sub" >/dev/null || die "rsync's copy of $dir differs"
    # rsync's own count of what it sent and received (its protocol, before TCP/IP).
    S_PAYLOAD=$(python3 -c "import re,sys; t=open(sys.argv[1]).read().replace(',',''); \
print(sum(int(re.search(r'Total bytes '+w+r': (\d+)', t)[1]) for w in ('sent','received')))" "$WORK/rsync-$sub.log")
}

ROWS=()
row() { ROWS+=("$(printf '%-44s %12s %12s %7s %9s  %s' "$@")"); }
verdict() { python3 -c "print('PASS' if $1 $2 $3 else 'MISS')"; }

# --- 1. the school day -----------------------------------------------------------------------------------------
phase "school day: generating (sizes / $SCALE)"
DAY="$WORK/day"
day=$(python3 "$CLIENT" gen-day "$DAY" --scale "$SCALE")
DAY_FILES=$(json '["files"]' <<<"$day")
DAY_UNIQUE=$(json '["unique"]' <<<"$day")
say "   $DAY_FILES files, $(json '["bytes"]' <<<"$day") bytes, $DAY_UNIQUE distinct"
phase "school day: relais"
relais_run "$DAY" "classes/CM2/jour/"
say "   relais: ${R_SECONDS} s, ${R_WIRE} bytes on the wire, $R_UP of them up (gateway got $R_CHUNKS chunk bytes)"
DR_S=$R_SECONDS DR_W=$R_WIRE DR_P=$R_PAYLOAD
phase "school day: rsync"
rsync_run "$DAY" jour
say "   rsync: ${S_SECONDS} s, ${S_WIRE} bytes on the wire"
DS_S=$S_SECONDS DS_W=$S_WIRE DS_P=$S_PAYLOAD
r=$(ratio "$DR_S" "$DS_S")
row "school day: wall time (s)" "$DR_S" "$DS_S" "$r" "<= 1.0" "$(verdict "$r" "<=" 1.0)"
r=$(ratio "$DR_W" "$DAY_UNIQUE")
row "school day: bytes on the wire / distinct" "$(ratio "$DR_W" "$DAY_UNIQUE")" "$(ratio "$DS_W" "$DAY_UNIQUE")" \
    "$(ratio "$DR_W" "$DS_W")" "<= 1.03" "$(verdict "$r" "<=" 1.03) (relais column)"
row "  the tools' own bytes / distinct" "$(ratio "$DR_P" "$DAY_UNIQUE")" "$(ratio "$DS_P" "$DAY_UNIQUE")" \
    "$(ratio "$DR_P" "$DS_P")" "-" "info: before TLS, TCP/IP"

# --- 1b. from home to school -------------------------------------------------------------------------------------
phase "from home: generating 100 documents (sizes / $SCALE)"
HOME_DIR="$WORK/home"
home=$(python3 "$CLIENT" gen-home "$HOME_DIR" --scale "$SCALE")
say "   $(json '["files"]' <<<"$home") files, $(json '["bytes"]' <<<"$home") bytes"
phase "from home: relais (uploaded at the gateway, until the box lists them)"
w0=$(wire)
t0=$(now)
py_gw upload --url "$GW_URL" --ca "$CA" --login "$TEACHER" --password "$TEACHER_PW" --src "$HOME_DIR" \
    --dest "classes/CM2/maison/"
py_gw listing --url "$GW_URL" --ca "$CA" --login "$TEACHER" --password "$TEACHER_PW" --dest "classes/CM2/maison/" \
    >"$WORK/expect.json"
py_box wait --url "$BOX_URL" --login "$TEACHER" --password "$TEACHER_PW" --dest "classes/CM2/maison/" \
    --expect "$WORK/expect.json" --timeout 3600 >/dev/null
HR_S=$(python3 -c "print(round($(now) - $t0, 2))")
HR_W=$(($(wire) - w0))
say "   relais: ${HR_S} s, ${HR_W} bytes on the wire"
phase "from home: rsync (pulled by the box from the daemon)"
mkdir -p "$WORK/rsync-dst/maison" "$WORK/rsync-home" && cp -a "$HOME_DIR/." "$WORK/rsync-dst/maison/"
w0=$(wire)
t0=$(now)
in_box rsync -a --stats "$RSYNC_URL/maison/" "$WORK/rsync-home/" >"$WORK/rsync-maison.log" 2>&1 || die "rsync failed"
HS_S=$(python3 -c "print(round($(now) - $t0, 2))")
HS_W=$(($(wire) - w0))
diff -r "$HOME_DIR" "$WORK/rsync-home" >/dev/null || die "rsync's copy of the home files differs"
say "   rsync: ${HS_S} s, ${HS_W} bytes on the wire"
row "from home, 100 files: wall time (s)" "$HR_S" "$HS_S" "$(ratio "$HR_S" "$HS_S")" "-" "info"

# --- 2. edits inside large files ---------------------------------------------------------------------------------
phase "edits: $EDIT_FILES files of $EDIT_MB MB, first copied across a fast link (no rate, delay or loss)"
EDITS="$WORK/edits"
python3 "$CLIENT" gen-edits "$EDITS" --files "$EDIT_FILES" --mb "$EDIT_MB" >/dev/null
relink 0 0 0
relais_run "$EDITS" "classes/CM2/grands/"
say "   relais seeded in ${R_SECONDS} s"
mkdir -p "$WORK/rsync-dst/grands" && cp -a "$EDITS/." "$WORK/rsync-dst/grands/"
relink "$RATE" "$LOSS" "$DELAY_MS"
edited=$(python3 "$CLIENT" edit "$EDITS")
say "   edited: $edited"
phase "edits: relais"
relais_run "$EDITS" "classes/CM2/grands/"
ER_S=$R_SECONDS ER_W=$R_WIRE ER_AFTER=$R_AFTER_UPLOAD
say "   relais: ${R_SECONDS} s, ${R_WIRE} bytes on the wire, $R_UP of them up (gateway got $R_CHUNKS chunk bytes)"
phase "edits: rsync"
rsync_run "$EDITS" grands
ES_S=$S_SECONDS ES_W=$S_WIRE
say "   rsync: ${S_SECONDS} s, ${S_WIRE} bytes on the wire"
r=$(ratio "$ER_W" "$ES_W")
row "edits in $EDIT_FILES files: bytes on the wire" "$ER_W" "$ES_W" "$r" "<= 1.2" "$(verdict "$r" "<=" 1.2)"
row "edits in $EDIT_FILES files: wall time (s)" "$ER_S" "$ES_S" "$(ratio "$ER_S" "$ES_S")" "-" "info"
# relais's figure above includes uploading the edited files to the box (a GB for ten 100 MB files, hashed as
# it arrives); rsync reads them where they lie. What replication itself took:
row "  of which after the upload to the box (s)" "$ER_AFTER" "$ES_S" "$(ratio "$ER_AFTER" "$ES_S")" "-" "info"

# --- 3. goodput on one large file ------------------------------------------------------------------------------------
phase "goodput: one file of $BIG_MB MB"
BIG="$WORK/big"
BIG_BYTES=$((BIG_MB * 1000000))
python3 "$CLIENT" gen-big "$BIG/film.mp4" --bytes "$BIG_BYTES"
relais_run "$BIG" "classes/CM2/film/"
# From the first chunk at the gateway to the file listed there: the transfer itself (the session starts up
# to 2 s after the upload, and the first batch needs a round trip before its first chunk is whole).
GR_T=$(python3 -c "print(round($R_SECONDS - $R_FIRST, 2))")
GR_E2E=$R_SECONDS
phase "goodput: rsync"
rsync_run "$BIG" film
GS_T=$S_SECONDS
rate_share() { python3 -c "print(f'{$BIG_BYTES / $1 / ($LINK_BPS / 8):.2f}')"; }
r=$(rate_share "$GR_T")
row "goodput / link rate (transfer)" "$r" "$(rate_share "$GS_T")" "$(ratio "$GS_T" "$GR_T")" ">= 0.90" \
    "$(verdict "$r" ">=" 0.90)"
row "goodput / link rate (upload to visible)" "$(rate_share "$GR_E2E")" "$(rate_share "$GS_T")" \
    "$(ratio "$GS_T" "$GR_E2E")" "-" "info"

# --- summary -------------------------------------------------------------------------------------------------------
phase "done"
printf '\nlink %s, %s ms each way, %s %% loss; sizes / %s; relais %s\n' "$RATE" "$DELAY_MS" "$LOSS" "$SCALE" \
    "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")"
printf '%-44s %12s %12s %7s %9s  %s\n' "metric" "relais" "rsync" "ratio" "goal" "result"
printf '%s\n' "${ROWS[@]}"
printf 'school day: %s files, %s distinct bytes; wire bytes: relais %s, rsync %s\n' "$DAY_FILES" "$DAY_UNIQUE" \
    "$DR_W" "$DS_W"

#!/usr/bin/env bash
# Checks the emulated rural link end to end and prints what it measured: RTT, TCP throughput (1 and 4 streams,
# both ways), loss, cut and restore, the delay stage's CPU at 2 and 10 Mbit/s, and that `down` leaves nothing.
# Run as root (or with password-less sudo): tests/link/check.sh. Needs iperf3 and iputils-ping besides what
# link.sh needs. Knobs: CHECK_SECONDS (per iperf3 run, default 15), CHECK_PREFIX (default rlchk<pid>).
# Exit 0 when every check passed; 1 when one failed; 3 when the link cannot be made here.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LINK=$HERE/link.sh
SECS=${CHECK_SECONDS:-15}
P=${CHECK_PREFIX:-rlchk$$}
RATE=2mbit DELAY=100 LOSS=1

say() { printf 'check.sh: %s\n' "$*" >&2; }
for t in iperf3 ping python3 timeout; do
    command -v "$t" >/dev/null || { say "missing $t (Debian: apt-get install iperf3 iputils-ping python3 coreutils)"; exit 3; }
done
if [[ $EUID -ne 0 ]]; then
    sudo -n true 2>/dev/null || { say "needs root or password-less sudo"; exit 3; }
    exec sudo -n "$0" "$@"
fi

WORK=$(mktemp -d)
cleanup() {
    "$LINK" down "$P" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ROWS=()
FAILED=0
row() { ROWS+=("$(printf '%-40s %-22s %s' "$1" "$2" "$3")"); }
check() { # WHAT MEASURED EXPECTED CONDITION(awk expression on v) VALUE
    local ok=ok
    awk -v v="$5" "BEGIN { exit !($4) }" || { ok=FAIL; FAILED=1; }
    row "$1" "$2" "$3  [$ok]"
}

# --- up ---------------------------------------------------------------------------------------------------
t0=$(date +%s.%N)
rc=0
"$LINK" up "$P" --rate $RATE --delay-ms $DELAY --loss $LOSS >"$WORK/up" || rc=$?
((rc == 0)) || { say "link.sh up failed with $rc"; exit "$rc"; }
up_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
BOX=$(sed -n 's/^box=//p' "$WORK/up")
GW=$(sed -n 's/^gw=//p' "$WORK/up")
row "link.sh up" "${up_s} s" "box=$BOX gw=$GW"
# Re-running up with the same settings must succeed and keep the delay stage.
pid1=$("$LINK" status "$P" | sed -n 's/^delayline_pid=//p')
"$LINK" up "$P" --rate $RATE --delay-ms $DELAY --loss $LOSS >/dev/null 2>&1
pid2=$("$LINK" status "$P" | sed -n 's/^delayline_pid=//p')
check "link.sh up again (idempotent)" "delay pid $pid1 -> $pid2" "unchanged" 'v == 1' "$([[ -n $pid1 && $pid1 == "$pid2" ]] && echo 1 || echo 0)"

inbox() { "$LINK" exec "$P" box -- "$@"; }
ingw() { "$LINK" exec "$P" gw -- "$@"; }
counter() { "$LINK" status "$P" | sed -n "s/^$1=//p"; }

# --- RTT and loss by ping ---------------------------------------------------------------------------------
inbox ping -q -c 100 -i 0.05 -W 2 "$GW" >"$WORK/ping" 2>&1 || true
rtt=$(sed -n 's|^rtt min/avg/max/mdev = [0-9.]*/\([0-9.]*\)/.*|\1|p' "$WORK/ping")
ping_loss=$(sed -n 's/.* \([0-9.]*\)% packet loss.*/\1/p' "$WORK/ping")
check "RTT (ping, avg of 100)" "${rtt:-none} ms" "≈ $((2 * DELAY)) ms" 'v >= 195 && v <= 230' "${rtt:-0}"
check "ping loss (round trip)" "${ping_loss:-?} %" "≈ 2 % (1 % each way)" 'v <= 8' "${ping_loss:-100}"

# --- TCP throughput ---------------------------------------------------------------------------------------
ingw iperf3 -s -B "$GW" >"$WORK/iperf3-server.log" 2>&1 &
for _ in $(seq 100); do
    ingw ss -ltn 2>/dev/null | grep -q ":5201 " && break
    sleep 0.05
done
# iperf3 box → gw (or -R: gw → box), echoes "MBIT RETRANSMITS" as the receiver saw it.
iperf() { # STREAMS [-R]
    local out=$WORK/iperf3-$1${2:-}.json
    timeout $((SECS + 30)) "$LINK" exec "$P" box -- iperf3 -c "$GW" -t "$SECS" -P "$1" ${2:-} -J --connect-timeout 5000 >"$out" 2>&1 || {
        say "iperf3 -P $1 ${2:-} failed:"
        tail -n 5 "$out" >&2
        echo "0 0"
        return 0
    }
    python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["end"]
print("%.2f %d" % (e["sum_received"]["bits_per_second"] / 1e6, e["sum_sent"].get("retransmits", 0)))' "$out"
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
CLK=$(getconf CLK_TCK)

lost0=$(counter lost_box_to_gw) passed0=$(counter passed_box_to_gw)
lostr0=$(counter lost_gw_to_box) passedr0=$(counter passed_gw_to_box)
dpid=$(counter delayline_pid)
for spec in "1 " "1 -R" "4 " "4 -R"; do
    set -- $spec
    n=$1 dir="box->gw"
    [[ ${2:-} == -R ]] && dir="gw->box"
    c0=$(cpu_ticks "$dpid") s0=$(date +%s.%N)
    read -r mbit retr < <(iperf "$n" "${2:-}")
    cpu=$(awk -v a="$c0" -v b="$(cpu_ticks "$dpid")" -v t0="$s0" -v t1="$(date +%s.%N)" -v k="$CLK" \
        'BEGIN { printf "%.1f", 100 * (b - a) / k / (t1 - t0) }')
    if ((n == 1)); then
        check "TCP 1 stream $dir" "$mbit Mbit/s ($retr retr)" "≤ 2 (CUBIC: 1.4–1.9)" 'v >= 0.3 && v <= 2.05' "$mbit"
    else
        check "TCP 4 streams $dir" "$mbit Mbit/s ($retr retr)" "≈ 1.8–1.95 (≤ 2)" 'v >= 1.5 && v <= 2.05' "$mbit"
        [[ $dir == "box->gw" ]] && cpu2=$cpu
    fi
done
lost=$(($(counter lost_box_to_gw) - lost0)) passed=$(($(counter passed_box_to_gw) - passed0))
lostr=$(($(counter lost_gw_to_box) - lostr0)) passedr=$(($(counter passed_gw_to_box) - passedr0))
pct() { awk -v l="$1" -v p="$2" 'BEGIN { printf "%.2f", (l + p) ? 100 * l / (l + p) : 0 }'; }
l1=$(pct "$lost" "$passed") l2=$(pct "$lostr" "$passedr")
check "loss box->gw (nft, during iperf3)" "$l1 % of $((lost + passed)) pkts" "≈ $LOSS %" 'v >= 0.5 && v <= 1.6' "$l1"
check "loss gw->box (nft, during iperf3)" "$l2 % of $((lostr + passedr)) pkts" "≈ $LOSS %" 'v >= 0.5 && v <= 1.6' "$l2"
row "delay stage CPU, 2 Mbit/s, 4 streams" "${cpu2} % of a core" ""

# --- 10 Mbit/s: throughput and CPU ------------------------------------------------------------------------
"$LINK" up "$P" --rate 10mbit --delay-ms $DELAY --loss $LOSS >/dev/null 2>&1
c0=$(cpu_ticks "$dpid") s0=$(date +%s.%N)
read -r mbit retr < <(iperf 4)
cpu10=$(awk -v a="$c0" -v b="$(cpu_ticks "$dpid")" -v t0="$s0" -v t1="$(date +%s.%N)" -v k="$CLK" \
    'BEGIN { printf "%.1f", 100 * (b - a) / k / (t1 - t0) }')
check "TCP 4 streams box->gw at 10mbit" "$mbit Mbit/s ($retr retr)" "≤ 10" 'v >= 3 && v <= 10.2' "$mbit"
check "delay stage CPU, 10 Mbit/s, 4 streams" "${cpu10} % of a core" "< 25 %" 'v < 25' "$cpu10"
"$LINK" up "$P" --rate $RATE --delay-ms $DELAY --loss $LOSS >/dev/null 2>&1

# --- cut and restore --------------------------------------------------------------------------------------
received() { sed -n 's/.* \([0-9]*\) received.*/\1/p' "$1"; }
"$LINK" cut "$P" 2>/dev/null
inbox ping -q -c 10 -i 0.2 -W 1 "$GW" >"$WORK/ping-cut" 2>&1 || true
check "ping while cut" "$(received "$WORK/ping-cut")/10 answered" "0" 'v == 0' "$(received "$WORK/ping-cut")"
"$LINK" restore "$P" 2>/dev/null
inbox ping -q -c 20 -i 0.2 -W 2 "$GW" >"$WORK/ping-restored" 2>&1 || true
check "ping after restore" "$(received "$WORK/ping-restored")/20 answered" "≈ 20" 'v >= 16' "$(received "$WORK/ping-restored")"

# A TCP stream across a 5 s cut: it stalls, then carries on once the line is back (after the retransmission
# timer, doubled at each try during the cut, next fires: a few seconds).
timeout 70 "$LINK" exec "$P" box -- iperf3 -c "$GW" -t 24 -i 1 -J >"$WORK/iperf3-cut.json" 2>&1 &
ipid=$!
sleep 4
"$LINK" cut "$P" 2>/dev/null
sleep 5
"$LINK" restore "$P" 2>/dev/null
wait "$ipid" || true
read -r during after resumed < <(python3 -c 'import json,sys
iv = [i["sum"] for i in json.load(open(sys.argv[1]))["intervals"]]
mbit = lambda sel: sum(i["bits_per_second"] for i in sel) / max(1, len(sel)) / 1e6
back = [i["start"] for i in iv if i["start"] >= 9 and i["bytes"] > 0]
print("%.2f %.2f %s" % (mbit([i for i in iv if 5.5 <= i["start"] < 8.5]), mbit([i for i in iv if i["start"] >= 16]),
      "%.0f" % (back[0] - 9) if back else "never"))' "$WORK/iperf3-cut.json" 2>/dev/null || echo "? 0 never")
check "TCP across a 5 s cut: during / after" "$during / $after Mbit/s" "0 / > 0.3" 'v > 0.3' "$after"
row "  TCP sending again after restore" "after ~${resumed} s" "(RTO backoff)"

# --- down -------------------------------------------------------------------------------------------------
"$LINK" down "$P" 2>/dev/null
"$LINK" down "$P" 2>/dev/null # twice: idempotent
left=()
for ns in "$P-box" "$P-gw" "$P-mid"; do [[ -e /run/netns/$ns ]] && left+=("netns $ns"); done
[[ -e /run/relais-link/$P ]] && left+=("state /run/relais-link/$P")
for d in /proc/[0-9]*; do
    tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -q -- "--prefix $P " && left+=("process ${d#/proc/}")
done
ip -o link show 2>/dev/null | grep -qE '^[0-9]+: (wan|tobox|togw|delay)[:@]' && left+=("link interface in the root namespace")
check "down: left behind" "${left[*]:-nothing}" "nothing" 'v == 0' "${#left[@]}"

printf '\n%-40s %-22s %s\n' "what (link $RATE, ${DELAY} ms each way, $LOSS % loss each way)" "measured" "expected"
printf '%s\n' "${ROWS[@]}"
if ((FAILED)); then echo "check.sh: FAILED"; exit 1; fi
echo "check.sh: all checks passed"

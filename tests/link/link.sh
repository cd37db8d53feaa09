#!/usr/bin/env bash
# An emulated rural link between two network namespaces: the box in PREFIX-box, the regional gateway in
# PREFIX-gw, joined through PREFIX-mid, where every packet gets a one-way delay (userspace, delayline.py),
# random loss (nftables) and a rate limit (tc tbf), in each direction. How and why: tests/link/README.md.
#
#   link.sh up [PREFIX] [--rate 2mbit] [--delay-ms 100] [--loss 1] [--queue-ms 200]
#                                  prints box=10.X.Y.1 gw=10.X.Y.2 box_ns=… gw_ns=… (one per line)
#   link.sh cut [PREFIX]           every packet between box and gateway dropped (the line is dead, links stay up)
#   link.sh restore [PREFIX]       undoes cut
#   link.sh status [PREFIX]        settings, cut or not, loss and queue counters, the delay stage's pid
#   link.sh exec [PREFIX] box|gw -- CMD…   runs CMD in that namespace (ip netns exec)
#   link.sh down [PREFIX]          removes everything up made, and kills what still runs in the namespaces
#   link.sh down-all               down for every prefix a crashed run left behind
#
# PREFIX defaults to `rl`: letters, digits, `_` and `-`, at most 32 characters. Every subcommand is idempotent.
# Exit codes: 0 done; 1 failed (message on stderr); 2 usage; 3 namespaces cannot be made here (not root and no
# password-less sudo, no CAP_NET_ADMIN, or a tool is missing): callers may skip or fall back.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE_ROOT=${RELAIS_LINK_STATE:-/run/relais-link}
LOCK_TIMEOUT=60    # seconds to wait for another link.sh (setup and teardown are serialised, they take <1 s)
READY_TIMEOUT=10   # seconds for the delay stage to attach to its TUN device
STOP_TIMEOUT=5     # seconds for a process to exit after SIGTERM before SIGKILL

say() { printf 'link.sh: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
unavailable() {
    say "=================================================================================="
    say "UNAVAILABLE: $*"
    say "the emulated link needs root (or password-less sudo), CAP_NET_ADMIN, network"
    say "namespaces, /dev/net/tun, and: iproute2 nftables python3 util-linux"
    say "=================================================================================="
    exit 3
}

# --- privileges and tools ---------------------------------------------------------------------------------
if [[ $EUID -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        exec sudo -n --preserve-env=RELAIS_LINK_STATE "$0" "$@"
    fi
    [[ ${1:-} == exec ]] || unavailable "not root, and sudo -n is not allowed"
fi

need_tools() {
    local missing=() t
    for t in ip tc nft python3 flock setsid; do command -v "$t" >/dev/null || missing+=("$t"); done
    ((${#missing[@]} == 0)) || unavailable "missing ${missing[*]} (Debian: apt-get install iproute2 nftables python3 util-linux)"
    [[ -c /dev/net/tun ]] || unavailable "no /dev/net/tun (modprobe tun)"
}

# --- names ------------------------------------------------------------------------------------------------
check_prefix() {
    [[ $1 =~ ^[A-Za-z0-9_-]{1,32}$ ]] || { say "bad prefix '$1': letters, digits, _ and -, at most 32"; exit 2; }
}
set_names() {
    P=$1
    check_prefix "$P"
    NS_BOX=$P-box NS_GW=$P-gw NS_MID=$P-mid
    STATE=$STATE_ROOT/$P
    # 10.X.Y.0/24 from the prefix, so that two links' addresses differ (each lives in its own namespaces,
    # so even equal addresses would not clash, but distinct ones keep logs and captures unambiguous).
    local crc
    crc=$(printf '%s' "$P" | cksum | cut -d' ' -f1)
    NET=10.$(((crc >> 8) % 256)).$((crc % 256))
    BOX_IP=$NET.1 GW_IP=$NET.2
}
# Interface names live inside the link's own namespaces, so they are the same for every link.
IF_WAN=wan        # in PREFIX-box and PREFIX-gw: the end of the line
IF_TOBOX=tobox    # in PREFIX-mid: faces the box; its egress queue is the gateway→box bottleneck
IF_TOGW=togw      # in PREFIX-mid: faces the gateway; its egress queue is the box→gateway bottleneck
IF_DELAY=delay    # in PREFIX-mid: the TUN device the delay stage reads and writes
DELAY_TABLE=100   # in PREFIX-mid: routing table that sends arriving packets into the delay stage
NFT_TABLE="inet relais_link"

ns_exists() { [[ -e /run/netns/$1 ]]; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

lock() {
    mkdir -p "$STATE_ROOT"
    exec 9>"$STATE_ROOT/.lock"
    flock -w "$LOCK_TIMEOUT" 9 || die "another link.sh held $STATE_ROOT/.lock for more than ${LOCK_TIMEOUT}s"
}

# --- numbers ----------------------------------------------------------------------------------------------
# "2mbit", "512kbit", "1.5mbit", "2000000" (bits/s) → bits per second; 0 or "none" means no rate limit.
rate_bits() {
    local r=${1,,}
    [[ $r == none ]] && { echo 0; return; }
    [[ $r =~ ^([0-9]+(\.[0-9]+)?)(bit|kbit|mbit|gbit)?$ ]] || { say "bad --rate '$1' (e.g. 2mbit, 512kbit)"; exit 2; }
    local mult=1
    case ${BASH_REMATCH[3]} in kbit) mult=1000 ;; mbit) mult=1000000 ;; gbit) mult=1000000000 ;; esac
    awk -v n="${BASH_REMATCH[1]}" -v m="$mult" 'BEGIN { printf "%d\n", n * m }'
}
check_number() { # NAME VALUE MAX
    [[ $2 =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk -v v="$2" -v m="$3" 'BEGIN { exit !(v <= m) }' ||
        { say "bad $1 '$2' (a number from 0 to $3)"; exit 2; }
}

# --- the delay stage --------------------------------------------------------------------------------------
# The pid of this prefix's delay stage if it runs, else nothing. Checked against the command line, so a
# stale pid file never makes us signal an unrelated process.
delay_pid() {
    local pid
    pid=$(cat "$STATE/delayline.pid" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] && is_our_delayline "$pid" "$P" && echo "$pid"
    return 0
}
is_our_delayline() { # PID PREFIX
    local cmd
    cmd=$(tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null) || return 1
    grep -q 'delayline\.py$' <<<"$cmd" || return 1
    grep -qxF -- "--prefix" <<<"$cmd" && grep -A1 -xF -- "--prefix" <<<"$cmd" | tail -n1 | grep -qxF -- "$2"
}
# Every delay stage process of PREFIX, pid file or not (a crashed link.sh may have lost it).
delayline_pids() { # PREFIX
    local d pid
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        grep -qa 'delayline\.py' "$d/cmdline" 2>/dev/null || continue
        is_our_delayline "$pid" "$1" && echo "$pid"
    done
    return 0
}
# Running (a zombie has exited: it only waits for init, which may take its time, to reap it).
alive() { local st; st=$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null) && [[ -n $st && $st != Z ]]; }
stop_pids() { # PID… : SIGTERM, wait, SIGKILL
    (($#)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT)) pid running
    while :; do
        running=()
        for pid in "$@"; do alive "$pid" && running+=("$pid"); done
        ((${#running[@]})) || return 0
        if ((SECONDS >= deadline)); then
            say "killing ${running[*]} (no exit ${STOP_TIMEOUT}s after SIGTERM)"
            kill -KILL "${running[@]}" 2>/dev/null || true
            sleep 0.1
            return 0
        fi
        sleep 0.05
    done
}
start_delayline() { # DELAY_MS
    rm -f "$STATE/delayline.pid"
    # fd 9 (the lock) must not be inherited, or the daemon would hold every later link.sh off.
    ip netns exec "$NS_MID" setsid python3 "$HERE/delayline.py" --dev "$IF_DELAY" --delay-ms "$1" \
        --pidfile "$STATE/delayline.pid" --prefix "$P" </dev/null >>"$STATE/delayline.log" 2>&1 9>&- &
    local deadline=$((SECONDS + READY_TIMEOUT))
    until [[ -s $STATE/delayline.pid ]]; do
        if ! alive $! || ((SECONDS >= deadline)); then
            tail -n 20 "$STATE/delayline.log" >&2 || true
            die "the delay stage did not start within ${READY_TIMEOUT}s (log: $STATE/delayline.log)"
        fi
        sleep 0.02
    done
    echo "$1" >"$STATE/delayline.delay"
}

# --- subcommands ------------------------------------------------------------------------------------------
cmd_up() {
    local rate=2mbit delay=100 loss=1 queue=200
    while (($#)); do
        case $1 in
        --rate) rate=${2:?}; shift 2 ;;
        --delay-ms) delay=${2:?}; shift 2 ;;
        --loss) loss=${2:?}; shift 2 ;;
        --queue-ms) queue=${2:?}; shift 2 ;;
        *) say "up: unknown option $1"; exit 2 ;;
        esac
    done
    local bits loss_bp
    bits=$(rate_bits "$rate")
    check_number --delay-ms "$delay" 60000
    check_number --loss "$loss" 100
    check_number --queue-ms "$queue" 60000
    loss_bp=$(awk -v l="$loss" 'BEGIN { printf "%d\n", l * 100 + 0.5 }') # in 1/10000

    lock
    mkdir -p "$STATE"
    # A half-made link is worse than none: on any failure from here, take it all down again.
    trap 'rc=$?; if ((rc != 0)); then say "up failed (exit $rc), removing $P"; teardown || true; exit 1; fi' EXIT

    # Making a namespace needs CAP_SYS_ADMIN, configuring it CAP_NET_ADMIN: try both before anything else.
    local ns err
    for ns in "$NS_BOX" "$NS_GW" "$NS_MID"; do
        if ! err=$({ ns_exists "$ns" || ip netns add "$ns"; } 2>&1 && ip -n "$ns" link set lo up 2>&1); then
            trap - EXIT
            teardown >/dev/null 2>&1 || true
            unavailable "cannot create or configure network namespace $ns: $err"
        fi
    done

    # The wires: box.wan ⇄ mid.tobox, mid.togw ⇄ gw.wan (both ends of a veth pair come and go together).
    ip -n "$NS_MID" link show "$IF_TOBOX" >/dev/null 2>&1 ||
        ip -n "$NS_MID" link add "$IF_TOBOX" type veth peer name "$IF_WAN" netns "$NS_BOX"
    ip -n "$NS_MID" link show "$IF_TOGW" >/dev/null 2>&1 ||
        ip -n "$NS_MID" link add "$IF_TOGW" type veth peer name "$IF_WAN" netns "$NS_GW"
    ip -n "$NS_MID" link show "$IF_DELAY" >/dev/null 2>&1 ||
        ip -n "$NS_MID" tuntap add dev "$IF_DELAY" mode tun

    # No IPv6 on the wires: router solicitations and MLD would only add noise to what tests measure.
    in_ns "$NS_BOX" sh -c "echo 1 >/proc/sys/net/ipv6/conf/$IF_WAN/disable_ipv6"
    in_ns "$NS_GW" sh -c "echo 1 >/proc/sys/net/ipv6/conf/$IF_WAN/disable_ipv6"
    # The middle is a router: forwarding on; reverse-path filtering off, since packets coming back out of the
    # delay device carry sources routed via the veths; proxy ARP without delay, so that the box and the
    # gateway see each other as on-link neighbours in one /24.
    in_ns "$NS_MID" sh -c "
        set -e
        echo 1 >/proc/sys/net/ipv4/ip_forward
        for c in all default $IF_TOBOX $IF_TOGW $IF_DELAY; do
            echo 0 >/proc/sys/net/ipv4/conf/\$c/rp_filter
            echo 0 >/proc/sys/net/ipv4/conf/\$c/send_redirects
        done
        for c in $IF_TOBOX $IF_TOGW; do
            echo 1 >/proc/sys/net/ipv4/conf/\$c/proxy_arp
            echo 0 >/proc/sys/net/ipv4/neigh/\$c/proxy_delay
        done
        for c in $IF_TOBOX $IF_TOGW $IF_DELAY; do echo 1 >/proc/sys/net/ipv6/conf/\$c/disable_ipv6; done
    "

    # One packet per skb from the two ends (no TSO/GSO batches): loss, tbf and the counters then see what a
    # real line sees, and the delay stage never has to take a 64 KiB batch apart.
    ip -n "$NS_BOX" link set dev "$IF_WAN" gso_max_segs 1
    ip -n "$NS_GW" link set dev "$IF_WAN" gso_max_segs 1
    ip -n "$NS_BOX" addr replace "$BOX_IP/24" dev "$IF_WAN"
    ip -n "$NS_GW" addr replace "$GW_IP/24" dev "$IF_WAN"
    ip -n "$NS_MID" addr replace "$NET.253/32" dev "$IF_TOBOX"
    ip -n "$NS_MID" addr replace "$NET.254/32" dev "$IF_TOGW"
    local dev
    for dev in "$IF_TOBOX" "$IF_TOGW" "$IF_DELAY"; do ip -n "$NS_MID" link set "$dev" up; done
    ip -n "$NS_BOX" link set "$IF_WAN" up
    ip -n "$NS_GW" link set "$IF_WAN" up
    ip -n "$NS_MID" route replace "$BOX_IP/32" dev "$IF_TOBOX"
    ip -n "$NS_MID" route replace "$GW_IP/32" dev "$IF_TOGW"

    # Delay: whatever arrives from the box or the gateway is routed into the TUN device; the delay stage
    # writes it back after delay-ms, and coming in from `delay` it takes the main table to the other side.
    ip -n "$NS_MID" rule del pref 100 2>/dev/null || true
    ip -n "$NS_MID" rule del pref 101 2>/dev/null || true
    local pid
    pid=$(delay_pid)
    if awk -v d="$delay" 'BEGIN { exit !(d == 0) }'; then
        stop_pids $pid
    else
        if [[ -n $pid && $(cat "$STATE/delayline.delay" 2>/dev/null) != "$delay" ]]; then
            stop_pids "$pid"
            pid=
        fi
        [[ -n $pid ]] || start_delayline "$delay"
        ip -n "$NS_MID" route replace default dev "$IF_DELAY" table "$DELAY_TABLE"
        ip -n "$NS_MID" rule add pref 100 iif "$IF_TOBOX" lookup "$DELAY_TABLE"
        ip -n "$NS_MID" rule add pref 101 iif "$IF_TOGW" lookup "$DELAY_TABLE"
    fi

    # Loss, and the cut switch, in the forward hook. Loss is drawn once per packet, as it leaves towards the
    # other side: after the delay stage, which only ever hands back single packets (a GSO batch from the
    # sender would otherwise be lost whole). The cut chain drops every pass, so packets already in the
    # delay line are lost too.
    local loss_rules=
    if ((loss_bp > 0)); then
        loss_rules="oifname \"$IF_TOGW\" numgen random mod 10000 < $loss_bp counter name lost_box_to_gw drop
            oifname \"$IF_TOBOX\" numgen random mod 10000 < $loss_bp counter name lost_gw_to_box drop"
    fi
    # Declaring the table first makes the delete valid on the first run; the file is applied atomically.
    in_ns "$NS_MID" nft -f - <<EOF
table $NFT_TABLE {}
delete table $NFT_TABLE
table $NFT_TABLE {
    counter lost_box_to_gw {}
    counter lost_gw_to_box {}
    counter cut_dropped {}
    counter passed_box_to_gw {}
    counter passed_gw_to_box {}
    chain cut {}
    chain forward {
        type filter hook forward priority 0; policy accept;
        jump cut
        $loss_rules
        oifname "$IF_TOGW" counter name passed_box_to_gw
        oifname "$IF_TOBOX" counter name passed_gw_to_box
    }
}
EOF

    # Rate: a token bucket on each egress of the middle, i.e. after the delay, where a real line's modem or
    # DSLAM queues. queue-ms of backlog at the line rate is allowed before tail drop.
    for dev in "$IF_TOBOX" "$IF_TOGW"; do
        if ((bits == 0)); then
            tc -n "$NS_MID" qdisc del dev "$dev" root 2>/dev/null || true
        else
            # Burst: 5 ms at line rate, at least two full frames (tbf drops frames larger than the bucket).
            local burst=$((bits / 8 / 200))
            ((burst >= 3028)) || burst=3028
            tc -n "$NS_MID" qdisc replace dev "$dev" root tbf rate "${bits}bit" burst "$burst" latency "${queue}ms"
        fi
    done

    # Carrier comes up asynchronously (linkwatch); until it does, a veth's queue drops what is sent.
    local deadline=$((SECONDS + READY_TIMEOUT)) spec
    for spec in "$NS_BOX:$IF_WAN" "$NS_GW:$IF_WAN" "$NS_MID:$IF_TOBOX" "$NS_MID:$IF_TOGW"; do
        until [[ $(ip -n "${spec%%:*}" -o link show dev "${spec#*:}") == *" state UP "* ]]; do
            ((SECONDS < deadline)) || die "${spec#*:} in ${spec%%:*} is not up after ${READY_TIMEOUT}s"
            sleep 0.02
        done
    done

    cat >"$STATE/params" <<EOF
prefix=$P
rate_bits=$bits
delay_ms=$delay
loss_percent=$loss
queue_ms=$queue
box=$BOX_IP
gw=$GW_IP
EOF
    trap - EXIT
    say "up $P: box $BOX_IP ($NS_BOX) ⇄ gw $GW_IP ($NS_GW): rate ${bits}bit/s, delay ${delay}ms each way, loss ${loss}% each way"
    printf 'box=%s\ngw=%s\nbox_ns=%s\ngw_ns=%s\n' "$BOX_IP" "$GW_IP" "$NS_BOX" "$NS_GW"
}

require_up() {
    ns_exists "$NS_MID" && [[ -f $STATE/params ]] || die "link $P is not up (link.sh up $P)"
}

cmd_cut() {
    lock
    require_up
    in_ns "$NS_MID" nft -f - <<EOF
flush chain $NFT_TABLE cut
add rule $NFT_TABLE cut counter name cut_dropped drop
EOF
    say "cut $P"
}

cmd_restore() {
    lock
    require_up
    in_ns "$NS_MID" nft flush chain $NFT_TABLE cut
    say "restored $P"
}

cmd_status() {
    require_up
    cat "$STATE/params"
    local chain
    chain=$(in_ns "$NS_MID" nft list chain $NFT_TABLE cut)
    if [[ $chain == *drop* ]]; then echo "cut=yes"; else echo "cut=no"; fi
    echo "delayline_pid=$(delay_pid)"
    local c
    for c in passed_box_to_gw lost_box_to_gw passed_gw_to_box lost_gw_to_box cut_dropped; do
        echo "$c=$(in_ns "$NS_MID" nft list counter $NFT_TABLE "$c" | awk '/packets/ { print $2 }')"
    done
    local dev
    for dev in "$IF_TOGW" "$IF_TOBOX"; do
        echo "qdisc_$dev=$(tc -n "$NS_MID" -s qdisc show dev "$dev" | tr -s ' \n' ' ')"
    done
}

teardown() {
    local pids ns
    # shellcheck disable=SC2046
    stop_pids $(delayline_pids "$P")
    for ns in "$NS_BOX" "$NS_GW" "$NS_MID"; do
        ns_exists "$ns" || continue
        # What callers started inside (servers, iperf3…) would keep the namespace and its veth alive.
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        if [[ -n $pids ]]; then
            say "stopping processes left in $ns: $(echo $pids)"
            # shellcheck disable=SC2086
            stop_pids $pids
        fi
        ip netns del "$ns" 2>/dev/null || ! ns_exists "$ns" || die "cannot delete namespace $ns"
    done
    rm -rf "$STATE"
}

cmd_down() {
    lock
    teardown
    say "down $P"
}

cmd_down_all() {
    lock
    local prefixes=() d ns pid cmd
    for d in "$STATE_ROOT"/*/; do
        [[ -d $d ]] && prefixes+=("$(basename "$d")")
    done
    # Namespaces whose state folder was lost: a middle namespace holding our delay device and wires.
    for ns in $(ip netns list 2>/dev/null | awk '{ print $1 }' | grep -- '-mid$' || true); do
        ip -n "$ns" link show "$IF_DELAY" >/dev/null 2>&1 && ip -n "$ns" link show "$IF_TOBOX" >/dev/null 2>&1 &&
            prefixes+=("${ns%-mid}")
    done
    # Delay stages without either.
    for d in /proc/[0-9]*; do
        grep -qa 'delayline\.py' "$d/cmdline" 2>/dev/null || continue
        cmd=$(tr '\0' '\n' <"$d/cmdline" 2>/dev/null) || continue
        pid=$(grep -A1 -xF -- "--prefix" <<<"$cmd" | tail -n1)
        [[ -n $pid ]] && is_our_delayline "${d#/proc/}" "$pid" && prefixes+=("$pid")
    done
    local p
    for p in $(printf '%s\n' "${prefixes[@]}" | sort -u); do
        [[ $p =~ ^[A-Za-z0-9_-]{1,32}$ ]] || continue
        set_names "$p"
        teardown
        say "down $p"
    done
}

cmd_exec() {
    local side=${1:-}
    shift || true
    [[ ${1:-} == -- ]] && shift
    (($#)) || usage
    case $side in
    box) ns=$NS_BOX ;;
    gw) ns=$NS_GW ;;
    *) usage ;;
    esac
    ns_exists "$ns" || die "no namespace $ns (link.sh up $P)"
    exec ip netns exec "$ns" "$@"
}

# --- main -------------------------------------------------------------------------------------------------
sub=${1:-}
shift || true
# The prefix is optional: a first argument that is an option or a side is not one.
prefix=rl
if [[ $sub != down-all && $# -gt 0 && $1 != -* && $1 != box && $1 != gw ]]; then
    prefix=$1
    shift
fi
[[ $sub == down-all || $sub == exec ]] || need_tools
set_names "$prefix"
case $sub in
up) cmd_up "$@" ;;
cut) cmd_cut ;;
restore) cmd_restore ;;
status) cmd_status ;;
down) cmd_down ;;
down-all) need_tools; cmd_down_all ;;
exec) cmd_exec "$@" ;;
*) usage ;;
esac

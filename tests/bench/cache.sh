#!/usr/bin/env bash
# Relais LAN cache benchmark: relais's cache against nginx proxy_cache (proxy_cache_lock on) and squid
# (accel mode, collapsed_forwarding on), all three in front of the same loopback origin, in the same run.
# What it measures and the goals: tests/bench/README.md, section cache.sh. Run from anywhere: tests/bench/cache.sh
# Exit 0 when every measurement ran (goals missed or not, relais's cache absent or not); 1 when something could
# not run or answered wrong (wrong bytes, errors, a proxy died: its figures are then not figures); 2 when a tool
# is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# Knobs (environment). The defaults are the benchmark; smaller values only for trying the script out.
BIG_MIB=${BENCH_BIG_MIB:-100}             # the large object, MiB of random bytes
CLIENTS=${BENCH_CLIENTS:-30}              # simultaneous cold clients of the large object
ORIGIN_RATE=${BENCH_ORIGIN_RATE:-25m}     # the origin's rate per connection (nginx limit_rate: 25m = 25 MiB/s)
DURATION=${BENCH_DURATION:-10}            # seconds per throughput run (wrk)
LAT_DURATION=${BENCH_LAT_DURATION:-5}     # seconds of each latency run (wrk, one connection)
LAT_ROUNDS=${BENCH_LAT_ROUNDS:-3}         # latency runs per proxy, taken in turn; the median is reported
COLD_TIMEOUT=${BENCH_COLD_TIMEOUT:-300}   # seconds a cold client may take at most
RELAIS_BIN=${RELAIS_BIN:-}                # a relais binary to use as is; unset: cargo build --release -p relais

BENCH_NAME=cache.sh
# shellcheck source=lib.sh
. "$ROOT/tests/bench/lib.sh"

# --- tools ---------------------------------------------------------------------------------------------------
find_tool() { command -v "$1" 2>/dev/null || { [[ -x "/usr/sbin/$1" ]] && echo "/usr/sbin/$1"; } || true; }
NGINX=$(find_tool nginx)
SQUID=$(find_tool squid)
missing=()
[[ -n "$NGINX" ]] || missing+=(nginx)
[[ -n "$SQUID" ]] || missing+=(squid)
for tool in wrk curl python3 sha256sum; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
    say "cache.sh: missing ${missing[*]}. On Debian: sudo apt-get install -y ${missing[*]/sha256sum/coreutils}"
    exit 2
fi

relais_binary

ulimit -n 4096 2>/dev/null || true

# --- scratch space and teardown --------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/relais-bench-cache.XXXXXX")
# nginx workers and squid started by root run as nobody / proxy: they must reach their folders in here.
chmod 755 "$WORK"
ORIGIN_PID=
NGINX_PID=
SQUID_PID=
RELAIS_PID=
BG_PIDS=()    # wrk and the cold clients while they run


# The processes a process started, theirs, and so on (a cold client is a subshell running curl in a pipeline).
descendants() {
    local c
    for c in $(pgrep -P "$1" 2>/dev/null); do
        descendants "$c"
        echo "$c"
    done
}

cleanup() {
    local rc=$? pid
    local -a all=()
    for pid in "${BG_PIDS[@]}"; do mapfile -t -O "${#all[@]}" all < <(descendants "$pid"; echo "$pid"); done
    for pid in "${all[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${all[@]}"; do stop_pid "$pid" KILL; done
    stop_pid "$RELAIS_PID" TERM
    stop_pid "$SQUID_PID" TERM
    stop_pid "$NGINX_PID" QUIT
    stop_pid "$ORIGIN_PID" QUIT
    if [[ $rc -ne 0 && $rc -ne 2 && -d "$WORK" ]]; then
        say "---- last lines of the logs ----"
        for log in "$WORK"/origin/error.log "$WORK"/nginx/error.log "$WORK"/squid/cache.log "$WORK"/relais.err; do
            [[ -s "$log" ]] && { say "-- $log"; tail -n 15 "$log" >&2; }
        done
    fi
    if [[ -n "${BENCH_KEEP:-}" ]]; then say "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


wait_up() { # pid url [expected-body-prefix]: up to 30 s
    local i
    for ((i = 0; i < 300; i++)); do
        kill -0 "$1" 2>/dev/null || return 1
        curl -s -o /dev/null --max-time 2 "$2" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

CLK_TCK=$(getconf CLK_TCK)
# A process and its children (nginx's workers and cache manager, squid's helpers).
tree() { { echo "$1"; pgrep -P "$1" 2>/dev/null || true; } | tr '\n' ' '; }

# --- the objects -------------------------------------------------------------------------------------------------
# One copy of each object, hard-linked under one folder per proxy: every proxy fetches its own URL (so the origin's
# log says who fetched what), and all get the same bytes, ETag and Last-Modified.
PROXIES=(relais nginx squid fwd)
mkdir -p "$WORK/objects" "$WORK/www"
phase "generating the objects: ${BIG_MIB} MiB, 1 MiB and 4 KiB of random bytes"
head -c "$((BIG_MIB << 20))" /dev/urandom >"$WORK/objects/big.bin"
head -c "$((1 << 20))" /dev/urandom >"$WORK/objects/mid.bin"
head -c 4096 /dev/urandom >"$WORK/objects/small.bin"
head -c 1000 /dev/urandom >"$WORK/objects/probe.bin"
BIG_BYTES=$((BIG_MIB << 20))
BIG_SHA=$(sha256sum <"$WORK/objects/big.bin" | cut -d' ' -f1)
for p in "${PROXIES[@]}"; do
    mkdir -p "$WORK/www/$p"
    ln "$WORK/objects/"*.bin "$WORK/www/$p/"
done
chmod -R a+rX "$WORK/objects" "$WORK/www"

# --- the origin: nginx on its own port, rate-limited, logging the body bytes of every request -----------------
ORIGIN_PORT=$(free_port)
mkdir -p "$WORK/origin/tmp"
cat >"$WORK/origin/nginx.conf" <<EOF
$(nginx_head "$WORK/origin" 1)
    log_format bytes '\$request_uri \$status \$body_bytes_sent "\$http_range" "\$http_user_agent"';
    access_log $WORK/origin/access.log bytes;
    server {
        listen 127.0.0.1:$ORIGIN_PORT;
        root $WORK/www;
        # Content-Length, ETag, Last-Modified and ranges come with nginx's static files.
        add_header Cache-Control "max-age=3600";
        limit_rate $ORIGIN_RATE;
        location = /healthz { access_log off; return 200 "ok"; }
        location = /status { access_log off; stub_status; }
    }
}
EOF
"$NGINX" -p "$WORK/origin/" -c "$WORK/origin/nginx.conf" -e "$WORK/origin/error.log" -g 'daemon off;' \
    >"$WORK/origin/stdout" 2>&1 &
ORIGIN_PID=$!
ORIGIN="http://127.0.0.1:$ORIGIN_PORT"
wait_up "$ORIGIN_PID" "$ORIGIN/healthz" || die "the origin (nginx) did not start"
phase "origin: nginx $("$NGINX" -v 2>&1 | sed 's/.*\///') on 127.0.0.1:$ORIGIN_PORT, limit_rate $ORIGIN_RATE per connection"
curl -sS -o /dev/null -D "$WORK/origin/head" "$ORIGIN/nginx/probe.bin" || die "the origin does not serve"
for h in Content-Length ETag Last-Modified 'Cache-Control: max-age=3600'; do
    grep -qi "^$h" "$WORK/origin/head" || die "the origin's answer lacks $h"
done

# Requests still being answered by the origin (stub_status's Writing, less the status request itself).
origin_busy() { curl -s --max-time 2 "$ORIGIN/status" | awk '/Writing/ { print $4 - 1 }'; }
wait_origin_idle() { # up to 60 s
    local i
    for ((i = 0; i < 600; i++)); do
        [[ "$(origin_busy)" == 0 ]] && return 0
        sleep 0.1
    done
    return 1
}
# What the origin sent for one path: "requests body-bytes ranged-requests".
origin_count() {
    awk -v p="$1" '$1 == p { n++; b += $3; if ($4 != "\"-\"") r++ } END { printf "%d %d %d\n", n, b, r }' \
        "$WORK/origin/access.log"
}

# --- nginx proxy_cache -------------------------------------------------------------------------------------------
NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx/tmp" "$WORK/nginx/cache"
[[ $EUID -eq 0 ]] && chown nobody "$WORK/nginx/cache" "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
$(nginx_head "$WORK/nginx" 2)
    access_log off;
    proxy_cache_path $WORK/nginx/cache levels=1:2 keys_zone=bench:16m max_size=2g inactive=1d use_temp_path=off;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 16;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location = /healthz { return 200 "ok"; }
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 1h;
            # One request fills an object, the others wait for it (and nothing gives up on a slow fill).
            proxy_cache_lock on;
            proxy_cache_lock_timeout 1h;
            proxy_cache_lock_age 1h;
            add_header X-Cache-Status \$upstream_cache_status;
        }
    }
}
EOF
"$NGINX" -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" -g 'daemon off;' \
    >"$WORK/nginx/stdout" 2>&1 &
NGINX_PID=$!
wait_up "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/healthz" || die "nginx (proxy_cache) did not start"
phase "nginx proxy_cache on 127.0.0.1:$NGINX_PORT (pid $NGINX_PID)"

# --- squid, reverse proxy (accel) ----------------------------------------------------------------------------------
SQUID_PORT=$(free_port)
mkdir -p "$WORK/squid/cache"
cat >"$WORK/squid/squid.conf" <<EOF
http_port 127.0.0.1:$SQUID_PORT accel defaultsite=127.0.0.1:$ORIGIN_PORT no-vhost
cache_peer 127.0.0.1 parent $ORIGIN_PORT 0 no-query originserver no-digest no-netdb-exchange name=origin
cache_peer_access origin allow all
http_access allow localhost
http_access deny all
never_direct allow all
# Before cache_dir: a cache_dir takes the maximum object size in force where it is declared.
maximum_object_size 1 GB
cache_dir ufs $WORK/squid/cache 4096 16 256
collapsed_forwarding on
visible_hostname relais-bench
pid_filename $WORK/squid/squid.pid
cache_log $WORK/squid/cache.log
access_log none
cache_store_log none
coredump_dir $WORK/squid
netdb_filename none
shutdown_lifetime 1 seconds
EOF
if [[ $EUID -eq 0 ]]; then
    # Squid started by root runs as cache_effective_user (proxy on Debian).
    SQUID_USER=$(awk '/^cache_effective_user/ { print $2 }' "$WORK/squid/squid.conf")
    SQUID_USER=${SQUID_USER:-proxy}
    chown -R "$SQUID_USER" "$WORK/squid"
fi
timeout 60 "$SQUID" -N -z -f "$WORK/squid/squid.conf" >"$WORK/squid/z.out" 2>&1 ||
    { cat "$WORK/squid/z.out" >&2; die "squid -z (creating the cache dir) failed"; }
"$SQUID" -N -f "$WORK/squid/squid.conf" >"$WORK/squid/stdout" 2>&1 &
SQUID_PID=$!
wait_up "$SQUID_PID" "http://127.0.0.1:$SQUID_PORT/squid/probe.bin" || {
    cat "$WORK/squid/stdout" >&2
    die "squid did not start"
}
phase "squid $("$SQUID" -v | sed -n 's/.*Version //p') accel on 127.0.0.1:$SQUID_PORT (pid $SQUID_PID)"

# --- relais ------------------------------------------------------------------------------------------------------
RELAIS_PORT=$(free_port)
PROXY_PORT=$(free_port)
cat >"$WORK/relais.toml" <<EOF
[logging]
level = "warn"

[cache]
size = "2GiB"
proxy_listen = "127.0.0.1:$PROXY_PORT"

[[cache.upstream]]
name = "origin"
url = "$ORIGIN"
EOF
RELAIS_ADMIN_PASSWORD="bench-$RANDOM$RANDOM" "$RELAIS_BIN" serve --data "$WORK/relais-data" \
    --listen "127.0.0.1:$RELAIS_PORT" --config "$WORK/relais.toml" >"$WORK/relais.out" 2>"$WORK/relais.err" &
RELAIS_PID=$!
BAD=()        # measurements that ran but answered wrong: the run is then not trustworthy
RELAIS_OK=    # 1 once relais answers /cache/origin/...
FWD_OK=       # 1 once relais's forward proxy answers
RELAIS_NOTE=
relais_alive() {
    [[ -n "$RELAIS_OK$FWD_OK" ]] || return 0
    kill -0 "$RELAIS_PID" 2>/dev/null && return 0
    say "   relais exited during: $*"
    say "--- relais stderr:"; tail -n 30 "$WORK/relais.err" >&2 || true
    BAD+=("relais exited during: $*")
    RELAIS_OK='' FWD_OK='' RELAIS_NOTE="relais exited during: $*"
    return 1
}
if wait_up "$RELAIS_PID" "http://127.0.0.1:$RELAIS_PORT/healthz"; then
    phase "relais $RELAIS_BIN on 127.0.0.1:$RELAIS_PORT, forward proxy 127.0.0.1:$PROXY_PORT (pid $RELAIS_PID)"
    code=$(curl -sS -o "$WORK/probe.out" -w '%{http_code}' --max-time 30 \
        "http://127.0.0.1:$RELAIS_PORT/cache/origin/relais/probe.bin" 2>/dev/null || true)
    if [[ "$code" == 200 ]] && cmp -s "$WORK/probe.out" "$WORK/objects/probe.bin"; then
        RELAIS_OK=1
    else
        RELAIS_NOTE="relais answers HTTP ${code:-nothing} on /cache/origin/…: no cache in this build"
        say "   $RELAIS_NOTE; its column will read n/a"
    fi
    code=$(curl -sS -o "$WORK/probe.out" -w '%{http_code}' --max-time 30 -x "http://127.0.0.1:$PROXY_PORT" \
        "$ORIGIN/fwd/probe.bin" 2>/dev/null || true)
    if [[ "$code" == 200 ]] && cmp -s "$WORK/probe.out" "$WORK/objects/probe.bin"; then
        FWD_OK=1
    else
        say "   relais's forward proxy on 127.0.0.1:$PROXY_PORT answers HTTP ${code:-nothing}: its row will read n/a"
    fi
else
    RELAIS_NOTE="relais did not start with a [cache] section"
    say "   $RELAIS_NOTE:"; tail -n 10 "$WORK/relais.err" >&2 || true
    stop_pid "$RELAIS_PID" TERM
    RELAIS_PID=
fi

# --- shared measuring helpers --------------------------------------------------------------------------------------
url_of() { # proxy object
    case $1 in
    relais) echo "http://127.0.0.1:$RELAIS_PORT/cache/origin/relais/$2" ;;
    nginx) echo "http://127.0.0.1:$NGINX_PORT/nginx/$2" ;;
    squid) echo "http://127.0.0.1:$SQUID_PORT/squid/$2" ;;
    fwd) echo "$ORIGIN/fwd/$2" ;;
    esac
}
# The client's extra curl arguments, in PX: the forward proxy's address for fwd.
proxy_args() { if [[ $1 == fwd ]]; then PX=(-x "http://127.0.0.1:$PROXY_PORT"); else PX=(); fi; }
pids_of() {
    case $1 in
    relais | fwd) echo "$RELAIS_PID" ;;
    nginx) tree "$NGINX_PID" ;;
    squid) tree "$SQUID_PID" ;;
    esac
}
proxy_ticks() { local -a pids; read -r -a pids <<<"$(pids_of "$1")"; cpu_ticks "${pids[@]}"; }
cache_header() { grep -i -m1 -E '^x-cache(-status)?:' "$1" | tr -d '\r' | sed 's/^[^:]*: *//; s/ from .*//' || true; }
available() { case $1 in relais) [[ -n "$RELAIS_OK" ]] ;; fwd) [[ -n "$FWD_OK" ]] ;; *) return 0 ;; esac; }

declare -A R   # results: R[proxy.metric]
NOTES=()       # what the summary must say under the table

# --- 1. cold: CLIENTS simultaneous clients of the large object, bytes the origin sent --------------------------------
cold() {
    local p=$1 url i t0 t1 c0 c1 bad=0 ok=0 hits rc line code size ttfb total n b r
    url=$(url_of "$p" big.bin)
    proxy_args "$p"
    phase "1. $p: $CLIENTS simultaneous cold clients of $url"
    mkdir -p "$WORK/cold/$p"
    c0=$(proxy_ticks "$p")
    t0=$(date +%s.%N)
    BG_PIDS=()
    for ((i = 0; i < CLIENTS; i++)); do
        # (curl's status must be written before errexit ends the group: hence `|| rc=$?`.)
        ( { rc=0; curl -sS --max-time "$COLD_TIMEOUT" "${PX[@]}" -D "$WORK/cold/$p/$i.head" \
                -w '%{stderr}RESULT %{http_code} %{size_download} %{time_starttransfer} %{time_total}\n' \
                "$url" 2>"$WORK/cold/$p/$i.err" || rc=$?; echo "$rc" >"$WORK/cold/$p/$i.rc"; } |
            sha256sum | cut -d' ' -f1 >"$WORK/cold/$p/$i.sha" ) &
        BG_PIDS+=($!)
    done
    for i in "${BG_PIDS[@]}"; do wait "$i" || true; done
    BG_PIDS=()
    t1=$(date +%s.%N)
    wait_origin_idle || say "   the origin was still sending 60 s after the clients were done"
    c1=$(proxy_ticks "$p")
    relais_alive "the cold clients ($p)" || [[ $p == nginx || $p == squid ]] || return 0
    declare -A seen=()
    for ((i = 0; i < CLIENTS; i++)); do
        rc=$(cat "$WORK/cold/$p/$i.rc" 2>/dev/null || echo "?")
        line=$(grep '^RESULT ' "$WORK/cold/$p/$i.err" || true)
        read -r _ code size ttfb total <<<"${line:-RESULT - - - -}"
        if [[ $rc == 0 && $code == 200 && $size == "$BIG_BYTES" && $(cat "$WORK/cold/$p/$i.sha") == "$BIG_SHA" ]]; then
            ok=$((ok + 1))
        else
            bad=$((bad + 1))
            ((bad <= 3)) && say "   client $i: curl exit $rc, HTTP $code, $size bytes, sha256 $(cat "$WORK/cold/$p/$i.sha")" \
                "$(grep -v '^RESULT' "$WORK/cold/$p/$i.err" | head -n 2 | tr '\n' ' ')"
        fi
        echo "$ttfb $total" >>"$WORK/cold/$p/times"
        hits=$(cache_header "$WORK/cold/$p/$i.head")
        seen[${hits:-none}]=$((${seen[${hits:-none}]:-0} + 1))
    done
    read -r n b r <<<"$(origin_count "/$p/big.bin")"
    R[$p.req]=$n
    R[$p.intact]="$ok/$CLIENTS"
    R[$p.bytes]=$b
    R[$p.up]=$(awk -v b="$b" -v s="$BIG_BYTES" 'BEGIN { printf "%.2f", b / s }')
    R[$p.wall]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    R[$p.ttfb]=$(sort -g "$WORK/cold/$p/times" | awk '{ a[NR] = $1 } END { printf "%.2f", a[int((NR + 1) / 2)] }')
    R[$p.hdrs]=$(for k in "${!seen[@]}"; do printf '%s ×%s, ' "$k" "${seen[$k]}"; done)
    R[$p.hdrs]=${R[$p.hdrs]%, }
    R[$p.coldcpu]=$(awk -v a="$c0" -v b="$c1" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (b - a) / hz }')
    say "   $ok/$CLIENTS clients got the ${BIG_MIB} MiB intact in ${R[$p.wall]} s (median first byte after" \
        "${R[$p.ttfb]} s); cache header: ${R[$p.hdrs]}"
    say "   origin: $n request(s) for /$p/big.bin ($r ranged), $b body bytes = ${R[$p.up]}× the object;" \
        "proxy CPU ${R[$p.coldcpu]} s"
    if ((bad)); then
        BAD+=("cold $p: $bad of $CLIENTS clients did not get the object intact")
        R[$p.coldbad]=$bad
    fi
}

# --- 2 and 3: wrk on cached objects ----------------------------------------------------------------------------------
cat >"$WORK/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK %d %d %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
EOF

# warm proxy object: fetch until the proxy says it served from its cache (at most 5 tries), check the bytes.
warm() {
    local p=$1 obj=$2 url i h=
    url=$(url_of "$p" "$obj")
    proxy_args "$p"
    for ((i = 0; i < 5; i++)); do
        curl -sS --max-time 120 "${PX[@]}" -D "$WORK/warm.head" -o "$WORK/warm.body" "$url" ||
            { BAD+=("$p: GET $obj failed"); return 1; }
        cmp -s "$WORK/warm.body" "$WORK/objects/$obj" || { BAD+=("$p: GET $obj returned other bytes"); return 1; }
        h=$(cache_header "$WORK/warm.head")
        [[ ${h^^} == HIT* ]] && return 0
        sleep 0.2
    done
    say "   $p: $obj still not a HIT after 5 GETs (cache header: ${h:-none}); measuring anyway"
    NOTES+=("$p: $obj was not a HIT after 5 GETs (cache header: ${h:-none}): its hit figures measure something else")
}

# run_wrk proxy label threads conns seconds url: sets W_REQ W_BYTES W_SECS W_P50 W_P99 (µs), W_CPU (% of a core)
run_wrk() {
    local p=$1 label=$2 threads=$3 conns=$4 secs=$5 url=$6 c0 c1 line ce re we se te errs=""
    c0=$(proxy_ticks "$p")
    timeout $((secs + 120)) wrk -t "$threads" -c "$conns" -d "${secs}s" --timeout 60s -s "$WORK/report.lua" "$url" \
        >"$WORK/wrk.out" 2>&1 &
    BG_PIDS=($!)
    wait "${BG_PIDS[0]}" || { cat "$WORK/wrk.out" >&2; BG_PIDS=(); BAD+=("$label: wrk failed"); return 1; }
    BG_PIDS=()
    c1=$(proxy_ticks "$p")
    line=$(grep '^WRK ' "$WORK/wrk.out") || { cat "$WORK/wrk.out" >&2; BAD+=("$label: wrk printed no result"); return 1; }
    read -r _ W_REQ W_BYTES W_US ce re we se te W_P50 W_P99 <<<"$line"
    W_SECS=$(awk -v u="$W_US" 'BEGIN { printf "%.3f", u / 1e6 }')
    W_CPU=$(awk -v a="$c0" -v b="$c1" -v hz="$CLK_TCK" -v s="$W_SECS" 'BEGIN { printf "%.0f", 100 * (b - a) / hz / s }')
    ((te)) && errs="  ($te requests slower than 60 s)"
    if ((ce + re + we + se)); then
        errs="$errs  ERRORS connect=$ce read=$re write=$we non-2xx/3xx=$se"
        BAD+=("$label:$errs")
    fi
    ((W_REQ)) || BAD+=("$label: no request completed")
    say "   $label: $W_REQ requests, $W_BYTES bytes in ${W_SECS}s; latency p50 $(awk -v u="$W_P50" \
        'BEGIN { printf "%.2f", u / 1000 }') ms, p99 $(awk -v u="$W_P99" 'BEGIN { printf "%.2f", u / 1000 }') ms;" \
        "proxy CPU ${W_CPU}% of a core$errs"
    relais_alive "$label" || [[ $p == nginx || $p == squid ]] || return 1
}

throughput() { # proxy object key
    local p=$1 obj=$2 key=$3
    available "$p" || return 0
    warm "$p" "$obj" || return 0
    run_wrk "$p" "$p $obj hits" 2 8 "$DURATION" "$(url_of "$p" "$obj")" || return 0
    R[$p.$key]=$(awk -v b="$W_BYTES" -v s="$W_SECS" 'BEGIN { printf "%.0f", b / s / 1e6 }')
    R[$p.$key.cpu]=$W_CPU
}

# One latency run of a proxy (round N): its p50 and p99 (ms) and requests/s go to $WORK/lat/PROXY.
latency() { # proxy round
    local p=$1
    available "$p" || return 0
    [[ $2 == 1 ]] && { warm "$p" small.bin || return 0; }
    run_wrk "$p" "$p small.bin hits, one connection, round $2" 1 1 "$LAT_DURATION" "$(url_of "$p" small.bin)" ||
        return 0
    mkdir -p "$WORK/lat"
    awk -v a="$W_P50" -v b="$W_P99" -v r="$W_REQ" -v s="$W_SECS" 'BEGIN {
        printf "%.3f %.3f %.0f\n", a / 1000, b / 1000, r / s }' >>"$WORK/lat/$p"
}
# The median over the rounds of each figure (latency on one connection moves with how the scheduler places the
# client and the server: rounds taken in turn, proxy after proxy, give each the same conditions).
latency_medians() { # proxy
    local p=$1 col key
    [[ -s "$WORK/lat/$1" ]] || return 0
    for col in 1:p50 2:p99 3:rps; do
        key=${col#*:}
        R[$p.$key]=$(cut -d' ' -f"${col%%:*}" "$WORK/lat/$p" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    done
}

# How busy the machine is before the runs: the figures mean something only on a quiet one.
s0=$(head -n 1 /proc/stat); sleep 2; s1=$(head -n 1 /proc/stat)
BUSY=$(awk -v s0="$s0" -v s1="$s1" -v ncpu="$(nproc)" 'BEGIN { split(s0, x, " "); split(s1, y, " ")
    tot = 0; for (i = 2; i <= 9; i++) tot += y[i] - x[i]
    printf "%.0f", 100 * ncpu * (tot - (y[5] - x[5]) - (y[6] - x[6]) - (y[9] - x[9])) / tot }')
((BUSY > 20)) && say "   WARNING: the machine is already busy (${BUSY}% of one core): figures will be noisy"

for p in relais nginx squid fwd; do
    if available "$p"; then cold "$p"; fi
done

phase "2. hits: wrk -t2 -c8 -d${DURATION}s on the cached ${BIG_MIB} MiB and 1 MiB objects"
for p in relais nginx squid; do
    throughput "$p" big.bin big
    throughput "$p" mid.bin mid
done

phase "3. latency of a 4 KiB hit: wrk -t1 -c1 -d${LAT_DURATION}s (one keep-alive connection), $LAT_ROUNDS rounds"
for ((round = 1; round <= LAT_ROUNDS; round++)); do
    for p in relais nginx squid; do latency "$p" "$round"; done
done
for p in relais nginx squid; do latency_medians "$p"; done

# Nothing should have gone to the origin for the hits: it was all cached.
for p in relais nginx squid; do
    available "$p" || continue
    for obj in big mid small; do
        read -r n _ _ <<<"$(origin_count "/$p/$obj.bin")"
        want=1; [[ $obj == big ]] && want=${R[$p.req]:-1}
        ((n <= want)) || NOTES+=("$p sent $n requests for /$p/$obj.bin to the origin in all (expected $want)")
    done
done

# --- summary -------------------------------------------------------------------------------------------------------
get() { echo "${R[$1]:-n/a}"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
verdict() { # value op goal
    [[ "$1" == "-" || "$1" == "n/a" ]] && { echo "n/a"; return; }
    awk -v v="$1" -v g="$3" -v op="$2" 'BEGIN {
        ok = (op == ">=") ? (v >= g) : (op == "<=") ? (v <= g) : (v == g); print (ok ? "MET" : "MISS") }'
}
line() { printf '%-46s %10s %10s %10s %8s %8s %7s  %s\n' "$@"; }
row() { # label key goal-op goal-value (goal on the relais value if op starts with "v", else on relais/nginx)
    local label=$1 key=$2 op=${3:-} goal=${4:-} r n s rn rs res
    r=$(get "relais.$key"); n=$(get "nginx.$key"); s=$(get "squid.$key")
    rn=$(ratio "$r" "$n"); rs=$(ratio "$r" "$s")
    case $op in
    "") res=info; goal="-" ;;
    v*) res=$(verdict "$r" "${op#v}" "$goal"); goal="${op#v}${goal}" ;;
    *) res=$(verdict "$rn" "$op" "$goal"); goal="$op $goal" ;;
    esac
    line "$label" "$r" "$n" "$s" "$rn" "$rs" "$goal" "$res"
}
{
    echo
    echo "relais cache benchmark, $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ); nginx $("$NGINX" -v 2>&1 |
        sed 's/.*\///'), squid $("$SQUID" -v | sed -n 's/.*Version //p'); origin limit_rate $ORIGIN_RATE per connection;" \
        "machine busy before: ${BUSY}% of one core"
    echo "relais: $RELAIS_BIN ($RELAIS_FROM)"
    [[ -n "$RELAIS_NOTE" ]] && echo "relais: $RELAIS_NOTE"
    line metric relais nginx squid r/nginx r/squid goal result
    intact() { [[ ${R[$1.intact]:-} ]] || { echo n/a; return; }; [[ ${R[$1.intact]} == "$CLIENTS/$CLIENTS" ]] &&
        echo MET || echo FAIL; }
    line "cold $CLIENTS: clients that got the object intact" "$(get relais.intact)" "$(get nginx.intact)" \
        "$(get squid.intact)" - - "all" "$(intact relais)"
    row "cold $CLIENTS: upstream bytes / object" up v"<=" 1.00
    row "cold $CLIENTS: origin requests" req
    row "cold $CLIENTS: wall time, all done (s)" wall
    row "cold $CLIENTS: median first byte (s)" ttfb
    row "cold $CLIENTS: proxy CPU (s)" coldcpu
    fr=$(get fwd.up)
    line "cold $CLIENTS, relais forward proxy: intact" "$(get fwd.intact)" - - - - "all" "$(intact fwd)"
    line "cold $CLIENTS, relais forward proxy: up / object" "$fr" - - - - "<=1.00" "$(verdict "$fr" "<=" 1.00)"
    [[ -n "${R[fwd.req]:-}" ]] && line "  forward proxy: origin requests; wall (s)" \
        "${R[fwd.req]}; ${R[fwd.wall]}" - - - - - info
    row "hit ${BIG_MIB} MiB, 8 connections (MB/s)" big ">=" 1.0
    row "hit 1 MiB, 8 connections (MB/s)" mid ">=" 1.0
    row "hit 4 KiB, 1 connection: p50 (ms)" p50
    row "hit 4 KiB, 1 connection: p99 (ms)" p99
    row "hit 4 KiB, 1 connection: req/s" rps
    rounds=$(for p in relais nginx squid; do
        if [[ -s "$WORK/lat/$p" ]]; then printf '%s %s; ' "$p" "$(awk '{ printf "%s%s/%s", (NR > 1 ? ", " : ""), $1, $2 }' \
            "$WORK/lat/$p")"; fi
    done)
    echo "4 KiB hits, p50/p99 (ms) of each round: ${rounds%; }"
    cpu=$(for p in relais nginx squid; do
        if [[ -n "${R[$p.big.cpu]:-}" ]]; then printf '%s %s/%s, ' "$p" "${R[$p.big.cpu]}" "${R[$p.mid.cpu]:-n/a}"; fi
    done)
    hdrs=$(for p in relais nginx squid fwd; do
        if [[ -n "${R[$p.hdrs]:-}" ]]; then printf '%s: %s; ' "$p" "${R[$p.hdrs]}"; fi
    done)
    echo "cold $CLIENTS, the cache header each client got: ${hdrs%; }"
    echo "proxy CPU during the hit runs, % of one core (${BIG_MIB} MiB / 1 MiB): ${cpu%, }"
    for n in "${NOTES[@]}"; do echo "note: $n"; done
}

if ((${#BAD[@]})); then
    say
    say "cache.sh: some measurements answered wrong, so their figures are not to be trusted:"
    for b in "${BAD[@]}"; do say "  - $b"; done
    exit 1
fi

#!/usr/bin/env bash
# Relais portal HTTP benchmark: relais against nginx on loopback, same files, same machine, same run.
# What it measures and the goals: tests/bench/README.md. Run from anywhere: tests/bench/http.sh
# Exit 0 when every measurement ran (goals missed or not); 1 when something could not run or answered wrong;
# 2 when a tool is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/bench"

# Knobs (environment). The defaults are the benchmark; smaller values only for trying the script out.
DURATION=${BENCH_DURATION:-10}       # seconds per wrk run
BIG_MIB=${BENCH_BIG_MIB:-1024}       # size of the large file
SESSIONS=${BENCH_SESSIONS:-500}      # sessions held open for the memory figure
LOGINS=${BENCH_LOGINS:-30}           # simultaneous logins (that many distinct users are created)
RELAIS_BIN=${RELAIS_BIN:-}           # a relais binary to use as is; unset: cargo build --release -p relais
RSS_LIMIT_MIB=${BENCH_RSS_LIMIT_MIB:-2048}  # stop opening sessions once relais grows past this (protects the machine)

BENCH_NAME=http.sh
# shellcheck source=lib.sh
. "$ROOT/tests/bench/lib.sh"

# --- tools -----------------------------------------------------------------------------------------------
NGINX=$(command -v nginx || true)
[[ -z "$NGINX" && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
missing=()
[[ -n "$NGINX" ]] || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
    say "http.sh: missing ${missing[*]}. On Debian: sudo apt-get install -y ${missing[*]}"
    exit 2
fi

relais_binary

# 500 held connections on each side, plus files: more than some default soft limits allow.
ulimit -n 4096 2>/dev/null || true

# --- scratch space and teardown ------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/relais-bench.XXXXXX")
# nginx workers started by root run as nobody: they must be able to read the document root.
chmod 755 "$WORK"
RELAIS_PID=
NGINX_PID=
WRK_PID=


cleanup() {
    stop_pid "$WRK_PID" TERM
    stop_pid "$RELAIS_PID" TERM
    stop_pid "$NGINX_PID" QUIT
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


wait_healthy() { # name pid url
    local i
    for ((i = 0; i < 300; i++)); do
        kill -0 "$2" 2>/dev/null || return 1
        [[ "$(curl -s --max-time 2 "$3" 2>/dev/null || true)" == ok* ]] && return 0
        sleep 0.1
    done
    return 1
}

# CPU seconds a set of processes have used so far (utime + stime, from /proc/PID/stat).
CLK_TCK=$(getconf CLK_TCK)

# --- the files ---------------------------------------------------------------------------------------------
mkdir -p "$WORK/www" "$WORK/relais-data" "$WORK/nginx/tmp"
phase "generating ${BIG_MIB} MiB and 4 KiB random files in $WORK"
head -c "$((BIG_MIB << 20))" /dev/urandom >"$WORK/www/big.bin"
head -c 4096 /dev/urandom >"$WORK/www/small.bin"
chmod 755 "$WORK/www"
chmod 644 "$WORK/www/big.bin" "$WORK/www/small.bin"

# --- nginx -------------------------------------------------------------------------------------------------
NGINX_PORT=$(free_port)
cat >"$WORK/nginx/nginx.conf" <<EOF
$(nginx_head "$WORK/nginx" 2)
    access_log off;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WORK/www;
        location = /healthz { return 200 "ok"; }
    }
}
EOF
"$NGINX" -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" -g 'daemon off;' \
    >"$WORK/nginx/stdout" 2>&1 &
NGINX_PID=$!
wait_healthy nginx "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/healthz" || {
    cat "$WORK/nginx/stdout" "$WORK/nginx/error.log" >&2 2>/dev/null || true
    die "nginx did not start"
}
mapfile -t NGINX_WORKERS < <(pgrep -P "$NGINX_PID")
phase "nginx $("$NGINX" -v 2>&1 | sed 's/.*\///') on 127.0.0.1:$NGINX_PORT" \
    "(pid $NGINX_PID, workers ${NGINX_WORKERS[*]})"

# --- relais ------------------------------------------------------------------------------------------------
RELAIS_PORT=$(free_port)
ADMIN_PW="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
USER_PW="password-bench-1"
cat >"$WORK/relais.toml" <<EOF
# Benchmark only: no throttling of the hundreds of logins, and no per-request log lines (nginx has access_log off).
[login]
max_failures_per_login = 1000
max_failures_per_client = 1000

[logging]
level = "warn"
EOF
RELAIS_ADMIN_PASSWORD=$ADMIN_PW "$RELAIS_BIN" serve --data "$WORK/relais-data" \
    --listen "127.0.0.1:$RELAIS_PORT" --config "$WORK/relais.toml" >"$WORK/relais.out" 2>"$WORK/relais.err" &
RELAIS_PID=$!
relais_died() {
    say "--- relais stdout:"; tail -n 20 "$WORK/relais.out" >&2 || true
    say "--- relais stderr:"; tail -n 40 "$WORK/relais.err" >&2 || true
    die "$*"
}
wait_healthy relais "$RELAIS_PID" "http://127.0.0.1:$RELAIS_PORT/healthz" ||
    relais_died "relais did not become healthy on 127.0.0.1:$RELAIS_PORT"
grep -q "listening on http://127.0.0.1:$RELAIS_PORT" "$WORK/relais.out" ||
    say "   (note: relais answers /healthz but did not print 'listening on http://127.0.0.1:$RELAIS_PORT')"
phase "relais $RELAIS_BIN on 127.0.0.1:$RELAIS_PORT (pid $RELAIS_PID)"
relais_alive() { kill -0 "$RELAIS_PID" 2>/dev/null || relais_died "relais exited during: $*"; }

client() { python3 "$HERE/http_client.py" "$@"; }
field() { sed -n "s/^$1=//p" <<<"$2"; }
status_kib() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status"; }
RSS_START_KIB=$(status_kib "$RELAIS_PID" VmRSS)

TOKEN=$(client login "$RELAIS_PORT" admin "$ADMIN_PW") || relais_died "admin login failed"
COOKIE="Cookie: relais_session=$TOKEN"

phase "uploading big.bin and small.bin to relais (admin's me/) and checking both servers return the same bytes"
for f in big.bin small.bin; do
    code=$(curl -sS -o "$WORK/put.out" -w '%{http_code}' -T "$WORK/www/$f" -H "$COOKIE" \
        "http://127.0.0.1:$RELAIS_PORT/api/files/me/$f") || relais_died "PUT /api/files/me/$f failed"
    [[ "$code" == 201 || "$code" == 204 ]] ||
        relais_died "PUT /api/files/me/$f: HTTP $code $(head -c 300 "$WORK/put.out")"
    curl -sS -f -H "$COOKIE" "http://127.0.0.1:$RELAIS_PORT/api/files/me/$f" | cmp -s - "$WORK/www/$f" ||
        relais_died "GET /api/files/me/$f from relais does not return the uploaded bytes"
    curl -sS -f "http://127.0.0.1:$NGINX_PORT/$f" | cmp -s - "$WORK/www/$f" ||
        die "GET /$f from nginx does not return the file"
done
RSS_UPLOAD_KIB=$(status_kib "$RELAIS_PID" VmRSS)

phase "creating $LOGINS users"
out=$(client mkusers "$RELAIS_PORT" "$TOKEN" bench "$LOGINS" "$USER_PW") || relais_died "creating users failed"

# --- wrk ---------------------------------------------------------------------------------------------------
cat >"$WORK/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK %d %d %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
EOF

BAD=()  # measurements that ran but got errors: the run is then not trustworthy

# CPU seconds this shell's finished children (wrk) have used, from the output of `times` (which must run in this
# shell itself: in a $(…) subshell it would count that subshell's children only).
children_cpu() {
    tail -n 1 "$1" | awk '{ s = 0
        for (i = 1; i <= NF; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] }
        printf "%.3f", s }'
}

# Where the CPU went during one wrk run, in % of one core (the machine has $(nproc) × 100 %): relais, the nginx
# workers, wrk (from /proc/PID/stat and `times`), everything else (kernel threads such as ksoftirqd, which does
# much of loopback TCP under load, and any other program: a high figure with little softirq means the machine was
# not quiet), then the whole machine from /proc/stat.
cpu_report() { # ticks0 ticks1 (relais and nginx, space-separated) c0 c1 (wrk seconds) stat0 stat1 seconds
    awk -v r0="$1" -v r1="$2" -v c0="$3" -v c1="$4" -v s0="$5" -v s1="$6" -v secs="$7" -v hz="$CLK_TCK" \
        -v ncpu="$(nproc)" 'BEGIN {
        split(r0, a, " "); split(r1, b, " "); split(s0, x, " "); split(s1, y, " ")
        tot = 0; for (i = 2; i <= 9; i++) tot += y[i] - x[i]
        r = 100 * (b[1] - a[1]) / hz / secs; n = 100 * (b[2] - a[2]) / hz / secs; w = 100 * (c1 - c0) / secs
        busy = 100 * ncpu * (y[2] + y[3] + y[4] + y[7] + y[8] - x[2] - x[3] - x[4] - x[7] - x[8]) / tot
        rest = busy - r - n - w; if (rest < 0) rest = 0
        printf "relais %.0f%%, nginx %.0f%%, wrk %.0f%%, everything else %.0f%% " \
            "(machine: user %.0f%%, system %.0f%%, softirq %.0f%%, idle %.0f%%, steal %.0f%%)",
            r, n, w, rest, 100 * ncpu * (y[2] + y[3] - x[2] - x[3]) / tot, 100 * ncpu * (y[4] - x[4]) / tot,
            100 * ncpu * (y[8] - x[8]) / tot, 100 * ncpu * (y[5] + y[6] - x[5] - x[6]) / tot,
            100 * ncpu * (y[9] - x[9]) / tot
    }'
}

# run_wrk label connections timeout url [header]
# Sets W_REQ W_BYTES W_SECS W_ERRORS W_P50 W_P99 (µs) and W_CPU (cpu_report's line).
run_wrk() {
    local label=$1 conns=$2 timeout=$3 url=$4 header=${5:-} t0 t1 c0 c1 s0 s1 line ce re we se te
    local -a args=(-t 2 -c "$conns" -d "${DURATION}s" --timeout "$timeout" -s "$WORK/report.lua")
    [[ -n "$header" ]] && args+=(-H "$header")
    times >"$WORK/times0"
    t0="$(cpu_ticks "$RELAIS_PID") $(cpu_ticks "${NGINX_WORKERS[@]}")"
    s0=$(head -n 1 /proc/stat)
    # In the background and waited for, so that a signal to this script stops the run at once (see cleanup).
    wrk "${args[@]}" "$url" >"$WORK/wrk.out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || { cat "$WORK/wrk.out" >&2; die "wrk failed ($label)"; }
    WRK_PID=
    s1=$(head -n 1 /proc/stat)
    t1="$(cpu_ticks "$RELAIS_PID") $(cpu_ticks "${NGINX_WORKERS[@]}")"
    times >"$WORK/times1"
    c0=$(children_cpu "$WORK/times0")
    c1=$(children_cpu "$WORK/times1")
    relais_alive "$label"
    line=$(grep '^WRK ' "$WORK/wrk.out") || { cat "$WORK/wrk.out" >&2; die "wrk printed no result ($label)"; }
    read -r _ W_REQ W_BYTES W_US ce re we se te W_P50 W_P99 <<<"$line"
    W_SECS=$(awk -v u="$W_US" 'BEGIN { printf "%.3f", u / 1e6 }')
    W_ERRORS=$((ce + re + we + se))
    W_CPU=$(cpu_report "$t0" "$t1" "$c0" "$c1" "$s0" "$s1" "$W_SECS")
    local errs=""
    ((te)) && errs="  ($te requests slower than $timeout)"
    ((W_ERRORS)) && errs="$errs  ERRORS connect=$ce read=$re write=$we non-2xx/3xx=$se" && BAD+=("$label: $errs")
    ((W_REQ)) || BAD+=("$label: no request completed")
    say "   $label: $W_REQ requests, $W_BYTES bytes in ${W_SECS}s, latency p50 $((W_P50 / 1000)) ms," \
        "p99 $((W_P99 / 1000)) ms$errs"
    say "      CPU (100% = one core): $W_CPU"
}

mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }
rps() { awk -v r="$1" -v s="$2" 'BEGIN { printf "%.0f", r / s }'; }

# The figures mean something only on a quiet machine: say how busy it was just before.
t0="$(cpu_ticks "$RELAIS_PID") $(cpu_ticks "${NGINX_WORKERS[@]}")"
s0=$(head -n 1 /proc/stat); sleep 2; s1=$(head -n 1 /proc/stat)
t1="$(cpu_ticks "$RELAIS_PID") $(cpu_ticks "${NGINX_WORKERS[@]}")"
BUSY=$(awk -v s0="$s0" -v s1="$s1" -v ncpu="$(nproc)" 'BEGIN { split(s0, x, " "); split(s1, y, " ")
    tot = 0; for (i = 2; i <= 9; i++) tot += y[i] - x[i]
    printf "%.0f", 100 * ncpu * (tot - (y[5] - x[5]) - (y[6] - x[6]) - (y[9] - x[9])) / tot }')
OURS=$(awk -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" 'BEGIN { split(a, x, " "); split(b, y, " ")
    printf "relais %.0f%%, nginx %.0f%%", 100 * (y[1] - x[1]) / hz / 2, 100 * (y[2] - x[2]) / hz / 2 }')
if ((BUSY > 20)); then
    say "   WARNING: the machine was already busy before the runs (${BUSY}% of one core; of which $OURS):" \
        "figures will be noisy"
fi
phase "1. large file: 4 connections, 2 threads, ${DURATION}s"
run_wrk "nginx big" 4 60s "http://127.0.0.1:$NGINX_PORT/big.bin"
BIG_NGINX=$(mbps "$W_BYTES" "$W_SECS"); BIG_NGINX_CPU=$W_CPU
run_wrk "relais big" 4 60s "http://127.0.0.1:$RELAIS_PORT/api/files/me/big.bin" "$COOKIE"
BIG_RELAIS=$(mbps "$W_BYTES" "$W_SECS"); BIG_RELAIS_CPU=$W_CPU

phase "2. small file: 32 connections, 2 threads, ${DURATION}s"
run_wrk "nginx small" 32 10s "http://127.0.0.1:$NGINX_PORT/small.bin"
SMALL_NGINX=$(rps "$W_REQ" "$W_SECS"); SMALL_NGINX_CPU=$W_CPU
run_wrk "relais small" 32 10s "http://127.0.0.1:$RELAIS_PORT/api/files/me/small.bin" "$COOKIE"
SMALL_RELAIS=$(rps "$W_REQ" "$W_SECS"); SMALL_RELAIS_CPU=$W_CPU
RSS_LOAD_KIB=$(status_kib "$RELAIS_PID" VmRSS)

phase "4. $LOGINS simultaneous logins of $LOGINS different users"
out=$(client logins "$RELAIS_PORT" bench "$LOGINS" "$USER_PW") || relais_died "simultaneous logins failed"
LOGIN_WALL=$(field wall_ms "$out")
say "   wall ${LOGIN_WALL} ms; one login alone $(field solo_ms "$out") ms;" \
    "first answered after $(field first_ms "$out") ms, median $(field median_ms "$out") ms"
relais_alive "simultaneous logins"

phase "3. $SESSIONS sessions, each on its own open keep-alive connection after GET /api/me"
out=$(client sessions "$RELAIS_PORT" "$RELAIS_PID" bench "$LOGINS" "$SESSIONS" "$USER_PW" "$RSS_LIMIT_MIB") ||
    relais_died "holding $SESSIONS sessions failed"
relais_alive "holding sessions"
RSS_KIB=$(field rss_kib "$out")
HELD=$(field held "$out")
ALIVE=$(field alive "$out")
RSS_NOTE=
if ((HELD < SESSIONS)); then
    RSS_NOTE=" (stopped at $HELD sessions: RSS passed ${RSS_LIMIT_MIB} MiB)"
    say "   stopped opening sessions after $HELD: relais RSS passed BENCH_RSS_LIMIT_MIB=$RSS_LIMIT_MIB"
fi
((ALIVE == HELD)) || BAD+=("sessions: only $ALIVE of $HELD held connections still answered afterwards")
kib_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
say "   $HELD logins in $(field login_s "$out") s; $ALIVE connections still answering afterwards"
say "   relais VmRSS: at start $(kib_mib "$RSS_START_KIB") MiB, after uploads $(kib_mib "$RSS_UPLOAD_KIB") MiB," \
    "after wrk $(kib_mib "$RSS_LOAD_KIB") MiB, before the sessions $(kib_mib "$(field rss_before_kib "$out")") MiB,"
say "   with $HELD sessions $(kib_mib "$RSS_KIB") MiB (anon $(kib_mib "$(field anon_kib "$out")"), file" \
    "$(kib_mib "$(field file_kib "$out")")), peak VmHWM $(kib_mib "$(field hwm_kib "$out")") MiB;" \
    "$(field threads "$out") threads, $(field fds "$out") fds"

# --- summary -----------------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
verdict() { # value op goal
    awk -v v="$1" -v g="$3" -v op="$2" 'BEGIN {
        ok = (op == ">=") ? (v >= g) : (v <= g); print (ok ? "PASS" : "MISS") }'
}
BIG_RATIO=$(ratio "$BIG_RELAIS" "$BIG_NGINX")
SMALL_RATIO=$(ratio "$SMALL_RELAIS" "$SMALL_NGINX")
RSS_MIB=$(kib_mib "$RSS_KIB")

{
    echo
    echo "relais benchmark, $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ), relais $RELAIS_BIN"
    printf '%-36s %12s %12s %7s %9s  %s\n' metric relais nginx ratio goal result
    printf '%-36s %12s %12s %7s %9s  %s\n' "large file download (MB/s)" "$BIG_RELAIS" "$BIG_NGINX" "$BIG_RATIO" \
        ">= 1.0" "$(verdict "$BIG_RATIO" ">=" 1.0)"
    printf '%-36s %12s %12s %7s %9s  %s\n' "4 KiB GET (req/s)" "$SMALL_RELAIS" "$SMALL_NGINX" "$SMALL_RATIO" \
        ">= 0.7" "$(verdict "$SMALL_RATIO" ">=" 0.7)"
    printf '%-36s %12s %12s %7s %9s  %s\n' "RSS with $SESSIONS sessions (MiB)" "$RSS_MIB" - - \
        "<= 64" "$(verdict "$RSS_MIB" "<=" 64)$RSS_NOTE"
    printf '%-36s %12s %12s %7s %9s  %s\n' "$LOGINS simultaneous logins (ms)" "$LOGIN_WALL" - - - info
    echo "CPU during the runs (100% = one core of $(nproc); in use before the runs: ${BUSY}%, $OURS):"
    echo "  large file, nginx: $BIG_NGINX_CPU"
    echo "  large file, relais: $BIG_RELAIS_CPU"
    echo "  4 KiB, nginx: $SMALL_NGINX_CPU"
    echo "  4 KiB, relais: $SMALL_RELAIS_CPU"
}

if ((${#BAD[@]})); then
    say
    say "http.sh: some measurements got errors, so their figures are not to be trusted:"
    for b in "${BAD[@]}"; do say "  - $b"; done
    exit 1
fi

# Shared by the benchmark scripts (sourced, not run): messages, stopping a process, a free loopback port.
# A script sets BENCH_NAME (e.g. "http.sh") before sourcing it, so its errors say which script failed.

say() { printf '%s\n' "$*" >&2; }
die() { say "${BENCH_NAME:-bench}: $*"; exit 1; }
phase() { say "== [${SECONDS}s] $*"; }

stop_pid() { # pid [signal]: signal (TERM by default), wait up to 10 s, then SIGKILL
    local pid=$1 sig=${2:-TERM} i
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

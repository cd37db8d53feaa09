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

# Sets RELAIS_BIN to an absolute path: as given, or built from this checkout (`cargo build --release -p relais`);
# RELAIS_FROM says which, for the summary.
relais_binary() {
    RELAIS_FROM="given as RELAIS_BIN"
    if [[ -z "${RELAIS_BIN:-}" ]]; then
        RELAIS_FROM="built from $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")"
        [[ -n "$(git -C "$ROOT" status --porcelain -- appliance firmware-config provisioning Cargo.toml Cargo.lock \
            2>/dev/null)" ]] && RELAIS_FROM+=" + uncommitted changes"
        phase "building relais (cargo build --release -p relais)"
        (cd "$ROOT" && cargo build --release -p relais --quiet) || die "cargo build --release -p relais failed"
        RELAIS_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/relais"
    fi
    [[ -x "$RELAIS_BIN" ]] || die "no relais binary at $RELAIS_BIN"
    RELAIS_BIN=$(realpath "$RELAIS_BIN")
}

# CPU ticks (utime + stime) used so far by the given processes.
cpu_ticks() {
    local total=0 pid stat f
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        stat=${stat##*) } # the command name may contain spaces; fields restart after ") "
        read -r -a f <<<"$stat"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# The start of the nginx.conf of an nginx running from DIR with WORKERS workers, up to inside its `http` block:
# its pid, error log and temporary folders in DIR (nginx otherwise wants its compiled-in paths, which a non-root
# run cannot write), sendfile and long keep-alive, as every bench's nginx uses. The caller adds the rest.
nginx_head() { # dir workers
    local d=$1 t=$1/tmp
    printf 'worker_processes %s;\npid %s/nginx.pid;\nerror_log %s/error.log warn;\n' "$2" "$d" "$d"
    printf 'events { worker_connections 1024; }\nhttp {\n'
    printf '    sendfile on;\n    tcp_nopush on;\n    keepalive_requests 1000000;\n'
    printf '    default_type application/octet-stream;\n'
    printf '    client_body_temp_path %s/body;\n    proxy_temp_path %s/proxy;\n    fastcgi_temp_path %s/fastcgi;\n' "$t" "$t" "$t"
    printf '    uwsgi_temp_path %s/uwsgi;\n    scgi_temp_path %s/scgi;\n' "$t" "$t"
}

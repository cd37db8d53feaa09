#!/usr/bin/env bash
# Relais WebDAV benchmark: relais's /dav/ against nginx's WebDAV module on loopback, same files, same run.
# Upload and download of one large file and of many small ones, each timed with curl over one keep-alive
# connection; prints MB/s and the ratio nginx time / relais time (goal >= 1.0). See tests/bench/README.md.
# Exit 0 when every measurement ran (goals missed or not); 1 when something could not run or answered wrong;
# 2 when a tool is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# Knobs (environment). The defaults are the benchmark; smaller values only for trying the script out.
BIG_MIB=${BENCH_BIG_MIB:-1024}       # size of the large file
SMALL_COUNT=${BENCH_SMALL_COUNT:-1000}  # how many small files
SMALL_KIB=${BENCH_SMALL_KIB:-16}     # size of each small file
ROUNDS=${BENCH_ROUNDS:-2}            # each measurement is the best of this many rounds
RELAIS_BIN=${RELAIS_BIN:-}           # a relais binary to use as is; unset: cargo build --release -p relais

BENCH_NAME=dav.sh
# shellcheck source=lib.sh
. "$ROOT/tests/bench/lib.sh"

# --- tools -----------------------------------------------------------------------------------------------
NGINX=$(command -v nginx || true)
[[ -z "$NGINX" && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
missing=()
[[ -n "$NGINX" ]] || missing+=(nginx)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
    say "dav.sh: missing ${missing[*]}. On Debian: sudo apt-get install -y ${missing[*]}"
    exit 2
fi
"$NGINX" -V 2>&1 | grep -q with-http_dav_module || { say "dav.sh: this nginx lacks the WebDAV module"; exit 2; }

relais_binary

# --- scratch space and teardown ------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/relais-bench-dav.XXXXXX")
# nginx workers started by root run as nobody: they write into its document root and temp folder.
chmod 755 "$WORK"
RELAIS_PID=
NGINX_PID=


cleanup() {
    stop_pid "$RELAIS_PID" TERM
    stop_pid "$NGINX_PID" QUIT
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


wait_healthy() { # pid url
    local i
    for ((i = 0; i < 300; i++)); do
        kill -0 "$1" 2>/dev/null || return 1
        [[ "$(curl -s --max-time 2 "$2" 2>/dev/null || true)" == ok* ]] && return 0
        sleep 0.1
    done
    return 1
}

now() { date +%s.%N; }

# --- the files ---------------------------------------------------------------------------------------------
mkdir -p "$WORK/files/small" "$WORK/relais-data" "$WORK/nginx/tmp" "$WORK/nginx/root/dav"
phase "generating a ${BIG_MIB} MiB file and ${SMALL_COUNT} files of ${SMALL_KIB} KiB in $WORK"
head -c "$((BIG_MIB << 20))" /dev/urandom >"$WORK/files/big.bin"
python3 - "$WORK/files/small" "$SMALL_COUNT" "$((SMALL_KIB << 10))" <<'EOF'
import os, sys
folder, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    with open(os.path.join(folder, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(size))
EOF
chmod -R a+rwX "$WORK/nginx"

# --- nginx -------------------------------------------------------------------------------------------------
NGINX_PORT=$(free_port)
cat >"$WORK/nginx/nginx.conf" <<EOF
$(nginx_head "$WORK/nginx" 2)
    access_log off;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WORK/nginx/root;
        location = /healthz { return 200 "ok"; }
        location /dav/ {
            dav_methods PUT DELETE MKCOL COPY MOVE;
            create_full_put_path on;
            client_max_body_size 0;
            client_body_buffer_size 1m;
        }
    }
}
EOF
"$NGINX" -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" -g 'daemon off;' \
    >"$WORK/nginx/stdout" 2>&1 &
NGINX_PID=$!
wait_healthy "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/healthz" || {
    cat "$WORK/nginx/stdout" "$WORK/nginx/error.log" >&2 2>/dev/null || true
    die "nginx did not start"
}
phase "nginx $("$NGINX" -v 2>&1 | sed 's/.*\///') on 127.0.0.1:$NGINX_PORT (pid $NGINX_PID)"

# --- relais ------------------------------------------------------------------------------------------------
RELAIS_PORT=$(free_port)
ADMIN_PW="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
USER_PW="password-bench-dav"
cat >"$WORK/relais.toml" <<EOF
# Benchmark only: no quota for the teacher who uploads, and no per-request log lines (nginx has access_log off).
[quota]
teacher = "none"

[logging]
level = "warn"
EOF
RELAIS_ADMIN_PASSWORD=$ADMIN_PW "$RELAIS_BIN" serve --data "$WORK/relais-data" \
    --listen "127.0.0.1:$RELAIS_PORT" --config "$WORK/relais.toml" >"$WORK/relais.out" 2>"$WORK/relais.err" &
RELAIS_PID=$!
relais_died() {
    say "--- relais stderr:"; tail -n 40 "$WORK/relais.err" >&2 || true
    die "$*"
}
wait_healthy "$RELAIS_PID" "http://127.0.0.1:$RELAIS_PORT/healthz" || relais_died "relais did not become healthy"
phase "relais $RELAIS_BIN on 127.0.0.1:$RELAIS_PORT (pid $RELAIS_PID)"

curl -sS -f -c "$WORK/cookies" -H 'Content-Type: application/json' \
    -d "{\"login\":\"admin\",\"password\":\"$ADMIN_PW\"}" "http://127.0.0.1:$RELAIS_PORT/api/login" >/dev/null ||
    relais_died "admin login failed"
curl -sS -f -b "$WORK/cookies" -H 'Content-Type: application/json' \
    -d "{\"login\":\"prof.bench\",\"display_name\":\"Bench\",\"role\":\"teacher\",\"password\":\"$USER_PW\",\"classes\":[],\"children\":[]}" \
    "http://127.0.0.1:$RELAIS_PORT/api/admin/users" >/dev/null || relais_died "creating the user failed"

# The two WebDAV roots, and curl's options for each (relais: Basic credentials, as a file manager sends them).
RELAIS_DAV="http://127.0.0.1:$RELAIS_PORT/dav/me"
NGINX_DAV="http://127.0.0.1:$NGINX_PORT/dav"
declare -A BASE=([relais]=$RELAIS_DAV [nginx]=$NGINX_DAV)
declare -A AUTH=([relais]="prof.bench:$USER_PW" [nginx]="nobody:none")

dav() { # server curl-args…
    local server=$1
    shift
    curl -sS --fail -u "${AUTH[$server]}" "$@"
}

# A curl config that sends every small file (PUT) or fetches every small file (GET) over one connection.
small_config() { # server put|get round
    local server=$1 op=$2 round=$3 i
    for ((i = 0; i < SMALL_COUNT; i++)); do
        local name
        name=$(printf 'f%05d.bin' "$i")
        if [[ "$op" == put ]]; then
            printf 'upload-file = "%s"\n' "$WORK/files/small/$name"
        else
            printf 'output = "/dev/null"\n'
        fi
        printf 'url = "%s/small%s/%s"\n' "${BASE[$server]}" "$round" "$name"
    done
}

declare -A BEST
best() { # key seconds: keep the smallest
    local key=$1 t=$2
    if [[ -z "${BEST[$key]:-}" ]] || python3 -c "import sys; sys.exit(0 if $t < ${BEST[$key]} else 1)"; then
        BEST[$key]=$t
    fi
}

for ((round = 1; round <= ROUNDS; round++)); do
    for server in relais nginx; do
        phase "round $round: $server"
        # 1 large file up, then down (checked once).
        t0=$(now)
        dav "$server" -o /dev/null -T "$WORK/files/big.bin" "${BASE[$server]}/big$round.bin" ||
            die "$server: PUT of the large file failed"
        t1=$(now)
        best "$server.big.up" "$(python3 -c "print($t1 - $t0)")"
        t0=$(now)
        dav "$server" -o "$WORK/down.bin" "${BASE[$server]}/big$round.bin" || die "$server: GET of the large file failed"
        t1=$(now)
        best "$server.big.down" "$(python3 -c "print($t1 - $t0)")"
        if ((round == 1)); then
            cmp -s "$WORK/down.bin" "$WORK/files/big.bin" || die "$server returned other bytes for the large file"
        fi
        rm -f "$WORK/down.bin"
        # Many small files up, then down: one folder per round, one connection each way.
        dav "$server" -o /dev/null -X MKCOL "${BASE[$server]}/small$round/" || die "$server: MKCOL failed"
        small_config "$server" put "$round" >"$WORK/put.cfg"
        small_config "$server" get "$round" >"$WORK/get.cfg"
        t0=$(now)
        dav "$server" -K "$WORK/put.cfg" || die "$server: PUT of the small files failed"
        t1=$(now)
        best "$server.small.up" "$(python3 -c "print($t1 - $t0)")"
        t0=$(now)
        dav "$server" -K "$WORK/get.cfg" || die "$server: GET of the small files failed"
        t1=$(now)
        best "$server.small.down" "$(python3 -c "print($t1 - $t0)")"
        # Free the space before the next round (1 GiB per server per round otherwise).
        dav "$server" -o /dev/null -X DELETE "${BASE[$server]}/big$round.bin" || true
    done
    kill -0 "$RELAIS_PID" 2>/dev/null || relais_died "relais exited during round $round"
done

# --- report ------------------------------------------------------------------------------------------------
BIG_MB=$(python3 -c "print($BIG_MIB * 1048576 / 1e6)")
SMALL_MB=$(python3 -c "print($SMALL_COUNT * $SMALL_KIB * 1024 / 1e6)")
printf '\nWebDAV on loopback, best of %s rounds (relais: Basic auth, fsync before 201; nginx: no auth, no fsync)\n' \
    "$ROUNDS"
printf '%-34s %12s %12s %8s\n' measurement "relais MB/s" "nginx MB/s" ratio
for what in big.up big.down small.up small.down; do
    case $what in
        big.up) label="upload ${BIG_MIB} MiB file"; mb=$BIG_MB ;;
        big.down) label="download ${BIG_MIB} MiB file"; mb=$BIG_MB ;;
        small.up) label="upload ${SMALL_COUNT} x ${SMALL_KIB} KiB files"; mb=$SMALL_MB ;;
        small.down) label="download ${SMALL_COUNT} x ${SMALL_KIB} KiB files"; mb=$SMALL_MB ;;
    esac
    python3 - "$label" "$mb" "${BEST[relais.$what]}" "${BEST[nginx.$what]}" <<'EOF'
import sys
label, mb, r, n = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
ratio = n / r
print(f"{label:<34} {mb / r:>12.1f} {mb / n:>12.1f} {ratio:>7.2f}x {'ok' if ratio >= 1.0 else 'below goal'}")
EOF
done

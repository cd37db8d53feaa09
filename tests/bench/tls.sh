#!/usr/bin/env bash
# TLS audit of relais with testssl.sh, on loopback: the regional gateway (`relais region serve`) and a school
# box serving LAN HTTPS (`[lan] tls = "on"`, self-signed certificate). What it checks and the last results:
# tests/bench/README.md. Run from anywhere: tests/bench/tls.sh
# Exit 0 when no target has a HIGH or CRITICAL finding (other than the accepted ones below, printed apart);
# 1 when one has, or when something could not run; 2 when a tool is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RELAIS_BIN=${RELAIS_BIN:-}           # a relais binary to use as is; unset: cargo build --release -p relais
REPORTS=${TLS_REPORTS:-}             # a folder to keep testssl.sh's full reports in (NAME.txt, NAME.json)

say() { printf '%s\n' "$*" >&2; }
die() { say "tls.sh: $*"; exit 1; }
phase() { say "== [${SECONDS}s] $*"; }

# Findings that are accepted by design, by testssl id, with the reason printed beside them. Each is a
# decision recorded in tests/bench/README.md, not a way to silence a regression: a new id still fails the run.
declare -A ACCEPTED=(
    [cert_revocation]="private PKI: 90-day certificates renewed at half-life, or the box's own self-signed one; \
a CRL or OCSP URL that school PCs must reach through the uplink would stall or fail their TLS when the school \
is offline"
)

# --- tools -----------------------------------------------------------------------------------------------
TESTSSL=$(command -v testssl || command -v testssl.sh || true)
missing=()
[[ -n "$TESTSSL" ]] || missing+=(testssl.sh)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
    say "tls.sh: missing ${missing[*]}. On Debian: sudo apt-get install -y ${missing[*]}"
    exit 2
fi

if [[ -z "$RELAIS_BIN" ]]; then
    phase "building relais (cargo build --release -p relais)"
    (cd "$ROOT" && cargo build --release -p relais --quiet) || die "cargo build --release -p relais failed"
    RELAIS_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/relais"
fi
[[ -x "$RELAIS_BIN" ]] || die "no relais binary at $RELAIS_BIN"

# --- scratch space and teardown ------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/relais-tls.XXXXXX")
PIDS=()

stop_pid() { # pid: SIGTERM, wait up to 10 s, then SIGKILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME ARGS…: runs `relais ARGS…` in the background and prints the ADDR of its `listening on https://ADDR`.
start() {
    local name=$1 i addr
    shift
    RELAIS_ADMIN_PASSWORD=bench-tls-admin "$RELAIS_BIN" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=($!)
    for ((i = 0; i < 300; i++)); do
        addr=$(sed -n 's/^listening on https:\/\///p' "$WORK/$name.out" | head -n1)
        if [[ -n "$addr" ]]; then
            printf '%s\n' "$addr"
            return 0
        fi
        kill -0 "${PIDS[-1]}" 2>/dev/null || break
        sleep 0.1
    done
    say "tls.sh: $name did not start; its stderr:"
    tail -n 20 "$WORK/$name.err" >&2
    return 1
}

# --- the two servers ----------------------------------------------------------------------------------------
phase "starting the regional gateway and a box with LAN HTTPS on loopback"
"$RELAIS_BIN" region init --data "$WORK/region" >/dev/null || die "relais region init failed"
GATEWAY=$(start gateway region serve --data "$WORK/region" --listen 127.0.0.1:0) || exit 1
mkdir -p "$WORK/box"
printf '[lan]\ntls = "on"\n\n[logging]\nlevel = "warn"\n' >"$WORK/box.toml"
BOX=$(start box serve --data "$WORK/box" --listen 127.0.0.1:0 --config "$WORK/box.toml") || exit 1
# What a school PC would trust: the regional root for the gateway, the box's /ca.crt for the box.
cp "$WORK/region/ca/root.crt" "$WORK/gateway-ca.pem"
cp "$WORK/box/tls/selfsigned.crt" "$WORK/box-ca.pem"

# --- testssl.sh -------------------------------------------------------------------------------------------
VERSION=$("$TESTSSL" --version 2>/dev/null | sed -n 's/.*testssl[^0-9]*\([0-9][0-9.a-z+-]*\) .*/\1/p' | head -n1)
phase "testssl.sh ${VERSION:-?} ($TESTSSL)"
audit() { # name addr ca-file
    local name=$1 addr=$2 ca=$3
    phase "testssl.sh against $name (https://$addr): ~2 min"
    # --add-ca: judge the chain against what the school PCs are told to trust, not the public roots.
    "$TESTSSL" --quiet --color 0 --warnings batch --add-ca "$ca" --jsonfile "$WORK/$name.json" \
        "https://$addr" >"$WORK/$name.txt" 2>&1 || true
    [[ -s "$WORK/$name.json" ]] || { tail -n 30 "$WORK/$name.txt" >&2; die "testssl.sh wrote no report for $name"; }
    if [[ -n "$REPORTS" ]]; then
        mkdir -p "$REPORTS" && cp "$WORK/$name.txt" "$WORK/$name.json" "$REPORTS/"
    fi
}
audit gateway "$GATEWAY" "$WORK/gateway-ca.pem"
audit box "$BOX" "$WORK/box-ca.pem"

# --- summary ------------------------------------------------------------------------------------------------
accepted_args=()
for id in "${!ACCEPTED[@]}"; do accepted_args+=("$id=${ACCEPTED[$id]}"); done
python3 - "$WORK/gateway.json" "$WORK/box.json" "${accepted_args[@]}" <<'EOF'
import json, sys
from collections import Counter

ORDER = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "INFO", "OK"]
reports = [a for a in sys.argv[1:] if a.endswith(".json")]
accepted = dict(a.split("=", 1) for a in sys.argv[1:] if not a.endswith(".json"))
failed = False
for path in reports:
    name = path.rsplit("/", 1)[-1][:-5]
    findings = [f for f in json.load(open(path)) if f.get("severity") not in ("DEBUG", None)]
    counts = Counter(f["severity"] for f in findings)
    print(f"{name}: " + "  ".join(f"{s} {counts.get(s, 0)}" for s in ORDER))
    for f in findings:
        if f["severity"] in ("CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "FATAL"):
            note = ""
            if f["id"] in accepted and f["severity"] in ("CRITICAL", "HIGH"):
                note = f"  [accepted: {accepted[f['id']]}]"
            elif f["severity"] in ("CRITICAL", "HIGH", "FATAL"):
                failed = True
            print(f"  {f['severity']:<8} {f['id']}: {f['finding']}{note}")
sys.exit(1 if failed else 0)
EOF

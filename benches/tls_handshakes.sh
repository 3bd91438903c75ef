#!/usr/bin/env bash
# tls_handshakes.sh - TLS handshakes per second, and per CPU-second of rtcgate (per core), full
# and resumed, with an RSA-2048 and an EC P-256 certificate.
#
# What it measures
#   `openssl s_time -www /` (each connection a TLS handshake and one GET /, proxied to a demo
#   backend) against a release rtcgate for SECS seconds: `-new` (a full handshake every time)
#   and `-reuse` (resumption: s_time -www reads the server's TLS 1.3 tickets). Per case it
#   prints the connections per second s_time reports, and rtcgate's own CPU time over the run
#   (utime + stime from /proc/PID/stat), whose quotient is the handshakes one core does per
#   second: the figure to size a reconnect wave with (docs/scaling.md).
#
# How to run (from the repo root, Debian 12)
#   bash benches/tls_handshakes.sh
#   SECS=10 bash benches/tls_handshakes.sh
#   RTCGATE_BIN=/path/to/rtcgate bash benches/tls_handshakes.sh   # that binary, no build
#
# s_time is one process, one connection at a time, on the same 2 cores as rtcgate: the
# per-second figure is bounded by the client as much as by rtcgate; the per-CPU-second figure
# is rtcgate's own cost. Last lines: RESULT cert=... mode=... conn_per_s=... rtcgate_cpu_s=...
# handshakes_per_core_s=...
set -euo pipefail

SECS="${SECS:-5}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
log() { printf '[tls-bench] %s\n' "$*" >&2; }
# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"

need_commands openssl:openssl curl:curl python3:python3
rtcgate_binary
bench_tmp rtcgate-tls-bench
read -r BACKEND HTTPS < <(free_ports 2)

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -keyout "$TMP/rsa.key" -out "$TMP/rsa.crt" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -keyout "$TMP/ec.key" -out "$TMP/ec.crt" 2>/dev/null

RUST_LOG=warn "$BIN" demo-backend --id b1 --listen "127.0.0.1:$BACKEND" >"$TMP/b1.log" 2>&1 &
PIDS+=("$!")

ticks=$(getconf CLK_TCK)
cpu_seconds() { # pid: its utime + stime so far, in seconds
    awk -v t="$ticks" '{print ($14 + $15) / t}' "/proc/$1/stat"
}

run_case() { # cert
    local cert=$1
    cat >"$TMP/$cert.toml" <<EOF
[listen]
https = "127.0.0.1:$HTTPS"

[tls]
cert = "$cert.crt"
key = "$cert.key"

[sticky]
keys = ["k1:bench-secret-0123456789abcdef0123456789"]

[pools.media]
hosts = ["*"]

[[pools.media.backends]]
id = "b1"
address = "127.0.0.1:$BACKEND"
EOF
    RUST_LOG=warn "$BIN" --config "$TMP/$cert.toml" >"$TMP/rtcgate-$cert.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_url "https://127.0.0.1:$HTTPS/" -k
    for mode in new reuse; do
        local before after out
        before=$(cpu_seconds "$pid")
        out=$(openssl s_time -connect "127.0.0.1:$HTTPS" -"$mode" -time "$SECS" -www / 2>&1 || true)
        after=$(cpu_seconds "$pid")
        python3 - "$cert" "$mode" "$before" "$after" <<PY
import re, sys
cert, mode, before, after = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
text = """$out"""
m = re.search(r"(\d+) connections in ([\d.]+) real seconds", text)
if not m:
    print(f"RESULT cert={cert} mode={mode} error=no_s_time_figure"); sys.exit(0)
n, secs = int(m.group(1)), float(m.group(2))
cpu = after - before
per_core = n / cpu if cpu > 0 else float("nan")
print(f"RESULT cert={cert} mode={mode} connections={n} conn_per_s={n / secs:.0f} "
      f"rtcgate_cpu_s={cpu:.2f} handshakes_per_core_s={per_core:.0f}")
PY
    done
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
}

echo "rtcgate $("$BIN" --version 2>/dev/null || echo "(no --version)"); $(nproc) CPUs shared by s_time and rtcgate; $SECS s per case"
for cert in rsa ec; do
    run_case "$cert"
done

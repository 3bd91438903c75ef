#!/usr/bin/env bash
# instructions_per_request.sh - rtcgate's CPU instructions per proxied request, counted by callgrind.
#
# What it measures
#   Keep-alive GETs (`wrk -t1 -c16`) through rtcgate (one worker, plain HTTP, one
#   `rtcgate demo-backend`) running under valgrind's callgrind, twice: for SHORT and for LONG
#   seconds. (Ir(long) - Ir(short)) / (requests(long) - requests(short)) is the instructions per
#   request with start-up and shutdown taken out. Instructions, unlike seconds, do not move with
#   the machine's load: the same binary gives the same figure to within a few tenths of a
#   percent, so a change of 0.5 % shows.
#
# How to run (from the repo root, Debian 12)
#   bash benches/instructions_per_request.sh                 # the release build (built first)
#   RTCGATE_BIN=/path/to/rtcgate bash benches/instructions_per_request.sh   # that binary
#   CALLGRIND_KEEP=/some/dir keeps the LONG run's callgrind file, for callgrind_annotate.
#   Missing tools (valgrind, wrk, curl, python3) are installed with apt-get.
#
# Output (last line, machine-readable)
#   RESULT instructions_per_request=... requests_short=... requests_long=...
#
# Everything binds to 127.0.0.1 on free ports chosen at run time; every process started here is
# stopped and the temp dir removed on exit.
set -euo pipefail

SHORT="${SHORT:-3}"
LONG="${LONG:-9}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
log() { printf '[ipr] %s\n' "$*" >&2; }
# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"

need_commands valgrind:valgrind wrk:wrk curl:curl python3:python3
rtcgate_binary

bench_tmp rtcgate-ipr
read -r BACKEND PROXY < <(free_ports 2)
"$BIN" demo-backend --id b1 --listen "127.0.0.1:$BACKEND" >"$TMP/backend.log" 2>&1 &
PIDS+=($!)
cat >"$TMP/proxy.toml" <<TOML
[listen]
http = "127.0.0.1:$PROXY"
[sticky]
keys = ["k1:bench-secret-0123456789abcdef0123456789"]
[limits]
workers = 1
pin_workers = "never"
[pools.media]
hosts = ["*"]
[[pools.media.backends]]
id = "b1"
address = "127.0.0.1:$BACKEND"
TOML

declare -A REQ IR
for d in "$SHORT" "$LONG"; do
    RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.$d" \
        "$BIN" --config "$TMP/proxy.toml" >"$TMP/valgrind.$d.log" 2>&1 &
    vg=$!
    PIDS+=("$vg")
    for _ in $(seq 300); do
        curl -s -o /dev/null "http://127.0.0.1:$PROXY/health" && break
        sleep 0.1
    done
    wrk -t1 -c16 -d"${d}s" "http://127.0.0.1:$PROXY/health" >"$TMP/wrk.$d.txt"
    kill -INT "$vg"
    wait "$vg" || true
    REQ[$d]=$(awk '/requests in/ {print $1}' "$TMP/wrk.$d.txt")
    IR[$d]=$(awk '/^(summary|totals):/ {print $2; exit}' "$TMP/cg.$d")
    log "${d} s: ${REQ[$d]} requests, ${IR[$d]} instructions"
done
if [[ -n "${CALLGRIND_KEEP:-}" ]]; then
    mkdir -p "$CALLGRIND_KEEP"
    cp "$TMP/cg.$LONG" "$CALLGRIND_KEEP/callgrind.out.requests"
fi
per=$(( (IR[$LONG] - IR[$SHORT]) / (REQ[$LONG] - REQ[$SHORT]) ))
echo "RESULT instructions_per_request=$per requests_short=${REQ[$SHORT]} requests_long=${REQ[$LONG]}"

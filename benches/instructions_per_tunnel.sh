#!/usr/bin/env bash
# instructions_per_tunnel.sh - rtcgate's CPU instructions per WebSocket tunnel, counted by callgrind.
#
# What it measures
#   The ws_tunnels tool (benches/ws_tunnels.rs) opens tunnels through rtcgate (one worker, plain
#   HTTP, one `rtcgate demo-backend`) running under valgrind's callgrind, echoes once on each,
#   holds them, echoes again and closes them: SHORT tunnels in one run, LONG in another.
#   (Ir(long) - Ir(short)) / (LONG - SHORT) is the instructions one tunnel's life costs: the
#   accept, the upgrade, the backend connect, two echoes each way and the close, with start-up
#   and shutdown taken out. Instructions do not move with the machine's load, so a change of
#   a few tenths of a percent shows; use it before and after a change to the open path.
#
# How to run (from the repo root, Debian 12)
#   bash benches/instructions_per_tunnel.sh                  # the release build (built first)
#   RTCGATE_BIN=/path/to/rtcgate bash benches/instructions_per_tunnel.sh
#   SHORT=200 LONG=1200 bash benches/instructions_per_tunnel.sh
#   CALLGRIND_KEEP=/some/dir keeps the LONG run's callgrind file, for callgrind_annotate.
#   Missing tools (valgrind, curl, python3) are installed with apt-get.
#
# Output (last line, machine-readable)
#   RESULT instructions_per_tunnel=... tunnels_short=... tunnels_long=...
#
# Everything binds to 127.0.0.1 on free ports chosen at run time; every process started here is
# stopped and the temp dir removed on exit.
set -euo pipefail

SHORT="${SHORT:-200}"
LONG="${LONG:-1000}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
log() { printf '[ipt] %s\n' "$*" >&2; }
# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"

need_commands valgrind:valgrind curl:curl python3:python3
rtcgate_binary
bench_tool ws_tunnels
ulimit -n "$(ulimit -Hn)"

bench_tmp rtcgate-ipt
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
max_sessions = 100000
[[pools.media.backends]]
id = "b1"
address = "127.0.0.1:$BACKEND"
TOML

declare -A IR
for n in "$SHORT" "$LONG"; do
    RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.$n" \
        "$BIN" --config "$TMP/proxy.toml" >"$TMP/valgrind.$n.log" 2>&1 &
    vg=$!
    PIDS+=("$vg")
    for _ in $(seq 300); do
        curl -s -o /dev/null "http://127.0.0.1:$PROXY/health" && break
        sleep 0.1
    done
    "$TOOL" --url "ws://127.0.0.1:$PROXY/ws" --tunnels "$n" --pid "$vg" --concurrency 50 \
        --hold-secs 1 --label "n$n" >"$TMP/tool.$n.out" 2>"$TMP/tool.$n.err" || {
        cat "$TMP/tool.$n.err" >&2
        exit 1
    }
    grep -q ' failed=0 ' "$TMP/tool.$n.out" || { cat "$TMP/tool.$n.out" >&2; exit 1; }
    kill -INT "$vg"
    wait "$vg" || true
    IR[$n]=$(awk '/^(summary|totals):/ {print $2; exit}' "$TMP/cg.$n")
    log "$n tunnels: ${IR[$n]} instructions"
done
if [[ -n "${CALLGRIND_KEEP:-}" ]]; then
    mkdir -p "$CALLGRIND_KEEP"
    cp "$TMP/cg.$LONG" "$CALLGRIND_KEEP/callgrind.out.tunnels"
fi
per=$(( (IR[$LONG] - IR[$SHORT]) / (LONG - SHORT) ))
echo "RESULT instructions_per_tunnel=$per tunnels_short=$SHORT tunnels_long=$LONG"

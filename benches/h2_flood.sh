#!/usr/bin/env bash
# h2_flood.sh - what an HTTP/2 PING flood costs rtcgate and its other clients, with the flood
# guard ([limits] h2_control_frames_per_second = 1000, the default) and without it (0).
#
# What it measures
#   FLOODERS clients each open a clear-text HTTP/2 connection (prior knowledge) to a release
#   rtcgate, send the preface and then PINGs as fast as they can write them (512 a write),
#   reading and discarding what comes back; when rtcgate closes a connection the client opens
#   another. Meanwhile one HTTP/1.1 keep-alive client sends GET / one after another and times
#   each. For SECS seconds per case it prints rtcgate's CPU seconds (utime + stime), the PINGs
#   written, the connections the flooders opened, the prober's p50 and p99 latency and its
#   requests, and rtcgate_h2_floods_total. A quiet run (no flooders) first gives the prober's
#   reference latency.
#
# How to run (from the repo root, Debian 12)
#   bash benches/h2_flood.sh
#   SECS=10 FLOODERS=2 bash benches/h2_flood.sh
#   RTCGATE_BIN=/path/to/rtcgate bash benches/h2_flood.sh   # that binary, no build
#
# Last lines: RESULT case=quiet|guarded|unguarded cpu_s=... pings=... conns=... p50_ms=...
# p99_ms=... probes=... floods=...
set -euo pipefail

SECS="${SECS:-5}"
FLOODERS="${FLOODERS:-2}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
log() { printf '[h2-flood] %s\n' "$*" >&2; }
# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"

need_commands curl:curl python3:python3
rtcgate_binary
bench_tmp rtcgate-h2-flood
read -r BACKEND HTTP ADMIN < <(free_ports 3)

RUST_LOG=warn "$BIN" demo-backend --id b1 --listen "127.0.0.1:$BACKEND" >"$TMP/b1.log" 2>&1 &
PIDS+=("$!")

ticks=$(getconf CLK_TCK)
cpu_seconds() { # pid: its utime + stime so far, in seconds
    awk -v t="$ticks" '{print ($14 + $15) / t}' "/proc/$1/stat"
}

cat >"$TMP/load.py" <<'PY'
import socket, statistics, sys, threading, time

port, flooders, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + secs
pings = [0] * flooders
conns = [0] * flooders

def frame(kind, flags, payload):
    n = len(payload)
    return bytes([n >> 16, (n >> 8) & 255, n & 255, kind, flags, 0, 0, 0, 0]) + payload

hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, b"")
batch = frame(6, 0, b"\x07" * 8) * 512

def drain(s):
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass

def flood(i):
    while time.monotonic() < end:
        s = socket.create_connection(("127.0.0.1", port))
        conns[i] += 1
        reader = threading.Thread(target=drain, args=(s,), daemon=True)
        reader.start()
        try:
            s.sendall(hello)
            while time.monotonic() < end:
                s.sendall(batch)
                pings[i] += 512
        except OSError:
            pass
        s.close()
        reader.join(1)

threads = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(flooders)]
for t in threads:
    t.start()
probe = socket.create_connection(("127.0.0.1", port))
probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
times = []
request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
while time.monotonic() < end:
    t0 = time.monotonic()
    probe.sendall(request)
    got = b""
    while b"\r\n\r\n" not in got:
        got += probe.recv(65536)
    head, _, body = got.partition(b"\r\n\r\n")
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0])
    while len(body) < length:
        body += probe.recv(65536)
    times.append((time.monotonic() - t0) * 1000)
for t in threads:
    t.join(2)
times.sort()
p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
print(f"pings={sum(pings)} conns={sum(conns)} p50_ms={statistics.median(times):.2f} p99_ms={p99:.2f} probes={len(times)}")
PY

run_case() { # name limit flooders
    local name=$1 limit=$2 flooders=$3
    cat >"$TMP/$name.toml" <<EOF
[listen]
http = "127.0.0.1:$HTTP"
admin = "127.0.0.1:$ADMIN"

[sticky]
keys = ["k1:bench-secret-0123456789abcdef0123456789"]

[limits]
h2_control_frames_per_second = $limit

[pools.media]
hosts = ["*"]

[[pools.media.backends]]
id = "b1"
address = "127.0.0.1:$BACKEND"
EOF
    RUST_LOG=warn "$BIN" --config "$TMP/$name.toml" >"$TMP/rtcgate-$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_url "http://127.0.0.1:$HTTP/"
    local before after out floods
    before=$(cpu_seconds "$pid")
    out=$(python3 "$TMP/load.py" "$HTTP" "$flooders" "$SECS")
    after=$(cpu_seconds "$pid")
    floods=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^rtcgate_h2_floods_total/ {print $2}')
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    echo "RESULT case=$name cpu_s=$(awk -v a="$after" -v b="$before" 'BEGIN {printf "%.2f", a - b}') $out floods=${floods:-0}"
}

log "$SECS s per case, $FLOODERS flooders"
run_case quiet 1000 0
run_case guarded 1000 "$FLOODERS"
run_case unguarded 0 "$FLOODERS"

#!/usr/bin/env bash
# ws_tunnels.sh - idle WebSocket tunnels: proxy memory per tunnel and echo RTT, rtcgate vs HAProxy 2.6.
#
# What it measures
#   benches/ws_tunnels.rs opens N WebSocket tunnels (bounded: 200 handshakes in flight) through
#   the proxy under test to three `rtcgate demo-backend` echo servers, sends one message on each
#   and checks the echo, holds all N open and idle for HOLD seconds, then sends a second message
#   on every tunnel (the "idle-then-active" pass) and closes them all. Per proxy it reports:
#     - resident memory per tunnel: (VmRSS after opening+holding - VmRSS before) / tunnels held,
#       read from /proc/PID/status of the proxy process;
#     - echo round-trip p50/p99 in ms (second pass = rtt_p50_ms/rtt_p99_ms; first = rtt1_*);
#     - failures: connect/handshake errors, wrong echoes, closed tunnels, timeouts;
#     - the kernel's memory for the tunnels' sockets (KERNEL lines): TCP buffer pages from
#       /proc/net/sockstat and slab from /proc/meminfo, machine-wide, per socket added.
#   rtcgate: release build, plain HTTP listener, 3 backends, sticky cookie, default settings.
#   HAProxy 2.6 (Debian): mode http, nbthread 2, leastconn, `cookie SRV insert indirect nocache`,
#   timeout tunnel 1h. Goal (issue): rtcgate grows by at most 4 KiB per idle tunnel at N=9000
#   (HAProxy 2.6 measured about 6 KiB per tunnel here).
#
# How to run (from the repo root, as root, Debian 12)
#   bash benches/ws_tunnels.sh          # N = 9000 tunnels
#   bash benches/ws_tunnels.sh 1000     # smaller shake-out run
#   HOLD=5 CONCURRENCY=100 bash benches/ws_tunnels.sh 9000
#   ROUNDS=5 bash benches/ws_tunnels.sh 9000   # more rounds for the opening-time ratio
#   haproxy is installed with apt-get if missing. WS_TUNNELS_BIN=/path/to/built/ws_tunnels skips
#   building the bench binary (e.g. before Cargo.toml has its [[bench]] stanza).
#   RTCGATE_BIN=/path/to/rtcgate measures that binary instead (an older build, to bisect).
#
# Read the RATIOS from one run, not absolute numbers
#   The machine is shared and noisy (2 cores): the load tool, the proxy and the backends all
#   share the CPUs, so RTTs move from run to run. Memory is steadier, but allocator behaviour
#   still varies. Compare rtcgate and HAProxy measured back to back in the same run.
#   The last lines are machine-readable: one RESULT line per proxy, then
#   RATIO kib_per_tunnel=... rtt_p99=...  (rtcgate / haproxy)
#
# Rounds (ROUNDS, default 3) and their order
#   Each round runs both proxies, the first in turn: rtcgate first in odd rounds, HAProxy in even
#   ones. The backends are the same processes throughout, and the first tunnels through fresh
#   backends open at half the speed of later ones, whatever the proxy (measured: 7.1 s for the
#   first 9000 through rtcgate, 3.5 s for the next; a fresh rtcgate in front of the warmed
#   backends 3.1 s). So before round 1, N/3 tunnels go straight to each backend, unmeasured
#   (WARMUP=0 skips it), and the order alternates. Memory, the kernel's share, CPU and RTT are
#   reported from each proxy's first run (its process fresh, as before rounds existed); the
#   opening time and the proxy's CPU per tunnel from every round, as the median of the per-round
#   ratios and their min-max (RATIO_OPEN).
#
# File descriptors (hard limit here: 20000; everything started here gets `ulimit -n` = hard)
#   load tool: 1 fd per tunnel (N) + a few.
#   proxy:     2 fds per tunnel (client side + backend side) = 2N, + listeners, epoll, etc.
#              N=9000 -> ~18000 fds, under 20000. rtcgate: [limits] max_connections = 19000.
#   HAProxy:   refuses to start if maxconn needs more fds than the limit (it reserves about
#              2*maxconn + a margin), so maxconn = (limit - 1000) / 2 -> 9500 for 20000 fds;
#              N must stay below that.
#   backends:  ~N/3 each.
#
# Everything binds to 127.0.0.1 on free ports chosen at run time; every process started here is
# killed and the temp dir removed on exit (also on error or Ctrl-C).
set -euo pipefail

N="${1:-9000}"
HOLD="${HOLD:-2}"
ROUNDS="${ROUNDS:-3}"
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -ge 1 ]] || { echo "ROUNDS must be a positive integer" >&2; exit 2; }
CONCURRENCY="${CONCURRENCY:-200}"
[[ "$N" =~ ^[0-9]+$ && "$N" -ge 1 ]] || { echo "usage: $0 [N>=1]" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
log() { printf '[ws-bench] %s\n' "$*" >&2; }
# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"

# ---------------------------------------------------------------- 1. dependencies
need_commands haproxy:haproxy curl:curl python3:python3

# ---------------------------------------------------------------- 2. fd limit
hard=$(ulimit -Hn)
ulimit -n "$hard"
fd_limit=$(ulimit -n)
log "fd limit $fd_limit"
if [[ "$fd_limit" != unlimited ]] && ((fd_limit < 2 * N + 500)); then
    echo "fd limit $fd_limit is too low for $N tunnels (the proxy needs ~2N + 500)" >&2
    exit 2
fi

# ---------------------------------------------------------------- 3. build
rtcgate_binary
bench_tool ws_tunnels "${WS_TUNNELS_BIN:-}"

# ---------------------------------------------------------------- temp dir + cleanup
bench_tmp rtcgate-ws-bench

# ---------------------------------------------------------------- 4. free ports
read -r P1 P2 P3 RTC_PORT HAP_PORT < <(free_ports 5)
log "ports: backends $P1 $P2 $P3, rtcgate $RTC_PORT, haproxy $HAP_PORT"

# wait_ready URL PID NAME: polls URL until it answers 200 "ok" (bounded, ~15 s).
wait_ready() {
    local url=$1 pid=$2 name=$3 i body
    for i in $(seq 150); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited during start-up; its log:" >&2
            cat "$TMP/$name.log" >&2 || true
            exit 1
        fi
        body=$(curl -s -m 1 "$url" 2>/dev/null || true)
        [[ "$body" == ok* ]] && return 0
        sleep 0.1
    done
    echo "$name not ready at $url after 15 s; its log:" >&2
    cat "$TMP/$name.log" >&2 || true
    exit 1
}

# ---------------------------------------------------------------- 5. backends
n=1
BACKEND_PIDS=()
for p in "$P1" "$P2" "$P3"; do
    RUST_LOG=warn "$BIN" demo-backend --id "b$n" --listen "127.0.0.1:$p" >"$TMP/b$n.log" 2>&1 &
    PIDS+=("$!")
    BACKEND_PIDS+=("$!")
    wait_ready "http://127.0.0.1:$p/health" "$!" "b$n"
    n=$((n + 1))
done
log "backends ready"

# ---------------------------------------------------------------- 6. rtcgate
{
    echo "[listen]"
    echo "http = \"127.0.0.1:$RTC_PORT\""
    echo
    echo "[sticky]"
    echo 'keys = ["k1:bench-secret-0123456789abcdef0123456789"]'
    echo
    echo "[limits]"
    echo "max_connections = 19000"
    echo
    echo "[pools.media]"
    echo 'hosts = ["*"]'
    echo "max_sessions = 100000"
    n=1
    for p in "$P1" "$P2" "$P3"; do
        echo
        echo "[[pools.media.backends]]"
        echo "id = \"b$n\""
        echo "address = \"127.0.0.1:$p\""
        n=$((n + 1))
    done
} >"$TMP/rtcgate.toml"
RUST_LOG=warn "$BIN" --config "$TMP/rtcgate.toml" >"$TMP/rtcgate.log" 2>&1 &
RTC_PID=$!
PIDS+=("$RTC_PID")
wait_ready "http://127.0.0.1:$RTC_PORT/health" "$RTC_PID" rtcgate
log "rtcgate ready (pid $RTC_PID)"

# ---------------------------------------------------------------- 7. HAProxy
HAP_MAXCONN=$(((fd_limit - 1000) / 2))
((HAP_MAXCONN > 100000)) && HAP_MAXCONN=100000
((N < HAP_MAXCONN)) || { echo "N=$N needs haproxy maxconn > $HAP_MAXCONN (fd limit $fd_limit)" >&2; exit 2; }
cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn $HAP_MAXCONN

defaults
    mode http
    maxconn $HAP_MAXCONN
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h

frontend fe
    bind 127.0.0.1:$HAP_PORT
    default_backend media

backend media
    balance leastconn
    cookie SRV insert indirect nocache
    server b1 127.0.0.1:$P1 cookie b1
    server b2 127.0.0.1:$P2 cookie b2
    server b3 127.0.0.1:$P3 cookie b3
EOF
haproxy -f "$TMP/haproxy.cfg" -db >"$TMP/haproxy.log" 2>&1 &
HAP_PID=$!
PIDS+=("$HAP_PID")
wait_ready "http://127.0.0.1:$HAP_PORT/health" "$HAP_PID" haproxy
log "haproxy ready (pid $HAP_PID, maxconn $HAP_MAXCONN)"

# ---------------------------------------------------------------- 8. measure
# The kernel's side, machine-wide: TCP sockets in use and their buffer pages (/proc/net/sockstat)
# and slab memory (socket structs, files, epoll items; /proc/meminfo). Sampled before a run and
# while its tunnels are held; each tunnel is 4 sockets on this machine (tool, proxy's two,
# backend), of which the proxy holds 2.
# The proxy's CPU time so far (utime + stime), in seconds: sampled before a run and while its
# tunnels are held, the difference is what opening them (and one echo each) cost it.
cpu_seconds() {
    awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat"
}
kernel_sample() {
    awk '/^TCP:/ {for (i = 2; i < NF; i += 2) print "tcp_" $i, $(i + 1)}' /proc/net/sockstat
    awk '/^Slab:/ {print "slab_kib", $2}' /proc/meminfo
}
# smaps_rollup of the proxy while the tunnels are held: sampled by a helper that waits for
# the tool's "holding" line on stderr (the tool holds for HOLD s before its own RSS read).
run_tool() { # label url pid
    local label=$1 url=$2 pid=$3 rc=0
    log "$label: $N tunnels to $url (proxy pid $pid)"
    kernel_sample >"$TMP/$label.kernel0"
    cpu_seconds "$pid" >"$TMP/$label.cpu0"
    "$TOOL" --url "$url" --tunnels "$N" --pid "$pid" --concurrency "$CONCURRENCY" \
        --hold-secs "$HOLD" --label "$label" >"$TMP/$label.out" 2> >(
            while IFS= read -r line; do
                printf '%s\n' "$line" >&2
                if [[ "$line" == *holding* ]]; then
                    grep -E '^(Rss|Pss_Anon|Pss_File|Anonymous|Private_Dirty)' \
                        "/proc/$pid/smaps_rollup" >"$TMP/$label.smaps" 2>/dev/null || true
                    awk '/^Threads:/ {print "Threads:", $2}' "/proc/$pid/status" >>"$TMP/$label.smaps" 2>/dev/null || true
                    kernel_sample >"$TMP/$label.kernel"
                    cpu_seconds "$pid" >"$TMP/$label.cpu"
                fi
            done
        ) || rc=$?
    cat "$TMP/$label.out"
    ((rc == 0)) || log "$label: the tool exited $rc (failures above)"
    grep -q '^RESULT ' "$TMP/$label.out" || { echo "$label: no RESULT line" >&2; exit 1; }
}
# One proxy's run in round $2: files are named LABEL for each proxy's first run, LABEL.rN after.
run_proxy() { # name round
    local name=$1 round=$2 label=$1
    ((round == 1)) || label="$name.r$round"
    case $name in
    rtcgate) run_tool "$label" "ws://127.0.0.1:$RTC_PORT/ws" "$RTC_PID" ;;
    haproxy) run_tool "$label" "ws://127.0.0.1:$HAP_PORT/ws" "$HAP_PID" ;;
    esac
    sleep 1 # let the close handshakes finish before the next proxy is loaded
}
if ((${WARMUP:-1})); then
    i=0
    for p in "$P1" "$P2" "$P3"; do
        log "warm-up: $(((N + 2) / 3)) tunnels straight to backend b$((i + 1))"
        "$TOOL" --url "ws://127.0.0.1:$p/ws" --tunnels $(((N + 2) / 3)) --pid "${BACKEND_PIDS[$i]}" \
            --concurrency "$CONCURRENCY" --hold-secs 0 --label "warmup-b$((i + 1))" >/dev/null 2>&1 ||
            log "warm-up through b$((i + 1)) had failures (not measured)"
        i=$((i + 1))
    done
    sleep 1
fi
for round in $(seq "$ROUNDS"); do
    if ((round % 2)); then order=(rtcgate haproxy); else order=(haproxy rtcgate); fi
    log "round $round of $ROUNDS: ${order[*]}"
    for name in "${order[@]}"; do run_proxy "$name" "$round"; done
done

# ---------------------------------------------------------------- 9. report
for label in rtcgate haproxy; do
    if [[ -s "$TMP/$label.smaps" ]]; then
        echo "$label while holding (smaps_rollup, KiB): $(tr -s ' ' <"$TMP/$label.smaps" | sed 's/ kB//' | paste -sd' ')"
    fi
done
for label in rtcgate haproxy; do
    [[ -s "$TMP/$label.kernel" && -s "$TMP/$label.kernel0" ]] || continue
    python3 - "$label" "$TMP/$label.kernel0" "$TMP/$label.kernel" <<'PY'
import sys
label, before, during = sys.argv[1], *(dict(l.split() for l in open(p)) for p in sys.argv[2:])
d = {k: int(during[k]) - int(before[k]) for k in during if k in before}
sockets = d.get("tcp_inuse", 0)
if sockets > 0:
    kib = d.get("slab_kib", 0) + d.get("tcp_mem", 0) * 4
    print(f"KERNEL {label} tcp_sockets_added={sockets} tcp_buffer_pages_added={d.get('tcp_mem', 0)} "
          f"slab_kib_added={d.get('slab_kib', 0)} kib_per_socket={kib / sockets:.2f} "
          f"proxy_kib_per_tunnel={2 * kib / sockets:.2f}")
PY
done
for label in rtcgate haproxy; do
    [[ -s "$TMP/$label.cpu" && -s "$TMP/$label.cpu0" ]] || continue
    awk -v l="$label" -v n="$N" 'NR == FNR {a = $1; next} {printf "CPU %s open_cpu_s=%.2f us_per_tunnel_opened=%.0f\n", l, $1 - a, ($1 - a) * 1e6 / n}' \
        "$TMP/$label.cpu0" "$TMP/$label.cpu"
done
for name in rtcgate haproxy; do
    if [[ -s "$TMP/$name.log" ]]; then
        echo "$name log: $(wc -l <"$TMP/$name.log") lines; distinct messages (count, timestamp stripped):"
        sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^[0-9T:.-]*Z *//' "$TMP/$name.log" | sort | uniq -c | sort -rn | head -n 10
    fi
done
echo
echo "N=$N tunnels, hold ${HOLD}s, $CONCURRENCY handshakes in flight; $(nproc) CPUs shared by tool, proxy and backends"
grep -h '^RESULT ' "$TMP/rtcgate.out" "$TMP/haproxy.out"
python3 - "$TMP/rtcgate.out" "$TMP/haproxy.out" <<'PY'
import sys
def res(path):
    line = next(l for l in open(path) if l.startswith("RESULT "))
    return dict(kv.split("=", 1) for kv in line.split()[1:])
r, h = res(sys.argv[1]), res(sys.argv[2])
def ratio(k):
    try: return f"{float(r[k]) / float(h[k]):.3f}"
    except (ValueError, ZeroDivisionError, KeyError): return "-"
print(f"RATIO kib_per_tunnel={ratio('kib_per_tunnel')} rtt_p99={ratio('rtt_p99_ms')} "
      f"rtt1_p99={ratio('rtt1_p99_ms')} (rtcgate/haproxy; failed: rtcgate={r['failed']} haproxy={h['failed']})")
PY
# The opening time and CPU per tunnel opened, every round.
python3 - "$TMP" "$ROUNDS" "$N" <<'PY'
import statistics, sys
tmp, rounds, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def label(name, r):
    return name if r == 1 else f"{name}.r{r}"
def result(name, r):
    line = next(l for l in open(f"{tmp}/{label(name, r)}.out") if l.startswith("RESULT "))
    return dict(kv.split("=", 1) for kv in line.split()[1:])
def cpu_us(name, r):
    try:
        before, held = (float(open(f"{tmp}/{label(name, r)}.{s}").read()) for s in ("cpu0", "cpu"))
        return (held - before) * 1e6 / n
    except (OSError, ValueError):
        return float("nan")
opens, cpus, fails = [], [], 0
for r in range(1, rounds + 1):
    ro, ho = (float(result(p, r)["open_secs"]) for p in ("rtcgate", "haproxy"))
    rc, hc = cpu_us("rtcgate", r), cpu_us("haproxy", r)
    fails += sum(int(result(p, r)["failed"]) for p in ("rtcgate", "haproxy"))
    first = "rtcgate" if r % 2 else "haproxy"
    print(f"ROUND {r} first={first} open_secs rtcgate={ro:.2f} haproxy={ho:.2f} ratio={ro / ho:.3f} "
          f"cpu_us_per_tunnel rtcgate={rc:.0f} haproxy={hc:.0f} ratio={rc / hc:.3f}")
    opens.append(ro / ho)
    cpus.append(rc / hc)
def spread(name, rs):
    return f"{name}={statistics.median(rs):.3f} {name}_spread={min(rs):.3f}-{max(rs):.3f}"
print(f"RATIO_OPEN rounds={rounds} {spread('open_secs', opens)} {spread('cpu_per_tunnel', cpus)} "
      f"(rtcgate/haproxy; below 1 is rtcgate faster or cheaper; failed over all rounds: {fails})")
PY

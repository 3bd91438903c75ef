#!/usr/bin/env bash
# storm.sh - reconnect storms over TLS (issue 23): N wss:// clients open through rtcgate, HAProxy
# 2.6 and nginx in turn, a backend holding a third of them is killed, and its clients come back.
#
# What it measures
#   benches/storm.rs opens N wss:// clients (TCP + TLS + WebSocket upgrade + one echo; at most
#   CONCURRENCY handshakes in flight) through the proxy under test to three `rtcgate demo-backend`
#   echo servers. Each client has a TLS config and session store of its own, so it keeps the
#   tickets the proxy sends it, as a browser tab would. Then the tool SIGKILLs backend b1 (about
#   a third of the clients are on it, `READY backend=.. count=..`): its clients see their
#   WebSocket end (rtcgate: close frame 1014; HAProxy, nginx: EOF) and all reconnect at once,
#   unbounded, with the same session store (TLS resumption) and the sticky cookie their first 101
#   set (a browser sends it back; the proxy must place them afresh), through the same proxy to
#   the two backends left. A failed reconnect is retried 3 times, 100 ms apart; a client not back
#   30 s after the kill has failed. b1 is started again (same port) before the next proxy.
#   Per proxy and round, one RESULT line (key=value):
#     open_secs          time until all N were open (hs_per_s = opened / open_secs)
#     open_p99_ms        connect time p99 (TCP connect start -> echo received), open phase
#     full / resumed     TLS handshake kinds in the open phase (all full: every client is new)
#     full_hs_per_s      full handshakes / open_secs
#     reconnects         clients of the killed backend; back = how many came back
#     back_secs          kill -> the last of them echoed on its new connection
#     reconnect_resumed  of those reconnects, how many resumed TLS (reconnect_full: did not)
#     reconnect_p99_ms   connect time p99 of the reconnects (back_p99_ms: kill -> back, p99)
#     resumed_hs_per_s   reconnect_resumed / back_secs (a floor: back_secs includes noticing)
#     failed, retries    reconnects that never came back; further attempts made
#     cpu_us_per_tunnel_opened  the proxy's utime + stime (/proc/PID/stat; nginx: master +
#                        workers) over the open phase, per client opened (cpu_us_per_reconnect:
#                        the same over the storm, per client back)
#     others_broken      clients of the two other backends that no longer echoed after the storm
#   After the rounds, rtcgate only (RESULT label=rtcgate-cross): two instances with the same
#   `[tls] ticket_keys` file; N clients open through instance A, close, and all reconnect
#   through B: cross_resumed of cross_of (expect all); then the same with two different key
#   files: diffkeys_resumed (expect 0).
#
# The proxies (every one started afresh for each run, stopped after it)
#   rtcgate: release build, `[listen] https`, EC P-256 certificate (openssl, CN and SAN
#     localhost), `[tls] ticket_keys` (80-byte key, `openssl rand 80 | base64 -w0`),
#     `[limits] max_connections = 19000`, one pool of the 3 backends, max_sessions = 100000,
#     default sticky cookie, default health checks (2 s, fall 2; a refused connect counts too,
#     and a request that never left is placed elsewhere once).
#   HAProxy 2.6 (Debian): mode http, `bind ... ssl crt <cert+key> alpn http/1.1`, nbthread 2,
#     balance leastconn, `cookie SRV insert indirect nocache`, timeout tunnel 1h, maxconn from
#     the fd limit as ws_tunnels.sh does; TLS tickets on (its default). Beyond ws_tunnels.sh's
#     config, what a kill needs to be survivable at all: `retries 3`, `option redispatch 1`
#     (without it a cookie or leastconn keeps choosing the dead b1: it has no connections) and
#     `check inter 2s fall 2 rise 2` plus `observe layer4 error-limit 2 on-error mark-down`
#     (rtcgate's default checks and its counting of refused connects).
#   nginx (Debian's nginx-light: http proxy, upstream and ssl modules): worker_processes 2,
#     `listen ... ssl`, ssl_session_tickets on, ssl_session_cache shared:SSL:10m,
#     `ssl_protocols TLSv1.2 TLSv1.3` (nginx 1.22's default leaves TLS 1.3 out), upstream
#     least_conn (defaults: max_fails 1, fail_timeout 10s, proxy_next_upstream error timeout),
#     proxy_http_version 1.1 with Upgrade/Connection headers, proxy_read_timeout 1h. nginx OSS
#     has no sticky cookie (that is nginx Plus's `sticky`): its clients are not pinned, and the
#     cookie rtcgate and HAProxy set has no counterpart there. Its two workers take connections
#     from one shared listening socket (no `reuseport`, the default), so their shares can differ.
#
# How to run (from the repo root, as root, Debian 12)
#   bash benches/storm.sh                  # N = 9000 clients, 3 rounds
#   ROUNDS=1 bash benches/storm.sh 1000    # smaller shake-out run
#   CONCURRENCY=100 ROUNDS=5 bash benches/storm.sh 9000
#   THREADS=1 bash benches/storm.sh        # the tool on one thread (the figures before it had two)
#   haproxy, nginx-light, openssl, curl and python3 are installed with apt-get if missing.
#   STORM_BIN=/path/to/built/storm skips building the tool; RTCGATE_BIN=/path/to/rtcgate
#   measures that binary instead of building one (an older build, for a before/after).
#
# Read the RATIOS, not absolute numbers
#   The machine is shared and noisy (2 cores): the tool, the proxy and the backends all share the
#   CPUs. The tool runs on THREADS (2) threads: on one, its own TLS work (two ECDSA verifies and
#   an X25519 exchange per full handshake) set the pace whatever the proxy, with the machine a
#   fifth idle, and open_secs differed less between proxies than their CPU did. On two the
#   machine is busy throughout (97 %), so a proxy's time reflects its share of the CPU, diluted
#   by the tool's and the backends' shares, which are the same for every proxy. Every round
#   runs the three proxies back to back, in an order that rotates per round; the RATIO lines are
#   rtcgate/haproxy and rtcgate/nginx of figures measured in the same round: the median over the
#   rounds, then the min-max of the per-round ratios (`_spread`).
#
# File descriptors (hard limit here: 20000; the soft limit is raised to it before anything starts)
#   tool:     1 per client (N) + a few.
#   proxy:    2 per client (client side + backend side) = 2N + listeners: N=9000 -> ~18000.
#             HAProxy refuses to start if maxconn needs more fds than the limit, so maxconn =
#             (limit - 1000) / 2 -> 9500 for 20000 fds, and N must stay below it. nginx:
#             worker_rlimit_nofile = the limit, worker_connections = limit - 1000 (each worker
#             counts both sides of its own connections).
#   backends: ~N/3 each, ~N/2 after the kill.
#
# Everything binds to 127.0.0.1 on free ports chosen at run time; every process started here is
# stopped and the temp dir removed on exit (also on error or Ctrl-C).
set -euo pipefail

N="${1:-9000}"
ROUNDS="${ROUNDS:-3}"
CONCURRENCY="${CONCURRENCY:-200}"
THREADS="${THREADS:-2}"
[[ "$N" =~ ^[0-9]+$ && "$N" -ge 1 ]] || { echo "usage: $0 [N>=1]" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -ge 1 ]] || { echo "ROUNDS must be >= 1" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
log() { printf '[storm-bench] %s\n' "$*" >&2; }
# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"

# ---------------------------------------------------------------- 1. dependencies
need_commands haproxy:haproxy nginx:nginx-light openssl:openssl curl:curl python3:python3
ngx_build=$(nginx -V 2>&1)
[[ "$ngx_build" == *--with-http_ssl_module* ]] || { echo "this nginx has no http ssl module" >&2; exit 1; }
[[ "$ngx_build" != *--without-http_proxy_module* ]] || { echo "this nginx has no http proxy module" >&2; exit 1; }

# ---------------------------------------------------------------- 2. fd limit
hard=$(ulimit -Hn)
ulimit -n "$hard"
fd_limit=$(ulimit -n)
log "fd limit $fd_limit"
[[ "$fd_limit" == unlimited ]] && fd_limit=1048576
if ((fd_limit < 2 * N + 500)); then
    echo "fd limit $fd_limit is too low for $N clients (the proxy needs ~2N + 500)" >&2
    exit 2
fi
HAP_MAXCONN=$(((fd_limit - 1000) / 2))
((HAP_MAXCONN > 100000)) && HAP_MAXCONN=100000
((N < HAP_MAXCONN)) || { echo "N=$N needs haproxy maxconn > $HAP_MAXCONN (fd limit $fd_limit)" >&2; exit 2; }
NGX_CONNS=$((fd_limit - 1000))

# ---------------------------------------------------------------- 3. build
rtcgate_binary
bench_tool storm "${STORM_BIN:-}"

# ---------------------------------------------------------------- temp dir + cleanup
bench_tmp rtcgate-storm-bench

# ---------------------------------------------------------------- 4. certificate, ticket keys, ports
# CA:FALSE: openssl's -x509 default marks the certificate a CA, which rustls (webpki) refuses as
# a server's own certificate even when it is the trust anchor.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -addext basicConstraints=critical,CA:FALSE \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/haproxy.pem"
chmod 644 "$TMP/key.pem" "$TMP/haproxy.pem" # nginx's workers too may read them
for k in a b; do
    { echo "# bench keys $k"; openssl rand 80 | base64 -w0; echo; } >"$TMP/tickets-$k.keys"
done

read -r P1 P2 P3 RTC_PORT RTC_B_PORT HAP_PORT NGX_PORT < <(free_ports 7)
BPORT=("" "$P1" "$P2" "$P3")
log "ports: backends $P1 $P2 $P3, rtcgate $RTC_PORT (+$RTC_B_PORT), haproxy $HAP_PORT, nginx $NGX_PORT"

# wait_ready URL PID NAME: polls URL (TLS unchecked) until it answers "ok..." (bounded, ~15 s).
wait_ready() {
    local url=$1 pid=$2 name=$3 i body
    for i in $(seq 150); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited during start-up; its log:" >&2
            cat "$TMP/$name.log" >&2 || true
            exit 1
        fi
        body=$(curl -sk -m 1 "$url" 2>/dev/null || true)
        [[ "$body" == ok* ]] && return 0
        sleep 0.1
    done
    echo "$name not ready at $url after 15 s; its log:" >&2
    cat "$TMP/$name.log" >&2 || true
    exit 1
}

# ---------------------------------------------------------------- 5. backends
BPID=()
start_backend() { # n
    local n=$1
    RUST_LOG=warn "$BIN" demo-backend --id "b$n" --listen "127.0.0.1:${BPORT[$n]}" >>"$TMP/b$n.log" 2>&1 &
    BPID[n]=$!
    PIDS+=("$!")
    wait_ready "http://127.0.0.1:${BPORT[$n]}/health" "$!" "b$n"
}
for n in 1 2 3; do start_backend "$n"; done
log "backends ready (pids ${BPID[*]:1})"

# ---------------------------------------------------------------- 6. the proxies
# Each start_* starts one afresh and sets PROXY_PID.
rtcgate_config() { # port ticket-key-file
    cat <<EOF
[listen]
https = "127.0.0.1:$1"

[tls]
cert = "cert.pem"
key = "key.pem"
ticket_keys = "$2"

[sticky]
keys = ["k1:bench-secret-0123456789abcdef0123456789"]

[limits]
max_connections = 19000

[pools.media]
hosts = ["*"]
max_sessions = 100000
EOF
    local n
    for n in 1 2 3; do
        printf '\n[[pools.media.backends]]\nid = "b%s"\naddress = "127.0.0.1:%s"\n' "$n" "${BPORT[$n]}"
    done
}
start_rtcgate() { # name port ticket-key-file
    local name=$1 port=$2 keys=$3
    rtcgate_config "$port" "$keys" >"$TMP/$name.toml"
    RUST_LOG=warn "$BIN" --config "$TMP/$name.toml" >>"$TMP/$name.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_ready "https://127.0.0.1:$port/health" "$PROXY_PID" "$name"
}

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
    retries 3
    option redispatch 1

frontend fe
    bind 127.0.0.1:$HAP_PORT ssl crt $TMP/haproxy.pem alpn http/1.1
    default_backend media

backend media
    balance leastconn
    cookie SRV insert indirect nocache
    option httpchk GET /health
    default-server check inter 2s fall 2 rise 2 observe layer4 error-limit 2 on-error mark-down
    server b1 127.0.0.1:$P1 cookie b1
    server b2 127.0.0.1:$P2 cookie b2
    server b3 127.0.0.1:$P3 cookie b3
EOF
start_haproxy() {
    haproxy -f "$TMP/haproxy.cfg" -db >>"$TMP/haproxy.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_ready "https://127.0.0.1:$HAP_PORT/health" "$PROXY_PID" haproxy
}

mkdir -p "$TMP/nginx"
cat >"$TMP/nginx.conf" <<EOF
user root;
worker_processes 2;
worker_rlimit_nofile $fd_limit;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx.log warn;

events {
    worker_connections $NGX_CONNS;
}

http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;

    upstream up {
        least_conn;
        server 127.0.0.1:$P1;
        server 127.0.0.1:$P2;
        server 127.0.0.1:$P3;
    }

    server {
        listen 127.0.0.1:$NGX_PORT ssl;
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        ssl_session_cache shared:SSL:10m;

        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }
    }
}
EOF
nginx -t -p "$TMP/nginx/" -c "$TMP/nginx.conf" -e "$TMP/nginx.log" >/dev/null 2>&1 || {
    nginx -t -p "$TMP/nginx/" -c "$TMP/nginx.conf" -e "$TMP/nginx.log" >&2
    exit 1
}
start_nginx() {
    nginx -p "$TMP/nginx/" -c "$TMP/nginx.conf" -e "$TMP/nginx.log" -g 'daemon off;' >>"$TMP/nginx.out" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_ready "https://127.0.0.1:$NGX_PORT/health" "$PROXY_PID" nginx
}

# ---------------------------------------------------------------- 7. rounds
port_of() {
    case $1 in
        rtcgate) echo "$RTC_PORT" ;;
        haproxy) echo "$HAP_PORT" ;;
        nginx) echo "$NGX_PORT" ;;
    esac
}
: >"$TMP/results"
run_one() { # label round
    local label=$1 round=$2 port rc=0
    port=$(port_of "$label")
    case $label in
        rtcgate) start_rtcgate rtcgate "$RTC_PORT" tickets-a.keys ;;
        haproxy) start_haproxy ;;
        nginx) start_nginx ;;
    esac
    log "round $round, $label: $N clients to 127.0.0.1:$port (proxy pid $PROXY_PID), then kill b1 (pid ${BPID[1]})"
    "$TOOL" --addr "127.0.0.1:$port" --ca "$TMP/cert.pem" --clients "$N" \
        --concurrency "$CONCURRENCY" --pid "$PROXY_PID" --kill-pid "${BPID[1]}" --kill-id b1 \
        --threads "$THREADS" --label "$label" >"$TMP/$label.r$round.out" || rc=$?
    ((rc == 0)) || log "$label: the tool exited $rc (failures in its RESULT line)"
    grep -q '^RESULT ' "$TMP/$label.r$round.out" || { echo "$label: no RESULT line" >&2; exit 1; }
    sed "s/^RESULT label=\([^ ]*\) /RESULT label=\1 round=$round /" "$TMP/$label.r$round.out" |
        tee -a "$TMP/results"
    stop_pid "$PROXY_PID"
    # b1 again, on its port, for the next run.
    wait "${BPID[1]}" 2>/dev/null || true
    start_backend 1
    sleep 1 # let the last closes settle before the next proxy is loaded
}
PROXIES=(rtcgate haproxy nginx)
for round in $(seq "$ROUNDS"); do
    for i in 0 1 2; do
        run_one "${PROXIES[$(((i + round - 1) % 3))]}" "$round"
    done
done

# ---------------------------------------------------------------- 8. across two instances
cross() { # tag keys-of-B
    local tag=$1 keys_b=$2 a b rc=0
    start_rtcgate rtcgate-a "$RTC_PORT" tickets-a.keys
    a=$PROXY_PID
    start_rtcgate rtcgate-b "$RTC_B_PORT" "$keys_b"
    b=$PROXY_PID
    log "cross ($tag): $N clients open through A ($RTC_PORT), then all through B ($RTC_B_PORT, $keys_b)"
    "$TOOL" --addr "127.0.0.1:$RTC_PORT" --cross-addr "127.0.0.1:$RTC_B_PORT" --ca "$TMP/cert.pem" \
        --clients "$N" --concurrency "$CONCURRENCY" --threads "$THREADS" --pid "$a" --label "rtcgate-$tag" \
        >"$TMP/cross-$tag.out" || rc=$?
    ((rc == 0)) || log "cross $tag: the tool exited $rc"
    cat "$TMP/cross-$tag.out"
    stop_pid "$a"
    stop_pid "$b"
}
cross same tickets-a.keys
cross diffkeys tickets-b.keys

# ---------------------------------------------------------------- 9. report
for name in rtcgate haproxy nginx rtcgate-a rtcgate-b; do
    if [[ -s "$TMP/$name.log" ]]; then
        echo "$name log: $(wc -l <"$TMP/$name.log") lines; distinct messages (count, timestamp stripped):"
        # (awk, not head: head's early exit would kill the pipe, and this script, by SIGPIPE)
        sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^[0-9T:.-]*Z *//' -e 's/^[0-9\/: ]*\[/[/' \
            -e 's/[0-9]*#[0-9]*: \*[0-9]* //' -e 's/([0-9]*) //' -e 's/host: "[^"]*"//' "$TMP/$name.log" |
            sort | uniq -c | sort -rn | awk 'NR <= 8'
    fi
done
echo
echo "N=$N clients, $CONCURRENCY handshakes in flight, $ROUNDS rounds; $(nproc) CPUs shared by tool, proxy and backends"
cat "$TMP/results"
python3 - "$N" "$TMP/cross-same.out" "$TMP/cross-diffkeys.out" <<'PY'
import sys
n, same, diff = sys.argv[1:4]
def res(path):
    try:
        line = next(l for l in open(path) if l.startswith("RESULT "))
    except (OSError, StopIteration):
        return {}
    return dict(kv.split("=", 1) for kv in line.split()[1:])
s, d = res(same), res(diff)
g = lambda r, k: r.get(k, "-")
print(f"RESULT label=rtcgate-cross clients={n} cross_resumed={g(s, 'cross_resumed')} "
      f"cross_of={g(s, 'cross_of')} cross_failed={g(s, 'cross_failed')} cross_secs={g(s, 'cross_secs')} "
      f"open_resumed={g(s, 'resumed')} diffkeys_resumed={g(d, 'cross_resumed')} "
      f"diffkeys_of={g(d, 'cross_of')} diffkeys_failed={g(d, 'cross_failed')} "
      f"diffkeys_secs={g(d, 'cross_secs')}")
PY
python3 - "$TMP/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    if not line.startswith("RESULT "):
        continue
    kv = dict(x.split("=", 1) for x in line.split()[1:])
    rows[(kv["round"], kv["label"])] = kv
rounds = sorted({r for r, _ in rows}, key=int)
keys = ["open_secs", "back_secs", "cpu_us_per_tunnel_opened", "open_p99_ms", "reconnect_p99_ms",
        "cpu_us_per_reconnect"]
for other in ("haproxy", "nginx"):
    parts = []
    for k in keys:
        rs = []
        for r in rounds:
            try:
                rs.append(float(rows[(r, "rtcgate")][k]) / float(rows[(r, other)][k]))
            except (KeyError, ValueError, ZeroDivisionError):
                pass
        if rs:
            parts.append(f"{k}={statistics.median(rs):.3f} {k}_spread={min(rs):.3f}-{max(rs):.3f}")
        else:
            parts.append(f"{k}=-")
    fails = lambda l: sum(int(rows[(r, l)].get("failed", "0").replace("-", "0")) + int(rows[(r, l)].get("open_failed", "0"))
                          for r in rounds if (r, l) in rows)
    print(f"RATIO rtcgate/{other} rounds={len(rounds)} " + " ".join(parts) +
          f" (failed: rtcgate={fails('rtcgate')} {other}={fails(other)})")
PY

#!/usr/bin/env bash
# tls_handshakes.sh - TLS handshakes per second, and per CPU-second of the proxy (per core), full
# and resumed, with an RSA-2048 and an EC P-256 certificate: rtcgate, HAProxy 2.6 and nginx in
# the same run, each proxying to the same demo backend.
#
# What it measures
#   `openssl s_time -www /` (each connection a TLS handshake and one GET /, proxied to a demo
#   backend) against each proxy for SECS seconds: `-new` (a full handshake every time) and
#   `-reuse` (resumption: s_time -www reads the server's TLS 1.3 tickets). Per case it prints
#   the connections per second s_time reports, and the proxy's own CPU time over the run
#   (utime + stime from /proc/PID/stat; nginx: master + workers), whose quotient is the
#   handshakes one core does per second: the figure to size a reconnect wave with
#   (docs/scaling.md).
#
# How to run (from the repo root, Debian 12)
#   bash benches/tls_handshakes.sh
#   SECS=10 ROUNDS=5 bash benches/tls_handshakes.sh
#   PROXIES="rtcgate" bash benches/tls_handshakes.sh              # rtcgate alone
#   RTCGATE_BIN=/path/to/rtcgate bash benches/tls_handshakes.sh   # that binary, no build
#
# The proxies, each started afresh per certificate
#   rtcgate: release build, `[listen] https`, default workers (one per CPU), default tickets.
#   HAProxy 2.6 (Debian, OpenSSL 3.0): mode http, nbthread 2, `bind ... ssl crt`, tickets on
#     (its default), connection reuse to the backend (its default, http-reuse safe).
#   nginx (Debian, OpenSSL 3.0): worker_processes 2, ssl_protocols TLSv1.2 TLSv1.3,
#     ssl_session_tickets on, ssl_session_cache shared:SSL:10m, upstream keepalive 32.
#
# s_time is one process, one connection at a time, on the same 2 cores as the proxy: the
# per-second figure is bounded by the client as much as by the proxy; the per-CPU-second figure
# is the proxy's own cost. Rounds rotate the order of the proxies. Lines:
#   RESULT proxy=... round=... cert=... mode=... connections=... conn_per_s=... cpu_s=...
#          handshakes_per_core_s=...
#   RATIO rtcgate/OTHER cert=... mode=... conn_per_s=median conn_per_s_spread=min-max
#          per_core=median per_core_spread=min-max
set -euo pipefail

SECS="${SECS:-5}"
ROUNDS="${ROUNDS:-1}"
read -r -a PROXIES <<<"${PROXIES:-rtcgate haproxy nginx}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
log() { printf '[tls-bench] %s\n' "$*" >&2; }
# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"

need_commands openssl:openssl curl:curl python3:python3 haproxy:haproxy nginx:nginx-light
rtcgate_binary
bench_tmp rtcgate-tls-bench
read -r BACKEND PORT < <(free_ports 2)

# CA:FALSE: openssl's -x509 default marks the certificate a CA, which rustls refuses as a
# server's own certificate.
for cert in rsa ec; do
    case $cert in
        rsa) newkey=(-newkey rsa:2048) ;;
        ec) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    esac
    openssl req -x509 "${newkey[@]}" -nodes -days 2 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
        -keyout "$TMP/$cert.key" -out "$TMP/$cert.crt" 2>/dev/null
    cat "$TMP/$cert.crt" "$TMP/$cert.key" >"$TMP/$cert.pem"
done
chmod 644 "$TMP"/*.key "$TMP"/*.pem # nginx's workers too may read them
mkdir -p "$TMP/nginx"

RUST_LOG=warn "$BIN" demo-backend --id b1 --listen "127.0.0.1:$BACKEND" >"$TMP/b1.log" 2>&1 &
PIDS+=("$!")
wait_url "http://127.0.0.1:$BACKEND/health"

ticks=$(getconf CLK_TCK)
cpu_seconds() { # pid...: their utime + stime so far, in seconds (nginx: master and workers)
    local p all=()
    for p in "$@"; do all+=("$p" $(pgrep -P "$p" || true)); done
    for p in "${all[@]}"; do cat "/proc/$p/stat" 2>/dev/null || true; done |
        awk -v t="$ticks" '{s += $14 + $15} END {print s / t}'
}

start_proxy() { # proxy cert: starts it, sets PROXY_PID
    local proxy=$1 cert=$2
    case $proxy in
        rtcgate)
            cat >"$TMP/$cert.toml" <<EOF
[listen]
https = "127.0.0.1:$PORT"

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
            RUST_LOG=warn "$BIN" --config "$TMP/$cert.toml" >>"$TMP/rtcgate.log" 2>&1 &
            ;;
        haproxy)
            cat >"$TMP/haproxy-$cert.cfg" <<EOF
global
    nbthread 2
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:$PORT ssl crt $TMP/$cert.pem
    default_backend b
backend b
    server b1 127.0.0.1:$BACKEND
EOF
            haproxy -f "$TMP/haproxy-$cert.cfg" -db >>"$TMP/haproxy.log" 2>&1 &
            ;;
        nginx)
            cat >"$TMP/nginx-$cert.conf" <<EOF
user root;
worker_processes 2;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    upstream up {
        server 127.0.0.1:$BACKEND;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$PORT ssl;
        ssl_certificate $TMP/$cert.crt;
        ssl_certificate_key $TMP/$cert.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        ssl_session_cache shared:SSL:10m;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
            nginx -p "$TMP/nginx/" -c "$TMP/nginx-$cert.conf" -e "$TMP/nginx.log" \
                -g 'daemon off;' >>"$TMP/nginx.out" 2>&1 &
            ;;
    esac
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_url "https://127.0.0.1:$PORT/health" -k
}

: >"$TMP/results"
run_case() { # proxy cert round
    local proxy=$1 cert=$2 round=$3 mode
    start_proxy "$proxy" "$cert"
    for mode in new reuse; do
        local before after out
        before=$(cpu_seconds "$PROXY_PID")
        out=$(openssl s_time -connect "127.0.0.1:$PORT" -"$mode" -time "$SECS" -www / 2>&1 || true)
        after=$(cpu_seconds "$PROXY_PID")
        python3 - "$proxy" "$round" "$cert" "$mode" "$before" "$after" "$out" <<'PY' | tee -a "$TMP/results"
import re, sys
proxy, rnd, cert, mode, before, after, text = sys.argv[1:8]
m = re.search(r"(\d+) connections in ([\d.]+) real seconds", text)
if not m:
    print(f"RESULT proxy={proxy} round={rnd} cert={cert} mode={mode} error=no_s_time_figure")
    sys.exit(0)
n, secs = int(m.group(1)), float(m.group(2))
cpu = float(after) - float(before)
per_core = n / cpu if cpu > 0 else float("nan")
print(f"RESULT proxy={proxy} round={rnd} cert={cert} mode={mode} connections={n} "
      f"conn_per_s={n / secs:.0f} cpu_s={cpu:.2f} handshakes_per_core_s={per_core:.0f}")
PY
    done
    stop_pid "$PROXY_PID"
}

echo "rtcgate $("$BIN" --version 2>/dev/null || echo "(no --version)"); $(haproxy -v | head -1); $(nginx -v 2>&1)"
echo "$(nproc) CPUs shared by s_time and the proxy; $SECS s per case, $ROUNDS round(s)"
n=${#PROXIES[@]}
for round in $(seq "$ROUNDS"); do
    for cert in rsa ec; do
        for i in $(seq 0 $((n - 1))); do
            run_case "${PROXIES[$(((i + round - 1) % n))]}" "$cert" "$round"
        done
    done
done

python3 - "$TMP/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    kv = dict(x.split("=", 1) for x in line.split()[1:])
    if "error" not in kv:
        rows[(kv["proxy"], kv["round"], kv["cert"], kv["mode"])] = kv
rounds = sorted({k[1] for k in rows}, key=int)
for other in ("haproxy", "nginx"):
    for cert in ("rsa", "ec"):
        for mode in ("new", "reuse"):
            parts = []
            for key, name in (("conn_per_s", "conn_per_s"), ("handshakes_per_core_s", "per_core")):
                rs = []
                for r in rounds:
                    try:
                        rs.append(float(rows[("rtcgate", r, cert, mode)][key]) /
                                  float(rows[(other, r, cert, mode)][key]))
                    except (KeyError, ValueError, ZeroDivisionError):
                        pass
                if rs:
                    parts.append(f"{name}={statistics.median(rs):.3f} "
                                 f"{name}_spread={min(rs):.3f}-{max(rs):.3f}")
            if parts:
                print(f"RATIO rtcgate/{other} cert={cert} mode={mode} rounds={len(rounds)} " +
                      " ".join(parts))
PY

#!/usr/bin/env bash
# compare_haproxy.sh - HTTP/1.1 load benchmark (keep-alive, or a new connection per request): rtcgate vs HAProxy 2.6.
#
# What it measures
#   Requests/sec and p99 latency of a tiny GET (`200 "backend-N\n"`) through
#     (a) one nginx backend directly (reference: the ceiling wrk + nginx reach here),
#     (b) rtcgate (release build, plain HTTP listener, 3 backends, sticky cookie),
#     (c) HAProxy 2.6 (nbthread 2, leastconn, `cookie SRV insert`, http-reuse always),
#     (d) the same HAProxy also setting the forwarding headers rtcgate always sends
#         (X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, Forwarded): like for like,
#         since nginx parses them too and shares the CPUs. (c) stays the reference that
#         issue 2 names; (d) is reported beside it, not instead of it,
#   all with `wrk -t1 -c64 --latency` on 127.0.0.1. wrk sends no cookie, so every request
#   is a "new client": both proxies pick a backend and insert a sticky cookie each time.
#   With --close, wrk sends `Connection: close`, so each request comes on a new client
#   connection that the proxy accepts, serves and closes (backend connections stay pooled):
#   what a proxy costs per connection, as a browser reconnecting or a WebSocket opening costs.
#   Three nginx `server` blocks in ONE nginx worker process act as the three backends.
#
# How to run (from the repo root, as root, Debian 12)
#   bash benches/compare_haproxy.sh            # plain HTTP (the main result)
#   bash benches/compare_haproxy.sh --tls      # proxies terminate TLS with certs/localhost.*
#   bash benches/compare_haproxy.sh --close    # a new client connection for every request
#   DURATION=20 ROUNDS=5 bash benches/compare_haproxy.sh
#   RTCGATE_BIN=/path/to/rtcgate bash benches/compare_haproxy.sh   # that binary, no build
#                                       # (an older build, for a before/after in one session)
#   Missing tools (wrk, haproxy, nginx-light, curl, python3) are installed with apt-get.
#
# Environment
#   DURATION  seconds per measured wrk run (default 10)
#   ROUNDS    measured rounds per target (default 5); the median over rounds is reported.
#             The order rtcgate/haproxy alternates each round; every target gets one
#             discarded 2 s warm-up run before round 1.
#
# Read the RATIOS, not the absolute numbers
#   The machine is shared and noisy (2 cores): wrk, the proxy under test and nginx all
#   compete for the same CPUs, so absolute figures move from run to run. Both proxies face
#   the same handicap in the same run, which is why the result is reported as ratios
#   (rtcgate/haproxy, rtcgate/direct) measured back to back, with alternating order.
#   The last lines are machine-readable:
#   RESULT rtcgate_rps=... haproxy_rps=... ratio_rps=... rtcgate_p99_ms=... haproxy_p99_ms=... ratio_p99=...
#   (RESULT2 adds direct, RESULT3 the like-for-like HAProxy (d), RESULT4 the per-round view:
#   rtcgate and haproxy run back to back in each round, so the median of the per-round ratios
#   and the number of rounds rtcgate led say how much of a difference is the machine's noise;
#   RESULT5 the geometric mean of the per-round ratios with its 95 % confidence interval and a
#   verdict: ahead or behind when the interval excludes 1, tie when it holds 1; RESULT6 the same
#   for the p99 ratio: lower or higher when the interval excludes 1.)
#   Rounds here have ranged from 0.75x to 1.3x of each other within one run; with a difference
#   of a few percent, three rounds decide it by chance, hence five by default (about 4 min).
#   With this machine's spread, 30 rounds (ROUNDS=30, about 22 min) narrow the interval to
#   about +-4 %; a smaller difference stays a tie.
#
# Everything binds to 127.0.0.1 on free ports chosen at run time; every process started
# here is killed and the temp dir removed on exit (also on error or Ctrl-C).
set -euo pipefail

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-5}"
WARMUP=2
CONNS=64
TLS=0
CLOSE=0
for arg in "$@"; do
    case "$arg" in
        --tls) TLS=1 ;;
        --close) CLOSE=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (--tls and --close are accepted)" >&2; exit 2 ;;
    esac
done
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 1 ]] || { echo "DURATION must be a positive integer" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -ge 1 ]] || { echo "ROUNDS must be a positive integer" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

log() { printf '[bench] %s\n' "$*" >&2; }
# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"

# ---------------------------------------------------------------- 1. dependencies
need_commands wrk:wrk haproxy:haproxy nginx:nginx-light curl:curl python3:python3
# Debian's haproxy/nginx packages start system services on install; those use their own
# ports/configs and are left alone. Everything below runs private instances.

# ---------------------------------------------------------------- 2. build
rtcgate_binary

# ---------------------------------------------------------------- temp dir + cleanup
bench_tmp rtcgate-bench

# ---------------------------------------------------------------- 3. free ports
read -r P1 P2 P3 RTC_HTTP RTC_HTTPS HAP_PORT HAPF_PORT < <(free_ports 7)
log "ports: backends $P1 $P2 $P3, rtcgate $RTC_HTTP/$RTC_HTTPS, haproxy $HAP_PORT"

# wait_ready URL [curl opts...]: polls for a 200 carrying a backend body, ~10 s max.
wait_ready() {
    local url=$1 pid=$2 name=$3; shift 3
    local i body
    for i in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited during start-up; its log:" >&2
            cat "$TMP/$name.log" >&2 || true
            exit 1
        fi
        body=$(curl -s -m 1 "$@" "$url" 2>/dev/null || true)
        [[ "$body" == backend-* ]] && return 0
        sleep 0.1
    done
    echo "$name not ready at $url after 10 s; its log:" >&2
    cat "$TMP/$name.log" >&2 || true
    exit 1
}

# ---------------------------------------------------------------- 4. backends (nginx)
mkdir -p "$TMP/nginx/logs"
temp_paths="client_body_temp_path $TMP/nginx/body; proxy_temp_path $TMP/nginx/proxy;"
nginx_v="$(nginx -V 2>&1)"
for m in fastcgi uwsgi scgi; do
    grep -q -- "--without-http_${m}_module" <<<"$nginx_v" || temp_paths+=" ${m}_temp_path $TMP/nginx/$m;"
done
{
    echo "worker_processes 1;"
    echo "daemon off;"
    echo "pid $TMP/nginx/nginx.pid;"
    echo "error_log $TMP/nginx.log warn;"
    echo "events { worker_connections 4096; }"
    echo "http {"
    echo "  access_log off;"
    echo "  $temp_paths"
    echo "  keepalive_requests 100000;"
    echo "  keepalive_timeout 120s;"
    echo "  default_type text/plain;"
    n=1
    for p in "$P1" "$P2" "$P3"; do
        echo "  server { listen 127.0.0.1:$p; location / { return 200 \"backend-$n\\n\"; } }"
        n=$((n + 1))
    done
    echo "}"
} >"$TMP/nginx.conf"
nginx -e "$TMP/nginx.log" -p "$TMP/nginx" -c "$TMP/nginx.conf" >>"$TMP/nginx.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
for p in "$P1" "$P2" "$P3"; do wait_ready "http://127.0.0.1:$p/" "$NGINX_PID" nginx; done
log "nginx ready (pid $NGINX_PID)"

# ---------------------------------------------------------------- 5. rtcgate
{
    echo "[listen]"
    echo "http  = \"127.0.0.1:$RTC_HTTP\""
    if ((TLS)); then
        echo "https = \"127.0.0.1:$RTC_HTTPS\""
        echo
        echo "[tls]"
        echo "cert = \"$REPO/certs/localhost.crt\""
        echo "key  = \"$REPO/certs/localhost.key\""
    fi
    echo
    echo "[sticky]"
    echo 'keys = ["k1:bench-secret-0123456789abcdef0123456789"]'
    echo
    echo "[pools.media]"
    echo 'hosts = ["*"]'
    echo "[pools.media.health]"
    echo 'path = "/"'
    n=1
    for p in "$P1" "$P2" "$P3"; do
        echo
        echo "[[pools.media.backends]]"
        echo "id = \"b$n\""
        echo "address = \"127.0.0.1:$p\""
        n=$((n + 1))
    done
} >"$TMP/proxy.toml"
RUST_LOG=warn "$BIN" --config "$TMP/proxy.toml" >"$TMP/rtcgate.log" 2>&1 &
RTC_PID=$!
PIDS+=("$RTC_PID")
if ((TLS)); then
    RTC_URL="https://127.0.0.1:$RTC_HTTPS/"
    wait_ready "$RTC_URL" "$RTC_PID" rtcgate -k
else
    RTC_URL="http://127.0.0.1:$RTC_HTTP/"
    wait_ready "$RTC_URL" "$RTC_PID" rtcgate
fi
log "rtcgate ready (pid $RTC_PID)"

# ---------------------------------------------------------------- 6. HAProxy
# HAProxy refuses to start when it cannot get ~2*maxconn FDs. Raise the soft limit to the
# hard one; if even that is too low (some containers cap it at 20000), shrink maxconn to
# fit. Only 64 connections are used, so this changes nothing measured.
HAP_MAXCONN=20000
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fd_limit=$(ulimit -n)
if [[ "$fd_limit" != unlimited ]] && ((fd_limit < 2 * HAP_MAXCONN + 100)); then
    HAP_MAXCONN=$(((fd_limit - 100) / 2))
    log "fd limit $fd_limit: haproxy maxconn lowered to $HAP_MAXCONN"
fi
proto=http
((TLS)) && proto=https
if ((TLS)); then
    cat "$REPO/certs/localhost.crt" "$REPO/certs/localhost.key" >"$TMP/haproxy.pem"
fi
# haproxy_cfg PORT [EXTRA]: the HAProxy configuration listening on PORT; EXTRA lines go into
# the backend section.
haproxy_cfg() {
    local bind="bind 127.0.0.1:$1"
    ((TLS)) && bind+=" ssl crt $TMP/haproxy.pem"
    cat <<EOF
global
    nbthread 2
    maxconn $HAP_MAXCONN

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend fe
    $bind
    default_backend media

backend media
    balance leastconn
    cookie SRV insert indirect nocache
${2:-}
    server b1 127.0.0.1:$P1 cookie b1
    server b2 127.0.0.1:$P2 cookie b2
    server b3 127.0.0.1:$P3 cookie b3
EOF
}
# (d) adds what rtcgate adds to every request; 2.6 has no `option forwarded`, so Forwarded is
# composed by hand.
fwd_lines="    option forwardfor
    http-request set-header X-Forwarded-Proto $proto
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request add-header Forwarded \"for=%[src];proto=$proto;host=\\\"%[req.hdr(host)]\\\"\""
haproxy_cfg "$HAP_PORT" >"$TMP/haproxy.cfg"
haproxy_cfg "$HAPF_PORT" "$fwd_lines" >"$TMP/haproxy_fwd.cfg"

# start_haproxy NAME PORT: starts HAProxy on $TMP/NAME.cfg and waits until it serves.
start_haproxy() {
    local name=$1 port=$2 pid url
    haproxy -f "$TMP/$name.cfg" -db >"$TMP/$name.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    url="$proto://127.0.0.1:$port/"
    if ((TLS)); then wait_ready "$url" "$pid" "$name" -k; else wait_ready "$url" "$pid" "$name"; fi
    log "$name ready (pid $pid)"
    STARTED_PID=$pid
    STARTED_URL=$url
}
start_haproxy haproxy "$HAP_PORT"
HAP_PID=$STARTED_PID HAP_URL=$STARTED_URL
start_haproxy haproxy_fwd "$HAPF_PORT"
HAPF_PID=$STARTED_PID HAPF_URL=$STARTED_URL

# ---------------------------------------------------------------- 7. measure
DIRECT_URL="http://127.0.0.1:$P1/"
declare -A URL=([direct]="$DIRECT_URL" [rtcgate]="$RTC_URL" [haproxy]="$HAP_URL" [haproxy_fwd]="$HAPF_URL")
declare -A PROC=([direct]="" [rtcgate]="$RTC_PID" [haproxy]="$HAP_PID" [haproxy_fwd]="$HAPF_PID")

# CPU time (user+sys, clock ticks, all threads) of a process.
# Extra wrk arguments: none, or a new connection per request.
WRK_ARGS=()
((CLOSE)) && WRK_ARGS=(-H "Connection: close")
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

run_wrk() { # target round
    local t=$1 r=$2 out="$TMP/wrk.$1.$2.txt" c0=0 c1=0
    [[ -n "${PROC[$t]}" ]] && c0=$(cpu_ticks "${PROC[$t]}")
    timeout $((DURATION + 30)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${WRK_ARGS[@]}" "${URL[$t]}" >"$out" 2>&1 \
        || { echo "wrk against $t failed:" >&2; cat "$out" >&2; exit 1; }
    [[ -n "${PROC[$t]}" ]] && c1=$(cpu_ticks "${PROC[$t]}")
    echo "cpu_ticks $((c1 - c0))" >>"$out"
    log "round $r $t: $(grep -m1 'Requests/sec' "$out" | tr -s ' ')  p99 $(awk '$1 == "99%" {print $2}' "$out")"
}

log "measuring: ${ROUNDS} rounds x ${DURATION}s per target, wrk -t1 -c$CONNS$( ((TLS)) && echo ', proxies over TLS')$( ((CLOSE)) && echo ', a new connection per request')"
# Every target is warmed up before the first measured round, so that round 1 does not measure
# whichever target happens to run first after start-up (its round-1 ratio was an outlier,
# 0.74-0.77, in runs where the others were 0.87-1.09).
for t in direct rtcgate haproxy haproxy_fwd; do
    timeout $((WARMUP + 15)) wrk -t1 -c"$CONNS" -d"${WARMUP}s" "${WRK_ARGS[@]}" "${URL[$t]}" >/dev/null 2>&1 || true
done
for r in $(seq "$ROUNDS"); do
    run_wrk direct "$r"
    if ((r % 2)); then run_wrk rtcgate "$r"; run_wrk haproxy "$r"; run_wrk haproxy_fwd "$r"
    else run_wrk haproxy_fwd "$r"; run_wrk haproxy "$r"; run_wrk rtcgate "$r"; fi
done

# ---------------------------------------------------------------- 8. report
# rtcgate's own log at warn level first (empty in a clean run), so RESULT lines stay last.
if [[ -s "$TMP/rtcgate.log" ]]; then
    echo
    echo "rtcgate log: $(wc -l <"$TMP/rtcgate.log") lines; distinct messages (count, timestamp stripped):"
    sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^[0-9T:.-]*Z *//' "$TMP/rtcgate.log" | sort | uniq -c | sort -rn | head -n 10
fi
echo
((TLS)) && echo "mode: proxies terminate TLS (wrk -> https); direct = plain HTTP to one nginx backend" \
         || echo "mode: plain HTTP/1.1"
((CLOSE)) && echo "mode: a new client connection per request (Connection: close)" || echo "mode: keep-alive"
echo "wrk -t1 -c$CONNS -d${DURATION}s, $ROUNDS rounds, median shown; $(nproc) CPUs shared by wrk, proxy and nginx"
python3 - "$TMP" "$ROUNDS" "$(getconf CLK_TCK)" <<'PY'
import math, re, statistics, sys, glob
# Two-sided 95 % quantiles of Student's t, by degrees of freedom (index 0 unused).
T95 = [0, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
       2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060,
       2.056, 2.052, 2.048, 2.045, 2.042]
tmp, rounds, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
unit = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}

def parse(path):
    txt = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", txt).group(1))
    m = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m)\s*$", txt, re.M)
    p99 = float(m.group(1)) * unit[m.group(2)]
    reqs = int(re.search(r"(\d+) requests in", txt).group(1))
    non2xx = int((re.search(r"Non-2xx or 3xx responses:\s+(\d+)", txt) or [0, 0])[1])
    s = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", txt)
    sock = sum(map(int, s.groups())) if s else 0
    cpu = int(re.search(r"cpu_ticks (-?\d+)", txt).group(1))
    return rps, p99, reqs, non2xx, sock, cpu

res = {}
for t in ("direct", "rtcgate", "haproxy", "haproxy_fwd"):
    rows = [parse(f"{tmp}/wrk.{t}.{r}.txt") for r in range(1, rounds + 1)]
    reqs = sum(x[2] for x in rows)
    cpu_ticks = sum(x[5] for x in rows)
    res[t] = dict(
        rps=statistics.median(x[0] for x in rows),
        p99=statistics.median(x[1] for x in rows),
        all_rps=[x[0] for x in rows],
        all_p99=[x[1] for x in rows],
        non2xx=sum(x[3] for x in rows),
        sock=sum(x[4] for x in rows),
        cpu_us=(cpu_ticks / hz * 1e6 / reqs) if (t != "direct" and reqs) else None,
    )

print()
print(f"{'target':<11} {'req/s (median)':>15} {'p99 ms (median)':>16} {'non-2xx':>8} {'sock err':>9} {'proxy CPU us/req':>17}   per-round req/s")
for t, v in res.items():
    cpu = f"{v['cpu_us']:.1f}" if v["cpu_us"] is not None else "-"
    per = " ".join(f"{x:.0f}" for x in v["all_rps"])
    print(f"{t:<11} {v['rps']:>15.0f} {v['p99']:>16.2f} {v['non2xx']:>8} {v['sock']:>9} {cpu:>17}   {per}")
r, h, d = res["rtcgate"], res["haproxy"], res["direct"]
ratio_rps, ratio_p99 = r["rps"] / h["rps"], r["p99"] / h["p99"]
print()
print(f"rtcgate/haproxy: throughput x{ratio_rps:.3f}, p99 x{ratio_p99:.3f}")
print(f"rtcgate/haproxy_fwd (same forwarding headers): throughput x{r['rps'] / res['haproxy_fwd']['rps']:.3f}, "
      f"p99 x{r['p99'] / res['haproxy_fwd']['p99']:.3f}")
print(f"rtcgate/direct:  throughput x{r['rps'] / d['rps']:.3f}; haproxy/direct: throughput x{h['rps'] / d['rps']:.3f}")
per_round = [a / b for a, b in zip(r["all_rps"], h["all_rps"])]
per_round_p99 = [a / b for a, b in zip(r["all_p99"], h["all_p99"])]
ahead = sum(x > 1 for x in per_round)
print("rtcgate/haproxy per round: throughput " + " ".join(f"x{x:.3f}" for x in per_round)
      + f"; rtcgate ahead in {ahead} of {rounds}")
# Whether the difference is more than the machine's noise: the geometric mean of the per-round
# ratios with its 95 % confidence interval (Student's t over the rounds' log ratios). "tie" means
# the interval holds 1; more rounds narrow it.
def interval(ratios):
    """Geometric mean of per-round ratios and its 95 % interval."""
    logs = [math.log(x) for x in ratios]
    gm = math.exp(statistics.mean(logs))
    half = (T95[rounds - 1] if rounds - 1 < len(T95) else 1.96) * statistics.stdev(logs) / math.sqrt(rounds) \
        if rounds >= 2 else math.inf
    return gm, gm * math.exp(-half), gm * math.exp(half)
gm, lo, hi = interval(per_round)
verdict = "ahead" if lo > 1 else "behind" if hi < 1 else "tie"
# The same for p99 latency, where lower is better.
gm99, lo99, hi99 = interval(per_round_p99)
verdict99 = "lower" if hi99 < 1 else "higher" if lo99 > 1 else "tie"
print(f"rtcgate/haproxy p99, geometric mean of the rounds: x{gm99:.3f}, "
      f"95% interval x{lo99:.3f}..x{hi99:.3f}: {verdict99}")
print(f"rtcgate/haproxy throughput, geometric mean of the rounds: x{gm:.3f}, "
      f"95% interval x{lo:.3f}..x{hi:.3f}: {verdict}")
print(f"RESULT rtcgate_rps={r['rps']:.0f} haproxy_rps={h['rps']:.0f} ratio_rps={ratio_rps:.3f} "
      f"rtcgate_p99_ms={r['p99']:.2f} haproxy_p99_ms={h['p99']:.2f} ratio_p99={ratio_p99:.3f}")
print(f"RESULT2 direct_rps={d['rps']:.0f} direct_p99_ms={d['p99']:.2f} rtcgate_vs_direct={r['rps'] / d['rps']:.3f} "
      f"haproxy_vs_direct={h['rps'] / d['rps']:.3f} errors_rtcgate={r['non2xx'] + r['sock']} "
      f"errors_haproxy={h['non2xx'] + h['sock']} errors_direct={d['non2xx'] + d['sock']}")
f = res["haproxy_fwd"]
print(f"RESULT3 haproxy_fwd_rps={f['rps']:.0f} haproxy_fwd_p99_ms={f['p99']:.2f} "
      f"ratio_rps_vs_fwd={r['rps'] / f['rps']:.3f} ratio_p99_vs_fwd={r['p99'] / f['p99']:.3f} "
      f"errors_haproxy_fwd={f['non2xx'] + f['sock']}")
print(f"RESULT4 per_round_ratio_rps_median={statistics.median(per_round):.3f} "
      f"per_round_ratio_p99_median={statistics.median(per_round_p99):.3f} "
      f"rounds_rtcgate_ahead={ahead} rounds={rounds}")
print(f"RESULT5 per_round_ratio_rps_geomean={gm:.3f} ci95_low={lo:.3f} ci95_high={hi:.3f} "
      f"verdict={verdict} rounds={rounds}")
print(f"RESULT6 per_round_ratio_p99_geomean={gm99:.3f} ci95_low={lo99:.3f} ci95_high={hi99:.3f} "
      f"verdict={verdict99} rounds={rounds}")
PY

# Shared by the load scripts in benches/: a temporary folder whose processes are all stopped on
# exit (normal, error or Ctrl-C), and free loopback ports. Source it; do not run it.

# bench_tmp PREFIX: sets TMP to a new folder and PIDS=(); on exit, every pid appended to PIDS is
# sent TERM, then KILL after three seconds, and TMP is removed.
bench_tmp() {
    TMP="$(mktemp -d "/tmp/$1.XXXXXX")"
    PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 30); do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
    exit "$rc"
}

# free_ports N: prints N distinct free ports on 127.0.0.1 (all bound at once, then released).
free_ports() {
    python3 -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))
for s in ss: s.close()' "$1"
}

# stop_pid PID: TERM, up to 10 s to exit, then KILL; waits for it (a child of this shell).
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# wait_url URL [CURL_ARGS...]: waits, up to ten seconds, until URL answers; fails if it never does.
wait_url() {
    local url=$1 i
    shift
    for i in $(seq 100); do
        curl -s -m 1 -o /dev/null "$@" "$url" && return 0
        sleep 0.1
    done
    echo "nothing answered at $url" >&2
    return 1
}

# need_commands CMD:PACKAGE ...: installs, with Debian's apt-get, the packages whose command is
# missing (trying the local package lists first, and updating them only if that fails).
need_commands() {
    local pair need=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
    done
    ((${#need[@]})) || return 0
    printf '[bench] installing: %s\n' "${need[*]}" >&2
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    fi
}

# rtcgate_binary: sets BIN to the rtcgate to measure: $RTCGATE_BIN as given (an older build, for
# a before/after in one session), else the release build, built first.
rtcgate_binary() {
    BIN="${RTCGATE_BIN:-$REPO/target/release/rtcgate}"
    if [[ -z "${RTCGATE_BIN:-}" ]]; then
        printf '[bench] cargo build --release\n' >&2
        cargo build --release
    fi
    [[ -x "$BIN" ]] || { echo "no binary at $BIN" >&2; exit 1; }
}

# bench_tool NAME [PREBUILT]: sets TOOL to the harness = false bench binary NAME (benches/NAME.rs):
# PREBUILT when given (a path, to skip the build), else built with `cargo bench --no-run`. Exits
# unless it is that tool: run bare, it prints one line starting with "NAME:".
bench_tool() {
    local name=$1
    TOOL="${2:-}"
    if [[ -z "$TOOL" ]]; then
        printf '[bench] cargo bench --no-run --bench %s\n' "$name" >&2
        TOOL=$(cargo bench --bench "$name" --no-run --message-format=json | python3 -c '
import json, sys
exe = ""
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        exe = m["executable"]
print(exe)' "$name")
    fi
    [[ -x "$TOOL" ]] || { echo "no $name bench executable (is the [[bench]] stanza in Cargo.toml?)" >&2; exit 1; }
    # A libtest-harness build (no `harness = false`) would print test output instead of this note.
    "$TOOL" | grep -q "^$name:" || { echo "$TOOL is not the harness = false $name tool" >&2; exit 1; }
}

#!/usr/bin/env python3
"""inflight_upgrades.py - what a WebSocket upgrade costs the proxy while its backend has not answered.

In a reconnect storm thousands of upgrades wait at once for their backends' 101. This starts
rtcgate (release build, plain listener, one backend, health checks an hour apart), then HAProxy
2.6 (Debian's, if installed: mode http, nbthread 2, no checks) as the reference, each in front of
a "backend" that accepts and reads but never answers, sends N upgrade requests and holds them,
and reads the proxy's resident memory (/proc/PID/status VmRSS):

  first wave   RSS before and while N upgrades wait: the cost per waiting upgrade, from a
               fresh process (allocator arenas included);
  release      all N closed: how much of that memory the process keeps;
  second wave  N more: the growth over the kept memory.

With HEAD_ONLY=1 each client sends the request head without its last CRLF, so the proxy holds
N client connections still reading a head, and nothing reaches the backend.

    python3 benches/inflight_upgrades.py          # N = 2000
    HEAD_ONLY=1 python3 benches/inflight_upgrades.py   # heads that never end (a slow client)
    python3 benches/inflight_upgrades.py 5000
    RTCGATE_BIN=/path/to/rtcgate python3 benches/inflight_upgrades.py

One RESULT line per proxy: RESULT proxy=.. n=.. kib_per_waiting_upgrade=.. kept_kib=..
second_wave_kib_per_upgrade=.., then RATIO kib_per_waiting_upgrade=.. (rtcgate/haproxy). Ports are chosen free at run time on 127.0.0.1; rtcgate is
stopped and its directory removed on exit. Needs 2 N + 100 file descriptors (the soft limit is
raised to the hard one).
"""

import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
HEAD_ONLY = os.environ.get("HEAD_ONLY", "") not in ("", "0")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("RTCGATE_BIN") or os.path.join(REPO, "target/release/rtcgate")
UPGRADE = (
    "GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode()


def log(msg):
    print(f"[inflight] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rtcgate(tmp, port, backend_port):
    config = os.path.join(tmp, "rtcgate.toml")
    with open(config, "w") as f:
        f.write(
            f"""[listen]
http = "127.0.0.1:{port}"

[sticky]
keys = ["k1:bench-secret-0123456789abcdef0123456789"]

[limits]
max_connections = 19000

[pools.media]
hosts = ["*"]
max_sessions = 100000

[pools.media.health]
interval = "1h"

[[pools.media.backends]]
id = "b1"
address = "127.0.0.1:{backend_port}"
"""
        )
    return [BIN, "--config", config], {**os.environ, "RUST_LOG": "warn"}


def haproxy(tmp, port, backend_port):
    config = os.path.join(tmp, "haproxy.cfg")
    with open(config, "w") as f:
        f.write(
            f"""global
    nbthread 2
    maxconn {N + 1000}

defaults
    mode http
    maxconn {N + 1000}
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h

frontend fe
    bind 127.0.0.1:{port}
    default_backend media

backend media
    server b1 127.0.0.1:{backend_port}
"""
        )
    return ["haproxy", "-db", "-f", config], dict(os.environ)


def measure(name, start_cmd):
    """One proxy: start it, two waves of N waiting upgrades, stop it. Returns its RESULT dict."""
    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(4096)
    backend.setblocking(False)
    port = free_port()
    tmp = tempfile.TemporaryDirectory(prefix=f"{name}-inflight-")
    cmd, env = start_cmd(tmp.name, port, backend.getsockname()[1])
    logfile = open(os.path.join(tmp.name, f"{name}.log"), "w")
    proc = subprocess.Popen(cmd, stdout=logfile, stderr=logfile, env=env)
    held = []  # the backend's side of every connection rtcgate opened

    def rss_kib():
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def take_backend_conns():
        while True:
            try:
                c, _ = backend.accept()
            except BlockingIOError:
                return
            c.setblocking(False)
            held.append(c)

    def wave():
        clients = []
        for i in range(N):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(UPGRADE[:-2] if HEAD_ONLY else UPGRADE)
            clients.append(c)
            if i % 100 == 0:
                take_backend_conns()
        want = 0 if HEAD_ONLY else N
        deadline = time.monotonic() + 20
        while len(held) < want and time.monotonic() < deadline:
            take_backend_conns()
            time.sleep(0.01)
        if len(held) < want:
            raise RuntimeError(f"only {len(held)} of {N} upgrades reached the backend")
        time.sleep(0.5)  # let the last requests settle in rtcgate
        return clients

    def release(clients):
        for c in clients + held:
            c.close()
        held.clear()

    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{name} did not start")
                time.sleep(0.05)
        start = rss_kib()
        clients = wave()
        first = rss_kib()
        log(f"{name} first wave: {N} upgrades waiting, RSS {start} -> {first} KiB")
        release(clients)
        time.sleep(1.5)
        kept = rss_kib()
        log(f"{name} released: RSS {kept} KiB")
        clients = wave()
        second = rss_kib()
        log(f"{name} second wave: RSS {kept} -> {second} KiB")
        release(clients)
        result = {
            "kib_per_waiting_upgrade": (first - start) / N,
            "kept_kib": kept - start,
            "second_wave_kib_per_upgrade": (second - kept) / N,
        }
        print(
            f"RESULT proxy={name} n={N} head_only={int(HEAD_ONLY)} rss_start_kib={start} rss_first_wave_kib={first} "
            + " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in result.items()),
            flush=True,
        )
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logfile.close()
        backend.close()
        tmp.cleanup()


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < 2 * N + 100:
        sys.exit(f"the fd limit {hard} is too low for {N} upgrades (needs 2N + 100)")
    if not os.path.exists(BIN):
        log(f"building {BIN}")
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    r = measure("rtcgate", rtcgate)
    if shutil.which("haproxy") is None:
        log("haproxy not installed (apt-get install haproxy): no reference")
        return
    h = measure("haproxy", haproxy)
    print(
        f"RATIO kib_per_waiting_upgrade={r['kib_per_waiting_upgrade'] / h['kib_per_waiting_upgrade']:.3f} "
        "(rtcgate/haproxy)"
    )


if __name__ == "__main__":
    main()

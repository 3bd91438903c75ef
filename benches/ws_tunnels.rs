//! ws_tunnels: open N WebSocket tunnels through a proxy, hold them, and measure the proxy.
//!
//! Reports the proxy's resident memory per tunnel (VmRSS of `--pid` after opening and holding
//! the tunnels, minus VmRSS before, divided by the tunnels that opened), echo round-trip p50/p99
//! of the first message on each tunnel and of a second one sent after the idle hold, and the
//! failures (connect/handshake errors, wrong echoes, timeouts).
//!
//!     cargo bench --bench ws_tunnels -- --url ws://127.0.0.1:PORT/ws --tunnels 9000 --pid PID
//!
//! With no `--url` it prints a usage note and exits 0, so a bare `cargo bench` stays quick.
//! The client opens one socket per tunnel: raise `ulimit -n` first (benches/ws_tunnels.sh does).
//! The last line is machine-readable:
//! `RESULT label=.. tunnels=.. ok=.. failed=.. rss_before_kib=.. rss_after_kib=.. kib_per_tunnel=..
//!  rtt_p50_ms=.. rtt_p99_ms=.. (second pass) rtt1_p50_ms=.. rtt1_p99_ms=.. (first pass) ...`

use std::future::Future;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

mod tools;
use tools::{nofile_soft_limit, ws_config};

type Ws = WebSocketStream<TcpStream>;

/// Open N WebSocket tunnels through a proxy, hold them, and measure the proxy's memory per tunnel.
#[derive(Parser, Debug)]
#[command(name = "ws_tunnels")]
struct Args {
    /// ws:// URL to open the tunnels to (the proxy's listener). Without it: usage note, exit 0.
    #[arg(long)]
    url: Option<String>,
    /// How many tunnels to open and hold at once.
    #[arg(long, default_value_t = 1000)]
    tunnels: usize,
    /// PID of the proxy process whose VmRSS is read before and after.
    #[arg(long)]
    pid: Option<u32>,
    /// Handshakes (and, in the second pass, echoes) in flight at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Seconds to hold all tunnels idle before reading RSS and sending the second message.
    #[arg(long, default_value_t = 2)]
    hold_secs: u64,
    /// Name printed in the result lines.
    #[arg(long, default_value = "proxy")]
    label: String,
    /// Timeout for each single step (connect, handshake, send, echo, close), seconds.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
    /// Bound on the whole run, seconds; past it the tool reports what it has and exits 1.
    #[arg(long, default_value_t = 900)]
    max_secs: u64,
    /// Size of each message, bytes.
    #[arg(long, default_value_t = 32)]
    msg_bytes: usize,
    /// Passed by `cargo bench` to harness = false benches; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Default, Debug, Clone, Copy)]
struct Failures {
    connect: usize,
    handshake: usize,
    wrong_echo: usize,
    closed: usize,
    timeout: usize,
}

impl Failures {
    fn total(&self) -> usize {
        self.connect + self.handshake + self.wrong_echo + self.closed + self.timeout
    }
    fn add(&mut self, f: Fail) {
        match f {
            Fail::Connect => self.connect += 1,
            Fail::Handshake => self.handshake += 1,
            Fail::WrongEcho => self.wrong_echo += 1,
            Fail::Closed => self.closed += 1,
            Fail::Timeout => self.timeout += 1,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fail {
    Connect,
    Handshake,
    WrongEcho,
    Closed,
    Timeout,
}

fn main() {
    let args = Args::parse();
    let Some(url) = args.url.clone() else {
        println!(
            "ws_tunnels: load tool, not run without --url (e.g. `cargo bench --bench ws_tunnels -- \
             --url ws://127.0.0.1:PORT/ws --tunnels 9000 --pid PID`; see benches/ws_tunnels.sh)"
        );
        return;
    };
    if args.tunnels == 0 || args.concurrency == 0 {
        eprintln!("--tunnels and --concurrency must be at least 1");
        std::process::exit(2);
    }
    if let Some(soft) = nofile_soft_limit() {
        if soft < args.tunnels as u64 + 64 {
            eprintln!(
                "warning: RLIMIT_NOFILE soft limit is {soft}, below --tunnels {} + 64: raise it \
                 with `ulimit -n` first, or expect connect failures",
                args.tunnels
            );
        }
    }
    // One thread: leaves the other core(s) to the proxy and backends, and keeps the client's own
    // scheduling out of the way of the measurement as far as it can.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async {
        match tokio::time::timeout(Duration::from_secs(args.max_secs), run(&args, &url)).await {
            Ok(code) => code,
            Err(_) => {
                eprintln!(
                    "ws_tunnels: whole run exceeded --max-secs {}",
                    args.max_secs
                );
                println!(
                    "RESULT label={} tunnels={} ok=0 failed={} error=run_timeout",
                    args.label, args.tunnels, args.tunnels
                );
                1
            }
        }
    });
    // Dropping the runtime would close any leftover sockets; exit explicitly either way.
    drop(rt);
    std::process::exit(code);
}

async fn run(args: &Args, url: &str) -> i32 {
    let step = Duration::from_secs(args.timeout_secs);
    let n = args.tunnels;
    let (host, port) = match host_port(url) {
        Some(hp) => hp,
        None => {
            eprintln!("--url must look like ws://HOST:PORT/PATH, got {url}");
            return 2;
        }
    };
    let addr = format!("{host}:{port}");

    let rss_before = args.pid.and_then(vm_rss_kib);
    let t_open = Instant::now();

    // Pass 1: open every tunnel with bounded concurrency, one echo each.
    let opened: Vec<Result<(Ws, Duration), Fail>> = futures_util::stream::iter(0..n)
        .map(|i| open_one(i, url, &addr, step, args.msg_bytes))
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let open_secs = t_open.elapsed().as_secs_f64();
    let mut fail1 = Failures::default();
    let mut rtt1 = Vec::with_capacity(n);
    let mut tunnels = Vec::with_capacity(n);
    for r in opened {
        match r {
            Ok((ws, rtt)) => {
                rtt1.push(rtt);
                tunnels.push(ws);
            }
            Err(f) => fail1.add(f),
        }
    }
    let rss_open = args.pid.and_then(vm_rss_kib);
    eprintln!(
        "[{}] opened {}/{} tunnels in {:.1}s ({} failed), holding {}s",
        args.label,
        tunnels.len(),
        n,
        open_secs,
        fail1.total(),
        args.hold_secs
    );

    // Hold them all idle, then read the proxy's RSS.
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let rss_after = args.pid.and_then(vm_rss_kib);
    let rss_anon_after = args.pid.and_then(|p| status_kib(p, "RssAnon:"));

    // Pass 2: idle-then-active: a second message on every held tunnel.
    let held = tunnels.len();
    let second: Vec<(Option<Ws>, Result<Duration, Fail>)> =
        futures_util::stream::iter(tunnels.into_iter().enumerate())
            .map(|(i, ws)| echo_again(ws, i, step, args.msg_bytes))
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
    let mut fail2 = Failures::default();
    let mut rtt2 = Vec::with_capacity(held);
    let mut alive = Vec::with_capacity(held);
    for (ws, r) in second {
        match r {
            Ok(rtt) => rtt2.push(rtt),
            Err(f) => fail2.add(f),
        }
        if let Some(ws) = ws {
            alive.push(ws);
        }
    }

    // Close every tunnel (close handshake, bounded), so the proxy is left clean for the next run.
    let close_timeout = step.min(Duration::from_secs(5));
    let closed_clean: usize = futures_util::stream::iter(alive)
        .map(|ws| close_one(ws, close_timeout))
        .buffer_unordered(args.concurrency.max(500))
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;

    // Report.
    let ok = rtt2.len();
    let failed = n - ok;
    let mut all = fail1;
    all.connect += fail2.connect;
    all.handshake += fail2.handshake;
    all.wrong_echo += fail2.wrong_echo;
    all.closed += fail2.closed;
    all.timeout += fail2.timeout;
    debug_assert_eq!(all.total(), failed);
    let (p50_1, p99_1) = (pct_ms(&mut rtt1, 50.0), pct_ms(&mut rtt1, 99.0));
    let (p50_2, p99_2) = (pct_ms(&mut rtt2, 50.0), pct_ms(&mut rtt2, 99.0));
    let opened_n = held.max(1) as f64;
    let per_tunnel = match (rss_before, rss_after) {
        (Some(b), Some(a)) if held > 0 => Some((a as f64 - b as f64) / opened_n),
        _ => None,
    };
    let f = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let f1 = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));

    println!(
        "{:<9} tunnels {:>6}  ok {:>6}  failed {:>5} (connect {} handshake {} wrong-echo {} \
         closed {} timeout {})  RSS {} -> {} KiB (after open {})  {} KiB/tunnel  \
         RTT1 p50/p99 {}/{} ms  RTT2 p50/p99 {}/{} ms  open {:.1}s  clean closes {}",
        args.label,
        n,
        ok,
        failed,
        all.connect,
        all.handshake,
        all.wrong_echo,
        all.closed,
        all.timeout,
        f(rss_before),
        f(rss_after),
        f(rss_open),
        f1(per_tunnel),
        f1(p50_1),
        f1(p99_1),
        f1(p50_2),
        f1(p99_2),
        open_secs,
        closed_clean,
    );
    println!(
        "RESULT label={} tunnels={} ok={} failed={} rss_before_kib={} rss_after_kib={} \
         kib_per_tunnel={} rtt_p50_ms={} rtt_p99_ms={} rtt1_p50_ms={} rtt1_p99_ms={} \
         held={} rss_anon_after_kib={} fail_connect={} fail_handshake={} fail_wrong_echo={} \
         fail_closed={} fail_timeout={} open_secs={:.2}",
        args.label,
        n,
        ok,
        failed,
        f(rss_before),
        f(rss_after),
        f1(per_tunnel),
        f1(p50_2),
        f1(p99_2),
        f1(p50_1),
        f1(p99_1),
        held,
        f(rss_anon_after),
        all.connect,
        all.handshake,
        all.wrong_echo,
        all.closed,
        all.timeout,
        open_secs,
    );
    if failed == 0 {
        0
    } else {
        1
    }
}

/// Connect, handshake, send one message and await its echo. Returns the tunnel and the RTT.
async fn open_one(
    i: usize,
    url: &str,
    addr: &str,
    step: Duration,
    msg_bytes: usize,
) -> Result<(Ws, Duration), Fail> {
    let tcp = bounded(step, TcpStream::connect(addr))
        .await?
        .map_err(|_| Fail::Connect)?;
    let _ = tcp.set_nodelay(true);
    let req = url.into_client_request().map_err(|_| Fail::Handshake)?;
    let (mut ws, _resp) = bounded(
        step,
        tokio_tungstenite::client_async_with_config(req, tcp, Some(ws_config())),
    )
    .await?
    .map_err(|_| Fail::Handshake)?;
    let rtt = echo(&mut ws, &payload(i, 1, msg_bytes), step).await?;
    Ok((ws, rtt))
}

/// The second, idle-then-active echo. Keeps the tunnel (for closing) unless it broke.
async fn echo_again(
    mut ws: Ws,
    i: usize,
    step: Duration,
    msg_bytes: usize,
) -> (Option<Ws>, Result<Duration, Fail>) {
    match echo(&mut ws, &payload(i, 2, msg_bytes), step).await {
        Ok(rtt) => (Some(ws), Ok(rtt)),
        Err(f @ (Fail::WrongEcho | Fail::Timeout)) => (Some(ws), Err(f)),
        Err(f) => (None, Err(f)),
    }
}

/// Sends `text`, waits for the echo (skipping pings/pongs), checks it, returns the round trip.
async fn echo(ws: &mut Ws, text: &str, step: Duration) -> Result<Duration, Fail> {
    let t0 = Instant::now();
    bounded(step, ws.send(Message::text(text.to_owned())))
        .await?
        .map_err(|_| Fail::Closed)?;
    let deadline = t0 + step;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match bounded(left, ws.next()).await? {
            Some(Ok(Message::Text(t))) => {
                return if t.as_str() == text {
                    Ok(t0.elapsed())
                } else {
                    Err(Fail::WrongEcho)
                };
            }
            Some(Ok(Message::Binary(_))) => return Err(Fail::WrongEcho),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(Fail::Closed),
        }
    }
}

/// Close handshake: send Close, then read until the peer's Close / EOF. True when clean.
async fn close_one(mut ws: Ws, t: Duration) -> bool {
    let r = tokio::time::timeout(t, async {
        if ws.close(None).await.is_err() {
            return false;
        }
        loop {
            match ws.next().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) => return true, // e.g. ConnectionClosed after the Close exchange
                None => return true,
            }
        }
    })
    .await;
    matches!(r, Ok(true))
}

async fn bounded<T>(t: Duration, f: impl Future<Output = T>) -> Result<T, Fail> {
    tokio::time::timeout(t, f).await.map_err(|_| Fail::Timeout)
}

/// A message unique to (tunnel, pass), padded to `len` bytes.
fn payload(i: usize, pass: u8, len: usize) -> String {
    let mut s = format!("t{i}-p{pass}-");
    while s.len() < len {
        s.push(char::from(b'a' + (s.len() % 26) as u8));
    }
    s
}

/// Nearest-rank percentile in milliseconds; None when there are no samples.
fn pct_ms(v: &mut [Duration], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, v.len()) - 1;
    Some(v[idx].as_secs_f64() * 1e3)
}

fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("ws://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (authority, 80),
    };
    Some((
        host.trim_matches(|c| c == '[' || c == ']').to_string(),
        port,
    ))
}

/// VmRSS of `pid` in KiB, from /proc/PID/status.
fn vm_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

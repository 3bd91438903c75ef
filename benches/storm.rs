//! storm: a reconnect storm of `wss://` clients through a TLS proxy (issue 23), and what it costs.
//!
//! **Open**: N clients connect as fast as `--concurrency` handshakes in flight allow: TCP, TLS,
//! WebSocket upgrade, one echo. Every client has a `ClientConfig` of its own with its own session
//! store (`Resumption::in_memory_sessions(4)`), so it keeps the TLS 1.3 tickets the server sends
//! it (they come after the handshake, ahead of the 101, and are read with it) and can resume with
//! them later, as a browser tab does. Per client: the backend (`X-Backend-Id` of the 101), the
//! connect time (TCP connect start to echo received) and the handshake kind (full or resumed).
//!
//! **Kill** (`--kill-pid`): once all are open, the backend `--kill-id` (pid `--kill-pid`) gets
//! SIGKILL. Its clients see their WebSocket end (a close frame or EOF) and reconnect at once,
//! all together, through the same proxy, with their own session store (so TLS resumes if the proxy
//! takes the ticket) and the sticky cookie the 101 set (as a browser does; `--no-cookie`: none).
//! A failed reconnect is tried again `--retries` times after `--retry-pause-ms`; a client not back
//! within `--client-deadline-secs` of the kill counts as failed. Measured: kill to all of them
//! back (echoed again), how many resumed, their connect times, failures and retries. Then every
//! other client echoes once more (a proxy must not have broken them) and all close.
//!
//! **Cross** (`--cross-addr`): instead of the kill, all N close cleanly and reconnect through
//! another instance: how many resume there (instances sharing `[tls] ticket_keys`: all).
//!
//! The proxy's CPU (`--pid`: utime + stime of that process and its children, for nginx's
//! workers) is read before and after each phase.
//!
//!     cargo bench --bench storm -- --addr 127.0.0.1:PORT --ca cert.pem --clients 9000 \
//!         --pid PROXY_PID --kill-pid BACKEND_PID --kill-id b1
//!
//! With no `--addr` it prints a one-line usage note starting with `storm:` and exits 0, so a bare
//! `cargo bench` stays quick. One socket per client: raise `ulimit -n` first (benches/storm.sh
//! does). One thread unless `--threads` says more. The last line is
//! machine-readable: `RESULT label=.. open_secs=.. open_p99_ms=.. full=.. resumed=.. reconnects=..
//! back_secs=.. reconnect_resumed=.. reconnect_p99_ms=.. failed=.. retries=..
//! cpu_us_per_tunnel_opened=.. ...` (or, with `--cross-addr`, `cross_resumed=..`).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use http::header::{COOKIE, SET_COOKIE};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, ProtocolVersion, RootCertStore};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

mod tools;
use tools::{nofile_soft_limit, ws_config};

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// A reconnect storm of wss:// clients through a TLS proxy: open N, kill a backend, time the return.
#[derive(Parser, Debug)]
#[command(name = "storm")]
struct Args {
    /// The proxy's TLS listener, IP:PORT. Without it: usage note, exit 0.
    #[arg(long)]
    addr: Option<String>,
    /// TLS server name (SNI, certificate check) and Host of the requests.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Path of the WebSocket upgrade.
    #[arg(long, default_value = "/ws")]
    path: String,
    /// PEM file of the certificate(s) to trust (the proxy's self-signed one).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// How many clients.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Handshakes in flight at once while opening (reconnects after the kill are not bounded).
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// PID of the proxy: its CPU time, with its child processes', is read around each phase.
    #[arg(long)]
    pid: Option<u32>,
    /// PID of the backend to SIGKILL once every client is open.
    #[arg(long)]
    kill_pid: Option<u32>,
    /// `X-Backend-Id` of that backend: its clients are the ones that reconnect.
    #[arg(long, default_value = "b1")]
    kill_id: String,
    /// Instead of a kill: close all clients, then reconnect all of them through this IP:PORT.
    #[arg(long)]
    cross_addr: Option<String>,
    /// Reconnect without the sticky cookie of the first 101 (default: send it, as a browser does).
    #[arg(long)]
    no_cookie: bool,
    /// Further attempts for a reconnect that failed.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Pause before each further attempt, ms.
    #[arg(long, default_value_t = 100)]
    retry_pause_ms: u64,
    /// A client not open (or not back after the kill) within this many seconds has failed.
    #[arg(long, default_value_t = 30)]
    client_deadline_secs: u64,
    /// Timeout of each single step (connect, TLS, upgrade, echo, close), seconds.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
    /// Bound on the whole run, seconds; past it the tool reports a run timeout and exits 1.
    #[arg(long, default_value_t = 900)]
    max_secs: u64,
    /// Name printed in the result lines.
    #[arg(long, default_value = "proxy")]
    label: String,
    /// The tool's threads. One leaves the other core to the proxy and the backends, but its
    /// own TLS work (two ECDSA verifies and an X25519 exchange per full handshake) then sets
    /// the pace; two let the machine's whole CPU set it, the proxy's share included.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Passed by `cargo bench` to harness = false benches; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fail {
    Connect,
    Tls,
    Upgrade,
    Echo,
    Timeout,
}

impl Fail {
    fn name(self) -> &'static str {
        match self {
            Fail::Connect => "connect",
            Fail::Tls => "tls",
            Fail::Upgrade => "upgrade",
            Fail::Echo => "echo",
            Fail::Timeout => "timeout",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Full,
    /// A full handshake with a HelloRetryRequest round trip first.
    FullHrr,
    Resumed,
}

/// One client, as it carries on from connection to connection: its TLS config (and so its own
/// session store) and its sticky cookie.
struct Client {
    cfg: Arc<ClientConfig>,
    cookie: Option<HeaderValue>,
}

/// One connection that opened and echoed.
struct Opened {
    ws: Ws,
    backend: String,
    kind: Kind,
    tls13: bool,
    /// TCP connect start to echo received.
    took: Duration,
}

struct Ctx {
    addr: String,
    url: String,
    server_name: ServerName<'static>,
    step: Duration,
    send_cookie: bool,
}

fn main() {
    let args = Args::parse();
    let Some(addr) = args.addr.clone() else {
        println!(
            "storm: load tool, not run without --addr (e.g. `cargo bench --bench storm -- --addr \
             127.0.0.1:PORT --ca cert.pem --clients 9000 --pid PROXY_PID --kill-pid BACKEND_PID`; \
             see benches/storm.sh)"
        );
        return;
    };
    if args.clients == 0 || args.concurrency == 0 {
        eprintln!("--clients and --concurrency must be at least 1");
        std::process::exit(2);
    }
    let Some(ca) = args.ca.clone() else {
        eprintln!("--ca PEM is required (the certificate to trust)");
        std::process::exit(2);
    };
    if let Some(soft) = nofile_soft_limit() {
        if soft < args.clients as u64 + 64 {
            eprintln!(
                "warning: RLIMIT_NOFILE soft limit is {soft}, below --clients {} + 64: raise it \
                 with `ulimit -n` first, or expect connect failures",
                args.clients
            );
        }
    }
    let base = match client_config(&ca) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("storm: {e}");
            std::process::exit(2);
        }
    };
    let server_name = match ServerName::try_from(args.server_name.clone()) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("storm: bad --server-name: {e}");
            std::process::exit(2);
        }
    };
    let port = addr.rsplit_once(':').map_or("443", |(_, p)| p).to_string();
    let ctx = Arc::new(Ctx {
        url: format!("wss://{}:{port}{}", args.server_name, args.path),
        addr,
        server_name,
        step: Duration::from_secs(args.timeout_secs),
        send_cookie: !args.no_cookie,
    });
    let rt = match args.threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .expect("tokio runtime");
    let code = rt.block_on(async {
        let run = run(&args, ctx, Arc::new(base));
        match tokio::time::timeout(Duration::from_secs(args.max_secs), run).await {
            Ok(code) => code,
            Err(_) => {
                eprintln!("storm: whole run exceeded --max-secs {}", args.max_secs);
                println!(
                    "RESULT label={} clients={} failed={} error=run_timeout",
                    args.label, args.clients, args.clients
                );
                1
            }
        }
    });
    drop(rt);
    std::process::exit(code);
}

/// The config every client starts from: the given certificates trusted, HTTP/1.1 by ALPN (the
/// WebSocket upgrade is HTTP/1.1), ring, TLS 1.2 and 1.3.
fn client_config(ca: &std::path::Path) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A client of its own: the base config with a session store nobody else shares.
fn new_client(base: &ClientConfig) -> Client {
    let mut cfg = base.clone();
    cfg.resumption = Resumption::in_memory_sessions(4);
    Client {
        cfg: Arc::new(cfg),
        cookie: None,
    }
}

async fn run(args: &Args, ctx: Arc<Ctx>, base: Arc<ClientConfig>) -> i32 {
    let n = args.clients;
    let deadline = Duration::from_secs(args.client_deadline_secs);
    let ticks = clock_ticks();
    let tool_cpu0 = proc_cpu_secs(std::process::id(), ticks);

    // ------------------------------------------------------------ open
    let cpu0 = args.pid.and_then(|p| tree_cpu_secs(p, ticks));
    let t_open = Instant::now();
    let opened: Vec<(Client, Result<Opened, Fail>)> = spawn_all(0..n, args.concurrency, |i| {
        let (ctx, base) = (ctx.clone(), base.clone());
        async move {
            let mut client = new_client(&base);
            let r = bounded(deadline, open_one(&ctx, &mut client, i, 1))
                .await
                .and_then(|r| r);
            (client, r)
        }
    })
    .await;
    let open_secs = t_open.elapsed().as_secs_f64();
    let cpu1 = args.pid.and_then(|p| tree_cpu_secs(p, ticks));

    let mut open_fail: BTreeMap<Fail, usize> = BTreeMap::new();
    let mut took = Vec::with_capacity(n);
    let (mut full, mut hrr, mut resumed, mut tls13) = (0usize, 0usize, 0usize, 0usize);
    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    let mut live: Vec<(Client, Opened)> = Vec::with_capacity(n);
    for (client, r) in opened {
        match r {
            Ok(o) => {
                took.push(o.took);
                match o.kind {
                    Kind::Full => full += 1,
                    Kind::FullHrr => hrr += 1,
                    Kind::Resumed => resumed += 1,
                }
                tls13 += usize::from(o.tls13);
                *per_backend.entry(o.backend.clone()).or_default() += 1;
                live.push((client, o));
            }
            Err(f) => *open_fail.entry(f).or_default() += 1,
        }
    }
    let open_failed: usize = open_fail.values().sum();
    eprintln!(
        "[{}] opened {}/{} in {:.2}s ({} failed: {}); full {} (+{} after HelloRetryRequest), \
         resumed {}, TLS 1.3 {}",
        args.label,
        live.len(),
        n,
        open_secs,
        open_failed,
        fails(&open_fail),
        full,
        hrr,
        resumed,
        tls13
    );
    for (b, c) in &per_backend {
        eprintln!("READY backend={b} count={c}");
    }
    let opened_n = live.len();
    let cpu_open = cpu1.zip(cpu0).map(|(a, b)| a - b);
    let mut out = format!(
        "RESULT label={} clients={n} opened={opened_n} open_failed={open_failed} \
         open_secs={open_secs:.3} hs_per_s={:.0} open_p50_ms={} open_p99_ms={} full={} \
         resumed={resumed} hrr={hrr} tls13={tls13} full_hs_per_s={:.0} backends={} \
         cpu_open_s={} cpu_us_per_tunnel_opened={} open_fails={}",
        args.label,
        opened_n as f64 / open_secs,
        f2(pct_ms(&mut took, 50.0)),
        f2(pct_ms(&mut took, 99.0)),
        full + hrr,
        (full + hrr) as f64 / open_secs,
        kv_list(&per_backend),
        f2(cpu_open),
        f1(cpu_open
            .filter(|_| opened_n > 0)
            .map(|c| c * 1e6 / opened_n as f64)),
        fails(&open_fail),
    );
    let mut code = i32::from(open_failed > 0);

    if let Some(cross) = &args.cross_addr {
        // ------------------------------------------------------------ cross
        let clients = close_all(live, args.concurrency, ctx.step).await;
        let ctx_b = Arc::new(Ctx {
            addr: cross.clone(),
            url: format!(
                "wss://{}:{}{}",
                args.server_name,
                cross.rsplit_once(':').map_or("443", |(_, p)| p),
                args.path
            ),
            server_name: ctx.server_name.clone(),
            step: ctx.step,
            send_cookie: ctx.send_cookie,
        });
        let t = Instant::now();
        let again: Vec<(Client, Result<Opened, Fail>)> = spawn_all(
            clients.into_iter().enumerate(),
            args.concurrency,
            |(i, mut client)| {
                let ctx_b = ctx_b.clone();
                async move {
                    let r = bounded(deadline, open_one(&ctx_b, &mut client, i, 2))
                        .await
                        .and_then(|r| r);
                    (client, r)
                }
            },
        )
        .await;
        let secs = t.elapsed().as_secs_f64();
        let mut fail: BTreeMap<Fail, usize> = BTreeMap::new();
        let (mut ok, mut res) = (0usize, 0usize);
        let mut took = Vec::new();
        let mut back = Vec::new();
        for (client, r) in again {
            match r {
                Ok(o) => {
                    ok += 1;
                    res += usize::from(o.kind == Kind::Resumed);
                    took.push(o.took);
                    back.push((client, o));
                }
                Err(f) => *fail.entry(f).or_default() += 1,
            }
        }
        let failed: usize = fail.values().sum();
        eprintln!(
            "[{}] through {cross}: {ok}/{opened_n} back in {secs:.2}s, {res} resumed, {failed} \
             failed ({})",
            args.label,
            fails(&fail)
        );
        close_all(back, args.concurrency, ctx.step).await;
        out += &format!(
            " cross_of={opened_n} cross_ok={ok} cross_resumed={res} cross_full={} \
             cross_failed={failed} cross_secs={secs:.3} cross_p99_ms={} cross_fails={}",
            ok - res,
            f2(pct_ms(&mut took, 99.0)),
            fails(&fail)
        );
        code |= i32::from(failed > 0);
    } else if let Some(kill_pid) = args.kill_pid {
        // ------------------------------------------------------------ kill
        let (victims, others): (Vec<_>, Vec<_>) = live
            .into_iter()
            .partition(|(_, o)| o.backend == args.kill_id);
        let reconnects = victims.len();
        let pause = Duration::from_millis(args.retry_pause_ms);
        let retries_max = args.retries;
        let cpu_k0 = args.pid.and_then(|p| tree_cpu_secs(p, ticks));
        let t_kill = Instant::now();
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &kill_pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !killed {
            eprintln!("[{}] kill -KILL {kill_pid} failed", args.label);
        }
        // Every client of the killed backend at once: no bound.
        let storm: Vec<Back> =
            spawn_all(victims.into_iter().enumerate(), 0, |(i, (client, o))| {
                let ctx = ctx.clone();
                async move {
                    come_back(&ctx, client, o.ws, i, t_kill, deadline, retries_max, pause).await
                }
            })
            .await;
        let cpu_k1 = args.pid.and_then(|p| tree_cpu_secs(p, ticks));
        let mut back = Vec::with_capacity(reconnects);
        let mut fail: BTreeMap<Fail, usize> = BTreeMap::new();
        let (mut retries, mut res, mut full_again) = (0u32, 0usize, 0usize);
        let (mut seen, mut took, mut since_kill) = (Vec::new(), Vec::new(), Vec::new());
        let mut moved: BTreeMap<String, usize> = BTreeMap::new();
        let mut last_back = Duration::ZERO;
        for b in storm {
            retries += b.retries;
            if let Some(s) = b.seen {
                seen.push(s);
            }
            match b.result {
                Ok((client, o)) => {
                    let at = b.back.unwrap_or_default();
                    last_back = last_back.max(at);
                    since_kill.push(at);
                    took.push(o.took);
                    if o.kind == Kind::Resumed {
                        res += 1;
                    } else {
                        full_again += 1;
                    }
                    *moved.entry(o.backend.clone()).or_default() += 1;
                    back.push((client, o));
                }
                Err(f) => *fail.entry(f).or_default() += 1,
            }
        }
        let failed: usize = fail.values().sum();
        let back_secs = last_back.as_secs_f64();
        eprintln!(
            "[{}] killed {} ({kill_pid}): {}/{reconnects} back within {back_secs:.2}s, {res} \
             resumed, {failed} failed ({}), {retries} retries, to {}",
            args.label,
            args.kill_id,
            back.len(),
            fails(&fail),
            kv_list(&moved)
        );
        // Every client that was not on the killed backend must still echo.
        let others_n = others.len();
        let checked: Vec<(Client, Opened, bool)> =
            spawn_all(others, args.concurrency, |(client, mut o)| {
                let step = ctx.step;
                async move {
                    let ok = echo(&mut o.ws, "still-there", step).await.is_ok();
                    (client, o, ok)
                }
            })
            .await;
        let others_broken = checked.iter().filter(|(_, _, ok)| !ok).count();
        let mut rest: Vec<(Client, Opened)> = checked.into_iter().map(|(c, o, _)| (c, o)).collect();
        rest.extend(back);
        close_all(rest, args.concurrency, ctx.step).await;
        let cpu_back = cpu_k1.zip(cpu_k0).map(|(a, b)| a - b);
        let come_back_n = since_kill.len();
        out += &format!(
            " reconnects={reconnects} back={come_back_n} failed={failed} retries={retries} \
             back_secs={back_secs:.3} back_p50_ms={} back_p99_ms={} seen_max_ms={} \
             reconnect_resumed={res} reconnect_full={full_again} reconnect_p50_ms={} \
             reconnect_p99_ms={} resumed_hs_per_s={} moved_to={} cpu_reconnect_s={} \
             cpu_us_per_reconnect={} others={others_n} others_broken={others_broken} \
             reconnect_fails={}",
            f2(pct_ms(&mut since_kill, 50.0)),
            f2(pct_ms(&mut since_kill, 99.0)),
            f2(pct_ms(&mut seen, 100.0)),
            f2(pct_ms(&mut took, 50.0)),
            f2(pct_ms(&mut took, 99.0)),
            if back_secs > 0.0 {
                format!("{:.0}", res as f64 / back_secs)
            } else {
                "-".into()
            },
            kv_list(&moved),
            f2(cpu_back),
            f1(cpu_back
                .filter(|_| come_back_n > 0)
                .map(|c| c * 1e6 / come_back_n as f64)),
            fails(&fail),
        );
        code |= i32::from(failed > 0 || others_broken > 0 || !killed);
    } else {
        close_all(live, args.concurrency, ctx.step).await;
    }

    let tool_cpu = proc_cpu_secs(std::process::id(), ticks)
        .zip(tool_cpu0)
        .map(|(a, b)| a - b);
    out += &format!(" tool_cpu_s={}", f2(tool_cpu));
    println!("{out}");
    code
}

/// Runs `f` on every item, each as a task of its own (so each gets the runtime's fair share and
/// its own cooperative budget), at most `limit` at once (0: no bound). Results in item order.
/// All of them as one task (`buffer_unordered`, as ws_tunnels does) starved some connections
/// for up to a second while the thread was busy with TLS: open p99 came out at about the whole
/// open phase, through any proxy.
async fn spawn_all<I, F, Fut, T>(items: I, limit: usize, f: F) -> Vec<T>
where
    I: IntoIterator,
    F: Fn(I::Item) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let permits = if limit == 0 {
        Semaphore::MAX_PERMITS
    } else {
        limit
    };
    let sem = Arc::new(Semaphore::new(permits));
    let mut tasks = Vec::new();
    for item in items {
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let fut = f(item);
        tasks.push(tokio::spawn(async move {
            let r = fut.await;
            drop(permit);
            r
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("client task"));
    }
    out
}

/// What became of one client of the killed backend.
struct Back {
    /// Kill to the end of its WebSocket seen.
    seen: Option<Duration>,
    result: Result<(Client, Opened), Fail>,
    /// Kill to its echo on the new connection.
    back: Option<Duration>,
    retries: u32,
}

/// Waits for the WebSocket to end (the backend was killed), then reconnects at once, with the
/// same client (session store and cookie); a failed attempt is retried after `pause`.
#[allow(clippy::too_many_arguments)]
async fn come_back(
    ctx: &Ctx,
    mut client: Client,
    mut ws: Ws,
    i: usize,
    t_kill: Instant,
    deadline: Duration,
    retries: u32,
    pause: Duration,
) -> Back {
    let until = tokio::time::Instant::from_std(t_kill + deadline);
    let ended = tokio::time::timeout_at(until, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    drop(ws);
    if ended.is_err() {
        return Back {
            seen: None,
            result: Err(Fail::Timeout),
            back: None,
            retries: 0,
        };
    }
    let seen = Some(t_kill.elapsed());
    let mut tried = 0;
    let last = loop {
        let attempt = tokio::time::timeout_at(until, open_one(ctx, &mut client, i, 2)).await;
        let f = match attempt {
            Ok(Ok(o)) => {
                return Back {
                    seen,
                    result: Ok((client, o)),
                    back: Some(t_kill.elapsed()),
                    retries: tried,
                }
            }
            Ok(Err(f)) => f,
            Err(_) => break Fail::Timeout,
        };
        if tried == retries || tokio::time::Instant::now() + pause >= until {
            break f;
        }
        tokio::time::sleep(pause).await;
        tried += 1;
    };
    Back {
        seen,
        result: Err(last),
        back: None,
        retries: tried,
    }
}

/// TCP connect, TLS, WebSocket upgrade (with the client's cookie, if it has one and cookies are
/// sent), one echo. Keeps the cookie the 101 sets.
async fn open_one(ctx: &Ctx, client: &mut Client, i: usize, pass: u8) -> Result<Opened, Fail> {
    let t0 = Instant::now();
    let tcp = bounded(ctx.step, TcpStream::connect(&ctx.addr))
        .await?
        .map_err(|_| Fail::Connect)?;
    let _ = tcp.set_nodelay(true);
    let tls = bounded(
        ctx.step,
        TlsConnector::from(client.cfg.clone()).connect(ctx.server_name.clone(), tcp),
    )
    .await?
    .map_err(|_| Fail::Tls)?;
    let conn = tls.get_ref().1;
    let kind = match conn.handshake_kind() {
        Some(HandshakeKind::Resumed) => Kind::Resumed,
        Some(HandshakeKind::FullWithHelloRetryRequest) => Kind::FullHrr,
        _ => Kind::Full,
    };
    let tls13 = conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
    let mut req = ctx
        .url
        .as_str()
        .into_client_request()
        .map_err(|_| Fail::Upgrade)?;
    if ctx.send_cookie {
        if let Some(c) = &client.cookie {
            req.headers_mut().insert(COOKIE, c.clone());
        }
    }
    let (mut ws, resp) = bounded(
        ctx.step,
        tokio_tungstenite::client_async_with_config(req, tls, Some(ws_config())),
    )
    .await?
    .map_err(|_| Fail::Upgrade)?;
    let backend = resp
        .headers()
        .get("x-backend-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    // The cookie's name=value, without its attributes: what a browser sends back.
    if let Some(v) = resp.headers().get(SET_COOKIE).and_then(|v| v.to_str().ok()) {
        let pair = v.split(';').next().unwrap_or("").trim();
        if let Ok(h) = HeaderValue::from_str(pair) {
            client.cookie = Some(h);
        }
    }
    echo(&mut ws, &format!("c{i}-p{pass}"), ctx.step).await?;
    Ok(Opened {
        ws,
        backend,
        kind,
        tls13,
        took: t0.elapsed(),
    })
}

/// Sends `text`, waits for the echo (skipping pings/pongs), checks it.
async fn echo(ws: &mut Ws, text: &str, step: Duration) -> Result<(), Fail> {
    let t0 = Instant::now();
    bounded(step, ws.send(Message::text(text.to_owned())))
        .await?
        .map_err(|_| Fail::Echo)?;
    let deadline = t0 + step;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match bounded(left, ws.next()).await? {
            Some(Ok(Message::Text(t))) if t.as_str() == text => return Ok(()),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            _ => return Err(Fail::Echo),
        }
    }
}

/// Closes every connection (close handshake, bounded), keeps the clients.
async fn close_all(
    conns: Vec<(Client, Opened)>,
    concurrency: usize,
    step: Duration,
) -> Vec<Client> {
    let t = step.min(Duration::from_secs(5));
    spawn_all(conns, concurrency.max(500), |(client, o)| async move {
        close_one(o.ws, t).await;
        client
    })
    .await
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
                Some(Err(_)) | None => return true,
            }
        }
    })
    .await;
    matches!(r, Ok(true))
}

async fn bounded<T>(t: Duration, f: impl Future<Output = T>) -> Result<T, Fail> {
    tokio::time::timeout(t, f).await.map_err(|_| Fail::Timeout)
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

fn f1(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn f2(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

/// `b1:3000,b2:3000` (or `-` when empty): one key=value field of a RESULT line.
fn kv_list(m: &BTreeMap<String, usize>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn fails(m: &BTreeMap<Fail, usize>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{}:{v}", k.name()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; 100 if that fails).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of one process (all its threads), seconds, and its parent's pid.
fn proc_stat(pid: u32, ticks: f64) -> Option<(f64, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself hold spaces and parentheses.
    let rest: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let utime: f64 = rest.get(11)?.parse().ok()?;
    let stime: f64 = rest.get(12)?.parse().ok()?;
    Some(((utime + stime) / ticks, ppid))
}

fn proc_cpu_secs(pid: u32, ticks: f64) -> Option<f64> {
    proc_stat(pid, ticks).map(|(c, _)| c)
}

/// CPU seconds of `pid` and of its children (nginx's workers; HAProxy and rtcgate have none).
fn tree_cpu_secs(pid: u32, ticks: f64) -> Option<f64> {
    let mut total = proc_cpu_secs(pid, ticks)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((cpu, ppid)) = proc_stat(child, ticks) {
            if ppid == pid {
                total += cpu;
            }
        }
    }
    Some(total)
}

//! Several instances behave as one: three rtcgate processes with the same config and keys
//! behind HAProxy in TCP mode (round robin, PROXY protocol v2, the way a cloud network load
//! balancer or a Kubernetes Service spreads connections), in front of three backends that
//! report their own sessions and rooms in their health answers.
//!
//! - 200 rooms × 5 participants join through whichever instance HAProxy picks, while rooms
//!   empty and fill again: every room is on exactly one backend.
//! - More users than the pool holds then arrive: no backend goes over `max_sessions` by more
//!   than the sessions opened on it within one health interval (the bound the load reports
//!   give; without them each instance would fill each backend on its own).
//! - A cookie issued by one instance is honoured by the others.
//! - A rolling restart (SIGTERM, `shutdown_delay`, grace, start) under load loses no request.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROOMS: usize = 200;
const PER_ROOM: usize = 5;
const MAX_SESSIONS: u32 = 500;
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
const HEALTH_TIMEOUT: Duration = Duration::from_millis(250);

/// `n` distinct ports free now, for processes that must come back on them after a restart:
/// all bound at once, then released, so no two are the same (a port released and chosen again
/// would put two listeners on it: HAProxy and rtcgate both use SO_REUSEPORT).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Instance {
    http: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Instance {
    fn start(&mut self) {
        let log = std::fs::File::create(&self.log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_rtcgate"))
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start rtcgate");
        self.proc = Some(Proc(child));
    }

    async fn get(&self, path: &str) -> Option<Reply> {
        let tcp = TcpStream::connect(self.admin).await.ok()?;
        let mut c = HttpClient::h1(tcp, self.admin.to_string(), "http").await;
        Some(c.get(path).await)
    }

    async fn wait_ready(&self) {
        eventually("the instance is ready", async || {
            self.get("/ready")
                .await
                .is_some_and(|r| r.status == StatusCode::OK)
        })
        .await;
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.get("/metrics").await.expect("metrics").text();
        sample(&text, name, labels).unwrap_or(0.0)
    }

    /// SIGTERM, and the exit, which must be clean.
    async fn stop(&mut self) {
        let mut proc = self.proc.take().expect("running");
        let pid = proc.0.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.expect("kill").success());
        let deadline = Instant::now() + STEP;
        let status = loop {
            if let Some(s) = proc.0.try_wait().expect("wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "rtcgate did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "exit {status}: {}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn instance_config(http: u16, admin: u16, backends: &[Arc<rtcgate::demo::DemoBackend>]) -> String {
    let mut s = format!(
        r#"
[listen]
http = "127.0.0.1:{http}"
admin = "127.0.0.1:{admin}"
proxy_protocol = ["http"]

[sticky]
keys = ["f1:fleet-secret-0123456789abcdef0123456789"]

[limits]
shutdown_delay = "2s"
shutdown_grace = "5s"

[pools.media]
hosts = ["*"]
room_param = "room"
room_balance_factor = 0
max_sessions = {MAX_SESSIONS}

[pools.media.health]
interval = "{}ms"
timeout = "{}ms"
rise = 1
fall = 2
"#,
        HEALTH_INTERVAL.as_millis(),
        HEALTH_TIMEOUT.as_millis()
    );
    for b in backends {
        s.push_str(&format!(
            "\n[[pools.media.backends]]\nid = \"{}\"\naddress = \"{}\"\n",
            b.id, b.addr
        ));
    }
    s
}

fn haproxy_config(front: u16, instances: &[Instance]) -> String {
    let mut s = format!(
        r#"
global
    maxconn 8000

defaults
    mode tcp
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout check 500ms
    retries 3
    option redispatch 1

frontend fe
    bind 127.0.0.1:{front}
    default_backend fleet

backend fleet
    balance roundrobin
    option httpchk GET /ready
    default-server inter 200ms fall 1 rise 1
"#
    );
    for (i, inst) in instances.iter().enumerate() {
        s.push_str(&format!(
            "    server r{i} {} send-proxy-v2 check port {}\n",
            inst.http,
            inst.admin.port()
        ));
    }
    s
}

/// One WebSocket user through the balancer.
async fn join(front: SocketAddr, path: &str) -> WsReply<TcpStream> {
    let io = within("connect", TcpStream::connect(front))
        .await
        .expect("connect");
    ws_handshake(io, &format!("ws://localhost:{}{path}", front.port()), &[]).await
}

/// One request on a connection of its own, as a client that cannot be told to retry would
/// send it; true when answered 200.
async fn one_request(front: SocketAddr) -> bool {
    let attempt = async {
        let mut tcp = TcpStream::connect(front)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if answer.starts_with(b"HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!(
                "answer: {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(120)])
            ))
        }
    };
    match tokio::time::timeout(STEP, attempt).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            eprintln!("FLEET a request failed: {e}");
            false
        }
        Err(_) => {
            eprintln!("FLEET a request failed: no answer within {STEP:?}");
            false
        }
    }
}

/// Every participant of `rooms` leaves.
async fn empty(held: &Mutex<HashMap<usize, Vec<WsReply<TcpStream>>>>, rooms: &[usize]) {
    let leaving: Vec<_> = {
        let mut held = held.lock().expect("held");
        rooms
            .iter()
            .flat_map(|r| held.remove(r).unwrap_or_default())
            .collect()
    };
    for mut r in leaving {
        let _ = r.ws().close(None).await;
    }
}

/// A small deterministic shuffle (xorshift), so that a room's participants arrive apart.
fn shuffled(n: usize, mut seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    v
}

/// The most sessions opened on a backend within any window of `w`.
fn most_opened_within(opened: &[Instant], w: Duration) -> usize {
    let mut most = 0;
    let mut start = 0;
    for (end, t) in opened.iter().enumerate() {
        while *t - opened[start] > w {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

#[tokio::test]
async fn three_instances_behind_haproxy_agree_on_rooms_caps_and_cookies_and_restart_without_loss() {
    if !installed("haproxy") {
        required_in_ci("haproxy");
        return;
    }
    let _solo = solo().await;
    let backends = spawn_backends(3).await;
    for b in &backends {
        b.report_load(true);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = free_ports(7);
    let mut instances: Vec<Instance> = (0..3)
        .map(|i| {
            let (http, admin) = (ports[2 * i], ports[2 * i + 1]);
            let config = dir.path().join(format!("proxy-{i}.toml"));
            std::fs::write(&config, instance_config(http, admin, &backends)).expect("config");
            Instance {
                http: SocketAddr::from(([127, 0, 0, 1], http)),
                admin: SocketAddr::from(([127, 0, 0, 1], admin)),
                config,
                log: dir.path().join(format!("rtcgate-{i}.log")),
                proc: None,
            }
        })
        .collect();
    for inst in &mut instances {
        inst.start();
    }
    for inst in &instances {
        inst.wait_ready().await;
    }
    let front = SocketAddr::from(([127, 0, 0, 1], ports[6]));
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(front.port(), &instances)).expect("haproxy.cfg");
    let haproxy_log = dir.path().join("haproxy.log");
    let _haproxy = Proc(
        Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&haproxy_log).expect("log"))
            .spawn()
            .expect("start haproxy"),
    );
    eventually("HAProxy routes to the fleet", async || {
        one_request(front).await
    })
    .await;
    // The backends' first reports are in before the users arrive.
    for inst in &instances {
        eventually("every backend reported", async || {
            let status = inst.get("/status").await.expect("status").json();
            status["pools"][0]["backends"]
                .as_array()
                .is_some_and(|b| b.len() == 3 && b.iter().all(|b| b["report"]["sessions"] == 0))
        })
        .await;
    }

    // Rooms: 200 × 5 through whichever instance; the first 40 rooms empty half-way and fill
    // again at the end.
    let joined: Arc<Mutex<HashMap<(usize, usize), String>>> = Arc::default();
    let held: Arc<Mutex<HashMap<usize, Vec<WsReply<TcpStream>>>>> = Arc::default();
    let order = shuffled(ROOMS * PER_ROOM, 0x5eed);
    let join_all = |participants: Vec<usize>, epoch: usize| {
        let (joined, held) = (joined.clone(), held.clone());
        async move {
            let gate = Arc::new(tokio::sync::Semaphore::new(32));
            let mut tasks = Vec::new();
            for p in participants {
                let (joined, held, gate) = (joined.clone(), held.clone(), gate.clone());
                tasks.push(tokio::spawn(async move {
                    let _slot = gate.acquire().await.expect("gate");
                    let room = p / PER_ROOM;
                    let mut r = join(front, &format!("/ws?room=room-{room}")).await;
                    assert_eq!(r.status, StatusCode::SWITCHING_PROTOCOLS, "room {room}");
                    echo(r.ws(), "hello").await;
                    joined
                        .lock()
                        .expect("joined")
                        .insert((epoch, p), r.backend());
                    held.lock().expect("held").entry(room).or_default().push(r);
                }));
            }
            for t in tasks {
                t.await.expect("participant");
            }
        }
    };
    let (first, second) = order.split_at(order.len() / 2);
    within("the first half joins", join_all(first.to_vec(), 0)).await;
    let emptied: Vec<usize> = (0..40).collect();
    empty(&held, &emptied).await;
    within("the second half joins", join_all(second.to_vec(), 0)).await;
    empty(&held, &emptied).await;
    let again: Vec<usize> = (0..40 * PER_ROOM).collect();
    within("the emptied rooms fill again", join_all(again, 1)).await;
    let mut rooms: HashMap<(usize, usize), HashSet<String>> = HashMap::new();
    for ((epoch, p), backend) in joined.lock().expect("joined").iter() {
        rooms
            .entry((*epoch, p / PER_ROOM))
            .or_default()
            .insert(backend.clone());
    }
    let split: Vec<_> = rooms.iter().filter(|(_, b)| b.len() != 1).collect();
    assert!(
        split.is_empty(),
        "{} of {} rooms split over backends: {split:?}",
        split.len(),
        rooms.len()
    );
    let live: u32 = backends.iter().map(|b| b.live_load(|l| l.sessions)).sum();
    assert_eq!(live as usize, ROOMS * PER_ROOM, "every participant is in");

    // Caps: 1,000 more users than the 500 places left, at 100 a second.
    for b in &backends {
        b.live_load(|l| assert!(l.peak <= MAX_SESSIONS, "{}: {}", b.id, l.peak));
    }
    let opened_before: Vec<usize> = backends
        .iter()
        .map(|b| b.live_load(|l| l.opened.len()))
        .collect();
    let flood: Arc<Mutex<Vec<WsReply<TcpStream>>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        tick.tick().await;
        let (flood, refused) = (flood.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let r = join(front, "/ws").await;
            match r.status {
                StatusCode::SWITCHING_PROTOCOLS => flood.lock().expect("flood").push(r),
                StatusCode::SERVICE_UNAVAILABLE => {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                other => panic!("a user got {other}"),
            }
        }));
    }
    for t in tasks {
        within("a user", t).await.expect("user");
    }
    // A report is at most an interval (with its 10 % jitter) and a check's time old.
    let window = HEALTH_INTERVAL.mul_f64(1.1) + HEALTH_TIMEOUT;
    let mut overshoots = Vec::new();
    for (b, before) in backends.iter().zip(&opened_before) {
        let (peak, bound) =
            b.live_load(|l| (l.peak, most_opened_within(&l.opened[*before..], window)));
        let over = peak.saturating_sub(MAX_SESSIONS);
        eprintln!(
            "FLEET backend={} peak={peak} max_sessions={MAX_SESSIONS} over={over} opened_within_one_interval={bound}",
            b.id
        );
        assert!(
            over as usize <= bound,
            "{}: {peak} sessions, {over} over the cap; at most {bound} opened within {window:?}",
            b.id
        );
        overshoots.push(over);
    }
    let admitted = flood.lock().expect("flood").len();
    eprintln!(
        "FLEET flood admitted={admitted} refused={}",
        refused.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(
        admitted < 1000,
        "the pool's 1,500 places were not all taken: {admitted} of 1,000 admitted"
    );
    // Each instance learns of the full pool from the backends' reports; then the backends stop
    // reporting, so the last reports, which count the flood, stay.
    for inst in &instances {
        eventually("every instance has the full pool's reports", async || {
            let status = inst.get("/status").await.expect("status").json();
            backends.iter().all(|b| {
                let live = b.live_load(|l| l.sessions);
                status["pools"][0]["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|v| v["id"] == b.id.as_str() && v["report"]["sessions"] == live)
            })
        })
        .await;
    }
    for b in &backends {
        b.report_load(false);
    }
    drop(std::mem::take(&mut *flood.lock().expect("flood")));
    drop(std::mem::take(&mut *held.lock().expect("held")));
    eventually("the users are gone", async || {
        backends.iter().all(|b| b.live_load(|l| l.sessions) == 0)
    })
    .await;
    for inst in &instances {
        eventually("every instance saw its tunnels end", async || {
            let status = inst.get("/status").await.expect("status").json();
            status["pools"][0]["backends"]
                .as_array()
                .is_some_and(|b| b.iter().all(|b| b["sessions"] == 0))
        })
        .await;
    }
    // The backends' last reports still count the flood; the places its users freed are free
    // all the same: a new user is admitted without waiting for a new report.

    // Cookies: one issued through one instance leads to the same backend through the others.
    let hits_before: Vec<f64> = {
        let mut v = Vec::new();
        for inst in &instances {
            v.push(
                inst.metric("rtcgate_sticky_total", &[("outcome", "hit")])
                    .await,
            );
        }
        v
    };
    let tcp = TcpStream::connect(front).await.expect("connect");
    let mut c = HttpClient::h1(tcp, front.to_string(), "http").await;
    let first = c.get("/").await;
    let cookie = first
        .cookie()
        .unwrap_or_else(|| panic!("a cookie: {} {:?}", first.status, first.body));
    for b in &backends {
        b.report_load(true);
    }
    for _ in 0..9 {
        let tcp = TcpStream::connect(front).await.expect("connect");
        let mut c = HttpClient::h1(tcp, front.to_string(), "http").await;
        let r = c.get_with_cookie("/", Some(&cookie)).await;
        assert_eq!(
            r.backend(),
            first.backend(),
            "the pin holds on every instance"
        );
    }
    for (inst, before) in instances.iter().zip(&hits_before) {
        let after = inst
            .metric("rtcgate_sticky_total", &[("outcome", "hit")])
            .await;
        assert!(
            after > *before,
            "each instance honoured the cookie ({after} hits)"
        );
    }

    // A rolling restart under load: no request lost.
    let stop_load = tokio_util::sync::CancellationToken::new();
    let (ok, failed) = (
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (stop, ok, failed) = (stop_load.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let counter = if one_request(front).await {
                        &ok
                    } else {
                        &failed
                    };
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for inst in &mut instances {
        let served = inst
            .metric("rtcgate_client_connections_total", &[("listener", "http")])
            .await;
        assert!(served > 0.0);
        inst.stop().await;
        inst.start();
        inst.wait_ready().await;
        let inst = &*inst;
        eventually("HAProxy routes to the restarted instance", async || {
            inst.metric("rtcgate_client_connections_total", &[("listener", "http")])
                .await
                > 0.0
        })
        .await;
    }
    stop_load.cancel();
    for t in load {
        within("load stops", t).await.expect("load");
    }
    let (ok, failed) = (
        ok.load(std::sync::atomic::Ordering::Relaxed),
        failed.load(std::sync::atomic::Ordering::Relaxed),
    );
    eprintln!("FLEET rolling restart requests_ok={ok} failed={failed}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests lost in the rolling restart; HAProxy log: {}",
        ok + failed,
        std::fs::read_to_string(&haproxy_log).unwrap_or_default()
    );
    assert!(ok > 100, "the load ran: {ok}");
    eprintln!("FLEET overshoots={overshoots:?}");
}

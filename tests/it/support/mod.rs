//! Test support: demo backends and a proxy on `127.0.0.1:0`, and real HTTP/1.1, HTTP/2 and
//! WebSocket clients over TLS or plain TCP. The benches use it too (`#[path]`), for the same
//! proxy.
//!
//! | file | what |
//! |---|---|
//! | here | time bounds, backends, configs, certificates |
//! | `proxy.rs` | [`TestProxy`]: rtcgate in-process on fresh ports, and clients of it |
//! | `client.rs` | [`HttpClient`] and whole [`Reply`]s |
//! | `ws.rs` | WebSocket handshakes, echoes and closes |
//! | `janus.rs` | a pool of real Janus gateways, and a Janus API client |
//! | `coturn.rs` | a real TURN server with REST credentials, and an allocation check |
//! | `dns.rs` | a DNS server on 127.0.0.1 with a zone the test edits |
//! | `browser.rs` | headless Chromium with the flags a closed machine needs |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rtcgate::demo::DemoBackend;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;

mod browser;
mod client;
mod coturn;
mod dns;
mod janus;
mod proxy;
mod ws;

pub use browser::*;
pub use client::*;
pub use coturn::*;
pub use dns::*;
pub use janus::*;
pub use proxy::*;
pub use ws::*;

/// Upper bound for any single step of a test; a step that takes longer is a hang.
pub const STEP: Duration = Duration::from_secs(10);

/// Fails the test if `fut` takes longer than [`STEP`].
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {STEP:?}"))
}

/// A demo backend on a fresh loopback port.
pub async fn spawn_backend(id: &str) -> Arc<DemoBackend> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    DemoBackend::spawn(id, l)
}

/// `n` demo backends named `b1`, `b2`, ….
pub async fn spawn_backends(n: usize) -> Vec<Arc<DemoBackend>> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.push(spawn_backend(&format!("b{i}")).await);
    }
    v
}

/// A loopback address on which nothing listens (bound, then released).
pub async fn dead_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// A proxy.toml with one pool `media` over `backends`; `limits` lines go under `[limits]`,
/// `pool` lines under `[pools.media]`.
pub fn config_toml(backends: &[(&str, SocketAddr)], limits: &str, pool: &str) -> String {
    let mut s = format!(
        r#"
[listen]
https = "127.0.0.1:0"
http = "127.0.0.1:0"

[tls]
cert = "cert.pem"
key = "key.pem"

[sticky]
keys = ["t1:test-secret-0123456789abcdef0123456789"]

[limits]
{limits}

[pools.media]
hosts = ["*"]
{pool}
"#
    );
    for (id, addr) in backends {
        s.push_str(&format!(
            "\n[[pools.media.backends]]\nid = \"{id}\"\naddress = \"{addr}\"\n"
        ));
    }
    s
}

/// `config_toml` over running demo backends.
pub fn config_for(backends: &[Arc<DemoBackend>], limits: &str) -> String {
    config_with_pool(backends, limits, "")
}

/// `config_toml` over running demo backends, `pool` lines under `[pools.media]`.
pub fn config_with_pool(backends: &[Arc<DemoBackend>], limits: &str, pool: &str) -> String {
    let list: Vec<(&str, SocketAddr)> = backends.iter().map(|b| (b.id.as_str(), b.addr)).collect();
    config_toml(&list, limits, pool)
}

/// A test certificate for `localhost`, written into a temporary folder with the config.
pub struct TestCerts {
    pub dir: tempfile::TempDir,
    pub cert_der: CertificateDer<'static>,
}

pub fn make_certs() -> TestCerts {
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).expect("write cert");
    std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).expect("write key");
    TestCerts {
        cert_der: ck.cert.der().clone(),
        dir,
    }
}

/// Waits until `cond` holds, checking every 10 ms, for at most [`STEP`] in all (a check that
/// hangs counts against it too).
pub async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    let waiting = async {
        while !cond().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout_at(deadline, waiting).await.is_err() {
        panic!("{what}: not within {STEP:?}");
    }
}

/// For a test whose outside tool is missing: fails under `CI=true` (`.ci/run` installs every
/// tool the tests use), otherwise says what did not run.
pub fn required_in_ci(tool: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{tool} is not installed, and CI must run this check (.ci/run installs it)"
    );
    eprintln!("{tool} not installed: that part of the test did not run");
}

/// Held by the tests that take a core for a while (50 MB bodies) and by those that start a
/// browser or a WebRTC stack, so that a slow start never races a CPU-heavy test (issue 17: a
/// first Chromium start beside the other tests overran its bound). The rest run alongside.
pub async fn solo() -> tokio::sync::MutexGuard<'static, ()> {
    static SOLO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SOLO.lock().await
}

/// Asserts that `value` is a `Retry-After` rtcgate sends: 5 s, give or take 2 (jitter, so that
/// clients refused together do not return together).
pub fn assert_retry_after(value: Option<&str>) {
    let secs: u64 = value
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After {value:?}"));
    assert!((3..=7).contains(&secs), "Retry-After {secs}");
}

/// The value of the sample `name` whose labels include every pair of `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text parses");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// `GET /metrics` on the admin listener, checked to be Prometheus text.
pub async fn metrics(proxy: &TestProxy) -> String {
    let r = proxy.admin().await.get("/metrics").await;
    assert_eq!(r.status, http::StatusCode::OK);
    assert!(r
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/plain"));
    r.text()
}

/// A small HTTP/1.1 server on `listener` answering each request with `answer` (an auth service,
/// a page of another origin). Runs until its task is aborted.
pub async fn serve_fn<F>(listener: TcpListener, answer: F)
where
    F: Fn(
            http::Request<hyper::body::Incoming>,
        ) -> http::Response<http_body_util::Full<bytes::Bytes>>
        + Clone
        + Send
        + Sync
        + 'static,
{
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let resp = answer(req);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// A child process killed (and reaped) when the test ends, however it ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! The request path on loopback: one keep-alive HTTP/1.1 connection sending GETs to a demo
//! backend, directly and through rtcgate, in the same run. The ratio is the figure to watch;
//! absolute times move with the machine's load.
//!
//! `cargo bench --bench request_path`

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rtcgate::config::Config;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

// The tests' helpers: the same proxy the tests start. The bench uses a few of them.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/support/mod.rs"]
mod support;

/// A demo backend and rtcgate in front of it (plain listener): their addresses, and the proxy to
/// keep while it is measured.
async fn start() -> (SocketAddr, SocketAddr, support::TestProxy) {
    let backend = support::spawn_backend("b1").await;
    let proxy =
        support::spawn_proxy(&support::config_for(std::slice::from_ref(&backend), "")).await;
    (backend.addr, proxy.http, proxy)
}

async fn connect(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn get(sender: &mut SendRequest<Empty<Bytes>>) {
    sender.ready().await.expect("ready");
    let req = http::Request::get("/health")
        .header("host", "localhost")
        .body(Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert!(resp.status().is_success());
    resp.into_body().collect().await.expect("body");
}

fn request_path(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let (direct, proxied, _proxy) = rt.block_on(start());
    let mut group = c.benchmark_group("request_path");
    group.measurement_time(Duration::from_secs(5));
    for (name, addr) in [("direct", direct), ("proxied", proxied)] {
        let sender = Mutex::new(Some(rt.block_on(connect(addr))));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut s = sender.lock().expect("lock").take().expect("sender");
                let elapsed = rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        get(&mut s).await;
                    }
                    start.elapsed()
                });
                *sender.lock().expect("lock") = Some(s);
                elapsed
            })
        });
    }
    group.finish();
}

/// What metrics add to one proxied request: the response counter, the duration histogram, the
/// sticky outcome and the in-flight gauge's guard. Compare with `request_path/proxied`.
fn metrics_per_request(c: &mut Criterion) {
    let text = "[listen]\nhttp = \"127.0.0.1:0\"\n[sticky]\nkeys = [\"k1:bench-secret-0123456789abcdef0123456789\"]\n\
                [pools.media]\n[[pools.media.backends]]\nid = \"b1\"\naddress = \"127.0.0.1:9\"\n";
    let config = Config::parse(text, std::path::Path::new("bench.toml")).expect("config");
    let snap = rtcgate::state::snapshot::Snapshot::build(
        config,
        &rtcgate::state::registry::Registry::default(),
    )
    .expect("snapshot");
    let pool = &snap.pools[0];
    let backend = &pool.members[0].backend;
    c.bench_function("metrics_per_request", |b| {
        b.iter(|| {
            let _inflight = backend.start_request();
            pool.metrics.sticky(rtcgate::balance::Outcome::New);
            backend.metrics.answered(std::hint::black_box(200));
            pool.metrics.duration.observe(std::hint::black_box(0.0012));
        })
    });
}

criterion_group!(benches, request_path, metrics_per_request);
criterion_main!(benches);

//! Bulk data through a WebSocket tunnel against a direct connection, in the same run: 32 MiB of
//! 64 KiB binary messages sent to a demo backend's echo and read back, directly and through
//! rtcgate (plain HTTP listener, default settings). Prints MiB/s for both and the ratio.
//!
//! `cargo bench --bench tunnel_throughput`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

// The tests' helpers: the same proxy the tests start. The bench uses a few of them.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/support/mod.rs"]
mod support;

const MESSAGE: usize = 64 * 1024;
const TOTAL: usize = 32 * 1024 * 1024;
const ROUNDS: usize = 7;

/// A demo backend and rtcgate in front of it (plain listener): their addresses, and the proxy to
/// keep while it is measured.
async fn start() -> (SocketAddr, SocketAddr, support::TestProxy) {
    let backend = support::spawn_backend("b1").await;
    let proxy =
        support::spawn_proxy(&support::config_for(std::slice::from_ref(&backend), "")).await;
    (backend.addr, proxy.http, proxy)
}

/// MiB/s of echoed bulk data over one WebSocket to `addr`.
async fn echo_rate(addr: SocketAddr) -> f64 {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .expect("handshake");
    let (mut tx, mut rx) = ws.split();
    let payload = vec![0x5au8; MESSAGE];
    let n = TOTAL / MESSAGE;
    let started = Instant::now();
    let sending = tokio::spawn(async move {
        for _ in 0..n {
            tx.send(Message::binary(payload.clone()))
                .await
                .expect("send");
        }
        tx
    });
    let mut got = 0usize;
    while got < TOTAL {
        match tokio::time::timeout(Duration::from_secs(30), rx.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => got += b.len(),
            Ok(Some(Ok(_))) => {}
            other => panic!("echo stopped after {got} bytes: {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    let _ = sending.await;
    TOTAL as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (direct, proxied, _proxy) = start().await;
        let (mut d, mut p) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            d.push(echo_rate(direct).await);
            p.push(echo_rate(proxied).await);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (d, p) = (median(&mut d), median(&mut p));
        println!("tunnel_throughput: direct {d:.0} MiB/s, through rtcgate {p:.0} MiB/s");
        println!(
            "RESULT direct_mib_s={d:.1} proxied_mib_s={p:.1} ratio={:.3}",
            p / d
        );
    });
}

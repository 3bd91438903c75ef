//! The `rtcgate` binary end to end: it serves, reloads on SIGHUP, and exits 0 on SIGTERM after
//! its grace period.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;
use tokio::net::TcpStream;

/// The address a log line reports after `key=` (`addr=127.0.0.1:41234`).
fn addr_in(line: &str, key: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid} failed");
}

#[tokio::test]
async fn the_binary_serves_reloads_on_sighup_and_exits_zero_on_sigterm() {
    let backend = spawn_backend("b1").await;
    let certs = make_certs();
    let path = certs.dir.path().join("proxy.toml");
    let toml = config_toml(&[("b1", backend.addr)], "shutdown_grace = \"2s\"", "").replace(
        "http = \"127.0.0.1:0\"",
        "http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"",
    );
    std::fs::write(&path, toml).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rtcgate"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start rtcgate");
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    // Its log says where it listens (the config asks for port 0).
    let (mut http, mut admin) = (None, None);
    let deadline = Instant::now() + STEP;
    while http.is_none() || admin.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("rtcgate logged its listeners");
        if line.contains("admin listening") {
            admin = addr_in(&line, "addr=");
        } else if line.contains("listening") && line.contains("tls=false") {
            http = addr_in(&line, "addr=");
        }
    }
    let (http, admin) = (http.expect("http"), admin.expect("admin"));

    let connect = |a: SocketAddr| async move {
        let tcp = within("connect", TcpStream::connect(a))
            .await
            .expect("connect");
        HttpClient::h1(tcp, a.to_string(), "http").await
    };
    let r = connect(http).await.get("/headers").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.backend(), "b1");

    signal(pid, "-HUP");
    let reloaded = "rtcgate_config_reloads_total{result=\"ok\"} 1";
    let deadline = Instant::now() + STEP;
    loop {
        let metrics = connect(admin).await.get("/metrics").await.text();
        if metrics.contains(reloaded) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reload after SIGHUP:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    signal(pid, "-TERM");
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "rtcgate did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .expect("join");
    assert!(status.success(), "exit status {status}");
}

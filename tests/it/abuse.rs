//! Bad input from clients and backends gets a clear error and changes nothing else: Host is
//! checked as RFC 9112 asks, `Connection` cannot strip what the backend relies on, control
//! headers of features that are off do not reach backends, and a backend's conflicting framing
//! is repaired rather than passed on.

use crate::support::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `head` sent as is on a plain connection (the request line and headers, without the blank
/// line); the answer's bytes.
async fn raw(proxy: &TestProxy, head: &str) -> String {
    let mut s = TcpStream::connect(proxy.http).await.expect("connect");
    s.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut answer = Vec::new();
    within("answer", s.read_to_end(&mut answer))
        .await
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn two_hosts_and_invalid_hosts_are_refused_with_400() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let ok = raw(&proxy, "GET / HTTP/1.1\r\nHost: localhost").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    for head in [
        "GET / HTTP/1.1\r\nHost: localhost\r\nHost: evil.example",
        "GET / HTTP/1.1\r\nHost: evil@localhost",
        "GET / HTTP/1.1\r\nHost: a/b",
        "GET / HTTP/1.1\r\nHost: localhost:80x",
        "GET / HTTP/1.1\r\nHost: [::1",
        "GET http://user@localhost/ HTTP/1.1\r\nHost: localhost",
    ] {
        let answer = raw(&proxy, head).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{head:?} got {answer}");
    }
    // A space inside the value: hyper may refuse it before rtcgate sees it; either way, 400.
    let answer = raw(&proxy, "GET / HTTP/1.1\r\nHost: a b").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    for good in [
        "127.0.0.1:8080",
        "[::1]:8443",
        "rtc.example.com",
        "xn--bcher-kva.example",
    ] {
        let answer = raw(&proxy, &format!("GET / HTTP/1.1\r\nHost: {good}")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{good}: {answer}");
    }
    assert_eq!(
        backends[0].requests(),
        5,
        "no refused request reached the backend"
    );
}

#[tokio::test]
async fn an_h2_authority_with_userinfo_is_refused() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut c = proxy.h2().await;
    let port = proxy.https.port();
    let req = c
        .request("GET", "/")
        .uri(format!("https://evil@localhost:{port}/"))
        .body(empty())
        .expect("request");
    assert_eq!(c.fetch(req).await.status, StatusCode::BAD_REQUEST);
    let mut c = proxy.h2().await;
    assert_eq!(
        c.get("/").await.status,
        StatusCode::OK,
        "a plain authority is served"
    );
}

#[tokio::test]
async fn connection_cannot_strip_host_or_the_forwarding_headers() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let answer = raw(
        &proxy,
        "GET /headers HTTP/1.1\r\nHost: localhost\r\nConnection: host, x-forwarded-for, forwarded, x-custom\r\nX-Custom: dropped",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        body.contains("\"host\""),
        "Host reached the backend: {body}"
    );
    assert!(body.contains("x-forwarded-for"), "{body}");
    assert!(body.contains("\"forwarded\""), "{body}");
    assert!(
        !body.contains("x-custom"),
        "a name Connection lists is still hop-by-hop: {body}"
    );
}

#[tokio::test]
async fn control_headers_of_features_that_are_off_do_not_reach_the_backend() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_with_pool(&backends, "", "machine_param = \"\"")).await;
    let answer = raw(
        &proxy,
        "GET /headers HTTP/1.1\r\nHost: localhost\r\nX-Rtcgate-Room: r1\r\nX-Rtcgate-Machine: b1",
    )
    .await;
    let body = answer.to_ascii_lowercase();
    assert!(body.starts_with("http/1.1 200"), "{answer}");
    assert!(!body.contains("x-rtcgate-room"), "rooms are off: {body}");
    assert!(
        !body.contains("x-rtcgate-machine"),
        "machine pins are off: {body}"
    );

    let on = spawn_proxy(&config_with_pool(&backends, "", "room_param = \"room\"")).await;
    let answer = raw(
        &on,
        "GET /headers HTTP/1.1\r\nHost: localhost\r\nX-Rtcgate-Room: r1",
    )
    .await;
    assert!(
        answer.to_ascii_lowercase().contains("x-rtcgate-room"),
        "rooms on: kept"
    );
}

/// A backend answering every request with both framings (a 5-byte Content-Length, and a
/// chunked body of 11), and 200 to health checks.
async fn conflicting_backend() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                        seen.drain(..end + 4);
                        let answer: &[u8] = if head.starts_with("GET /health") {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
                        } else {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n"
                        };
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_backend_answer_with_both_framings_reaches_clients_whole() {
    let (addr, task) = conflicting_backend().await;
    let proxy = spawn_proxy(&config_toml(&[("odd", addr)], "", "")).await;
    let mut c = proxy.h1().await;
    let r = c.get("/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.text(),
        "hello world",
        "HTTP/1.1: framed by Transfer-Encoding"
    );
    assert_eq!(
        r.header("content-length"),
        None,
        "the conflicting length is dropped"
    );
    let mut c = proxy.h2().await;
    let r = c.get("/").await;
    assert_eq!(r.text(), "hello world", "HTTP/2: no stream error");
    let text = metrics(&proxy).await;
    let fixed = sample(
        &text,
        "rtcgate_conflicting_framing_total",
        &[("from", "backend")],
    );
    assert_eq!(fixed, Some(2.0), "counted");
    task.abort();
}

//! The front door: TLS with ALPN, forwarding, header hygiene, error mapping, limits, shutdown.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::*;
use http::{StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn h1_over_tls_reaches_a_backend() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut c = proxy.h1().await;
    let r = c.get("/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.version, Version::HTTP_11);
    assert!(
        ["b1", "b2", "b3"].contains(&r.backend()),
        "backend {:?}",
        r.backend()
    );
    assert!(r.text().contains(&format!(
        "You reached backend <span class=\"id\" id=\"backend\">{}",
        r.backend()
    )));
}

#[tokio::test]
async fn h2_over_tls_reaches_a_backend() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut c = proxy.h2().await;
    let r = c.get("/headers").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.version, Version::HTTP_2);
    // The backend speaks HTTP/1.1 and sees the client's authority as Host.
    let seen = r.json();
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(
        header_of(&seen, "host"),
        vec![format!("localhost:{}", proxy.https.port())]
    );
}

#[tokio::test]
async fn plain_http_listener_forwards_too() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut c = proxy.h1_plain().await;
    let r = c.get("/headers").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(header_of(&r.json(), "x-forwarded-proto"), vec!["http"]);
}

#[tokio::test]
async fn new_clients_are_shared_among_idle_backends() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut c = proxy.h1().await;
    let mut seen = HashSet::new();
    for _ in 0..9 {
        seen.insert(c.get("/").await.backend().to_string());
    }
    assert_eq!(
        seen.len(),
        3,
        "sequential requests should rotate over idle backends: {seen:?}"
    );
}

/// The values a backend saw for header `name`, from its `/headers` JSON.
fn header_of(seen: &serde_json::Value, name: &str) -> Vec<String> {
    seen["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|kv| kv[0] == name)
        .map(|kv| kv[1].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_ones_stripped() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut c = proxy.h1().await;
    let req = c
        .request("GET", "/headers?x=1")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "ftp")
        .header("x-end-to-end", "kept")
        .body(empty())
        .expect("request");
    let r = c.fetch(req).await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = r.json();
    let host = format!("localhost:{}", proxy.https.port());
    assert_eq!(seen["uri"], "/headers?x=1");
    assert_eq!(header_of(&seen, "host"), vec![host.clone()]);
    assert_eq!(
        header_of(&seen, "x-forwarded-for"),
        vec!["127.0.0.1"],
        "a client that is no trusted forwarder cannot pass for another address"
    );
    assert_eq!(header_of(&seen, "x-forwarded-proto"), vec!["https"]);
    assert_eq!(header_of(&seen, "x-forwarded-host"), vec![host.clone()]);
    assert_eq!(
        header_of(&seen, "forwarded"),
        vec![format!("for=127.0.0.1;proto=https;host=\"{host}\"")]
    );
    assert_eq!(header_of(&seen, "x-end-to-end"), vec!["kept"]);
    for gone in ["x-secret", "keep-alive", "te", "proxy-authorization"] {
        assert!(
            header_of(&seen, gone).is_empty(),
            "{gone} reached the backend"
        );
    }
    // hyper's client adds its own `connection` only when it needs one; the client's never passes.
    assert!(!header_of(&seen, "connection")
        .iter()
        .any(|v| v.contains("x-secret")));

    // And on the way back.
    let r = c.get("/hop").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-end-to-end"), Some("kept"));
    for gone in ["x-internal", "keep-alive", "proxy-authenticate"] {
        assert!(r.header(gone).is_none(), "{gone} reached the client");
    }
}

#[tokio::test]
async fn h2_cookie_fields_reach_an_h1_backend_as_one_header() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut c = proxy.h2().await;
    let req = c
        .request("GET", "/headers")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(empty())
        .expect("request");
    let seen = c.fetch(req).await.json();
    assert_eq!(header_of(&seen, "cookie"), vec!["a=1; b=2"]);
}

#[tokio::test]
async fn a_dead_backend_gives_502_without_waiting_for_the_connect_timeout() {
    let dead = dead_address().await;
    // A connect timeout far beyond the test's step bound: a 502 must come from the refusal.
    let proxy = spawn_proxy(&config_toml(
        &[("gone", dead)],
        "connect_timeout = \"60s\"",
        "",
    ))
    .await;
    let mut c = proxy.h1().await;
    let r = c.get("/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.text().starts_with("502 Bad Gateway"), "{}", r.text());
    // The client's connection survives the backend's failure.
    let r = c.get("/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn a_backend_that_resets_gives_502() {
    // Accepts, reads a little, then closes without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let proxy = spawn_proxy(&config_toml(&[("rude", addr)], "", "")).await;
    let r = proxy.h2().await.get("/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn a_slow_backend_gives_504() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "response_timeout = \"200ms\"")).await;
    let r = proxy.h1().await.get("/slow?ms=5000").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
}

/// A keep-alive connection's requests share one response timer: each request gets its own
/// deadline, counted from its own start, whatever came before it on the connection.
#[tokio::test]
async fn each_request_of_a_connection_gets_the_whole_response_timeout() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "response_timeout = \"300ms\"")).await;
    let mut c = proxy.h1().await;
    // Each of these takes most of the timeout: a deadline carried over from an earlier request
    // would cut a later one short.
    for i in 0..3 {
        let r = c.get("/slow?ms=150").await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text());
    }
    for i in 0..2 {
        let began = std::time::Instant::now();
        let r = c.get("/slow?ms=5000").await;
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "slow request {i}");
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "slow request {i}: 504 after {took:?}"
        );
        let r = c.get("/").await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "after slow request {i}: {}",
            r.text()
        );
    }
}

#[tokio::test]
async fn a_pool_without_backends_gives_503_with_retry_after() {
    let proxy = spawn_proxy(&config_toml(&[], "", "")).await;
    let r = proxy.h1().await.get("/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_retry_after(r.header("retry-after"));
}

#[tokio::test]
async fn a_host_no_pool_serves_gives_404() {
    let backends = spawn_backends(1).await;
    let list = [("b1", backends[0].addr)];
    let toml =
        config_toml(&list, "", "").replace("hosts = [\"*\"]", "hosts = [\"rtc.example.com\"]");
    let proxy = spawn_proxy(&toml).await;
    let r = proxy.h1().await.get("/").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(backends[0].requests(), 0);
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "max_header_size = 8192")).await;
    let mut c = proxy.h1().await;
    let req = c
        .request("GET", "/")
        .header("x-big", "a".repeat(20_000))
        .body(empty())
        .expect("request");
    let r = c.fetch(req).await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(backends[0].requests(), 0);
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "header_read_timeout = \"300ms\"")).await;
    let mut s = TcpStream::connect(proxy.http).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .expect("write");
    // The proxy must close the connection (perhaps after a 408) instead of waiting forever.
    let mut buf = Vec::new();
    // `within` fails the test if the connection is still open after its bound.
    let _ = within("slowloris cut", s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(!text.contains("200 OK"), "{text}");
    assert_eq!(backends[0].requests(), 0);
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "max_connections = 1")).await;
    let mut first = proxy.h1_plain().await;
    assert_eq!(first.get("/").await.status, StatusCode::OK);
    // The second connection is accepted by the kernel but not served while the first is open.
    let mut second = TcpStream::connect(proxy.http).await.expect("connect");
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let early =
        tokio::time::timeout(std::time::Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the second connection was served while the cap was reached"
    );
    drop(first);
    let mut reply = Vec::new();
    within("second connection served", second.read_to_end(&mut reply))
        .await
        .expect("read");
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    let backends = spawn_backends(1).await;
    let mut proxy = spawn_proxy(&config_for(&backends, "shutdown_grace = \"10s\"")).await;
    let mut c = proxy.h1().await;
    let mut arrived = backends[0].requests_watch();
    let slow = tokio::spawn(async move { c.get("/slow?ms=700").await });
    within("request reaches the backend", arrived.wait_for(|n| *n >= 1))
        .await
        .expect("watch");
    let stopped = proxy.shutdown();
    let r = within("slow request", slow).await.expect("task");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "slow done\n");
    within("server stops", stopped)
        .await
        .expect("join")
        .expect("run");
    // The listener is gone: new connections are refused.
    assert!(TcpStream::connect(proxy.https).await.is_err());
}

/// A backend that answers the first request on each connection and then, like a backend whose
/// keep-alive timeout fires just as the next request arrives, closes the connection on the
/// second request without answering it.
async fn spawn_one_answer_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                // Read up to the end of the first request's head (its body, if any, follows
                // within the same bytes in these tests, or is ignored).
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if s.write_all(answer).await.is_err() {
                    return;
                }
                // The next request's first bytes: close without a word.
                let _ = s.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_get_on_a_pooled_connection_the_backend_just_closed_is_replayed() {
    let addr = spawn_one_answer_backend().await;
    // Passive checks off the path under test: a single failure must not eject the backend.
    let proxy = spawn_proxy(&config_toml(
        &[("b1", addr)],
        "",
        "[pools.media.health]\nfall = 3",
    ))
    .await;
    let mut c = proxy.h1().await;
    assert_eq!(c.get("/first").await.status, StatusCode::OK);
    // Idle long enough for a backend's keep-alive timeout to be the likely cause of a close.
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The pooled connection dies under this GET; the proxy sends it again on a fresh one.
    let r = c.get("/second").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "ok");

    // A POST with a body may have been acted on: it is not replayed.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let req = c
        .request("POST", "/third")
        .body(full("payload"))
        .expect("request");
    let r = c.fetch(req).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
}

#[tokio::test]
async fn header_read_timeout_bounds_the_wait_between_requests_but_not_a_long_response() {
    use http_body_util::BodyExt;
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "header_read_timeout = \"300ms\"")).await;

    // A response whose body takes longer than header_read_timeout arrives whole.
    let mut c = proxy.h1_plain().await;
    let req = c
        .request("GET", "/bytes?n=200000&hold=1")
        .body(empty())
        .expect("request");
    let resp = c.send(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = within("first chunk", body.frame()).await;
    let mut got = first
        .expect("a frame")
        .expect("frame")
        .into_data()
        .map_or(0, |d| d.len());
    // The backend holds the rest: the connection waits on the response, not on a request.
    tokio::time::sleep(Duration::from_millis(900)).await;
    backends[0].release();
    while let Some(frame) = within("next chunk", body.frame()).await {
        got += frame.expect("frame").into_data().map_or(0, |d| d.len());
    }
    assert_eq!(got, 200_000);

    // A keep-alive connection that brings no next request is closed.
    let mut s = TcpStream::connect(proxy.http).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    // `within` fails the test if the connection is still open after its bound.
    within("idle keep-alive closed", s.read_to_end(&mut buf))
        .await
        .expect("read");
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
}

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

/// An HTTP/2 frame of `kind` with `flags` on `stream` around `payload`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small").to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;

/// Reads frames until one of `kind` (its flags and payload), or None at the end of the stream.
async fn next_frame_of<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    kind: u8,
) -> Option<(u8, Vec<u8>)> {
    for _ in 0..1_000_000 {
        let mut h = [0u8; 9];
        r.read_exact(&mut h).await.ok()?;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let mut payload = vec![0; len];
        r.read_exact(&mut payload).await.ok()?;
        if h[3] == kind {
            return Some((h[4], payload));
        }
    }
    panic!("no frame of type {kind} in a million");
}

/// Floods `io` with PINGs after the preface, reading as it goes, until rtcgate sends a GOAWAY
/// and closes; the GOAWAY's error code.
async fn ping_flood<I>(io: I) -> u32
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(io);
    let flood = tokio::spawn(async move {
        let mut hello = PREFACE.to_vec();
        hello.extend(h2_frame(0x4, 0, 0, &[]));
        w.write_all(&hello).await?;
        // 512 PINGs a write, at most 2,000 writes (a million PINGs).
        let batch: Vec<u8> = (0..512)
            .flat_map(|_| h2_frame(PING, 0, 0, &[7; 8]))
            .collect();
        for _ in 0..2_000 {
            w.write_all(&batch).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let (_, goaway) = within("a GOAWAY", next_frame_of(&mut r, GOAWAY))
        .await
        .expect("a GOAWAY before the connection ends");
    let code = u32::from_be_bytes(goaway[4..8].try_into().expect("8 bytes"));
    // The connection ends (an end of stream, or a reset for the PINGs still unread).
    let mut rest = Vec::new();
    let _ = within("the close", r.read_to_end(&mut rest)).await;
    flood.abort();
    code
}

#[tokio::test]
async fn an_h2_control_frame_flood_gets_goaway_enhance_your_calm() {
    let backends = spawn_backends(1).await;
    // A low limit, so that the well-behaved clients below come near it.
    let limits = "h2_control_frames_per_second = 200";
    let proxy = spawn_proxy(&config_for(&backends, limits)).await;
    // Over TLS (ALPN h2) and in clear text (prior knowledge), each flood is cut.
    let code = ping_flood(proxy.tls_stream(b"h2").await).await;
    assert_eq!(code, 0xb, "ENHANCE_YOUR_CALM over TLS");
    let plain = TcpStream::connect(proxy.http).await.expect("connect");
    let code = ping_flood(plain).await;
    assert_eq!(code, 0xb, "ENHANCE_YOUR_CALM in clear text");
    let text = metrics(&proxy).await;
    assert_eq!(sample(&text, "rtcgate_h2_floods_total", &[]), Some(2.0));

    // A client within the limit keeps its connection: 150 PINGs, each answered.
    let mut io = proxy.tls_stream(b"h2").await;
    let mut hello = PREFACE.to_vec();
    hello.extend(h2_frame(0x4, 0, 0, &[]));
    io.write_all(&hello).await.expect("preface");
    for i in 0..150u64 {
        io.write_all(&h2_frame(PING, 0, 0, &i.to_be_bytes()))
            .await
            .expect("ping");
        let (flags, payload) = within("a PING ACK", next_frame_of(&mut io, PING))
            .await
            .expect("an answer to every PING");
        assert_eq!((flags, payload), (0x1, i.to_be_bytes().to_vec()));
    }
    // A download of 16 MiB through the protocol's default 64 KiB windows (as the Python h2
    // library and old nghttp2 have them) makes the client send some 1,000 WINDOW_UPDATEs, several
    // hundred a second; they answer rtcgate's DATA frames and are not a flood.
    let mut small = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    small
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535);
    let io = proxy.tls_stream(b"h2").await;
    let mut c = HttpClient::h2_with(io, format!("localhost:{}", proxy.https.port()), small).await;
    let reply = c.get(&format!("/bytes?n={}", 16 << 20)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), 16 << 20);
    assert_eq!(
        sample(&metrics(&proxy).await, "rtcgate_h2_floods_total", &[]),
        Some(2.0),
        "no well-behaved connection was cut"
    );
}

//! The PROXY protocol on the listeners named in `[listen] proxy_protocol`: behind an L4
//! balancer, the client rtcgate logs and forwards is the one the header names. A connection
//! without a valid header there is closed; a header where none is expected is a bad request.

use std::net::SocketAddr;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `preface` and then a GET of `/headers` on a new connection to `addr`; returns all
/// the connection answered (empty when it was closed without an answer).
async fn exchange(addr: SocketAddr, preface: &[u8]) -> String {
    let mut s = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let mut bytes = preface.to_vec();
    bytes.extend_from_slice(
        b"GET /headers HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    s.write_all(&bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = within("the answer", s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn forwarded_for(answer: &str) -> String {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let j: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    j["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h[0] == "x-forwarded-for")
        .and_then(|h| h[1].as_str())
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn the_client_is_the_one_the_proxy_header_names() {
    let backends = spawn_backends(1).await;
    let toml = config_for(&backends, "").replacen(
        "http = \"127.0.0.1:0\"\n",
        "http = \"127.0.0.1:0\"\nproxy_protocol = [\"http\"]\n",
        1,
    );
    let proxy = spawn_proxy(&toml).await;

    let v1 = exchange(
        proxy.http,
        b"PROXY TCP4 203.0.113.7 198.51.100.1 51000 80\r\n",
    )
    .await;
    assert!(v1.starts_with("HTTP/1.1 200"), "{v1}");
    assert_eq!(forwarded_for(&v1), "203.0.113.7");

    let src: SocketAddr = "[2001:db8::5]:40000".parse().expect("addr");
    let dst: SocketAddr = "[2001:db8::1]:443".parse().expect("addr");
    let v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (src, dst),
    )
    .build()
    .expect("a v2 header");
    let answer = exchange(proxy.http, &v2).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(forwarded_for(&answer), "2001:db8::5");

    // The balancer's own health check (v1 UNKNOWN): the connection's address stands.
    let answer = exchange(proxy.http, b"PROXY UNKNOWN\r\n").await;
    assert_eq!(forwarded_for(&answer), "127.0.0.1");

    // No header, or a broken one, on a listener that expects one: closed, nothing forwarded.
    let before = backends[0].requests();
    for bad in [
        &b""[..],
        b"PROXY TCP4 not-an-address\r\n",
        b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
    ] {
        let answer = exchange(proxy.http, bad).await;
        assert_eq!(
            answer,
            "",
            "{:?} was answered",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        backends[0].requests(),
        before,
        "nothing reached the backend"
    );

    // A header on a listener that expects none is a bad request.
    let plain = spawn_proxy(&config_for(&backends, "")).await;
    let answer = exchange(
        plain.http,
        b"PROXY TCP4 203.0.113.7 198.51.100.1 51000 80\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let err = rtcgate::config::Config::parse(
        &config_for(&backends, "").replacen(
            "http = \"127.0.0.1:0\"\n",
            "http = \"127.0.0.1:0\"\nproxy_protocol = [\"admin\"]\n",
            1,
        ),
        &proxy.config_path(),
    )
    .expect_err("refused");
    assert!(
        err.to_string().contains("listen.proxy_protocol[0]"),
        "{err}"
    );
}

#[tokio::test]
async fn only_trusted_forwarders_extend_the_forwarding_headers() {
    let backends = spawn_backends(1).await;
    let with = |trusted: &str| {
        config_for(&backends, "").replacen(
            "http = \"127.0.0.1:0\"\n",
            &format!("http = \"127.0.0.1:0\"\nproxy_protocol = [\"http\"]\ntrusted_forwarders = [{trusted}]\n"),
            1,
        )
    };
    let header = b"PROXY TCP4 203.0.113.7 198.51.100.1 51000 80\r\n";
    let ask = |addr| async move {
        let mut s = within("connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(b"GET /headers HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 192.0.2.99\r\nForwarded: for=192.0.2.99\r\nConnection: close\r\n\r\n");
        s.write_all(&bytes).await.expect("write");
        let mut out = Vec::new();
        let _ = within("the answer", s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let untrusted = spawn_proxy(&with("")).await;
    let answer = ask(untrusted.http).await;
    assert_eq!(forwarded_for(&answer), "203.0.113.7", "replaced: {answer}");
    assert!(!answer.contains("192.0.2.99"), "{answer}");
    let trusted = spawn_proxy(&with("\"203.0.113.0/24\"")).await;
    let answer = ask(trusted.http).await;
    assert_eq!(
        forwarded_for(&answer),
        "192.0.2.99, 203.0.113.7",
        "kept and extended"
    );
    assert!(
        answer.contains("for=192.0.2.99, for=203.0.113.7"),
        "{answer}"
    );
}

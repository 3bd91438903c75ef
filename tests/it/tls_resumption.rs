//! TLS resumption that holds in a reconnect storm: every returning client resumes (stateless
//! tickets, not a session cache of a few hundred), on any instance that shares the
//! `[tls] ticket_keys` file, and keys rotate by rewriting that file.

use std::path::Path;
use std::sync::Arc;

use crate::support::*;
use base64::Engine;
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Clients that come back: more than a session cache holds (rustls's holds 256).
const CLIENTS: usize = 1000;

/// A browser-like client: its own session store, trusting `cert`.
fn client(cert: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("root");
    let mut c = rustls::ClientConfig::builder_with_provider(rtcgate::settings::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c.resumption = Resumption::in_memory_sessions(4);
    Arc::new(c)
}

/// One connection: a handshake and a GET (whose answer brings the server's tickets); how the
/// handshake went.
async fn visit(config: &Arc<rustls::ClientConfig>, port: u16) -> HandshakeKind {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let mut tls = within("handshake", connector.connect(name, tcp))
        .await
        .expect("handshake");
    let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    within("answer", tls.read_to_end(&mut answer))
        .await
        .expect("answer");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    kind
}

/// Each client visits `first` then `then`; how many of the second visits resumed.
async fn returning(clients: &[Arc<rustls::ClientConfig>], first: u16, then: u16) -> usize {
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    let visits = clients.iter().map(|c| {
        let (c, gate) = (c.clone(), gate.clone());
        tokio::spawn(async move {
            let _slot = gate.acquire().await.expect("gate");
            visit(&c, first).await
        })
    });
    for v in visits.collect::<Vec<_>>() {
        v.await.expect("first visit");
    }
    let again = clients.iter().map(|c| {
        let (c, gate) = (c.clone(), gate.clone());
        tokio::spawn(async move {
            let _slot = gate.acquire().await.expect("gate");
            visit(&c, then).await
        })
    });
    let mut resumed = 0;
    for v in again.collect::<Vec<_>>() {
        resumed += usize::from(v.await.expect("second visit") == HandshakeKind::Resumed);
    }
    resumed
}

fn key_line(seed: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([seed; 80])
}

/// A proxy over `backends` whose `[tls]` names `keys` (a file beside its config), on the
/// certificate of `cert_from` (so one client trusts both proxies) or a new one.
async fn proxy_with_keys(
    backends: &[Arc<rtcgate::demo::DemoBackend>],
    keys: &str,
    cert_from: Option<&TestCerts>,
) -> TestProxy {
    let mut certs = make_certs();
    if let Some(from) = cert_from {
        for f in ["cert.pem", "key.pem"] {
            std::fs::copy(from.dir.path().join(f), certs.dir.path().join(f)).expect("copy");
        }
        certs.cert_der = from.cert_der.clone();
    }
    std::fs::write(certs.dir.path().join("tickets.keys"), keys).expect("keys");
    let toml = config_for(backends, "").replace(
        "key = \"key.pem\"",
        "key = \"key.pem\"\nticket_keys = \"tickets.keys\"",
    );
    let path = certs.dir.path().join("proxy.toml");
    std::fs::write(&path, toml).expect("config");
    spawn_proxy_from(certs, &path).await
}

fn rewrite(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test]
async fn a_thousand_returning_clients_all_resume() {
    let _solo = solo().await;
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| client(&proxy.certs.cert_der))
        .collect();
    let port = proxy.https.port();
    let resumed = returning(&clients, port, port).await;
    assert_eq!(resumed, CLIENTS, "every returning client resumes");
}

#[tokio::test]
async fn clients_resume_on_another_instance_sharing_the_keys_and_keys_rotate() {
    let _solo = solo().await;
    let backends = spawn_backends(1).await;
    let (old, new) = (key_line(7), key_line(8));
    let a = proxy_with_keys(&backends, &format!("{old}\n"), None).await;
    let b = proxy_with_keys(&backends, &format!("{old}\n"), Some(&a.certs)).await;
    let clients: Vec<_> = (0..CLIENTS).map(|_| client(&a.certs.cert_der)).collect();
    let resumed = returning(&clients, a.https.port(), b.https.port()).await;
    assert_eq!(
        resumed, CLIENTS,
        "tickets from one instance resume on the other"
    );

    // A new key first: tickets under the old one still resume, new ones use the new one.
    let keys = b.certs.dir.path().join("tickets.keys");
    let fresh = client(&a.certs.cert_der);
    visit(&fresh, a.https.port()).await;
    rewrite(&keys, &format!("{new}\n{old}\n"));
    eventually("b reloads its keys", async || {
        sample(
            &metrics(&b).await,
            "rtcgate_config_reloads_total",
            &[("result", "ok")],
        ) == Some(1.0)
    })
    .await;
    assert_eq!(visit(&fresh, b.https.port()).await, HandshakeKind::Resumed);
    // Once the old key is dropped, its tickets no longer resume (a full handshake instead).
    let stale = client(&a.certs.cert_der);
    visit(&stale, a.https.port()).await;
    rewrite(&keys, &format!("{new}\n"));
    eventually("b reloads its keys again", async || {
        sample(
            &metrics(&b).await,
            "rtcgate_config_reloads_total",
            &[("result", "ok")],
        ) == Some(2.0)
    })
    .await;
    assert_eq!(visit(&stale, b.https.port()).await, HandshakeKind::Full);
    // A broken key file is refused, and the keys in use stay.
    rewrite(&keys, "not a key\n");
    eventually("the broken file is refused", async || {
        sample(
            &metrics(&b).await,
            "rtcgate_config_reloads_total",
            &[("result", "error")],
        ) == Some(1.0)
    })
    .await;
    let status = b.admin().await.get("/status").await.text();
    assert!(status.contains("tls.ticket_keys"), "{status}");
    let again = client(&a.certs.cert_der);
    visit(&again, b.https.port()).await;
    assert_eq!(visit(&again, b.https.port()).await, HandshakeKind::Resumed);
}

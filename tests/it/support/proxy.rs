//! [`TestProxy`]: rtcgate started in-process on fresh loopback ports from a config file in a
//! temporary folder, and the clients a test opens to it.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rtcgate::config::Config;
use rtcgate::control::runtime::Runtime;
use rtcgate::server::Listeners;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::ws::{cookie_header, ws_handshake};
use super::*;

/// A running proxy and what a test needs to reach and stop it.
pub struct TestProxy {
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub runtime: Arc<Runtime>,
    pub certs: TestCerts,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Starts a proxy with `toml` (as `config_toml` makes it) on fresh loopback ports.
pub async fn spawn_proxy(toml: &str) -> TestProxy {
    let certs = make_certs();
    let path = certs.dir.path().join("proxy.toml");
    std::fs::write(&path, toml).expect("write config");
    spawn_proxy_from(certs, &path).await
}

/// The proxy started from the config at `path` (beside `certs`, or wherever the test put it).
pub async fn spawn_proxy_from(certs: TestCerts, path: &std::path::Path) -> TestProxy {
    let config = Config::load(path).unwrap_or_else(|e| panic!("test config: {e}"));
    let runtime = Runtime::new(config).unwrap_or_else(|e| panic!("runtime: {e}"));
    let https = TcpListener::bind("127.0.0.1:0").await.expect("bind https");
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let (https_addr, http_addr) = (
        https.local_addr().expect("addr"),
        http.local_addr().expect("addr"),
    );
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let admin_addr = admin.local_addr().expect("addr");
    let listeners = Listeners {
        https: Some(https),
        http: Some(http),
        admin: Some(admin),
    };
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(rtcgate::run(listeners, runtime.clone(), async {
        let _ = rx.await;
    }));
    // Ready when the admin API answers: by then the reload watcher is registered too.
    eventually("the proxy is ready", async || {
        let Ok(tcp) = TcpStream::connect(admin_addr).await else {
            return false;
        };
        let mut c = HttpClient::h1(tcp, admin_addr.to_string(), "http").await;
        c.get("/ready").await.status == StatusCode::OK
    })
    .await;
    TestProxy {
        https: https_addr,
        http: http_addr,
        admin: admin_addr,
        runtime,
        certs,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl TestProxy {
    /// Starts a graceful shutdown; returns the server task to await.
    pub fn shutdown(&mut self) -> JoinHandle<anyhow::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("shut down once")
    }

    fn tls_config(&self, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.certs.cert_der.clone()).expect("root");
        let mut c = rustls::ClientConfig::builder_with_provider(rtcgate::settings::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(c)
    }

    /// A TLS connection to the https listener, offering only `alpn`.
    pub async fn tls_stream(&self, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = within("connect", TcpStream::connect(self.https))
            .await
            .expect("connect https");
        let connector = tokio_rustls::TlsConnector::from(self.tls_config(alpn));
        let name = ServerName::try_from("localhost").expect("name");
        within("handshake", connector.connect(name, tcp))
            .await
            .expect("TLS handshake")
    }

    /// An HTTP/1.1 client over TLS.
    pub async fn h1(&self) -> HttpClient {
        let io = self.tls_stream(b"http/1.1").await;
        HttpClient::h1(io, format!("localhost:{}", self.https.port()), "https").await
    }

    /// An HTTP/2 client over TLS (ALPN h2).
    pub async fn h2(&self) -> HttpClient {
        let io = self.tls_stream(b"h2").await;
        HttpClient::h2(io, format!("localhost:{}", self.https.port())).await
    }

    /// An HTTP/1.1 client on the admin listener.
    pub async fn admin(&self) -> HttpClient {
        let tcp = within("connect", TcpStream::connect(self.admin))
            .await
            .expect("connect admin");
        HttpClient::h1(tcp, format!("127.0.0.1:{}", self.admin.port()), "http").await
    }

    /// An HTTP/1.1 client on the plain listener.
    pub async fn h1_plain(&self) -> HttpClient {
        let tcp = within("connect", TcpStream::connect(self.http))
            .await
            .expect("connect http");
        HttpClient::h1(tcp, format!("localhost:{}", self.http.port()), "http").await
    }

    /// A WebSocket over TLS and HTTP/1.1 Upgrade.
    pub async fn ws_tls(
        &self,
        path: &str,
        cookie: Option<&str>,
    ) -> WsReply<tokio_rustls::client::TlsStream<TcpStream>> {
        self.ws_tls_with(path, &cookie_header(cookie)).await
    }

    /// A WebSocket over TLS and HTTP/1.1 Upgrade, the request carrying `headers` too.
    pub async fn ws_tls_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> WsReply<tokio_rustls::client::TlsStream<TcpStream>> {
        let io = self.tls_stream(b"http/1.1").await;
        let url = format!("wss://localhost:{}{path}", self.https.port());
        ws_handshake(io, &url, headers).await
    }

    /// A WebSocket over plain HTTP/1.1 Upgrade.
    pub async fn ws_plain(&self, path: &str, cookie: Option<&str>) -> WsReply<TcpStream> {
        let io = within("connect", TcpStream::connect(self.http))
            .await
            .expect("connect");
        let url = format!("ws://localhost:{}{path}", self.http.port());
        ws_handshake(io, &url, &cookie_header(cookie)).await
    }

    /// A WebSocket over HTTP/2 extended CONNECT (RFC 8441), on its own TLS connection.
    pub async fn ws_h2(
        &self,
        path: &str,
        cookie: Option<&str>,
    ) -> WsReply<TokioIo<hyper::upgrade::Upgraded>> {
        self.ws_h2_with(path, &cookie_header(cookie)).await
    }

    /// A WebSocket over HTTP/2 extended CONNECT, the request carrying `headers` too.
    pub async fn ws_h2_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> WsReply<TokioIo<hyper::upgrade::Upgraded>> {
        let io = self.tls_stream(b"h2").await;
        let (mut sender, conn) = within(
            "h2 handshake",
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method("CONNECT")
            .version(Version::HTTP_2)
            .uri(format!("https://localhost:{}{path}", self.https.port()))
            .header("sec-websocket-version", "13");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let mut req = req.body(empty()).expect("request");
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        within("h2 ready", sender.ready()).await.expect("ready");
        let resp = within("h2 CONNECT", sender.send_request(req))
            .await
            .expect("CONNECT");
        let status = resp.status();
        let headers = resp.headers().clone();
        if status != StatusCode::OK {
            let body = within("body", resp.into_body().collect())
                .await
                .expect("body")
                .to_bytes();
            return WsReply {
                status,
                headers,
                body: Some(body.to_vec()),
                ws: None,
            };
        }
        let upgraded = within("h2 upgrade", hyper::upgrade::on(resp))
            .await
            .expect("upgrade");
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        WsReply {
            status,
            headers,
            body: None,
            ws: Some(ws),
        }
    }

    /// The config file this proxy was started from.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.certs.dir.path().join("proxy.toml")
    }

    /// Replaces the config file the way editors and orchestration tools do: a new file renamed
    /// over the old one.
    pub fn rewrite_config(&self, toml: &str) {
        let tmp = self.certs.dir.path().join(".proxy.toml.new");
        std::fs::write(&tmp, toml).expect("write new config");
        std::fs::rename(&tmp, self.config_path()).expect("rename over the config");
    }

    /// Reloads through the admin API and returns its answer.
    pub async fn post_reload(&self) -> Reply {
        let mut c = self.admin().await;
        let req = c.request("POST", "/reload").body(empty()).expect("request");
        c.fetch(req).await
    }

    /// Reloads through the admin API with the admin token.
    pub async fn post_reload_with(&self, token: &str) -> Reply {
        let mut c = self.admin().await;
        let req = c
            .request("POST", "/reload")
            .header("authorization", format!("Bearer {token}"))
            .body(empty())
            .expect("request");
        c.fetch(req).await
    }

    /// The ids listed in the current snapshot's pool (draining ones included).
    pub fn member_ids(&self) -> Vec<String> {
        self.runtime.snapshot().pools[0]
            .members
            .iter()
            .map(|m| m.backend.id.to_string())
            .collect()
    }

    /// The runtime state of backend `id` of the first pool.
    pub fn backend_state(&self, id: &str) -> Arc<rtcgate::state::backend::Backend> {
        self.runtime.snapshot().pools[0]
            .member(id)
            .expect("member")
            .backend
            .clone()
    }

    /// Backend `id`'s entry in `GET /status`.
    pub async fn status_of(&self, id: &str) -> serde_json::Value {
        let status = self.admin().await.get("/status").await.json();
        status["pools"][0]["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .find(|b| b["id"] == id)
            .unwrap_or_else(|| panic!("{id} is not listed in /status"))
            .clone()
    }

    /// A new user's cookie pinning it to backend `id` (new users rotate over idle backends).
    pub async fn user_pinned_to(&self, id: &str) -> String {
        let mut c = self.h1().await;
        for _ in 0..16 {
            let r = c.get("/").await;
            if r.backend() == id {
                return r.cookie().expect("a new user's Set-Cookie");
            }
        }
        panic!("no new user was placed on {id}")
    }
}

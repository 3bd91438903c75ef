//! Test support: demo backends and a proxy on `127.0.0.1:0`, and real HTTP/1.1 and HTTP/2
//! clients over TLS or plain TCP. The benches use it too (`#[path]`), for the same proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rtcgate::config::Config;
use rtcgate::control::runtime::Runtime;
use rtcgate::demo::DemoBackend;
use rtcgate::server::Listeners;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound for any single step of a test; a step that takes longer is a hang.
pub const STEP: Duration = Duration::from_secs(10);

pub type ClientBody = UnsyncBoxBody<Bytes, std::io::Error>;

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
    let list: Vec<(&str, SocketAddr)> = backends.iter().map(|b| (b.id.as_str(), b.addr)).collect();
    config_toml(&list, limits, "")
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
    let config = Config::load(&path).unwrap_or_else(|e| panic!("test config: {e}"));
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
        c.get("/status").await.status == StatusCode::OK
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
        let io = self.tls_stream(b"http/1.1").await;
        ws_handshake(
            io,
            &format!("wss://localhost:{}{path}", self.https.port()),
            cookie,
        )
        .await
    }

    /// A WebSocket over plain HTTP/1.1 Upgrade.
    pub async fn ws_plain(&self, path: &str, cookie: Option<&str>) -> WsReply<TcpStream> {
        let io = within("connect", TcpStream::connect(self.http))
            .await
            .expect("connect");
        ws_handshake(
            io,
            &format!("ws://localhost:{}{path}", self.http.port()),
            cookie,
        )
        .await
    }

    /// A WebSocket over HTTP/2 extended CONNECT (RFC 8441), on its own TLS connection.
    pub async fn ws_h2(
        &self,
        path: &str,
        cookie: Option<&str>,
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
        if let Some(c) = cookie {
            req = req.header("cookie", c);
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

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<ClientBody>),
    H2(hyper::client::conn::http2::SendRequest<ClientBody>),
}

/// One client connection, HTTP/1.1 or HTTP/2.
pub struct HttpClient {
    sender: Sender,
    authority: String,
    scheme: &'static str,
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn backend(&self) -> &str {
        self.header("x-backend-id").unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `rtcgate=…` pair of this response's `Set-Cookie`, when it set the proxy's cookie.
    pub fn cookie(&self) -> Option<String> {
        let line = self.set_cookie_line();
        (!line.is_empty()).then(|| line.split(';').next().unwrap_or_default().to_string())
    }

    /// The whole `Set-Cookie` line of the proxy's cookie, or "".
    pub fn set_cookie_line(&self) -> String {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("rtcgate="))
            .unwrap_or_default()
            .to_string()
    }
}

impl HttpClient {
    pub async fn h1<I>(io: I, authority: String, scheme: &'static str) -> HttpClient
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = within(
            "h1 handshake",
            hyper::client::conn::http1::handshake(TokioIo::new(io)),
        )
        .await
        .expect("h1 handshake");
        tokio::spawn(conn);
        HttpClient {
            sender: Sender::H1(sender),
            authority,
            scheme,
        }
    }

    pub async fn h2<I>(io: I, authority: String) -> HttpClient
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = within(
            "h2 handshake",
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(conn);
        HttpClient {
            sender: Sender::H2(sender),
            authority,
            scheme: "https",
        }
    }

    /// A request builder for `path` with the right target form for this protocol.
    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        match self.sender {
            Sender::H1(_) => Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, &self.authority),
            Sender::H2(_) => Request::builder()
                .method(method)
                .version(Version::HTTP_2)
                .uri(format!("{}://{}{path}", self.scheme, self.authority)),
        }
    }

    /// Sends `req` and returns the response head with its body still streaming.
    pub async fn send(
        &mut self,
        req: Request<ClientBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match &mut self.sender {
            Sender::H1(s) => {
                within("h1 ready", s.ready()).await?;
                within("h1 response", s.send_request(req)).await
            }
            Sender::H2(s) => {
                within("h2 ready", s.ready()).await?;
                within("h2 response", s.send_request(req)).await
            }
        }
    }

    /// Sends `req` and reads the whole response.
    pub async fn fetch(&mut self, req: Request<ClientBody>) -> Reply {
        let resp = self.send(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = within("response body", body.collect())
            .await
            .expect("body")
            .to_bytes();
        Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        }
    }

    /// GET `path`.
    pub async fn get(&mut self, path: &str) -> Reply {
        let req = self.request("GET", path).body(empty()).expect("request");
        self.fetch(req).await
    }

    /// GET `path`, with a `Cookie` header when one is given.
    pub async fn get_with_cookie(&mut self, path: &str, cookie: Option<&str>) -> Reply {
        let mut req = self.request("GET", path);
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        self.fetch(req.body(empty()).expect("request")).await
    }
}

pub fn empty() -> ClientBody {
    UnsyncBoxBody::new(Empty::new().map_err(|never| match never {}))
}

pub fn full(data: impl Into<Bytes>) -> ClientBody {
    UnsyncBoxBody::new(Full::new(data.into()).map_err(|never| match never {}))
}

pub type Ws<S> = tokio_tungstenite::WebSocketStream<S>;

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

/// The 101 (or refusal) a WebSocket handshake got, and the stream when it succeeded.
pub struct WsReply<S> {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Option<Vec<u8>>,
    pub ws: Option<Ws<S>>,
}

impl<S> WsReply<S> {
    pub fn backend(&self) -> String {
        self.headers
            .get("x-backend-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    pub fn set_cookie_pair(&self) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("rtcgate="))
            .map(|v| v.split(';').next().unwrap_or_default().to_string())
    }

    pub fn ws(&mut self) -> &mut Ws<S> {
        self.ws.as_mut().expect("the upgrade succeeded")
    }
}

async fn ws_handshake<S>(io: S, url: &str, cookie: Option<&str>) -> WsReply<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().expect("ws request");
    if let Some(c) = cookie {
        req.headers_mut()
            .insert("cookie", c.parse().expect("cookie"));
    }
    match within("ws handshake", tokio_tungstenite::client_async(req, io)).await {
        Ok((ws, resp)) => WsReply {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: None,
            ws: Some(ws),
        },
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => WsReply {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.body().clone(),
            ws: None,
        },
        Err(e) => panic!("ws handshake failed: {e}"),
    }
}

/// Sends `text` and expects it echoed back.
pub async fn echo<S>(ws: &mut Ws<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    within("ws send", ws.send(Message::text(text)))
        .await
        .expect("send");
    loop {
        match within("ws echo", ws.next()).await {
            Some(Ok(Message::Text(t))) => {
                assert_eq!(t.as_str(), text);
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected the echo of {text:?}, got {other:?}"),
        }
    }
}

/// Waits for the stream to end (close frame, EOF or reset).
pub async fn closed<S>(ws: &mut Ws<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    loop {
        match within("ws close", ws.next()).await {
            None | Some(Err(_)) => return,
            Some(Ok(m)) if m.is_close() => return,
            Some(Ok(_)) => continue,
        }
    }
}

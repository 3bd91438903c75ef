//! Built-in demo media servers: what `rtcgate demo` starts behind the proxy, and what the tests
//! use as backends.
//!
//! Each answers with its id (`X-Backend-Id` and a small page), has a switchable `/health`, echoes
//! request headers and WebSocket messages, counts requests, and offers the bulk and slow endpoints
//! the tests need. It is a test double, not a media server: it never parses SDP or carries RTP.
//!
//! Its page is also a call (`page.html`, `call.js`): people who open it with the same room meet
//! on one backend, which relays their offers, answers and ICE candidates (`call.rs`), while the
//! media goes from browser to browser.

pub mod call;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::demo::call::Calls;
use tokio::sync::{watch, Notify};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

type DemoBody = UnsyncBoxBody<Bytes, Infallible>;

/// Size of the chunks `/bytes` sends.
const CHUNK: usize = 64 * 1024;

/// A running demo backend.
#[derive(Debug)]
pub struct DemoBackend {
    pub id: String,
    pub addr: SocketAddr,
    /// Requests served so far but health checks, watchable so tests can wait for one.
    requests: watch::Sender<u64>,
    health_checks: AtomicU64,
    healthy: AtomicBool,
    /// Bytes `/sink` has received so far, across requests.
    received: watch::Sender<u64>,
    /// Lets a `/bytes?hold=1` response go on after its first chunk.
    release: Notify,
    /// The rooms of the call demo on this backend.
    calls: Calls,
    stop: CancellationToken,
    /// What `/health` says in `X-Rtcgate-Agent`, if anything (a backend reporting its load).
    agent: std::sync::Mutex<Option<HeaderValue>>,
    /// Its open echo WebSockets, by room; reported in `/health` while `reporting` is set.
    live: std::sync::Mutex<LiveLoad>,
    reporting: AtomicBool,
}

/// A demo backend's own count of its WebSocket sessions, as a media server would keep it.
#[derive(Debug, Default)]
pub struct LiveLoad {
    pub sessions: u32,
    /// The most sessions open at once so far.
    pub peak: u32,
    /// Open sessions by room (the `room` query parameter; "" for none).
    pub rooms: std::collections::HashMap<String, u32>,
    /// When each session opened, in order.
    pub opened: Vec<std::time::Instant>,
}

/// Counts one open session of a [`DemoBackend`] until dropped.
struct LiveSession {
    backend: Arc<DemoBackend>,
    room: String,
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        let mut live = self.backend.live.lock().unwrap_or_else(|e| e.into_inner());
        live.sessions = live.sessions.saturating_sub(1);
        if let Some(n) = live.rooms.get_mut(&self.room) {
            *n -= 1;
            if *n == 0 {
                live.rooms.remove(&self.room);
            }
        }
    }
}

impl DemoBackend {
    /// Binds `addr` and serves on it until [`DemoBackend::kill`].
    pub async fn bind(id: &str, addr: SocketAddr) -> std::io::Result<Arc<DemoBackend>> {
        Ok(DemoBackend::spawn(id, TcpListener::bind(addr).await?))
    }

    /// Serves on `listener` until [`DemoBackend::kill`].
    pub fn spawn(id: &str, listener: TcpListener) -> Arc<DemoBackend> {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let backend = Arc::new(DemoBackend {
            id: id.to_string(),
            addr,
            requests: watch::channel(0).0,
            health_checks: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            received: watch::channel(0).0,
            release: Notify::new(),
            calls: Calls::default(),
            stop: CancellationToken::new(),
            agent: std::sync::Mutex::new(None),
            live: std::sync::Mutex::default(),
            reporting: AtomicBool::new(false),
        });
        tokio::spawn(backend.clone().accept_loop(listener));
        backend
    }

    /// Requests served so far, health checks aside.
    pub fn requests(&self) -> u64 {
        *self.requests.borrow()
    }

    /// `/health` requests served so far.
    pub fn health_checks(&self) -> u64 {
        self.health_checks.load(Ordering::Relaxed)
    }

    /// Watches the count of requests served.
    pub fn requests_watch(&self) -> watch::Receiver<u64> {
        self.requests.subscribe()
    }

    /// Makes `/health` answer 200 (true) or 503 (false).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Makes `/health` carry `X-Rtcgate-Agent: {words}` (HAProxy agent words, `sessions=N`,
    /// `rooms=N`), or nothing.
    pub fn set_agent(&self, words: Option<&str>) {
        let v = words.and_then(|w| HeaderValue::from_str(w).ok());
        *self.agent.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }

    /// Makes `/health` report its own open WebSockets in `X-Rtcgate-Agent` (`up sessions=N
    /// rooms=M`, rooms counting the named ones), as a media server shared by several rtcgate
    /// instances would.
    pub fn report_load(&self, on: bool) {
        self.reporting.store(on, Ordering::Relaxed);
    }

    /// Runs `f` on its own count of its WebSocket sessions.
    pub fn live_load<T>(&self, f: impl FnOnce(&LiveLoad) -> T) -> T {
        f(&self.live.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn open_session(self: &Arc<Self>, room: &str) -> LiveSession {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.sessions += 1;
        live.peak = live.peak.max(live.sessions);
        live.opened.push(std::time::Instant::now());
        *live.rooms.entry(room.to_string()).or_default() += 1;
        LiveSession {
            backend: self.clone(),
            room: room.to_string(),
        }
    }

    /// Watches the bytes `/sink` has received.
    pub fn received(&self) -> watch::Receiver<u64> {
        self.received.subscribe()
    }

    /// The call demo's rooms on this backend.
    pub fn calls(&self) -> &Calls {
        &self.calls
    }

    /// Lets one held `/bytes?hold=1` response send the rest of its body.
    pub fn release(&self) {
        self.release.notify_one();
    }

    /// Stops listening and drops every open connection, as a crashed server would.
    pub fn kill(&self) {
        self.stop.cancel();
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                _ = self.stop.cancelled() => return,
            };
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                let svc = {
                    let me = me.clone();
                    service_fn(move |req| {
                        let me = me.clone();
                        async move { Ok::<_, Infallible>(me.serve(req).await) }
                    })
                };
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = me.stop.cancelled() => {}
                }
            });
        }
    }

    async fn serve(self: Arc<Self>, req: Request<Incoming>) -> Response<DemoBody> {
        let req_is_health = req.uri().path() == "/health";
        if req_is_health {
            self.health_checks.fetch_add(1, Ordering::Relaxed);
        } else {
            self.requests.send_modify(|n| *n += 1);
        }
        let mut resp = if is_websocket(&req) && req.uri().path() == "/signal" {
            let room = query(&req, "room").unwrap_or("").to_string();
            let me = self.clone();
            Self::accept_websocket(req, move |ws| async move {
                let stop = me.stop.clone();
                me.calls.serve(room, &me.id, ws, stop).await;
            })
        } else if is_websocket(&req) && req.uri().path() != "/ws-refuse" {
            let stop = self.stop.clone();
            let session = self.open_session(query(&req, "room").unwrap_or(""));
            Self::accept_websocket(req, move |ws| async move {
                echo(ws, stop).await;
                drop(session);
            })
        } else {
            match (req.method(), req.uri().path()) {
                (_, "/health") if self.healthy.load(Ordering::Relaxed) => {
                    text(StatusCode::OK, "ok\n")
                }
                (_, "/health") => text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n"),
                (_, "/call.js") => {
                    let mut resp = Response::new(full(include_str!("call.js").to_string()));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/javascript; charset=utf-8"),
                    );
                    resp
                }
                (_, "/headers") => json(headers_json(&req)),
                (_, "/ws-refuse") => text(StatusCode::FORBIDDEN, "no websocket here\n"),
                (_, "/hop") => hop_by_hop_response(),
                (&Method::POST, "/sink") => self.sink(req).await,
                (&Method::GET, "/bytes") => self.bytes(&req),
                (_, "/slow") => {
                    let ms = query(&req, "ms")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1000);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    text(StatusCode::OK, "slow done\n")
                }
                _ => self.page(&req),
            }
        };
        if let Ok(v) = HeaderValue::from_str(&self.id) {
            resp.headers_mut().insert("x-backend-id", v);
        }
        if req_is_health && self.reporting.load(Ordering::Relaxed) {
            let report = self.live_load(|l| {
                let rooms = l.rooms.keys().filter(|r| !r.is_empty()).count();
                format!("up sessions={} rooms={rooms}", l.sessions)
            });
            if let Ok(v) = HeaderValue::from_str(&report) {
                resp.headers_mut().insert("x-rtcgate-agent", v);
            }
        } else if req_is_health {
            let agent = self.agent.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(v) = agent {
                resp.headers_mut().insert("x-rtcgate-agent", v);
            }
        }
        resp
    }

    fn page(&self, req: &Request<Incoming>) -> Response<DemoBody> {
        let h = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(html_escape)
                .unwrap_or_else(|| "-".into())
        };
        let body = format!(
            include_str!("page.html"),
            id = html_escape(&self.id),
            addr = self.addr,
            proto = h("x-forwarded-proto"),
            client = h("x-forwarded-for"),
            host = h("host"),
        );
        let mut resp = Response::new(full(body));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        resp
    }

    /// Reads the body as it arrives, reporting progress, and answers its length and FNV-1a hash.
    async fn sink(&self, req: Request<Incoming>) -> Response<DemoBody> {
        let mut body = req.into_body();
        let mut n = 0u64;
        let mut hash = Fnv::default();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return text(StatusCode::BAD_REQUEST, "body broke off\n");
            };
            if let Some(data) = frame.data_ref() {
                n += data.len() as u64;
                hash.update(data);
                self.received.send_modify(|r| *r += data.len() as u64);
            }
        }
        json(format!("{{\"bytes\":{n},\"fnv\":\"{:016x}\"}}", hash.0))
    }

    /// Streams `n` bytes of [`pattern`], 64 KiB at a time; with `hold=1`, waits for
    /// [`DemoBackend::release`] after the first chunk.
    fn bytes(self: &Arc<Self>, req: &Request<Incoming>) -> Response<DemoBody> {
        let n: u64 = query(req, "n").and_then(|v| v.parse().ok()).unwrap_or(0);
        let hold = query(req, "hold").is_some_and(|v| v == "1");
        let me = self.clone();
        let stream = futures_util::stream::unfold(0u64, move |sent| {
            let me = me.clone();
            async move {
                if sent >= n {
                    return None;
                }
                if hold && sent == CHUNK as u64 {
                    me.release.notified().await;
                }
                let len = (n - sent).min(CHUNK as u64);
                let chunk: Vec<u8> = (sent..sent + len).map(pattern).collect();
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))),
                    sent + len,
                ))
            }
        });
        let mut resp = Response::new(UnsyncBoxBody::new(StreamBody::new(stream)));
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        resp
    }

    /// Answers a WebSocket upgrade with 101 and runs `session` on the upgraded stream.
    fn accept_websocket<F, Fut>(mut req: Request<Incoming>, session: F) -> Response<DemoBody>
    where
        F: FnOnce(WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
            return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
        };
        let accept = derive_accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(ws_config()),
            )
            .await;
            session(ws).await;
        });
        let mut resp = Response::new(full(String::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        resp
    }
}

/// Echoes text and binary messages until the client closes, or `stop`.
async fn echo<S>(mut ws: WebSocketStream<S>, stop: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = stop.cancelled() => return,
        };
        match msg {
            Some(Ok(m)) if m.is_text() || m.is_binary() => {
                if ws.send(m).await.is_err() {
                    return;
                }
            }
            Some(Ok(m)) if m.is_close() => {
                // tungstenite queued the reply to the client's close frame when it read it;
                // a flush sends it. (`close` would refuse, the closing being under way, and
                // the reply would be lost: the client would see its connection dropped.)
                let _ = ws.flush().await;
                return;
            }
            Some(Ok(_)) => {}
            _ => return,
        }
    }
}

/// The byte at offset `i` of a `/bytes` body: cheap to check, and not a repeating short period.
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8 ^ (i >> 16) as u8
}

/// FNV-1a, 64 bit: a cheap checksum both ends of a bulk test can compute.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// A response carrying hop-by-hop headers that a proxy must not pass on.
fn hop_by_hop_response() -> Response<DemoBody> {
    let mut resp = text(StatusCode::OK, "hop\n");
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("x-internal"));
    h.insert("x-internal", HeaderValue::from_static("secret"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert(
        header::PROXY_AUTHENTICATE,
        HeaderValue::from_static("Basic"),
    );
    h.insert("x-end-to-end", HeaderValue::from_static("kept"));
    resp
}

fn is_websocket<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn query<'a, B>(req: &'a Request<B>, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn full(s: String) -> DemoBody {
    UnsyncBoxBody::new(Full::new(Bytes::from(s)))
}

fn text(status: StatusCode, s: &str) -> Response<DemoBody> {
    let mut resp = Response::new(full(s.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(s: String) -> Response<DemoBody> {
    let mut resp = Response::new(full(s));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The request line and headers as JSON: `{"method":…,"uri":…,"version":…,"headers":[[k,v],…]}`.
fn headers_json<B>(req: &Request<B>) -> String {
    let headers: Vec<(&str, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut m = HashMap::new();
    m.insert("method", serde_json::Value::from(req.method().as_str()));
    m.insert("uri", serde_json::Value::from(req.uri().to_string()));
    m.insert(
        "version",
        serde_json::Value::from(format!("{:?}", req.version())),
    );
    m.insert("headers", serde_json::to_value(headers).unwrap_or_default());
    serde_json::to_string(&m).unwrap_or_default()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A demo session's WebSocket settings: tungstenite's default read buffer is 128 KiB, allocated
/// for every session and zeroed to that length before every read, which a server holding
/// thousands of small-message sessions pays for in memory and CPU. Longer messages still arrive
/// whole, in more reads.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(16 * 1024)
}

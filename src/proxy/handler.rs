//! One request: route → place → forward → respond, with header hygiene and error mapping.
//!
//! [`Proxy`] holds what every request needs: the swappable snapshot, the backend registry and the
//! pooled upstream client. Connections, TLS and limits on the client side are `server.rs`'s; the
//! choice of backend is `balance.rs`'s; this file turns a client request into a backend request
//! and the backend's answer (or failure) into the client's response.

use std::borrow::Cow;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::task::TaskTracker;

use crate::balance::{self, Rejection};
use crate::config::{Config, ConfigError};
use crate::health::HealthCheckers;
use crate::metrics::{Metrics, PoolMetrics};
use crate::pool::{AdminState, Backend, InFlight, LiveRooms, Registry, Session};
use crate::snapshot::Snapshot;
use crate::sticky;
use crate::tunnel;
use crate::upstream::{Lease, Upstream, UpstreamError, UpstreamLimits};

/// Body sent to backends: the client's, or empty for requests rtcgate makes or replays.
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;
/// Body sent to clients: a backend's, or a short one written by rtcgate.
pub type ResponseBody = Either<Tracked, Full<Bytes>>;

/// Seconds a client is told to wait in `Retry-After` when no backend can take it.
pub const RETRY_AFTER_SECS: u64 = 5;

/// What the connection knows about the client, handed to every request on it. The forwarding
/// header parts that depend only on the connection are rendered once, here.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The client's IP as an `X-Forwarded-For` item.
    xff_item: HeaderValue,
    /// `for=…;proto=…`: this hop's `Forwarded` element without the host.
    forwarded_for: String,
    /// The whole `Forwarded` element for the first host asked for on this connection, which is
    /// nearly always the host of every request on it: (host, element).
    forwarded: OnceLock<(HeaderValue, HeaderValue)>,
    /// What the server holds for this connection (its slot under `max_connections`, its
    /// metric gauge): released when the connection and every tunnel it became are done.
    _held: Box<dyn std::any::Any + Send + Sync>,
    /// Requests being handled and tunnels open on this connection: while any is, the
    /// connection is not idle, however quiet its socket.
    active: AtomicU32,
    /// Requests (and tunnels) begun on this connection so far.
    started: AtomicU32,
    /// Whether the connection speaks HTTP/2 (seen on its first request).
    h2: AtomicBool,
    /// Backend response bodies being sent on this connection.
    responding: AtomicU32,
    /// The response timer of this connection's requests, lent to one at a time (see
    /// [`TimerLease`]).
    response_timer: Mutex<Option<Pin<Box<Sleep>>>>,
}

impl ConnInfo {
    /// Whether a request or tunnel is in progress on this connection.
    pub fn busy(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// How many requests and tunnels have begun on this connection.
    pub fn started(&self) -> u32 {
        self.started.load(Ordering::Relaxed)
    }

    /// Whether a backend's response body is still being sent on this connection.
    pub fn responding(&self) -> bool {
        self.responding.load(Ordering::Relaxed) > 0
    }

    fn respond(self: &Arc<Self>) -> Responding {
        self.responding.fetch_add(1, Ordering::Relaxed);
        Responding(self.clone())
    }

    /// Whether this is an HTTP/2 connection (known once it has carried a request).
    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// A timer that fires at `deadline`: the connection's own when no other request holds it.
    fn response_timer(&self, deadline: tokio::time::Instant) -> TimerLease<'_> {
        let kept = self
            .response_timer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let sleep = match kept {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        TimerLease {
            slot: &self.response_timer,
            sleep: Some(sleep),
        }
    }

    fn enter(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        Active(self.clone())
    }
}

/// A request's response timer, given back to its connection when the request is done.
///
/// A new timer per request is registered in the runtime's timer wheel on its first poll and
/// taken out again when dropped: ~400 instructions per proxied request of ~29k. The
/// connection's timer stays registered between requests, and moving a registered timer to a
/// later deadline is an atomic store; the wheel sees the new deadline when the old one comes.
/// (HTTP/2 requests that run at the same time as another get a timer of their own.)
struct TimerLease<'a> {
    slot: &'a Mutex<Option<Pin<Box<Sleep>>>>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl TimerLease<'_> {
    /// Polls the timer: ready once it fired.
    fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx),
            // Only `discard` and `drop` take the timer, and neither polls after.
            None => Poll::Pending,
        }
    }

    /// Drops the timer instead of giving it back: for a request that became a tunnel, whose
    /// connection (HTTP/1.1) carries no more requests.
    fn discard(mut self) {
        self.sleep = None;
    }
}

impl Drop for TimerLease<'_> {
    fn drop(&mut self) {
        if let Some(sleep) = self.sleep.take() {
            *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(sleep);
        }
    }
}

/// One request or tunnel in progress on a connection.
struct Active(Arc<ConnInfo>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A backend's response body on its way to the client.
struct Responding(Arc<ConnInfo>);

impl Drop for Responding {
    fn drop(&mut self) {
        self.0.responding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        tls: bool,
        held: Box<dyn std::any::Any + Send + Sync>,
    ) -> Arc<ConnInfo> {
        // Built once per connection, without `format!`: an `Ipv4Addr`'s `Display` went through
        // the formatter's padding path, 2,500 instructions a connection (callgrind).
        let ip = ip_text(peer.ip());
        let proto = if tls { "https" } else { "http" };
        let mut forwarded_for = String::with_capacity(ip.len() + 20);
        forwarded_for.push_str("for=");
        match peer {
            SocketAddr::V4(_) => forwarded_for.push_str(&ip),
            SocketAddr::V6(_) => {
                forwarded_for.push_str("\"[");
                forwarded_for.push_str(&ip);
                forwarded_for.push_str("]\"");
            }
        }
        forwarded_for.push_str(";proto=");
        forwarded_for.push_str(proto);
        Arc::new(ConnInfo {
            peer,
            tls,
            xff_item: HeaderValue::try_from(ip).unwrap_or(HeaderValue::from_static("unknown")),
            forwarded_for,
            forwarded: OnceLock::new(),
            _held: held,
            active: AtomicU32::new(0),
            started: AtomicU32::new(0),
            h2: AtomicBool::new(false),
            responding: AtomicU32::new(0),
            response_timer: Mutex::new(None),
        })
    }
}

/// An address as X-Forwarded-For and Forwarded write it: dotted decimal, or RFC 5952 text.
fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                text.push_str(itoa::Buffer::new().format(octet));
            }
            text
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
}

/// Why a request got no answer from a backend, and so which status the client sees.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client's request is malformed → 400.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// No pool serves the requested host → 404.
    #[error("no pool serves host {0:?}")]
    NoRoute(String),
    /// The pool has no backend for a new user → 503 with Retry-After.
    #[error("no backend available ({})", .0.as_str())]
    Rejected(Rejection),
    /// The backend refused or reset the connection → 502.
    #[error("backend {backend} failed: {cause}")]
    Backend { backend: String, cause: String },
    /// The backend did not connect or answer in time → 504.
    #[error("backend {backend} timed out: {cause}")]
    Timeout { backend: String, cause: String },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::Rejected(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Backend { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The short body the client sees: the status and a line that does not leak addresses.
    fn client_message(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(m) => m,
            ProxyError::NoRoute(_) => "no service is configured for this host",
            ProxyError::Rejected(Rejection::Full) => "every server is full; retry later",
            ProxyError::Rejected(Rejection::NoBackend) => "no server is available; retry later",
            ProxyError::Rejected(Rejection::Down) => "your server is down; retry later",
            ProxyError::Backend { .. } => "the server could not be reached",
            ProxyError::Timeout { .. } => "the server did not answer in time",
        }
    }

    /// The response rtcgate sends for this error.
    pub fn into_response(self) -> Response<ResponseBody> {
        let status = self.status();
        let body = format!(
            "{} {}: {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self.client_message()
        );
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        resp
    }
}

/// The request handler. One per worker thread: the snapshot and registry are shared by all,
/// the upstream connection pool is the worker's own, so a request and the backend connection
/// serving it stay on one thread.
pub struct Proxy {
    shared: Arc<Shared>,
    upstream: Arc<Upstream>,
}

/// What every worker's `Proxy` sees alike.
struct Shared {
    snapshot: ArcSwap<Snapshot>,
    registry: Registry,
    rooms: Arc<LiveRooms>,
    /// Connections and tunnels, waited for at shutdown.
    tasks: TaskTracker,
    health: HealthCheckers,
    /// Slots under `max_connections`, and how many there are (a reload may change it).
    connection_slots: Arc<Semaphore>,
    slots: Mutex<usize>,
    /// Serialises reloads and the expiry of leaving backends.
    reloading: Mutex<ReloadStatus>,
}

/// Why an admin state change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminError {
    NoSuchBackend,
    /// The configuration no longer lists it; it is draining out.
    Removed,
}

/// When the configuration was last (re)loaded, and the last failure.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub last_ok: Option<SystemTime>,
    pub last_error: Option<(SystemTime, String)>,
}

impl Proxy {
    /// Builds the first snapshot of `config` and the upstream client.
    pub fn new(config: Config) -> Result<Arc<Proxy>, ConfigError> {
        let registry = Registry::new(Arc::new(Metrics::new()));
        let upstream = Upstream::new();
        let slots = config.limits.max_connections;
        let snapshot = Snapshot::build(config, &registry)?;
        Ok(Arc::new(Proxy {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(snapshot),
                registry,
                rooms: Arc::default(),
                tasks: TaskTracker::new(),
                health: HealthCheckers::default(),
                connection_slots: Arc::new(Semaphore::new(slots)),
                slots: Mutex::new(slots),
                reloading: Mutex::new(ReloadStatus {
                    last_ok: Some(SystemTime::now()),
                    last_error: None,
                }),
            }),
            upstream,
        }))
    }

    /// A handler for another worker thread: same state, its own upstream connection pool.
    pub fn for_worker(&self) -> Arc<Proxy> {
        Arc::new(Proxy {
            shared: self.shared.clone(),
            upstream: Upstream::new(),
        })
    }

    /// Closes this worker's backend connections that stayed idle too long, periodically.
    pub async fn sweep_idle_connections(self: Arc<Self>) {
        loop {
            let idle = self.snapshot().config.limits.upstream_idle_timeout;
            tokio::time::sleep(idle).await;
            self.upstream.sweep(idle);
        }
    }

    /// The current snapshot, for a short synchronous look; never hold it across an `.await`.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.shared.snapshot.load()
    }

    /// The current snapshot, to keep.
    pub fn snapshot_full(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        self.shared.registry.metrics()
    }

    /// Re-reads the configuration file and, when it is valid, swaps in a snapshot built from
    /// it: backends that stay keep their state, counters, tunnels and metric series; removed
    /// ones drain. A bad file changes nothing: the error is logged, counted and kept for
    /// `/status`, and returned. Listener addresses and `workers` are fixed at start; a change
    /// to them is logged as needing a restart, and the rest of the file is applied.
    pub fn reload(&self) -> Result<(), String> {
        let mut status = self
            .shared
            .reloading
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot_full();
        let loaded = Config::load(&current.config.source).and_then(|config| {
            let tls = crate::tls::server_config(&config)?;
            // The HTTPS listener keeps running whatever the file says; it needs certificates.
            if current.config.listen.https.is_some() && tls.is_none() {
                return Err(crate::config::ConfigError {
                    file: config.source.clone(),
                    key: "tls".into(),
                    msg:
                        "the https listener is running and needs [tls]; removing it takes a restart"
                            .into(),
                });
            }
            Ok((config, tls))
        });
        let (config, tls) = match loaded {
            Ok(ok) => ok,
            Err(e) => {
                let e = e.to_string();
                tracing::error!(error = %e, "reload failed; the running configuration stays");
                self.metrics()
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                status.last_error = Some((SystemTime::now(), e.clone()));
                return Err(e);
            }
        };
        needs_restart(&current.config, &config);
        // What cannot change while running stays as it is, so /status tells the truth.
        let mut config = config;
        config.listen = current.config.listen.clone();
        config.limits.workers = current.config.limits.workers;
        config.limits.pin_workers = current.config.limits.pin_workers;
        let max_connections = config.limits.max_connections;
        let snap = Arc::new(Snapshot::assemble(config, tls, &self.shared.registry));
        self.shared.snapshot.store(snap.clone());
        self.resize_connection_slots(max_connections);
        self.shared.health.sync(&snap);
        self.metrics()
            .config_reloads
            .with_label_values(&["ok"])
            .inc();
        status.last_ok = Some(SystemTime::now());
        let backends: usize = snap.pools.iter().map(|p| p.members.len()).sum();
        tracing::info!(pools = snap.pools.len(), backends, "configuration reloaded");
        Ok(())
    }

    /// Ends the drain of removed backends whose `drain_timeout` is over, and lists the rest.
    pub fn expire_leaving(&self) {
        let _one_at_a_time = self
            .shared
            .reloading
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.shared.registry.expire(std::time::Instant::now()) == 0 {
            return;
        }
        let snap = Arc::new(self.snapshot().rebuild(&self.shared.registry));
        self.shared.snapshot.store(snap.clone());
        self.shared.health.sync(&snap);
    }

    /// The last reload's outcome.
    pub fn reload_status(&self) -> ReloadStatus {
        self.shared
            .reloading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn resize_connection_slots(&self, wanted: usize) {
        let mut slots = self.shared.slots.lock().unwrap_or_else(|e| e.into_inner());
        let sem = self.shared.connection_slots.clone();
        if wanted > *slots {
            sem.add_permits(wanted - *slots);
        } else if wanted < *slots {
            let excess = *slots - wanted;
            let forgotten = sem.forget_permits(excess);
            if forgotten < excess {
                // The rest are held by open connections: take them back as those close. New
                // connections wait meanwhile, as they would at the new cap.
                let debt = u32::try_from(excess - forgotten).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    if let Ok(p) = sem.acquire_many_owned(debt).await {
                        p.forget();
                    }
                });
            }
        }
        *slots = wanted;
    }

    /// Slots under `max_connections`: a client connection holds one for its whole life.
    pub fn connection_slots(&self) -> &Arc<Semaphore> {
        &self.shared.connection_slots
    }

    /// The health checkers of the current snapshot's backends.
    pub fn health(&self) -> &HealthCheckers {
        &self.shared.health
    }

    /// Sets a backend's admin state. Draining starts the pool's `drain_timeout`, after which the
    /// backend's remaining tunnels are closed unless its state changed meanwhile. A backend the
    /// configuration no longer lists is draining out and cannot be changed.
    pub fn set_admin_state(
        &self,
        pool: &str,
        id: &str,
        state: AdminState,
    ) -> Result<(), AdminError> {
        let snap = self.snapshot();
        let Some((backend, drain_timeout)) = snap
            .pool(pool)
            .and_then(|p| Some((p.member(id)?.backend.clone(), p.config.drain_timeout)))
        else {
            return Err(AdminError::NoSuchBackend);
        };
        if backend.is_removed() {
            return Err(AdminError::Removed);
        }
        let before = backend.admin();
        let generation = backend.set_admin(state);
        tracing::info!(%pool, backend = %id, from = ?before, to = ?state, "admin state changed");
        if state == AdminState::Draining {
            drain_after(backend, generation, drain_timeout);
        }
        Ok(())
    }

    /// The tracker of client connections and tunnels, which shutdown waits for.
    pub fn tasks(&self) -> &TaskTracker {
        &self.shared.tasks
    }

    /// Serves one client request.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        conn: &Arc<ConnInfo>,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let _active = conn.enter();
        if req.version() == Version::HTTP_2 && !conn.is_h2() {
            conn.h2.store(true, Ordering::Relaxed);
        }
        // Kept for the log lines; both clones share the request's buffers.
        let method = req.method().clone();
        let uri = req.uri().clone();
        let path = uri.path();
        let (access_log, result) = {
            let snap = self.shared.snapshot.load();
            (
                snap.config.log.access,
                self.place(&snap, &mut req, conn.tls),
            )
        };
        let (resp, placed_on) = match result {
            Ok(placed) => {
                let on = (placed.backend.clone(), placed.pool_metrics.clone());
                (self.forward(req, conn, placed, started).await, Some(on))
            }
            Err(e) => (Err(e), None),
        };
        let resp = resp.unwrap_or_else(|e| {
            if e.status().is_server_error() {
                tracing::warn!(client = %conn.peer, %method, %path, error = %e, "request failed");
            }
            e.into_response()
        });
        if let Some((backend, pool)) = &placed_on {
            backend.metrics.answered(resp.status().as_u16());
            pool.duration.observe(started.elapsed().as_secs_f64());
        }
        let backend = placed_on.as_ref().map(|(b, _)| &*b.id);
        if access_log {
            tracing::info!(
                target: "rtcgate::access",
                client = %conn.peer,
                %method,
                %path,
                status = resp.status().as_u16(),
                backend = backend.unwrap_or("-"),
                ms = started.elapsed().as_secs_f64() * 1e3,
            );
        }
        resp
    }

    /// Chooses the backend for `req` from one snapshot (the guard ends with this call), and
    /// takes the proxy's own cookie out of the request.
    fn place(
        &self,
        snap: &Snapshot,
        req: &mut Request<Incoming>,
        tls: bool,
    ) -> Result<Placed, ProxyError> {
        let host = request_host(req).ok_or(ProxyError::BadRequest("the request names no host"))?;
        let pool = snap
            .route(strip_port(host))
            .ok_or_else(|| ProxyError::NoRoute(host.to_string()))?;
        let now = sticky::unix_now();
        let cached = |id: &str| pool.member(id).and_then(|m| m.pin_cache.as_ref());
        let pin = snap
            .sticky
            .pin(req.headers(), &pool.config.name, now, cached);
        // Without a cookie of ours there is nothing to strip (one header lookup fewer).
        let has_ours = pin != sticky::Pin::None;
        let room = room_of(req, pool.config.room_param.as_deref());
        let live_on = room
            .as_deref()
            .and_then(|r| self.shared.rooms.backend_of(&pool.config.name, r));
        let room_ref = room.as_deref().map(|name| balance::Room {
            name,
            live_on: live_on.as_deref(),
        });
        let placed = match balance::place(pool, pin, room_ref, snap.sticky.when_down) {
            Ok(p) => p,
            Err(reason) => {
                pool.metrics.rejected(reason);
                pool.metrics.answered_without_backend(503);
                return Err(ProxyError::Rejected(reason));
            }
        };
        pool.metrics.sticky(placed.outcome);
        let backend = &placed.member.backend;
        let set_cookie = placed.set_cookie.then(|| match &placed.member.pin_cache {
            Some(c) => c.set_cookie(tls),
            None => snap
                .sticky
                .set_cookie(&pool.config.name, &backend.id, now, tls),
        });
        let room = room.map(Cow::into_owned);
        let websocket = tunnel::websocket_kind(req);
        if has_ours {
            snap.sticky.strip(req.headers_mut());
        }
        Ok(Placed {
            inflight: backend.start_request(),
            session: websocket.map(|_| backend.open_session()),
            websocket,
            backend: backend.clone(),
            set_cookie,
            room,
            pool_metrics: pool.metrics.clone(),
            tls,
            rise: pool.config.health.rise,
            fall: pool.config.health.fall,
            response_timeout: snap.config.limits.response_timeout,
            upstream_limits: UpstreamLimits::from(&snap.config.limits),
            tunnel_idle_timeout: snap.config.limits.tunnel_idle_timeout,
        })
    }

    /// `started` is when the request arrived; it stands for "now" until the response comes.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: &Arc<ConnInfo>,
        mut placed: Placed,
        started: Instant,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let kind = placed.websocket;
        let client_upgrade = kind.map(|_| hyper::upgrade::on(&mut req));
        let (mut upstream, accept) = upstream_request(req, conn, kind)?;
        let deadline = tokio::time::Instant::from_std(started) + placed.response_timeout;
        let mut timer = conn.response_timer(deadline);
        let mut retried = false;
        let (mut resp, lease) = loop {
            let backend = placed.backend.clone();
            let sending =
                self.upstream
                    .send(backend.addr, upstream, placed.upstream_limits, started);
            tokio::pin!(sending);
            let sent = std::future::poll_fn(|cx| match sending.as_mut().poll(cx) {
                Poll::Ready(r) => Poll::Ready(Some(r)),
                Poll::Pending => timer.poll_fired(cx).map(|()| None),
            });
            let (e, unsent) = match sent.await {
                Some(Ok(sent)) => break sent,
                Some(Err(failed)) => failed,
                None => {
                    return Err(ProxyError::Timeout {
                        backend: backend.id.to_string(),
                        cause: format!("no response within {:?}", placed.response_timeout),
                    })
                }
            };
            // A refused connect or a reset counts toward the backend's `fall`; a request body
            // the client broke off does not.
            if !e.client_fault()
                && backend.record_check(false, placed.rise, placed.fall) == Some(false)
            {
                tracing::warn!(pool = %backend.pool, backend = %backend.id, error = %e, "backend is down (passive check)");
            }
            let err = classify(&backend, e);
            // A request that never left is tried once more, elsewhere, as a new user.
            match (unsent, retried) {
                (Some(req), false) => match self.place_elsewhere(&placed) {
                    Some(next) => {
                        tracing::debug!(failed = %backend.id, retry = %next.backend.id, error = %err, "retrying elsewhere");
                        (upstream, placed, retried) = (req, next, true);
                    }
                    None => return Err(err),
                },
                _ => return Err(err),
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let (Some(kind), Some(accept), Some(client)) = (kind, accept, client_upgrade) {
                timer.discard();
                return self.open_tunnel(kind, &accept, client, resp, placed, conn.clone());
            }
        }
        strip_hop_by_hop(resp.headers_mut());
        if let Some(cookie) = placed.set_cookie {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
        Ok(resp.map(|body| {
            Either::Left(Tracked {
                inner: body,
                // A connection that carried an upgrade attempt is not reused.
                lease: kind.is_none().then_some(lease),
                ended: false,
                _inflight: placed.inflight,
                _responding: conn.respond(),
            })
        }))
    }

    /// A new placement for a request whose backend refused it: another backend of the same
    /// pool (the room's next, or the least loaded), with a cookie pinning the user there.
    fn place_elsewhere(&self, failed: &Placed) -> Option<Placed> {
        let snap = self.shared.snapshot.load();
        let pool = snap.pool(&failed.backend.pool)?;
        let room = failed.room.as_deref().map(|name| balance::Room {
            name,
            live_on: None,
        });
        let member = balance::place_elsewhere(pool, room, &failed.backend.id).ok()?;
        let backend = &member.backend;
        let set_cookie = match &member.pin_cache {
            Some(c) => c.set_cookie(failed.tls),
            None => snap.sticky.set_cookie(
                &pool.config.name,
                &backend.id,
                sticky::unix_now(),
                failed.tls,
            ),
        };
        Some(Placed {
            inflight: backend.start_request(),
            session: failed.session.as_ref().map(|_| backend.open_session()),
            backend: backend.clone(),
            set_cookie: Some(set_cookie),
            room: failed.room.clone(),
            pool_metrics: failed.pool_metrics.clone(),
            ..*failed
        })
    }
}

impl Proxy {
    /// Answers the client's upgrade with the backend's `101` (or `200` on HTTP/2) and starts
    /// the tunnel, which counts as one session of its backend until it closes.
    fn open_tunnel(
        &self,
        kind: tunnel::Kind,
        accept: &str,
        client: hyper::upgrade::OnUpgrade,
        mut resp: Response<Incoming>,
        placed: Placed,
        conn: Arc<ConnInfo>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let backend = placed.backend.clone();
        if !tunnel::backend_agreed(resp.headers(), accept) {
            return Err(ProxyError::Backend {
                backend: backend.id.to_string(),
                cause: "its 101 does not confirm the WebSocket (Upgrade or Sec-WebSocket-Accept)"
                    .into(),
            });
        }
        let backend_io = hyper::upgrade::on(&mut resp);
        let mut headers = std::mem::take(resp.headers_mut());
        strip_hop_by_hop(&mut headers);
        tunnel::client_response_headers(kind, &mut headers);
        if let Some(cookie) = placed.set_cookie {
            headers.append(header::SET_COOKIE, cookie);
        }
        // The session reserved at placement becomes the tunnel's.
        let session = match placed.session {
            Some(s) => s,
            None => backend.open_session(),
        };
        let active = conn.enter();
        let stop = backend.tunnels_stop();
        backend.metrics.tunnels.inc();
        let pool_metrics = placed.pool_metrics.clone();
        let room = placed
            .room
            .as_deref()
            .map(|r| self.shared.rooms.enter(&backend, r));
        let idle = placed.tunnel_idle_timeout;
        self.shared.tasks.spawn(async move {
            let (client, upstream) = match tokio::join!(client, backend_io) {
                (Ok(c), Ok(b)) => (c, b),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::debug!(backend = %backend.id, error = %e, "upgrade did not complete");
                    return;
                }
            };
            let opened = Instant::now();
            let pumping = tunnel::pump(TokioIo::new(client), TokioIo::new(upstream), idle);
            let ended = tokio::select! {
                ended = pumping => ended,
                _ = stop.cancelled() => Ok(tunnel::End::Drained),
            };
            pool_metrics
                .tunnel_duration
                .observe(opened.elapsed().as_secs_f64());
            tracing::debug!(backend = %backend.id, ?ended, "tunnel closed");
            drop((session, room, active));
        });
        let mut out = Response::new(Either::Right(Full::new(Bytes::new())));
        *out.status_mut() = match kind {
            tunnel::Kind::H1Upgrade => StatusCode::SWITCHING_PROTOCOLS,
            tunnel::Kind::H2Connect => StatusCode::OK,
        };
        *out.headers_mut() = headers;
        Ok(out)
    }
}

/// Closes `backend`'s tunnels once `timeout` has passed, if it is still in the drain that
/// `generation` started.
pub fn drain_after(backend: Arc<Backend>, generation: u64, timeout: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        if backend.admin_generation() == generation && backend.sessions() > 0 {
            tracing::info!(pool = %backend.pool, backend = %backend.id, sessions = backend.sessions(), "drain timeout: closing the remaining tunnels");
            backend.close_tunnels();
        }
    });
}

/// Logs the settings that a reload cannot apply to running listeners and workers.
fn needs_restart(old: &Config, new: &Config) {
    let listeners = [
        ("listen.https", old.listen.https, new.listen.https),
        ("listen.http", old.listen.http, new.listen.http),
        ("listen.admin", old.listen.admin, new.listen.admin),
    ];
    for (key, was, now) in listeners {
        if was != now {
            tracing::warn!(key, ?was, ?now, "a listener address changed: restart rtcgate to apply it; the rest of the configuration was applied");
        }
    }
    if old.limits.workers != new.limits.workers {
        tracing::warn!(key = "limits.workers", "the worker count changed: restart rtcgate to apply it; the rest of the configuration was applied");
    }
    if old.limits.pin_workers != new.limits.pin_workers {
        tracing::warn!(key = "limits.pin_workers", "the worker pinning changed: restart rtcgate to apply it; the rest of the configuration was applied");
    }
}

/// A placement decision, carried out of the snapshot's scope.
struct Placed {
    backend: Arc<Backend>,
    inflight: InFlight,
    /// How the request asks for a WebSocket, if it does.
    websocket: Option<tunnel::Kind>,
    /// For a WebSocket, a session reserved at placement so that concurrent upgrades cannot
    /// overshoot `max_sessions`; it becomes the tunnel's, or is released with the request.
    session: Option<Session>,
    /// `Set-Cookie` for the response, when the pin is new or changed.
    set_cookie: Option<HeaderValue>,
    /// The room the request named, kept for a tunnel's lifetime.
    room: Option<String>,
    pool_metrics: Arc<PoolMetrics>,
    /// Whether the client came over TLS (for the cookie's Secure attribute).
    tls: bool,
    /// The pool's health thresholds, for passive failures.
    rise: u32,
    fall: u32,
    response_timeout: Duration,
    tunnel_idle_timeout: Duration,
    upstream_limits: UpstreamLimits,
}

/// The room a request names: the pool's room query parameter, else the `X-Rtcgate-Room` header.
fn room_of<'r, B>(req: &'r Request<B>, param: Option<&str>) -> Option<Cow<'r, str>> {
    let from_query = param.and_then(|param| {
        form_urlencoded::parse(req.uri().query()?.as_bytes())
            .find(|(k, _)| k == param)
            .map(|(_, v)| v)
    });
    from_query
        .or_else(|| {
            req.headers()
                .get(&X_RTCGATE_ROOM)
                .and_then(|v| v.to_str().ok())
                .map(|v| Cow::Borrowed(v.trim()))
        })
        .filter(|r| !r.is_empty())
}

/// The host a request is for: the HTTP/2 `:authority` or the HTTP/1.1 `Host` header.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .filter(|h| !h.is_empty())
}

/// `host[:port]` → `host`, leaving IPv6 literals' brackets alone.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Turns the client's request into the backend's: origin URI on the backend's address, hop-by-hop
/// headers gone, `Host` kept, and the forwarding headers added.
/// For a WebSocket, also returns the `Sec-WebSocket-Accept` the backend must answer with.
fn upstream_request(
    req: Request<Incoming>,
    conn: &ConnInfo,
    websocket: Option<tunnel::Kind>,
) -> Result<(Request<UpstreamBody>, Option<String>), ProxyError> {
    let (mut parts, body) = req.into_parts();
    if parts.method == Method::CONNECT && websocket.is_none() {
        return Err(ProxyError::BadRequest("CONNECT is not supported here"));
    }
    // HTTP/2 names the host in `:authority`, which becomes `Host`; HTTP/1.1's `Host` stays.
    let (host, host_from_authority) = match parts.uri.authority() {
        Some(a) => (
            HeaderValue::from_str(a.as_str())
                .map_err(|_| ProxyError::BadRequest("invalid authority"))?,
            true,
        ),
        None => (
            parts
                .headers
                .get(header::HOST)
                .cloned()
                .ok_or(ProxyError::BadRequest("the request names no host"))?,
            false,
        ),
    };
    let client_version = parts.version;
    // Room for the forwarding headers, so adding them does not regrow the map.
    parts.headers.reserve(5);
    strip_hop_by_hop(&mut parts.headers);
    if client_version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    add_forwarding(&mut parts.headers, conn, &host);
    if host_from_authority {
        parts.headers.insert(header::HOST, host);
    }
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // Origin form: the connection already goes to the backend.
    parts.uri = Uri::from(path);
    parts.version = Version::HTTP_11;
    let Some(kind) = websocket else {
        return Ok((Request::from_parts(parts, Either::Left(body)), None));
    };
    // An upgrade carries no body; the stream's bytes go through the tunnel. A declared body
    // would be left unsent and desynchronise the backend connection, so it is refused.
    if kind == tunnel::Kind::H1Upgrade && !body.is_end_stream() {
        return Err(ProxyError::BadRequest(
            "a WebSocket upgrade cannot carry a body",
        ));
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    let accept = tunnel::prepare_upstream(kind, &mut parts.method, &mut parts.headers).ok_or(
        ProxyError::BadRequest("a WebSocket upgrade needs Sec-WebSocket-Key"),
    )?;
    Ok((
        Request::from_parts(parts, Either::Right(Empty::new())),
        Some(accept),
    ))
}

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1), whatever
/// `Connection` says. `Connection` comes first.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The names of [`HOP_BY_HOP`] as bytes, in its order.
const HOP_BY_HOP_NAMES: [&[u8]; 9] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];

/// `name`'s place in [`HOP_BY_HOP`], for a name in lowercase.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    HOP_BY_HOP_NAMES.iter().position(|h| *h == name.as_bytes())
}

/// Removes hop-by-hop headers: the static list and every name listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry one of these at most (`Connection: keep-alive`): one pass over the
    // names notes which are present, and only those are removed.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // `Connection` is taken out whole (every field of it) in the one lookup that reads it.
        // The names it lists are removed after; `close` and `keep-alive` are options, not
        // names, and the static names are handled below.
        let mut listed = Vec::new();
        if let Entry::Occupied(e) = headers.entry(header::CONNECTION) {
            for value in e.remove_entry_mult().1 {
                for token in value.as_bytes().split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.is_empty()
                        || token.eq_ignore_ascii_case(b"close")
                        || HOP_BY_HOP_NAMES
                            .iter()
                            .any(|h| token.eq_ignore_ascii_case(h))
                    {
                        continue;
                    }
                    if let Ok(name) = HeaderName::from_bytes(token) {
                        listed.push(name);
                    }
                }
            }
        }
        for name in &listed {
            headers.remove(name);
        }
    }
    // `Connection` (bit 0) is gone already.
    for (i, name) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// HTTP/2 may split `Cookie` over several fields; an HTTP/1.1 backend needs one (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(_), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let joined = join_values(headers.get_all(header::COOKIE).iter(), b"; ");
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// The bytes of `values`, one after the other with `separator` between them.
fn join_values<'a>(values: impl Iterator<Item = &'a HeaderValue>, separator: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.extend_from_slice(separator);
        }
        out.extend_from_slice(v.as_bytes());
    }
    out
}

static X_RTCGATE_ROOM: HeaderName = HeaderName::from_static("x-rtcgate-room");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Appends the client to `X-Forwarded-For` and `Forwarded`, and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host`.
fn add_forwarding(headers: &mut HeaderMap, conn: &ConnInfo, host: &HeaderValue) {
    // One lookup per list header: `entry` instead of `contains_key` and then `insert`.
    append_to_list(headers, &X_FORWARDED_FOR, &conn.xff_item);
    // The cache holds a copy of the host: `host` is a view into the connection's read buffer,
    // and keeping it would keep that whole buffer (8 KiB or more) for the connection's life,
    // tunnels included.
    let (cached_host, element) = conn.forwarded.get_or_init(|| {
        let copy = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(host.as_bytes()));
        (
            copy.unwrap_or_else(|_| host.clone()),
            forwarded_element(conn, host),
        )
    });
    let fresh;
    let element = if cached_host == host {
        element
    } else {
        fresh = forwarded_element(conn, host);
        &fresh
    };
    append_to_list(headers, &header::FORWARDED, element);
    let proto = if conn.tls { "https" } else { "http" };
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    headers.insert(&X_FORWARDED_HOST, host.clone());
}

/// This hop's `Forwarded` element: `for=…;proto=…;host="…"`.
fn forwarded_element(conn: &ConnInfo, host: &HeaderValue) -> HeaderValue {
    let host_bytes = host.as_bytes();
    let mut element = Vec::with_capacity(conn.forwarded_for.len() + host_bytes.len() + 8);
    element.extend_from_slice(conn.forwarded_for.as_bytes());
    // A host that a quoted-string cannot carry as is is left out rather than escaped.
    if !host_bytes.is_empty() && !host_bytes.iter().any(|&b| b == b'"' || b == b'\\') {
        element.extend_from_slice(b";host=\"");
        element.extend_from_slice(host_bytes);
        element.push(b'"');
    }
    HeaderValue::from_maybe_shared(Bytes::from(element))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Sets `name` to its values joined as one comma-separated list with `item` appended, or to
/// `item` alone.
fn append_to_list(headers: &mut HeaderMap, name: &'static HeaderName, item: &HeaderValue) {
    match headers.entry(name) {
        Entry::Vacant(e) => {
            e.insert(item.clone());
        }
        Entry::Occupied(mut e) => {
            let out = join_values(e.iter().chain([item]), b", ");
            // An earlier hop may have sent bytes a header cannot hold; the list then starts
            // afresh.
            let joined = HeaderValue::from_maybe_shared(Bytes::from(out));
            e.insert(joined.unwrap_or_else(|_| item.clone()));
        }
    }
}

/// Maps a failure to reach or hear from a backend to what the client should see.
fn classify(backend: &Backend, e: UpstreamError) -> ProxyError {
    if !e.maybe_sent() {
        backend.metrics.connect_errors.inc();
    }
    if e.client_fault() {
        return ProxyError::BadRequest("the request body broke off");
    }
    let backend = backend.id.to_string();
    let cause = error_chain(&e);
    match e {
        UpstreamError::ConnectTimeout(_) => ProxyError::Timeout { backend, cause },
        UpstreamError::Connect(_) | UpstreamError::Closed(_) | UpstreamError::Http(_) => {
            ProxyError::Backend { backend, cause }
        }
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A backend's response body, counting as in flight on its backend until it ends or drops, and
/// giving its backend connection back to the pool once read to the end.
pub struct Tracked {
    inner: Incoming,
    lease: Option<Lease>,
    ended: bool,
    _inflight: InFlight,
    _responding: Responding,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.ended = true;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // A body read to its end leaves the connection clean for the next request; one dropped
        // early (the client left) does not, and its connection closes with the lease.
        if self.ended || self.inner.is_end_stream() {
            if let Some(lease) = self.lease.take() {
                lease.release();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_static_and_connection_listed_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        // A second `Connection` field counts as much as the first.
        h.append(header::CONNECTION, HeaderValue::from_static("x-other"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("2"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn the_hop_by_hop_index_matches_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
            assert_eq!(HOP_BY_HOP_NAMES[i], name.as_str().as_bytes(), "{name}");
        }
        assert_eq!(hop_by_hop_index("x-kept"), None);
    }

    #[test]
    fn forwarded_names_the_host_of_each_request_on_a_connection() {
        let peer: SocketAddr = "192.0.2.7:5000".parse().expect("addr");
        let conn = ConnInfo::new(peer, true, Box::new(()));
        for host in ["a.example", "b.example", "a.example"] {
            let mut h = HeaderMap::new();
            h.insert(
                header::FORWARDED,
                HeaderValue::from_static("for=198.51.100.1"),
            );
            add_forwarding(&mut h, &conn, &HeaderValue::from_static(host));
            let want = format!("for=198.51.100.1, for=192.0.2.7;proto=https;host=\"{host}\"");
            assert_eq!(h[header::FORWARDED], want.as_str());
            assert_eq!(h[&X_FORWARDED_HOST], host);
            assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.7");
        }
    }

    #[test]
    fn a_connection_keeps_no_view_into_a_request_buffer() {
        // hyper's header values are slices of the connection's read buffer; a tunnel lives as
        // long as its ConnInfo, and one such slice kept there held 13 KiB per idle tunnel.
        let buffer = Bytes::from(vec![b'h'; 8192]);
        let host = HeaderValue::from_maybe_shared(buffer.slice(100..111)).expect("host");
        let conn = ConnInfo::new("192.0.2.7:5000".parse().expect("addr"), false, Box::new(()));
        add_forwarding(&mut HeaderMap::new(), &conn, &host);
        let within = buffer.as_ptr_range();
        let (cached_host, element) = conn.forwarded.get().expect("cached");
        for kept in [cached_host, element] {
            assert!(
                !within.contains(&kept.as_bytes().as_ptr()),
                "{kept:?} is a view into the request's buffer"
            );
        }
        assert_eq!(cached_host, &host);
    }

    #[test]
    fn addresses_are_written_as_std_displays_them() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "127.0.0.1",
            "192.168.100.255",
            "255.255.255.255",
        ] {
            let v4: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(v4), v4.to_string());
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ip_text(v6), "2001:db8::1");
        let peer: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let info = ConnInfo::new(peer, true, Box::new(()));
        assert_eq!(info.forwarded_for, "for=\"[2001:db8::1]\";proto=https");
        assert_eq!(info.xff_item, "2001:db8::1");
        let info = ConnInfo::new("10.1.2.3:80".parse().unwrap(), false, Box::new(()));
        assert_eq!(info.forwarded_for, "for=10.1.2.3;proto=http");
        assert_eq!(info.xff_item, "10.1.2.3");
    }

    #[test]
    fn host_port_is_stripped_but_ipv6_kept() {
        assert_eq!(strip_port("example.com:8443"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:8443"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn h2_cookies_join_into_one() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2");
    }
}

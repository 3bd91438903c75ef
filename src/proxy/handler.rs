//! The request path: route → place → forward → respond, for one client request at a time.
//!
//! [`Handler::handle`] is its one entry. It reads the snapshot once to route and place
//! (`balance.rs` decides the backend, `sticky.rs` reads and writes the cookie), turns the request
//! into the backend's (`headers.rs`), sends it on the worker's own upstream pool
//! (`upstream.rs`), retries once elsewhere when it never left, and turns the answer, or the
//! failure (`error.rs`), into the client's response. A WebSocket's `101` becomes a tunnel
//! (`tunnel.rs`), spawned on the shared task tracker and counted as a session of its backend.
//! A request for the discovery path is rtcgate's own to answer (`discovery.rs`); a pin token
//! that discovery handed out is honoured here, ahead of the cookie, and taken off the URI.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::balance;
use crate::config::OnDown;
use crate::metrics::{Outcome, PoolMetrics, TunnelEnd};
use crate::proxy::access::AccessLine;
use crate::proxy::body::{ResponseBody, Tracked};
use crate::proxy::conn::ConnInfo;
use crate::proxy::discovery;
use crate::proxy::error::{classify, ProxyError};
use crate::proxy::headers::{
    checked_host, machine_of, room_of, strip_hop_by_hop, strip_port, upstream_request,
    without_query_param, Controls,
};
use crate::proxy::pump;
use crate::proxy::tunnel;
use crate::proxy::turn;
use crate::proxy::upstream::{Upstream, UpstreamLimits};
use crate::state::backend::{Backend, Check, InFlight, Session};
use crate::state::rooms::RoomTunnel;
use crate::state::snapshot::Snapshot;
use crate::state::Shared;
use crate::sticky::{self, CookiePin};

/// The request handler of one worker thread: the state every worker shares, and an upstream
/// connection pool of the worker's own, so a request and the backend connection serving it stay
/// on one thread.
pub struct Handler {
    shared: Arc<Shared>,
    upstream: Arc<Upstream>,
    /// Asks the forward-auth service of `[turn]`.
    auth: turn::AuthClient,
}

/// The endpoints rtcgate answers itself on the public listeners.
enum Own {
    Discovery,
    Turn,
}

impl Handler {
    /// A handler for the worker thread this is called on (within its runtime), with its own
    /// upstream pool and the task that closes that pool's connections once idle too long.
    pub fn for_this_worker(shared: Arc<Shared>) -> Arc<Handler> {
        let upstream = Upstream::new();
        let (sweeping, state) = (upstream.clone(), shared.clone());
        tokio::spawn(async move {
            loop {
                let idle = state.snapshot().config.limits.upstream_idle_timeout;
                tokio::time::sleep(idle).await;
                sweeping.sweep(idle);
            }
        });
        Arc::new(Handler {
            shared,
            upstream,
            auth: turn::auth_client(),
        })
    }

    /// Serves one client request.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        conn: &Arc<ConnInfo>,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let _active = conn.enter();
        if req.version() == Version::HTTP_2 {
            conn.saw_h2();
        }
        // Kept for the log lines; both clones share the request's buffers.
        let method = req.method().clone();
        let uri = req.uri().clone();
        let path = uri.path();
        let (access_log, result) = {
            let snap = self.shared.snapshot();
            let c = &snap.config;
            let own = if c.discovery.as_ref().is_some_and(|d| d.path == path) {
                Some(Own::Discovery)
            } else if c.turn.as_ref().is_some_and(|t| t.path == path) {
                Some(Own::Turn)
            } else {
                None
            };
            if let Some(own) = own {
                drop(snap);
                let mut resp = self.answer_own(own, &req, conn).await;
                if self.shared.snapshot().config.log.access {
                    log_access(conn, &method, path, &mut resp, None, started);
                }
                return resp;
            }
            (
                snap.config.log.access,
                self.place(&snap, &mut req, conn.tls),
            )
        };
        let (resp, placed_on) = match result {
            Ok(placed) => {
                let on = (
                    placed.backend.clone(),
                    placed.pool_metrics.clone(),
                    placed.sticky,
                );
                (self.forward(req, conn, placed, started).await, Some(on))
            }
            Err(e) => (Err(e), None),
        };
        let mut resp = resp.unwrap_or_else(|e| {
            if e.status().is_server_error() {
                tracing::warn!(client = %conn.peer, %method, %path, error = %e, "request failed");
            }
            e.into_response()
        });
        if let Some((backend, pool, _)) = &placed_on {
            backend.metrics.answered(resp.status().as_u16());
            pool.duration.observe(started.elapsed().as_secs_f64());
        }
        if access_log {
            log_access(conn, &method, path, &mut resp, placed_on.as_ref(), started);
        }
        resp
    }

    /// Answers a request for one of rtcgate's own endpoints (discovery, TURN credentials).
    async fn answer_own(
        &self,
        own: Own,
        req: &Request<Incoming>,
        conn: &Arc<ConnInfo>,
    ) -> Response<ResponseBody> {
        // Kept across the auth service's answer: the whole snapshot, not a guard.
        let snap = self.shared.snapshot_full();
        match (own, &snap.config.discovery, &snap.config.turn) {
            (Own::Turn, _, Some(t)) => {
                turn::answer(&self.auth, &self.shared, &snap, t, req, conn).await
            }
            (Own::Discovery, Some(d), _) => {
                let ice = match req.method() == http::Method::GET
                    && discovery::wants_json(req.headers())
                {
                    true => turn::ice_servers(&self.auth, &self.shared, &snap, req, conn).await,
                    false => None,
                };
                discovery::answer(&snap, d, &self.shared, req, conn.tls, ice)
            }
            // A reload turned it off meanwhile.
            _ => ProxyError::NoRoute(String::new()).into_response(),
        }
    }

    /// Chooses the backend for `req` from one snapshot (the guard ends with this call), and
    /// takes the proxy's own cookie out of the request.
    fn place(
        &self,
        snap: &Snapshot,
        req: &mut Request<Incoming>,
        tls: bool,
    ) -> Result<Plan, ProxyError> {
        // `None`: another worker took the backend's last place between this placement's look at
        // its load and its reservation. Placed again, the backend is seen full; a second race
        // in a row is let be (one session over `max_sessions`, not a refusal).
        match self.place_once(snap, req, tls, true)? {
            Some(plan) => Ok(plan),
            None => self
                .place_once(snap, req, tls, false)?
                .ok_or(ProxyError::Rejected(balance::Rejection::Full)),
        }
    }

    fn place_once(
        &self,
        snap: &Snapshot,
        req: &mut Request<Incoming>,
        tls: bool,
        check_race: bool,
    ) -> Result<Option<Plan>, ProxyError> {
        let host = checked_host(req)?;
        let pool = snap
            .route(strip_port(host))
            .ok_or_else(|| ProxyError::NoRoute(host.to_string()))?;
        // A pin token from discovery wins over the cookie (it is the newer word on where this
        // user goes); a forged or expired one places the user afresh, counted as invalid. It
        // never reaches the backend.
        let url_token = match &snap.config.discovery {
            Some(d) => discovery::url_token(d, req).inspect(|_| {
                *req.uri_mut() = without_query_param(req.uri(), &d.token_param);
            }),
            None => None,
        };
        let now = sticky::unix_now();
        let cached = |id: &str| pool.member(id).and_then(|m| m.pin_cache.as_ref());
        let cookie_pin = snap
            .sticky
            .pin(req.headers(), &pool.config.name, now, cached);
        // Without a cookie of ours there is nothing to strip (one header lookup fewer).
        let has_ours = cookie_pin != CookiePin::None;
        let token_pin = url_token
            .as_deref()
            .map(|t| snap.sticky.verify_url_token(&pool.config.name, t, now));
        let pin = token_pin.unwrap_or(cookie_pin);
        let room = room_of(req, pool.config.room_param.as_deref());
        let websocket = tunnel::websocket_kind(req);
        // A machine pin names the backend itself, and wins over the cookie and the room.
        let machine = match machine_of(req, pool.config.machine_param.as_deref()) {
            Some(id) => match pool.member(&id) {
                Some(m) => Some(m),
                None => {
                    pool.metrics.answered_without_backend(404);
                    return Err(ProxyError::NoMachine(id.into_owned()));
                }
            },
            None => None,
        };
        let when_down = snap.sticky.when_down;
        let decide = |live_on: Option<&str>| {
            let placed = match machine {
                Some(m) => balance::place_on(pool, m, pin, when_down),
                None => {
                    let room = room.as_deref().map(|name| balance::Room { name, live_on });
                    balance::place(pool, pin, room, when_down)
                }
            };
            placed.map(|p| {
                let backend = &p.member.backend;
                (p, backend)
            })
        };
        // A WebSocket joining a room is counted in it as it is placed, so that joiners who
        // arrive together meet on one backend; other requests only read where the room is.
        let decided = match (&room, websocket) {
            (Some(r), Some(_)) => self
                .shared
                .rooms
                .join(&pool.config.name, r, decide)
                .map(|(p, joined)| (p, Some(joined))),
            _ => {
                let live_on = room
                    .as_deref()
                    .and_then(|r| self.shared.rooms.backend_of(&pool.config.name, r));
                decide(live_on.as_deref()).map(|(p, _)| (p, None))
            }
        };
        let (placed, in_room) = match decided {
            Ok(decided) => decided,
            Err(reason) => {
                pool.metrics.rejected(reason);
                pool.metrics.answered_without_backend(503);
                return Err(ProxyError::Rejected(reason));
            }
        };
        // A pin admits its user past `max_sessions` (the promise pinned users rely on), but not
        // past the hard cap: a leaked cookie cannot bring a backend any number of sessions.
        let hard_cap = (f64::from(placed.member.max_sessions) * pool.config.hard_cap).ceil();
        if websocket.is_some() && f64::from(placed.member.backend.claimed()) >= hard_cap {
            pool.metrics.rejected(balance::Rejection::Full);
            pool.metrics.answered_without_backend(503);
            return Err(ProxyError::Rejected(balance::Rejection::Full));
        }
        let backend = &placed.member.backend;
        // A WebSocket counts once in its backend's load: as the session reserved for it. The
        // balancer's look at the load and this reservation are not one step, so a user placed
        // afresh checks that it did not take a place another worker took meanwhile (a pinned
        // user may go past `max_sessions`; only the hard cap above holds for it).
        let session = websocket.map(|_| backend.open_session());
        if check_race
            && session.is_some()
            && placed.outcome != Outcome::Hit
            && backend.claimed() > placed.member.max_sessions
        {
            return Ok(None);
        }
        pool.metrics.sticky(placed.outcome);
        let on = |p: CookiePin<'_>| matches!(p, CookiePin::Valid { backend: b, .. } if *b == *backend.id);
        let by_token = token_pin.is_some_and(on);
        // The cookie follows the token, so the user's plain requests go where the token sent it.
        let set_cookie = placed.set_cookie || (by_token && !on(cookie_pin));
        let set_cookie = set_cookie.then(|| match &placed.member.pin_cache {
            Some(c) => c.set_cookie(tls),
            None => snap
                .sticky
                .set_cookie(&pool.config.name, &backend.id, now, tls),
        });
        let room = room.map(Cow::into_owned);
        if has_ours {
            snap.sticky.strip(req.headers_mut());
        }
        // The client discovery sent arrived: its session is open, the slot held for it ends.
        if by_token && session.is_some() {
            self.shared.reservations.claim(backend, room.as_deref());
        }
        Ok(Some(Plan {
            sticky: placed.outcome,
            inflight: websocket.is_none().then(|| backend.start_request()),
            session,
            in_room,
            websocket,
            backend: backend.clone(),
            set_cookie,
            room,
            pool_metrics: pool.metrics.clone(),
            tls,
            rooms_on: pool.config.room_param.is_some(),
            machines_on: pool.config.machine_param.is_some(),
            rise: pool.config.health.rise,
            fall: pool.config.health.fall,
            on_down: pool.config.on_down,
            response_timeout: snap.config.limits.response_timeout,
            upstream_limits: UpstreamLimits::from(&snap.config.limits),
            tunnel_idle_timeout: snap.config.limits.tunnel_idle_timeout,
        }))
    }

    /// `started` is when the request arrived; it stands for "now" until the response comes.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: &Arc<ConnInfo>,
        mut placed: Plan,
        started: Instant,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let kind = placed.websocket;
        let client_upgrade = kind.map(|_| hyper::upgrade::on(&mut req));
        let read = Controls {
            rooms: placed.rooms_on,
            machines: placed.machines_on,
        };
        let (mut upstream, accept, conflicting) = upstream_request(req, conn, kind, read)?;
        if conflicting {
            self.shared.metrics.conflicting_framing(true);
        }
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
            // Only what is the backend's own failure counts toward its `fall`: a connect
            // refused, reset or timed out, a connection closed before it took the request. A
            // request that left and then broke says nothing a client could not provoke at will:
            // Janus closes an upgrade it will not take without an answer, and a client can
            // break off its own body.
            if !e.maybe_sent() {
                backend.record_health(
                    Check::Failed(&e),
                    placed.rise,
                    placed.fall,
                    placed.on_down,
                    &self.shared.events,
                );
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
        if strip_hop_by_hop(resp.headers_mut()) {
            tracing::debug!(backend = %placed.backend.id, "the backend's response had both Transfer-Encoding and Content-Length: framed by the first, the second dropped");
            self.shared.metrics.conflicting_framing(false);
        }
        if let Some(cookie) = placed.set_cookie {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
        Ok(resp.map(|body| {
            // A connection that carried an upgrade attempt is not reused.
            let lease = kind.is_none().then_some(lease);
            Either::Left(Tracked::new(body, lease, placed.inflight, conn.respond()))
        }))
    }

    /// A new placement for a request whose backend refused it: another backend of the same
    /// pool (the room's next, or the least loaded), with a cookie pinning the user there.
    fn place_elsewhere(&self, failed: &Plan) -> Option<Plan> {
        let snap = self.shared.snapshot();
        let pool = snap.pool(&failed.backend.pool)?;
        let decide = |live_on: Option<&str>| {
            let room = failed
                .room
                .as_deref()
                .map(|name| balance::Room { name, live_on });
            balance::place_elsewhere(pool, room, &failed.backend.id).map(|m| (m, &m.backend))
        };
        // A WebSocket of a room joins the room where it lives now, in one step, as at placement.
        let (member, in_room) = match (&failed.in_room, failed.room.as_deref()) {
            (Some(_), Some(room)) => {
                let (m, joined) = self
                    .shared
                    .rooms
                    .join(&pool.config.name, room, decide)
                    .ok()?;
                (m, Some(joined))
            }
            _ => (decide(None).ok()?.0, None),
        };
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
        Some(Plan {
            inflight: failed.inflight.as_ref().map(|_| backend.start_request()),
            session: failed.session.as_ref().map(|_| backend.open_session()),
            in_room,
            backend: backend.clone(),
            set_cookie: Some(set_cookie),
            room: failed.room.clone(),
            pool_metrics: failed.pool_metrics.clone(),
            ..*failed
        })
    }

    /// Answers the client's upgrade with the backend's `101` (or `200` on HTTP/2) and starts
    /// the tunnel, which counts as one session of its backend until it closes.
    fn open_tunnel(
        &self,
        kind: tunnel::Kind,
        accept: &str,
        client: hyper::upgrade::OnUpgrade,
        mut resp: Response<Incoming>,
        placed: Plan,
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
        // The room counted this participant when it was placed.
        let room = placed.in_room;
        let idle = placed.tunnel_idle_timeout;
        let access_log = self.shared.snapshot().config.log.access;
        // Boxed, as a connection is (`server::workers`): the tunnel's future holds both
        // upgrades and the pump's state, and spawned by value it is copied through the tracker's
        // wrapper and the task's cell.
        self.shared.tasks.spawn(Box::pin(async move {
            let (client, upstream) = match tokio::join!(client, backend_io) {
                (Ok(c), Ok(b)) => (c, b),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::debug!(backend = %backend.id, error = %e, "upgrade did not complete");
                    return;
                }
            };
            let opened = Instant::now();
            // rtcgate's own reasons to end it: the client gets 1001 at shutdown, 1012 else.
            let cut = async {
                match stop.fired().await {
                    TunnelEnd::Shutdown => pump::close::GOING_AWAY,
                    _ => pump::close::SERVICE_RESTART,
                }
            };
            let closed = pump::pump(TokioIo::new(client), TokioIo::new(upstream), idle, cut).await;
            let why = match closed.end {
                pump::End::Client => TunnelEnd::Client,
                pump::End::Backend => TunnelEnd::Backend,
                pump::End::Idle => TunnelEnd::Idle,
                pump::End::Cut => stop.why(),
            };
            pool_metrics.tunnel_closed(why);
            let secs = opened.elapsed().as_secs_f64();
            pool_metrics.tunnel_duration.observe(secs);
            if access_log {
                tracing::info!(
                    target: "rtcgate::access",
                    client = %active.peer(),
                    pool = pool_metrics.name(),
                    backend = %backend.id,
                    tunnel = "closed",
                    reason = why.as_str(),
                    close_code = closed.code.unwrap_or(0),
                    secs,
                );
            } else {
                tracing::debug!(backend = %backend.id, reason = why.as_str(), ?closed.code, "tunnel closed");
            }
            drop((session, room, active));
        }));
        let mut out = Response::new(Either::Right(Full::new(Bytes::new())));
        *out.status_mut() = match kind {
            tunnel::Kind::H1Upgrade => StatusCode::SWITCHING_PROTOCOLS,
            tunnel::Kind::H2Connect => StatusCode::OK,
        };
        *out.headers_mut() = headers;
        Ok(out)
    }
}

/// The access log's line for one answered request: written when a backend's body has gone out,
/// or at once for rtcgate's own short answers.
fn log_access(
    conn: &ConnInfo,
    method: &http::Method,
    path: &str,
    resp: &mut Response<ResponseBody>,
    placed_on: Option<&(Arc<Backend>, Arc<PoolMetrics>, Outcome)>,
    started: Instant,
) {
    let line = Box::new(AccessLine {
        client: conn.peer,
        method: method.clone(),
        path: path.to_string(),
        status: resp.status().as_u16(),
        pool: placed_on.map(|(_, p, _)| p.name().to_string()),
        backend: placed_on.map(|(b, _, _)| b.id.clone()),
        sticky: placed_on.map(|(_, _, o)| *o),
        started,
    });
    match resp.body_mut() {
        Either::Left(tracked) => tracked.log_at_end(line),
        Either::Right(full) => line.write(
            hyper::body::Body::size_hint(&*full).exact().unwrap_or(0),
            true,
        ),
    }
}

/// A request's plan: the placement decision, carried out of the snapshot's scope, with the
/// guards that count it on its backend and the settings it needs on the way.
struct Plan {
    backend: Arc<Backend>,
    /// What happened to the request's pin (for the access log).
    sticky: Outcome,
    /// A plain request's count in its backend's in-flight requests.
    inflight: Option<InFlight>,
    /// How the request asks for a WebSocket, if it does.
    websocket: Option<tunnel::Kind>,
    /// For a WebSocket, a session reserved at placement so that concurrent upgrades cannot
    /// overshoot `max_sessions`; it becomes the tunnel's, or is released with the request.
    session: Option<Session>,
    /// `Set-Cookie` for the response, when the pin is new or changed.
    set_cookie: Option<HeaderValue>,
    /// The room the request named.
    room: Option<String>,
    /// For a WebSocket naming a room, its count in the room from placement on; it becomes the
    /// tunnel's.
    in_room: Option<RoomTunnel>,
    pool_metrics: Arc<PoolMetrics>,
    /// Whether the client came over TLS (for the cookie's Secure attribute).
    tls: bool,
    /// Whether the pool has rooms and machine pins on (their headers are stripped where not).
    rooms_on: bool,
    machines_on: bool,
    /// The pool's health thresholds, for passive failures.
    rise: u32,
    fall: u32,
    on_down: OnDown,
    response_timeout: Duration,
    tunnel_idle_timeout: Duration,
    upstream_limits: UpstreamLimits,
}

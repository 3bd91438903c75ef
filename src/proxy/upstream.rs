//! Keep-alive HTTP/1.1 connections to backends: one pool per worker thread.
//!
//! hyper's `client::conn::http1` under a small pool of our own, rather than hyper-util's legacy
//! client: checkout is a lock-free-in-practice pop from a per-worker list keyed by address, no
//! task is spawned per request to watch for the connection's return, and a request that meets a
//! connection the backend had just closed comes back unsent and is retried once on a fresh one.
//! Placement is not decided here; the handler names the address.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustc_hash::FxHashMap;
use tokio::net::TcpStream;

use crate::config::Limits;

/// Largest read buffer of a backend connection.
const UPSTREAM_READ_BUF: usize = 32 * 1024;

/// Body sent to backends: the client's, or empty for requests rtcgate makes or replays.
pub type UpstreamBody = http_body_util::Either<Incoming, http_body_util::Empty<bytes::Bytes>>;

/// Why a request could not be sent to, or answered by, a backend.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("connect: no answer within {0:?}")]
    ConnectTimeout(Duration),
    #[error("closed the connection before taking the request: {0}")]
    Closed(hyper::Error),
    #[error("{0}")]
    Http(hyper::Error),
}

impl UpstreamError {
    /// Whether the request may have reached the backend (and so must not be replayed).
    pub fn maybe_sent(&self) -> bool {
        matches!(self, UpstreamError::Http(_))
    }

    /// Whether the client, not the backend, broke the exchange (its request body failed).
    pub fn client_fault(&self) -> bool {
        matches!(self, UpstreamError::Http(e) if e.is_user())
    }
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

/// One worker's idle backend connections.
#[derive(Default)]
pub struct Upstream {
    /// Keyed by backend address (from the configuration, not from peers: a fast hash will do).
    idle: Mutex<FxHashMap<SocketAddr, VecDeque<Idle>>>,
}

/// The `[limits]` that concern backend connections, read from the snapshot per request so that
/// a reload applies to the next request.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamLimits {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

impl From<&Limits> for UpstreamLimits {
    fn from(l: &Limits) -> Self {
        UpstreamLimits {
            connect_timeout: l.connect_timeout,
            idle_timeout: l.upstream_idle_timeout,
            max_idle: l.upstream_idle_per_backend,
        }
    }
}

/// A connection lent to one request; [`Lease::release`] gives it back once its response has
/// been read to the end. Dropped otherwise, the connection closes.
pub struct Lease {
    sender: SendRequest<UpstreamBody>,
    addr: SocketAddr,
    max_idle: usize,
    pool: Arc<Upstream>,
}

impl Lease {
    pub fn release(self) {
        self.pool.put(self.addr, self.sender, self.max_idle);
    }
}

impl Upstream {
    pub fn new() -> Arc<Upstream> {
        Arc::default()
    }

    /// Sends `req` (origin-form URI, headers final) to `addr` and waits for the response head.
    ///
    /// A request that never left (the connect failed) comes back with the error, so the caller
    /// may try another backend. A pooled connection that turns out closed is replaced by a fresh
    /// one: at once when hyper hands the request back unsent, and also when a bodyless GET, HEAD
    /// or OPTIONS got no response at all (the backend closed the connection as we wrote to it;
    /// replaying such a request is safe).
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<UpstreamBody>,
        limits: UpstreamLimits,
        now: Instant,
    ) -> Result<(Response<Incoming>, Lease), (UpstreamError, Option<Request<UpstreamBody>>)> {
        let mut fresh_only = false;
        loop {
            let taken = if fresh_only {
                None
            } else {
                self.take(addr, limits.idle_timeout, now)
            };
            let (mut sender, reused) = match taken {
                Some(s) => (s, true),
                None => match self.connect(addr, limits.connect_timeout).await {
                    Ok(s) => (s, false),
                    Err(e) => return Err((e, Some(req))),
                },
            };
            // A backend that dies, restarts or times an idle connection out can close it
            // under a request already written, and a GET then deserves another try, not a 502.
            let replay = if reused { Replay::of(&req) } else { None };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        sender,
                        addr,
                        max_idle: limits.max_idle,
                        pool: self.clone(),
                    };
                    return Ok((resp, lease));
                }
                Err(mut e) => {
                    let unsent = e.take_message();
                    let e = e.into_error();
                    if reused {
                        // A pooled connection the backend had closed: try a fresh one.
                        fresh_only = true;
                        if let Some(unsent) = unsent {
                            req = unsent;
                            continue;
                        }
                        // No response head came back (it would have been returned), so the
                        // backend closed the connection under the request: with an EOF, or with
                        // a reset when the close met the request's bytes unread. Either way a
                        // copy may go again; a malformed answer may not.
                        if let Some(replay) = replay.filter(|_| !e.is_parse()) {
                            req = replay.into_request();
                            continue;
                        }
                        return Err((UpstreamError::Http(e), None));
                    }
                    // A fresh connection closed before it took the request: the request never
                    // left, so the caller may try another backend.
                    return Err(match unsent {
                        Some(unsent) => (UpstreamError::Closed(e), Some(unsent)),
                        None => (UpstreamError::Http(e), None),
                    });
                }
            }
        }
    }

    /// A ready idle connection to `addr`, most recently used first, idle for less than
    /// `idle_timeout` at `now`.
    fn take(
        &self,
        addr: SocketAddr,
        idle_timeout: Duration,
        now: Instant,
    ) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&addr)?;
        while let Some(i) = list.pop_back() {
            if i.sender.is_ready() && now.saturating_duration_since(i.since) < idle_timeout {
                return Some(i.sender);
            }
            // Closed, busy or stale: dropping the sender lets its connection close.
        }
        None
    }

    fn put(&self, addr: SocketAddr, sender: SendRequest<UpstreamBody>, max_idle: usize) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() < max_idle {
            list.push_back(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for longer than the idle timeout.
    pub fn sweep(&self, idle_timeout: Duration) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|i| !i.sender.is_closed() && i.since.elapsed() < idle_timeout);
            !list.is_empty()
        });
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
            Err(_) => return Err(UpstreamError::ConnectTimeout(timeout)),
        };
        // No TCP keep-alive: a backend that vanishes is found by the health checks within
        // `fall` intervals, which then cut its tunnels; probes after 60 s idle found it minutes
        // later, and cost two setsockopt(2) calls per backend connection (HAProxy's and Envoy's
        // defaults do without them too).
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            // send(2) rather than writev(2), as on the client side (see `HttpBuilders`).
            .writev(false)
            // A response head must fit; the body is read a chunk at a time as the client takes
            // it, so this bounds what a backend's fast answer to a slow client costs (hyper's
            // default lets the buffer grow to 400 KiB).
            .max_buf_size(UPSTREAM_READ_BUF)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Http)?;
        // Boxed: hyper's connection state is large, and spawned by value it is copied into the
        // task's cell.
        tokio::spawn(Box::pin(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(backend = %addr, error = %e, "backend connection ended with an error");
            }
        }));
        Ok(sender)
    }
}

/// A bodyless GET, HEAD or OPTIONS kept aside, to be sent again if a reused connection dies
/// under it.
///
/// A copy of the request itself (its URI and `HeaderMap`, whose clone rebuilds the map's index)
/// cost ~1,100 instructions per proxied request, 4 % of all. A list of the headers costs one
/// allocation and a reference count per value, and the request is built from it again only
/// when it is needed, which is rare.
struct Replay {
    method: Method,
    target: PathAndQuery,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Replay {
    /// What it takes to send `req` again, for requests that are safe to repeat.
    fn of(req: &Request<UpstreamBody>) -> Option<Replay> {
        use hyper::body::Body as _;
        let idempotent = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        if !idempotent || !req.body().is_end_stream() {
            return None;
        }
        let mut headers = Vec::with_capacity(req.headers().len());
        headers.extend(req.headers().iter().map(|(n, v)| (n.clone(), v.clone())));
        Some(Replay {
            method: req.method().clone(),
            target: req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            headers,
        })
    }

    /// The request again, as HTTP/1.1 and without extensions.
    fn into_request(self) -> Request<UpstreamBody> {
        let mut req = Request::new(http_body_util::Either::Right(http_body_util::Empty::new()));
        *req.method_mut() = self.method;
        *req.uri_mut() = Uri::from(self.target);
        let headers = req.headers_mut();
        headers.reserve(self.headers.len());
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Either, Empty};

    fn get(headers: &[(&str, &str)]) -> Request<UpstreamBody> {
        let mut req = Request::new(Either::Right(Empty::new()));
        *req.uri_mut() = Uri::from_static("/room/a?x=1&y=%20");
        for (name, value) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        req
    }

    /// A replayed request carries what the first one did: method, target and every header
    /// value, repeated names and their order included.
    #[tokio::test]
    async fn a_replay_is_the_request_again() {
        let req = get(&[
            ("host", "media.example:8443"),
            ("x-forwarded-for", "10.0.0.1, 10.0.0.2"),
            ("cookie", "a=1"),
            ("x-custom-name", "v1"),
            ("cookie", "b=2"),
            ("x-custom-name", "v2"),
            ("accept", ""),
        ]);
        let again = Replay::of(&req)
            .expect("a bodyless GET is replayable")
            .into_request();
        assert_eq!(again.method(), Method::GET);
        assert_eq!(again.uri(), req.uri());
        assert_eq!(again.version(), http::Version::HTTP_11);
        assert_eq!(again.headers(), req.headers());
        let cookies: Vec<_> = again.headers().get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        let body = again.into_body().collect().await.expect("body").to_bytes();
        assert!(body.is_empty());
    }

    /// Only requests safe to repeat, without a body, are kept for a replay.
    #[test]
    fn only_bodyless_idempotent_requests_are_replayable() {
        for (method, replayable) in [
            (Method::GET, true),
            (Method::HEAD, true),
            (Method::OPTIONS, true),
            (Method::POST, false),
            (Method::PUT, false),
            (Method::DELETE, false),
        ] {
            let mut req = get(&[("host", "h")]);
            *req.method_mut() = method.clone();
            assert_eq!(Replay::of(&req).is_some(), replayable, "{method}");
        }
    }
}

//! Keep-alive HTTP/1.1 connections to backends: one pool per worker thread.
//!
//! hyper's `client::conn::http1` under a small pool of our own, rather than hyper-util's legacy
//! client: checkout is a lock-free-in-practice pop from a per-worker list keyed by address, no
//! task is spawned per request to watch for the connection's return, and a request that meets a
//! connection the backend had just closed comes back unsent and is retried once on a fresh one.
//! Placement is not decided here; `proxy.rs` names the address.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustc_hash::FxHashMap;
use tokio::net::TcpStream;

use crate::config::Limits;
use crate::proxy::UpstreamBody;

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
        req: Request<UpstreamBody>,
        limits: UpstreamLimits,
        now: Instant,
    ) -> Result<(Response<Incoming>, Lease), (UpstreamError, Option<Request<UpstreamBody>>)> {
        let mut req = req;
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
            // The copy is some 5 % of a request's instructions, but a backend that
            // dies, restarts or times an idle connection out can close it under a request
            // already written, and a GET then deserves another try, not a 502.
            let replay = if reused { replayable(&req) } else { None };
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
                        match replay {
                            Some(copy) if !e.is_parse() => {
                                req = copy;
                                continue;
                            }
                            _ => return Err((UpstreamError::Http(e), None)),
                        }
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
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let (sender, conn) = http1::Builder::new()
            // send(2) rather than writev(2), as on the client side (see `HttpBuilders`).
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(backend = %addr, error = %e, "backend connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// A copy of `req` to send again if a reused connection dies under it: only for requests safe to
/// repeat (GET, HEAD, OPTIONS) that carry no body.
fn replayable(req: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
    use http::Method;
    use hyper::body::Body as _;
    let idempotent = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !idempotent || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(http_body_util::Either::Right(http_body_util::Empty::new()));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

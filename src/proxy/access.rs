//! The access log (`[log] access`): one line per answered request, at target `rtcgate::access`,
//! written when the response has gone out (its last body byte handed on, or the client gone), so
//! that it carries the bytes sent and the whole duration, as HAProxy's and nginx's do; and one
//! per WebSocket tunnel when it closes. Its field names are stable (`[log] format = "json"`
//! writes them as JSON keys): client, method, path, status, pool, backend, sticky, ms, bytes,
//! complete; for tunnels also tunnel, reason, close_code, secs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::Method;

use crate::metrics::Outcome;

/// One request's line, filled in as the request goes and written when its response ends.
#[derive(Debug)]
pub struct AccessLine {
    pub client: SocketAddr,
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub pool: Option<String>,
    pub backend: Option<Arc<str>>,
    pub sticky: Option<Outcome>,
    pub started: Instant,
}

impl AccessLine {
    /// Writes the line: `bytes` of body sent, `complete` when the body went out whole.
    pub fn write(&self, bytes: u64, complete: bool) {
        tracing::info!(
            target: "rtcgate::access",
            client = %self.client,
            method = %self.method,
            path = %self.path,
            status = self.status,
            pool = self.pool.as_deref().unwrap_or("-"),
            backend = self.backend.as_deref().unwrap_or("-"),
            sticky = self.sticky.map_or("-", Outcome::as_str),
            ms = self.started.elapsed().as_secs_f64() * 1e3,
            bytes,
            complete,
        );
    }
}

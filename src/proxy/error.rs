//! What the client sees when rtcgate answers instead of a backend: [`ProxyError`] knows whether
//! the client, the pool or the backend failed, and maps it to 400 / 404 / 503 / 502 / 504 with a
//! short body that names no address. [`classify`] decides which backend failure is which.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use crate::balance::Rejection;
use crate::proxy::body::ResponseBody;
use crate::proxy::upstream::UpstreamError;
use crate::state::backend::Backend;

/// Seconds a client is told to wait in `Retry-After` when no backend can take it, on average:
/// each 503 says one of `RETRY_AFTER_SECS ± RETRY_AFTER_JITTER`, so that clients refused
/// together (a reconnect wave into a full pool) do not all come back in the same second.
pub const RETRY_AFTER_SECS: u64 = 5;
pub const RETRY_AFTER_JITTER: u64 = 2;

/// This 503's `Retry-After`: spread over `RETRY_AFTER_SECS ± RETRY_AFTER_JITTER` by a hash of
/// the clock and a per-thread count (no system call).
pub(super) fn retry_after() -> u64 {
    thread_local! {
        static COUNT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let n = COUNT.with(|c| {
        c.set(c.get().wrapping_add(1));
        c.get()
    });
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut seed = [0u8; 12];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    seed[8..].copy_from_slice(&nanos.to_le_bytes());
    let spread = xxhash_rust::xxh3::xxh3_64(&seed) % (2 * RETRY_AFTER_JITTER + 1);
    RETRY_AFTER_SECS - RETRY_AFTER_JITTER + spread
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
    /// The request names a machine its pool does not have → 404.
    #[error("no backend {0:?} in the pool")]
    NoMachine(String),
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
            ProxyError::NoRoute(_) | ProxyError::NoMachine(_) => StatusCode::NOT_FOUND,
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
            ProxyError::NoMachine(_) => "no such machine in this service",
            ProxyError::Rejected(Rejection::Full) => "every server is full; retry later",
            ProxyError::Rejected(Rejection::NoBackend) => "no server is available; retry later",
            ProxyError::Rejected(Rejection::Down) => "your server is down; retry later",
            ProxyError::Rejected(Rejection::RoomsFull) => {
                "every server holds as many rooms as it may; retry later"
            }
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
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after()));
        }
        resp
    }
}

/// Maps a failure to reach or hear from a backend to what the client should see.
pub(super) fn classify(backend: &Backend, e: UpstreamError) -> ProxyError {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_spreads_over_its_range() {
        let seen: std::collections::BTreeSet<u64> = (0..200).map(|_| retry_after()).collect();
        let range = RETRY_AFTER_SECS - RETRY_AFTER_JITTER..=RETRY_AFTER_SECS + RETRY_AFTER_JITTER;
        assert!(seen.iter().all(|s| range.contains(s)), "{seen:?}");
        assert_eq!(seen.len(), 5, "every second of the range is used: {seen:?}");
    }
}

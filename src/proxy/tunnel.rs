//! WebSocket upgrades: whether a request asks for one, and how each kind becomes the backend's.
//!
//! Two ways in: an HTTP/1.1 `Upgrade: websocket` request, forwarded as one; and an HTTP/2
//! extended CONNECT with `:protocol = websocket` (RFC 8441), opened to the backend as an
//! HTTP/1.1 upgrade with a key of our own. Either way the backend's `101` is checked against what
//! was asked. Then the bytes are `pump.rs`'s; placement, cookies and counting are the handler's.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Version};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// How a client asked for a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/1.1 `Connection: upgrade` + `Upgrade: websocket`.
    H1Upgrade,
    /// HTTP/2 extended CONNECT, `:protocol = websocket`.
    H2Connect,
}

/// Whether `req` asks for a WebSocket, and how.
pub fn websocket_kind<B>(req: &Request<B>) -> Option<Kind> {
    if req.method() == Method::CONNECT {
        let proto = req.extensions().get::<hyper::ext::Protocol>()?;
        return proto
            .as_str()
            .eq_ignore_ascii_case("websocket")
            .then_some(Kind::H2Connect);
    }
    if req.version() != Version::HTTP_11 || !has_token(req.headers(), header::UPGRADE, "websocket")
    {
        return None;
    }
    has_token(req.headers(), header::CONNECTION, "upgrade").then_some(Kind::H1Upgrade)
}

/// Whether the comma-separated header `name` lists `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Turns a WebSocket request (headers already cleaned of hop-by-hop fields) into the backend's
/// HTTP/1.1 upgrade request. Returns the `Sec-WebSocket-Accept` the backend must answer with.
pub fn prepare_upstream(
    kind: Kind,
    method: &mut Method,
    headers: &mut HeaderMap,
) -> Option<String> {
    if kind == Kind::H2Connect {
        // RFC 8441 §5: CONNECT with :protocol becomes the GET of RFC 6455, with a key of ours.
        *method = Method::GET;
        let mut key = [0u8; 16];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).is_err() {
            return None;
        }
        let key = STANDARD.encode(key);
        headers.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::try_from(key).ok()?);
        if !headers.contains_key(header::SEC_WEBSOCKET_VERSION) {
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    let accept = derive_accept_key(key.as_bytes());
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    Some(accept)
}

/// Whether the backend's `101` answers what was asked: a WebSocket, with the right accept key.
pub fn backend_agreed(headers: &HeaderMap, accept: &str) -> bool {
    has_token(headers, header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|v| v.as_bytes() == accept.as_bytes())
}

/// Shapes the backend's `101` headers (hop-by-hop already gone) for the client: an HTTP/1.1
/// client gets its upgrade confirmed; an HTTP/2 client gets a plain `200` without the accept key.
pub fn client_response_headers(kind: Kind, headers: &mut HeaderMap) {
    match kind {
        Kind::H1Upgrade => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        Kind::H2Connect => {
            headers.remove(header::SEC_WEBSOCKET_ACCEPT);
        }
    }
}

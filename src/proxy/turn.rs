//! TURN credentials from the front door (`[turn] path`): coturn's REST scheme
//! (`use-auth-secret`), minted for the users the application trusts, listing the TURN servers
//! that are up.
//!
//! The username is `<expiry>:<user>`, the password `base64(HMAC-SHA1(secret, username))`. Who
//! gets them is `auth`'s: `session`, a client holding a valid pin of the pool its host routes to
//! (it has been placed); `forward`, a client whom `auth_url` answers with a 2xx when asked with
//! the client's `Cookie` and `Authorization` (nginx's `auth_request`), the answer reused for
//! `auth_cache`; `none`, anyone. The user is the id the auth service names, else an opaque
//! random one: never the backend's name. The discovery endpoint's JSON carries the same
//! `iceServers` ([`ice_servers`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ring::hmac;

use crate::config::{Turn, TurnAuth};
use crate::proxy::body::ResponseBody;
use crate::proxy::conn::ConnInfo;
use crate::proxy::discovery;
use crate::proxy::headers::{request_host, strip_port};
use crate::state::snapshot::Snapshot;
use crate::state::turn::AuthAnswer;
use crate::state::Shared;
use crate::sticky::{self, CookiePin};

/// The HTTP client that asks the forward-auth service.
pub type AuthClient = Client<HttpConnector, Empty<Bytes>>;

pub fn auth_client() -> AuthClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(http)
}

/// Why a client gets no credentials.
#[derive(Debug)]
pub struct Denied {
    pub status: StatusCode,
    pub why: String,
}

/// Credentials for one client, as `RTCPeerConnection` takes them (`iceServers`) and as the
/// TURN REST draft names them.
pub fn ice_json(turn: &Turn, snap: &Snapshot, user: &str) -> serde_json::Value {
    let now = sticky::unix_now();
    let ttl = turn.ttl.as_secs();
    let username = format!("{}:{user}", now.saturating_add(ttl));
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &turn.secret);
    let password = STANDARD.encode(hmac::sign(&key, username.as_bytes()).as_ref());
    let urls = urls_up(snap);
    serde_json::json!({
        "iceServers": [{ "urls": urls, "username": username, "credential": password }],
        "ttl": ttl,
        "username": username,
        "password": password,
        "uris": urls,
    })
}

/// The URLs of the TURN servers that are up; all of them when none is (fail open, said in the
/// log at most every 10 s).
fn urls_up(snap: &Snapshot) -> Vec<&str> {
    let up: Vec<&str> = snap
        .turn
        .iter()
        .filter(|s| s.health.is_up())
        .map(|s| s.url.url.as_str())
        .collect();
    if !up.is_empty() {
        return up;
    }
    static LAST_WARNING: AtomicU64 = AtomicU64::new(0);
    let now = sticky::unix_now();
    let last = LAST_WARNING.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST_WARNING
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!("no TURN server passes its checks: handing out all of them");
    }
    snap.turn.iter().map(|s| s.url.url.as_str()).collect()
}

/// Answers a request for the TURN path.
pub(super) async fn answer<B>(
    client: &AuthClient,
    shared: &Shared,
    snap: &Snapshot,
    turn: &Turn,
    req: &Request<B>,
    conn: &ConnInfo,
) -> Response<ResponseBody> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({ "error": "use GET" }),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match credentials(client, shared, snap, turn, req, conn, false).await {
        Ok(ice) => json_response(StatusCode::OK, ice),
        Err(denied) => json_response(denied.status, serde_json::json!({ "error": denied.why })),
    }
}

/// Credentials for the client, when `auth` lets it have them: counted and, when refused, logged.
async fn credentials<B>(
    client: &AuthClient,
    shared: &Shared,
    snap: &Snapshot,
    turn: &Turn,
    req: &Request<B>,
    conn: &ConnInfo,
    placing: bool,
) -> Result<serde_json::Value, Denied> {
    let counters = &shared.metrics.turn_credentials;
    match authorize(client, shared, snap, turn, req, conn, placing).await {
        Ok(user) => {
            counters[0].inc();
            Ok(ice_json(turn, snap, &user))
        }
        Err(denied) => {
            counters[1].inc();
            tracing::info!(client = %conn.peer, status = denied.status.as_u16(), why = %denied.why, "TURN credentials refused");
            Err(denied)
        }
    }
}

/// The `iceServers` answer for a discovery caller, when `[turn]` lets them have credentials;
/// the caller is being placed, so `session` lets them.
pub(super) async fn ice_servers<B>(
    client: &AuthClient,
    shared: &Shared,
    snap: &Snapshot,
    req: &Request<B>,
    conn: &ConnInfo,
) -> Option<serde_json::Value> {
    let turn = snap.config.turn.as_ref()?;
    let mut ice = credentials(client, shared, snap, turn, req, conn, true)
        .await
        .ok()?;
    Some(ice["iceServers"].take())
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The user the credentials are for, or why there are none. `placing`: the request is a
/// discovery call, which places its caller (so `session` allows it).
async fn authorize<B>(
    client: &AuthClient,
    shared: &Shared,
    snap: &Snapshot,
    turn: &Turn,
    req: &Request<B>,
    conn: &ConnInfo,
    placing: bool,
) -> Result<String, Denied> {
    match turn.auth {
        TurnAuth::None => Ok(opaque_id()),
        TurnAuth::Session if placing || has_session(snap, req) => Ok(opaque_id()),
        TurnAuth::Session => Err(Denied {
            status: StatusCode::UNAUTHORIZED,
            why: "no rtcgate session: connect to the service first".into(),
        }),
        TurnAuth::Forward => {
            let key = credentials_digest(req.headers());
            let now = Instant::now();
            let answer = match shared.turn_auth.get(&key, now) {
                Some(a) => a,
                None => {
                    let a = ask(client, turn, req, conn).await?;
                    shared
                        .turn_auth
                        .put(key, now + turn.auth_cache, a.clone(), now);
                    a
                }
            };
            match answer {
                AuthAnswer::Allowed(user) => Ok(user.unwrap_or_else(opaque_id)),
                AuthAnswer::Refused { status, why } => Err(Denied {
                    status: StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
                    why,
                }),
            }
        }
    }
}

/// Whether the request carries a valid pin (cookie, or discovery's token) of the pool its
/// host routes to, naming a backend of that pool.
fn has_session<B>(snap: &Snapshot, req: &Request<B>) -> bool {
    let Some(pool) = request_host(req).and_then(|h| snap.route(strip_port(h))) else {
        return false;
    };
    let now = sticky::unix_now();
    let known = |p: CookiePin<'_>| matches!(p, CookiePin::Valid { backend, .. } if pool.member(backend).is_some());
    let cached = |id: &str| pool.member(id).and_then(|m| m.pin_cache.as_ref());
    if known(
        snap.sticky
            .pin(req.headers(), &pool.config.name, now, cached),
    ) {
        return true;
    }
    snap.config
        .discovery
        .as_ref()
        .and_then(|d| discovery::url_token(d, req))
        .is_some_and(|t| known(snap.sticky.verify_url_token(&pool.config.name, &t, now)))
}

/// SHA-256 over the client's `Cookie` and `Authorization` fields: the cache key of its auth
/// answer (a digest, so the cache holds no credentials and cannot be steered by collisions).
fn credentials_digest(headers: &HeaderMap) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for name in [header::COOKIE, header::AUTHORIZATION] {
        for v in headers.get_all(&name) {
            ctx.update(name.as_str().as_bytes());
            ctx.update(&(v.len() as u32).to_be_bytes());
            ctx.update(v.as_bytes());
        }
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// Asks the auth service about this client. Its own failure (unreachable, too slow) refuses
/// and is not cached.
async fn ask<B>(
    client: &AuthClient,
    turn: &Turn,
    req: &Request<B>,
    conn: &ConnInfo,
) -> Result<AuthAnswer, Denied> {
    let Some(url) = &turn.auth_url else {
        return Err(Denied {
            status: StatusCode::FORBIDDEN,
            why: "no auth_url".into(),
        });
    };
    let mut ask = Request::get(url.clone());
    for name in [header::COOKIE, header::AUTHORIZATION] {
        for v in req.headers().get_all(&name) {
            ask = ask.header(&name, v);
        }
    }
    ask = ask
        .header("x-forwarded-for", conn.peer.ip().to_string())
        .header("x-forwarded-proto", if conn.tls { "https" } else { "http" })
        .header("x-original-uri", req.uri().to_string());
    if let Some(host) = request_host(req) {
        ask = ask.header("x-forwarded-host", host);
    }
    let refused = |why: String| Denied {
        status: StatusCode::FORBIDDEN,
        why,
    };
    let ask = ask
        .body(Empty::new())
        .map_err(|e| refused(format!("auth request: {e}")))?;
    let resp = tokio::time::timeout(turn.auth_timeout, client.request(ask))
        .await
        .map_err(|_| {
            refused(format!(
                "the auth service did not answer within {:?}",
                turn.auth_timeout
            ))
        })?
        .map_err(|e| refused(format!("the auth service is unreachable: {e}")))?;
    let status = resp.status();
    Ok(if status.is_success() {
        let user = resp
            .headers()
            .get(&turn.auth_user_header)
            .and_then(|v| v.to_str().ok())
            .map(user_id)
            .filter(|u| !u.is_empty());
        AuthAnswer::Allowed(user)
    } else if status == StatusCode::UNAUTHORIZED {
        AuthAnswer::Refused {
            status: 401,
            why: "the auth service answered 401".into(),
        }
    } else {
        AuthAnswer::Refused {
            status: 403,
            why: format!("the auth service answered {}", status.as_u16()),
        }
    })
}

/// The auth service's user id as it can stand in a TURN username: at most 64 characters,
/// anything but letters, digits and `._@+-` replaced by `_`.
fn user_id(s: &str) -> String {
    s.trim()
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._@+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A random id for a user the auth service did not name: 96 bits, base64url.
fn opaque_id() -> String {
    let mut b = [0u8; 12];
    // The system's generator does not fail on Linux; were it to, the id is still unique
    // enough with the clock in it.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        b[..8].copy_from_slice(&sticky::unix_now().to_le_bytes());
    }
    URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_stay_one_plain_token() {
        assert_eq!(user_id(" alice@example.com "), "alice@example.com");
        assert_eq!(user_id("a:b c\n"), "a_b_c", "trimmed, then replaced");
        assert_eq!(user_id(&"x".repeat(100)).len(), 64);
        assert_ne!(opaque_id(), opaque_id());
        assert_eq!(opaque_id().len(), 16);
    }

    #[test]
    fn different_credentials_have_different_cache_keys() {
        let mut a = HeaderMap::new();
        a.insert(header::COOKIE, HeaderValue::from_static("sid=1"));
        let mut b = HeaderMap::new();
        b.insert(header::COOKIE, HeaderValue::from_static("sid=2"));
        let mut c = HeaderMap::new();
        c.insert(header::AUTHORIZATION, HeaderValue::from_static("sid=1"));
        assert_ne!(credentials_digest(&a), credentials_digest(&b));
        assert_ne!(
            credentials_digest(&a),
            credentials_digest(&c),
            "the field counts"
        );
        assert_eq!(credentials_digest(&a), credentials_digest(&a.clone()));
    }
}

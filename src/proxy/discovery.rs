//! The connection-string endpoint (`[discovery] path`, Voice Elements' `rtcloadbalance`):
//! rtcgate places the caller as it would place their WebSocket, holds a slot for them on the
//! backend chosen, and answers the URL to open.
//!
//! `?cluster=POOL&machine=ID&room=R&secure=true|false` (`IsSecure` too). The answer is the URL
//! alone as text, or `{url, pool, backend, expires}` with `Accept: application/json`; a failure
//! is a status of 400 or more with `ERROR: <reason>` (`{"error"}` in JSON), and `Retry-After`
//! when capacity is what is missing. In proxy mode the URL leads through rtcgate and carries a
//! signed pin token (`sticky.rs`), which the request path honours and strips; in direct mode it
//! is the backend's own `public_url`. Either way the slot counts in the backend's load until
//! the client arrives or the reservation lapses (`state::reservations`). Pages on the origins
//! of `cors_origins` may call it from another origin.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::balance::{self, Outcome, Placement, Rejection};
use crate::config::{Discovery, DiscoveryMode, WhenDown};
use crate::metrics::PoolMetrics;
use crate::proxy::body::ResponseBody;
use crate::proxy::error::retry_after;
use crate::proxy::headers::{query_value, request_host, strip_port};
use crate::state::backend::{Backend, Reserved};
use crate::state::reservations::Reservation;
use crate::state::rooms::RoomTunnel;
use crate::state::snapshot::{Pool, Snapshot};
use crate::state::Shared;
use crate::sticky;

/// Placements tried when concurrent calls take the chosen backend's last slots between the
/// choice and the reservation.
const RACES: usize = 4;

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: u32 = 600;

/// Answers a request for the discovery path (any method), from one snapshot.
pub(super) fn answer<B>(
    snap: &Snapshot,
    discovery: &Discovery,
    shared: &Shared,
    req: &Request<B>,
    tls: bool,
    ice_servers: Option<serde_json::Value>,
) -> Response<ResponseBody> {
    let cors = Cors::of(discovery, req.headers());
    let mut resp = match *req.method() {
        Method::OPTIONS => preflight(cors.as_ref(), req.headers()),
        Method::GET | Method::HEAD => {
            let json = wants_json(req.headers());
            let (pool, result) = discover(snap, discovery, shared, req, tls);
            let resp = match result {
                Ok(found) => found.into_response(json, ice_servers),
                Err(failure) => failure.into_response(json),
            };
            match pool {
                Some(p) => p.answered_without_backend(resp.status().as_u16()),
                None => shared.metrics.discovery_without_pool(),
            }
            resp
        }
        _ => {
            let mut r = Failure::new(StatusCode::METHOD_NOT_ALLOWED, "use GET".into())
                .into_response(wants_json(req.headers()));
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, OPTIONS"),
            );
            r
        }
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.append(header::VARY, HeaderValue::from_static("Origin, Accept"));
    if let Some(cors) = cors {
        cors.allow(h);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Retry-After"),
        );
    }
    resp
}

/// What a caller is handed.
struct Found {
    url: String,
    pool: String,
    backend: Arc<str>,
    /// Unix seconds: the pin token's expiry (proxy mode), or the reservation's (direct mode).
    expires: u64,
    set_cookie: Option<HeaderValue>,
}

impl Found {
    /// `ice_servers`: TURN credentials for the caller, in JSON answers.
    fn into_response(
        self,
        json: bool,
        ice_servers: Option<serde_json::Value>,
    ) -> Response<ResponseBody> {
        let mut resp = if json {
            let mut body = serde_json::json!({
                "url": self.url,
                "pool": self.pool,
                "backend": &*self.backend,
                "expires": self.expires,
            });
            if let Some(ice) = ice_servers {
                body["iceServers"] = ice;
            }
            respond(StatusCode::OK, body.to_string(), "application/json")
        } else {
            respond(StatusCode::OK, self.url, "text/plain; charset=utf-8")
        };
        if let Some(c) = self.set_cookie {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
        resp
    }
}

/// Why a caller gets no URL.
struct Failure {
    status: StatusCode,
    reason: String,
}

impl Failure {
    fn new(status: StatusCode, reason: String) -> Failure {
        Failure { status, reason }
    }

    fn into_response(self, json: bool) -> Response<ResponseBody> {
        let mut resp = if json {
            let body = serde_json::json!({ "error": self.reason });
            respond(self.status, body.to_string(), "application/json")
        } else {
            let body = format!("ERROR: {}", self.reason);
            respond(self.status, body, "text/plain; charset=utf-8")
        };
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after()));
        }
        resp
    }
}

fn respond(status: StatusCode, body: String, content_type: &'static str) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Whether the caller asked for JSON.
pub(super) fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.split(';').next().unwrap_or("").trim();
            t.eq_ignore_ascii_case("application/json")
        })
}

/// The parameters of a discovery call. Names are matched without regard to case, as the
/// Voice Elements clients in the wild spell them (`IsSecure`, `isSecure`, `secure`).
struct Asked<'r> {
    cluster: Option<Cow<'r, str>>,
    machine: Option<Cow<'r, str>>,
    room: Option<Cow<'r, str>>,
    secure: Option<Cow<'r, str>>,
}

impl<'r> Asked<'r> {
    fn of(query: Option<&'r str>) -> Asked<'r> {
        let mut asked = Asked {
            cluster: None,
            machine: None,
            room: None,
            secure: None,
        };
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match k.to_ascii_lowercase().as_str() {
                "cluster" => &mut asked.cluster,
                "machine" => &mut asked.machine,
                "room" => &mut asked.room,
                "secure" | "issecure" => &mut asked.secure,
                _ => continue,
            };
            let v = match v {
                Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
                Cow::Owned(s) => Cow::Owned(s.trim().to_string()),
            };
            if slot.is_none() && !v.is_empty() {
                *slot = Some(v);
            }
        }
        asked
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Names from the caller shown back in an `ERROR:` line: at most 64 characters of the safe
/// ones, so that the line stays one line and carries nothing a page could take for markup.
fn shown(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.:@ ".contains(*c))
        .take(64)
        .collect()
}

/// Places the caller and builds their URL; also says which pool counts the answer.
fn discover<'s, B>(
    snap: &'s Snapshot,
    d: &Discovery,
    shared: &Shared,
    req: &Request<B>,
    tls: bool,
) -> (Option<&'s Arc<PoolMetrics>>, Result<Found, Failure>) {
    let asked = Asked::of(req.uri().query());
    let host = request_host(req);
    let pool = match &asked.cluster {
        Some(c) => snap.pool(c).ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                format!("unknown cluster \"{}\"", shown(c)),
            )
        }),
        None => host.and_then(|h| snap.route(strip_port(h))).ok_or_else(|| {
            Failure::new(StatusCode::NOT_FOUND, "no cluster serves this host".into())
        }),
    };
    let pool = match pool {
        Ok(p) => p,
        Err(f) => {
            // An unknown cluster is counted in the pool of the caller's host, if there is one.
            let routed = host.and_then(|h| snap.route(strip_port(h)));
            if let Some(p) = routed {
                p.metrics.discovery(false);
            }
            return (routed.map(|p| &p.metrics), Err(f));
        }
    };
    let result = place_and_reserve(snap, pool, d, shared, req, &asked, tls);
    pool.metrics.discovery(result.is_ok());
    (Some(&pool.metrics), result)
}

fn place_and_reserve<B>(
    snap: &Snapshot,
    pool: &Pool,
    d: &Discovery,
    shared: &Shared,
    req: &Request<B>,
    asked: &Asked<'_>,
    tls: bool,
) -> Result<Found, Failure> {
    let secure = match asked.secure.as_deref() {
        None => tls,
        Some(s) => parse_bool(s).ok_or_else(|| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                format!("secure must be true or false, not \"{}\"", shown(s)),
            )
        })?,
    };
    let machine = match asked.machine.as_deref() {
        Some(id) => Some(pool.member(id).ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown machine \"{}\" in cluster {}",
                    shown(id),
                    pool.config.name
                ),
            )
        })?),
        None => None,
    };
    // A room only where the pool has rooms, as on every other request.
    let room = asked
        .room
        .as_deref()
        .filter(|_| pool.config.room_param.is_some());
    let now = sticky::unix_now();
    let cached = |id: &str| pool.member(id).and_then(|m| m.pin_cache.as_ref());
    let pin = snap
        .sticky
        .pin(req.headers(), &pool.config.name, now, cached);
    let reserve = !d.reservation.is_zero();
    // Place, then reserve with the cap checked again: a call that lost the last slot to a
    // concurrent one places again.
    // `Err(None)`: the slot went to a concurrent call.
    let decide = |live_on: Option<&str>| -> Result<(Chosen<'_>, &Arc<Backend>), Option<Rejection>> {
        let placed = match machine {
            Some(m) => balance::place_on(pool, m, pin, WhenDown::Reject),
            None => {
                let room = room.map(|name| balance::Room { name, live_on });
                balance::place(pool, pin, room, snap.sticky.when_down)
            }
        }
        .map_err(Some)?;
        let backend = &placed.member.backend;
        // A user pinned there already is admitted past the cap, as their WebSocket would be.
        let cap = (placed.outcome != Outcome::Hit).then_some(placed.member.max_sessions);
        let slot = match reserve {
            true => Some(backend.reserve(cap).ok_or(None)?),
            false => None,
        };
        Ok((Chosen { placed, slot }, backend))
    };
    let mut outcome = Err(None);
    for _ in 0..RACES {
        outcome = match room {
            Some(r) => shared
                .rooms
                .join(&pool.config.name, r, decide)
                .map(|(placed, t)| (placed, Some(t))),
            None => decide(None).map(|(placed, _)| (placed, None)),
        };
        if !matches!(outcome, Err(None)) {
            break;
        }
    }
    let (Chosen { placed, slot }, in_room): (Chosen<'_>, Option<RoomTunnel>) = match outcome {
        Ok(ok) => ok,
        Err(reason) => {
            let reason = reason.unwrap_or(Rejection::Full);
            pool.metrics.rejected(reason);
            return Err(refusal(pool, machine.map(|m| &*m.backend.id), reason));
        }
    };
    pool.metrics.sticky(placed.outcome);
    let backend = placed.member.backend.clone();
    let until = Instant::now() + d.reservation;
    if let Some(slot) = slot {
        shared.reservations.hold(Reservation {
            until,
            slot,
            room: in_room.map(|t| (room.unwrap_or_default().to_string(), t)),
        });
    }
    let set_cookie = placed.set_cookie.then(|| match &placed.member.pin_cache {
        Some(c) => c.set_cookie(tls),
        None => snap
            .sticky
            .set_cookie(&pool.config.name, &backend.id, now, tls),
    });
    let (url, expires) = match d.mode {
        DiscoveryMode::Proxy => {
            let expires = now.saturating_add(d.token_ttl.as_secs().max(1));
            let token = snap
                .sticky
                .sign_url_token(&pool.config.name, &backend.id, expires);
            let host = public_host(snap, d, req, tls, secure).ok_or_else(|| {
                Failure::new(StatusCode::BAD_REQUEST, "the request names no host".into())
            })?;
            let mut query = form_urlencoded::Serializer::new(String::new());
            if let (Some(param), Some(room)) = (&pool.config.room_param, room) {
                query.append_pair(param, room);
            }
            query.append_pair(&d.token_param, &token);
            let scheme = if secure { "wss" } else { "ws" };
            let url = format!("{scheme}://{host}{}?{}", d.ws_path, query.finish());
            (url, expires)
        }
        DiscoveryMode::Direct => {
            let url = pool
                .config
                .backends
                .iter()
                .find(|b| *b.id == *backend.id)
                .and_then(|b| b.public_url.clone())
                .ok_or_else(|| {
                    Failure::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("machine {} has no public URL", backend.id),
                    )
                })?;
            (url, now.saturating_add(secs_up(d.reservation)))
        }
    };
    Ok(Found {
        url,
        pool: pool.config.name.clone(),
        backend: backend.id.clone(),
        expires,
        set_cookie,
    })
}

/// A placement and the slot reserved on it.
struct Chosen<'a> {
    placed: Placement<'a>,
    slot: Option<Reserved>,
}

fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The `ERROR:` for a placement that found no backend.
fn refusal(pool: &Pool, machine: Option<&str>, reason: Rejection) -> Failure {
    let name = &pool.config.name;
    let reason = match (machine, reason) {
        (Some(m), Rejection::Full) => format!("machine {m} is full"),
        (Some(m), _) => format!("machine {m} is down"),
        (None, Rejection::Full) => format!("every server of cluster {name} is full"),
        (None, Rejection::NoBackend) => format!("no server of cluster {name} is available"),
        (None, Rejection::Down) => "your server is down".into(),
        (None, Rejection::RoomsFull) => {
            format!("every server of cluster {name} holds as many rooms as it may")
        }
    };
    Failure::new(StatusCode::SERVICE_UNAVAILABLE, reason)
}

/// `host[:port]` for a proxy-mode URL: the configured public host, else the request's own. When
/// the caller asks for the other scheme and the request came to the port of one of rtcgate's
/// listeners, the URL names the other listener's port.
fn public_host<B>(
    snap: &Snapshot,
    d: &Discovery,
    req: &Request<B>,
    tls: bool,
    secure: bool,
) -> Option<String> {
    if let Some(h) = &d.public_host {
        return Some(h.clone());
    }
    let host = request_host(req)?;
    let listen = &snap.config.listen;
    let (here, there) = match tls {
        true => (listen.https, listen.http),
        false => (listen.http, listen.https),
    };
    let name = strip_port(host);
    let port = host[name.len()..].strip_prefix(':');
    match (secure != tls, port, here, there) {
        (true, Some(p), Some(here), Some(there))
            if here.port() != 0 && p == here.port().to_string() =>
        {
            Some(format!("{name}:{}", there.port()))
        }
        _ => Some(host.to_string()),
    }
}

/// The caller's origin, when `cors_origins` lets it call.
struct Cors {
    origin: HeaderValue,
    /// Listed by name, so its pages may send their cookies (not with `*`).
    credentials: bool,
}

impl Cors {
    fn of(d: &Discovery, headers: &HeaderMap) -> Option<Cors> {
        let origin = headers.get(header::ORIGIN)?;
        let lower = origin.to_str().ok()?.to_ascii_lowercase();
        if d.cors_origins.contains(&lower) {
            return Some(Cors {
                origin: origin.clone(),
                credentials: true,
            });
        }
        d.cors_origins.iter().any(|o| o == "*").then(|| Cors {
            origin: HeaderValue::from_static("*"),
            credentials: false,
        })
    }

    fn allow(&self, h: &mut HeaderMap) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.origin.clone());
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

/// An `OPTIONS` request: a CORS preflight from an allowed origin gets 204 with what it may
/// send; one from any other origin 403; a plain `OPTIONS` the methods.
fn preflight(cors: Option<&Cors>, headers: &HeaderMap) -> Response<ResponseBody> {
    let asks = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD);
    let json = wants_json(headers);
    let mut resp = match (headers.contains_key(header::ORIGIN), asks, cors) {
        (false, _, _) | (true, None, _) => {
            let mut r = respond(StatusCode::NO_CONTENT, String::new(), "text/plain");
            r.headers_mut().remove(header::CONTENT_TYPE);
            r
        }
        (true, Some(_), None) => {
            return Failure::new(StatusCode::FORBIDDEN, "this origin may not call".into())
                .into_response(json)
        }
        (true, Some(m), Some(_)) if m != "GET" && m != "HEAD" => {
            return Failure::new(StatusCode::METHOD_NOT_ALLOWED, "use GET".into())
                .into_response(json)
        }
        (true, Some(_), Some(_)) => {
            let mut r = respond(StatusCode::NO_CONTENT, String::new(), "text/plain");
            let h = r.headers_mut();
            h.remove(header::CONTENT_TYPE);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, HEAD"),
            );
            if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
            }
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from(PREFLIGHT_MAX_AGE),
            );
            r
        }
    };
    resp.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_static("GET, HEAD, OPTIONS"),
    );
    resp
}

/// The pin token a request carries in its query, when discovery is on.
pub(super) fn url_token<B>(d: &Discovery, req: &Request<B>) -> Option<String> {
    query_value(req.uri(), &d.token_param).map(Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_read_whatever_their_case() {
        let a = Asked::of(Some("Cluster=media&MACHINE=m2&room=a%20b&IsSecure=true"));
        assert_eq!(a.cluster.as_deref(), Some("media"));
        assert_eq!(a.machine.as_deref(), Some("m2"));
        assert_eq!(a.room.as_deref(), Some("a b"));
        assert_eq!(a.secure.as_deref().and_then(parse_bool), Some(true));
        let empty = Asked::of(Some("cluster=&machine"));
        assert!(empty.cluster.is_none() && empty.machine.is_none());
        assert_eq!(parse_bool("maybe"), None);
    }

    #[test]
    fn names_shown_back_stay_one_plain_line() {
        assert_eq!(shown("<script>\nx"), "scriptx");
        assert_eq!(shown(&"a".repeat(100)).len(), 64);
    }
}

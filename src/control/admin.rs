//! The admin listener: `/metrics`, `/status`, a status page, and the calls that change a
//! backend's admin state or reload the config.
//!
//! It runs on the control runtime, apart from the workers serving traffic. Reads are open (the
//! listener is meant for loopback or a private network) unless `[admin] token_for_reads` is set
//! (the status page's own files stay open: they carry no data, their script fetches `/status`);
//! when `[admin] token` is set, every mutation needs `Authorization: Bearer <token>`, compared in
//! constant time over digests, so that neither a prefix nor the length shows in the timing.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::balance;
use crate::control::runtime::{AdminError, Runtime};
use crate::metrics::{BackendGauges, PoolGauges};
use crate::state::backend::{AdminState, Backend, CheckRecord};
use crate::state::snapshot::{Member, Snapshot};

type Body = Full<Bytes>;

/// Serves the admin API on `listener` until `shutdown` is cancelled.
pub(super) async fn serve(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                // Out of descriptors: one from the reserve, and the accept again at once.
                Err(e) if crate::state::fds::out_of_fds(&e)
                    && crate::state::fds::reserve().release("admin accept", &e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
            // Every listener closes at once; connections already open are still served.
            _ = runtime.shared().closing.cancelled() => return,
        };
        let runtime = runtime.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let runtime = runtime.clone();
                async move { Ok::<_, Infallible>(route(&runtime, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(client = %peer, error = %e, "admin connection error");
                    }
                }
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

async fn route(runtime: &Runtime, req: Request<Incoming>) -> Response<Body> {
    if let Some(refused) = refuse_foreign(runtime, &req) {
        return refused;
    }
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    // With `token_for_reads`, everything but the probes and the page's own files needs the
    // token (mutations check it below either way). The page carries no data: its script asks
    // for the token and sends it with each poll of `/status`.
    let open = matches!(
        segments.as_slice(),
        ["live"] | ["ready"] | [] | ["page.js"] | ["page.css"]
    );
    if !open && runtime.snapshot().config.admin.token_for_reads {
        if let Some(denied) = authorize(runtime, &req) {
            return denied;
        }
    }
    match segments.as_slice() {
        [] => get_only(&method, || {
            page_file("text/html; charset=utf-8", include_str!("admin_page.html"))
        }),
        ["page.js"] => get_only(&method, || {
            page_file(
                "text/javascript; charset=utf-8",
                include_str!("admin_page.js"),
            )
        }),
        ["page.css"] => get_only(&method, || {
            page_file("text/css; charset=utf-8", include_str!("admin_page.css"))
        }),
        ["metrics"] => get_only(&method, || {
            let text = render_metrics(runtime);
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            )
        }),
        // Kubernetes' probes: alive while it answers; ready until shutdown begins.
        ["live"] => get_only(&method, || {
            reply(StatusCode::OK, "text/plain", "live\n".into())
        }),
        ["ready"] => get_only(&method, || {
            if runtime
                .shared()
                .stopping
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "stopping\n".into(),
                )
            } else {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            }
        }),
        ["status"] => get_only(&method, || {
            json_reply(StatusCode::OK, status(runtime, &runtime.snapshot()))
        }),
        ["pools", pool, "backends", id, action] => {
            let state = match *action {
                "drain" => AdminState::Draining,
                "maint" => AdminState::Maint,
                "enable" => AdminState::Enabled,
                _ => return not_found(),
            };
            if method != Method::POST {
                return not_allowed("POST");
            }
            if let Some(denied) = authorize(runtime, &req) {
                return denied;
            }
            match runtime.set_admin_state(pool, id, state) {
                Ok(()) => {}
                Err(AdminError::NoSuchBackend) => {
                    return json_reply(
                        StatusCode::NOT_FOUND,
                        json!({ "error": format!("no backend {id} in pool {pool}") }),
                    )
                }
                Err(AdminError::Removed) => {
                    return json_reply(
                        StatusCode::CONFLICT,
                        json!({ "error": format!("{id} was removed from the configuration and is draining out") }),
                    )
                }
            }
            let snap = runtime.snapshot();
            match snap.pool(pool).and_then(|p| p.member(id)) {
                Some(member) => json_reply(StatusCode::OK, backend_json(member)),
                None => json_reply(
                    StatusCode::CONFLICT,
                    json!({ "error": "the backend left the configuration" }),
                ),
            }
        }
        ["pools", pool, "backends", id] => {
            let (pool, id) = (pool.to_string(), id.to_string());
            membership(runtime, req, &pool, &id).await
        }
        ["reload"] => {
            if method != Method::POST {
                return not_allowed("POST");
            }
            if let Some(denied) = authorize(runtime, &req) {
                return denied;
            }
            match runtime.reload() {
                Ok(()) => json_reply(StatusCode::OK, json!({ "result": "ok" })),
                Err(e) => json_reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({ "result": "error", "error": e }),
                ),
            }
        }
        _ => not_found(),
    }
}

/// `/metrics`, with the state gauges read from the current snapshot's backends.
fn render_metrics(runtime: &Runtime) -> String {
    let snap = runtime.snapshot();
    let backends = snap.pools.iter().flat_map(|p| &p.members).map(|m| {
        let b = &m.backend;
        BackendGauges {
            pool: &b.pool,
            id: &b.id,
            up: b.is_up(),
            sessions: b.sessions(),
            inflight: b.inflight(),
            state: b.state_name(),
            max_sessions: m.max_sessions,
            rooms: b.rooms(),
        }
    });
    let heads: Vec<_> = snap
        .pools
        .iter()
        .map(|p| (p, balance::headroom(p)))
        .collect();
    let pools = heads.iter().map(|(p, h)| PoolGauges {
        pool: &p.config.name,
        capacity: h.capacity,
        headroom: h.share,
    });
    let turn = snap
        .turn
        .iter()
        .map(|t| (t.url.url.as_str(), t.health.is_up()));
    runtime.metrics().render(backends, pools, turn)
}

fn get_only(method: &Method, f: impl FnOnce() -> Response<Body>) -> Response<Body> {
    if method == Method::GET || method == Method::HEAD {
        f()
    } else {
        not_allowed("GET, HEAD")
    }
}

/// `None` when the request may mutate; otherwise the 401 to send.
/// Largest body a membership call may send.
const MAX_MEMBER_BODY: usize = 64 * 1024;

/// `PUT` (add or update), `DELETE` (drain out) and `GET` one backend of a pool.
async fn membership(
    runtime: &Runtime,
    req: Request<Incoming>,
    pool: &str,
    id: &str,
) -> Response<Body> {
    let method = req.method().clone();
    if method == Method::GET {
        let snap = runtime.snapshot();
        return match snap.pool(pool).and_then(|p| p.member(id)) {
            Some(m) => json_reply(StatusCode::OK, backend_json(m)),
            None => not_found(),
        };
    }
    if method != Method::PUT && method != Method::DELETE {
        return not_allowed("GET, PUT, DELETE");
    }
    if let Some(denied) = authorize(runtime, &req) {
        return denied;
    }
    let error = |status: StatusCode, e: String| json_reply(status, json!({ "error": e }));
    let result = if method == Method::PUT {
        let limited = http_body_util::Limited::new(req.into_body(), MAX_MEMBER_BODY);
        let body = match http_body_util::BodyExt::collect(limited).await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body: {e}")),
        };
        let backend: crate::config::ApiBackend = match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("write {{\"address\": \"IP:port\", \"weight\", \"max_sessions\", \"max_rooms\", \"public_url\"}}: {e}"),
                )
            }
        };
        runtime.put_backend(pool, id, backend).map(Some)
    } else {
        runtime.delete_backend(pool, id).map(|()| None)
    };
    use crate::control::membership::MemberError;
    match result {
        Ok(Some(created)) => {
            let snap = runtime.snapshot();
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            match snap.pool(pool).and_then(|p| p.member(id)) {
                Some(m) => json_reply(status, backend_json(m)),
                None => json_reply(status, json!({ "id": id })),
            }
        }
        Ok(None) => json_reply(
            StatusCode::ACCEPTED,
            json!({ "id": id, "state": "draining", "removed": "when nothing is left on it" }),
        ),
        Err(MemberError::NoSuchPool) => error(StatusCode::NOT_FOUND, format!("no pool {pool}")),
        Err(MemberError::NotFound) => error(
            StatusCode::NOT_FOUND,
            format!("no backend {id} added through the admin API in pool {pool}"),
        ),
        Err(MemberError::InTheFile) => error(
            StatusCode::CONFLICT,
            format!("the configuration file lists {id}: change it there"),
        ),
        Err(MemberError::Invalid(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(MemberError::StateFile(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the state file cannot be written, nothing changed: {e}"),
        ),
    }
}

/// Refuses what a web page elsewhere could make a browser send here (403):
/// - a `Host` that is not an IP literal, `localhost` or one of `[admin] hosts`: a DNS-rebinding
///   page reaches the listener under a name of its own, and would otherwise read `/status`;
/// - a mutation from another site: `Sec-Fetch-Site` other than `same-origin` or `none`, or an
///   `Origin` that is not this listener's (the check Go's `CrossOriginProtection` makes). Tools
///   such as curl send neither, and are not affected.
fn refuse_foreign(runtime: &Runtime, req: &Request<Incoming>) -> Option<Response<Body>> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts
        .next()
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if hosts.next().is_some() {
        return Some(json_reply(
            StatusCode::BAD_REQUEST,
            json!({ "error": "two Host headers" }),
        ));
    }
    let name = host.rsplit_once(':').map_or(host, |(n, p)| {
        if p.bytes().all(|c| c.is_ascii_digit()) {
            n
        } else {
            host
        }
    });
    let name = name.trim_start_matches('[').trim_end_matches(']');
    // No Host at all (an HTTP/1.0 health check, HAProxy's `option httpchk`) is no browser's.
    let known = host.is_empty()
        || name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || runtime
            .snapshot()
            .config
            .admin
            .hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name));
    let refuse = |why: String| Some(json_reply(StatusCode::FORBIDDEN, json!({ "error": why })));
    if !known {
        return refuse(format!(
            "Host {host:?} is not a name of this admin listener; add it to [admin] hosts"
        ));
    }
    if matches!(
        req.method(),
        &Method::GET | &Method::HEAD | &Method::OPTIONS
    ) {
        return None;
    }
    let h = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
    if let Some(site) = h("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return refuse(format!("a {site} request may not change anything here"));
        }
    } else if let Some(origin) = h("origin") {
        let same = origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host));
        if !same {
            return refuse(format!(
                "a request from {origin} may not change anything here"
            ));
        }
    }
    None
}

fn authorize(runtime: &Runtime, req: &Request<Incoming>) -> Option<Response<Body>> {
    let snap = runtime.snapshot();
    let token = snap.config.admin.token.as_deref()?;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()))
        .unwrap_or_default();
    if token_matches(given, token.as_bytes()) {
        return None;
    }
    let mut resp = json_reply(
        StatusCode::UNAUTHORIZED,
        json!({ "error": "a valid admin token is required" }),
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(resp)
}

/// The credentials of an `Authorization: Bearer …` value; the scheme is matched without regard
/// to case (RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    Some(rest.trim_ascii())
}

/// Whether `given` is the token, in a time that tells neither how much of it matched nor how
/// long the token is: SHA-256 digests of both are compared in constant time.
fn token_matches(given: &[u8], token: &[u8]) -> bool {
    let digest = |b: &[u8]| ring::digest::digest(&ring::digest::SHA256, b);
    bool::from(digest(given).as_ref().ct_eq(digest(token).as_ref()))
}

fn backend_json(m: &Member) -> serde_json::Value {
    let b: &Backend = &m.backend;
    json!({
        "id": &*b.id,
        "address": b.addr.to_string(),
        "state": b.state_name(),
        // The operator's (or agent's) state alone: `state` says "down" whatever it is.
        "admin": match b.admin() {
            AdminState::Enabled => "enabled",
            AdminState::Draining => "draining",
            AdminState::Maint => "maint",
        },
        "sessions": b.sessions(),
        "load": b.load(),
        "inflight": b.inflight(),
        "reserved": b.reserved(),
        "rooms": b.rooms(),
        "max_rooms": m.max_rooms,
        "report": {
            "sessions": b.report().0,
            "rooms": b.report().1,
            "weight_percent": b.agent_weight(),
        },
        "admin_by": if b.admin_by_agent() { "agent" } else { "operator" },
        "weight": m.weight,
        "max_sessions": m.max_sessions,
        "healthy": b.is_up(),
        "drained": b.drained(),
        "last_check": b.last_check().map(check_json),
    })
}

/// A pool's backends named by DNS: each name, its addresses' backends, its last lookup.
fn dns_json(runtime: &Runtime, p: &crate::config::PoolConfig) -> Vec<serde_json::Value> {
    let resolved = runtime.dns().resolved();
    p.dns_backends
        .iter()
        .map(|d| {
            let addresses = resolved.get(&(p.name.clone(), d.id.clone()));
            let outcome = runtime.dns().outcome(&p.name, &d.id);
            json!({
                "id": d.id,
                "name": d.lookup.to_string(),
                "backends": addresses.into_iter().flatten().map(|a| d.at(*a).id).collect::<Vec<_>>(),
                "last_lookup": outcome.map(|o| json!({
                    "at": humantime::format_rfc3339_seconds(o.at).to_string(),
                    "error": o.error,
                })),
            })
        })
        .collect()
}

fn check_json(c: CheckRecord) -> serde_json::Value {
    json!({
        "at": humantime::format_rfc3339_seconds(c.at).to_string(),
        "result": if c.passed { "pass" } else { "fail" },
        "detail": c.detail,
    })
}

/// Every pool and backend, as `GET /status` answers.
pub fn status(runtime: &Runtime, snap: &Snapshot) -> serde_json::Value {
    let pools: Vec<_> = snap
        .pools
        .iter()
        .map(|p| {
            let h = balance::headroom(p);
            json!({
                "name": p.config.name,
                "capacity_sessions": h.capacity,
                "sessions": h.sessions,
                "capacity_rooms": h.room_capacity,
                "rooms": h.rooms,
                "headroom": h.share,
                "scale": runtime.scale_decisions(&p.config.name).into_iter().map(|d| json!({
                    "at": humantime::format_rfc3339_seconds(d.at).to_string(),
                    "direction": d.direction,
                    "decision": d.what,
                })).collect::<Vec<_>>(),
                "backends": p.members.iter().map(backend_json).collect::<Vec<_>>(),
                "dns": dns_json(runtime, &p.config),
            })
        })
        .collect();
    let reload = runtime.reload_status();
    let at = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let turn: Vec<_> = snap
        .turn
        .iter()
        .map(|t| {
            json!({
                "url": t.url.url,
                "up": t.health.is_up(),
                "last_check": t.health.last_check().map(check_json),
            })
        })
        .collect();
    let events: Vec<_> = runtime
        .shared()
        .events
        .recent()
        .into_iter()
        .map(|e| {
            json!({
                "time": at(e.time),
                "event": e.event,
                "pool": e.pool,
                "backend": e.backend,
                "detail": e.detail,
            })
        })
        .collect();
    json!({
        "pools": pools,
        "turn": turn,
        "events": events,
        "config": snap.config.source.display().to_string(),
        "reload": {
            "last_ok": reload.last_ok.map(at),
            "last_error": reload.last_error.map(|(t, e)| json!({ "at": at(t), "error": e })),
        },
    })
}

/// A file of the status page, under a policy that lets it load only its own script and style
/// and talk only to this listener: no inline script, nothing from elsewhere.
fn page_file(content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut resp = reply(StatusCode::OK, content_type, body.to_string());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    reply(status, "application/json", format!("{v:#}\n"))
}

fn not_found() -> Response<Body> {
    json_reply(
        StatusCode::NOT_FOUND,
        json!({ "error": "no such admin endpoint" }),
    )
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = json_reply(
        StatusCode::METHOD_NOT_ALLOWED,
        json!({ "error": format!("use {allow}") }),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case_and_the_token_exactly() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"BEARER   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearerabc"), None);
        assert_eq!(bearer(b"Bear"), None);
        assert!(token_matches(b"s3cret", b"s3cret"));
        for wrong in [
            &b""[..],
            b"s3cre",
            b"s3cret ",
            b"S3cret",
            b"s3cret-and-more",
        ] {
            assert!(!token_matches(wrong, b"s3cret"), "{wrong:?}");
        }
    }
}

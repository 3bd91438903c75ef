//! Header hygiene and the backend's request: what the request path reads from a client's
//! request (host, room) and how the request becomes the backend's (origin URI, hop-by-hop
//! headers gone, HTTP/2 cookies joined, the forwarding headers added).
//!
//! Hop-by-hop: the static list of RFC 9110 §7.6.1 plus every name `Connection` lists, on the way
//! in and on the way out; `Upgrade`/`Connection` are added back only for a WebSocket (by
//! `tunnel.rs`). The proxy's own cookie is taken out by `sticky.rs` before this runs.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Uri, Version};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Incoming};

use crate::proxy::conn::ConnInfo;
use crate::proxy::error::ProxyError;
use crate::proxy::tunnel;
use crate::proxy::upstream::UpstreamBody;

/// The room a request names: the pool's room query parameter, else the `X-Rtcgate-Room` header.
/// Only where the pool names a room parameter: with rooms off, the header must not let a
/// client choose its backend.
pub(super) fn room_of<'r, B>(req: &'r Request<B>, param: Option<&str>) -> Option<Cow<'r, str>> {
    named(req, param?, &X_RTCGATE_ROOM)
}

/// The backend id a request names: the pool's machine query parameter, else the
/// `X-Rtcgate-Machine` header; only where the pool names a machine parameter.
pub(super) fn machine_of<'r, B>(req: &'r Request<B>, param: Option<&str>) -> Option<Cow<'r, str>> {
    named(req, param?, &X_RTCGATE_MACHINE)
}

/// The value of query parameter `param`, else of header `header`; never empty.
fn named<'r, B>(req: &'r Request<B>, param: &str, header: &HeaderName) -> Option<Cow<'r, str>> {
    query_value(req.uri(), param)
        .or_else(|| {
            req.headers()
                .get(header)
                .and_then(|v| v.to_str().ok())
                .map(|v| Cow::Borrowed(v.trim()))
        })
        .filter(|r| !r.is_empty())
}

/// The (decoded) value of query parameter `param`, the first if several.
pub(super) fn query_value<'u>(uri: &'u Uri, param: &str) -> Option<Cow<'u, str>> {
    let q = uri.query()?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == param)
        .map(|(_, v)| v)
}

/// `uri` without any query parameter named `param`; the other parameters are kept byte for
/// byte, in order. (An origin-form URI only: the backend never sees an absolute one.)
pub(super) fn without_query_param(uri: &Uri, param: &str) -> Uri {
    let Some(q) = uri.query() else {
        return uri.clone();
    };
    let kept: Vec<&str> = q
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !form_urlencoded::parse(name.as_bytes()).any(|(k, v)| k == param && v.is_empty())
        })
        .collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    // Made of the URI's own parts, so it parses.
    parts.path_and_query = PathAndQuery::try_from(path_and_query).ok();
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// The host a request is for: the HTTP/2 `:authority` (or an absolute-form target's), else the
/// HTTP/1.1 `Host` header; `None` when it names none, or one [`checked_host`] refuses.
pub(super) fn request_host<B>(req: &Request<B>) -> Option<&str> {
    checked_host(req).ok()
}

/// The host a request is for, as [`request_host`], or why the request is refused (RFC 9112
/// §3.2: a request with more than one `Host`, or an invalid one, gets 400). An authority with
/// userinfo (`user@host`) is refused too: no client needs it, and it makes a host that reads
/// one way to rtcgate and another to a backend.
pub(super) fn checked_host<B>(req: &Request<B>) -> Result<&str, ProxyError> {
    let host = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => {
            let mut hosts = req.headers().get_all(header::HOST).iter();
            let first = hosts
                .next()
                .ok_or(ProxyError::BadRequest("the request names no host"))?;
            if hosts.next().is_some() {
                return Err(ProxyError::BadRequest("the request has two Host headers"));
            }
            first
                .to_str()
                .map_err(|_| ProxyError::BadRequest("invalid Host"))?
        }
    };
    if host.is_empty() {
        return Err(ProxyError::BadRequest("the request names no host"));
    }
    if !valid_host(host) {
        return Err(ProxyError::BadRequest("invalid Host"));
    }
    Ok(host)
}

/// RFC 9110 §7.2's `uri-host [ ":" port ]`: an IPv6 literal in brackets, or a reg-name (an IPv4
/// address is one) of unreserved characters, percent-escapes and sub-delims (RFC 3986
/// §3.2.2), and digits after the colon. No userinfo, no path, no spaces. One pass, a table
/// lookup a byte: it runs on every request.
pub fn valid_host(h: &str) -> bool {
    let b = h.as_bytes();
    let name_end = if b.first() == Some(&b'[') {
        let Some(close) = b.iter().position(|&c| c == b']') else {
            return false;
        };
        if h[1..close].parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        close + 1
    } else {
        let mut i = 0;
        while i < b.len() && b[i] != b':' {
            match b[i] {
                b'%' if i + 2 < b.len()
                    && b[i + 1].is_ascii_hexdigit()
                    && b[i + 2].is_ascii_hexdigit() =>
                {
                    i += 3
                }
                c if REG_NAME[usize::from(c)] => i += 1,
                _ => return false,
            }
        }
        if i == 0 {
            return false;
        }
        i
    };
    match &b[name_end..] {
        [] => true,
        [b':', port @ ..] => port.len() <= 5 && port.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// The bytes a reg-name may hold as they are: unreserved and sub-delims (RFC 3986 §3.2.2).
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric();
        c += 1;
    }
    let extra = b"-._~!$&'()*+,;=";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

/// Which of rtcgate's control headers a request's pool reads: those of features it has off
/// (`X-Rtcgate-Room` with rooms off, `X-Rtcgate-Machine` with machine pins off) chose nothing,
/// and are taken out with the hop-by-hop headers, so a backend cannot read a choice into them.
#[derive(Debug, Clone, Copy)]
pub struct Controls {
    pub rooms: bool,
    pub machines: bool,
}

/// `host[:port]` → `host`, leaving IPv6 literals' brackets alone.
pub(super) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Turns the client's request into the backend's: origin URI on the backend's address, hop-by-hop
/// headers gone, `Host` kept, and the forwarding headers added.
/// For a WebSocket, also returns the `Sec-WebSocket-Accept` the backend must answer with.
pub(super) fn upstream_request(
    req: Request<Incoming>,
    conn: &ConnInfo,
    websocket: Option<tunnel::Kind>,
    read: Controls,
) -> Result<(Request<UpstreamBody>, Option<String>, bool), ProxyError> {
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
    let conflicting = strip_hop_by_hop_and(&mut parts.headers, read);
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
        return Ok((
            Request::from_parts(parts, Either::Left(body)),
            None,
            conflicting,
        ));
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
        conflicting,
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

/// Bits past [`HOP_BY_HOP`]'s in the scan of [`strip_hop_by_hop_and`]: the control headers.
const ROOM_BIT: usize = 9;
const MACHINE_BIT: usize = 10;

/// Names `Connection` may not take out: the message's host and framing, and what rtcgate itself
/// sets (a client listing them must not strip the backend's view of who sent the request).
fn protected(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 6] = [
        b"host",
        b"content-length",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
    ];
    NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// Removes hop-by-hop headers: the static list and every name listed in `Connection` (but the
/// [`protected`] ones). A message with both `Transfer-Encoding` and `Content-Length` is framed
/// by the former, and the latter is dropped too (RFC 9112 §6.3: an intermediary must not pass
/// it on, or the next hop would read a different body); returns whether that happened.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    strip_hop_by_hop_and(
        headers,
        Controls {
            rooms: true,
            machines: true,
        },
    )
}

/// [`strip_hop_by_hop`], taking out too the control headers `read` says are not read, in the
/// same one pass over the names.
pub(super) fn strip_hop_by_hop_and(headers: &mut HeaderMap, read: Controls) -> bool {
    // Most messages carry one of these at most (`Connection: keep-alive`): one pass over the
    // names notes which are present, and only those are removed.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present |= 1 << i;
        } else if !read.rooms && *name == X_RTCGATE_ROOM {
            present |= 1 << ROOM_BIT;
        } else if !read.machines && *name == X_RTCGATE_MACHINE {
            present |= 1 << MACHINE_BIT;
        }
    }
    if present == 0 {
        return false;
    }
    if present & (1 << ROOM_BIT) != 0 {
        headers.remove(&X_RTCGATE_ROOM);
    }
    if present & (1 << MACHINE_BIT) != 0 {
        headers.remove(&X_RTCGATE_MACHINE);
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
                        || protected(token)
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
    let chunked = present & (1 << TRANSFER_ENCODING) != 0;
    chunked && headers.remove(header::CONTENT_LENGTH).is_some()
}

/// `transfer-encoding`'s place in [`HOP_BY_HOP`].
const TRANSFER_ENCODING: usize = 7;

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
static X_RTCGATE_MACHINE: HeaderName = HeaderName::from_static("x-rtcgate-machine");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Appends the client to `X-Forwarded-For` and `Forwarded`, and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host`.
fn add_forwarding(headers: &mut HeaderMap, conn: &ConnInfo, host: &HeaderValue) {
    // Only a trusted forwarder's list is continued; anyone else's is replaced by ours, so a
    // client cannot pass for another address.
    if !conn.trusted {
        headers.remove(&X_FORWARDED_FOR);
        headers.remove(header::FORWARDED);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    use crate::proxy::conn::Held;

    #[test]
    fn a_query_parameter_goes_and_the_others_stay_byte_for_byte() {
        let strip = |u: &str| {
            let uri: Uri = u.parse().expect("a URI");
            without_query_param(&uri, "rtcgate_pin").to_string()
        };
        assert_eq!(
            strip("/ws?room=a%20b&rtcgate_pin=k1:m1:9:xyz&x=1"),
            "/ws?room=a%20b&x=1"
        );
        assert_eq!(strip("/ws?rtcgate_pin=k1%3Am1"), "/ws");
        assert_eq!(
            strip("/ws?rtcgate%5Fpin=a&rtcgate_pin"),
            "/ws",
            "encoded name"
        );
        assert_eq!(strip("/ws?a=1&&b"), "/ws?a=1&&b");
        assert_eq!(strip("/ws"), "/ws");
    }

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
        // A trusted forwarder: the list it brings is continued.
        let conn = ConnInfo::trusting(peer, true, true, Held::default());
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
        let conn = ConnInfo::new(
            "192.0.2.7:5000".parse().expect("addr"),
            false,
            Held::default(),
        );
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

//! The connection-string endpoint (`[discovery]`, Voice Elements' `rtcloadbalance`): a caller
//! asks where to connect and gets a URL that lands it on the backend rtcgate chose, with the
//! slot held for it meanwhile; or `ERROR:` and a status that says why.

use std::collections::HashMap;
use std::sync::Arc;

use crate::support::*;
use http::StatusCode;
use rtcgate::demo::DemoBackend;

const PATH: &str = "/rtcloadbalance";

/// `config_with_pool` with discovery on at [`PATH`], `lines` more under `[discovery]`.
fn with_discovery(backends: &[Arc<DemoBackend>], pool: &str, lines: &str) -> String {
    format!(
        "{}\n[discovery]\npath = \"{PATH}\"\n{lines}\n",
        config_with_pool(backends, "", pool)
    )
}

/// `GET {PATH}?{query}` asking for JSON.
async fn discover_json(c: &mut HttpClient, query: &str) -> Reply {
    let req = c
        .request("GET", &format!("{PATH}?{query}"))
        .header("accept", "application/json")
        .body(empty())
        .expect("request");
    c.fetch(req).await
}

/// The path and query of `url` (`ws://host:port/path?query`).
fn path_of(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme.find('/').map_or("/", |i| &after_scheme[i..])
}

/// The value of query parameter `name` in `url`.
fn param_of(url: &str, name: &str) -> Option<String> {
    let (_, q) = url.split_once('?')?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn reserved(proxy: &TestProxy, id: &str) -> u32 {
    proxy.backend_state(id).reserved()
}

#[tokio::test]
async fn the_answer_is_a_url_that_lands_on_the_backend_it_names() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&with_discovery(&backends, "", "")).await;
    let mut c = proxy.h1().await;

    let text = c.get(PATH).await;
    assert_eq!(text.status, StatusCode::OK);
    assert!(text
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain")));
    assert_eq!(text.header("cache-control"), Some("no-store"));
    let url = text.text();
    let prefix = format!("wss://localhost:{}/?rtcgate_pin=", proxy.https.port());
    assert!(url.starts_with(&prefix), "{url}");

    let json = discover_json(&mut c, "").await;
    assert_eq!(json.status, StatusCode::OK);
    let j = json.json();
    let (url2, backend) = (
        j["url"].as_str().expect("url").to_string(),
        j["backend"].as_str().expect("backend").to_string(),
    );
    assert_eq!(j["pool"], "media");
    let now = rtcgate::sticky::unix_now();
    let expires = j["expires"].as_u64().expect("expires");
    assert!(
        (now + 3500..=now + 3601).contains(&expires),
        "an hour's token: {expires} at {now}"
    );
    assert_eq!(
        reserved(&proxy, &backend),
        1,
        "its slot is held until the client comes"
    );
    let load_before = proxy.backend_state(&backend).load();

    let mut ws = proxy.ws_tls(path_of(&url2), None).await;
    assert_eq!(ws.status, StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(ws.backend(), backend, "the URL lands where the answer said");
    echo(ws.ws(), "through the handed-out URL").await;
    assert_eq!(reserved(&proxy, &backend), 0, "the client claimed its slot");
    assert_eq!(
        proxy.backend_state(&backend).load(),
        load_before,
        "the reservation became the session: the load did not move"
    );
    assert!(
        ws.set_cookie_pair().is_some(),
        "the cookie follows the token"
    );

    // Over plain HTTP the URL is ws:, unless the caller asks otherwise (as IsSecure).
    let mut plain = proxy.h1_plain().await;
    let url = plain.get(PATH).await.text();
    assert!(
        url.starts_with(&format!("ws://localhost:{}/?", proxy.http.port())),
        "{url}"
    );
    assert!(plain
        .get(&format!("{PATH}?IsSecure=true"))
        .await
        .text()
        .starts_with("wss://"));
    assert!(c
        .get(&format!("{PATH}?secure=false"))
        .await
        .text()
        .starts_with("ws://"));
    let mut ws = proxy.ws_plain(path_of(&url), None).await;
    assert_eq!(ws.status, StatusCode::SWITCHING_PROTOCOLS);
    echo(ws.ws(), "plain").await;
}

#[tokio::test]
async fn machine_room_and_cluster_choose_as_the_caller_asks() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&with_discovery(&backends, "room_param = \"room\"", "")).await;
    let mut c = proxy.h1().await;
    let j = discover_json(&mut c, "cluster=media&machine=b3")
        .await
        .json();
    assert_eq!(j["backend"], "b3");
    let url = j["url"].as_str().expect("url").to_string();
    let ws = proxy.ws_tls(path_of(&url), None).await;
    assert_eq!(ws.backend(), "b3");

    // A plain upgrade may name its machine too, without the endpoint.
    let ws = proxy.ws_tls("/ws?machine=b2", None).await;
    assert_eq!(ws.backend(), "b2");

    // Five participants of a room asking together get one backend, and a URL naming the room.
    let calls = (0..5).map(|_| {
        let proxy = &proxy;
        async move {
            let mut c = proxy.h1().await;
            discover_json(&mut c, "room=weekly%20sync").await.json()
        }
    });
    let answers = within("5 calls", futures_util::future::join_all(calls)).await;
    let homes: std::collections::HashSet<String> = answers
        .iter()
        .map(|j| j["backend"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(homes.len(), 1, "one room, one backend: {homes:?}");
    let url = answers[0]["url"].as_str().expect("url");
    assert_eq!(param_of(url, "room").as_deref(), Some("weekly sync"));
    let ws = proxy.ws_tls(path_of(url), None).await;
    assert_eq!(Some(ws.backend()), homes.into_iter().next());
}

#[tokio::test]
async fn failures_start_with_error_and_carry_their_status() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&with_discovery(&backends, "max_sessions = 1", "")).await;
    let mut c = proxy.h1().await;

    let r = c.get(&format!("{PATH}?cluster=IVL")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.text(), "ERROR: unknown cluster \"IVL\"");
    let r = c.get(&format!("{PATH}?machine=WebRTCVM9")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(
        r.text().starts_with("ERROR: unknown machine"),
        "{}",
        r.text()
    );
    let r = c.get(&format!("{PATH}?secure=maybe")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().starts_with("ERROR: "));
    let post = c.request("POST", PATH).body(empty()).expect("request");
    let r = c.fetch(post).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.text().starts_with("ERROR: "));

    // b1 in maintenance: down, for the endpoint (its callers want that machine, no other).
    use rtcgate::state::backend::AdminState;
    proxy
        .runtime
        .set_admin_state("media", "b1", AdminState::Maint)
        .expect("maint");
    let r = c.get(&format!("{PATH}?machine=b1")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text(), "ERROR: machine b1 is down");
    assert_retry_after(r.header("retry-after"));

    // b2 holds one session, its cap: full, to anyone not pinned there.
    let mut held = proxy.ws_plain("/ws?machine=b2", None).await;
    echo(held.ws(), "b2 is full").await;
    let r = c.get(&format!("{PATH}?machine=b2")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text(), "ERROR: machine b2 is full");
    assert_retry_after(r.header("retry-after"));
    let j = discover_json(&mut c, "machine=b2").await;
    assert_eq!(j.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(j.json()["error"], "machine b2 is full");

    // The last free slot (b3) goes to the first caller; the next finds the pool full.
    let r = c.get(PATH).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = c.get(PATH).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text(), "ERROR: every server of cluster media is full");
    assert_retry_after(r.header("retry-after"));

    let text = metrics(&proxy).await;
    let count = |result| {
        sample(
            &text,
            "rtcgate_discovery_total",
            &[("pool", "media"), ("result", result)],
        )
    };
    assert_eq!(count("ok"), Some(1.0), "{text}");
    assert_eq!(count("error"), Some(7.0), "{text}");
}

#[tokio::test]
async fn a_pin_token_survives_a_reload_and_fails_when_tampered_or_expired() {
    let backends = spawn_backends(3).await;
    let toml = with_discovery(&backends, "", "");
    let proxy = spawn_proxy(&toml).await;
    let mut c = proxy.h1().await;
    let url = c.get(&format!("{PATH}?machine=b2")).await.text();
    let token = param_of(&url, "rtcgate_pin").expect("a pin token");

    // A reload that reweighs b1: the token still lands on b2.
    let toml2 = toml.replace("id = \"b1\"\naddress", "id = \"b1\"\nweight = 2\naddress");
    proxy.rewrite_config(&toml2);
    assert_eq!(proxy.post_reload().await.status, StatusCode::OK);
    for _ in 0..3 {
        let mut ws = proxy.ws_tls(path_of(&url), None).await;
        assert_eq!(ws.backend(), "b2", "the token pins its holder");
        echo(ws.ws(), "after the reload").await;
    }

    // Honoured on plain requests too, and never forwarded.
    let r = c
        .get(&format!("/headers?a=1&rtcgate_pin={token}&b=2"))
        .await;
    assert_eq!(r.backend(), "b2");
    assert_eq!(r.json()["uri"], "/headers?a=1&b=2", "the token is stripped");

    let invalid = || async {
        let text = metrics(&proxy).await;
        sample(
            &text,
            "rtcgate_sticky_total",
            &[("pool", "media"), ("outcome", "invalid")],
        )
        .unwrap_or(0.0)
    };
    let before = invalid().await;
    // Tampered: the backend changed, or a byte of the tag.
    let forged = token.replace(":b2:", ":b3:");
    let mut flipped = token.clone().into_bytes();
    let last = flipped.len() - 2;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).expect("ascii");
    // Expired: signed with the proxy's own key, an hour ago.
    let expired = proxy.runtime.snapshot().sticky.sign_url_token(
        "media",
        "b2",
        rtcgate::sticky::unix_now() - 3600,
    );
    // A cookie's value is not a URL token, though signed with the same key.
    let cookie_value = proxy.user_pinned_to("b2").await;
    let cookie_value = cookie_value
        .split_once('=')
        .map_or("", |(_, v)| v)
        .to_string();
    for bad in [&forged, &flipped, &expired, &cookie_value] {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("rtcgate_pin", bad)
            .finish();
        let ws = proxy.ws_tls(&format!("/ws?{q}"), None).await;
        assert_eq!(ws.status, StatusCode::SWITCHING_PROTOCOLS);
        assert!(
            ws.set_cookie_pair().is_some(),
            "placed afresh, with a cookie of its own"
        );
    }
    let placed_on: Vec<String> = {
        let mut seen = Vec::new();
        for _ in 0..6 {
            let q: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("rtcgate_pin", &forged)
                .finish();
            seen.push(c.get(&format!("/?{q}")).await.backend().to_string());
        }
        seen
    };
    assert!(
        placed_on.iter().any(|b| b != "b3"),
        "a forged token naming b3 does not pin to b3: {placed_on:?}"
    );
    assert_eq!(invalid().await - before, 10.0, "each counted as invalid");
}

#[tokio::test]
async fn a_burst_of_calls_spreads_by_reservations_and_stops_at_capacity() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&with_discovery(&backends, "max_sessions = 200", "")).await;
    // b1 carries 60 users already: an even pool has 120 on each once 300 more arrive.
    let mut held = Vec::new();
    for _ in 0..60 {
        let mut ws = proxy.ws_plain("/ws?machine=b1", None).await;
        echo(ws.ws(), "b1").await;
        held.push(ws);
    }
    let answers = burst(&proxy, 300).await;
    let mut handed: HashMap<String, u32> = HashMap::new();
    for j in &answers {
        *handed
            .entry(j["backend"].as_str().expect("a URL for each").to_string())
            .or_default() += 1;
    }
    for id in ["b1", "b2", "b3"] {
        let total = proxy.backend_state(id).claimed();
        assert!(
            (108..=132).contains(&total),
            "{id} carries {total} with its reservations, not 120 ± 10 %: {handed:?}"
        );
    }
    // The 300 clients come: each lands where it was sent, and the sessions spread alike.
    for j in &answers {
        let url = j["url"].as_str().expect("url");
        let mut ws = proxy.ws_plain(path_of(url), None).await;
        assert_eq!(ws.backend(), j["backend"].as_str().unwrap_or(""));
        echo(ws.ws(), "arrived").await;
        held.push(ws);
    }
    for id in ["b1", "b2", "b3"] {
        let b = proxy.backend_state(id);
        assert_eq!(b.reserved(), 0, "{id}: every slot was claimed");
        assert!(
            (108..=132).contains(&b.sessions()),
            "{id} holds {} sessions, not 120 ± 10 %",
            b.sessions()
        );
    }
}

#[tokio::test]
async fn with_three_backends_of_100_exactly_300_callers_get_a_url() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&with_discovery(&backends, "max_sessions = 100", "")).await;
    let answers = burst(&proxy, 300).await;
    assert_eq!(answers.len(), 300);
    for id in ["b1", "b2", "b3"] {
        assert_eq!(reserved(&proxy, id), 100, "{id}");
    }
    let mut c = proxy.h1_plain().await;
    let r = c.get(PATH).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().starts_with("ERROR: "), "{}", r.text());
    assert_retry_after(r.header("retry-after"));
    // Their clients all get in, full as the pool is: each holds the slot kept for it.
    let mut held = Vec::new();
    for j in &answers {
        let mut ws = proxy
            .ws_plain(path_of(j["url"].as_str().expect("url")), None)
            .await;
        assert_eq!(ws.status, StatusCode::SWITCHING_PROTOCOLS);
        echo(ws.ws(), "in").await;
        held.push(ws);
    }
    for id in ["b1", "b2", "b3"] {
        assert_eq!(proxy.backend_state(id).sessions(), 100, "{id}");
    }
    let late = proxy.ws_plain("/ws", None).await;
    assert_eq!(
        late.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "and the pool is full"
    );
}

/// `n` discovery calls at once over plain HTTP, one connection each; every answer must be a URL.
async fn burst(proxy: &TestProxy, n: usize) -> Vec<serde_json::Value> {
    let calls = (0..n).map(|_| async {
        let mut c = proxy.h1_plain().await;
        let r = discover_json(&mut c, "").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json()
    });
    within("the burst", futures_util::future::join_all(calls)).await
}

#[tokio::test]
async fn direct_mode_hands_out_the_backends_own_url_and_the_slot_lapses() {
    let backends = spawn_backends(2).await;
    let mut toml = with_discovery(&backends, "", "mode = \"direct\"\nreservation = \"1s\"");
    for b in &backends {
        toml = toml.replace(
            &format!("id = \"{}\"\n", b.id),
            &format!(
                "id = \"{}\"\npublic_url = \"wss://{}.media.example.com:8989/janus\"\n",
                b.id, b.id
            ),
        );
    }
    let proxy = spawn_proxy(&toml).await;
    let mut c = proxy.h1().await;
    let j = discover_json(&mut c, "machine=b2").await.json();
    assert_eq!(j["url"], "wss://b2.media.example.com:8989/janus");
    assert_eq!(reserved(&proxy, "b2"), 1);
    let r = c.get(&format!("{PATH}?machine=b1")).await;
    assert_eq!(r.text(), "wss://b1.media.example.com:8989/janus");
    // Direct clients never pass rtcgate: their slots lapse by themselves.
    eventually("the reservations lapse", async || {
        reserved(&proxy, "b1") + reserved(&proxy, "b2") == 0
    })
    .await;
    assert_eq!(proxy.backend_state("b2").load(), 0);

    // Direct mode needs every backend's public URL.
    let bad = with_discovery(&backends, "", "mode = \"direct\"");
    let err = rtcgate::config::Config::parse(&bad, &proxy.config_path()).expect_err("refused");
    assert!(err.to_string().contains("needs a public_url"), "{err}");
}

#[tokio::test]
async fn cors_lets_listed_origins_call_and_no_other() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&with_discovery(
        &backends,
        "",
        "cors_origins = [\"https://app.example.com\"]",
    ))
    .await;
    let mut c = proxy.h1().await;
    let preflight = |origin: &'static str| {
        c.request("OPTIONS", PATH)
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "x-app-version")
            .body(empty())
            .expect("request")
    };
    let ok = preflight("https://app.example.com");
    let refused = preflight("https://evil.example.com");
    let r = c.fetch(ok).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert!(r
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("GET")));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("x-app-version")
    );
    let r = c.fetch(refused).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.header("access-control-allow-origin"), None);

    let get = |origin: &'static str| {
        c.request("GET", PATH)
            .header("origin", origin)
            .body(empty())
            .expect("request")
    };
    let (listed, other) = (
        get("https://app.example.com"),
        get("https://evil.example.com"),
    );
    let r = c.fetch(listed).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(r.header("vary").is_some_and(|v| v.contains("Origin")));
    let r = c.fetch(other).await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        None,
        "a browser keeps the answer from another origin's page"
    );
}

/// The page of another origin: it asks rtcgate where to connect, opens the WebSocket it was
/// given, and reports the echo to its own server.
const CALLER_PAGE: &str = r#"<!doctype html><title>caller</title><script>
(async () => {
  const report = (q) => fetch('/report?' + new URLSearchParams(q));
  try {
    const r = await fetch('DISCOVER', {headers: {'Accept': 'application/json'}, credentials: 'include'});
    const j = await r.json();
    const ws = new WebSocket(j.url);
    ws.onopen = () => ws.send('hello from another origin');
    ws.onmessage = (e) => report({backend: j.backend, echo: e.data});
    ws.onerror = () => report({error: 'the WebSocket failed'});
  } catch (e) {
    report({error: String(e)});
  }
})();
</script>"#;

/// Serves [`CALLER_PAGE`] at `/` and sends each `/report` query down the channel.
fn caller_origin(
    page: String,
    reports: tokio::sync::mpsc::UnboundedSender<String>,
) -> impl Fn(
    http::Request<hyper::body::Incoming>,
) -> http::Response<http_body_util::Full<bytes::Bytes>>
       + Clone {
    move |req| {
        let body = match req.uri().path() {
            "/report" => {
                let _ = reports.send(req.uri().query().unwrap_or("").to_string());
                String::new()
            }
            _ => page.clone(),
        };
        let mut resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        resp.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("text/html; charset=utf-8"),
        );
        resp
    }
}

#[tokio::test]
async fn a_page_on_another_origin_calls_the_endpoint_and_opens_its_websocket() {
    let _solo = solo().await;
    let backends = spawn_backends(3).await;
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let origin = format!(
        "http://127.0.0.1:{}",
        page_listener.local_addr().expect("addr").port()
    );
    let proxy = spawn_proxy(&with_discovery(
        &backends,
        "",
        &format!("cors_origins = [\"{origin}\"]"),
    ))
    .await;
    let page = CALLER_PAGE.replace(
        "DISCOVER",
        &format!("http://localhost:{}{PATH}", proxy.http.port()),
    );
    let (tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(serve_fn(page_listener, caller_origin(page, tx)));
    let profile = tempfile::tempdir().expect("profile");
    let Some(mut browser) = chromium(profile.path(), &[&format!("{origin}/")]) else {
        server.abort();
        return;
    };
    let deadline = tokio::time::Instant::now() + BROWSER_START;
    let report = loop {
        let wait = tokio::time::timeout(std::time::Duration::from_millis(200), reports.recv());
        if let Ok(Some(r)) = wait.await {
            break r;
        }
        if let Some(status) = browser.exited() {
            panic!("chromium exited ({status}) before the page reported");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page did not report within {BROWSER_START:?}"
        );
    };
    server.abort();
    let report: HashMap<String, String> = form_urlencoded::parse(report.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(report.get("error"), None, "the page failed: {report:?}");
    assert_eq!(
        report.get("echo").map(String::as_str),
        Some("hello from another origin")
    );
    let backend = report.get("backend").expect("the backend it was sent to");
    let b = proxy.backend_state(backend);
    assert_eq!(
        (b.sessions(), b.reserved()),
        (1, 0),
        "its WebSocket is the session its discovery call reserved"
    );
    drop(browser);
}

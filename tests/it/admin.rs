//! Observability and control: /metrics, /status, drain/maint/enable, the token, the page.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::*;
use http::StatusCode;
use tokio::net::TcpStream;

/// `method path` on the admin listener, with `token` as a bearer token when given.
async fn admin_call(proxy: &TestProxy, method: &str, path: &str, token: Option<&str>) -> Reply {
    let mut c = proxy.admin().await;
    let mut req = c.request(method, path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    c.fetch(req.body(empty()).expect("request")).await
}

async fn post(proxy: &TestProxy, path: &str, token: Option<&str>) -> Reply {
    admin_call(proxy, "POST", path, token).await
}

/// `promtool check metrics`, the reference linter, when it is installed (CI installs it).
fn promtool_accepts(text: &str) -> Option<Result<(), String>> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(text.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

/// Tools CI installs must be there in CI; elsewhere a test may say it could not run them.
#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    // Counters of rare events exist at 0 from the start, so that `increase()` sees the first.
    let at_start = metrics(&proxy).await;
    for (name, labels) in [
        ("rtcgate_config_reloads_total", vec![("result", "error")]),
        ("rtcgate_config_reloads_total", vec![("result", "ok")]),
        (
            "rtcgate_scale_hook_failures_total",
            vec![("pool", "media"), ("direction", "up")],
        ),
        (
            "rtcgate_scale_events_total",
            vec![("pool", "media"), ("direction", "down")],
        ),
        (
            "rtcgate_dns_lookups_total",
            vec![("pool", "media"), ("result", "error")],
        ),
    ] {
        assert_eq!(
            sample(&at_start, name, &labels),
            Some(0.0),
            "{name} {labels:?}"
        );
    }
    let mut c = proxy.h1().await;
    let mut served = std::collections::HashMap::<String, f64>::new();
    for _ in 0..6 {
        *served
            .entry(c.get("/").await.backend().to_string())
            .or_default() += 1.0;
    }
    let mut ws = proxy.ws_plain("/ws", None).await;
    echo(ws.ws(), "counted").await;
    let text = metrics(&proxy).await;
    match promtool_accepts(&text) {
        Some(Ok(())) => {}
        Some(Err(e)) => panic!("promtool rejects /metrics: {e}\n{text}"),
        None => required_in_ci("promtool"),
    }
    for (backend, n) in &served {
        let got = sample(
            &text,
            "rtcgate_requests_total",
            &[("backend", backend), ("code", "200")],
        );
        assert_eq!(got, Some(*n), "requests of {backend}");
    }
    let new_pins = sample(
        &text,
        "rtcgate_sticky_total",
        &[("pool", "media"), ("outcome", "new")],
    );
    assert_eq!(new_pins, Some(7.0), "six GETs and a tunnel, all new users");
    let ws_backend = ws.backend();
    let tunnels = sample(
        &text,
        "rtcgate_websocket_tunnels_total",
        &[("backend", &ws_backend)],
    );
    assert_eq!(tunnels, Some(1.0));
    let open = sample(
        &text,
        "rtcgate_backend_sessions",
        &[("backend", &ws_backend)],
    );
    assert_eq!(open, Some(1.0));
    for b in &backends {
        assert_eq!(
            sample(&text, "rtcgate_backend_up", &[("backend", &b.id)]),
            Some(1.0)
        );
    }
    let count = sample(
        &text,
        "rtcgate_request_duration_seconds_count",
        &[("pool", "media")],
    );
    assert_eq!(count, Some(7.0));
    assert_eq!(sample(&text, "rtcgate_client_connections", &[]), Some(2.0));
}

#[tokio::test]
async fn rejections_are_counted_by_reason() {
    let proxy = spawn_proxy(&config_toml(&[], "", "")).await;
    assert_eq!(
        proxy.h1().await.get("/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let text = metrics(&proxy).await;
    let rejected = sample(
        &text,
        "rtcgate_rejected_total",
        &[("pool", "media"), ("reason", "no_backend")],
    );
    assert_eq!(rejected, Some(1.0));
    let answered = sample(
        &text,
        "rtcgate_requests_total",
        &[("backend", ""), ("code", "503")],
    );
    assert_eq!(answered, Some(1.0));
}

#[tokio::test]
async fn status_shows_sessions_and_states() {
    let backends = spawn_backends(2).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut ws = proxy.ws_plain("/ws", None).await;
    echo(ws.ws(), "hi").await;
    let on = ws.backend();
    let other = backends
        .iter()
        .find(|b| b.id != on)
        .expect("other")
        .id
        .clone();
    assert_eq!(
        post(
            &proxy,
            &format!("/pools/media/backends/{other}/drain"),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    let status = proxy.admin().await.get("/status").await.json();
    let list = status["pools"][0]["backends"]
        .as_array()
        .expect("backends")
        .clone();
    let find = |id: &str| list.iter().find(|b| b["id"] == id).expect("listed").clone();
    assert_eq!(find(&on)["sessions"], 1);
    assert_eq!(find(&on)["state"], "up");
    assert_eq!(
        find(&on)["address"],
        backends
            .iter()
            .find(|b| b.id == on)
            .expect("b")
            .addr
            .to_string()
    );
    assert_eq!(find(&other)["sessions"], 0);
    assert_eq!(find(&other)["state"], "draining");
    let text = metrics(&proxy).await;
    let draining = sample(
        &text,
        "rtcgate_backend_state",
        &[("backend", &other), ("state", "draining")],
    );
    assert_eq!(
        draining,
        Some(1.0),
        "the state shows in the metrics at once"
    );
}

#[tokio::test]
async fn drain_keeps_pins_and_takes_no_new_ones_maint_repins_enable_restores() {
    let backends = spawn_backends(2).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut c = proxy.h1().await;
    let first = c.get("/").await;
    let cookie = first.cookie().expect("cookie");
    let pinned = first.backend().to_string();
    let path = |action: &str| format!("/pools/media/backends/{pinned}/{action}");

    assert_eq!(
        post(&proxy, &path("drain"), None).await.status,
        StatusCode::OK
    );
    for _ in 0..4 {
        let req = c
            .request("GET", "/")
            .header("cookie", &cookie)
            .body(empty())
            .expect("req");
        assert_eq!(
            c.fetch(req).await.backend(),
            pinned,
            "draining keeps its pinned user"
        );
        assert_ne!(
            c.get("/").await.backend(),
            pinned,
            "draining takes no new user"
        );
    }
    assert_eq!(
        post(&proxy, &path("maint"), None).await.status,
        StatusCode::OK
    );
    let req = c
        .request("GET", "/")
        .header("cookie", &cookie)
        .body(empty())
        .expect("req");
    let moved = c.fetch(req).await;
    assert_ne!(moved.backend(), pinned, "maintenance re-pins");
    assert!(moved.headers.get("set-cookie").is_some());

    assert_eq!(
        post(&proxy, &path("enable"), None).await.status,
        StatusCode::OK
    );
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(c.get("/").await.backend().to_string());
    }
    assert!(
        seen.contains(&pinned),
        "an enabled backend takes new users again"
    );
}

#[tokio::test]
async fn posts_need_the_token_when_one_is_set() {
    let backends = spawn_backends(1).await;
    let toml = config_for(&backends, "")
        .replace("[limits]", "[admin]\ntoken = \"s3cret-token\"\n\n[limits]");
    let proxy = spawn_proxy(&toml).await;
    let drain = "/pools/media/backends/b1/drain";
    let r = post(&proxy, drain, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(
        post(&proxy, drain, Some("wrong-token")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&proxy, "/reload", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let state = |p: &TestProxy| p.runtime.snapshot().pools[0].members[0].backend.admin();
    assert_eq!(
        state(&proxy),
        rtcgate::state::backend::AdminState::Enabled,
        "a refused call changes nothing"
    );
    assert_eq!(
        post(&proxy, drain, Some("s3cret-token")).await.status,
        StatusCode::OK
    );
    assert_eq!(state(&proxy), rtcgate::state::backend::AdminState::Draining);
    assert_eq!(
        proxy.admin().await.get("/status").await.status,
        StatusCode::OK,
        "GETs stay open"
    );
    // The scheme in any case (RFC 9110 §11.1), the token exactly.
    let mut c = proxy.admin().await;
    let req = c
        .request("POST", "/pools/media/backends/b1/enable")
        .header("authorization", "bearer s3cret-token")
        .body(empty())
        .expect("request");
    assert_eq!(c.fetch(req).await.status, StatusCode::OK);
    assert_eq!(
        post(&proxy, drain, Some("s3cret-token-and-more"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

async fn get_with_token(proxy: &TestProxy, path: &str, token: Option<&str>) -> Reply {
    admin_call(proxy, "GET", path, token).await
}

#[tokio::test]
async fn with_token_for_reads_every_read_but_the_probes_needs_the_token() {
    let backends = spawn_backends(1).await;
    let toml = config_for(&backends, "").replace(
        "[limits]",
        "[admin]\ntoken = \"s3cret-token\"\ntoken_for_reads = true\n\n[limits]",
    );
    let proxy = spawn_proxy(&toml).await;
    for path in ["/status", "/metrics", "/pools/media/backends/b1"] {
        let r = get_with_token(&proxy, path, None).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{path} without the token"
        );
        assert!(!r.text().contains("127.0.0.1"), "{path} shows no address");
        let r = get_with_token(&proxy, path, Some("wrong")).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{path} with a wrong token"
        );
        let r = get_with_token(&proxy, path, Some("s3cret-token")).await;
        assert_eq!(r.status, StatusCode::OK, "{path} with the token");
    }
    for probe in ["/live", "/ready"] {
        let r = get_with_token(&proxy, probe, None).await;
        assert_eq!(r.status, StatusCode::OK, "{probe} stays open for probes");
    }
    // The page carries no data (its script polls /status with the token), so it is open.
    for file in ["/", "/page.js", "/page.css"] {
        let r = get_with_token(&proxy, file, None).await;
        assert_eq!(r.status, StatusCode::OK, "{file} of the page");
        assert!(!r.text().contains("127.0.0.1"), "{file} shows no address");
    }
}

#[tokio::test]
async fn unknown_paths_404_and_wrong_methods_405() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    assert_eq!(
        proxy.admin().await.get("/nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post(&proxy, "/pools/media/backends/b9/drain", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post(&proxy, "/pools/media/backends/b1/explode", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = post(&proxy, "/metrics", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.header("allow").is_some());
    let r = proxy
        .admin()
        .await
        .get("/pools/media/backends/b1/drain")
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_browser_shows_the_backends_on_the_status_page() {
    let _solo = solo().await;
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut ws = proxy.ws_plain("/ws", None).await;
    echo(ws.ws(), "visible").await;
    let profile = tempfile::tempdir().expect("tempdir");
    let url = format!("http://127.0.0.1:{}/", proxy.admin.port());
    let Some(browser) = chromium(
        profile.path(),
        &["--virtual-time-budget=1000", "--dump-dom", &url],
    ) else {
        return;
    };
    let out = tokio::time::timeout(BROWSER_START, browser.output())
        .await
        .unwrap_or_else(|_| panic!("chromium: no page within {BROWSER_START:?}"))
        .expect("chromium's output");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<table id=\"backends\">"),
        "no status table in:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for b in &backends {
        assert!(
            dom.contains(&format!("<td class=\"id\">{}</td>", b.id)),
            "{} not listed",
            b.id
        );
    }
    assert!(
        dom.contains("1 / 500"),
        "the open tunnel's session is shown"
    );
}

#[tokio::test]
async fn client_connections_are_shared_evenly_by_the_worker_threads() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "workers = 2")).await;
    // A burst: every connection is open before any is used, as a load generator's are. The
    // kernel wakes both workers for each; unbalanced, one of them could take nearly all.
    let connects = (0..40).map(|_| TcpStream::connect(proxy.http));
    let streams = within("40 connects", futures_util::future::join_all(connects)).await;
    let mut clients = Vec::new();
    for s in streams {
        let s = s.expect("connect");
        let mut c = HttpClient::h1(s, format!("localhost:{}", proxy.http.port()), "http").await;
        assert_eq!(c.get("/").await.status, StatusCode::OK);
        clients.push(c);
    }
    let text = metrics(&proxy).await;
    let load = |w: &str| sample(&text, "rtcgate_worker_connections", &[("worker", w)]);
    let (w0, w1) = (load("0").expect("worker 0"), load("1").expect("worker 1"));
    assert_eq!(w0 + w1, 40.0, "{text}");
    assert!(
        (w0 - w1).abs() <= 1.0,
        "worker 0 serves {w0}, worker 1 serves {w1}"
    );
}

/// Kubernetes' probes: `/live` answers while the process does; `/ready` fails from the moment
/// shutdown begins, and for `shutdown_delay` the proxy still accepts and serves, so the
/// endpoint is removed before the listeners close.
#[tokio::test]
async fn ready_fails_when_shutdown_begins_while_the_delay_still_serves() {
    let backends = spawn_backends(1).await;
    let mut proxy = spawn_proxy(&config_for(&backends, "shutdown_delay = \"3s\"")).await;
    let mut admin = proxy.admin().await;
    assert_eq!(admin.get("/live").await.status, StatusCode::OK);
    assert_eq!(admin.get("/ready").await.status, StatusCode::OK);

    let stopped = proxy.shutdown();
    eventually("/ready fails once shutdown begins", async || {
        proxy.admin().await.get("/ready").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert_eq!(
        proxy.admin().await.get("/live").await.status,
        StatusCode::OK
    );
    let mut late = proxy.h1().await;
    let r = late.get("/").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "a connection opened in the delay is served"
    );
    assert!(!stopped.is_finished(), "still in the delay");
    within("shutdown after the delay", stopped)
        .await
        .expect("join")
        .expect("clean exit");
}

/// Once shutdown stops accepting, every listener is closed, the admin one included, so a
/// replacement instance can bind all of them while this one's tunnels finish their grace.
#[tokio::test]
async fn every_listener_closes_at_once_while_tunnels_have_their_grace() {
    let backends = spawn_backends(1).await;
    let mut proxy = spawn_proxy(&config_for(&backends, "shutdown_grace = \"10s\"")).await;
    let mut held = proxy.ws_plain("/ws", None).await;
    echo(held.ws(), "before").await;
    let stopping = proxy.shutdown();
    let (admin, http, https) = (proxy.admin, proxy.http, proxy.https);
    eventually("every address can be bound again", async || {
        [admin, http, https]
            .iter()
            .all(|a| std::net::TcpListener::bind(a).is_ok())
    })
    .await;
    assert!(!stopping.is_finished(), "still in its grace");
    echo(held.ws(), "the tunnel goes on in the grace").await;
    held.ws().close(None).await.expect("close");
    within("shutdown ends once the tunnel closed", stopping)
        .await
        .expect("join")
        .expect("clean exit");
}

/// A page elsewhere cannot use a browser against the admin API: no cross-site mutation (CSRF),
/// and no answer under a name the listener does not have (DNS rebinding). Tools that send
/// neither `Origin` nor `Sec-Fetch-Site`, such as curl, are not affected.
#[tokio::test]
async fn a_browser_on_another_site_cannot_drive_or_read_the_admin_api() {
    let backends = spawn_backends(1).await;
    let toml = format!(
        "{}\n[admin]\nhosts = [\"rtcgate-admin.internal\"]\n",
        config_for(&backends, "")
    );
    let proxy = spawn_proxy(&toml).await;
    let send = |method: &'static str, path: &'static str, headers: Vec<(&'static str, String)>| {
        let proxy = &proxy;
        async move {
            let mut c = proxy.admin().await;
            let mut req = c.request(method, path);
            for (n, v) in headers {
                if let Some(h) = req.headers_mut() {
                    h.insert(n, v.parse().expect("value"));
                }
            }
            c.fetch(req.body(empty()).expect("request")).await
        }
    };
    let own = format!("http://{}", proxy.admin);
    for headers in [
        vec![("origin", "https://evil.example".to_string())],
        vec![("sec-fetch-site", "cross-site".to_string())],
        vec![
            ("sec-fetch-site", "same-site".to_string()),
            ("origin", own.clone()),
        ],
    ] {
        let r = send("POST", "/pools/media/backends/b1/maint", headers.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}: {}", r.text());
    }
    assert_eq!(
        proxy.backend_state("b1").state_name(),
        "up",
        "nothing changed"
    );
    let r = send("GET", "/status", vec![("host", "evil.example".to_string())]).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "a rebinding name is refused"
    );
    assert!(r.text().contains("[admin] hosts"), "{}", r.text());
    let r = send(
        "GET",
        "/status",
        vec![("host", "rtcgate-admin.internal:9090".to_string())],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "a configured name is served");
    let r = send(
        "GET",
        "/status",
        vec![("host", format!("localhost:{}", proxy.admin.port()))],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // The page itself (same origin) and curl (neither header) may.
    let r = send(
        "POST",
        "/pools/media/backends/b1/drain",
        vec![
            ("origin", own),
            ("sec-fetch-site", "same-origin".to_string()),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = send("POST", "/pools/media/backends/b1/enable", vec![]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(proxy.backend_state("b1").state_name(), "up");
}

/// The status page in headless Chromium at `/#{fragment}`, its DOM once the page is quiet:
/// `--dump-dom` prints it when the virtual-time budget is spent, and virtual time stands still
/// while a fetch is pending, so the page's first poll, the hook's click, its POST and the
/// refresh after it are all done by then. `--enable-automation` lets the page's test hook act.
/// `None` when Chromium is not installed.
async fn page_dom(proxy: &TestProxy, fragment: &str) -> Option<String> {
    page_dom_with(proxy, fragment, &["--enable-automation"]).await
}

async fn page_dom_with(proxy: &TestProxy, fragment: &str, flags: &[&str]) -> Option<String> {
    let profile = tempfile::tempdir().expect("tempdir");
    let url = format!("http://127.0.0.1:{}/#{fragment}", proxy.admin.port());
    let mut args = vec!["--virtual-time-budget=5000", "--dump-dom", &url];
    args.extend_from_slice(flags);
    let browser = chromium(profile.path(), &args)?;
    let out = tokio::time::timeout(BROWSER_START, browser.output())
        .await
        .unwrap_or_else(|_| panic!("chromium: no page within {BROWSER_START:?}"))
        .expect("chromium's output");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("<table id=\"backends\">"),
        "no status page in:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(dom)
}

/// The row of backend `id` of `pool` in the page's DOM.
fn row<'a>(dom: &'a str, pool: &str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("<tr data-pool=\"{pool}\" data-id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no row for {pool}/{id} in:\n{dom}"));
    let rest = &dom[start..];
    &rest[..rest
        .find("</tr>")
        .map_or(rest.len(), |end| end + "</tr>".len())]
}

/// What the page's test hook wrote once the click's work was over.
fn hook_said(dom: &str) -> &str {
    let start = dom
        .find("<output id=\"hook\">")
        .map(|i| i + "<output id=\"hook\">".len())
        .unwrap_or_else(|| panic!("the hook wrote nothing in:\n{dom}"));
    let rest = &dom[start..];
    &rest[..rest.find("</output>").unwrap_or(rest.len())]
}

fn shows_state(row: &str, state: &str) -> bool {
    row.contains(&format!("<span class=\"state {state}\">{state}</span>"))
}

/// An operator clicks Drain on the row of a backend with a user on it: the backend drains, and
/// the page, refreshed after the POST, shows it draining with its session kept, and lists the
/// event; the other backend is untouched.
#[tokio::test]
async fn the_page_drains_a_backend_when_its_drain_button_is_clicked() {
    let _solo = solo().await;
    let backends = spawn_backends(2).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut user = proxy.ws_plain("/ws?machine=b1", None).await;
    echo(user.ws(), "on b1").await;
    assert_eq!(user.backend(), "b1");
    // A link from anywhere to the hook's address, opened in an operator's browser, does nothing.
    let Some(dom) = page_dom_with(&proxy, "click=maint:media:b1", &[]).await else {
        return;
    };
    assert!(!dom.contains("<output id=\"hook\">"), "the hook acted");
    assert!(shows_state(row(&dom, "media", "b1"), "up"));
    assert_eq!(
        proxy.backend_state("b1").state_name(),
        "up",
        "a link changes nothing"
    );

    let dom = page_dom(&proxy, "click=drain:media:b1")
        .await
        .expect("chromium ran before");
    assert_eq!(
        proxy.backend_state("b1").state_name(),
        "draining",
        "the click drained b1"
    );
    assert_eq!(proxy.backend_state("b2").state_name(), "up");
    let status = proxy.admin().await.get("/status").await.json();
    assert_eq!(status["pools"][0]["backends"][0]["state"], "draining");
    assert_eq!(
        hook_said(&dom),
        "acted ok: draining",
        "the page refreshed after the POST"
    );
    let b1 = row(&dom, "media", "b1");
    assert!(shows_state(b1, "draining"), "{b1}");
    assert!(b1.contains("1 / 500"), "its user stays: {b1}");
    assert!(shows_state(row(&dom, "media", "b2"), "up"));
    echo(user.ws(), "still served while draining").await;
    assert!(
        dom.contains("<td>admin_state</td><td>media</td><td>b1</td><td>draining</td>"),
        "the drain is among the recent events:\n{dom}"
    );
    let events = status["events"].as_array().expect("events");
    assert!(
        events.iter().any(|e| e["event"] == "admin_state"
            && e["pool"] == "media"
            && e["backend"] == "b1"
            && e["detail"] == "draining"),
        "{events:?}"
    );
}

/// With `[admin] token`, a click without the token gets the page asking for it and changes
/// nothing; once the token is typed in, the same click drains. With `token_for_reads` the page
/// asks before it shows anything, then works with the token.
#[tokio::test]
async fn with_a_token_the_page_asks_for_it_and_drains_once_it_is_given() {
    let _solo = solo().await;
    let backends = spawn_backends(2).await;
    let token = "s3cret-token";
    let toml = config_for(&backends, "").replace(
        "[limits]",
        &format!("[admin]\ntoken = \"{token}\"\n\n[limits]"),
    );
    let proxy = spawn_proxy(&toml).await;
    let Some(dom) = page_dom(&proxy, "click=drain:media:b1").await else {
        return;
    };
    assert_eq!(
        hook_said(&dom),
        "token asked: Drain, Maint and Enable need the admin token."
    );
    assert!(dom.contains("<form id=\"token\">"), "the token field shows");
    assert_eq!(
        proxy.backend_state("b1").state_name(),
        "up",
        "nothing changed"
    );
    assert!(shows_state(row(&dom, "media", "b1"), "up"));

    let dom = page_dom(&proxy, &format!("click=drain:media:b1&token={token}"))
        .await
        .expect("chromium ran before");
    assert_eq!(hook_said(&dom), "acted ok: drained", "no one was on it");
    assert_eq!(proxy.backend_state("b1").state_name(), "draining");
    assert!(shows_state(row(&dom, "media", "b1"), "drained"));
    assert!(
        dom.contains("<form id=\"token\" hidden=\"\">"),
        "the field is gone"
    );

    let toml = config_for(&backends, "").replace(
        "[limits]",
        &format!("[admin]\ntoken = \"{token}\"\ntoken_for_reads = true\n\n[limits]"),
    );
    let reads = spawn_proxy(&toml).await;
    let dom = page_dom(&reads, "click=drain:media:b2")
        .await
        .expect("chromium ran before");
    assert_eq!(
        hook_said(&dom),
        "token asked: Reading /status needs the admin token."
    );
    assert!(
        !dom.contains("data-id=\"b2\""),
        "no backend shown without the token"
    );
    let dom = page_dom(&reads, &format!("click=drain:media:b2&token={token}"))
        .await
        .expect("chromium ran before");
    assert_eq!(hook_said(&dom), "acted ok: drained");
    assert_eq!(reads.backend_state("b2").state_name(), "draining");
    assert!(shows_state(row(&dom, "media", "b2"), "drained"));
    assert!(shows_state(row(&dom, "media", "b1"), "up"));
}

/// `/status` lists what happened, oldest first: a backend going down and coming back up, an
/// operator's drain, a reload; the page draws these as its recent events.
#[tokio::test]
async fn status_lists_the_recent_events() {
    let backends = spawn_backends(2).await;
    let health =
        "\n[pools.media.health]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nrise = 1\nfall = 1\n";
    let proxy = spawn_proxy(&format!("{}{health}", config_for(&backends, ""))).await;
    let events = async || {
        let status = proxy.admin().await.get("/status").await.json();
        status["events"].as_array().cloned().unwrap_or_default()
    };
    let seen = async |event: &str, backend: &str| {
        events()
            .await
            .iter()
            .any(|e| e["event"] == event && e["backend"] == backend)
    };
    backends[1].set_healthy(false);
    eventually("b2's fall is listed", async || {
        seen("backend_down", "b2").await
    })
    .await;
    backends[1].set_healthy(true);
    eventually("b2's rise is listed", async || {
        seen("backend_up", "b2").await
    })
    .await;
    post(&proxy, "/pools/media/backends/b1/drain", None).await;
    post(&proxy, "/reload", None).await;
    let list = events().await;
    // In this order (a slow check on a busy machine may add a flap of its own in between).
    let mut rest = list.iter();
    for (event, backend, detail) in [
        ("backend_down", "b2", None),
        ("backend_up", "b2", None),
        ("admin_state", "b1", Some("draining")),
        ("reload", "", None),
    ] {
        assert!(
            rest.any(|e| e["event"] == event
                && e["backend"] == backend
                && detail.is_none_or(|d| e["detail"] == d)),
            "{event} {backend} not in order in {list:#?}"
        );
    }
    assert_eq!(list[0]["pool"], "media");
    assert!(list
        .iter()
        .all(|e| e["time"].as_str().is_some_and(|t| t.ends_with('Z'))));
}

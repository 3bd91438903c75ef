//! Health: active checks with rise/fall, passive ejection with retry, TCP checks, fail-open when
//! everything is down, and drain to zero.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::*;
use http::StatusCode;

/// A pool checked every 100 ms, 50 ms per probe, two results to flip.
const FAST: &str =
    "[pools.media.health]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nrise = 2\nfall = 2\n";

fn with_health(toml: &str, health: &str) -> String {
    toml.replacen(
        "[[pools.media.backends]]",
        &format!("{health}\n[[pools.media.backends]]"),
        1,
    )
}

#[tokio::test]
async fn a_failing_backend_is_ejected_within_fall_times_interval_and_comes_back_after_rise() {
    let backends = spawn_backends(2).await;
    let proxy = spawn_proxy(&with_health(&config_for(&backends, ""), FAST)).await;
    let b1 = proxy.backend_state("b1");
    eventually("b1's first checks pass", async || {
        b1.last_check().is_some_and(|c| c.passed)
    })
    .await;

    backends[0].set_healthy(false);
    let started = Instant::now();
    eventually("b1 marked down", async || !b1.is_up()).await;
    let took = started.elapsed();
    // fall × interval + timeout = 250 ms, with ±10 % jitter and a loaded machine's slack.
    eprintln!("ejection took {took:?} (fall × interval + timeout = 250ms)");
    assert!(
        took < Duration::from_millis(250 + 750),
        "ejection took {took:?}"
    );
    let mut c = proxy.h1().await;
    for _ in 0..10 {
        assert_eq!(
            c.get("/").await.backend(),
            "b2",
            "a down backend gets no new users"
        );
    }
    let last = b1.last_check().expect("checked");
    assert!(
        !last.passed && last.detail.contains("503"),
        "{}",
        last.detail
    );

    backends[0].set_healthy(true);
    eventually("b1 back up after rise passes", async || b1.is_up()).await;
    let mut seen = HashSet::new();
    for _ in 0..6 {
        seen.insert(c.get("/").await.backend().to_string());
    }
    assert!(seen.contains("b1"), "b1 takes new users again: {seen:?}");
}

#[tokio::test]
async fn a_killed_backend_costs_no_failed_response_and_its_users_are_repinned() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut c = proxy.h1_plain().await;
    let first = c.get("/").await;
    let victim = first.backend().to_string();
    let pair = first.cookie().expect("cookie");
    let mut failures = Vec::new();
    let mut repinned = None;
    for i in 0..2000 {
        if i == 500 {
            backends
                .iter()
                .find(|b| b.id == victim)
                .expect("victim")
                .kill();
        }
        // Every tenth request is the pinned user; the rest are new users.
        let pinned = i % 10 == 0;
        let mut req = c.request("GET", "/");
        if pinned {
            req = req.header("cookie", repinned.as_deref().unwrap_or(pair.as_str()));
        }
        let r = c.fetch(req.body(empty()).expect("request")).await;
        if r.status != StatusCode::OK {
            failures.push((i, r.status, r.text()));
            continue;
        }
        if i >= 500 {
            assert_ne!(r.backend(), victim, "request {i} reached the dead backend");
            if pinned && repinned.is_none() {
                let fresh = r.headers.get("set-cookie").and_then(|v| v.to_str().ok());
                let fresh = fresh
                    .expect("the pinned user gets a new cookie")
                    .split(';')
                    .next();
                repinned = fresh.map(str::to_string);
            }
        } else if pinned {
            assert_eq!(r.backend(), victim);
        }
    }
    assert!(failures.is_empty(), "failed responses: {failures:?}");
    let repinned = repinned.expect("the pinned user was re-pinned");
    assert!(!repinned.contains(&format!(":{victim}:")));
    assert!(
        !proxy.backend_state(&victim).is_up(),
        "passive failures ejected it"
    );
}

#[tokio::test]
async fn a_tcp_check_pool_works() {
    let backends = spawn_backends(2).await;
    let tcp = FAST.replace("interval", "path = \"\"\ninterval");
    let proxy = spawn_proxy(&with_health(&config_for(&backends, ""), &tcp)).await;
    let b1 = proxy.backend_state("b1");
    eventually("b1 checked", async || b1.last_check().is_some()).await;
    assert_eq!(
        b1.last_check().map(|c| c.detail),
        Some("TCP connect".to_string())
    );
    assert_eq!(
        backends[0].health_checks(),
        0,
        "a TCP check sends no HTTP request"
    );
    backends[0].kill();
    eventually("b1 marked down", async || !b1.is_up()).await;
    let status = proxy.admin().await.get("/status").await.json();
    let b1_status = &status["pools"][0]["backends"][0];
    assert_eq!(b1_status["state"], "down");
    assert_eq!(b1_status["last_check"]["result"], "fail");
    let mut c = proxy.h1().await;
    for _ in 0..4 {
        assert_eq!(c.get("/").await.backend(), "b2");
    }
}

#[tokio::test]
async fn when_every_backend_fails_its_checks_traffic_fails_open() {
    let backends = spawn_backends(2).await;
    let proxy = spawn_proxy(&with_health(&config_for(&backends, ""), FAST)).await;
    for b in &backends {
        b.set_healthy(false);
    }
    eventually("both marked down", async || {
        !proxy.backend_state("b1").is_up() && !proxy.backend_state("b2").is_up()
    })
    .await;
    // The servers answer; only their health endpoint fails. Users are still served.
    let r = proxy.h1().await.get("/").await;
    assert_eq!(r.status, StatusCode::OK);
    // And when they are truly gone, the client learns it at once.
    for b in &backends {
        b.kill();
    }
    let r = proxy.h1().await.get("/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn a_draining_backends_tunnels_close_at_drain_timeout() {
    let backends = spawn_backends(2).await;
    let toml = config_with_pool(&backends, "", "drain_timeout = \"300ms\"");
    let proxy = spawn_proxy(&toml).await;
    let mut ws = proxy.ws_plain("/ws", None).await;
    echo(ws.ws(), "before the drain").await;
    let on = ws.backend();
    let mut admin = proxy.admin().await;
    let req = admin
        .request("POST", &format!("/pools/media/backends/{on}/drain"))
        .body(empty())
        .expect("request");
    assert_eq!(admin.fetch(req).await.status, StatusCode::OK);
    echo(ws.ws(), "still open while draining").await;
    echo(ws.ws(), "still open while draining").await;
    let mine = proxy.status_of(&on).await;
    assert_eq!(
        (mine["state"].as_str(), mine["drained"].as_bool()),
        (Some("draining"), Some(false))
    );
    closed(ws.ws()).await;
    let b = proxy.backend_state(&on);
    eventually("the drained backend has no session left", async || {
        b.sessions() == 0
    })
    .await;
    let mine = proxy.status_of(&on).await;
    assert_eq!(mine["drained"], true, "drained to zero is reported");
}

/// A drain ends at its deadline: the backend's tunnels close, its pins no longer hold (its
/// users are placed elsewhere with a new cookie, as for maintenance), and the drain reaches
/// zero. A second drain call meanwhile does not push the deadline back.
#[tokio::test]
async fn a_drain_deadline_moves_its_pins_and_a_second_drain_call_keeps_it() {
    let backends = spawn_backends(2).await;
    let toml = config_with_pool(&backends, "", "drain_timeout = \"500ms\"");
    let proxy = spawn_proxy(&toml).await;
    let cookie = proxy.user_pinned_to("b1").await;
    let mut ws = proxy.ws_plain("/ws", Some(&cookie)).await;
    assert_eq!(ws.backend(), "b1");
    let b1 = proxy.backend_state("b1");
    let drain = async || {
        let mut admin = proxy.admin().await;
        let req = admin
            .request("POST", "/pools/media/backends/b1/drain")
            .body(empty())
            .expect("request");
        admin.fetch(req).await.status
    };
    assert_eq!(drain().await, StatusCode::OK);
    let generation = b1.admin_generation();
    assert_eq!(drain().await, StatusCode::OK);
    assert_eq!(
        b1.admin_generation(),
        generation,
        "the second call restarted the drain"
    );
    echo(ws.ws(), "pinned users keep working while it drains").await;

    closed(ws.ws()).await;
    let r = proxy.h1().await.get_with_cookie("/", Some(&cookie)).await;
    assert_eq!(
        r.backend(),
        "b2",
        "the pin to a drain past its deadline still held"
    );
    assert!(r.cookie().is_some_and(|c| c != cookie), "no new cookie");
    let again = proxy.ws_plain("/ws", Some(&cookie)).await;
    assert_eq!(
        again.backend(),
        "b2",
        "a reconnecting user got a new tunnel on b1"
    );
    eventually("the drain reached zero", async || b1.drained()).await;
    assert_eq!(proxy.status_of("b1").await["drained"], true);
}

#[tokio::test]
async fn a_client_breaking_its_own_request_body_does_not_eject_the_backend() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(proxy.http)
            .await
            .expect("connect");
        s.write_all(b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
            .await
            .expect("write");
        let mut buf = Vec::new();
        let _ = within("the broken request ends", s.read_to_end(&mut buf)).await;
        let head = String::from_utf8_lossy(&buf);
        assert!(
            !head.starts_with("HTTP/1.1 502"),
            "blamed on the backend: {head}"
        );
    }
    assert!(
        proxy.backend_state("b1").is_up(),
        "a client's bad body ejected the backend"
    );
    assert_eq!(proxy.h1().await.get("/").await.status, StatusCode::OK);
}

/// A backend that closes a request without answering it gives the client a 502 but is not
/// marked down: Janus closes a WebSocket upgrade that lacks its subprotocol that way, and four
/// such requests from any client used to mark every backend down. Only failures that are the
/// backend's own (refused, reset or timed out before the request left) count.
#[tokio::test]
async fn requests_a_backend_drops_unanswered_do_not_mark_it_down() {
    use tokio::io::AsyncReadExt;
    // Reads each request head and closes the connection. A TCP health check passes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let dropper = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = s.read(&mut head).await;
            });
        }
    });
    let health = "[pools.media.health]\npath = \"\"\ninterval = \"1h\"\nrise = 2\nfall = 2";
    let proxy = spawn_proxy(&config_toml(&[("b1", addr)], "", health)).await;
    let b1 = proxy.backend_state("b1");
    for _ in 0..3 {
        let r = proxy.ws_plain("/ws", None).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_GATEWAY,
            "an upgrade closed unanswered"
        );
        let r = proxy.h1_plain().await.get("/").await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "a GET closed unanswered");
    }
    assert!(
        b1.is_up(),
        "six unanswered requests marked the backend down"
    );
    assert_eq!(proxy.status_of("b1").await["state"], "up");
    dropper.abort();
}

/// Health is checked on a port of its own where the config names one (HAProxy's `check
/// port`): per backend with `health_port`, for a whole pool with `health.port`. Janus answers
/// HTTP checks on its HTTP transport's port, and 403 to a GET on its WebSocket port.
#[tokio::test]
async fn health_is_checked_on_the_configured_port() {
    let backends = spawn_backends(2).await;
    for b in &backends {
        b.set_healthy(false);
    }
    let checker = spawn_backend("checker").await;
    let own = format!("address = \"{}\"\n", backends[0].addr);
    let toml = with_health(&config_for(&backends, ""), FAST).replace(
        &own,
        &format!("{own}health_port = {}\n", checker.addr.port()),
    );
    let proxy = spawn_proxy(&toml).await;
    let (b1, b2) = (proxy.backend_state("b1"), proxy.backend_state("b2"));
    eventually("b2, checked on its own port, is down", async || !b2.is_up()).await;
    eventually("the checker is asked twice, fall's worth", async || {
        checker.health_checks() >= 2
    })
    .await;
    assert!(
        b1.is_up(),
        "b1 is checked on the checker's port, which passes"
    );
    assert_eq!(backends[0].health_checks(), 0, "b1's own port was checked");
    let mut proxy = proxy;
    let stopped = within("shutdown", proxy.shutdown()).await;
    stopped.expect("join").expect("clean shutdown");
    let own_before = backends[1].health_checks();

    // The pool's `health.port` covers every backend without a port of its own.
    let checker = spawn_backend("checker").await;
    let pool_port = format!("{FAST}port = {}\n", checker.addr.port());
    let proxy = spawn_proxy(&with_health(&config_for(&backends, ""), &pool_port)).await;
    let (b1, b2) = (proxy.backend_state("b1"), proxy.backend_state("b2"));
    // Three rounds of checks for both, more than `fall`.
    eventually("the checker is asked for both", async || {
        checker.health_checks() >= 6
    })
    .await;
    assert!(
        b1.is_up() && b2.is_up(),
        "both are checked on the pool's port"
    );
    assert_eq!(
        backends[0].health_checks() + backends[1].health_checks(),
        own_before,
        "no backend's own port was checked"
    );
}

//! WebSocket tunnels over HTTP/1.1 Upgrade and HTTP/2 extended CONNECT: echo, refusal, backend
//! death, counting, stickiness, rooms, capacity, idle timeout and shutdown.

use std::sync::Arc;

use crate::support::*;
use futures_util::future::join_all;
use http::StatusCode;

fn sessions(proxy: &TestProxy) -> u32 {
    proxy.runtime.snapshot().pools[0]
        .members
        .iter()
        .map(|m| m.backend.sessions())
        .sum()
}

fn sessions_of(proxy: &TestProxy, id: &str) -> u32 {
    proxy.runtime.snapshot().pools[0]
        .member(id)
        .expect("member")
        .backend
        .sessions()
}

#[tokio::test]
async fn echo_over_tls_with_http1_upgrade() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut r = proxy.ws_tls("/ws", None).await;
    assert_eq!(r.status, StatusCode::SWITCHING_PROTOCOLS);
    assert!(
        r.set_cookie_pair().is_some(),
        "a new user's 101 carries the cookie"
    );
    echo(r.ws(), "hello over h1").await;
    echo(r.ws(), &"x".repeat(100_000)).await;
    assert_eq!(sessions(&proxy), 1);
}

#[tokio::test]
async fn echo_over_http2_extended_connect() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut r = proxy.ws_h2("/ws", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.set_cookie_pair().is_some(),
        "the 200 to a CONNECT carries the cookie"
    );
    let backend = r.backend();
    echo(r.ws(), "hello over h2").await;
    echo(r.ws(), &"y".repeat(100_000)).await;
    assert_eq!(sessions_of(&proxy, &backend), 1);
    // Several tunnels share one HTTP/2 connection in real browsers; here, a second one on the
    // same proxy still echoes independently.
    let mut again = proxy.ws_h2("/ws", r.set_cookie_pair().as_deref()).await;
    assert_eq!(
        again.backend(),
        backend,
        "the cookie pins the second tunnel too"
    );
    echo(again.ws(), "second").await;
    echo(r.ws(), "first still works").await;
}

#[tokio::test]
async fn a_backend_refusing_the_upgrade_is_passed_through() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let r = proxy.ws_tls("/ws-refuse", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body.as_deref(), Some(&b"no websocket here\n"[..]));
    let r = proxy.ws_h2("/ws-refuse", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body.as_deref(), Some(&b"no websocket here\n"[..]));
    assert_eq!(sessions(&proxy), 0);
}

#[tokio::test]
async fn a_backend_dying_mid_tunnel_closes_that_tunnel_only() {
    let backends = spawn_backends(2).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut doomed = proxy.ws_tls("/ws", None).await;
    let doomed_on = doomed.backend();
    let mut survivor = proxy.ws_tls("/ws", None).await;
    assert_ne!(
        survivor.backend(),
        doomed_on,
        "two new users on two idle backends"
    );
    echo(doomed.ws(), "before").await;
    assert_eq!(sessions(&proxy), 2);
    backends
        .iter()
        .find(|b| b.id == doomed_on)
        .expect("backend")
        .kill();
    closed(doomed.ws()).await;
    eventually("the dead tunnel's session is released", async || {
        sessions_of(&proxy, &doomed_on) == 0
    })
    .await;
    echo(survivor.ws(), "still here").await;
    assert_eq!(sessions(&proxy), 1);
}

#[tokio::test]
async fn five_hundred_concurrent_tunnels_all_echo() {
    let backends = spawn_backends(3).await;
    let proxy = Arc::new(spawn_proxy(&config_for(&backends, "")).await);
    let opened = join_all((0..500).map(|i| {
        let proxy = proxy.clone();
        async move {
            let mut r = proxy.ws_plain("/ws", None).await;
            echo(r.ws(), &format!("tunnel {i}")).await;
            r
        }
    }))
    .await;
    assert_eq!(sessions(&proxy), 500);
    for b in &backends {
        let n = sessions_of(&proxy, &b.id);
        assert!((100..=250).contains(&n), "{} holds {n} of 500", b.id);
    }
    let mut opened = opened;
    for (i, r) in opened.iter_mut().enumerate().step_by(50) {
        echo(r.ws(), &format!("again {i}")).await;
    }
    drop(opened);
    eventually("every session released", async || sessions(&proxy) == 0).await;
}

#[tokio::test]
async fn session_counts_stay_exact_over_two_thousand_open_close_cycles() {
    let backends = spawn_backends(2).await;
    let proxy = Arc::new(spawn_proxy(&config_for(&backends, "")).await);
    join_all((0..10).map(|w| {
        let proxy = proxy.clone();
        async move {
            for i in 0..200 {
                let mut r = proxy.ws_plain("/ws", None).await;
                if i % 2 == 0 {
                    echo(r.ws(), &format!("{w}-{i}")).await;
                    // Half close politely, half just drop the connection.
                    let _ = r.ws().close(None).await;
                }
            }
        }
    }))
    .await;
    eventually("sessions back to zero", async || sessions(&proxy) == 0).await;
    let metrics = proxy.admin().await.get("/metrics").await.text();
    for b in &backends {
        let line = format!(
            "rtcgate_backend_sessions{{backend=\"{}\",pool=\"media\"}} 0",
            b.id
        );
        assert!(metrics.contains(&line), "missing `{line}` in:\n{metrics}");
    }
}

#[tokio::test]
async fn a_reconnecting_user_returns_to_the_same_backend() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let first = proxy.ws_tls("/ws", None).await;
    let cookie = first.set_cookie_pair().expect("cookie");
    drop(first);
    for _ in 0..5 {
        let mut again = proxy.ws_tls("/ws", Some(&cookie)).await;
        assert_eq!(again.status, StatusCode::SWITCHING_PROTOCOLS);
        assert!(cookie.contains(&format!(":{}:", again.backend())));
        assert_eq!(again.set_cookie_pair(), None, "the pin did not change");
        echo(again.ws(), "back").await;
    }
}

#[tokio::test]
async fn a_rooms_tunnels_share_one_backend() {
    let backends = spawn_backends(3).await;
    let toml = config_with_pool(&backends, "", "room_param = \"room\"");
    let proxy = spawn_proxy(&toml).await;
    let mut tunnels = Vec::new();
    for _ in 0..30 {
        let mut r = proxy.ws_plain("/ws?room=standup", None).await;
        echo(r.ws(), "in the room").await;
        tunnels.push(r);
    }
    let home = tunnels[0].backend();
    assert!(
        tunnels.iter().all(|t| t.backend() == home),
        "the room split"
    );
    // The room's own 30 sessions do not push its next participant away.
    assert_eq!(sessions_of(&proxy, &home), 30);
    let mut late = proxy.ws_tls("/ws?room=standup", None).await;
    assert_eq!(late.backend(), home);
    echo(late.ws(), "late joiner").await;
}

#[tokio::test]
async fn max_sessions_caps_new_pins_but_admits_pinned_users() {
    let backends = spawn_backends(2).await;
    let toml = config_with_pool(&backends, "", "max_sessions = 1");
    let proxy = spawn_proxy(&toml).await;
    let a = proxy.ws_plain("/ws", None).await;
    let b = proxy.ws_plain("/ws", None).await;
    assert_ne!(a.backend(), b.backend());
    let full = proxy.ws_plain("/ws", None).await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_retry_after(
        full.headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
    );
    let cookie = a.set_cookie_pair().expect("cookie");
    let mut pinned = proxy.ws_plain("/ws", Some(&cookie)).await;
    assert_eq!(pinned.status, StatusCode::SWITCHING_PROTOCOLS);
    echo(pinned.ws(), "over the cap, but pinned").await;
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "tunnel_idle_timeout = \"300ms\"")).await;
    let mut r = proxy.ws_plain("/ws", None).await;
    echo(r.ws(), "then silence").await;
    closed(r.ws()).await;
    eventually("the idle tunnel's session is released", async || {
        sessions(&proxy) == 0
    })
    .await;
}

#[tokio::test]
async fn shutdown_gives_tunnels_the_grace_period_then_closes_them() {
    let backends = spawn_backends(1).await;
    let mut proxy = spawn_proxy(&config_for(&backends, "shutdown_grace = \"1s\"")).await;
    let mut r = proxy.ws_plain("/ws", None).await;
    echo(r.ws(), "before shutdown").await;
    let stopping = proxy.shutdown();
    echo(r.ws(), "during the grace period").await;
    closed(r.ws()).await;
    within("server stops", stopping)
        .await
        .expect("join")
        .expect("run");
}

#[tokio::test]
async fn open_tunnels_count_against_max_connections() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "max_connections = 2")).await;
    let mut a = proxy.ws_plain("/ws", None).await;
    let _b = proxy.ws_plain("/ws", None).await;
    echo(a.ws(), "two tunnels hold both slots").await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut third = tokio::net::TcpStream::connect(proxy.http)
        .await
        .expect("connect");
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let early =
        tokio::time::timeout(std::time::Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a third connection was served while two tunnels held the cap"
    );
    drop(a);
    let mut reply = Vec::new();
    within("served once a tunnel closed", third.read_to_end(&mut reply))
        .await
        .expect("read");
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn an_upgrade_carrying_a_body_is_refused_and_the_backend_connection_stays_clean() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut s = tokio::net::TcpStream::connect(proxy.http)
        .await
        .expect("connect");
    let smuggled = "GET /headers HTTP/1.1\r\nHost: x\r\n\r\n";
    let req = format!(
        "GET /ws-refuse HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Content-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = within("answer", s.read(&mut buf)).await.expect("read");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    // Nothing was smuggled to the backend, and the next user is served normally.
    assert_eq!(backends[0].requests(), 0);
    let r = proxy.h1().await.get("/headers").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(backends[0].requests(), 1);
}

#[tokio::test]
async fn an_http2_tunnel_outlives_the_connection_idle_timeout() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "idle_timeout = \"200ms\"")).await;
    let mut r = proxy.ws_h2("/ws", None).await;
    echo(r.ws(), "before the quiet").await;
    // Several idle periods of the client connection pass with the tunnel silent: the tunnel
    // has its own (much longer) idle timeout and must survive.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    echo(r.ws(), "after the quiet").await;
}

#[tokio::test]
async fn concurrent_upgrades_cannot_overshoot_max_sessions() {
    let backends = spawn_backends(1).await;
    let toml = config_with_pool(&backends, "", "max_sessions = 3");
    let proxy = Arc::new(spawn_proxy(&toml).await);
    let replies = join_all((0..20).map(|_| {
        let proxy = proxy.clone();
        async move { proxy.ws_plain("/ws", None).await }
    }))
    .await;
    let opened = replies
        .iter()
        .filter(|r| r.status == StatusCode::SWITCHING_PROTOCOLS)
        .count();
    let refused = replies
        .iter()
        .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!((opened, refused), (3, 17));
    assert_eq!(sessions(&proxy), 3);
}

/// Joiners of a new room who arrive together meet on one backend: a room split is a broken
/// call. (An upgrade in flight counted twice in its backend's load, and the room was recorded
/// only once the backend's 101 came, so the second joiner found the room's home over its
/// bounded load and went elsewhere: with two Janus gateways, 1 to 4 of every 6 to 8 rooms.)
#[tokio::test]
async fn joiners_of_a_new_room_who_arrive_together_meet_on_one_backend() {
    let backends = spawn_backends(2).await;
    let toml = config_with_pool(&backends, "", "room_param = \"room\"");
    let proxy = spawn_proxy(&toml).await;
    for room in 0..8 {
        let path = format!("/ws?room=together-{room}");
        let mut joined = join_all((0..6).map(|_| proxy.ws_plain(&path, None))).await;
        let homes: std::collections::HashSet<String> = joined.iter().map(|j| j.backend()).collect();
        assert_eq!(homes.len(), 1, "room {room} was split over {homes:?}");
        for j in &mut joined {
            echo(j.ws(), "in the room").await;
        }
    }
}

/// The close code a WebSocket client gets next, passing over data and pings.
async fn close_code<S>(ws: &mut Ws<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match within("a close frame", ws.next()).await {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => return None,
        }
    }
}

/// A backend put in maintenance has its tunnels closed at once with 1012 (service restart),
/// over HTTP/1.1 and HTTP/2 alike, so that its users reconnect elsewhere; with
/// `on_down = "keep"` they stay open.
#[tokio::test]
async fn maintenance_closes_tunnels_with_1012_unless_kept() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut h1 = proxy.ws_tls("/ws", None).await;
    let mut h2 = proxy.ws_h2("/ws", None).await;
    echo(h1.ws(), "before").await;
    echo(h2.ws(), "before").await;
    proxy
        .runtime
        .set_admin_state("media", "b1", rtcgate::state::backend::AdminState::Maint)
        .expect("maint");
    assert_eq!(close_code(h1.ws()).await, Some(1012));
    assert_eq!(close_code(h2.ws()).await, Some(1012));

    let kept = config_with_pool(&backends, "", "on_down = \"keep\"");
    let proxy = spawn_proxy(&kept).await;
    let mut r = proxy.ws_plain("/ws", None).await;
    proxy
        .runtime
        .set_admin_state("media", "b1", rtcgate::state::backend::AdminState::Maint)
        .expect("maint");
    echo(r.ws(), "still open in maintenance").await;
}

/// rtcgate's shutdown, once the grace period is over, ends open tunnels with 1001 (going away).
#[tokio::test]
async fn shutdown_ends_open_tunnels_with_1001() {
    let backends = spawn_backends(1).await;
    let mut proxy = spawn_proxy(&config_for(&backends, "shutdown_grace = \"200ms\"")).await;
    let mut r = proxy.ws_tls("/ws", None).await;
    echo(r.ws(), "before shutdown").await;
    let stopping = proxy.shutdown();
    assert_eq!(close_code(r.ws()).await, Some(1001));
    within("server stops", stopping)
        .await
        .expect("join")
        .expect("run");
}

/// A backend that dies between frames: its clients get 1014 (bad gateway), not a bare close
/// that browsers report as 1006. (Read as bytes: tungstenite takes 1014, registered in 2018,
/// for a protocol error; browsers accept it.)
#[tokio::test]
async fn a_dead_backend_gets_its_clients_a_1014() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.http)
        .await
        .expect("connect");
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("upgrade");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        within("101", tcp.read_exact(&mut b)).await.expect("101");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // A masked text frame "hi", and its echo.
    tcp.write_all(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2])
        .await
        .expect("frame");
    let mut echo = [0u8; 4];
    within("echo", tcp.read_exact(&mut echo))
        .await
        .expect("echo");
    assert_eq!(echo, [0x81, 0x02, b'h', b'i']);
    backends[0].kill();
    let mut rest = Vec::new();
    within("close", tcp.read_to_end(&mut rest))
        .await
        .expect("read");
    assert_eq!(
        rest,
        [0x88, 0x02, 0x03, 0xf6],
        "a close frame with 1014, then EOF"
    );
}

/// A backend that stops passing its health checks has its tunnels closed with 1012 once it is
/// marked down: within fall x interval + timeout, not at the tunnel idle timeout (1 h).
#[tokio::test]
async fn tunnels_of_a_backend_marked_down_are_closed() {
    let backends = spawn_backends(2).await;
    let health =
        "[pools.media.health]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nrise = 2\nfall = 2\n";
    let toml = config_for(&backends, "").replacen(
        "[[pools.media.backends]]",
        &format!("{health}\n[[pools.media.backends]]"),
        1,
    );
    let proxy = spawn_proxy(&toml).await;
    let cookie = proxy.user_pinned_to("b1").await;
    let mut r = proxy.ws_tls("/ws", Some(&cookie)).await;
    assert_eq!(r.backend(), "b1");
    echo(r.ws(), "before").await;
    let hung = std::time::Instant::now();
    backends[0].set_healthy(false);
    assert_eq!(close_code(r.ws()).await, Some(1012));
    let took = hung.elapsed();
    // fall x interval (+-10 % jitter) + timeout, and room for a loaded machine.
    assert!(
        took < std::time::Duration::from_secs(3),
        "closed {took:?} after the backend hung"
    );
    // The tunnel is counted once its pump has ended, a moment after the client saw the close.
    let line = "rtcgate_tunnels_closed_total{pool=\"media\",reason=\"down\"} 1";
    eventually("the tunnel is counted as closed for down", async || {
        proxy
            .admin()
            .await
            .get("/metrics")
            .await
            .text()
            .contains(line)
    })
    .await;
}

/// A room stays whole on failover: its backend dies, its 20 participants reconnect at once,
/// and all of them land on one new backend.
#[tokio::test]
async fn a_room_of_twenty_stays_together_through_its_backends_failure() {
    let backends = spawn_backends(3).await;
    let toml = config_with_pool(&backends, "", "room_param = \"room\"");
    let proxy = spawn_proxy(&toml).await;
    let path = "/ws?room=all-hands";
    let mut joined = join_all((0..20).map(|_| proxy.ws_plain(path, None))).await;
    let home = joined[0].backend();
    assert!(joined.iter().all(|j| j.backend() == home), "split before");
    let dead = backends.iter().find(|b| b.id == home).expect("home");
    dead.kill();
    for j in &mut joined {
        closed(j.ws()).await;
    }
    let cookies: Vec<Option<String>> = joined.iter().map(|j| j.set_cookie_pair()).collect();
    let again = join_all(cookies.iter().map(|c| proxy.ws_plain(path, c.as_deref()))).await;
    let homes: std::collections::HashSet<String> = again.iter().map(|j| j.backend()).collect();
    assert_eq!(homes.len(), 1, "the room split on failover: {homes:?}");
    assert!(!homes.contains(&home), "back on the dead backend");
}

/// A reconnect wave lands evenly: a backend with 500 tunnels dies, its users reconnect at
/// once, and the two others take them within 10 % of even, none refused.
#[tokio::test]
async fn a_reconnect_wave_spreads_evenly_over_the_rest() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let cookie = proxy.user_pinned_to("b1").await;
    let users = 500;
    let mut open = Vec::new();
    for chunk in 0..(users / 50) {
        let _ = chunk;
        open.extend(join_all((0..50).map(|_| proxy.ws_plain("/ws", Some(&cookie)))).await);
    }
    assert!(open.iter().all(|o| o.backend() == "b1"));
    backends[0].kill();
    for o in &mut open {
        closed(o.ws()).await;
    }
    let wave = join_all((0..users).map(|_| proxy.ws_plain("/ws", Some(&cookie)))).await;
    let mut on = std::collections::HashMap::<String, usize>::new();
    for w in &wave {
        assert_eq!(
            w.status,
            StatusCode::SWITCHING_PROTOCOLS,
            "a user was refused"
        );
        *on.entry(w.backend()).or_default() += 1;
    }
    let even = users / 2;
    for id in ["b2", "b3"] {
        let n = on.get(id).copied().unwrap_or(0);
        assert!(
            n.abs_diff(even) * 10 <= even,
            "{id} took {n} of {users}: {on:?}"
        );
    }
}

/// Slow start: a backend enabled again takes only a small share of new users at first, as
/// HAProxy's `slowstart` has it, so that a recovered server is not flooded by a reconnect wave.
#[tokio::test]
async fn slow_start_keeps_a_backend_enabled_again_from_taking_the_whole_wave() {
    let backends = spawn_backends(2).await;
    let toml = config_with_pool(&backends, "", "slow_start = \"30s\"");
    let proxy = spawn_proxy(&toml).await;
    use rtcgate::state::backend::AdminState;
    for state in [AdminState::Maint, AdminState::Enabled] {
        proxy
            .runtime
            .set_admin_state("media", "b1", state)
            .expect("admin state");
    }
    let wave = join_all((0..40).map(|_| proxy.ws_plain("/ws", None))).await;
    let on_b1 = wave.iter().filter(|w| w.backend() == "b1").count();
    assert!(
        on_b1 <= 4,
        "b1, back for less than a second of 30, took {on_b1} of 40"
    );
    assert!(
        wave.iter()
            .all(|w| w.status == StatusCode::SWITCHING_PROTOCOLS),
        "a user was refused"
    );
}

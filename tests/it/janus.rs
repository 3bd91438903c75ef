//! rtcgate in front of real Janus gateways (Debian's `janus`, started by the tests on
//! loopback): the Janus WebSocket API through rtcgate over wss, by HTTP/1.1 Upgrade and HTTP/2
//! extended CONNECT; a room's participants on one gateway; a cookie that brings a user back;
//! and failover the Genesys way when the gateway a user is on dies. Skipped with a note where
//! Janus is not installed; required under `CI=true`.

use std::collections::HashSet;

use crate::support::*;
use http::StatusCode;

/// Janus speaks its API only to clients that ask for its subprotocol.
const JANUS_PROTOCOL: (&str, &str) = ("sec-websocket-protocol", "janus-protocol");

type Wss = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A user of the Janus API through rtcgate over wss (HTTP/1.1 Upgrade) at `path`, sending
/// `cookie` if it has one: its client, the cookie rtcgate set (if it set one), and the gateway
/// it reached (`info`'s server-name).
async fn janus_user(
    proxy: &TestProxy,
    path: &str,
    cookie: Option<&str>,
) -> (JanusClient<Wss>, Option<String>, String) {
    let mut headers = vec![JANUS_PROTOCOL];
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    let mut r = proxy.ws_tls_with(path, &headers).await;
    assert_eq!(r.status, StatusCode::SWITCHING_PROTOCOLS, "{:?}", r.body);
    let set = r.set_cookie_pair();
    let mut c = JanusClient::new(r.ws.take().expect("upgraded"));
    let on = c.server_name().await;
    (c, set, on)
}

#[tokio::test]
async fn the_janus_api_works_through_rtcgate_over_h1_and_h2() {
    let Some(pool) = Janus::pool(2).await else {
        return;
    };
    let proxy = spawn_proxy(&janus_config(&pool)).await;
    let names: HashSet<&str> = pool.iter().map(|j| j.name.as_str()).collect();

    let mut h1 = proxy.ws_tls_with("/", &[JANUS_PROTOCOL]).await;
    assert_eq!(h1.status, StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(h1.headers["sec-websocket-protocol"], "janus-protocol");
    let mut c = JanusClient::new(h1.ws.take().expect("upgraded"));
    let on = c.server_name().await;
    assert!(names.contains(on.as_str()), "{on} is not one of {names:?}");
    c.session_with_echotest().await;

    let mut h2 = proxy.ws_h2_with("/", &[JANUS_PROTOCOL]).await;
    assert_eq!(h2.status, StatusCode::OK, "{:?}", h2.body);
    assert_eq!(h2.headers["sec-websocket-protocol"], "janus-protocol");
    let mut c = JanusClient::new(h2.ws.take().expect("upgraded"));
    let on = c.server_name().await;
    assert!(names.contains(on.as_str()), "{on} is not one of {names:?}");
    c.session_with_echotest().await;

    // Without its subprotocol Janus closes the upgrade unanswered: that client gets a 502, and
    // no number of such clients marks a gateway down.
    for _ in 0..6 {
        let refused = proxy.ws_tls_with("/", &[]).await;
        assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    }
    for j in &pool {
        assert_eq!(proxy.status_of(&j.name).await["state"], "up", "{}", j.name);
    }
}

#[tokio::test]
async fn a_room_meets_on_one_janus_and_rooms_spread_over_all() {
    let Some(pool) = Janus::pool(2).await else {
        return;
    };
    let proxy = spawn_proxy(&janus_config(&pool)).await;

    // Two participants of one room who arrive together.
    let ((_a, _, a), (_b, _, b)) = tokio::join!(
        janus_user(&proxy, "/?room=standup", None),
        janus_user(&proxy, "/?room=standup", None),
    );
    assert_eq!(a, b, "the room split");

    // Twenty rooms of one participant each use both gateways.
    let mut homes = HashSet::new();
    let mut open = Vec::new();
    for i in 0..20 {
        let (c, _, on) = janus_user(&proxy, &format!("/?room=room-{i}"), None).await;
        homes.insert(on);
        open.push(c);
    }
    assert_eq!(homes.len(), pool.len(), "20 rooms all on {homes:?}");

    // A user who reconnects with its cookie returns to its gateway.
    let (_, cookie, home) = janus_user(&proxy, "/", None).await;
    let cookie = cookie.expect("a new user is pinned");
    for _ in 0..3 {
        let (_, _, on) = janus_user(&proxy, "/", Some(&cookie)).await;
        assert_eq!(on, home, "the cookie brings the user back");
    }
}

/// The Genesys model: the gateway a user is on dies; the user's tunnel closes at once, it
/// reconnects through rtcgate with its old cookie, lands on another gateway with a new cookie,
/// and its new session works there.
#[tokio::test]
async fn when_a_janus_dies_its_users_reconnect_elsewhere_and_are_repinned() {
    let Some(mut pool) = Janus::pool(2).await else {
        return;
    };
    let proxy = spawn_proxy(&janus_config(&pool)).await;
    let (mut c, cookie, home) = janus_user(&proxy, "/", None).await;
    let cookie = cookie.expect("pinned");
    c.session_with_echotest().await;

    let dead = pool
        .iter_mut()
        .find(|j| j.name == home)
        .expect("the user's gateway");
    dead.kill();
    closed(&mut c.ws).await;

    let (mut c, repinned, now) = janus_user(&proxy, "/", Some(&cookie)).await;
    let repinned = repinned.expect("a new cookie");
    assert_ne!(repinned, cookie);
    assert_ne!(now, home, "sent back to the dead gateway");
    c.session_with_echotest().await;

    let (_, _, again) = janus_user(&proxy, "/", Some(&repinned)).await;
    assert_eq!(again, now, "the new cookie keeps the user there");
}

/// Real media: aiortc negotiates with Janus's echotest through rtcgate's tunnel (HTTP/1.1
/// Upgrade over TLS); the media itself goes straight to Janus over UDP, and the echoed video
/// frames come back.
#[tokio::test]
async fn media_goes_straight_to_janus_while_signalling_goes_through_rtcgate() {
    let _solo = solo().await;
    let Some(pool) = Janus::pool(2).await else {
        return;
    };
    let proxy = spawn_proxy(&janus_config(&pool)).await;
    let url = format!("wss://127.0.0.1:{}/?room=media", proxy.https.port());
    let ca = proxy.certs.dir.path().join("cert.pem");
    let Some(media) = echo_media(&url, &ca, 20).await else {
        return;
    };
    assert_eq!(media.frames, 20, "{media:?}");
    let janus = pool
        .iter()
        .find(|j| j.name == media.server)
        .unwrap_or_else(|| panic!("{media:?} names no gateway of the pool"));
    assert_eq!(media.protocol, "udp", "{media:?}");
    assert!(media.local.ip().is_loopback(), "{media:?}");
    assert!(
        media.remote.ip().is_loopback() && janus.rtp.contains(&media.remote.port()),
        "media went to {}, not to {}'s RTP ports {:?}",
        media.remote,
        janus.name,
        janus.rtp
    );
    for not_media in [proxy.https, proxy.http, janus.ws] {
        assert_ne!(media.remote, not_media);
    }
}

/// A hung media server (frozen: it accepts connections, answers nothing) has its users'
/// tunnels closed with 1012 once its health checks mark it down, within fall x interval +
/// timeout (2 x 200 ms + 150 ms here) and a margin, not at the tunnel idle timeout; the users
/// reconnect to the other gateway.
#[tokio::test]
async fn a_hung_janus_has_its_tunnels_closed_and_its_users_move() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let Some(pool) = Janus::pool(2).await else {
        return;
    };
    let proxy = spawn_proxy(&janus_config(&pool)).await;
    let (mut c, cookie, home) = janus_user(&proxy, "/", None).await;
    let cookie = cookie.expect("pinned");
    let janus = pool.iter().find(|j| j.name == home).expect("its gateway");
    janus.hang();
    let hung = std::time::Instant::now();
    let code = loop {
        match within("a close frame", c.ws.next()).await {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("the tunnel ended without a close frame: {other:?}"),
        }
    };
    let took = hung.elapsed();
    janus.resume();
    assert_eq!(code, Some(1012));
    eprintln!("a hung gateway's tunnel closed {took:?} after it froze");
    assert!(
        took < std::time::Duration::from_secs(3),
        "closed {took:?} after the gateway hung"
    );
    let (_, _, now) = janus_user(&proxy, "/", Some(&cookie)).await;
    assert_ne!(now, home, "sent back to the hung gateway");
}

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
    let (mut a, mut b) = tokio::join!(
        proxy.ws_tls_with("/?room=standup", &[JANUS_PROTOCOL]),
        proxy.ws_tls_with("/?room=standup", &[JANUS_PROTOCOL]),
    );
    let mut a = JanusClient::new(a.ws.take().expect("a upgraded"));
    let mut b = JanusClient::new(b.ws.take().expect("b upgraded"));
    assert_eq!(
        a.server_name().await,
        b.server_name().await,
        "the room split"
    );

    // Twenty rooms of one participant each use both gateways.
    let mut homes = HashSet::new();
    let mut open = Vec::new();
    for i in 0..20 {
        let mut r = proxy
            .ws_tls_with(&format!("/?room=room-{i}"), &[JANUS_PROTOCOL])
            .await;
        let mut c = JanusClient::new(r.ws.take().expect("upgraded"));
        homes.insert(c.server_name().await);
        open.push(c);
    }
    assert_eq!(homes.len(), pool.len(), "20 rooms all on {homes:?}");

    // A user who reconnects with its cookie returns to its gateway.
    let mut first = proxy.ws_tls_with("/", &[JANUS_PROTOCOL]).await;
    let cookie = first.set_cookie_pair().expect("a new user is pinned");
    let home = JanusClient::new(first.ws.take().expect("upgraded"))
        .server_name()
        .await;
    for _ in 0..3 {
        let mut again = proxy
            .ws_tls_with("/", &[JANUS_PROTOCOL, ("cookie", &cookie)])
            .await;
        let mut c = JanusClient::new(again.ws.take().expect("upgraded"));
        assert_eq!(
            c.server_name().await,
            home,
            "the cookie brings the user back"
        );
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
    let mut r = proxy.ws_tls_with("/", &[JANUS_PROTOCOL]).await;
    let cookie = r.set_cookie_pair().expect("pinned");
    let mut c = JanusClient::new(r.ws.take().expect("upgraded"));
    let home = c.server_name().await;
    c.session_with_echotest().await;

    let dead = pool
        .iter_mut()
        .find(|j| j.name == home)
        .expect("the user's gateway");
    dead.kill();
    closed(&mut c.ws).await;

    let mut r = proxy
        .ws_tls_with("/", &[JANUS_PROTOCOL, ("cookie", &cookie)])
        .await;
    assert_eq!(r.status, StatusCode::SWITCHING_PROTOCOLS, "{:?}", r.body);
    let repinned = r.set_cookie_pair().expect("a new cookie");
    assert_ne!(repinned, cookie);
    let mut c = JanusClient::new(r.ws.take().expect("upgraded"));
    let now = c.server_name().await;
    assert_ne!(now, home, "sent back to the dead gateway");
    c.session_with_echotest().await;

    let mut again = proxy
        .ws_tls_with("/", &[JANUS_PROTOCOL, ("cookie", &repinned)])
        .await;
    let mut c = JanusClient::new(again.ws.take().expect("upgraded"));
    assert_eq!(
        c.server_name().await,
        now,
        "the new cookie keeps the user there"
    );
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
    let mut r = proxy.ws_tls_with("/", &[JANUS_PROTOCOL]).await;
    let cookie = r.set_cookie_pair().expect("pinned");
    let mut c = JanusClient::new(r.ws.take().expect("upgraded"));
    let home = c.server_name().await;
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
    let mut again = proxy
        .ws_tls_with("/", &[JANUS_PROTOCOL, ("cookie", &cookie)])
        .await;
    let mut c = JanusClient::new(again.ws.take().expect("upgraded"));
    assert_ne!(c.server_name().await, home, "sent back to the hung gateway");
}

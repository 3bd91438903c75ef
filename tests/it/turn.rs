//! TURN beside rtcgate: a real coturn with the TURN REST scheme (`use-auth-secret`). The
//! harness: coturn allocates for credentials made from its secret, and refuses a wrong password
//! and expired credentials. The whole path: a real WebRTC peer (aiortc, relay candidates only)
//! asks rtcgate's discovery endpoint for its URL and TURN credentials, signals through rtcgate
//! and reaches a real Janus through coturn. (What rtcgate mints, for whom: `turn_credentials.rs`.)
//! Skipped with a note where coturn (for the peer, Janus and aiortc too) is not installed;
//! required under `CI=true`.

use crate::support::*;

#[tokio::test]
async fn coturn_allocates_for_rest_credentials_and_refuses_others() {
    let Some(turn) = Coturn::start().await else {
        return;
    };
    let (user, password) = turn.credentials("alice", 3600);
    turn.allocate(&user, &password)
        .await
        .unwrap_or_else(|e| panic!("{user} was refused:\n{e}\n{}", turn.log()));
    assert!(
        turn.allocate(&user, "not-the-password").await.is_err(),
        "a wrong password was allowed"
    );
    let (old, old_password) = turn.credentials("alice", -60);
    assert!(
        turn.allocate(&old, &old_password).await.is_err(),
        "expired credentials were allowed"
    );
}

/// Media through the relay only: an aiortc peer with iceTransportPolicy `relay` and the
/// iceServers rtcgate's discovery answer gives it (coturn, REST credentials minted by rtcgate) negotiates with Janus's echotest
/// through rtcgate; its only candidate is coturn's relayed address, so the echoed frames went
/// peer -> coturn -> Janus and back. Janus is told nothing of TURN: its host candidates on
/// loopback are the relay's peers. With a wrong credential coturn allocates nothing, the peer
/// has no candidate at all, and no media flows.
#[tokio::test]
async fn a_relay_only_peer_reaches_janus_through_coturn() {
    let _solo = solo().await;
    let Some(turn) = Coturn::start().await else {
        return;
    };
    let Some(pool) = Janus::pool(1).await else {
        return;
    };
    let janus = &pool[0];
    // rtcgate hands out both: the discovery call answers the WebSocket URL (with its pin
    // token) and, with `[turn]` on, the relay credentials it minted with coturn's secret.
    let toml = format!(
        "{}\n[discovery]\npath = \"/rtcloadbalance\"\n\n[turn]\npath = \"/rtcgate/turn\"\nsecret = \"{}\"\nurls = [\"turn:127.0.0.1:{}?transport=udp\"]\n",
        janus_config(&pool),
        turn.secret,
        turn.addr.port()
    );
    let proxy = spawn_proxy(&toml).await;
    let mut c = proxy.h1().await;
    let req = c
        .request("GET", "/rtcloadbalance?room=relayed")
        .header("accept", "application/json")
        .body(empty())
        .expect("request");
    let answer = c.fetch(req).await.json();
    let url = answer["url"].as_str().expect("a URL").to_string();
    let ca = proxy.certs.dir.path().join("cert.pem");
    let minted = answer["iceServers"].clone();
    let ice = &minted[0];
    let (user, password) = (
        ice["username"].as_str().expect("username").to_string(),
        ice["credential"].as_str().expect("credential").to_string(),
    );
    let ice_servers = |username: &str, credential: &str| {
        serde_json::json!([{
            "urls": ice["urls"],
            "username": username,
            "credential": credential,
        }])
    };

    let started = std::time::Instant::now();
    let Some(relayed) =
        echo_media_with(&url, &ca, 20, Some(&ice_servers(&user, &password)), true).await
    else {
        return;
    };
    let relayed = relayed.unwrap_or_else(|no| panic!("{no:?}\n{}", turn.log()));
    eprintln!("relayed media in {:?}: {relayed:?}", started.elapsed());
    assert_eq!(relayed.frames, 20, "{relayed:?}");
    assert_eq!(relayed.server, janus.name, "{relayed:?}");
    assert_eq!(relayed.protocol, "udp", "{relayed:?}");
    assert_eq!(
        relayed.gathered,
        ["relay"],
        "offered more than the relay: {relayed:?}"
    );
    assert_eq!(relayed.local_type, "relay", "{relayed:?}");
    assert_eq!(relayed.remote_type, "host", "{relayed:?}");
    assert!(
        relayed.local.ip().is_loopback() && turn.relay.contains(&relayed.local.port()),
        "the local candidate {} is not one of coturn's relayed addresses (ports {:?})",
        relayed.local,
        turn.relay
    );
    assert!(
        relayed.remote.ip().is_loopback() && janus.rtp.contains(&relayed.remote.port()),
        "media went to {}, not to {}'s RTP ports {:?}",
        relayed.remote,
        janus.name,
        janus.rtp
    );

    let started = std::time::Instant::now();
    let Some(refused) = echo_media_with(
        &url,
        &ca,
        20,
        Some(&ice_servers(&user, "not-the-password")),
        true,
    )
    .await
    else {
        return;
    };
    let took = started.elapsed();
    eprintln!("a wrong credential gave up after {took:?}: {refused:?}");
    let no = match refused {
        Ok(media) => panic!("media flowed with a wrong TURN credential: {media:?}"),
        Err(no) => no,
    };
    assert_eq!(no.frames, 0, "{no:?}");
    assert_eq!(
        no.server, janus.name,
        "the signalling did not reach Janus: {no:?}"
    );
    assert!(
        no.gathered.is_empty(),
        "a candidate without an allocation: {:?}\n{}",
        no.gathered,
        no.output
    );
    assert!(
        matches!(no.state.as_str(), "new" | "failed"),
        "{}",
        no.output
    );
    assert!(
        took < ECHO_TIMEOUT,
        "the refused peer waited {took:?} for nothing"
    );
}

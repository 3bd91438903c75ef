//! TURN beside rtcgate: a real coturn with the TURN REST scheme (`use-auth-secret`), the server
//! whose credentials rtcgate is to mint (issue 20). Here, the harness: coturn allocates for
//! credentials made from its secret, and refuses a wrong password and expired credentials; and
//! a real WebRTC peer (aiortc, relay candidates only) reaches a real Janus through it, with
//! signalling through rtcgate.
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
/// iceServers a browser would get (coturn, REST credentials) negotiates with Janus's echotest
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
    let proxy = spawn_proxy(&janus_config(&pool)).await;
    let url = format!("wss://127.0.0.1:{}/?room=relayed", proxy.https.port());
    let ca = proxy.certs.dir.path().join("cert.pem");
    let ice_servers = |username: &str, credential: &str| {
        serde_json::json!([{
            "urls": [format!("turn:127.0.0.1:{}?transport=udp", turn.addr.port())],
            "username": username,
            "credential": credential,
        }])
    };
    let (user, password) = turn.credentials("alice", 3600);

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

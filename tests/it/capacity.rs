//! Capacity as a WebRTC pool has it: rooms as well as sessions, counts the backends report of
//! themselves (across every instance), and the headroom that says when the pool must grow.

use crate::support::*;
use http::StatusCode;

#[tokio::test]
async fn the_eleventh_room_waits_until_a_room_empties() {
    let backends = spawn_backends(2).await;
    let proxy = spawn_proxy(&config_with_pool(
        &backends,
        "",
        "room_param = \"room\"\nmax_rooms = 5",
    ))
    .await;
    let mut rooms = Vec::new();
    for i in 0..10 {
        let mut ws = proxy.ws_plain(&format!("/ws?room=r{i}"), None).await;
        assert_eq!(ws.status, StatusCode::SWITCHING_PROTOCOLS, "room {i}");
        echo(ws.ws(), "in").await;
        rooms.push(ws);
    }
    for id in ["b1", "b2"] {
        assert_eq!(proxy.backend_state(id).rooms(), 5, "{id}");
    }
    let refused = proxy.ws_plain("/ws?room=r10", None).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_retry_after(
        refused
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
    );
    // A participant of a room that lives already is admitted.
    let mut joiner = proxy.ws_plain("/ws?room=r3", None).await;
    assert_eq!(joiner.status, StatusCode::SWITCHING_PROTOCOLS);
    echo(joiner.ws(), "a second participant").await;
    let text = metrics(&proxy).await;
    assert_eq!(
        sample(
            &text,
            "rtcgate_rejected_total",
            &[("pool", "media"), ("reason", "rooms_full")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "rtcgate_backend_rooms", &[("backend", "b1")]),
        Some(5.0)
    );
    assert_eq!(
        sample(&text, "rtcgate_pool_headroom", &[("pool", "media")]),
        Some(0.0),
        "no room is free, whatever the sessions"
    );

    // Room r0 empties: its only participant leaves.
    let mut first = rooms.remove(0);
    first.ws().close(None).await.expect("close");
    closed(first.ws()).await;
    eventually("room r0 is gone", async || {
        proxy.backend_state("b1").rooms() + proxy.backend_state("b2").rooms() == 9
    })
    .await;
    let mut eleventh = proxy.ws_plain("/ws?room=r10", None).await;
    assert_eq!(eleventh.status, StatusCode::SWITCHING_PROTOCOLS);
    echo(eleventh.ws(), "the eleventh room").await;
    let status = proxy.admin().await.get("/status").await.json();
    assert_eq!(status["pools"][0]["capacity_rooms"], 10);
    assert_eq!(status["pools"][0]["rooms"], 10);
}

#[tokio::test]
async fn a_backends_own_report_caps_it_whatever_this_instance_counts() {
    let backends = spawn_backends(1).await;
    // Another instance's 499 users are on b1: it says so in its health check's answer.
    backends[0].set_agent(Some("up sessions=499 rooms=3"));
    let pool =
        "max_sessions = 500\n[pools.media.health]\ninterval = \"200ms\"\ntimeout = \"200ms\"";
    let proxy = spawn_proxy(&config_with_pool(&backends, "", pool)).await;
    eventually("b1's report is read", async || {
        proxy.backend_state("b1").report() == (Some(499), Some(3))
    })
    .await;
    let mut one = proxy.ws_plain("/ws", None).await;
    assert_eq!(one.status, StatusCode::SWITCHING_PROTOCOLS);
    echo(one.ws(), "the 500th").await;
    let second = proxy.ws_plain("/ws", None).await;
    assert_eq!(
        second.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "b1 is full by its own count: 499 + the one placed since"
    );
    let status = proxy.status_of("b1").await;
    assert_eq!(status["report"]["sessions"], 499);
    assert_eq!(status["sessions"], 1, "this instance's own count");
    let text = metrics(&proxy).await;
    assert_eq!(
        sample(
            &text,
            "rtcgate_pool_capacity_sessions",
            &[("pool", "media")]
        ),
        Some(500.0)
    );
    assert_eq!(
        sample(&text, "rtcgate_backend_max_sessions", &[("backend", "b1")]),
        Some(500.0)
    );
    assert_eq!(
        sample(&text, "rtcgate_pool_headroom", &[("pool", "media")]),
        Some(0.0)
    );

    // Its users leave elsewhere: the next report frees the slots.
    backends[0].set_agent(Some("sessions=100"));
    eventually("the new report is read", async || {
        proxy.backend_state("b1").report().0 == Some(100)
    })
    .await;
    let mut again = proxy.ws_plain("/ws", None).await;
    assert_eq!(again.status, StatusCode::SWITCHING_PROTOCOLS);
    echo(again.ws(), "room again").await;
}

#[tokio::test]
async fn an_agent_drain_drains_and_its_up_ends_only_its_own_drain() {
    use rtcgate::state::backend::AdminState;
    let backends = spawn_backends(2).await;
    let pool = "[pools.media.health]\ninterval = \"200ms\"\ntimeout = \"200ms\"";
    let proxy = spawn_proxy(&config_with_pool(&backends, "", pool)).await;
    let pinned = proxy.user_pinned_to("b1").await;
    backends[0].set_agent(Some("drain"));
    eventually("b1 drains", async || {
        proxy.backend_state("b1").admin() == AdminState::Draining
    })
    .await;
    let status = proxy.status_of("b1").await;
    assert_eq!(status["state"], "draining");
    assert_eq!(status["admin_by"], "agent");
    let mut c = proxy.h1().await;
    for _ in 0..6 {
        assert_eq!(
            c.get("/").await.backend(),
            "b2",
            "no new user on a draining b1"
        );
    }
    assert_eq!(
        c.get_with_cookie("/", Some(&pinned)).await.backend(),
        "b1",
        "its pinned users stay"
    );
    backends[0].set_agent(Some("up"));
    eventually("b1 takes users again", async || {
        proxy.backend_state("b1").admin() == AdminState::Enabled
    })
    .await;
    // An operator's drain is not the agent's to end.
    proxy
        .runtime
        .set_admin_state("media", "b1", AdminState::Draining)
        .expect("drain");
    let checks = backends[0].health_checks();
    eventually("two more checks", async || {
        backends[0].health_checks() >= checks + 2
    })
    .await;
    assert_eq!(proxy.backend_state("b1").admin(), AdminState::Draining);
    assert_eq!(proxy.status_of("b1").await["admin_by"], "operator");
}

//! Machine pins: a request or upgrade naming a backend id (`?machine=`, Voice Elements' word,
//! or `X-Rtcgate-Machine`) goes to that backend, over its cookie and its room; and the room and
//! machine headers count only where the pool turns rooms and machines on.

use std::collections::HashSet;

use crate::support::*;
use http::StatusCode;

#[tokio::test]
async fn a_machine_pin_lands_on_its_backend_over_cookie_and_room() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_with_pool(&backends, "", "room_param = \"room\"")).await;
    let mut c = proxy.h1().await;
    let r = c.get("/?machine=b2").await;
    assert_eq!(r.backend(), "b2");
    let pinned_b2 = r.cookie().expect("a cookie pinning b2");
    let again = c.get_with_cookie("/", Some(&pinned_b2)).await;
    assert_eq!(again.backend(), "b2", "the cookie keeps the user there");

    let cookie = proxy.user_pinned_to("b1").await;
    let r = c.get_with_cookie("/?machine=b3", Some(&cookie)).await;
    assert_eq!(r.backend(), "b3", "the machine wins over the cookie");
    assert!(
        r.cookie().is_some_and(|c| c != cookie),
        "the cookie follows"
    );

    let req = c
        .request("GET", "/")
        .header("x-rtcgate-machine", "b2")
        .body(empty())
        .expect("request");
    assert_eq!(
        c.fetch(req).await.backend(),
        "b2",
        "the header names it too"
    );
    assert_eq!(
        c.get("/?room=weekly&machine=b1").await.backend(),
        "b1",
        "the machine wins over the room"
    );
    let ws = proxy.ws_tls("/ws?machine=b3", None).await;
    assert_eq!(ws.status, StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(ws.backend(), "b3", "an upgrade is pinned alike");

    let r = c.get("/?machine=b9").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.text(), "404 Not Found: no such machine in this service\n");
}

#[tokio::test]
async fn a_full_or_down_machine_follows_the_pools_rules() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_with_pool(&backends, "", "max_sessions = 1")).await;
    let mut held = proxy.ws_plain("/ws?machine=b1", None).await;
    assert_eq!(held.backend(), "b1");
    echo(held.ws(), "b1 is full now").await;
    let full = proxy.ws_plain("/ws?machine=b1", None).await;
    assert_eq!(
        full.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a full machine"
    );
    assert_retry_after(
        full.headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
    );
    let cookie = held.set_cookie_pair().expect("b1's cookie");
    let mut c = proxy.h1().await;
    let r = c.get_with_cookie("/?machine=b1", Some(&cookie)).await;
    assert_eq!(
        r.backend(),
        "b1",
        "a user pinned there is admitted, full or not"
    );

    use rtcgate::state::backend::AdminState;
    proxy
        .runtime
        .set_admin_state("media", "b2", AdminState::Maint)
        .expect("maint");
    let r = c.get("/?machine=b2").await;
    assert_eq!(
        r.backend(),
        "b3",
        "when_down = repin: placed elsewhere (b1 is full)"
    );
    assert!(r.cookie().is_some(), "with a cookie for where it went");

    let strict = spawn_proxy(
        &config_with_pool(&backends, "", "")
            .replace("[sticky]\n", "[sticky]\nwhen_down = \"reject\"\n"),
    )
    .await;
    strict
        .runtime
        .set_admin_state("media", "b2", AdminState::Maint)
        .expect("maint");
    let r = strict.h1().await.get("/?machine=b2").await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "when_down = reject"
    );
}

/// With rooms off (`room_param = ""`, the default), `X-Rtcgate-Room` must not let a client
/// choose its backend; with `machine_param = ""`, neither may `X-Rtcgate-Machine`.
#[tokio::test]
async fn room_and_machine_headers_count_only_where_they_are_on() {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_with_pool(&backends, "", "machine_param = \"\"")).await;
    let mut used = HashSet::new();
    for _ in 0..12 {
        let mut c = proxy.h1().await;
        let req = c
            .request("GET", "/")
            .header("x-rtcgate-room", "same-room")
            .header("x-rtcgate-machine", "b1")
            .body(empty())
            .expect("request");
        used.insert(c.fetch(req).await.backend().to_string());
    }
    assert!(used.len() > 1, "the headers chose the backend: {used:?}");
}

//! Session persistence: the sticky cookie matrix, capacity, rooms, and two instances as one.

use std::collections::HashMap;
use std::sync::Arc;

use crate::support::*;
use http::StatusCode;
use rtcgate::config::Config;
use rtcgate::demo::DemoBackend;
use rtcgate::state::backend::AdminState;
use rtcgate::sticky::{unix_now, StickyCookie};

/// The sticky settings of a running test proxy, to mint tokens the way another instance would.
fn minter(proxy: &TestProxy) -> StickyCookie {
    StickyCookie::new(&proxy.runtime.snapshot().config.sticky)
}

async fn three() -> (Vec<Arc<DemoBackend>>, TestProxy) {
    let backends = spawn_backends(3).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    (backends, proxy)
}

#[tokio::test]
async fn no_cookie_gets_one_and_then_sticks() {
    let (_b, proxy) = three().await;
    let mut c = proxy.h1().await;
    let first = c.get("/").await;
    let line = first.set_cookie_line();
    for attr in ["HttpOnly", "Path=/", "SameSite=Lax", "Secure"] {
        assert!(line.contains(attr), "{attr} missing: {line}");
    }
    assert!(
        !line.contains("127.0.0.1"),
        "the cookie shows an address: {line}"
    );
    let pair = first.cookie().expect("a new user gets a cookie");
    for _ in 0..10 {
        // A fresh connection each time: the pin is in the cookie, not the connection.
        let mut c = proxy.h1().await;
        let r = c.get_with_cookie("/", Some(&pair)).await;
        assert_eq!(r.backend(), first.backend());
        assert_eq!(
            r.cookie(),
            None,
            "Set-Cookie only when the pin is new or changed"
        );
    }
}

#[tokio::test]
async fn over_plain_http_the_cookie_is_not_secure() {
    let (_b, proxy) = three().await;
    let r = proxy.h1_plain().await.get("/").await;
    let line = r.set_cookie_line();
    assert!(line.starts_with("rtcgate="), "{line}");
    assert!(!line.contains("Secure"), "{line}");
}

#[tokio::test]
async fn forged_tampered_expired_and_unknown_cookies_are_placed_afresh() {
    let (_b, proxy) = three().await;
    let mut c = proxy.h1().await;
    let pair = c.get("/").await.cookie().expect("cookie");
    let token = pair.trim_start_matches("rtcgate=");
    let other = ["b1", "b2", "b3"]
        .into_iter()
        .find(|b| !token.contains(b))
        .expect("other");
    let m = minter(&proxy);
    let pinned_to = token.split(':').nth(1).expect("backend field");
    let cases = [
        (
            "forged",
            "rtcgate=k1:b1:0:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string(),
        ),
        (
            "tampered",
            format!("rtcgate={}", token.replace(pinned_to, other)),
        ),
        (
            "truncated",
            format!("rtcgate={}", &token[..token.len() - 5]),
        ),
        ("garbage", "rtcgate=%%%;;".to_string()),
        ("expired", {
            // Minted with max_age 1s by an instance that thinks it is an hour ago.
            let mut cfg = proxy.runtime.snapshot().config.sticky.clone();
            cfg.max_age = std::time::Duration::from_secs(1);
            let t = StickyCookie::new(&cfg).sign("media", "b1", unix_now() - 3600);
            format!("rtcgate={t}")
        }),
        (
            "unknown backend",
            format!("rtcgate={}", m.sign("media", "b9", unix_now())),
        ),
        (
            "other pool",
            format!("rtcgate={}", m.sign("signalling", "b1", unix_now())),
        ),
    ];
    for (what, cookie) in cases {
        let r = c.get_with_cookie("/", Some(&cookie)).await;
        assert_eq!(r.status, StatusCode::OK, "{what}: never an error page");
        let fresh = r
            .cookie()
            .unwrap_or_else(|| panic!("{what}: no new cookie"));
        assert_ne!(fresh, cookie, "{what}");
        // The new cookie pins to the backend that answered.
        assert!(
            fresh.contains(&format!(":{}:", r.backend())),
            "{what}: {fresh} vs {}",
            r.backend()
        );
    }
}

#[tokio::test]
async fn the_backend_never_sees_the_proxy_cookie_but_gets_the_others() {
    let (_b, proxy) = three().await;
    let mut c = proxy.h1().await;
    let pair = c.get("/").await.cookie().expect("cookie");
    let others = format!("theme=dark; {pair}; lang=\"en gb\"");
    let r = c.get_with_cookie("/headers", Some(&others)).await;
    let cookies: Vec<String> = r.json()["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|kv| kv[0] == "cookie")
        .map(|kv| kv[1].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(cookies, vec!["theme=dark; lang=\"en gb\""]);

    // HTTP/2 sends cookies as separate fields.
    let mut h2 = proxy.h2().await;
    let req = h2
        .request("GET", "/headers")
        .header("cookie", "theme=dark")
        .header("cookie", pair.as_str())
        .header("cookie", "lang=en")
        .body(empty())
        .expect("request");
    let r = h2.fetch(req).await;
    let seen = r.json();
    let cookies: Vec<&str> = seen["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|kv| kv[0] == "cookie")
        .filter_map(|kv| kv[1].as_str())
        .collect();
    assert_eq!(cookies, vec!["theme=dark; lang=en"]);
    assert_eq!(r.cookie(), None, "the h2 request carried a valid pin");

    // Only our cookie: the header disappears.
    let r = c.get_with_cookie("/headers", Some(&pair)).await;
    assert!(!r.text().contains("\"cookie\""), "{}", r.text());
}

#[tokio::test]
async fn rotated_keys_honour_old_cookies_and_sign_with_the_new_key() {
    let backends = spawn_backends(3).await;
    let old = spawn_proxy(&config_for(&backends, "")).await;
    let pair = old.h1().await.get("/").await.cookie().expect("cookie");
    let first = old
        .h1()
        .await
        .get_with_cookie("/", Some(&pair))
        .await
        .backend()
        .to_string();

    let rotated = config_for(&backends, "").replace(
        "keys = [\"t1:test-secret-0123456789abcdef0123456789\"]",
        "keys = [\"t2:rotated-secret-0123456789abcdef012345\", \"t1:test-secret-0123456789abcdef0123456789\"]",
    );
    let new = spawn_proxy(&rotated).await;
    let mut c = new.h1().await;
    let r = c.get_with_cookie("/", Some(&pair)).await;
    assert_eq!(
        r.backend(),
        first,
        "a cookie signed with the old key still pins"
    );
    assert_eq!(r.cookie(), None);
    let fresh = c.get("/").await.cookie().expect("cookie");
    assert!(
        fresh.starts_with("rtcgate=t2:"),
        "the first key signs: {fresh}"
    );
}

#[tokio::test]
async fn a_pinned_backend_that_is_down_repins_or_rejects() {
    let backends = spawn_backends(3).await;
    for when_down in ["repin", "reject"] {
        let toml = config_for(&backends, "").replace(
            "keys = [",
            &format!("when_down = \"{when_down}\"\nkeys = ["),
        );
        let proxy = spawn_proxy(&toml).await;
        let mut c = proxy.h1().await;
        let first = c.get("/").await;
        let pair = first.cookie().expect("cookie");
        proxy.backend_state(first.backend()).set_up(false);
        let r = c.get_with_cookie("/", Some(&pair)).await;
        if when_down == "repin" {
            assert_eq!(r.status, StatusCode::OK);
            assert_ne!(r.backend(), first.backend());
            let moved = r.cookie().expect("a repinned user gets a new cookie");
            let again = c.get_with_cookie("/", Some(&moved)).await;
            assert_eq!(again.backend(), r.backend(), "the new pin holds");
        } else {
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(r.header("retry-after").is_some());
        }
    }
}

#[tokio::test]
async fn a_pinned_backend_in_maintenance_is_left_and_a_draining_one_kept() {
    let (_b, proxy) = three().await;
    let mut c = proxy.h1().await;
    let first = c.get("/").await;
    let pair = first.cookie().expect("cookie");
    let state = proxy.backend_state(first.backend());

    state.set_admin(AdminState::Draining);
    for _ in 0..5 {
        let r = c.get_with_cookie("/", Some(&pair)).await;
        assert_eq!(
            r.backend(),
            first.backend(),
            "draining keeps its pinned users"
        );
        assert_eq!(r.cookie(), None);
    }
    for _ in 0..9 {
        assert_ne!(
            c.get("/").await.backend(),
            first.backend(),
            "draining takes no new users"
        );
    }

    state.set_admin(AdminState::Maint);
    let r = c.get_with_cookie("/", Some(&pair)).await;
    assert_ne!(r.backend(), first.backend(), "maintenance takes no traffic");
    assert!(r.cookie().is_some());
}

#[tokio::test]
async fn full_backends_turn_new_users_away_but_admit_pinned_ones() {
    let backends = spawn_backends(2).await;
    let proxy = spawn_proxy(&config_with_pool(&backends, "", "max_sessions = 1")).await;
    let mut c = proxy.h1().await;
    let first = c.get("/").await;
    let pair = first.cookie().expect("cookie");
    // Fill both backends to their cap with sessions, as open tunnels would.
    let _sessions: Vec<_> = ["b1", "b2"]
        .iter()
        .map(|id| proxy.backend_state(id).open_session())
        .collect();
    let r = c.get("/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_retry_after(r.header("retry-after"));
    let r = c.get_with_cookie("/", Some(&pair)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.backend(), first.backend());
}

#[tokio::test]
async fn three_hundred_new_users_spread_evenly() {
    let (backends, proxy) = three().await;
    let mut c = proxy.h1().await;
    let mut per: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        let r = c.get("/").await;
        assert!(r.cookie().is_some());
        *per.entry(r.backend().to_string()).or_default() += 1;
    }
    for b in &backends {
        let n = per.get(&b.id).copied().unwrap_or(0);
        assert!((80..=120).contains(&n), "{} got {n} of 300: {per:?}", b.id);
    }
}

#[tokio::test]
async fn a_room_stays_together_and_rooms_spread() {
    let backends = spawn_backends(3).await;
    let toml = config_with_pool(&backends, "", "room_param = \"room\"");
    let proxy = spawn_proxy(&toml).await;
    let mut c = proxy.h1().await;
    let mut homes = std::collections::HashSet::new();
    for _ in 0..50 {
        // New users, some holding cookies pinned elsewhere: the room decides.
        let r = c.get("/?room=weekly-sync").await;
        homes.insert(r.backend().to_string());
        let other = c.get_with_cookie("/", None).await;
        let pair = other.cookie().expect("cookie");
        let r = c.get_with_cookie("/?room=weekly-sync", Some(&pair)).await;
        homes.insert(r.backend().to_string());
        if other.backend() != r.backend() {
            assert!(
                r.cookie().is_some(),
                "the cookie is re-issued to match the room"
            );
        }
    }
    assert_eq!(homes.len(), 1, "one room, one backend: {homes:?}");
    // The header names a room as well as the query parameter.
    let mut via_header = c.request("GET", "/");
    via_header = via_header.header("x-rtcgate-room", "weekly-sync");
    let r = c.fetch(via_header.body(empty()).expect("request")).await;
    assert!(homes.contains(r.backend()));

    let mut used = std::collections::HashSet::new();
    for i in 0..30 {
        used.insert(
            c.get(&format!("/?room=room-{i}"))
                .await
                .backend()
                .to_string(),
        );
    }
    assert_eq!(
        used.len(),
        3,
        "30 rooms should use all three backends: {used:?}"
    );
}

#[tokio::test]
async fn two_instances_with_the_same_keys_behave_as_one() {
    let backends = spawn_backends(3).await;
    let toml = config_with_pool(&backends, "", "room_param = \"room\"");
    let a = spawn_proxy(&toml).await;
    let b = spawn_proxy(&toml).await;
    let (mut ca, mut cb) = (a.h1().await, b.h1().await);
    for _ in 0..6 {
        let first = ca.get("/").await;
        let pair = first.cookie().expect("cookie");
        let r = cb.get_with_cookie("/", Some(&pair)).await;
        assert_eq!(
            r.backend(),
            first.backend(),
            "instance b honours instance a's cookie"
        );
        assert_eq!(r.cookie(), None);
    }
    for i in 0..10 {
        let path = format!("/?room=shared-{i}");
        assert_eq!(
            ca.get(&path).await.backend(),
            cb.get(&path).await.backend(),
            "room {i}"
        );
    }
}

#[test]
fn sticky_keys_shorter_than_32_characters_are_refused() {
    let certs = make_certs();
    let path = certs.dir.path().join("proxy.toml");
    let toml = config_toml(&[], "", "").replace(
        "t1:test-secret-0123456789abcdef0123456789",
        "t1:0123456789abcdef0123456789abcde",
    );
    std::fs::write(&path, toml).expect("write");
    let err = Config::load(&path).expect_err("31-character secret accepted");
    assert!(err.to_string().contains("sticky.keys[0]"), "{err}");
}

/// A leaked cookie pins any number of clients, past `max_sessions` as pins are meant to; but
/// not past the pool's `hard_cap` (a multiple of `max_sessions`): then 503, and plain requests
/// of pinned users still go through.
#[tokio::test]
async fn a_leaked_cookie_cannot_take_a_backend_past_its_hard_cap() {
    let backends = spawn_backends(2).await;
    let proxy = spawn_proxy(&config_with_pool(
        &backends,
        "",
        "max_sessions = 2\nhard_cap = 2.5",
    ))
    .await;
    let mut first = proxy.ws_plain("/ws", None).await;
    echo(first.ws(), "first").await;
    let cookie = first.set_cookie_pair().expect("a cookie");
    let home = first.backend();
    let mut held = vec![first];
    let mut refused = 0;
    for _ in 0..10 {
        let r = proxy.ws_plain("/ws", Some(&cookie)).await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            refused += 1;
            assert_retry_after(r.headers.get("retry-after").and_then(|v| v.to_str().ok()));
            continue;
        }
        assert_eq!(r.backend(), home, "pinned users stay pinned");
        held.push(r);
    }
    // ceil(2 × 2.5) = 5 sessions at most.
    assert_eq!(held.len(), 5, "{refused} refused");
    assert_eq!(proxy.backend_state(&home).sessions(), 5);
    let mut c = proxy.h1().await;
    let r = c.get_with_cookie("/", Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::OK, "plain requests are not sessions");
    assert_eq!(r.backend(), home);
}

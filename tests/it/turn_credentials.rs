//! TURN credentials from rtcgate (`[turn]`): a real coturn (`use-auth-secret`) allocates for
//! what rtcgate mints, and only for the users `auth` lets have them; TURN servers that stop
//! answering drop out of the answer.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::support::*;
use http::StatusCode;

const TURN_PATH: &str = "/rtcgate/turn";

/// A pool over `backends` with `[turn]` minting for `turn` servers' URLs and `secret`.
fn turn_config(
    backends: &[Arc<rtcgate::demo::DemoBackend>],
    secret: &str,
    urls: &[String],
    lines: &str,
) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "{}\n[turn]\npath = \"{TURN_PATH}\"\nsecret = \"{secret}\"\nurls = [{}]\n{lines}\n",
        config_for(backends, ""),
        urls.join(", ")
    )
}

fn udp_url(turn: &Coturn) -> String {
    format!("turn:127.0.0.1:{}?transport=udp", turn.addr.port())
}

async fn credentials(c: &mut HttpClient, cookie: Option<&str>) -> Reply {
    c.get_with_cookie(TURN_PATH, cookie).await
}

#[tokio::test]
async fn credentials_from_rtcgate_allocate_on_coturn_and_only_with_its_secret() {
    let Some(turn) = Coturn::start().await else {
        return;
    };
    let backends = spawn_backends(2).await;
    let proxy = spawn_proxy(&turn_config(
        &backends,
        &turn.secret,
        &[udp_url(&turn)],
        "auth = \"none\"\nttl = \"10m\"",
    ))
    .await;
    let r = credentials(&mut proxy.h1().await, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let j = r.json();
    let server = &j["iceServers"][0];
    assert_eq!(server["urls"][0], udp_url(&turn).as_str());
    let (user, password) = (
        server["username"].as_str().expect("username").to_string(),
        server["credential"]
            .as_str()
            .expect("credential")
            .to_string(),
    );
    assert_eq!(
        j["username"],
        user.as_str(),
        "the TURN REST draft's names too"
    );
    assert_eq!(j["password"], password.as_str());
    assert_eq!(j["ttl"], 600);
    assert_eq!(j["uris"], server["urls"]);
    let (expiry, id) = user.split_once(':').expect("<expiry>:<user>");
    let now = rtcgate::sticky::unix_now();
    let expiry: u64 = expiry.parse().expect("unix time");
    assert!(
        (now + 598..=now + 601).contains(&expiry),
        "{expiry} at {now}"
    );
    assert!(
        !id.is_empty() && !id.starts_with('b'),
        "an opaque id, not a backend: {id}"
    );

    turn.allocate(&user, &password)
        .await
        .unwrap_or_else(|e| panic!("coturn refused rtcgate's credentials:\n{e}\n{}", turn.log()));
    // The expiry is signed: moved into the past (as they will be once it passes), refused.
    let expired = format!("{}:{id}", now - 60);
    assert!(
        turn.allocate(&expired, &password).await.is_err(),
        "an expired username was allowed"
    );
    // Minted with another secret: refused.
    let other = spawn_proxy(&turn_config(
        &backends,
        "another-secret-0123456789",
        &[udp_url(&turn)],
        "auth = \"none\"",
    ))
    .await;
    let j = credentials(&mut other.h1().await, None).await.json();
    let server = &j["iceServers"][0];
    assert!(
        turn.allocate(
            server["username"].as_str().unwrap_or(""),
            server["credential"].as_str().unwrap_or("")
        )
        .await
        .is_err(),
        "credentials of a wrong secret were allowed"
    );
    let text = metrics(&proxy).await;
    assert_eq!(
        sample(
            &text,
            "rtcgate_turn_credentials_total",
            &[("result", "issued")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn session_auth_serves_clients_rtcgate_placed_and_no_one_else() {
    let backends = spawn_backends(2).await;
    let toml = turn_config(
        &backends,
        "a-turn-secret-0123456789",
        &["turn:127.0.0.1:3478?transport=udp".into()],
        "",
    ) + "\n[discovery]\npath = \"/rtcloadbalance\"\n";
    let proxy = spawn_proxy(&toml).await;
    let mut c = proxy.h1().await;
    let r = credentials(&mut c, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert!(r.json()["error"].is_string());
    let r = credentials(&mut c, Some("rtcgate=t1:b1:0:forged")).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "a forged pin is no session"
    );

    let cookie = proxy.user_pinned_to("b1").await;
    let r = credentials(&mut c, Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let user = r.json()["username"].as_str().unwrap_or("").to_string();
    assert!(
        !user.contains("b1"),
        "the backend's name is not the user: {user}"
    );

    // A native client holding discovery's pin token has a session too; and the discovery
    // answer itself carries the credentials.
    let j = {
        let req = c
            .request("GET", "/rtcloadbalance")
            .header("accept", "application/json")
            .body(empty())
            .expect("request");
        c.fetch(req).await.json()
    };
    let ice = &j["iceServers"][0];
    assert!(
        ice["username"].is_string() && ice["credential"].is_string(),
        "{j}"
    );
    let url = j["url"].as_str().expect("url");
    let token = url.split_once("rtcgate_pin=").map_or("", |(_, t)| t);
    let r = c.get(&format!("{TURN_PATH}?rtcgate_pin={token}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let text = metrics(&proxy).await;
    assert_eq!(
        sample(
            &text,
            "rtcgate_turn_credentials_total",
            &[("result", "denied")]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn forward_auth_asks_with_the_clients_cookie_and_refuses_what_it_refuses() {
    let backends = spawn_backends(1).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let auth_addr = listener.local_addr().expect("addr");
    let asked = Arc::new(AtomicU32::new(0));
    let seen = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let service = {
        let (asked, seen) = (asked.clone(), seen.clone());
        move |req: http::Request<hyper::body::Incoming>| {
            asked.fetch_add(1, Ordering::Relaxed);
            let h = |n: &str| {
                req.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            if let Ok(mut s) = seen.lock() {
                s.push((h("cookie"), h("authorization")));
            }
            let (status, user) = match h("cookie").as_str() {
                "sid=alice" => (200, Some("alice@example.com")),
                "sid=nameless" => (204, None),
                "sid=broken" => (500, None),
                _ => (401, None),
            };
            let mut resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            if let Some(u) = user {
                resp.headers_mut()
                    .insert("x-auth-user", http::HeaderValue::from_static(u));
            }
            resp
        }
    };
    let server = tokio::spawn(serve_fn(listener, service));
    let lines =
        format!("auth = \"forward\"\nauth_url = \"http://{auth_addr}/auth\"\nauth_cache = \"1h\"\nauth_timeout = \"10s\"");
    let proxy = spawn_proxy(&turn_config(
        &backends,
        "a-turn-secret-0123456789",
        &["stun:127.0.0.1:3478".into()],
        &lines,
    ))
    .await;
    let mut c = proxy.h1().await;

    let ask = |cookie: &'static str| {
        c.request("GET", TURN_PATH)
            .header("cookie", cookie)
            .header("authorization", "Bearer app-token")
            .body(empty())
            .expect("request")
    };
    let (alice, again) = (ask("sid=alice"), ask("sid=alice"));
    let (stranger, nameless, broken) =
        (ask("sid=stranger"), ask("sid=nameless"), ask("sid=broken"));
    let r = c.fetch(alice).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let user = r.json()["username"].as_str().unwrap_or("").to_string();
    assert!(
        user.ends_with(":alice@example.com"),
        "the service's user id: {user}"
    );
    assert_eq!(
        seen.lock().map(|s| s[0].clone()).unwrap_or_default(),
        ("sid=alice".to_string(), "Bearer app-token".to_string()),
        "the client's Cookie and Authorization reach the auth service"
    );
    assert_eq!(c.fetch(again).await.status, StatusCode::OK);
    assert_eq!(asked.load(Ordering::Relaxed), 1, "the answer was reused");
    let r = c.fetch(stranger).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = c.fetch(nameless).await;
    assert_eq!(r.status, StatusCode::OK);
    let user = r.json()["username"].as_str().unwrap_or("").to_string();
    let id = user.split_once(':').map_or("", |(_, id)| id);
    assert_eq!(
        id.len(),
        16,
        "an opaque id where the service named no one: {user}"
    );
    assert_eq!(c.fetch(broken).await.status, StatusCode::FORBIDDEN);

    server.abort();
    let gone = format!(
        "auth = \"forward\"\nauth_url = \"http://{}/auth\"",
        dead_address().await
    );
    let urls = ["stun:127.0.0.1:3478".to_string()];
    let proxy = spawn_proxy(&turn_config(
        &backends,
        "a-turn-secret-0123456789",
        &urls,
        &gone,
    ))
    .await;
    let r = credentials(&mut proxy.h1().await, Some("sid=alice")).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "an auth service that is gone refuses"
    );
}

#[tokio::test]
async fn a_stopped_turn_server_drops_out_of_the_answer() {
    let (Some(a), Some(b)) = (Coturn::start().await, Coturn::start().await) else {
        return;
    };
    let backends = spawn_backends(1).await;
    let (url_a, url_b) = (
        udp_url(&a),
        format!("turn:127.0.0.1:{}?transport=tcp", b.addr.port()),
    );
    let lines =
        "auth = \"none\"\n[turn.health]\ninterval = \"1s\"\ntimeout = \"1s\"\nfall = 2\nrise = 1";
    let proxy = spawn_proxy(&turn_config(
        &backends,
        &a.secret,
        &[url_a.clone(), url_b.clone()],
        lines,
    ))
    .await;
    let listed = || async {
        let j = credentials(&mut proxy.h1().await, None).await.json();
        let urls: Vec<String> = j["iceServers"][0]["urls"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        urls
    };
    let both = vec![url_a.clone(), url_b.clone()];
    eventually("both are checked and up", async || {
        let s = proxy.admin().await.get("/status").await.json();
        s["turn"].as_array().is_some_and(|t| {
            t.len() == 2
                && t.iter()
                    .all(|x| x["up"] == true && x["last_check"].is_object())
        })
    })
    .await;
    assert_eq!(listed().await, both);

    drop(b);
    eventually("the stopped server drops out", async || {
        listed().await == vec![url_a.clone()]
    })
    .await;
    // (prometheus_parse splits label values at '=', so the lines are matched whole.)
    let text = metrics(&proxy).await;
    for (url, up) in [(&url_b, 0), (&url_a, 1)] {
        let line = format!("rtcgate_turn_server_up{{url=\"{url}\"}} {up}");
        assert!(text.contains(&line), "{line} in\n{text}");
    }

    drop(a);
    // With none up, every server is listed: a check can be what is broken.
    let s = async || {
        let s = proxy.admin().await.get("/status").await.json();
        s["turn"]
            .as_array()
            .is_some_and(|t| t.iter().all(|x| x["up"] == false))
    };
    eventually("both are down", s).await;
    assert_eq!(listed().await, both, "fail open");
}

//! Backends named by DNS: a name becomes one backend per address, followed as its records
//! change; a failing name server changes nothing. The records come from a DNS server the test
//! runs on 127.0.0.1 (SRV records carry ports, so two backends can share the one address tests
//! may use).

use std::net::Ipv4Addr;

use crate::support::*;
use http::StatusCode;

const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn dns_config(dns: &TestDns, address: &str, interval: &str) -> String {
    format!(
        "{}\n[[pools.media.backends]]\nid = \"media\"\naddress = \"{address}\"\n\n[dns]\nnameservers = [\"{}\"]\ninterval = \"{interval}\"\ntimeout = \"100ms\"\n",
        config_toml(&[], "", ""),
        dns.addr
    )
}

fn id_of(port: u16) -> String {
    format!("media-127.0.0.1-{port}")
}

async fn lookups(proxy: &TestProxy, result: &str) -> f64 {
    sample(
        &metrics(proxy).await,
        "rtcgate_dns_lookups_total",
        &[("pool", "media"), ("result", result)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn an_srv_name_makes_one_backend_per_record_and_follows_its_changes() {
    let b = spawn_backends(3).await;
    let port = |i: usize| b[i].addr.port();
    let dns = TestDns::start().await;
    for t in ["a", "b", "c"] {
        dns.set_a(&format!("{t}.pool.test"), &[LOCAL]);
    }
    let srv = "_media._tcp.pool.test";
    dns.set_srv(srv, &[(port(0), "a.pool.test"), (port(1), "b.pool.test")]);
    let proxy = spawn_proxy(&dns_config(&dns, srv, "200ms")).await;

    // Resolved before the first request.
    let mut ids = proxy.member_ids();
    ids.sort();
    let mut want = vec![id_of(port(0)), id_of(port(1))];
    want.sort();
    assert_eq!(ids, want, "two SRV records, two backends");
    let mut c = proxy.h1().await;
    let mut reached = std::collections::HashSet::new();
    for _ in 0..12 {
        reached.insert(c.get("/").await.backend().to_string());
    }
    assert!(
        reached.contains(&b[0].id) && reached.contains(&b[1].id),
        "{reached:?}"
    );
    let status = proxy.admin().await.get("/status").await.json();
    let entry = &status["pools"][0]["dns"][0];
    assert_eq!(entry["name"], srv);
    assert_eq!(
        entry["backends"].as_array().map(Vec::len),
        Some(2),
        "{entry}"
    );
    assert!(entry["last_lookup"]["error"].is_null(), "{entry}");

    // b's record goes and c's comes: c takes users, b drains (its tunnel stays) and goes at zero.
    let mut held = proxy
        .ws_plain(&format!("/ws?machine={}", id_of(port(1))), None)
        .await;
    echo(held.ws(), "on b").await;
    dns.set_srv(srv, &[(port(0), "a.pool.test"), (port(2), "c.pool.test")]);
    eventually("c's address joins", async || {
        proxy.member_ids().contains(&id_of(port(2)))
    })
    .await;
    assert_eq!(
        proxy.backend_state(&id_of(port(0))).state_name(),
        "up",
        "a's id and state stay"
    );
    let vanished = proxy.backend_state(&id_of(port(1)));
    assert!(vanished.is_removed(), "b's address vanished: it drains out");
    echo(
        held.ws(),
        "a vanished address's tunnel stays while it drains",
    )
    .await;
    let mut c = proxy.h1().await;
    let mut reached = std::collections::HashSet::new();
    for _ in 0..12 {
        reached.insert(c.get("/").await.backend().to_string());
    }
    assert!(
        reached.contains(&b[2].id),
        "the new address takes users: {reached:?}"
    );
    assert!(
        !reached.contains(&b[1].id),
        "the vanished one takes none: {reached:?}"
    );
    held.ws().close(None).await.expect("close");
    closed(held.ws()).await;
    eventually("b is removed at zero", async || {
        !proxy.member_ids().contains(&id_of(port(1)))
    })
    .await;

    // A failing name server changes nothing: the name keeps its addresses.
    dns.set_failing(true);
    let errors = lookups(&proxy, "error").await;
    eventually("failed lookups are counted", async || {
        lookups(&proxy, "error").await >= errors + 2.0
    })
    .await;
    let mut ids = proxy.member_ids();
    ids.sort();
    let mut want = vec![id_of(port(0)), id_of(port(2))];
    want.sort();
    assert_eq!(ids, want, "a failed lookup keeps the addresses");
    assert!(!proxy.backend_state(&id_of(port(0))).is_removed());
    let status = proxy.admin().await.get("/status").await.json();
    assert!(
        status["pools"][0]["dns"][0]["last_lookup"]["error"].is_string(),
        "{status}"
    );
    assert_eq!(
        c.get("/").await.status,
        StatusCode::OK,
        "traffic flows meanwhile"
    );

    // An answer with no records is an answer: the name's backends drain out.
    dns.set_failing(false);
    dns.set_srv(srv, &[]);
    eventually("the name's backends are gone", async || {
        proxy.member_ids().is_empty()
    })
    .await;
    assert!(lookups(&proxy, "empty").await >= 1.0);
    let r = c.get("/").await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no backends left"
    );
}

#[tokio::test]
async fn a_name_and_port_follows_its_a_records_and_a_reload_looks_it_up_at_once() {
    let b = spawn_backends(2).await;
    let dns = TestDns::start().await;
    dns.set_a("one.pool.test", &[LOCAL]);
    // An interval of an hour: only the start and the reload look the name up.
    let toml = dns_config(&dns, &format!("one.pool.test:{}", b[0].addr.port()), "1h");
    let proxy = spawn_proxy(&toml).await;
    assert_eq!(proxy.member_ids(), vec![id_of(b[0].addr.port())]);
    let mut c = proxy.h1().await;
    assert_eq!(c.get("/").await.backend(), b[0].id);

    let moved = toml.replace(
        &format!("one.pool.test:{}", b[0].addr.port()),
        &format!("one.pool.test:{}", b[1].addr.port()),
    );
    proxy.rewrite_config(&moved);
    assert_eq!(proxy.post_reload().await.status, StatusCode::OK);
    eventually("the reload's name is looked up at once", async || {
        proxy.member_ids() == vec![id_of(b[1].addr.port())]
    })
    .await;
    let mut c = proxy.h1().await;
    assert_eq!(c.get("/").await.backend(), b[1].id);
}

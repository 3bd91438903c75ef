//! Hot reload: config edits picked up without a restart and without dropping a connection.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::support::*;
use http::StatusCode;
use rtcgate::demo::DemoBackend;
use rtcgate::state::backend::AdminState;

#[tokio::test]
async fn an_added_backend_takes_new_users_soon_after_the_write() {
    let backends = spawn_backends(2).await;
    let proxy = spawn_proxy(&config_for(&backends[..1], "")).await;
    let written = Instant::now();
    proxy.rewrite_config(&config_for(&backends, ""));
    eventually("b2 listed", async || {
        proxy.member_ids().contains(&"b2".to_string())
    })
    .await;
    eprintln!(
        "the added backend was live {:?} after the write",
        written.elapsed()
    );
    let mut c = proxy.h1().await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        seen.insert(c.get("/").await.backend().to_string());
    }
    assert!(
        seen.contains("b2"),
        "new users reach the added backend: {seen:?}"
    );
    let status = proxy.admin().await.get("/status").await.json();
    assert!(status["reload"]["last_ok"].is_string());
}

#[tokio::test]
async fn a_removed_backend_drains_its_pinned_users_and_tunnels_keep_working() {
    let backends = spawn_backends(2).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut c = proxy.h1().await;
    // A user pinned to b2, and a tunnel on b2.
    let pinned = proxy.user_pinned_to("b2").await;
    let mut ws = proxy.ws_plain("/ws", Some(&pinned)).await;
    assert_eq!(ws.backend(), "b2");
    echo(ws.ws(), "before").await;

    proxy.rewrite_config(&config_for(&backends[..1], ""));
    let b2 = proxy.runtime.snapshot().pools[0]
        .member("b2")
        .expect("b2")
        .backend
        .clone();
    eventually("b2 draining", async || b2.admin() == AdminState::Draining).await;
    for _ in 0..4 {
        let r = c.get_with_cookie("/", Some(&pinned)).await;
        assert_eq!(
            r.backend(),
            "b2",
            "a pinned user keeps its removed backend while it drains"
        );
        assert!(r.headers.get("set-cookie").is_none());
        assert_eq!(
            c.get("/").await.backend(),
            "b1",
            "new users avoid the removed backend"
        );
    }
    echo(ws.ws(), "after the reload").await;
    let status = proxy.admin().await.get("/status").await.json();
    let listed = status["pools"][0]["backends"]
        .as_array()
        .expect("list")
        .clone();
    let b2_status = listed
        .iter()
        .find(|b| b["id"] == "b2")
        .expect("still listed");
    assert_eq!(b2_status["state"], "draining");
    assert_eq!(b2_status["sessions"], 1);
}

#[tokio::test]
async fn a_removed_backends_tunnels_close_at_its_drain_timeout() {
    let backends = spawn_backends(2).await;
    let with_timeout = |b: &[Arc<DemoBackend>]| config_with_pool(b, "", "drain_timeout = \"1s\"");
    let proxy = spawn_proxy(&with_timeout(&backends)).await;
    let mut on_b2 = None;
    for _ in 0..4 {
        let r = proxy.ws_plain("/ws", None).await;
        if r.backend() == "b2" {
            on_b2 = Some(r);
            break;
        }
    }
    let mut ws = on_b2.expect("a tunnel on b2");
    proxy.rewrite_config(&with_timeout(&backends[..1]));
    echo(ws.ws(), "draining").await;
    closed(ws.ws()).await;
    eventually("b2 gone from the snapshot", async || {
        !proxy.member_ids().contains(&"b2".to_string())
    })
    .await;
}

#[tokio::test]
async fn a_broken_file_leaves_traffic_untouched_and_the_error_visible() {
    let backends = spawn_backends(1).await;
    let good = config_for(&backends, "");
    let proxy = spawn_proxy(&good).await;
    let mut c = proxy.h1().await;
    assert_eq!(c.get("/").await.status, StatusCode::OK);
    let mut ws = proxy.ws_plain("/ws", None).await;

    proxy.rewrite_config(&good.replace("[limits]", "[limits]\nconect_timeout = \"1s\""));
    eventually("the failed reload recorded", async || {
        proxy.runtime.reload_status().last_error.is_some()
    })
    .await;
    assert_eq!(
        c.get("/").await.status,
        StatusCode::OK,
        "the running config serves on"
    );
    echo(ws.ws(), "untouched").await;

    let status = proxy.admin().await.get("/status").await.json();
    let error = status["reload"]["last_error"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("conect_timeout"),
        "the error names the key: {error}"
    );
    let metrics = proxy.admin().await.get("/metrics").await.text();
    assert!(
        metrics.contains("rtcgate_config_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    let r = proxy.post_reload().await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.text().contains("conect_timeout"), "{}", r.text());

    proxy.rewrite_config(&good);
    eventually("the good file applies again", async || {
        let s = proxy.runtime.reload_status();
        matches!((s.last_ok, s.last_error), (Some(ok), Some((bad, _))) if ok > bad)
    })
    .await;
    assert_eq!(proxy.post_reload().await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_certificate_swapped_on_disk_is_served_to_new_connections() {
    let backends = spawn_backends(1).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let old = proxy.tls_stream(b"http/1.1").await;
    let served = |s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        s.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
    };
    assert_eq!(served(&old), proxy.certs.cert_der.to_vec());

    let fresh = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    let dir = proxy.certs.dir.path();
    std::fs::write(dir.join(".key.new"), fresh.signing_key.serialize_pem()).expect("write");
    std::fs::write(dir.join(".cert.new"), fresh.cert.pem()).expect("write");
    std::fs::rename(dir.join(".key.new"), dir.join("key.pem")).expect("rename");
    std::fs::rename(dir.join(".cert.new"), dir.join("cert.pem")).expect("rename");

    // A client that trusts both certificates, to see which one it is given.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(proxy.certs.cert_der.clone()).expect("old root");
    roots.add(fresh.cert.der().clone()).expect("new root");
    let mut config =
        rustls::ClientConfig::builder_with_provider(rtcgate::settings::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let new_cert = fresh.cert.der().to_vec();
    let deadline = Instant::now() + STEP;
    loop {
        let tcp = tokio::net::TcpStream::connect(proxy.https)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let s = within("handshake", connector.connect(name, tcp))
            .await
            .expect("handshake");
        if served(&s) == new_cert {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The connection made before the swap still works.
    let mut c = HttpClient::h1(old, format!("localhost:{}", proxy.https.port()), "https").await;
    assert_eq!(c.get("/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_backend_whose_address_changes_is_a_new_backend_and_the_old_one_drains() {
    let backends = spawn_backends(2).await;
    let proxy = spawn_proxy(&config_toml(&[("m1", backends[0].addr)], "", "")).await;
    let mut ws = proxy.ws_plain("/ws", None).await;
    assert_eq!(ws.backend(), "b1");
    proxy.rewrite_config(&config_toml(&[("m1", backends[1].addr)], "", ""));
    eventually("m1 points at the new address", async || {
        proxy.runtime.snapshot().pools[0]
            .member("m1")
            .is_some_and(|m| m.backend.addr == backends[1].addr)
    })
    .await;
    assert_eq!(proxy.h1().await.get("/").await.backend(), "b2");
    echo(ws.ws(), "the old address drains").await;
}

#[tokio::test]
async fn fifty_rewrites_under_load_cost_no_request() {
    let backends = spawn_backends(3).await;
    let proxy = Arc::new(spawn_proxy(&config_for(&backends, "")).await);
    let done = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let load = {
        let (proxy, done, served) = (proxy.clone(), done.clone(), served.clone());
        tokio::spawn(async move {
            let mut c = proxy.h1_plain().await;
            let pinned = c.get("/").await.cookie().expect("a Set-Cookie");
            let mut failures = Vec::new();
            for i in 0..100_000 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let r = if i % 3 == 0 {
                    c.get_with_cookie("/", Some(&pinned)).await
                } else {
                    c.get("/").await
                };
                if r.status != StatusCode::OK {
                    failures.push((i, r.status));
                }
                served.fetch_add(1, Ordering::Relaxed);
            }
            failures
        })
    };
    let sets: [&[usize]; 4] = [&[0, 1, 2], &[0, 1], &[1, 2], &[0, 2]];
    for i in 0..50 {
        let set: Vec<Arc<DemoBackend>> = sets[i % 4].iter().map(|&j| backends[j].clone()).collect();
        let before = proxy.runtime.reload_status().last_ok;
        proxy.rewrite_config(&config_for(&set, ""));
        eventually("the rewrite applied", async || {
            proxy.runtime.reload_status().last_ok != before
        })
        .await;
    }
    done.store(true, Ordering::Relaxed);
    let failures = within("load loop", load).await.expect("join");
    let n = served.load(Ordering::Relaxed);
    eprintln!("{n} requests during 50 reloads");
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(n > 50, "the load loop ran ({n} requests)");
}

#[tokio::test]
async fn a_thousand_tunnels_survive_twenty_reloads() {
    let backends = spawn_backends(4).await;
    let proxy = Arc::new(spawn_proxy(&config_for(&backends[..3], "")).await);
    let mut tunnels = futures_util::future::join_all((0..1000).map(|_| {
        let proxy = proxy.clone();
        async move { proxy.ws_plain("/ws", None).await }
    }))
    .await;
    for i in 0..20 {
        // Alternately add and remove a fourth backend, and change a limit.
        let set = if i % 2 == 0 {
            &backends[..]
        } else {
            &backends[..3]
        };
        let limits = format!("response_timeout = \"{}s\"", 30 + i);
        proxy.rewrite_config(&config_for(set, &limits));
        let r = proxy.post_reload().await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    for (i, t) in tunnels.iter_mut().enumerate() {
        echo(t.ws(), &format!("tunnel {i} after 20 reloads")).await;
    }
    let sessions: u32 = proxy.runtime.snapshot().pools[0]
        .members
        .iter()
        .map(|m| m.backend.sessions())
        .sum();
    assert_eq!(sessions, 1000);
}

#[tokio::test]
async fn a_removed_backend_in_maintenance_stays_out_and_cannot_be_re_enabled() {
    let backends = spawn_backends(2).await;
    let proxy = spawn_proxy(&config_for(&backends, "")).await;
    let mut c = proxy.h1().await;
    let pinned = proxy.user_pinned_to("b2").await;
    let mut admin = proxy.admin().await;
    let req = admin
        .request("POST", "/pools/media/backends/b2/maint")
        .body(empty())
        .expect("req");
    assert_eq!(admin.fetch(req).await.status, StatusCode::OK);
    proxy.rewrite_config(&config_for(&backends[..1], ""));
    let b2 = proxy.runtime.snapshot().pools[0]
        .member("b2")
        .expect("b2")
        .backend
        .clone();
    eventually("b2 removed", async || b2.is_removed()).await;
    assert_eq!(b2.admin(), AdminState::Maint);
    assert_eq!(
        c.get_with_cookie("/", Some(&pinned)).await.backend(),
        "b1",
        "maintenance holds after removal"
    );
    let req = admin
        .request("POST", "/pools/media/backends/b2/enable")
        .body(empty())
        .expect("req");
    assert_eq!(admin.fetch(req).await.status, StatusCode::CONFLICT);
}

/// Kubernetes mounts a ConfigMap or Secret as symlinks into a `..data` folder and updates it by
/// swapping `..data` (the kubelet's atomic writer): no event names the config file itself.
#[tokio::test]
async fn a_config_mounted_the_kubernetes_way_reloads_at_every_update() {
    let backends = spawn_backends(3).await;
    let certs = make_certs();
    let conf = certs.dir.path().join("conf");
    std::fs::create_dir(&conf).expect("conf");
    // Relative paths are resolved against the config's own folder, `conf/`.
    let text = |n: usize| {
        config_for(&backends[..n], "")
            .replace("\"cert.pem\"", "\"../cert.pem\"")
            .replace("\"key.pem\"", "\"../key.pem\"")
    };
    let publish = |version: usize, n: usize| {
        let data = conf.join(format!("..2026_12_02_0{version}"));
        std::fs::create_dir(&data).expect("data dir");
        std::fs::write(data.join("proxy.toml"), text(n)).expect("write");
        let tmp = conf.join("..data_tmp");
        std::os::unix::fs::symlink(data.file_name().expect("name"), &tmp).expect("symlink");
        std::fs::rename(&tmp, conf.join("..data")).expect("swap ..data");
        if version > 1 {
            let old = conf.join(format!("..2026_12_02_0{}", version - 1));
            std::fs::remove_dir_all(old).expect("remove the old version");
        }
    };
    publish(1, 1);
    std::os::unix::fs::symlink("..data/proxy.toml", conf.join("proxy.toml")).expect("symlink");
    let proxy = spawn_proxy_from(certs, &conf.join("proxy.toml")).await;
    assert_eq!(proxy.member_ids(), vec!["b1".to_string()]);
    for (version, n) in [(2, 2), (3, 3)] {
        publish(version, n);
        eventually("the update is applied", async || {
            proxy.member_ids().len() == n
        })
        .await;
    }
}

//! Scale hooks: the up hook runs when headroom stays low (once per cooldown), an idle backend
//! is drained and handed to the down hook once at zero (never the last one), and a hook that
//! hangs is killed at its timeout while traffic goes on.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::support::*;
use http::StatusCode;

/// A hook script that appends its `RTCGATE_*` environment, one run per line, to `out`.
fn recorder(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let script = dir.join(name);
    let out = dir.join(format!("{name}.runs"));
    let text = format!(
        "#!/bin/sh\necho \"$(env | grep '^RTCGATE_' | sort | tr '\\n' ' ')\" >> '{}'\necho hook ran\n",
        out.display()
    );
    std::fs::write(&script, text).expect("write the hook");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (script, out)
}

fn runs(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

async fn decisions(proxy: &TestProxy) -> Vec<String> {
    let s = proxy.admin().await.get("/status").await.json();
    s["pools"][0]["scale"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d["decision"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_up_hook_runs_once_per_cooldown_when_headroom_runs_low() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hook, out) = recorder(dir.path(), "up.sh");
    let backends = spawn_backends(1).await;
    let pool = format!(
        "max_sessions = 2\n[pools.media.scale]\nmin_headroom = 0.5\nsustain = \"0s\"\ncooldown = \"1h\"\nup_command = [\"{}\"]",
        hook.display()
    );
    let proxy = spawn_proxy(&config_with_pool(&backends, "", &pool)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut ws = proxy.ws_plain("/ws", None).await;
        echo(ws.ws(), "load").await;
        held.push(ws);
    }
    eventually("the up hook ran", async || !runs(&out).is_empty()).await;
    let run = &runs(&out)[0];
    for var in [
        "RTCGATE_POOL=media",
        "RTCGATE_HEADROOM=0.0000",
        "RTCGATE_SESSIONS=2",
        "RTCGATE_CAPACITY=2",
        "RTCGATE_ROOMS=0",
    ] {
        assert!(run.contains(var), "{var} not in {run}");
    }
    eventually("its end is shown", async || {
        decisions(&proxy)
            .await
            .iter()
            .any(|d| d.contains("hook ran"))
    })
    .await;
    // Headroom stays at zero; the cooldown (1 h) keeps the hook from running again. Three
    // ticks of the scaler (one a second) go by.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    assert_eq!(runs(&out).len(), 1, "{:?}", runs(&out));
    let text = metrics(&proxy).await;
    assert_eq!(
        sample(
            &text,
            "rtcgate_scale_events_total",
            &[("pool", "media"), ("direction", "up")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_idle_backend_is_drained_then_handed_to_the_down_hook_never_the_last_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hook, out) = recorder(dir.path(), "down.sh");
    let backends = spawn_backends(2).await;
    let pool = format!(
        "[pools.media.scale]\nidle_after = \"1s\"\nmin_backends = 1\ndown_command = [\"{}\"]",
        hook.display()
    );
    let proxy = spawn_proxy(&config_with_pool(&backends, "", &pool)).await;
    // b1 has a user; b2 has none.
    let mut busy = proxy.ws_plain("/ws?machine=b1", None).await;
    echo(busy.ws(), "busy").await;
    eventually("the idle b2 was scaled down", async || {
        !runs(&out).is_empty()
    })
    .await;
    let run = &runs(&out)[0];
    assert!(run.contains("RTCGATE_BACKEND_ID=b2"), "{run}");
    assert!(
        run.contains(&format!("RTCGATE_BACKEND_ADDRESS={}", backends[1].addr)),
        "{run}"
    );
    assert_eq!(
        proxy.backend_state("b2").state_name(),
        "maint",
        "the file lists it: out of traffic"
    );
    echo(busy.ws(), "b1 kept its user").await;
    // b1 loses its user: it is idle now, but the last one taking users.
    busy.ws().close(None).await.expect("close");
    closed(busy.ws()).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(runs(&out).len(), 1, "the last backend is never scaled down");
    assert_eq!(proxy.backend_state("b1").state_name(), "up");
    let r = proxy.h1().await.get("/").await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn a_hook_that_hangs_is_killed_and_traffic_goes_on() {
    let backends = spawn_backends(1).await;
    let pool = "max_sessions = 1\n[pools.media.scale]\nmin_headroom = 0.5\nsustain = \"0s\"\ntimeout = \"1s\"\nup_command = [\"sleep\", \"30\"]";
    let proxy = spawn_proxy(&config_with_pool(&backends, "", pool)).await;
    let mut ws = proxy.ws_plain("/ws", None).await;
    echo(ws.ws(), "the pool is full").await;
    eventually("the hook started", async || {
        decisions(&proxy)
            .await
            .iter()
            .any(|d| d.contains("running the up hook"))
    })
    .await;
    let cookie = ws.set_cookie_pair().expect("the user's pin");
    let r = proxy.h1().await.get_with_cookie("/", Some(&cookie)).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "traffic does not wait for the hook"
    );
    eventually("the hook is killed at its timeout", async || {
        decisions(&proxy)
            .await
            .iter()
            .any(|d| d.contains("killed after its timeout"))
    })
    .await;
    let failed = sample(
        &metrics(&proxy).await,
        "rtcgate_scale_hook_failures_total",
        &[("pool", "media"), ("direction", "up")],
    );
    assert_eq!(failed, Some(1.0), "a killed hook counts as failed");
}

//! Run-time membership: a new server registers itself through the admin API, takes users,
//! survives a reload and (with a state file) a restart, and is drained out and removed at zero.

use crate::support::*;
use http::StatusCode;

const TOKEN: &str = "admin-token-0123";

async fn call(
    proxy: &TestProxy,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Reply {
    let mut c = proxy.admin().await;
    let mut req = c
        .request(method, path)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    c.fetch(req.body(full(body.to_string())).expect("request"))
        .await
}

#[tokio::test]
async fn a_backend_added_at_run_time_takes_users_survives_reload_and_restart_then_drains_out() {
    let backends = spawn_backends(1).await;
    let newcomer = spawn_backends(1).await.remove(0);
    let state = tempfile::tempdir().expect("tempdir");
    let state_file = state.path().join("members.json");
    let toml = format!(
        "{}\n[admin]\ntoken = \"{TOKEN}\"\nstate_file = \"{}\"\n",
        config_for(&backends, ""),
        state_file.display()
    );
    let proxy = spawn_proxy(&toml).await;
    let body = format!(
        "{{\"address\": \"{}\", \"weight\": 2, \"max_sessions\": 100}}",
        newcomer.addr
    );
    let path = "/pools/media/backends/media-new";

    let r = call(&proxy, "PUT", path, &body, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "token-protected");
    let r = call(
        &proxy,
        "PUT",
        path,
        "{\"address\": \"nowhere\"}",
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.text().contains("pools.media.backends.media-new.address"),
        "{}",
        r.text()
    );
    let r = call(&proxy, "PUT", "/pools/other/backends/x", &body, Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        &proxy,
        "PUT",
        "/pools/media/backends/b1",
        &body,
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "the file's backend is the file's"
    );

    let r = call(&proxy, "PUT", path, &body, Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["max_sessions"], 100);
    let r = call(
        &proxy,
        "PUT",
        path,
        &body.replace("\"weight\": 2", "\"weight\": 3"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "an update");
    assert_eq!(r.json()["weight"], 3);
    let ids = proxy.member_ids();
    assert!(ids.contains(&"media-new".to_string()), "{ids:?}");
    let mut c = proxy.h1().await;
    let mut reached = false;
    for _ in 0..10 {
        reached |= c.get("/").await.backend() == newcomer.id;
    }
    assert!(reached, "new users reach the backend added at run time");

    // A reload (the file reweighs b1) keeps it.
    proxy.rewrite_config(&toml.replace("id = \"b1\"\n", "id = \"b1\"\nweight = 2\n"));
    assert_eq!(proxy.post_reload_with(TOKEN).await.status, StatusCode::OK);
    assert!(proxy.member_ids().contains(&"media-new".to_string()));

    // A restart reads it back from the state file.
    let restarted = spawn_proxy(&toml).await;
    assert!(
        restarted.member_ids().contains(&"media-new".to_string()),
        "{:?}",
        restarted.member_ids()
    );
    drop(restarted);

    // DELETE drains it; with nothing on it, it is gone at once.
    let mut held = proxy.ws_plain("/ws?machine=media-new", None).await;
    echo(held.ws(), "on the newcomer").await;
    let r = call(&proxy, "DELETE", path, "", Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(proxy.backend_state("media-new").state_name(), "draining");
    echo(held.ws(), "its tunnel stays while it drains").await;
    held.ws().close(None).await.expect("close");
    closed(held.ws()).await;
    eventually("media-new is removed at zero", async || {
        !proxy.member_ids().contains(&"media-new".to_string())
    })
    .await;
    let r = call(&proxy, "DELETE", path, "", Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let restarted = spawn_proxy(&toml).await;
    assert!(!restarted.member_ids().contains(&"media-new".to_string()));
}

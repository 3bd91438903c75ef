//! Growing and shrinking a pool (`[pools.NAME.scale]`): when its headroom stays below
//! `min_headroom` for `sustain`, run `up_command` (at most once per `cooldown`); when a backend
//! beyond `min_backends` has had no sessions for `idle_after`, drain it, and once nothing is left
//! on it run `down_command` and remove it. Hooks are argv lists, never shell strings, run in
//! tasks of their own under `timeout`: one that fails or hangs is logged and killed, and never
//! holds up traffic. Every decision is logged, counted in `rtcgate_scale_events_total` and shown
//! in `/status`.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::balance;
use crate::config::ScaleConfig;
use crate::control::runtime::Runtime;
use crate::state::backend::AdminState;

/// How often decisions are taken.
const TICK: Duration = Duration::from_secs(1);

/// Output of a hook kept for the log and `/status`.
const OUTPUT_KEPT: usize = 2048;

/// One decision, for `/status`.
#[derive(Debug, Clone)]
pub struct Decision {
    pub at: SystemTime,
    pub direction: &'static str,
    pub what: String,
}

/// What the scaler remembers of one pool.
#[derive(Debug, Default)]
struct PoolScale {
    below_since: Option<Instant>,
    last_up: Option<Instant>,
    /// Backends with no sessions, since when.
    idle_since: HashMap<String, Instant>,
    /// Backends this scaler drained, waiting for zero.
    draining: HashMap<String, std::net::SocketAddr>,
    decisions: Vec<Decision>,
}

/// Decisions kept per pool.
const DECISIONS_KEPT: usize = 20;

#[derive(Debug, Default)]
pub struct Scaler {
    pools: Mutex<HashMap<String, PoolScale>>,
}

impl Scaler {
    /// The latest decisions of `pool`, newest last.
    pub fn decisions(&self, pool: &str) -> Vec<Decision> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .get(pool)
            .map(|p| p.decisions.clone())
            .unwrap_or_default()
    }
}

fn note(state: &mut PoolScale, direction: &'static str, what: String) {
    state.decisions.push(Decision {
        at: SystemTime::now(),
        direction,
        what,
    });
    let extra = state.decisions.len().saturating_sub(DECISIONS_KEPT);
    state.decisions.drain(..extra);
}

/// Takes the scale decisions every second until `stop`.
pub(super) async fn run(runtime: Arc<Runtime>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => decide(&runtime, Instant::now()),
            _ = stop.cancelled() => return,
        }
    }
}

/// What one tick decides, for every pool with scale hooks.
fn decide(runtime: &Arc<Runtime>, now: Instant) {
    let snap = runtime.snapshot_full();
    let mut pools = runtime
        .scaler
        .pools
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    pools.retain(|name, _| snap.pool(name).is_some_and(|p| p.config.scale.is_some()));
    for pool in &snap.pools {
        let Some(sc) = &pool.config.scale else {
            continue;
        };
        let name = pool.config.name.as_str();
        let state = pools.entry(name.to_string()).or_default();
        let h = balance::headroom(pool);
        // Up: headroom below the threshold for `sustain`, once per `cooldown`.
        if sc.min_headroom > 0.0 && h.share < sc.min_headroom {
            let since = *state.below_since.get_or_insert(now);
            let cooled = state
                .last_up
                .is_none_or(|t| now.duration_since(t) >= sc.cooldown);
            if now.duration_since(since) >= sc.sustain && cooled {
                state.last_up = Some(now);
                let what = format!(
                    "headroom {:.3} below {:.3}: running the up hook",
                    h.share, sc.min_headroom
                );
                tracing::warn!(event = "scale_up", pool = %name, headroom = h.share, "scale up: {what}");
                runtime
                    .shared()
                    .events
                    .push("scale_up", name, "", what.as_str());
                note(state, "up", what);
                runtime
                    .metrics()
                    .scale_events
                    .with_label_values(&[name, "up"])
                    .inc();
                let env = vec![
                    ("RTCGATE_POOL", name.to_string()),
                    ("RTCGATE_HEADROOM", format!("{:.4}", h.share)),
                    ("RTCGATE_SESSIONS", h.sessions.to_string()),
                    ("RTCGATE_CAPACITY", h.capacity.to_string()),
                    ("RTCGATE_ROOMS", h.rooms.to_string()),
                ];
                spawn_hook(runtime.clone(), name, "up", sc, &sc.up_command, env);
            }
        } else {
            state.below_since = None;
        }
        scale_down(runtime, pool, sc, state, now);
    }
}

/// Down: drains a backend idle for `idle_after` (never below `min_backends`, never one with
/// sessions), and removes it once nothing is left on it.
fn scale_down(
    runtime: &Arc<Runtime>,
    pool: &crate::state::snapshot::Pool,
    sc: &ScaleConfig,
    state: &mut PoolScale,
    now: Instant,
) {
    let name = pool.config.name.as_str();
    // Drained to zero: run the down hook, then remove it.
    let done: Vec<(String, std::net::SocketAddr)> = state
        .draining
        .iter()
        .filter(|(id, _)| pool.member(id).is_none_or(|m| m.backend.load() == 0))
        .map(|(id, a)| (id.clone(), *a))
        .collect();
    for (id, addr) in done {
        state.draining.remove(&id);
        let what = format!("{id} drained to zero: running the down hook and removing it");
        tracing::info!(event = "scale_down", pool = %name, backend = %id, "scale down: {what}");
        runtime
            .shared()
            .events
            .push("scale_down", name, &id, what.as_str());
        note(state, "down", what);
        runtime
            .metrics()
            .scale_events
            .with_label_values(&[name, "down"])
            .inc();
        let env = vec![
            ("RTCGATE_POOL", name.to_string()),
            ("RTCGATE_BACKEND_ID", id.clone()),
            ("RTCGATE_BACKEND_ADDRESS", addr.to_string()),
        ];
        spawn_hook(runtime.clone(), name, "down", sc, &sc.down_command, env);
        remove(runtime, name, &id);
    }
    if sc.idle_after.is_zero() {
        return;
    }
    let taking: Vec<_> = pool
        .members
        .iter()
        .filter(|m| m.backend.admin() == AdminState::Enabled && !m.backend.is_removed())
        .collect();
    state
        .idle_since
        .retain(|id, _| taking.iter().any(|m| *m.backend.id == **id));
    let mut left = taking.len();
    for m in &taking {
        let b = &m.backend;
        if b.load() > 0 || b.counted_sessions() > 0 {
            state.idle_since.remove(&*b.id);
            continue;
        }
        let since = *state.idle_since.entry(b.id.to_string()).or_insert(now);
        if left <= sc.min_backends || now.duration_since(since) < sc.idle_after {
            continue;
        }
        left -= 1;
        state.idle_since.remove(&*b.id);
        let what = format!("{} idle for {:?}: draining it", b.id, sc.idle_after);
        tracing::info!(event = "scale_down", pool = %name, backend = %b.id, "scale down: {what}");
        runtime
            .shared()
            .events
            .push("scale_down", name, &b.id, what.as_str());
        note(state, "down", what);
        if runtime
            .set_admin_state(name, &b.id, AdminState::Draining)
            .is_ok()
        {
            state.draining.insert(b.id.to_string(), b.addr);
        }
    }
}

/// Removes a backend scaled down: one added through the admin API is deleted; one the file
/// lists is put in maintenance (rtcgate does not edit the file), and the log says so.
fn remove(runtime: &Arc<Runtime>, pool: &str, id: &str) {
    if runtime.from_api(pool, id) {
        if let Err(e) = runtime.delete_backend(pool, id) {
            tracing::warn!(%pool, backend = %id, error = ?e, "scale down: could not remove it");
        }
    } else {
        let _ = runtime.set_admin_state(pool, id, AdminState::Maint);
        tracing::warn!(%pool, backend = %id, "scale down: the configuration file lists it; it stays in maintenance until the file drops it");
    }
}

/// Runs `argv` with `env` in a task of its own, under the pool's hook timeout; logs how it
/// ended and records it in the pool's decisions.
fn spawn_hook(
    runtime: Arc<Runtime>,
    pool: &str,
    direction: &'static str,
    sc: &ScaleConfig,
    argv: &[String],
    env: Vec<(&'static str, String)>,
) {
    let Some((program, args)) = argv.split_first() else {
        return;
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let (pool, timeout, what) = (pool.to_string(), sc.timeout, argv.join(" "));
    tokio::spawn(async move {
        let (ok, ended) = match cmd.spawn() {
            Err(e) => (false, format!("could not start: {e}")),
            Ok(child) => match tokio::time::timeout(timeout, child.wait_with_output()).await {
                // Dropping the child kills it (kill_on_drop).
                Err(_) => (false, format!("killed after its timeout of {timeout:?}")),
                Ok(Err(e)) => (false, format!("failed: {e}")),
                Ok(Ok(out)) => {
                    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&out.stderr));
                    let text: String = text.chars().take(OUTPUT_KEPT).collect();
                    (
                        out.status.success(),
                        format!("{}: {}", out.status, text.trim()),
                    )
                }
            },
        };
        if ok {
            tracing::info!(%pool, direction, hook = %what, result = %ended, "scale hook ended");
        } else {
            tracing::warn!(event = "scale_hook_failed", %pool, direction, hook = %what, result = %ended, "scale hook failed");
            let detail = format!("{direction} hook {what}: {ended}");
            runtime
                .shared()
                .events
                .push("scale_hook_failed", &pool, "", detail);
            runtime
                .metrics()
                .scale_hook_failures
                .with_label_values(&[&pool, direction])
                .inc();
        }
        let mut pools = runtime
            .scaler
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(state) = pools.get_mut(&pool) {
            note(state, direction, format!("{what}: {ended}"));
        }
    });
}

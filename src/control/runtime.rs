//! The control plane's one object: [`Runtime`] owns what changes the running configuration and
//! the backends' admin states, beside the [`Shared`] state the data path reads.
//!
//! It builds the first snapshot, starts the background work ([`Runtime::start`]: health checks,
//! reload triggers, the drain ticker, the admin API) and stops it, sets admin states and runs
//! their drain timers, and resizes the connection slots. Reloading itself is `reload.rs`'s (an
//! `impl Runtime` of its own), health checking `health.rs`'s, the admin API `admin.rs`'s.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::members::{self, ApiBackends};
use crate::config::{Config, ConfigError, OnDown};
use crate::control::health::HealthCheckers;
use crate::control::turn_health::TurnCheckers;
use crate::control::{admin, dns, reload, scale};
use crate::metrics::{Metrics, TunnelEnd};
use crate::state::backend::{AdminState, Backend};
use crate::state::events::Events;
use crate::state::registry::Registry;
use crate::state::snapshot::Snapshot;
use crate::state::Shared;

/// Why an admin state change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminError {
    NoSuchBackend,
    /// The configuration no longer lists it; it is draining out.
    Removed,
}

/// When the configuration was last (re)loaded, and the last failure.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub last_ok: Option<SystemTime>,
    pub last_error: Option<(SystemTime, String)>,
}

/// The control plane.
pub struct Runtime {
    shared: Arc<Shared>,
    /// Backends by stable id, across snapshots.
    pub(super) registry: Registry,
    pub(super) health: HealthCheckers,
    pub(super) turn_health: TurnCheckers,
    /// How many slots `shared.connection_slots` is meant to have (a reload may change it).
    slots: Mutex<usize>,
    /// Serialises reloads and the expiry of leaving backends; the last reload's outcome.
    pub(super) reloading: Mutex<ReloadStatus>,
    /// The configuration as the file says it (the snapshot's adds the API's backends).
    file_config: Mutex<Arc<Config>>,
    /// Backends added through the admin API.
    api: Mutex<ApiBackends>,
    /// The scale hooks' memory and decisions.
    pub(super) scaler: scale::Scaler,
    /// The addresses of backends named by DNS.
    pub(super) dns: dns::Dns,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// The control plane's background work, stopped when this is dropped.
#[must_use = "the background work stops when this is dropped"]
pub struct Running {
    runtime: Arc<Runtime>,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
        self.runtime.health.stop_all();
        self.runtime.turn_health.stop_all();
    }
}

impl Runtime {
    /// Builds the first snapshot of `config` (its certificates loaded) and the state around it.
    pub fn new(config: Config) -> Result<Arc<Runtime>, ConfigError> {
        // The descriptors held back for health checks and the admin API, opened while free.
        crate::state::fds::reserve();
        let registry = Registry::new(Arc::new(Metrics::new()));
        let slots = config.limits.max_connections;
        let api = match &config.admin.state_file {
            Some(path) => members::load_state(path)?,
            None => ApiBackends::new(),
        };
        if !api.is_empty() {
            tracing::info!(
                backends = api.len(),
                "backends added through the admin API, from the state file"
            );
        }
        let snapshot = Snapshot::build(
            members::merged(&config, &api, &members::Resolved::new()),
            &registry,
        )?;
        let file_config = Mutex::new(Arc::new(config));
        let shared = Arc::new(Shared::new(snapshot, registry.metrics().clone()));
        let health = HealthCheckers::new(shared.events.clone());
        Ok(Arc::new(Runtime {
            shared,
            registry,
            health,
            turn_health: TurnCheckers::default(),
            slots: Mutex::new(slots),
            reloading: Mutex::new(ReloadStatus {
                last_ok: Some(SystemTime::now()),
                last_error: None,
            }),
            file_config,
            api: Mutex::new(api),
            scaler: scale::Scaler::default(),
            dns: dns::Dns::default(),
        }))
    }

    /// Starts the background work, on the calling tokio runtime: a health checker per backend,
    /// the reload triggers (file watch, SIGHUP) and the drain ticker, and the admin API on
    /// `admin` when there is one. It runs until the returned guard drops.
    pub fn start(self: &Arc<Self>, admin: Option<TcpListener>) -> anyhow::Result<Running> {
        let stop = CancellationToken::new();
        let running = Running {
            runtime: self.clone(),
            stop: stop.clone(),
        };
        self.health.sync(&self.snapshot());
        self.turn_health.sync(&self.snapshot());
        reload::start(self.clone(), stop.clone());
        tokio::spawn(scale::run(self.clone(), stop.clone()));
        tokio::spawn(dns::run(self.clone(), stop.clone()));
        if let Some(admin) = admin {
            tracing::info!(addr = %admin.local_addr()?, "admin listening");
            tokio::spawn(admin::serve(admin, self.clone(), stop));
        }
        Ok(running)
    }

    /// The configuration as the file says it.
    pub fn file_config(&self) -> Arc<Config> {
        self.file_config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn set_file_config(&self, config: Config) {
        *self.file_config.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }

    /// Backends added through the admin API (the guard serialises changes to them).
    pub(super) fn api_backends(&self) -> std::sync::MutexGuard<'_, ApiBackends> {
        self.api.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The addresses of backends named by DNS, and their lookups.
    pub fn dns(&self) -> &dns::Dns {
        &self.dns
    }

    /// The scale hooks' latest decisions for `pool`.
    pub fn scale_decisions(&self, pool: &str) -> Vec<scale::Decision> {
        self.scaler.decisions(pool)
    }

    /// The current snapshot, to keep across an `.await`.
    pub fn snapshot_full(&self) -> Arc<Snapshot> {
        self.shared.snapshot_full()
    }

    /// The state the data path reads.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The current snapshot, for a short synchronous look; never hold it across an `.await`.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.shared.snapshot()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The health checkers of the current snapshot's backends.
    pub fn health(&self) -> &HealthCheckers {
        &self.health
    }

    /// Sets a backend's admin state. Draining starts the pool's `drain_timeout`, after which the
    /// backend's remaining tunnels are closed unless its state changed meanwhile. A backend the
    /// configuration no longer lists is draining out and cannot be changed.
    pub fn set_admin_state(
        &self,
        pool: &str,
        id: &str,
        state: AdminState,
    ) -> Result<(), AdminError> {
        let snap = self.snapshot();
        let Some((backend, drain_timeout, on_down)) = snap.pool(pool).and_then(|p| {
            let backend = p.member(id)?.backend.clone();
            Some((backend, p.config.drain_timeout, p.config.on_down))
        }) else {
            return Err(AdminError::NoSuchBackend);
        };
        if backend.is_removed() {
            return Err(AdminError::Removed);
        }
        let before = backend.admin();
        if before == AdminState::Draining && state == AdminState::Draining {
            // The drain under way keeps its deadline: a second call must not push it back.
            tracing::info!(%pool, backend = %id, "already draining; its deadline stays");
            return Ok(());
        }
        let generation = backend.set_admin(state);
        tracing::info!(event = "admin_state", %pool, backend = %id, from = ?before, to = ?state, "admin state changed");
        let events = &self.shared.events;
        events.push("admin_state", pool, id, admin_word(state));
        match state {
            AdminState::Draining => drain_after(backend, generation, drain_timeout, events.clone()),
            AdminState::Maint if on_down == OnDown::Close && backend.sessions() > 0 => {
                tracing::info!(%pool, backend = %id, sessions = backend.sessions(), "closing the tunnels of a backend in maintenance");
                backend.close_tunnels(TunnelEnd::Maint);
            }
            _ => {}
        }
        Ok(())
    }

    /// Makes `shared.connection_slots` hold `wanted` slots in all.
    pub(super) fn resize_connection_slots(&self, wanted: usize) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let sem = self.shared.connection_slots.clone();
        if wanted > *slots {
            sem.add_permits(wanted - *slots);
        } else if wanted < *slots {
            let excess = *slots - wanted;
            let forgotten = sem.forget_permits(excess);
            if forgotten < excess {
                // The rest are held by open connections: take them back as those close. New
                // connections wait meanwhile, as they would at the new cap.
                let debt = u32::try_from(excess - forgotten).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    if let Ok(p) = sem.acquire_many_owned(debt).await {
                        p.forget();
                    }
                });
            }
        }
        *slots = wanted;
    }
}

/// How an operator's call reads in the event list.
fn admin_word(state: AdminState) -> &'static str {
    match state {
        AdminState::Enabled => "enabled",
        AdminState::Draining => "draining",
        AdminState::Maint => "maint",
    }
}

/// Closes `backend`'s tunnels once `timeout` has passed, if it is still in the drain that
/// `generation` started.
fn drain_after(backend: Arc<Backend>, generation: u64, timeout: Duration, events: Arc<Events>) {
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        if backend.admin_generation() == generation {
            tracing::info!(event = "drain_timeout", pool = %backend.pool, backend = %backend.id, sessions = backend.sessions(), "drain timeout: its pins move elsewhere, its tunnels close");
            events.push(
                "drain_timeout",
                &backend.pool,
                &backend.id,
                format!("{} sessions closed", backend.sessions()),
            );
            backend.end_drain();
        }
    });
}

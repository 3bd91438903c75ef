//! Reloading the configuration, and what triggers it: the config file (and certificate files)
//! changing on disk, SIGHUP, and `POST /reload` (in `admin.rs`). Also the ticker that ends the
//! drain of removed backends and lets discovery's lapsed reservations go.
//!
//! [`Runtime::reload`] validates the new file and the certificates it names, builds a snapshot
//! that reuses the registry's backends, publishes it, and brings the connection slots and health
//! checkers in line; a bad file changes nothing. The watcher watches the files' folders, not the
//! files, so that editors and tools that write a new file and rename it over the old one are
//! seen; bursts of events are coalesced into one reload after a short quiet period.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::control::runtime::{ReloadStatus, Runtime};
use crate::state::snapshot::Snapshot;

impl Runtime {
    /// Re-reads the configuration file and, when it is valid, swaps in a snapshot built from
    /// it: backends that stay keep their state, counters, tunnels and metric series; removed
    /// ones drain. A bad file changes nothing: the error is logged, counted and kept for
    /// `/status`, and returned. Listener addresses and `workers` are fixed at start; a change
    /// to them is logged as needing a restart, and the rest of the file is applied.
    pub fn reload(&self) -> Result<(), String> {
        let mut status = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.shared().snapshot_full();
        let loaded = Config::load(&current.config.source).and_then(|config| {
            let tls = crate::settings::tls::server_config(&config)?;
            // The HTTPS listener keeps running whatever the file says; it needs certificates.
            if current.config.listen.https.is_some() && tls.is_none() {
                return Err(ConfigError {
                    file: config.source.clone(),
                    key: "tls".into(),
                    msg:
                        "the https listener is running and needs [tls]; removing it takes a restart"
                            .into(),
                });
            }
            Ok((config, tls))
        });
        let (config, tls) = match loaded {
            Ok(ok) => ok,
            Err(e) => {
                let e = e.to_string();
                tracing::error!(event = "reload_failed", error = %e, "reload failed; the running configuration stays");
                self.shared()
                    .events
                    .push("reload_failed", "", "", e.as_str());
                self.metrics()
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                status.last_error = Some((SystemTime::now(), e.clone()));
                return Err(e);
            }
        };
        needs_restart(&current.config, &config);
        // What cannot change while running stays as it is, so /status tells the truth.
        let mut config = config;
        config.listen = current.config.listen.clone();
        config.limits.workers = current.config.limits.workers;
        config.limits.pin_workers = current.config.limits.pin_workers;
        let max_connections = config.limits.max_connections;
        let merged =
            crate::config::members::merged(&config, &self.api_backends(), &self.dns.resolved());
        self.set_file_config(config);
        let snap = Arc::new(Snapshot::assemble(merged, tls, &self.registry));
        self.shared().publish(snap.clone());
        self.resize_connection_slots(max_connections);
        self.health.sync(&snap);
        self.turn_health.sync(&snap);
        // New names are looked up at once, not at the next interval.
        self.dns.kick();
        self.metrics()
            .config_reloads
            .with_label_values(&["ok"])
            .inc();
        status.last_ok = Some(SystemTime::now());
        let backends: usize = snap.pools.iter().map(|p| p.members.len()).sum();
        tracing::info!(
            event = "reload",
            pools = snap.pools.len(),
            backends,
            "configuration reloaded"
        );
        let what = format!("{} pools, {backends} backends", snap.pools.len());
        self.shared().events.push("reload", "", "", what);
        Ok(())
    }

    /// Ends the drain of removed backends whose `drain_timeout` is over, and lists the rest.
    fn expire_leaving(&self) {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        if self.registry.expire(std::time::Instant::now()) == 0 {
            return;
        }
        let snap = Arc::new(self.snapshot().rebuild(&self.registry));
        self.shared().publish(snap.clone());
        self.health.sync(&snap);
    }

    /// Lets discovery's reservations that lapsed go (within a tick of their end).
    fn expire_reservations(&self) {
        self.shared().reservations.expire(std::time::Instant::now());
    }

    /// The last reload's outcome.
    pub fn reload_status(&self) -> ReloadStatus {
        self.reloading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Logs the settings that a reload cannot apply to running listeners and workers.
fn needs_restart(old: &Config, new: &Config) {
    let listeners = [
        ("listen.https", old.listen.https, new.listen.https),
        ("listen.http", old.listen.http, new.listen.http),
        ("listen.admin", old.listen.admin, new.listen.admin),
    ];
    for (key, was, now) in listeners {
        if was != now {
            tracing::warn!(key, ?was, ?now, "a listener address changed: restart rtcgate to apply it; the rest of the configuration was applied");
        }
    }
    if old.limits.workers != new.limits.workers {
        tracing::warn!(key = "limits.workers", "the worker count changed: restart rtcgate to apply it; the rest of the configuration was applied");
    }
    if old.limits.pin_workers != new.limits.pin_workers {
        tracing::warn!(key = "limits.pin_workers", "the worker pinning changed: restart rtcgate to apply it; the rest of the configuration was applied");
    }
}

/// How long the files must stay quiet after a change before the reload runs.
const SETTLE: Duration = Duration::from_millis(200);

/// Starts the file watcher, the SIGHUP handler and the drain ticker; they stop with `stop`.
pub(super) fn start(runtime: Arc<Runtime>, stop: CancellationToken) {
    match watch_files(runtime.clone(), stop.clone()) {
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or POST /reload")
        }
    }
    tokio::spawn(on_sighup(runtime.clone(), stop.clone()));
    tokio::spawn(drain_ticker(runtime, stop));
}

/// The files whose change triggers a reload: the config and every certificate and key in it.
fn watched_files(config: &Config) -> Vec<PathBuf> {
    let mut files = vec![config.source.clone()];
    if let Some(tls) = &config.tls {
        files.push(tls.default.cert.clone());
        files.push(tls.default.key.clone());
        for s in &tls.sni {
            files.push(s.files.cert.clone());
            files.push(s.files.key.clone());
        }
        files.extend(tls.ticket_keys.clone());
    }
    files
}

/// `path` with its folder made absolute and canonical, as the watcher reports it.
fn canonical(path: &Path) -> Option<PathBuf> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(path.file_name()?))
}

/// What each file resolves to through any symlinks, with its size and time of change.
fn fingerprint(files: &HashSet<PathBuf>) -> Vec<Option<(PathBuf, u64, Option<SystemTime>)>> {
    let mut v: Vec<_> = files
        .iter()
        .map(|f| {
            let real = std::fs::canonicalize(f).ok()?;
            let meta = std::fs::metadata(&real).ok()?;
            Some((real, meta.len(), meta.modified().ok()))
        })
        .collect();
    v.sort();
    v
}

fn watch_files(runtime: Arc<Runtime>, stop: CancellationToken) -> notify::Result<()> {
    let files: HashSet<PathBuf> = watched_files(&runtime.snapshot().config)
        .iter()
        .filter_map(|f| canonical(f))
        .collect();
    let dirs: HashSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let interesting = files.clone();
    let mut last = fingerprint(&interesting);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        // An event naming a file, or one that changed what a file resolves to: Kubernetes
        // updates a mounted ConfigMap or Secret by swapping a `..data` symlink, and no event
        // names the files themselves.
        let now = fingerprint(&interesting);
        let moved = now != last;
        last = now;
        if moved || event.paths.iter().any(|p| interesting.contains(p)) {
            let _ = tx.send(());
        }
    })?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    tracing::info!(
        files = files.len(),
        "watching the configuration for changes"
    );
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        loop {
            tokio::select! {
                got = rx.recv() => if got.is_none() { return },
                _ = stop.cancelled() => return,
            }
            // Coalesce a burst (write, rename, chmod, …) into one reload.
            while let Ok(Some(())) = tokio::time::timeout(SETTLE, rx.recv()).await {}
            tracing::info!("configuration files changed: reloading");
            let _ = runtime.reload();
        }
    });
    Ok(())
}

async fn on_sighup(runtime: Arc<Runtime>, stop: CancellationToken) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                let _ = runtime.reload();
            }
            _ = stop.cancelled() => return,
        }
    }
}

async fn drain_ticker(runtime: Arc<Runtime>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                runtime.expire_leaving();
                runtime.expire_reservations();
                crate::state::fds::reserve().tick(Duration::from_secs(5));
                enforce_buffer_budget(runtime.shared());
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// Cuts the client connections holding the most while all together hold more than
/// `[limits] buffer_budget`.
fn enforce_buffer_budget(shared: &crate::state::Shared) {
    let budget = shared.snapshot().config.limits.buffer_budget;
    let round = shared.buffers.enforce(budget);
    let metrics = &shared.metrics;
    metrics
        .client_queued_bytes
        .set(i64::try_from(round.held).unwrap_or(i64::MAX));
    if round.cut > 0 {
        metrics.buffer_budget_cuts.inc_by(round.cut as u64);
        tracing::warn!(
            held_mib = round.held >> 20,
            budget_mib = budget >> 20,
            cut = round.cut,
            cut_mib = round.cut_bytes >> 20,
            "buffer budget spent: closing the client connections that hold the most"
        );
    }
}

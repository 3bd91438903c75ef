//! What triggers a reload: the config file (and certificate files) changing on disk, SIGHUP,
//! and `POST /reload` (in `admin.rs`). Also the ticker that ends the drain of removed backends.
//!
//! Building and swapping the snapshot is `Proxy::reload`'s; this file only decides when. The
//! watcher watches the files' folders, not the files, so that editors and tools that write a
//! new file and rename it over the old one are seen; bursts of events are coalesced into one
//! reload after a short quiet period.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::proxy::Proxy;

/// How long the files must stay quiet after a change before the reload runs.
const SETTLE: Duration = Duration::from_millis(200);

/// Starts the file watcher, the SIGHUP handler and the drain ticker; they stop with `stop`.
pub fn start(proxy: Arc<Proxy>, stop: CancellationToken) {
    match watch_files(proxy.clone(), stop.clone()) {
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or POST /reload")
        }
    }
    tokio::spawn(on_sighup(proxy.clone(), stop.clone()));
    tokio::spawn(drain_ticker(proxy, stop));
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

fn watch_files(proxy: Arc<Proxy>, stop: CancellationToken) -> notify::Result<()> {
    let files: HashSet<PathBuf> = watched_files(&proxy.snapshot().config)
        .iter()
        .filter_map(|f| canonical(f))
        .collect();
    let dirs: HashSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let interesting = files.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|p| interesting.contains(p)) {
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
            let _ = proxy.reload();
        }
    });
    Ok(())
}

async fn on_sighup(proxy: Arc<Proxy>, stop: CancellationToken) {
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
                let _ = proxy.reload();
            }
            _ = stop.cancelled() => return,
        }
    }
}

async fn drain_ticker(proxy: Arc<Proxy>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => proxy.expire_leaving(),
            _ = stop.cancelled() => return,
        }
    }
}

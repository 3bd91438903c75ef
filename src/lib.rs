//! rtcgate: a Layer-7 sticky reverse proxy for pools of WebRTC media and signalling servers.
//!
//! The map, layer by layer, bottom first. Imports run downward only and no modules import each
//! other in a cycle (`tests/it/layers.rs` checks both, and names the modules of any breach).
//!
//! | layer | module | owns |
//! |---|---|---|
//! | foundations | [`config`] | `proxy.toml` → validated, typed [`config::Config`]; errors name the key |
//! | | [`metrics`] | the owned Prometheus registry: every metric name, label value and recorder |
//! | | [`settings`] | what config compiles into for serving: rustls config, hyper builders |
//! | | [`sticky`] | the signed session cookie's format: sign, verify, rotate, strip, Set-Cookie |
//! | state | [`state`] | backends' runtime state, the registry that outlives snapshots, live rooms, the snapshot, and [`state::Shared`] |
//! | placement | [`balance`] | which backend takes a request: rooms, pins, least load; no I/O |
//! | data path | [`proxy`] | one request: route → place → forward → respond; tunnels; the upstream pool |
//! | | [`server`] | listeners, worker threads, one connection's TLS, HTTP and limits; shutdown order |
//! | control plane | [`control`] | [`control::runtime::Runtime`]: reload, admin states, drains, health checks, admin API |
//! | edges | [`run`] (here) | composes the data path and the control plane |
//! | | [`demo`] | built-in demo backends for `rtcgate demo` and the tests |
//!
//! `main.rs` is the thin binary: CLI, logging, exit codes.

#![forbid(unsafe_code)]

pub mod balance;
pub mod config;
pub mod control;
pub mod demo;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod settings;
pub mod state;
pub mod sticky;

use std::future::Future;
use std::sync::Arc;

use crate::control::runtime::Runtime;
use crate::server::Listeners;

/// Serves `listeners` with `runtime`'s configuration until `shutdown` completes, then shuts
/// down gracefully (see [`server::run`]) and returns.
///
/// The control plane (health checks, reload triggers, the admin API on `listeners.admin`) starts
/// first, so the first requests find checked backends and the admin API answers as soon as
/// traffic does; it stops once the workers have.
pub async fn run(
    listeners: Listeners,
    runtime: Arc<Runtime>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (traffic, admin) = listeners.split();
    let control = runtime.start(admin)?;
    // The first requests find the backends named by DNS (a lookup is bounded by its timeout).
    let limit = runtime.snapshot().config.dns.timeout * 2 + std::time::Duration::from_secs(1);
    runtime.dns().first_round(limit).await;
    let served = server::run(traffic, runtime.shared().clone(), shutdown).await;
    drop(control);
    served
}

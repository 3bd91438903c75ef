//! The client side of the data path: listening sockets, worker threads, each connection's TLS
//! handshake and HTTP serving under its limits, and the order of shutdown.
//!
//! | file | owns |
//! |---|---|
//! | [`listeners`] | binding the configured addresses; each worker's own socket (`SO_REUSEPORT`) |
//! | [`workers`] | the worker threads, their accept loops and the hand-off to the least loaded |
//! | [`connection`] | one connection: TLS under a timeout, hyper, the header-read and idle watchdog |
//! | [`proxy_header`] | the PROXY protocol header (v1, v2) an L4 balancer sends first: the client's address |
//! | [`gate`] | the waker that keeps the watchdog off a busy connection's hot path |
//!
//! What a request does is `proxy`'s; the admin listener and everything that changes the
//! configuration is the control plane's (`control`), which `lib.rs` starts beside this.

pub mod connection;
mod gate;
mod h2_guard;
pub mod listeners;
mod proxy_header;
pub mod workers;

use std::future::Future;
use std::sync::Arc;

use crate::metrics::TunnelEnd;
use crate::proxy::pump::CUT_WAIT;
use crate::server::listeners::Traffic;
use crate::server::workers::Workers;
use crate::state::Shared;

pub use crate::server::listeners::Listeners;

/// Serves `traffic` until `shutdown` completes; then `/ready` fails, and after
/// `limits.shutdown_delay` (still serving) it stops accepting, gives in-flight requests
/// and open tunnels `limits.shutdown_grace` to finish, sends the tunnels still open a close
/// frame (1001), and returns.
///
/// Connections are served by `limits.workers` threads, each with its own single-threaded tokio
/// runtime accepting from sockets of its own (see `listeners::worker_socket`): a connection, its
/// requests and their backend connections stay on one thread, which spares the cross-thread
/// wake-ups that dominate a work-stealing scheduler's cost at this request size. The caller's
/// runtime keeps only the control work.
pub async fn run(
    traffic: Traffic,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let workers = Workers::start(traffic, shared.clone())?;
    // Listeners bound, workers accepting: a `Type=notify` unit is started.
    tell_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);

    shutdown.await;
    tell_systemd(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("draining"),
    ]);
    shared
        .stopping
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (grace, delay) = {
        let limits = &shared.snapshot().config.limits;
        (limits.shutdown_grace, limits.shutdown_delay)
    };
    if !delay.is_zero() {
        // Balancers see /ready fail and take this instance out while it still serves.
        tracing::info!(
            ?delay,
            "shutting down: /ready answers 503; still accepting for shutdown_delay"
        );
        tokio::time::sleep(delay).await;
    }
    tracing::info!(
        ?grace,
        "shutting down: no new connections, in-flight requests may finish"
    );
    workers.stop_accepting();
    shared.closing.cancel();
    shared.tasks.close();
    if tokio::time::timeout(grace, shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = shared.tasks.len(),
            "grace period over; closing the remaining connections"
        );
        // Tunnels still open get a close frame (1001, going away) between two frames, so their
        // clients reconnect at once, to another instance where there is one.
        for member in shared.snapshot().pools.iter().flat_map(|p| &p.members) {
            member.backend.close_tunnels(TunnelEnd::Shutdown);
        }
        let _ = tokio::time::timeout(CUT_WAIT, shared.tasks.wait()).await;
    }
    workers.stop().await
}

/// Tells systemd where the process stands (`Type=notify`, `sd_notify(3)`); does nothing when
/// systemd did not start it (no `NOTIFY_SOCKET`).
fn tell_systemd(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

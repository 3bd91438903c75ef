//! The worker threads: each a single-threaded tokio runtime with its own listening sockets, its
//! own request handler (and so its own upstream pool), accepting connections and handing each to
//! the least loaded worker. Started by [`Workers::start`], stopped in two steps by the shutdown
//! order in `server::run`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::config::PinWorkers;
use crate::metrics::GaugeGuard;
use crate::proxy::conn::Held;
use crate::proxy::handler::Handler;
use crate::server::connection;
use crate::server::listeners::{worker_socket, Traffic};
use crate::state::Shared;

/// The running workers.
pub struct Workers {
    ctx: Arc<Ctx>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `limits.workers` threads (0: one per CPU) serving `traffic`.
    pub fn start(traffic: Traffic, shared: Arc<Shared>) -> anyhow::Result<Workers> {
        let limits = shared.snapshot().config.limits.clone();
        let workers = match limits.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (inbox, inboxes): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let ctx = Arc::new(Ctx {
            load: (0..workers)
                .map(|w| {
                    let g = shared
                        .metrics
                        .worker_connections
                        .with_label_values(&[&w.to_string()]);
                    g.set(0);
                    g
                })
                .collect(),
            inbox: inbox.into(),
            shared,
            shutdown: CancellationToken::new(),
            stop: CancellationToken::new(),
        });
        let mut sockets = Vec::new();
        for (listener, tls) in [(traffic.https, true), (traffic.http, false)] {
            if let Some(l) = listener {
                tracing::info!(addr = %l.local_addr()?, tls, "listening");
                sockets.push((l.into_std()?, tls));
            }
        }
        let cpus = worker_cpus(limits.pin_workers, workers);
        let mut running = Workers {
            ctx: ctx.clone(),
            threads: Vec::with_capacity(workers),
        };
        for (w, inbox) in inboxes.into_iter().enumerate() {
            let cpu = cpus.as_ref().map(|c| c[w % c.len()]);
            let mine = sockets
                .iter()
                .map(|(l, tls)| Ok((worker_socket(l, w)?, *tls)))
                .collect::<io::Result<Vec<_>>>()?;
            let ctx = ctx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("rtcgate-w{w}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if !core_affinity::set_for_current(cpu) {
                            tracing::warn!(
                                worker = w,
                                cpu = cpu.id,
                                "cannot pin the worker to its CPU; it runs unpinned"
                            );
                        }
                    }
                    worker(w, mine, inbox, ctx)
                })
                .context("cannot start a worker thread")?;
            running.threads.push(thread);
        }
        Ok(running)
    }

    /// Stops accepting; connections being served go on, and are asked to close gracefully.
    pub fn stop_accepting(&self) {
        self.ctx.shutdown.cancel();
    }

    /// Stops the worker threads, which drops whatever connections they still serve.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.ctx.stop.cancel();
        let threads = std::mem::take(&mut self.threads);
        tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await?;
        Ok(())
    }
}

impl Drop for Workers {
    /// Workers dropped without `stop` (a start that failed half-way, a caller that gave up)
    /// are stopped all the same, without waiting for their threads.
    fn drop(&mut self) {
        self.ctx.shutdown.cancel();
        self.ctx.stop.cancel();
    }
}

/// What every worker shares.
struct Ctx {
    shared: Arc<Shared>,
    /// Cancelled when shutdown begins: stop accepting, finish what is in flight.
    shutdown: CancellationToken,
    /// Cancelled when the grace period is over: worker threads stop.
    stop: CancellationToken,
    /// Connections (and the tunnels they became) each worker serves: the
    /// `rtcgate_worker_connections` gauges.
    load: Box<[IntGauge]>,
    /// Each worker's queue of connections accepted by another worker.
    inbox: Box<[mpsc::UnboundedSender<Handoff>]>,
}

impl Ctx {
    /// The worker a new connection should go to: the least loaded one, unless `me` serves at
    /// most 1/32 more than it (then `me`, which saves the hand-over).
    ///
    /// The slack keeps a large, nearly even load from being handed to and fro: the kernel's hash
    /// spreads connections over the workers' sockets, and with the strict rule a third of the
    /// tunnels opened in a wave of 3,000 changed worker (an epoll removal and addition and a
    /// cross-thread wake-up each, `strace -c`). With a small load (under 32) it is the strict
    /// rule, so a burst of a few dozen connections is still shared to within one.
    fn least_loaded(&self, me: usize) -> usize {
        choose(me, self.load.len(), |w| self.load[w].get())
    }
}

/// [`Ctx::least_loaded`] over the loads `load(0..workers)`.
fn choose(me: usize, workers: usize, load: impl Fn(usize) -> i64) -> usize {
    let mine = load(me);
    let mut best = (me, mine);
    for w in 0..workers {
        let l = load(w);
        if l < best.1 {
            best = (w, l);
        }
    }
    if mine - best.1 <= mine / HANDOFF_SLACK_DIVISOR {
        return me;
    }
    best.0
}

/// A worker keeps a connection while it serves at most `1 / HANDOFF_SLACK_DIVISOR` more than the
/// least loaded one.
const HANDOFF_SLACK_DIVISOR: i64 = 32;

/// A connection accepted by one worker for another, less loaded one.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    tls: bool,
    permit: OwnedSemaphorePermit,
    /// Its count in the target worker's load, taken when it was chosen.
    load: GaugeGuard,
}

/// The CPUs to bind workers to, one per worker in order, or `None` to leave them unbound.
///
/// With as many busy threads as cores (wrk, nginx and two workers on two cores in the
/// benchmark), unbound workers at times share one core while another process runs on the
/// other; each then waits out the other's time slice, and every connection it serves stalls for
/// 4–8 ms (p99 3.1–4.8 ms unbound, 2.2–2.4 ms bound). `auto` binds only the thread-per-core
/// layout, one worker per CPU of the affinity mask. With fewer workers, or a CPU quota (which
/// lowers the default worker count but not the mask), binding would crowd every instance on a
/// host onto its first cores.
fn worker_cpus(pin: PinWorkers, workers: usize) -> Option<Vec<core_affinity::CoreId>> {
    if pin == PinWorkers::Never {
        return None;
    }
    // The CPUs this process may run on (its affinity mask), in order.
    let cpus = core_affinity::get_core_ids().filter(|c| !c.is_empty())?;
    match pin {
        PinWorkers::Auto if cpus.len() != workers => None,
        _ => {
            tracing::info!(workers, cpus = cpus.len(), "each worker is bound to a CPU");
            Some(cpus)
        }
    }
}

/// One worker thread: a single-threaded runtime accepting on its copies of the listeners, and
/// serving what it accepted or was handed, until told to stop; dropping the runtime then drops
/// whatever connections are left.
fn worker(
    me: usize,
    sockets: Vec<(std::net::TcpListener, bool)>,
    inbox: mpsc::UnboundedReceiver<Handoff>,
    ctx: Arc<Ctx>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a worker runtime");
            return;
        }
    };
    rt.block_on(async {
        let handler = Handler::for_this_worker(ctx.shared.clone());
        let tasks = &ctx.shared.tasks;
        for (socket, tls) in sockets {
            match TcpListener::from_std(socket) {
                Ok(l) => {
                    tasks.spawn(accept_loop(me, l, tls, ctx.clone(), handler.clone()));
                }
                Err(e) => tracing::error!(error = %e, "cannot register a listener"),
            }
        }
        tasks.spawn(take_handoffs(inbox, ctx.clone(), handler.clone()));
        ctx.stop.cancelled().await;
    });
}

/// Accepts connections and gives each to the least loaded worker.
///
/// Where workers share a socket, the kernel wakes them all for a new connection and whichever
/// runs first takes it: under a burst one worker took nearly all (64 of 65 with `wrk -c64`),
/// leaving the other core idle and latency doubled. With a socket per worker, the kernel's hash
/// can still leave one worker with more. So a worker that is not the least loaded passes what
/// it accepts to the one that is, as HAProxy's threads do. This costs one cross-thread wake-up
/// per connection handed over, not per request.
async fn accept_loop(
    me: usize,
    listener: TcpListener,
    tls: bool,
    ctx: Arc<Ctx>,
    handler: Arc<Handler>,
) {
    let slots = &ctx.shared.connection_slots;
    loop {
        // Past the cap, clients wait in the kernel's backlog instead of being accepted and
        // starved: wait for a free slot before accepting. The slot is not held while accepting,
        // or an idle listener would keep it from a busy one; so it is taken again after accept,
        // which at worst holds one accepted socket per listener until a slot frees.
        tokio::select! {
            p = slots.acquire() => drop(p),
            _ = ctx.shutdown.cancelled() => return,
        }
        if crate::state::fds::reserve().short() {
            // Out of descriptors not long ago: the reserve refills first (health checks and the
            // admin API rely on it), then clients are accepted again.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                _ = ctx.shutdown.cancelled() => return,
            }
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = ctx.shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                accept_error(e).await;
                continue;
            }
        };
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = ctx.shutdown.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let target = ctx.least_loaded(me);
        let load = GaugeGuard::hold(&ctx.load[target]);
        if target == me {
            spawn_connection(stream, peer, tls, &ctx, &handler, permit, load);
            continue;
        }
        match stream.into_std() {
            Ok(stream) => {
                let handoff = Handoff {
                    stream,
                    peer,
                    tls,
                    permit,
                    load,
                };
                // A worker's inbox closes only when it stops, and then so does everything.
                let _ = ctx.inbox[target].send(handoff);
            }
            Err(e) => tracing::debug!(client = %peer, error = %e, "cannot hand a connection over"),
        }
    }
}

/// Serves the connections other workers accepted for this one.
async fn take_handoffs(
    mut inbox: mpsc::UnboundedReceiver<Handoff>,
    ctx: Arc<Ctx>,
    handler: Arc<Handler>,
) {
    loop {
        let handoff = tokio::select! {
            h = inbox.recv() => match h {
                Some(h) => h,
                None => return,
            },
            _ = ctx.shutdown.cancelled() => return,
        };
        match TcpStream::from_std(handoff.stream) {
            Ok(stream) => spawn_connection(
                stream,
                handoff.peer,
                handoff.tls,
                &ctx,
                &handler,
                handoff.permit,
                handoff.load,
            ),
            Err(e) => {
                tracing::debug!(client = %handoff.peer, error = %e, "cannot take a connection over");
            }
        }
    }
}

async fn accept_error(e: io::Error) {
    if crate::state::fds::out_of_fds(&e) {
        // Logged once per episode, by the reserve.
        crate::state::fds::reserve().note("accept", &e);
        tokio::time::sleep(Duration::from_millis(100)).await;
        return;
    }
    let resource = matches!(e.raw_os_error(), Some(105 /* ENOBUFS */ | 12 /* ENOMEM */));
    if resource {
        tracing::error!(error = %e, "accept failed: out of resources; pausing accepts for 100ms");
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else {
        // Per-connection failures (ECONNABORTED and the like) concern one client only.
        tracing::debug!(error = %e, "accept failed");
    }
}

/// Serves a connection in a task of its own on this worker.
///
/// The connection's future is some 6 KB (the HTTP/1 and HTTP/2 connection states, TLS, the
/// watchdog). Boxed here, it is copied once; spawned unboxed, it was copied into the task
/// tracker's wrapper, into the task's cell and again at each change of the task's stage, 6 % of
/// the instructions a WebSocket tunnel costs from upgrade to close (callgrind).
fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: bool,
    ctx: &Ctx,
    handler: &Arc<Handler>,
    permit: OwnedSemaphorePermit,
    load: GaugeGuard,
) {
    let held = Held {
        slot: Some(permit),
        open: None,
        worker: Some(load),
    };
    let serving = connection::serve(
        stream,
        peer,
        tls,
        held,
        ctx.shared.clone(),
        handler.clone(),
        ctx.shutdown.clone(),
    );
    ctx.shared.tasks.spawn(Box::pin(serving));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_load_goes_to_the_least_loaded_worker_and_a_large_one_is_kept_within_a_32nd() {
        let pick = |me: usize, loads: &[i64]| choose(me, loads.len(), |w| loads[w]);
        // Small loads: the strict rule, `me` on a tie.
        assert_eq!(pick(0, &[0, 0]), 0);
        assert_eq!(pick(0, &[1, 0]), 1);
        assert_eq!(pick(1, &[20, 21]), 0);
        assert_eq!(pick(1, &[21, 21]), 1);
        // Large loads: kept while at most 1/32 above the least loaded.
        assert_eq!(pick(0, &[4600, 4500]), 0);
        assert_eq!(pick(0, &[4700, 4500]), 1);
        assert_eq!(pick(2, &[3000, 3100, 3093]), 2);
        assert_eq!(pick(2, &[3000, 3100, 3100]), 0);
    }
}

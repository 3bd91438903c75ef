//! Accept loops, per-connection tasks, client-side limits and graceful shutdown.
//!
//! Owns the sockets: binding (after validation), TLS handshakes under a timeout, the cap on
//! concurrent connections, the idle timeout, and the order of shutdown (stop accepting, let
//! in-flight requests finish within the grace period, then return). What a request does is
//! `proxy.rs`'s.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::task::AtomicWaker;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Limits, Listen, PinWorkers};
use crate::metrics::Metrics;
use crate::proxy::{ConnInfo, Proxy};

/// The bound listening sockets. Tests bind `127.0.0.1:0` themselves and pass them in.
#[derive(Debug, Default)]
pub struct Listeners {
    pub https: Option<TcpListener>,
    pub http: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds every address in `listen`; an error names the key and the address.
    pub async fn bind(listen: &Listen) -> anyhow::Result<Listeners> {
        async fn one(key: &str, addr: Option<SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
            match addr {
                None => Ok(None),
                Some(a) => check_free(a)
                    .and_then(|()| listen_socket(a, key != "admin", None))
                    .and_then(TcpListener::from_std)
                    .map(Some)
                    .with_context(|| format!("listen.{key}: cannot listen on {a}")),
            }
        }
        Ok(Listeners {
            https: one("https", listen.https).await?,
            http: one("http", listen.http).await?,
            admin: one("admin", listen.admin).await?,
        })
    }
}

/// A listening socket on `addr` as `TcpListener::bind` makes one (SO_REUSEADDR, a backlog of
/// 1024), with SO_REUSEPORT if `reuse_port`, and IPV6_V6ONLY as `only_v6` says (`None`: the
/// system's default).
fn listen_socket(
    addr: SocketAddr,
    reuse_port: bool,
    only_v6: Option<bool>,
) -> io::Result<std::net::TcpListener> {
    let socket = unbound_socket(addr, only_v6)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn unbound_socket(addr: SocketAddr, only_v6: Option<bool>) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if let (true, Some(only)) = (addr.is_ipv6(), only_v6) {
        socket.set_only_v6(only)?;
    }
    Ok(socket)
}

/// Fails with "address in use" where a listener already holds `addr`, as a bind without
/// SO_REUSEPORT does. With SO_REUSEPORT, the bind would succeed beside another process of the
/// same user (a second rtcgate started by mistake) and split the connections with it.
fn check_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() != 0 {
        unbound_socket(addr, None)?.bind(&addr.into())?;
    }
    Ok(())
}

/// Worker `w`'s socket for `listener`. When the listener has SO_REUSEPORT (as `Listeners::bind`
/// makes them), each worker after the first gets a socket of its own on the same address: the
/// kernel then hands each new connection to one worker's socket and wakes that worker alone.
/// Otherwise (a socket bound by the caller), the workers share copies of one socket.
fn worker_socket(listener: &std::net::TcpListener, w: usize) -> io::Result<std::net::TcpListener> {
    let reuse_port = socket2::SockRef::from(listener)
        .reuse_port()
        .unwrap_or(false);
    if w == 0 || !reuse_port {
        return listener.try_clone();
    }
    let addr = listener.local_addr()?;
    let only_v6 = match addr {
        SocketAddr::V6(_) => socket2::SockRef::from(listener).only_v6().ok(),
        SocketAddr::V4(_) => None,
    };
    listen_socket(addr, true, only_v6).or_else(|e| {
        tracing::warn!(%addr, error = %e, "cannot open a worker's own listening socket; the workers share one");
        listener.try_clone()
    })
}

/// The HTTP server settings of one snapshot's `[limits]`, built once per snapshot.
pub struct HttpBuilders {
    /// Protocol detected from the first bytes (plain listener).
    auto: auto::Builder<TokioExecutor>,
    /// Protocol chosen by ALPN.
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

impl std::fmt::Debug for HttpBuilders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBuilders").finish_non_exhaustive()
    }
}

impl HttpBuilders {
    pub fn new(limits: &Limits) -> HttpBuilders {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            // Enforced by `serve_http`'s watchdog instead, without a timer per request.
            .header_read_timeout(None)
            // hyper answers 431 when a request head does not fit the read buffer.
            .max_buf_size(limits.max_header_size)
            // One buffer per write goes out with send(2), which is cheaper in the kernel than
            // writev(2) (1–1.5 µs of kernel time a request, measured); hyper copies a body chunk
            // into it to do so.
            .writev(false)
            .keep_alive(true);
        b.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .enable_connect_protocol();
        HttpBuilders {
            h1: b.clone().http1_only(),
            h2: b.clone().http2_only(),
            auto: b,
        }
    }
}

/// What every connection task shares, across worker threads.
struct Ctx {
    connections: Arc<Semaphore>,
    /// Cancelled when shutdown begins: stop accepting, finish what is in flight.
    shutdown: CancellationToken,
    /// Cancelled when the grace period is over: worker threads stop.
    stop: CancellationToken,
    tasks: TaskTracker,
    /// Connections (and the tunnels they became) each worker serves: the
    /// `rtcgate_worker_connections` gauges.
    load: Box<[IntGauge]>,
    /// Each worker's queue of connections accepted by another worker.
    inbox: Box<[mpsc::UnboundedSender<Handoff>]>,
}

impl Ctx {
    /// The worker a new connection should go to: the one serving the fewest, `me` on a tie.
    fn least_loaded(&self, me: usize) -> usize {
        let mut best = (me, self.load[me].get());
        for (w, load) in self.load.iter().enumerate() {
            let load = load.get();
            if load < best.1 {
                best = (w, load);
            }
        }
        best.0
    }
}

/// One connection counted in its worker's load until dropped (with the connection and every
/// tunnel it became).
struct WorkerLoad {
    ctx: Arc<Ctx>,
    worker: usize,
}

impl WorkerLoad {
    fn new(ctx: &Arc<Ctx>, worker: usize) -> WorkerLoad {
        ctx.load[worker].inc();
        WorkerLoad {
            ctx: ctx.clone(),
            worker,
        }
    }
}

impl Drop for WorkerLoad {
    fn drop(&mut self) {
        self.ctx.load[self.worker].dec();
    }
}

/// A connection accepted by one worker for another, less loaded one.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    tls: bool,
    permit: OwnedSemaphorePermit,
    load: WorkerLoad,
}

/// Serves `listeners` until `shutdown` completes, then stops accepting, gives in-flight requests
/// `limits.shutdown_grace` to finish, and returns.
///
/// Connections are served by `limits.workers` threads, each with its own single-threaded tokio
/// runtime accepting from sockets of its own (see `worker_socket`): a connection, its requests and
/// their backend connections stay on one thread, which spares the cross-thread wake-ups that
/// dominate a work-stealing scheduler's cost at this request size. The caller's runtime keeps
/// only the control work.
pub async fn run(
    listeners: Listeners,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let limits = proxy.snapshot().config.limits.clone();
    let workers = match limits.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (inbox, inboxes): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
    let ctx = Arc::new(Ctx {
        connections: proxy.connection_slots().clone(),
        shutdown: CancellationToken::new(),
        stop: CancellationToken::new(),
        tasks: proxy.tasks().clone(),
        load: (0..workers)
            .map(|w| {
                let g = proxy
                    .metrics()
                    .worker_connections
                    .with_label_values(&[&w.to_string()]);
                g.set(0);
                g
            })
            .collect(),
        inbox: inbox.into(),
    });
    let mut sockets = Vec::new();
    for (listener, tls) in [(listeners.https, true), (listeners.http, false)] {
        if let Some(l) = listener {
            tracing::info!(addr = %l.local_addr()?, tls, "listening");
            sockets.push((l.into_std()?, tls));
        }
    }
    proxy.health().sync(&proxy.snapshot());
    crate::reload::start(proxy.clone(), ctx.stop.clone());
    if let Some(admin) = listeners.admin {
        tracing::info!(addr = %admin.local_addr()?, "admin listening");
        tokio::spawn(crate::admin::serve(admin, proxy.clone(), ctx.stop.clone()));
    }
    let cpus = worker_cpus(limits.pin_workers, workers);
    let mut threads = Vec::with_capacity(workers);
    for (w, inbox) in inboxes.into_iter().enumerate() {
        let cpu = cpus.as_ref().map(|c| c[w % c.len()]);
        let mine = sockets
            .iter()
            .map(|(l, tls)| Ok((worker_socket(l, w)?, *tls)))
            .collect::<io::Result<Vec<_>>>()?;
        let (ctx, proxy) = (ctx.clone(), proxy.for_worker());
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
                worker(w, mine, inbox, ctx, proxy)
            })
            .context("cannot start a worker thread")?;
        threads.push(thread);
    }
    drop(sockets);

    shutdown.await;
    let grace = proxy.snapshot().config.limits.shutdown_grace;
    tracing::info!(
        ?grace,
        "shutting down: no new connections, in-flight requests may finish"
    );
    ctx.shutdown.cancel();
    ctx.tasks.close();
    if tokio::time::timeout(grace, ctx.tasks.wait()).await.is_err() {
        tracing::warn!(
            open = ctx.tasks.len(),
            "grace period over; closing the remaining connections"
        );
    }
    ctx.stop.cancel();
    proxy.health().stop_all();
    tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await?;
    Ok(())
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
    proxy: Arc<Proxy>,
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
        for (socket, tls) in sockets {
            match TcpListener::from_std(socket) {
                Ok(l) => {
                    ctx.tasks
                        .spawn(accept_loop(me, l, tls, ctx.clone(), proxy.clone()));
                }
                Err(e) => tracing::error!(error = %e, "cannot register a listener"),
            }
        }
        ctx.tasks
            .spawn(take_handoffs(inbox, ctx.clone(), proxy.clone()));
        tokio::spawn(proxy.clone().sweep_idle_connections());
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
    proxy: Arc<Proxy>,
) {
    loop {
        // Past the cap, clients wait in the kernel's backlog instead of being accepted and
        // starved: wait for a free slot before accepting. The slot is not held while accepting,
        // or an idle listener would keep it from a busy one; so it is taken again after accept,
        // which at worst holds one accepted socket per listener until a slot frees.
        tokio::select! {
            p = ctx.connections.acquire() => drop(p),
            _ = ctx.shutdown.cancelled() => return,
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
            p = ctx.connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = ctx.shutdown.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let target = ctx.least_loaded(me);
        let load = WorkerLoad::new(&ctx, target);
        if target == me {
            spawn_connection(stream, peer, tls, &ctx, &proxy, permit, load);
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
    proxy: Arc<Proxy>,
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
                &proxy,
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
    let resource = matches!(
        e.raw_os_error(),
        Some(23 /* ENFILE */ | 24 /* EMFILE */ | 105 /* ENOBUFS */ | 12 /* ENOMEM */)
    );
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
    ctx: &Arc<Ctx>,
    proxy: &Arc<Proxy>,
    permit: OwnedSemaphorePermit,
    load: WorkerLoad,
) {
    let serving = serve_connection(stream, peer, tls, ctx.clone(), proxy.clone(), permit, load);
    ctx.tasks.spawn(Box::pin(serving));
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: bool,
    ctx: Arc<Ctx>,
    proxy: Arc<Proxy>,
    permit: OwnedSemaphorePermit,
    load: WorkerLoad,
) {
    let held = Box::new((permit, OpenConnection::new(proxy.metrics(), tls), load));
    let info = ConnInfo::new(peer, tls, held);
    // This connection's settings: those of the snapshot current when it arrived.
    let (http, limits, tls_config) = {
        let snap = proxy.snapshot();
        (
            snap.http.clone(),
            snap.config.limits.clone(),
            snap.tls.clone(),
        )
    };
    if !tls {
        serve_http(stream, info, &http.auto, &limits, &ctx, proxy).await;
        return;
    }
    let Some(config) = tls_config else {
        return;
    };
    let handshake = TlsAcceptor::from(config).accept(stream);
    let stream = tokio::select! {
        r = tokio::time::timeout(limits.tls_handshake_timeout, handshake) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                proxy.metrics().tls_handshake_failures.inc();
                return;
            }
            Err(_) => {
                tracing::debug!(client = %peer, "TLS handshake timed out");
                proxy.metrics().tls_handshake_failures.inc();
                return;
            }
        },
        _ = ctx.shutdown.cancelled() => return,
    };
    let builder = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => &http.h2,
        Some(b"http/1.1") => &http.h1,
        _ => &http.auto,
    };
    serve_http(stream, info, builder, &limits, &ctx, proxy).await;
}

async fn serve_http<I>(
    io: I,
    info: Arc<ConnInfo>,
    builder: &auto::Builder<TokioExecutor>,
    limits: &Limits,
    ctx: &Arc<Ctx>,
    proxy: Arc<Proxy>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(AtomicU32::new(0));
    let io = Watched {
        inner: io,
        activity: activity.clone(),
    };
    let peer = info.peer;
    let watched = info.clone();
    let service = service_fn(move |req| {
        let (proxy, info) = (proxy.clone(), info.clone());
        async move { Ok::<_, Infallible>(proxy.handle(req, &info).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);

    // Two timeouts, checked every half of the shorter, without a clock read or timer per
    // request:
    // - header_read_timeout: with nothing in flight, an HTTP/1.1 connection must bring a whole
    //   request head within it, whether it trickles bytes (slowloris) or waits between
    //   keep-alive requests (counted from the end of the previous response), as HAProxy's
    //   `timeout http-request` does. (hyper has this timeout too, but it arms a timer for every
    //   request head, and on a busy worker nearly every one of those timers woke the runtime
    //   through an eventfd write: some 9,000 syscalls a second under wrk.)
    // - idle_timeout: a connection whose socket moved nothing, with nothing in flight, is asked
    //   to close, and dropped if it is still silent a period later (a peer that stopped reading
    //   would otherwise hold its graceful close forever).
    // A request being handled or a tunnel (HTTP/2 CONNECT) open on the connection keeps it
    // alive however quiet its socket: tunnels have their own idle timeout.
    let head_timeout = limits.header_read_timeout;
    let idle_timeout = limits.idle_timeout;
    let period = head_timeout.min(idle_timeout) / 2;
    // The first tick is a period away. (An interval's immediate first tick would register a
    // timer due now, earlier than any the runtime waits for, and so wake the runtime through an
    // eventfd write: one syscall per new connection.)
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen_io = activity.load(Ordering::Relaxed);
    let mut seen_started = watched.started();
    let mut quiet = Duration::ZERO;
    let mut waiting = Duration::ZERO;
    let mut closing = false;
    let shutdown = ctx.shutdown.cancelled();
    tokio::pin!(shutdown);
    // The timer and the shutdown signal are polled only after one of them woke the task, not
    // at every wake-up of the connection (see `Gate`).
    let gate = Gate::new();
    loop {
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Watch::Ended(r));
            }
            if let Some(mut watchers) = gate.poll_open(cx) {
                if !closing && shutdown.as_mut().poll(&mut watchers).is_ready() {
                    return Poll::Ready(Watch::Shutdown);
                }
                if tick.poll_tick(&mut watchers).is_ready() {
                    return Poll::Ready(Watch::Tick);
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Watch::Ended(r) => {
                if let Err(e) = r {
                    tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            Watch::Shutdown => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            Watch::Tick => {
                let io = activity.load(Ordering::Relaxed);
                let started = watched.started();
                if watched.busy() {
                    (quiet, waiting) = (Duration::ZERO, Duration::ZERO);
                } else {
                    quiet = if io == seen_io {
                        quiet + period
                    } else {
                        Duration::ZERO
                    };
                    // A response body still going out (a long download) is not a wait for
                    // the next request; if its reader stalls, the idle timeout applies.
                    waiting = if started == seen_started && !watched.responding() {
                        waiting + period
                    } else {
                        Duration::ZERO
                    };
                }
                (seen_io, seen_started) = (io, started);
                if waiting >= head_timeout && !watched.is_h2() {
                    tracing::debug!(client = %peer, "no request head within header_read_timeout; connection closed");
                    return;
                }
                if quiet >= idle_timeout * 2 {
                    tracing::debug!(client = %peer, "idle connection dropped");
                    return;
                }
                if quiet >= idle_timeout && !closing {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
        // The watcher that fired is polled again at the next turn, which re-arms it.
        gate.open();
    }
}

/// What ended a wait of `serve_http`'s loop.
enum Watch<E> {
    /// The connection is done.
    Ended(Result<(), E>),
    /// Shutdown began.
    Shutdown,
    /// The watchdog's period passed.
    Tick,
}

/// Lets a task poll some futures (a connection's watchdog timer and the shutdown signal) only
/// after one of them woke it.
///
/// `select!` polls every branch at every wake-up of its task, and a busy connection's task
/// wakes two or three times per request: polling the timer and the shutdown signal each time
/// cost about 570 instructions per proxied request (of ~30k), nearly all of it re-registering
/// wakers with futures that had not fired. Behind the gate they are polled with a waker of
/// its own, which notes that one of them fired and then wakes the task.
struct Gate {
    flag: Arc<GateFlag>,
    waker: Waker,
}

struct GateFlag {
    /// Whether a future behind the gate woke since they were last polled.
    woken: AtomicBool,
    /// The task to wake then.
    task: AtomicWaker,
}

impl Wake for GateFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Gate {
    /// A gate open for the first poll, which registers the futures behind it.
    fn new() -> Gate {
        let flag = Arc::new(GateFlag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Gate {
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    /// Registers `cx`'s task to be woken through the gate. When a future behind it woke since
    /// they were last polled (or `open` was called), returns the context to poll them with.
    fn poll_open(&self, cx: &Context<'_>) -> Option<Context<'_>> {
        self.flag.task.register(cx.waker());
        self.flag
            .woken
            .swap(false, Ordering::AcqRel)
            .then(|| Context::from_waker(&self.waker))
    }

    /// Has the futures behind the gate polled at the next `poll_open`: after one of them
    /// completed, so that it is polled again (an interval re-arms only when polled).
    fn open(&self) {
        self.flag.woken.store(true, Ordering::Release);
    }
}

pin_project_lite::pin_project! {
    /// A client stream that counts its reads and writes, so the idle timer can tell whether
    /// anything moved. One relaxed atomic add per I/O call; no clock reads.
    struct Watched<I> {
        #[pin]
        inner: I,
        activity: Arc<AtomicU32>,
    }
}

impl<I: AsyncRead> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let r = this.inner.poll_read(cx, buf);
        if r.is_ready() {
            this.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl<I: AsyncWrite> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        if r.is_ready() {
            this.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        if r.is_ready() {
            this.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// Counts one open client connection in the metrics until dropped.
struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    fn new(metrics: &Arc<Metrics>, tls: bool) -> OpenConnection {
        let listener = if tls { "https" } else { "http" };
        metrics
            .client_connections_total
            .with_label_values(&[listener])
            .inc();
        metrics.client_connections.inc();
        OpenConnection(metrics.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.client_connections.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each worker past the first listens on a socket of its own, and the kernel spreads new
    /// connections over the workers' sockets (copies of one socket would share one queue, and
    /// the first to drain it would take them all).
    #[test]
    fn each_worker_gets_its_own_share_of_new_connections() {
        let first =
            listen_socket("127.0.0.1:0".parse().expect("address"), true, None).expect("bind");
        let second = worker_socket(&first, 1).expect("worker socket");
        let addr = first.local_addr().expect("address");
        assert_eq!(second.local_addr().expect("address"), addr);
        let clients: Vec<_> = (0..32)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        let drain = |l: &std::net::TcpListener| {
            let mut n = 0;
            while let Ok(_conn) = l.accept() {
                n += 1;
            }
            n
        };
        let mut counts = [0, 0];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for _ in 0..100_000 {
            counts[0] += drain(&first);
            counts[1] += drain(&second);
            if counts[0] + counts[1] == clients.len() || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::yield_now();
        }
        assert_eq!(counts[0] + counts[1], clients.len(), "accepted {counts:?}");
        // All 32 on one socket has odds of 2 in 2^32.
        assert!(counts[0] > 0 && counts[1] > 0, "accepted {counts:?}");
    }

    /// SO_REUSEPORT does not let a second instance bind beside a running one: its bind fails
    /// with "address in use", naming the key, as it did before.
    #[tokio::test]
    async fn a_second_instance_on_the_same_address_is_refused() {
        let mut listen = Listen {
            https: None,
            http: Some("127.0.0.1:0".parse().expect("address")),
            admin: None,
        };
        let first = Listeners::bind(&listen).await.expect("first bind");
        let bound = first
            .http
            .as_ref()
            .expect("http")
            .local_addr()
            .expect("address");
        listen.http = Some(bound);
        let err = Listeners::bind(&listen).await.expect_err("second bind");
        let text = format!("{err:#}");
        assert!(text.contains("listen.http: cannot listen on"), "{text}");
        assert!(text.to_lowercase().contains("in use"), "{text}");
        drop(first);
        Listeners::bind(&listen)
            .await
            .expect("bind once the first is gone");
    }

    /// A socket bound by the caller without SO_REUSEPORT is shared: workers get copies of it.
    #[test]
    fn a_socket_without_reuse_port_is_shared() {
        let first =
            listen_socket("127.0.0.1:0".parse().expect("address"), false, None).expect("bind");
        let second = worker_socket(&first, 1).expect("worker socket");
        let client = std::net::TcpStream::connect(first.local_addr().expect("address"));
        client.expect("connect");
        second.set_nonblocking(false).expect("blocking");
        let timeout = Some(Duration::from_secs(5));
        socket2::SockRef::from(&second)
            .set_read_timeout(timeout)
            .expect("accept timeout");
        // The connection queued on the one socket is accepted through the copy.
        second.accept().expect("accept through the copy");
    }
}

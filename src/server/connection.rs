//! One client connection, from accept to close: the TLS handshake under its timeout (ALPN picks
//! the HTTP builder), hyper serving requests (upgrades on) into the request handler, and the
//! connection's watchdog, which enforces `header_read_timeout` and `idle_timeout` without a
//! timer or clock read per request, and asks the connection to close at shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::proxy::conn::{ConnInfo, Held};
use crate::proxy::handler::Handler;
use crate::server::gate::Gate;
use crate::server::h2_guard::{Guarded, Start};
use crate::server::proxy_header;
use crate::state::buffers::{Buffers, Weighed};
use crate::state::Shared;

/// Serves one accepted client connection to its end: the TLS handshake (on the https
/// listener) under its timeout, then HTTP under the connection's watchdog. `held` is released
/// when the connection and every tunnel it became are done.
pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    tls: bool,
    mut held: Held,
    shared: Arc<Shared>,
    handler: Arc<Handler>,
    shutdown: CancellationToken,
) {
    held.open = Some(
        shared
            .metrics
            .open_connection(if tls { "https" } else { "http" }),
    );
    // This connection's settings: those of the snapshot current when it arrived.
    let (http, limits, tls_config, proxy_protocol, listen) = {
        let snap = shared.snapshot();
        let pp = snap.config.listen.proxy_protocol;
        (
            snap.http.clone(),
            snap.config.limits.clone(),
            snap.tls.clone(),
            if tls { pp.https } else { pp.http },
            snap.config.clone(),
        )
    };
    // Behind an L4 balancer the client is who the PROXY header names.
    let peer = if proxy_protocol {
        let read = proxy_header::read(&mut stream, peer);
        match tokio::time::timeout(limits.header_read_timeout, read).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                tracing::debug!(from = %peer, error = %e, "no valid PROXY protocol header: closed");
                return;
            }
            Err(_) => {
                tracing::debug!(from = %peer, "no PROXY protocol header in time: closed");
                return;
            }
        }
    } else {
        peer
    };
    let trusted = listen.listen.trusts(peer.ip());
    drop(listen);
    let serving = Serving {
        info: ConnInfo::trusting(peer, tls, trusted, held),
        limits: &limits,
        shutdown: &shutdown,
        handler,
        buffers: &shared.buffers,
    };
    let floods = &shared.metrics.h2_floods;
    let per_second = limits.h2_control_frames_per_second;
    if !tls {
        let stream = Guarded::new(stream, Start::Sniff, per_second, floods);
        serve_http(stream, &http.auto, serving).await;
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
                shared.metrics.tls_handshake_failures.inc();
                return;
            }
            Err(_) => {
                tracing::debug!(client = %peer, "TLS handshake timed out");
                shared.metrics.tls_handshake_failures.inc();
                return;
            }
        },
        _ = shutdown.cancelled() => return,
    };
    // HTTP/2 goes through the flood guard; HTTP/1.1 chosen by ALPN does not need it.
    let (builder, start) = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => (&http.h2, Start::H2),
        Some(b"http/1.1") => {
            serve_http(stream, &http.h1, serving).await;
            return;
        }
        _ => (&http.auto, Start::Sniff),
    };
    let stream = Guarded::new(stream, start, per_second, floods);
    serve_http(stream, builder, serving).await;
}

/// What serving one connection's HTTP needs besides its stream and builder.
struct Serving<'a> {
    info: Arc<ConnInfo>,
    limits: &'a Limits,
    shutdown: &'a CancellationToken,
    handler: Arc<Handler>,
    buffers: &'a Buffers,
}

async fn serve_http<I>(io: I, builder: &auto::Builder<TokioExecutor>, serving: Serving<'_>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Serving {
        info,
        limits,
        shutdown,
        handler,
        buffers,
    } = serving;
    let io = Watched {
        inner: io,
        info: info.clone(),
    };
    let peer = info.peer;
    let watched = info.clone();
    let service = service_fn(move |req| {
        let (handler, info) = (handler.clone(), info.clone());
        async move { Ok::<_, Infallible>(handler.handle(req, &info).await) }
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
    let mut seen_io = watched.activity();
    let mut seen_started = watched.started();
    let mut quiet = Duration::ZERO;
    let mut waiting = Duration::ZERO;
    let mut closing = false;
    let shutdown = shutdown.cancelled();
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
                let io = watched.activity();
                // The buffer budget sees a connection that holds much, and may want it gone.
                buffers.watch(&watched);
                if watched.queued().is_cut() {
                    tracing::debug!(client = %peer, "connection closed: the buffer budget is spent and it held the most");
                    return;
                }
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

pin_project_lite::pin_project! {
    /// A client stream that counts its reads and writes, so the idle timer can tell whether
    /// anything moved (one relaxed atomic add per I/O call; no clock reads), and the bytes its
    /// writes took off what the connection holds for its client.
    struct Watched<I> {
        #[pin]
        inner: I,
        info: Arc<ConnInfo>,
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
            this.info.moved();
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
        if let Poll::Ready(written) = &r {
            this.info.moved();
            if let Ok(n) = written {
                this.info.queued().written(*n);
            }
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
        if let Poll::Ready(written) = &r {
            this.info.moved();
            if let Ok(n) = written {
                this.info.queued().written(*n);
            }
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

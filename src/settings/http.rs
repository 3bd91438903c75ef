//! `[limits]` → hyper's server builders: one that detects the protocol from the first bytes (the
//! plain listener), and one each for HTTP/1.1 and HTTP/2 when TLS's ALPN already chose.
//!
//! The timeouts that apply to a whole connection (head read, idle) are enforced by the
//! connection's watchdog in `server::connection`, not here; see there for why.

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use crate::config::Limits;

/// Bytes one HTTP/2 stream may queue towards its client.
pub const SEND_BUF_PER_STREAM: usize = 32 * 1024;
/// Streams one HTTP/2 connection may have open at once (nginx's default).
pub const MAX_STREAMS: u32 = 128;

/// The HTTP server settings of one snapshot's `[limits]`, built once per snapshot.
pub struct HttpBuilders {
    /// Protocol detected from the first bytes (plain listener).
    pub auto: auto::Builder<TokioExecutor>,
    /// Protocol chosen by ALPN.
    pub h1: auto::Builder<TokioExecutor>,
    pub h2: auto::Builder<TokioExecutor>,
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
            // Enforced by the connection's watchdog instead, without a timer per request.
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
            // What one stream may queue for a client that does not read (hyper's default is
            // 400 KiB): past it, the stream stops taking from its backend, so back-pressure
            // reaches the backend instead of rtcgate's memory.
            .max_send_buf_size(SEND_BUF_PER_STREAM)
            .max_concurrent_streams(MAX_STREAMS)
            .enable_connect_protocol();
        HttpBuilders {
            h1: b.clone().http1_only(),
            h2: b.clone().http2_only(),
            auto: b,
        }
    }
}

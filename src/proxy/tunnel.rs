//! WebSocket upgrades and the byte pump between client and backend.
//!
//! Two ways in: an HTTP/1.1 `Upgrade: websocket` request, forwarded as one; and an HTTP/2
//! extended CONNECT with `:protocol = websocket` (RFC 8441), opened to the backend as an
//! HTTP/1.1 upgrade with a key of our own. Either way the backend's `101` is checked against what
//! was asked, then bytes are pumped without parsing frames.
//!
//! The pump holds no buffer while a tunnel is idle: it reads into one scratch buffer per worker
//! thread and writes straight on; only bytes the other side cannot take yet are copied into a
//! buffer of their own, freed as soon as they drain. Placement, cookies and counting belong to
//! the handler (`handler.rs`); the session guard simply lives as long as the pump.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Once one side has closed, how long the other may stay silent before the tunnel closes: a
/// WebSocket whose peer is gone is of no use half open (HAProxy's `timeout client-fin`).
const FIN_WAIT: Duration = Duration::from_secs(1);

/// Bytes one read may move; one such buffer per worker thread, shared by all its tunnels (so its
/// size costs nothing per tunnel, and bulk transfers move in fewer, larger system calls).
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// How a client asked for a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/1.1 `Connection: upgrade` + `Upgrade: websocket`.
    H1Upgrade,
    /// HTTP/2 extended CONNECT, `:protocol = websocket`.
    H2Connect,
}

/// Whether `req` asks for a WebSocket, and how.
pub fn websocket_kind<B>(req: &Request<B>) -> Option<Kind> {
    if req.method() == Method::CONNECT {
        let proto = req.extensions().get::<hyper::ext::Protocol>()?;
        return proto
            .as_str()
            .eq_ignore_ascii_case("websocket")
            .then_some(Kind::H2Connect);
    }
    if req.version() != Version::HTTP_11 || !has_token(req.headers(), header::UPGRADE, "websocket")
    {
        return None;
    }
    has_token(req.headers(), header::CONNECTION, "upgrade").then_some(Kind::H1Upgrade)
}

/// Whether the comma-separated header `name` lists `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Turns a WebSocket request (headers already cleaned of hop-by-hop fields) into the backend's
/// HTTP/1.1 upgrade request. Returns the `Sec-WebSocket-Accept` the backend must answer with.
pub fn prepare_upstream(
    kind: Kind,
    method: &mut Method,
    headers: &mut HeaderMap,
) -> Option<String> {
    if kind == Kind::H2Connect {
        // RFC 8441 §5: CONNECT with :protocol becomes the GET of RFC 6455, with a key of ours.
        *method = Method::GET;
        let mut key = [0u8; 16];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).is_err() {
            return None;
        }
        let key = STANDARD.encode(key);
        headers.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::try_from(key).ok()?);
        if !headers.contains_key(header::SEC_WEBSOCKET_VERSION) {
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    let accept = derive_accept_key(key.as_bytes());
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    Some(accept)
}

/// Whether the backend's `101` answers what was asked: a WebSocket, with the right accept key.
pub fn backend_agreed(headers: &HeaderMap, accept: &str) -> bool {
    has_token(headers, header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|v| v.as_bytes() == accept.as_bytes())
}

/// Shapes the backend's `101` headers (hop-by-hop already gone) for the client: an HTTP/1.1
/// client gets its upgrade confirmed; an HTTP/2 client gets a plain `200` without the accept key.
pub fn client_response_headers(kind: Kind, headers: &mut HeaderMap) {
    match kind {
        Kind::H1Upgrade => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        Kind::H2Connect => {
            headers.remove(header::SEC_WEBSOCKET_ACCEPT);
        }
    }
}

/// Why a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides closed their writing halves.
    Closed,
    /// Nothing moved for the idle timeout (or, once one side closed, for a second).
    Idle,
    /// Closed by rtcgate: its backend's drain timed out.
    Drained,
}

/// Pumps bytes both ways between `a` and `b` until both directions have ended, either side fails,
/// or nothing moves for `idle`.
pub async fn pump<A, B>(a: A, b: B, idle: Duration) -> io::Result<End>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    Pump {
        a,
        b,
        a_to_b: Half::default(),
        b_to_a: Half::default(),
        last: Instant::now(),
        idle,
        timer: Box::pin(tokio::time::sleep(idle)),
    }
    .await
}

struct Pump<A, B> {
    a: A,
    b: B,
    a_to_b: Half,
    b_to_a: Half,
    /// When bytes last moved.
    last: Instant,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

/// One direction's state.
#[derive(Default)]
struct Half {
    /// Bytes read but not yet written, held only while the writer pushes back.
    pending: Option<(Box<[u8]>, usize)>,
    /// The reader reached end of stream.
    eof: bool,
    /// The writer has been shut down after `eof`.
    done: bool,
    /// Bytes written since the last flush.
    unflushed: bool,
}

impl<A, B> Future for Pump<A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = io::Result<End>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<End>> {
        let this = &mut *self;
        let mut moved = false;
        let ab = this.a_to_b.poll(cx, &mut this.a, &mut this.b, &mut moved)?;
        let ba = this.b_to_a.poll(cx, &mut this.b, &mut this.a, &mut moved)?;
        if ab.is_ready() && ba.is_ready() {
            return Poll::Ready(Ok(End::Closed));
        }
        if (ab.is_ready() || ba.is_ready()) && this.idle > FIN_WAIT {
            this.idle = FIN_WAIT;
            this.last = Instant::now();
            this.timer.as_mut().reset(this.last + FIN_WAIT);
        }
        if moved {
            this.last = Instant::now();
        }
        // The timer is re-armed lazily: it fires at most once per idle period.
        while this.timer.as_mut().poll(cx).is_ready() {
            let quiet = this.last.elapsed();
            if quiet >= this.idle {
                return Poll::Ready(Ok(End::Idle));
            }
            let deadline = Instant::now() + (this.idle - quiet);
            this.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

impl Half {
    /// Moves what `from` has to `to`; ready once `from` ended and `to` is shut down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        moved: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if let Some((buf, start)) = &mut self.pending {
                while *start < buf.len() {
                    let n = ready!(Pin::new(&mut *to).poll_write(cx, &buf[*start..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    *start += n;
                    *moved = true;
                    self.unflushed = true;
                }
                self.pending = None;
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let read = SCRATCH_BUF.with_borrow_mut(|scratch| -> Poll<io::Result<()>> {
                let mut rb = ReadBuf::new(scratch);
                match Pin::new(&mut *from).poll_read(cx, &mut rb) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                        self.eof = true;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Ok(())) => {
                        let data = rb.filled();
                        *moved = true;
                        // Write straight from the scratch buffer; keep a copy only of what the
                        // writer cannot take now.
                        let written = match Pin::new(&mut *to).poll_write(cx, data) {
                            Poll::Ready(Ok(0)) => {
                                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                            }
                            Poll::Ready(Ok(n)) => n,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => 0,
                        };
                        if written > 0 {
                            self.unflushed = true;
                        }
                        if written < data.len() {
                            self.pending = Some((data[written..].into(), 0));
                        }
                        Poll::Ready(Ok(()))
                    }
                }
            });
            match read {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing more to read for now: push out what the writer may be holding.
                    if self.unflushed {
                        ready!(Pin::new(&mut *to).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_cross_both_ways_and_eof_propagates() {
        let (client, proxy_a) = tokio::io::duplex(64);
        let (proxy_b, backend) = tokio::io::duplex(64);
        let pumping = tokio::spawn(pump(proxy_a, proxy_b, Duration::from_secs(30)));
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut br, mut bw) = tokio::io::split(backend);
        // More than the duplex capacity, so the pump must hold and drain pending bytes.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            cw.write_all(&sent).await.expect("write");
            cw.shutdown().await.expect("shutdown");
        });
        let mut got = Vec::new();
        br.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, big);
        writer.await.expect("writer");
        bw.write_all(b"bye").await.expect("write back");
        bw.shutdown().await.expect("shutdown");
        let mut back = Vec::new();
        cr.read_to_end(&mut back).await.expect("read back");
        assert_eq!(back, b"bye");
        assert_eq!(pumping.await.expect("join").expect("pump"), End::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_ends_after_the_idle_timeout() {
        let (_client, a) = tokio::io::duplex(64);
        let (b, _backend) = tokio::io::duplex(64);
        let end = pump(a, b, Duration::from_secs(5)).await.expect("pump");
        assert_eq!(end, End::Idle);
    }
}

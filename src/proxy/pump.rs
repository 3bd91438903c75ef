//! The byte pump of a tunnel: both directions between client and backend, without parsing or
//! buffering frames, and the ending of a tunnel with a close frame between two frames when
//! rtcgate cuts it or the backend drops it (the boundaries are `frames.rs`'s).
//!
//! The pump holds no buffer while a tunnel is idle: it reads into one scratch buffer per worker
//! thread and writes straight on; only bytes the other side cannot take yet are copied into a
//! buffer of their own, freed as soon as they drain. The session guard simply lives as long as
//! the pump.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::proxy::frames::{close_frame, Frames};

/// Once one side has closed, how long the other may stay silent before the tunnel closes: a
/// WebSocket whose peer is gone is of no use half open (HAProxy's `timeout client-fin`).
const FIN_WAIT: Duration = Duration::from_secs(1);

/// Bytes one read may move; one such buffer per worker thread, shared by all its tunnels (so its
/// size costs nothing per tunnel, and bulk transfers move in fewer, larger system calls).
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed its side first, or failed.
    Client,
    /// The backend closed its side first, or failed. When its stream stood at a frame boundary
    /// and it had sent no close frame, the client got `1014` (bad gateway) from rtcgate.
    Backend,
    /// Nothing moved for the idle timeout (or, once one side closed, for a second).
    Idle,
    /// rtcgate cut it (`cut` resolved): the client got `close` at the next frame boundary, or
    /// a bare close if none came within [`CUT_WAIT`].
    Cut,
}

/// How a tunnel ended, and the close frame rtcgate sent its client, if it sent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    pub end: End,
    /// `close::*`: the code of the close frame rtcgate sent the client.
    pub code: Option<u16>,
}

/// The close codes rtcgate sends when it ends a tunnel itself (RFC 6455 §7.4, IANA registry).
pub mod close {
    /// rtcgate is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The backend is drained, removed, in maintenance or down: reconnect, elsewhere.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The backend dropped the connection without a close frame of its own.
    pub const BAD_GATEWAY: u16 = 1014;
}

/// Once rtcgate decided to cut a tunnel, how long a frame already on its way from the backend
/// may take to finish before the client's connection is closed without a close frame.
pub const CUT_WAIT: Duration = Duration::from_secs(2);

/// Pumps bytes both ways between the client `a` and the backend `b` until both directions have
/// ended, either side fails, nothing moves for `idle`, or `cut` resolves; then the client gets
/// the close frame `cut` gave, between two of the backend's frames.
pub async fn pump<A, B, C>(a: A, b: B, idle: Duration, cut: C) -> Closed
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    C: Future<Output = u16>,
{
    Pump {
        a,
        b,
        a_to_b: Half::default(),
        b_to_a: Half::default(),
        frames: Frames::default(),
        last: Instant::now(),
        idle,
        timer: Box::pin(tokio::time::sleep(idle)),
        cut,
        cutting: false,
        client_first: false,
    }
    .await
}

pin_project_lite::pin_project! {
    struct Pump<A, B, C> {
        a: A,
        b: B,
        a_to_b: Half,
        b_to_a: Half,
        // Frame boundaries of what the backend sends.
        frames: Frames,
        // When bytes last moved.
        last: Instant,
        idle: Duration,
        timer: Pin<Box<tokio::time::Sleep>>,
        #[pin]
        cut: C,
        // `cut` resolved: the close frame is on its way or sent.
        cutting: bool,
        // The client's side ended before the backend's.
        client_first: bool,
    }
}

/// One direction's state.
#[derive(Default)]
struct Half {
    /// Bytes read but not yet written, held only while the writer pushes back.
    pending: Option<(Box<[u8]>, usize)>,
    /// The reader reached end of stream (or failed).
    eof: bool,
    /// The reader failed rather than ending cleanly.
    failed: bool,
    /// The writer has been shut down after `eof`.
    done: bool,
    /// Bytes written since the last flush.
    unflushed: bool,
    /// Reads are stopped at the next frame boundary, and then this close frame goes out.
    close_at_boundary: Option<u16>,
    /// The close frame rtcgate sent on this direction.
    sent_close: Option<u16>,
}

impl<A, B, C> Future for Pump<A, B, C>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    C: Future<Output = u16>,
{
    type Output = Closed;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Closed> {
        let this = self.project();
        let sent = |half: &Half, end: End| Closed {
            end,
            code: half.sent_close,
        };
        let mut moved = false;
        if !*this.cutting {
            if let Poll::Ready(code) = this.cut.poll(cx) {
                // Stop listening to the client; finish the backend's frame in flight, then the
                // close frame, and no longer than CUT_WAIT.
                *this.cutting = true;
                this.b_to_a.close_at_boundary = Some(code);
                *this.idle = CUT_WAIT;
                *this.last = Instant::now();
                this.timer.as_mut().reset(*this.last + CUT_WAIT);
            }
        }
        let ab = if *this.cutting {
            Poll::Pending
        } else {
            match this.a_to_b.poll(cx, this.a, this.b, None, &mut moved) {
                Poll::Ready(Err(Fault::Reader)) => {
                    return Poll::Ready(sent(this.b_to_a, End::Client))
                }
                Poll::Ready(Err(Fault::Writer)) => {
                    return Poll::Ready(sent(this.b_to_a, End::Backend))
                }
                Poll::Ready(Ok(())) => Poll::Ready(()),
                Poll::Pending => Poll::Pending,
            }
        };
        let ba = match this
            .b_to_a
            .poll(cx, this.b, this.a, Some(this.frames), &mut moved)
        {
            Poll::Ready(Err(Fault::Writer)) => return Poll::Ready(sent(this.b_to_a, End::Client)),
            // A failed backend read is taken as its end (see `Half::poll`).
            Poll::Ready(Err(Fault::Reader)) => return Poll::Ready(sent(this.b_to_a, End::Backend)),
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        };
        if *this.cutting && ba.is_ready() {
            return Poll::Ready(sent(this.b_to_a, End::Cut));
        }
        if ab.is_ready() && ba.is_ready() {
            // Whoever ended first closed it: after one side's end the other has FIN_WAIT.
            let first = if *this.client_first {
                End::Client
            } else {
                End::Backend
            };
            return Poll::Ready(sent(this.b_to_a, first));
        }
        if (ab.is_ready() || ba.is_ready()) && *this.idle > FIN_WAIT {
            *this.client_first = ab.is_ready();
            *this.idle = FIN_WAIT;
            *this.last = Instant::now();
            this.timer.as_mut().reset(*this.last + FIN_WAIT);
        }
        if moved {
            *this.last = Instant::now();
        }
        // The timer is re-armed lazily: it fires at most once per idle period.
        while this.timer.as_mut().poll(cx).is_ready() {
            let quiet = this.last.elapsed();
            if quiet >= *this.idle {
                if *this.cutting {
                    return Poll::Ready(sent(this.b_to_a, End::Cut));
                }
                if ab.is_ready() {
                    return Poll::Ready(sent(this.b_to_a, End::Client));
                }
                if ba.is_ready() {
                    return Poll::Ready(sent(this.b_to_a, End::Backend));
                }
                return Poll::Ready(sent(this.b_to_a, End::Idle));
            }
            let deadline = Instant::now() + (*this.idle - quiet);
            this.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

/// Which end of a direction failed.
enum Fault {
    Reader,
    Writer,
}

impl Half {
    /// Moves what `from` has to `to`; ready once `from` ended and `to` is shut down. `frames`,
    /// for the backend-to-client direction, tracks frame boundaries: a close frame goes out
    /// there when one is due, and a backend that ends (or fails) at a boundary without having
    /// sent a close frame gets its client a `1014`.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        mut frames: Option<&mut Frames>,
        moved: &mut bool,
    ) -> Poll<Result<(), Fault>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if let Some((buf, start)) = &mut self.pending {
                while *start < buf.len() {
                    let n = ready!(Pin::new(&mut *to).poll_write(cx, &buf[*start..]))
                        .map_err(|_| Fault::Writer)?;
                    if n == 0 {
                        return Poll::Ready(Err(Fault::Writer));
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
            if let Some(f) = frames.as_deref_mut() {
                let due = match self.close_at_boundary {
                    Some(code) if f.at_boundary() => Some(code),
                    // The backend ended between frames without closing: tell the client so.
                    None if self.eof && f.at_boundary() && !f.saw_close => Some(close::BAD_GATEWAY),
                    _ => None,
                };
                if let Some(code) = due {
                    self.pending = Some((close_frame(code), 0));
                    self.sent_close = Some(code);
                    self.eof = true;
                    f.saw_close = true;
                    self.close_at_boundary = None;
                    continue;
                }
            }
            if self.eof {
                ready!(Pin::new(&mut *to).poll_shutdown(cx)).map_err(|_| Fault::Writer)?;
                self.done = true;
                return Poll::Ready(if self.failed && frames.is_none() {
                    Err(Fault::Reader)
                } else {
                    Ok(())
                });
            }
            // Reads stop at the next boundary when a close frame is due there.
            let limit = match (&frames, self.close_at_boundary) {
                (Some(f), Some(_)) => f.until_boundary(),
                _ => usize::MAX,
            };
            let read = SCRATCH_BUF.with_borrow_mut(|scratch| -> Poll<Result<(), Fault>> {
                let len = scratch.len().min(limit);
                let mut rb = ReadBuf::new(&mut scratch[..len]);
                match Pin::new(&mut *from).poll_read(cx, &mut rb) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(_)) => {
                        // A backend that resets is ended like one that closes: its client can
                        // still get a close frame. A client that resets has no one to tell.
                        self.eof = true;
                        self.failed = true;
                        if frames.is_some() {
                            Poll::Ready(Ok(()))
                        } else {
                            Poll::Ready(Err(Fault::Reader))
                        }
                    }
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                        self.eof = true;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(Ok(())) => {
                        let data = rb.filled();
                        *moved = true;
                        if let Some(f) = frames.as_deref_mut() {
                            f.advance(data);
                        }
                        // Write straight from the scratch buffer; keep a copy only of what the
                        // writer cannot take now.
                        let written = match Pin::new(&mut *to).poll_write(cx, data) {
                            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                                return Poll::Ready(Err(Fault::Writer))
                            }
                            Poll::Ready(Ok(n)) => n,
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
                Poll::Ready(Err(fault)) => return Poll::Ready(Err(fault)),
                Poll::Pending => {
                    // Nothing more to read for now: push out what the writer may be holding.
                    if self.unflushed {
                        ready!(Pin::new(&mut *to).poll_flush(cx)).map_err(|_| Fault::Writer)?;
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
    use crate::proxy::frames::tests::{closing, frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_cross_both_ways_and_the_first_to_close_is_named() {
        let (client, proxy_a) = tokio::io::duplex(64);
        let (proxy_b, backend) = tokio::io::duplex(64);
        let pumping = tokio::spawn(pump(
            proxy_a,
            proxy_b,
            Duration::from_secs(30),
            std::future::pending(),
        ));
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
        let mut bye = frame(0x1, b"bye");
        bye.extend(closing(1000));
        bw.write_all(&bye).await.expect("write back");
        bw.shutdown().await.expect("shutdown");
        let mut back = Vec::new();
        cr.read_to_end(&mut back).await.expect("read back");
        assert_eq!(
            back, bye,
            "the backend's own close frame, and nothing added"
        );
        assert_eq!(pumping.await.expect("join").end, End::Client);
    }

    /// A backend that ends between frames without a close frame: its client gets 1014.
    #[tokio::test]
    async fn a_backend_that_ends_without_closing_gets_its_client_a_1014() {
        let (mut client, proxy_a) = tokio::io::duplex(1024);
        let (proxy_b, mut backend) = tokio::io::duplex(1024);
        let pumping = tokio::spawn(pump(
            proxy_a,
            proxy_b,
            Duration::from_secs(30),
            std::future::pending(),
        ));
        let hello = frame(0x1, b"hello");
        backend.write_all(&hello).await.expect("write");
        drop(backend);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        let mut want = hello;
        want.extend(closing(close::BAD_GATEWAY));
        assert_eq!(got, want);
        drop(client);
        let closed = pumping.await.expect("join");
        assert_eq!(closed.end, End::Backend);
        assert_eq!(closed.code, Some(close::BAD_GATEWAY));
    }

    /// rtcgate cuts an idle tunnel: the close frame goes out at once, then the connection
    /// closes.
    #[tokio::test]
    async fn a_cut_sends_its_close_frame_and_closes() {
        let (mut client, proxy_a) = tokio::io::duplex(1024);
        let (proxy_b, _backend) = tokio::io::duplex(1024);
        let (fire, fired) = tokio::sync::oneshot::channel::<()>();
        let cut = async move {
            let _ = fired.await;
            close::SERVICE_RESTART
        };
        let pumping = tokio::spawn(pump(proxy_a, proxy_b, Duration::from_secs(30), cut));
        let _ = fire.send(());
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, closing(close::SERVICE_RESTART));
        assert_eq!(pumping.await.expect("join").end, End::Cut);
    }

    /// A cut while a large frame is on its way: the frame arrives whole, then the close frame;
    /// nothing the backend sends after that frame reaches the client.
    #[tokio::test]
    async fn a_cut_waits_for_the_frame_in_flight() {
        let (mut client, proxy_a) = tokio::io::duplex(1 << 20);
        let (proxy_b, mut backend) = tokio::io::duplex(1 << 20);
        let (fire, fired) = tokio::sync::oneshot::channel::<()>();
        let cut = async move {
            let _ = fired.await;
            close::GOING_AWAY
        };
        let pumping = tokio::spawn(pump(proxy_a, proxy_b, Duration::from_secs(30), cut));
        let big = frame(0x2, &vec![5u8; 100_000]);
        let (first, rest) = big.split_at(40_000);
        backend.write_all(first).await.expect("first half");
        let mut got = vec![0u8; first.len()];
        client
            .read_exact(&mut got)
            .await
            .expect("first half through");
        let _ = fire.send(());
        tokio::task::yield_now().await;
        backend.write_all(rest).await.expect("second half");
        backend
            .write_all(&frame(0x1, b"after the cut"))
            .await
            .expect("next frame");
        let mut tail = Vec::new();
        client.read_to_end(&mut tail).await.expect("read");
        got.extend(tail);
        let mut want = big.clone();
        want.extend(closing(close::GOING_AWAY));
        assert_eq!(got.len(), want.len());
        assert!(
            got == want,
            "the frame, then the close frame, and nothing else"
        );
        assert_eq!(pumping.await.expect("join").end, End::Cut);
    }

    /// A backend that hangs inside a frame does not hold the cut: after CUT_WAIT the
    /// connection closes without a close frame (one cannot go inside a frame).
    #[tokio::test(start_paused = true)]
    async fn a_cut_does_not_wait_for_a_frame_that_never_ends() {
        let (mut client, proxy_a) = tokio::io::duplex(1024);
        let (proxy_b, mut backend) = tokio::io::duplex(1024);
        let (fire, fired) = tokio::sync::oneshot::channel::<()>();
        let cut = async move {
            let _ = fired.await;
            close::SERVICE_RESTART
        };
        let pumping = tokio::spawn(pump(proxy_a, proxy_b, Duration::from_secs(30), cut));
        backend
            .write_all(&frame(0x2, &[1u8; 500])[..100])
            .await
            .expect("part of a frame");
        let mut got = vec![0u8; 100];
        client.read_exact(&mut got).await.expect("the part");
        let _ = fire.send(());
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("read");
        assert!(rest.is_empty(), "no close frame inside the frame: {rest:?}");
        assert_eq!(pumping.await.expect("join").end, End::Cut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_ends_after_the_idle_timeout() {
        let (_client, a) = tokio::io::duplex(64);
        let (b, _backend) = tokio::io::duplex(64);
        let end = pump(a, b, Duration::from_secs(5), std::future::pending()).await;
        assert_eq!(
            end,
            Closed {
                end: End::Idle,
                code: None
            }
        );
    }
}

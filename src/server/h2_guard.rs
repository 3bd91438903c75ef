//! The HTTP/2 control-frame flood guard: a client connection's byte stream, read and written
//! through a tracker of HTTP/2 frame headers (RFC 9113 §4.1; payloads are skipped by count).
//!
//! hyper's HTTP/2 (the h2 crate) answers every PING and SETTINGS frame, and takes PRIORITY,
//! RST_STREAM, WINDOW_UPDATE, empty DATA and unknown frames without limit: one connection could
//! send millions a second and hold most of a core (CVE-2019-9512, -9515, -9518). The guard counts
//! those frames against a budget of `[limits] h2_control_frames_per_second`, raised by one for
//! each DATA frame and each PING or SETTINGS (not an ACK) rtcgate sent, since a client's
//! WINDOW_UPDATE or ACK answers one of those. Past the budget, the connection gets a GOAWAY with ENHANCE_YOUR_CALM, put between two
//! of the frames hyper writes, and is closed.
//!
//! The clock is read once per budget's worth of frames, not per frame. The guard costs about 90
//! bytes a connection, and an HTTP/1.1 connection one branch per read and write after its first
//! bytes.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a client sends before its first HTTP/2 frame.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The window over which the budget applies.
const WINDOW: Duration = Duration::from_secs(1);

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// How a connection's first bytes are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// ALPN chose HTTP/2: the client's preface comes first, then frames.
    H2,
    /// The protocol is told by the first bytes: HTTP/2 if they are the preface.
    Sniff,
}

/// Where one direction of an HTTP/2 byte stream stands among frames.
#[derive(Debug, Default)]
struct Frames {
    /// Header bytes of the frame being read.
    header: [u8; 9],
    seen: u8,
    /// Bytes of the current frame's payload (or of the preface) still to come.
    payload: u32,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.seen == 0 && self.payload == 0
    }

    /// Takes in bytes, calling `each` with every whole frame header, in order.
    fn advance(&mut self, mut data: &[u8], mut each: impl FnMut(&[u8; 9])) {
        while !data.is_empty() {
            if self.payload > 0 {
                let n = (self.payload as usize).min(data.len());
                self.payload -= n as u32;
                data = &data[n..];
                continue;
            }
            let seen = usize::from(self.seen);
            let n = (9 - seen).min(data.len());
            self.header[seen..seen + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            if seen + n < 9 {
                self.seen = (seen + n) as u8;
                continue;
            }
            self.seen = 0;
            let h = self.header;
            self.payload = u32::from_be_bytes([0, h[0], h[1], h[2]]);
            each(&h);
        }
    }
}

/// The budget of frames that do no work.
#[derive(Debug)]
struct Budget {
    per_window: i64,
    left: i64,
    /// When the current window began.
    since: Option<Instant>,
    /// The highest stream a client opened, for the GOAWAY.
    last_stream: u32,
}

impl Budget {
    /// Counts one frame the client sent; false when the budget is spent.
    fn inbound(&mut self, h: &[u8; 9]) -> bool {
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        let (kind, flags) = (h[3], h[4]);
        let costs = match kind {
            HEADERS => {
                let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                self.last_stream = self.last_stream.max(id);
                false
            }
            // An empty DATA frame that does not end its stream moves nothing.
            DATA => len == 0 && flags & END_STREAM == 0,
            // h2 bounds these itself (a GOAWAY ends the connection, CONTINUATION floods are
            // refused by the header list limit).
            GOAWAY | CONTINUATION => false,
            // PRIORITY, RST_STREAM, SETTINGS, PING, WINDOW_UPDATE, PUSH_PROMISE and unknown
            // types.
            _ => true,
        };
        if !costs {
            return true;
        }
        self.left -= 1;
        if self.left > 0 {
            return true;
        }
        let now = Instant::now();
        if self
            .since
            .is_some_and(|since| now.duration_since(since) < WINDOW)
        {
            return false;
        }
        self.since = Some(now);
        self.left = self.per_window;
        true
    }

    /// Counts one frame rtcgate sent: those a client answers (with a WINDOW_UPDATE, an ACK)
    /// raise the budget. rtcgate's own ACKs do not.
    fn outbound(&mut self, h: &[u8; 9]) {
        let answered = match h[3] {
            DATA => true,
            PING | SETTINGS => h[4] & ACK == 0,
            _ => false,
        };
        if answered {
            self.left = self.left.saturating_add(1);
        }
    }
}

/// The guard's state.
#[derive(Debug)]
enum Mode {
    /// Not HTTP/2 (or no limit): bytes pass untouched.
    Off,
    /// Matching the first bytes against the preface; this many matched so far.
    Sniff(u8),
    On,
    /// The budget was spent: the GOAWAY goes out (this many of its bytes written), then the
    /// connection ends.
    Calming(u8),
    Done,
}

pin_project_lite::pin_project! {
    /// A client stream under the flood guard.
    pub struct Guarded<I> {
        #[pin]
        inner: I,
        mode: Mode,
        inbound: Frames,
        outbound: Frames,
        budget: Budget,
        floods: Option<IntCounter>,
    }
}

impl<I> Guarded<I> {
    /// `per_second` 0 means no limit. `floods` counts the connections calmed.
    pub fn new(inner: I, start: Start, per_second: u32, floods: &IntCounter) -> Guarded<I> {
        let mut inbound = Frames::default();
        // The window starts when HTTP/2 does: a sniffed connection reads the clock only if it
        // turns out to be HTTP/2.
        let since = (start == Start::H2).then(Instant::now);
        let mode = match (per_second, start) {
            (0, _) => Mode::Off,
            (_, Start::H2) => {
                inbound.payload = PREFACE.len() as u32;
                Mode::On
            }
            (_, Start::Sniff) => Mode::Sniff(0),
        };
        let per_window = i64::from(per_second);
        Guarded {
            inner,
            mode,
            inbound,
            outbound: Frames::default(),
            budget: Budget {
                per_window,
                left: per_window,
                since,
                last_stream: 0,
            },
            floods: Some(floods.clone()),
        }
    }
}

fn flood() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "HTTP/2 control-frame flood: GOAWAY (ENHANCE_YOUR_CALM) sent",
    )
}

impl<I: AsyncRead + AsyncWrite> Guarded<I> {
    /// Writes the GOAWAY between two frames, flushes it and shuts the write side; then the
    /// connection ends with an error. If a frame of hyper's is half written (a client that does
    /// not read, so would not hear the GOAWAY anyway), it ends at once.
    fn poll_calm(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        loop {
            match *this.mode {
                Mode::Calming(sent) => {
                    let sent = usize::from(sent);
                    if sent == 0 && !this.outbound.at_boundary() {
                        *this.mode = Mode::Done;
                        continue;
                    }
                    let mut goaway = [0u8; 17];
                    goaway[..9].copy_from_slice(&[0, 0, 8, GOAWAY, 0, 0, 0, 0, 0]);
                    goaway[9..13].copy_from_slice(&this.budget.last_stream.to_be_bytes());
                    goaway[13..].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
                    if sent < goaway.len() {
                        let n = ready!(this.inner.as_mut().poll_write(cx, &goaway[sent..]))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        *this.mode = Mode::Calming((sent + n) as u8);
                        continue;
                    }
                    ready!(this.inner.as_mut().poll_flush(cx))?;
                    // The client hears the close (TLS close_notify, FIN); an error here changes
                    // nothing.
                    let _ = ready!(this.inner.as_mut().poll_shutdown(cx));
                    *this.mode = Mode::Done;
                }
                Mode::Done => return Poll::Ready(Err(flood())),
                _ => return Poll::Ready(Ok(())),
            }
        }
    }

    fn calming(&self) -> bool {
        matches!(self.mode, Mode::Calming(_) | Mode::Done)
    }
}

impl<I: AsyncRead + AsyncWrite> AsyncRead for Guarded<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.calming() {
            return self.poll_calm(cx);
        }
        let this = self.as_mut().project();
        let before = buf.filled().len();
        ready!(this.inner.poll_read(cx, buf))?;
        let mut new = &buf.filled()[before..];
        if let Mode::Sniff(matched) = *this.mode {
            let m = usize::from(matched);
            let n = (PREFACE.len() - m).min(new.len());
            *this.mode = if new[..n] != PREFACE[m..m + n] {
                Mode::Off
            } else if m + n < PREFACE.len() {
                Mode::Sniff((m + n) as u8)
            } else {
                this.budget.since = Some(Instant::now());
                Mode::On
            };
            new = &new[n..];
        }
        if !matches!(this.mode, Mode::On) {
            return Poll::Ready(Ok(()));
        }
        let budget: &mut Budget = this.budget;
        let mut spent = false;
        this.inbound.advance(new, |h| {
            if !spent && !budget.inbound(h) {
                spent = true;
            }
        });
        if !spent {
            return Poll::Ready(Ok(()));
        }
        tracing::debug!(
            "HTTP/2 control-frame flood: GOAWAY (ENHANCE_YOUR_CALM), connection closed"
        );
        if let Some(floods) = this.floods.take() {
            floods.inc();
        }
        *this.mode = Mode::Calming(0);
        // What was read with the flood is not handed on.
        buf.set_filled(before);
        self.poll_calm(cx)
    }
}

impl<I: AsyncRead + AsyncWrite> AsyncWrite for Guarded<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.calming() {
            ready!(self.as_mut().poll_calm(cx))?;
            return Poll::Ready(Err(flood()));
        }
        let this = self.project();
        match this.mode {
            Mode::On => {
                let n = ready!(this.inner.poll_write(cx, buf))?;
                let budget: &mut Budget = this.budget;
                this.outbound.advance(&buf[..n], |h| budget.outbound(h));
                Poll::Ready(Ok(n))
            }
            Mode::Sniff(_) => {
                // An HTTP/1.1 answer (to a head that is not the preface) ends the sniffing.
                *this.mode = Mode::Off;
                this.inner.poll_write(cx, buf)
            }
            _ => this.inner.poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !matches!(self.mode, Mode::Off) {
            // Frames are tracked over one buffer at a time.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return self.poll_write(cx, first);
        }
        self.project().inner.poll_write_vectored(cx, bufs)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frame_headers_are_found_in_any_split() {
        let mut stream = frame(SETTINGS, 0, 0, &[0; 6]);
        stream.extend(frame(HEADERS, 0x4, 1, &[0x82; 20]));
        stream.extend(frame(DATA, 0, 1, &vec![7; 70_000]));
        stream.extend(frame(PING, 0, 0, &[1; 8]));
        for chunk in [1, 2, 5, 9, 10, 4096, stream.len()] {
            let mut f = Frames::default();
            let mut kinds = Vec::new();
            for piece in stream.chunks(chunk) {
                f.advance(piece, |h| kinds.push(h[3]));
            }
            assert_eq!(
                kinds,
                [SETTINGS, HEADERS, DATA, PING],
                "{chunk}-byte pieces"
            );
            assert!(f.at_boundary());
        }
        let mut f = Frames::default();
        f.advance(&stream[..3], |_| {});
        assert!(!f.at_boundary(), "inside the first header");
        f.advance(&stream[3..12], |_| {});
        assert!(!f.at_boundary(), "inside the SETTINGS payload");
    }

    proptest::proptest! {
        /// However the stream is cut into reads, the tracker sees every frame header, in order,
        /// and ends at a boundary.
        #[test]
        fn every_frame_header_is_seen_however_the_stream_is_cut(
            frames in proptest::collection::vec(
                (0u8..12, proptest::prelude::any::<u8>(), 0usize..40_000),
                0..20,
            ),
            cuts in proptest::collection::vec(1usize..20_000, 1..50),
        ) {
            let mut stream = Vec::new();
            for (kind, flags, len) in &frames {
                stream.extend(frame(*kind, *flags, 1, &vec![0xa5; *len]));
            }
            let mut f = Frames::default();
            let mut seen = Vec::new();
            let mut rest = &stream[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (piece, after) = rest.split_at((*cut).min(rest.len()));
                f.advance(piece, |h| seen.push((h[3], h[4])));
                rest = after;
            }
            let want: Vec<(u8, u8)> = frames.iter().map(|(k, fl, _)| (*k, *fl)).collect();
            proptest::prop_assert_eq!(seen, want);
            proptest::prop_assert!(f.at_boundary());
        }
    }

    #[test]
    fn the_budget_counts_control_frames_and_is_raised_by_what_rtcgate_sent() {
        let mut b = Budget {
            per_window: 3,
            left: 3,
            since: Some(Instant::now()),
            last_stream: 0,
        };
        let ping = frame(PING, 0, 0, &[0; 8]);
        let h = |f: &[u8]| -> [u8; 9] { f[..9].try_into().unwrap_or([0; 9]) };
        // Requests, data and the end of a stream cost nothing.
        assert!(b.inbound(&h(&frame(HEADERS, 0x4, 7, &[0; 3]))));
        assert!(b.inbound(&h(&frame(DATA, 0, 7, &[0; 10]))));
        assert!(b.inbound(&h(&frame(DATA, END_STREAM, 7, &[]))));
        assert_eq!(b.last_stream, 7);
        assert!(b.inbound(&h(&ping)));
        assert!(b.inbound(&h(&frame(DATA, 0, 7, &[]))), "empty DATA costs");
        // A DATA frame sent earns a WINDOW_UPDATE; a PING ACK sent earns nothing.
        b.outbound(&h(&frame(DATA, 0, 7, &[0; 100])));
        b.outbound(&h(&frame(PING, ACK, 0, &[0; 8])));
        assert!(b.inbound(&h(&frame(0x8, 0, 7, &[0; 4]))));
        assert!(
            !b.inbound(&h(&ping)),
            "the budget is spent within the second"
        );
    }
}

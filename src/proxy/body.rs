//! The response body of a proxied request, and what it holds until it ends: its backend
//! connection (given back to the pool once read to the end), its count in the backend's
//! in-flight requests, and its count in the connection's response bodies being sent.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::proxy::access::AccessLine;
use crate::proxy::conn::Responding;
use crate::proxy::upstream::Lease;
use crate::state::backend::InFlight;

/// Body sent to clients: a backend's, or a short one written by rtcgate.
pub type ResponseBody = Either<Tracked, Full<Bytes>>;

/// A backend's response body, counting as in flight on its backend until it ends or drops, and
/// giving its backend connection back to the pool once read to the end.
pub struct Tracked {
    inner: Incoming,
    lease: Option<Lease>,
    ended: bool,
    _inflight: Option<InFlight>,
    /// Counts the body's bytes in what the connection holds for its client.
    responding: Responding,
    /// The access log's line, written when the body ends or drops, with the bytes sent.
    access: Option<Box<AccessLine>>,
    sent: u64,
}

impl Tracked {
    /// `inner` until it ends; `lease` is given back then, if there is one.
    pub(super) fn new(
        inner: Incoming,
        lease: Option<Lease>,
        inflight: Option<InFlight>,
        responding: Responding,
    ) -> Tracked {
        Tracked {
            inner,
            lease,
            ended: false,
            _inflight: inflight,
            responding,
            access: None,
            sent: 0,
        }
    }

    /// Writes `line` to the access log when the body has gone out (or the client left).
    pub fn log_at_end(&mut self, line: Box<AccessLine>) {
        self.access = Some(line);
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len();
                    self.responding.handed(n);
                    self.sent += n as u64;
                }
            }
            Poll::Ready(None) => self.ended = true,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(line) = self.access.take() {
            line.write(self.sent, self.ended || self.inner.is_end_stream());
        }
        // A body read to its end leaves the connection clean for the next request; one dropped
        // early (the client left) does not, and its connection closes with the lease.
        if self.ended || self.inner.is_end_stream() {
            if let Some(lease) = self.lease.take() {
                lease.release();
            }
        }
    }
}

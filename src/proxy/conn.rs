//! One client connection as the request path sees it: who the client is, the forwarding header
//! parts rendered once per connection, and the counters the connection's watchdog reads (requests
//! and tunnels in progress, response bodies being sent). The guards here ([`Active`],
//! [`Responding`], [`TimerLease`]) keep those exact however a request ends.
//!
//! The connection itself (accept, TLS, the hyper connection and its watchdog) is
//! `server::connection`'s; it builds a [`ConnInfo`] with what it [`Held`]s for the connection's
//! life.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use http::header::HeaderValue;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

use crate::metrics::GaugeGuard;
use crate::state::buffers::{Queued, Weighed};

/// What a connection holds for its whole life, tunnels included. (Unit tests leave it empty.)
#[derive(Debug, Default)]
pub struct Held {
    /// Its slot under `max_connections`.
    pub slot: Option<OwnedSemaphorePermit>,
    /// Its count in `rtcgate_client_connections`.
    pub open: Option<GaugeGuard>,
    /// Its count in its worker's `rtcgate_worker_connections`, which the accept loops balance on.
    pub worker: Option<GaugeGuard>,
}

/// What the connection knows about the client, handed to every request on it. The forwarding
/// header parts that depend only on the connection are rendered once, here.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The client is a trusted forwarder: its `X-Forwarded-For`/`Forwarded` are kept.
    pub(super) trusted: bool,
    /// The client's IP as an `X-Forwarded-For` item.
    pub(super) xff_item: HeaderValue,
    /// `for=…;proto=…`: this hop's `Forwarded` element without the host.
    pub(super) forwarded_for: String,
    /// The whole `Forwarded` element for the first host asked for on this connection, which is
    /// nearly always the host of every request on it: (host, element).
    pub(super) forwarded: OnceLock<(HeaderValue, HeaderValue)>,
    /// Released when the connection and every tunnel it became are done.
    _held: Held,
    /// Requests being handled and tunnels open on this connection: while any is, the
    /// connection is not idle, however quiet its socket.
    active: AtomicU32,
    /// Requests (and tunnels) begun on this connection so far.
    started: AtomicU32,
    /// Whether the connection speaks HTTP/2 (seen on its first request).
    h2: AtomicBool,
    /// Backend response bodies being sent on this connection.
    responding: AtomicU32,
    /// The response timer of this connection's requests, lent to one at a time (see
    /// [`TimerLease`]).
    response_timer: Mutex<Option<Pin<Box<Sleep>>>>,
    /// Reads and writes of the client's socket so far (its watchdog tells idleness by it).
    activity: AtomicU32,
    /// What rtcgate holds for the client (`[limits] buffer_budget`).
    queued: Queued,
}

impl Weighed for ConnInfo {
    fn queued(&self) -> &Queued {
        &self.queued
    }
}

impl ConnInfo {
    /// Whether a request or tunnel is in progress on this connection.
    pub fn busy(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// Counts a read or write of the client's socket.
    pub fn moved(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads and writes of the client's socket so far.
    pub fn activity(&self) -> u32 {
        self.activity.load(Ordering::Relaxed)
    }

    /// How many requests and tunnels have begun on this connection.
    pub fn started(&self) -> u32 {
        self.started.load(Ordering::Relaxed)
    }

    /// Whether a backend's response body is still being sent on this connection.
    pub fn responding(&self) -> bool {
        self.responding.load(Ordering::Relaxed) > 0
    }

    pub(super) fn respond(self: &Arc<Self>) -> Responding {
        self.responding.fetch_add(1, Ordering::Relaxed);
        Responding(self.clone())
    }

    /// Whether this is an HTTP/2 connection (known once it has carried a request).
    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Notes that the connection speaks HTTP/2.
    pub(super) fn saw_h2(&self) {
        if !self.is_h2() {
            self.h2.store(true, Ordering::Relaxed);
        }
    }

    /// A timer that fires at `deadline`: the connection's own when no other request holds it.
    pub(super) fn response_timer(&self, deadline: tokio::time::Instant) -> TimerLease<'_> {
        let kept = self
            .response_timer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let sleep = match kept {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        TimerLease {
            slot: &self.response_timer,
            sleep: Some(sleep),
        }
    }

    pub(super) fn enter(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        Active(self.clone())
    }
}

/// A request's response timer, given back to its connection when the request is done.
///
/// A new timer per request is registered in the runtime's timer wheel on its first poll and
/// taken out again when dropped: ~400 instructions per proxied request of ~29k. The
/// connection's timer stays registered between requests, and moving a registered timer to a
/// later deadline is an atomic store; the wheel sees the new deadline when the old one comes.
/// (HTTP/2 requests that run at the same time as another get a timer of their own.)
pub(super) struct TimerLease<'a> {
    slot: &'a Mutex<Option<Pin<Box<Sleep>>>>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl TimerLease<'_> {
    /// Polls the timer: ready once it fired.
    pub(super) fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx),
            // Only `discard` and `drop` take the timer, and neither polls after.
            None => Poll::Pending,
        }
    }

    /// Drops the timer instead of giving it back: for a request that became a tunnel, whose
    /// connection (HTTP/1.1) carries no more requests.
    pub(super) fn discard(mut self) {
        self.sleep = None;
    }
}

impl Drop for TimerLease<'_> {
    fn drop(&mut self) {
        if let Some(sleep) = self.sleep.take() {
            *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(sleep);
        }
    }
}

/// One request or tunnel in progress on a connection.
pub(super) struct Active(Arc<ConnInfo>);

impl Active {
    /// The client's address.
    pub(super) fn peer(&self) -> SocketAddr {
        self.0.peer
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A backend's response body on its way to the client.
pub(super) struct Responding(Arc<ConnInfo>);

impl Responding {
    /// `n` body bytes were handed to hyper for the client.
    pub(super) fn handed(&self, n: usize) {
        self.0.queued.handed(n);
    }
}

impl Drop for Responding {
    fn drop(&mut self) {
        self.0.responding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool, held: Held) -> Arc<ConnInfo> {
        ConnInfo::trusting(peer, tls, false, held)
    }

    /// A connection from `peer`, whose forwarding headers are kept when `trusted`.
    pub fn trusting(peer: SocketAddr, tls: bool, trusted: bool, held: Held) -> Arc<ConnInfo> {
        // Built once per connection, without `format!`: an `Ipv4Addr`'s `Display` went through
        // the formatter's padding path, 2,500 instructions a connection (callgrind).
        let ip = ip_text(peer.ip());
        let proto = if tls { "https" } else { "http" };
        let mut forwarded_for = String::with_capacity(ip.len() + 20);
        forwarded_for.push_str("for=");
        match peer {
            SocketAddr::V4(_) => forwarded_for.push_str(&ip),
            SocketAddr::V6(_) => {
                forwarded_for.push_str("\"[");
                forwarded_for.push_str(&ip);
                forwarded_for.push_str("]\"");
            }
        }
        forwarded_for.push_str(";proto=");
        forwarded_for.push_str(proto);
        Arc::new(ConnInfo {
            peer,
            tls,
            trusted,
            xff_item: HeaderValue::try_from(ip).unwrap_or(HeaderValue::from_static("unknown")),
            forwarded_for,
            forwarded: OnceLock::new(),
            _held: held,
            active: AtomicU32::new(0),
            started: AtomicU32::new(0),
            h2: AtomicBool::new(false),
            responding: AtomicU32::new(0),
            response_timer: Mutex::new(None),
            activity: AtomicU32::new(0),
            queued: Queued::default(),
        })
    }
}

/// An address as X-Forwarded-For and Forwarded write it: dotted decimal, or RFC 5952 text.
fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                text.push_str(itoa::Buffer::new().format(octet));
            }
            text
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_std_displays_them() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "127.0.0.1",
            "192.168.100.255",
            "255.255.255.255",
        ] {
            let v4: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(v4), v4.to_string());
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ip_text(v6), "2001:db8::1");
        let peer: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let info = ConnInfo::new(peer, true, Held::default());
        assert_eq!(info.forwarded_for, "for=\"[2001:db8::1]\";proto=https");
        assert_eq!(info.xff_item, "2001:db8::1");
        let info = ConnInfo::new("10.1.2.3:80".parse().unwrap(), false, Held::default());
        assert_eq!(info.forwarded_for, "for=10.1.2.3;proto=http");
        assert_eq!(info.xff_item, "10.1.2.3");
    }
}

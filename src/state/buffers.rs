//! What client connections make rtcgate hold for them, and the process-wide budget over it
//! (`[limits] buffer_budget`).
//!
//! A connection's queued bytes are the response body bytes handed to hyper for it, less the
//! bytes its socket took (never below zero: response heads and framing go out without being
//! counted in). A client that reads keeps it near zero; one that does not read lets it grow to
//! what hyper may buffer (32 KiB a stream on HTTP/2, see `settings::http`). A connection's
//! watchdog lists it here once it holds [`HEAVY`]; each second the drain ticker sums the listed
//! connections and, past the budget, marks the heaviest to be cut until the rest fit. Their
//! watchdogs close them at its next tick.
//!
//! The counting is an atomic add per body chunk and a compare-and-swap per socket write, on the
//! connection's own counter; nothing shared is touched until a connection is heavy.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// What a connection must hold to be counted against the budget.
pub const HEAVY: u64 = 128 * 1024;

/// One connection's queued bytes.
#[derive(Debug, Default)]
pub struct Queued {
    bytes: AtomicU64,
    listed: AtomicBool,
    cut: AtomicBool,
}

impl Queued {
    /// `n` body bytes were handed to hyper for the client.
    pub fn handed(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The client's socket took `n` bytes.
    pub fn written(&self, n: usize) {
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                (q > 0).then(|| q.saturating_sub(n as u64))
            });
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The budget wants this connection closed.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }
}

/// A client connection, as the budget sees it.
pub trait Weighed: Send + Sync {
    fn queued(&self) -> &Queued;
}

/// What one enforcement round found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Enforced {
    /// Bytes the heavy connections hold, those cut this round included.
    pub held: u64,
    /// Connections marked to be cut this round, and the bytes they hold.
    pub cut: usize,
    pub cut_bytes: u64,
}

/// The heavy connections.
#[derive(Default)]
pub struct Buffers {
    heavy: Mutex<Vec<Weak<dyn Weighed>>>,
}

impl std::fmt::Debug for Buffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffers").finish_non_exhaustive()
    }
}

impl Buffers {
    /// Lists `conn` if it holds [`HEAVY`] or more and is not listed yet.
    pub fn watch<C: Weighed + 'static>(&self, conn: &Arc<C>) {
        let q = conn.queued();
        if q.bytes() >= HEAVY && !q.listed.swap(true, Ordering::Relaxed) {
            let weak: Weak<dyn Weighed> = Arc::downgrade(conn) as Weak<dyn Weighed>;
            self.heavy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(weak);
        }
    }

    /// Marks the heaviest listed connections to be cut while the others hold more than
    /// `budget` (0: no budget). Connections gone or back under half of [`HEAVY`] leave the list.
    pub fn enforce(&self, budget: u64) -> Enforced {
        let mut live = Vec::new();
        self.heavy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|weak| {
                let Some(conn) = weak.upgrade() else {
                    return false;
                };
                let q = conn.queued();
                let bytes = q.bytes();
                if bytes < HEAVY / 2 && !q.is_cut() {
                    q.listed.store(false, Ordering::Relaxed);
                    return false;
                }
                live.push((bytes, conn));
                true
            });
        let mut round = Enforced {
            held: live.iter().map(|(b, _)| b).sum(),
            ..Enforced::default()
        };
        // Connections cut earlier are on their way out: what they hold is not the others'.
        let mut staying: u64 = live
            .iter()
            .filter(|(_, c)| !c.queued().is_cut())
            .map(|(b, _)| b)
            .sum();
        if budget == 0 || staying <= budget {
            return round;
        }
        live.sort_unstable_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        for (bytes, conn) in live {
            if staying <= budget {
                break;
            }
            if !conn.queued().cut.swap(true, Ordering::Relaxed) {
                staying -= bytes;
                round.cut += 1;
                round.cut_bytes += bytes;
            }
        }
        round
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Conn(Queued);

    impl Weighed for Conn {
        fn queued(&self) -> &Queued {
            &self.0
        }
    }

    fn conn(bytes: u64) -> Arc<Conn> {
        let c = Arc::new(Conn(Queued::default()));
        c.0.handed(bytes as usize);
        c
    }

    #[test]
    fn writes_take_queued_bytes_down_to_zero_and_no_further() {
        let q = Queued::default();
        q.written(300);
        q.handed(1000);
        q.written(400);
        assert_eq!(q.bytes(), 600);
        q.written(5000);
        assert_eq!(
            q.bytes(),
            0,
            "a response head written after its body: not negative"
        );
        q.handed(10);
        assert_eq!(q.bytes(), 10);
    }

    #[test]
    fn the_heaviest_connections_are_cut_until_the_rest_fit() {
        let b = Buffers::default();
        let (light, small, big, bigger) =
            (conn(1000), conn(HEAVY), conn(4 * HEAVY), conn(8 * HEAVY));
        for c in [&light, &small, &big, &bigger] {
            b.watch(c);
        }
        assert_eq!(b.enforce(0).cut, 0, "no budget");
        let round = b.enforce(6 * HEAVY);
        assert_eq!(
            (round.held, round.cut, round.cut_bytes),
            (13 * HEAVY, 1, 8 * HEAVY)
        );
        assert!(bigger.0.is_cut() && !big.0.is_cut() && !small.0.is_cut() && !light.0.is_cut());
        // The cut one is leaving: the next round does not cut another for it.
        assert_eq!(b.enforce(6 * HEAVY).cut, 0);
        drop(bigger);
        let round = b.enforce(2 * HEAVY);
        assert_eq!((round.held, round.cut), (5 * HEAVY, 1));
        assert!(big.0.is_cut() && !small.0.is_cut());
        // A connection that drained leaves the list, and comes back when heavy again.
        small.0.written(HEAVY as usize);
        assert_eq!(b.enforce(1).held, 4 * HEAVY);
        small.0.handed(HEAVY as usize);
        b.watch(&small);
        assert_eq!(b.enforce(u64::MAX).held, 5 * HEAVY);
    }
}

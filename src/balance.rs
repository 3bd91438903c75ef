//! Placement over a snapshot's pool: which backend a new user goes to. No I/O, no clocks.
//!
//! Least load per weight among eligible backends, with a rotating start so that idle backends
//! share new clients instead of the first one taking them all. Sticky pins and rooms build on
//! [`eligible`] and this module's rejection reasons.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::pool::AdminState;
use crate::snapshot::Member;

/// Why no backend could take a new user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Backends are up, but every one is at its `max_sessions`.
    Full,
    /// No backend is up and enabled.
    NoBackend,
}

impl Rejection {
    /// The `reason` label of `rtcgate_rejected_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Full => "full",
            Rejection::NoBackend => "no_backend",
        }
    }
}

/// Whether `m` can take a new pin: up, enabled and below its session cap.
pub fn eligible(m: &Member) -> bool {
    let b = &m.backend;
    b.is_up() && b.admin() == AdminState::Enabled && b.sessions() < m.max_sessions
}

/// The eligible member with the least load per weight; ties go to the first at or after a
/// rotating start.
pub fn least_loaded<'a>(
    members: &'a [Member],
    rotor: &AtomicUsize,
) -> Result<&'a Member, Rejection> {
    let n = members.len();
    if n == 0 {
        return Err(Rejection::NoBackend);
    }
    let start = rotor.fetch_add(1, Ordering::Relaxed) % n;
    let mut best: Option<(&Member, u64)> = None;
    let mut any_serving = false;
    for i in 0..n {
        let m = &members[(start + i) % n];
        let b = &m.backend;
        if b.is_up() && b.admin() == AdminState::Enabled {
            any_serving = true;
        }
        if !eligible(m) {
            continue;
        }
        let load = u64::from(b.load());
        // Compare load/weight as load * other_weight to stay in integers.
        let better = match best {
            None => true,
            Some((bm, bl)) => load * u64::from(bm.weight) < bl * u64::from(m.weight),
        };
        if better {
            best = Some((m, load));
        }
    }
    match best {
        Some((m, _)) => Ok(m),
        None if any_serving => Err(Rejection::Full),
        None => Err(Rejection::NoBackend),
    }
}

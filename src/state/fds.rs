//! A reserve of file descriptors for rtcgate's own work: health checks and the admin listener.
//!
//! When clients take every descriptor the process may open, an accept, a backend connect and a
//! health check's connect all fail with EMFILE. A health check that fails for rtcgate's lack of
//! descriptors says nothing about the backend, and an operator must still reach the admin API
//! to see why. So a few descriptors are held open from the start (`/dev/null`); a health check
//! or an admin accept that meets EMFILE gives one back and tries again, and the workers accept
//! no client while the reserve is short, so they cannot take the freed descriptor first. The
//! reserve refills as soon as descriptors are free. An episode of exhaustion is logged once
//! when it starts and once when it ends, however many calls fail in between.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Descriptors held back: one health check per backend runs at a time, and checks are spread
/// over their interval.
const SPARES: usize = 16;

pub struct FdReserve {
    spares: Mutex<Vec<File>>,
    /// Whether fewer than [`SPARES`] are held: the workers pause their accepts meanwhile.
    short: AtomicBool,
    /// When the episode of exhaustion under way began and when a call last met EMFILE in it.
    episode: Mutex<Option<(Instant, Instant)>>,
    /// Calls that met EMFILE in the episode under way.
    refused: AtomicU64,
}

/// The process's reserve, opened on first use: call it at start, while descriptors are free.
pub fn reserve() -> &'static FdReserve {
    static RESERVE: OnceLock<FdReserve> = OnceLock::new();
    RESERVE.get_or_init(|| {
        let r = FdReserve {
            spares: Mutex::new(Vec::with_capacity(SPARES)),
            short: AtomicBool::new(true),
            episode: Mutex::new(None),
            refused: AtomicU64::new(0),
        };
        r.refill();
        r
    })
}

/// Whether `e` is the process (or the system) being out of file descriptors.
pub fn out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 /* ENFILE */ | 24 /* EMFILE */))
}

impl FdReserve {
    /// Whether the reserve is short: new client connections wait until it is full again.
    pub fn short(&self) -> bool {
        self.short.load(Ordering::Relaxed)
    }

    /// Gives one held descriptor back, for a retry of what `e` failed; false when none is held.
    pub fn release(&self, what: &str, e: &io::Error) -> bool {
        self.note(what, e);
        let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
        let released = spares.pop().is_some();
        self.short.store(true, Ordering::Relaxed);
        released
    }

    /// Counts a call that met EMFILE; the first of an episode is logged.
    pub fn note(&self, what: &str, e: &io::Error) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut episode = self.episode.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some((_, last)) = episode.as_mut() {
            *last = now;
        } else {
            *episode = Some((now, now));
            tracing::error!(error = %e, at = what, "out of file descriptors: clients wait; health checks and the admin API use the reserve (raise LimitNOFILE / ulimit -n, or lower limits.max_connections)");
        }
    }

    /// Opens descriptors back up to the reserve's size, as far as the process can.
    pub fn refill(&self) {
        if !self.short() {
            return;
        }
        let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
        while spares.len() < SPARES {
            match File::open("/dev/null") {
                Ok(f) => spares.push(f),
                Err(_) => return,
            }
        }
        self.short.store(false, Ordering::Relaxed);
    }

    /// Refills, and ends the episode under way once nothing has met EMFILE for `quiet` (a
    /// process at its limit meets it again and again; that is one episode, logged once).
    pub fn tick(&self, quiet: std::time::Duration) {
        self.refill();
        let mut episode = self.episode.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((since, last)) = *episode {
            if !self.short() && last.elapsed() >= quiet {
                *episode = None;
                let refused = self.refused.swap(0, Ordering::Relaxed);
                tracing::warn!(lasted = ?since.elapsed(), refused, "file descriptors are available again");
            }
        }
    }
}

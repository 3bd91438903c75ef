//! Health by rise and fall, as HAProxy counts it: `rise` passing checks in a row bring a server
//! up, `fall` failing ones take it down. Backends and TURN servers both count this way; the last
//! active check's outcome is kept for `/status`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// The outcome of one active health check.
#[derive(Debug, Clone)]
pub struct CheckRecord {
    pub at: SystemTime,
    pub passed: bool,
    /// What the probe saw: a status line, or the error.
    pub detail: String,
}

/// Up or down, the consecutive results that move it, and the last active check.
#[derive(Debug)]
pub struct RiseFall {
    up: AtomicBool,
    passes: AtomicU32,
    fails: AtomicU32,
    last_check: Mutex<Option<CheckRecord>>,
}

impl RiseFall {
    /// Starting up (optimistic, as HAProxy starts: the first check runs at once) or down.
    pub fn new(up: bool) -> RiseFall {
        RiseFall {
            up: AtomicBool::new(up),
            passes: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            last_check: Mutex::new(None),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    /// Counts one result; returns the new health when it flipped.
    pub fn count(&self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        let up = self.is_up();
        if passed {
            self.fails.store(0, Ordering::Relaxed);
            let n = self.passes.fetch_add(1, Ordering::Relaxed) + 1;
            if !up && n >= rise {
                self.set_up(true);
                return Some(true);
            }
        } else {
            self.passes.store(0, Ordering::Relaxed);
            let n = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
            if up && n >= fall {
                self.set_up(false);
                return Some(false);
            }
        }
        None
    }

    pub fn set_last_check(&self, record: CheckRecord) {
        *self.last_check.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }

    pub fn last_check(&self) -> Option<CheckRecord> {
        self.last_check
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_takes_fall_failures_to_go_down_and_rise_passes_to_come_back() {
        let h = RiseFall::new(true);
        assert_eq!(h.count(false, 2, 3), None);
        assert_eq!(h.count(false, 2, 3), None);
        assert_eq!(h.count(true, 2, 3), None, "a pass resets the failures");
        assert_eq!(h.count(false, 2, 3), None);
        assert_eq!(h.count(false, 2, 3), None);
        assert_eq!(h.count(false, 2, 3), Some(false));
        assert_eq!(h.count(true, 2, 3), None);
        assert_eq!(h.count(true, 2, 3), Some(true));
        assert!(h.is_up());
    }
}

//! The recent events an operator looks for on the status page: backends going down and up,
//! admin states, drains, reloads, scaling. Each site that logs an event with a structured
//! `event = "..."` field also pushes it here; `/status` lists them as `events`.
//!
//! A ring of the last [`KEPT`] events, newest last: bounded whatever happens, and cheap, since
//! events are rare (a transition, an operator's call) and the lock is held for a push or a
//! copy only. The log stays the record; this is a window on it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

/// How many events are kept.
pub const KEPT: usize = 50;

/// One event, as its log line has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub time: SystemTime,
    /// The log line's `event` field: `backend_down`, `admin_state`, `reload`, `scale_up`, ….
    pub event: &'static str,
    /// Empty when the event is not a pool's (a reload).
    pub pool: String,
    /// Empty when the event is not one backend's.
    pub backend: String,
    /// What happened, in words: the check's result, the new state, the error.
    pub detail: String,
}

/// The last [`KEPT`] events.
#[derive(Debug, Default)]
pub struct Events {
    ring: Mutex<VecDeque<Event>>,
}

impl Events {
    /// Records `event` now, dropping the oldest when full.
    pub fn push(&self, event: &'static str, pool: &str, backend: &str, detail: impl Into<String>) {
        let event = Event {
            time: SystemTime::now(),
            event,
            pool: pool.to_string(),
            backend: backend.to_string(),
            detail: detail.into(),
        };
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back(event);
    }

    /// The events kept, oldest first.
    pub fn recent(&self) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_events_in_order_and_no_more() {
        let events = Events::default();
        for i in 0..KEPT + 7 {
            events.push("backend_down", "media", &format!("b{i}"), "refused");
        }
        let recent = events.recent();
        assert_eq!(recent.len(), KEPT);
        assert_eq!(recent[0].backend, "b7", "the oldest went first");
        assert_eq!(recent[KEPT - 1].backend, format!("b{}", KEPT + 6));
    }
}

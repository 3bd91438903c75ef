//! Slots that discovery handed out, held until their client arrives or they lapse.
//!
//! Between a discovery answer and the client's WebSocket the chosen backend does not see the
//! user, so a burst of discovery calls would all pick the same least-loaded backend. Each answer
//! therefore holds a [`Reserved`] slot, which counts in its backend's load and against its
//! `max_sessions`, and, for a room, the room's [`RoomTunnel`] count, which keeps the room on
//! that backend for the participants asking after it. The client's upgrade, carrying the pin
//! token, claims one reservation of its backend and room; the rest lapse at their deadline.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::state::backend::{Backend, Reserved};
use crate::state::rooms::RoomTunnel;

/// One handed-out slot.
#[derive(Debug)]
pub struct Reservation {
    pub until: Instant,
    pub slot: Reserved,
    /// The room it was handed out for, counted on the backend meanwhile.
    pub room: Option<(String, RoomTunnel)>,
}

/// Every backend's outstanding reservations, each backend's in order of their deadlines.
#[derive(Debug, Default)]
pub struct Reservations {
    /// Keyed by the backend's address in memory: each entry holds the backend (`Reserved`), so
    /// the key stays its own while the entry lives.
    by_backend: Mutex<HashMap<usize, VecDeque<Reservation>>>,
}

fn key(backend: &Arc<Backend>) -> usize {
    Arc::as_ptr(backend) as usize
}

impl Reservations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, VecDeque<Reservation>>> {
        self.by_backend.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `r` until it is claimed or lapses.
    pub fn hold(&self, r: Reservation) {
        let mut all = self.lock();
        let list = all.entry(key(r.slot.backend())).or_default();
        // One duration makes deadlines nearly ordered; after a reload changed it, in its place.
        let at = list.partition_point(|o| o.until <= r.until);
        list.insert(at, r);
    }

    /// A client sent to `backend` (for `room`) arrived: the reservation held for it, the one
    /// due first among alike, ends. Returns whether there was one.
    pub fn claim(&self, backend: &Arc<Backend>, room: Option<&str>) -> bool {
        if backend.reserved() == 0 {
            return false;
        }
        let claimed = {
            let mut all = self.lock();
            let Some(list) = all.get_mut(&key(backend)) else {
                return false;
            };
            let found = list
                .iter()
                .position(|r| r.room.as_ref().map(|(name, _)| name.as_str()) == room)
                // A client of another room (or none) still takes up one of the slots.
                .or_else(|| (!list.is_empty()).then_some(0));
            let claimed = found.and_then(|i| list.remove(i));
            if list.is_empty() {
                all.remove(&key(backend));
            }
            claimed
        };
        // Dropped outside the lock: a room's guard takes the rooms' lock.
        claimed.is_some()
    }

    /// Lets every reservation that lapsed by `now` go; returns how many did.
    pub fn expire(&self, now: Instant) -> usize {
        let lapsed: Vec<Reservation> = {
            let mut all = self.lock();
            let mut lapsed = Vec::new();
            all.retain(|_, list| {
                let n = list.partition_point(|r| r.until <= now);
                lapsed.extend(list.drain(..n));
                !list.is_empty()
            });
            lapsed
        };
        lapsed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::time::Duration;

    fn backend(id: &str) -> Arc<Backend> {
        Backend::new("media", id, ([127, 0, 0, 1], 9000).into(), &Metrics::new())
    }

    fn reservation(b: &Arc<Backend>, until: Instant) -> Reservation {
        Reservation {
            until,
            slot: b.reserve(Some(2)).expect("below the cap"),
            room: None,
        }
    }

    #[test]
    fn a_slot_counts_until_claimed_or_lapsed_and_never_past_the_cap() {
        let (b, now) = (backend("m1"), Instant::now());
        let r = Reservations::default();
        r.hold(reservation(&b, now + Duration::from_secs(10)));
        r.hold(reservation(&b, now + Duration::from_secs(1)));
        assert_eq!((b.reserved(), b.load(), b.claimed()), (2, 2, 2));
        assert!(b.reserve(Some(2)).is_none(), "the cap counts reservations");
        assert!(b.reserve(None).is_some(), "a pinned user has no cap");
        assert_eq!(r.expire(now + Duration::from_secs(1)), 1);
        assert_eq!(b.reserved(), 1);
        assert!(r.claim(&b, None));
        assert_eq!(b.reserved(), 0);
        assert!(!r.claim(&b, None), "nothing left to claim");
        assert!(!r.claim(&backend("m2"), None));
    }

    #[test]
    fn a_room_keeps_its_backend_while_its_reservation_lasts() {
        let rooms = Arc::new(crate::state::rooms::LiveRooms::default());
        let (b, now) = (backend("m1"), Instant::now());
        let r = Reservations::default();
        let ((), tunnel) = rooms
            .join("media", "standup", |_| Ok::<_, ()>(((), &b)))
            .expect("placed");
        r.hold(Reservation {
            until: now + Duration::from_secs(5),
            slot: b.reserve(None).expect("no cap"),
            room: Some(("standup".into(), tunnel)),
        });
        assert_eq!(rooms.backend_of("media", "standup").as_deref(), Some("m1"));
        assert!(r.claim(&b, Some("standup")));
        assert_eq!(rooms.backend_of("media", "standup"), None);
    }
}

//! Live rooms: which backend holds each room's tunnels (open, or being opened) in this
//! instance. A room stays on its backend while it has tunnels there, whatever the load its own
//! sessions add; placement (`balance.rs`) reads it, and a joiner is counted the moment it is
//! placed ([`LiveRooms::join`]), its [`RoomTunnel`] guard keeping the count exact.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::state::backend::Backend;

/// Rooms with open tunnels in this instance, and where they are: a room stays on its backend
/// while it has tunnels there, whatever the load its own sessions add.
#[derive(Debug, Default)]
pub struct LiveRooms {
    pools: Mutex<HashMap<Arc<str>, RoomsOfPool>>,
}

/// Room name → (backend, open tunnels). A room counts in its backend's live rooms
/// ([`Backend::room_opened`]) while it is listed here.
type RoomsOfPool = HashMap<String, (Arc<Backend>, u32)>;

impl LiveRooms {
    /// The backend holding `room`'s tunnels, if it has any open.
    pub fn backend_of(&self, pool: &str, room: &str) -> Option<Arc<str>> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.get(pool)?.get(room).map(|(b, _)| b.id.clone())
    }

    /// Places a participant of `room` and counts it on the backend chosen, in one step: `place`
    /// is handed the backend holding the room now, if any, and returns its choice (or why there
    /// is none). Two joiners of a new room who arrive together thus see each other: the second
    /// follows the first instead of being pushed elsewhere by the load the first one adds.
    pub fn join<'b, T, E>(
        self: &Arc<Self>,
        pool: &str,
        room: &str,
        place: impl FnOnce(Option<&str>) -> Result<(T, &'b Arc<Backend>), E>,
    ) -> Result<(T, RoomTunnel), E> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let live = pools
            .get(pool)
            .and_then(|rooms| rooms.get(room))
            .map(|(b, _)| b.id.clone());
        let (placed, backend) = place(live.as_deref())?;
        Ok((placed, self.count(&mut pools, backend, room)))
    }

    /// Counts one tunnel of `room` on `backend` until the guard drops.
    fn count(
        self: &Arc<Self>,
        pools: &mut HashMap<Arc<str>, RoomsOfPool>,
        backend: &Arc<Backend>,
        room: &str,
    ) -> RoomTunnel {
        let rooms = pools.entry(backend.pool.clone()).or_default();
        let entry = rooms.entry(room.to_string()).or_insert_with(|| {
            backend.room_opened();
            (backend.clone(), 0)
        });
        // A room that moved (its backend failed) follows its newest tunnel.
        if !Arc::ptr_eq(&entry.0, backend) {
            entry.0.room_closed();
            backend.room_opened();
            *entry = (backend.clone(), 0);
        }
        entry.1 += 1;
        RoomTunnel {
            rooms: self.clone(),
            pool: backend.pool.clone(),
            backend: backend.id.clone(),
            room: room.to_string(),
        }
    }
}

/// One open tunnel of a room; dropping it ends the count.
#[derive(Debug)]
pub struct RoomTunnel {
    rooms: Arc<LiveRooms>,
    pool: Arc<str>,
    backend: Arc<str>,
    room: String,
}

impl Drop for RoomTunnel {
    fn drop(&mut self) {
        let mut pools = self.rooms.pools.lock().unwrap_or_else(|e| e.into_inner());
        let Some(rooms) = pools.get_mut(&*self.pool) else {
            return;
        };
        if let Some(entry) = rooms.get_mut(&self.room) {
            if entry.0.id == self.backend {
                entry.1 = entry.1.saturating_sub(1);
                if entry.1 == 0 {
                    entry.0.room_closed();
                    rooms.remove(&self.room);
                }
            }
        }
        if rooms.is_empty() {
            pools.remove(&*self.pool);
        }
    }
}

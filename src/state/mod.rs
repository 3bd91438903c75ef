//! What requests read, and what outlives a reload.
//!
//! | file | owns |
//! |---|---|
//! | [`health`] | up or down by rise and fall, and the last check: backends' and TURN servers' |
//! | [`backend`] | one backend's runtime state: health, admin state, counters and their guards |
//! | [`registry`] | backends by (pool, id, address), carried across reloads; removed ones drain |
//! | [`rooms`] | live rooms: which backend holds each room's open tunnels |
//! | [`reservations`] | slots discovery handed out, until their client arrives or they lapse |
//! | [`events`] | the last events (down, up, drain, reload, scale) for the status page |
//! | [`turn`] | TURN servers' health and the forward-auth service's recent answers |
//! | [`snapshot`] | the immutable, config-derived view: pools, members, routing, keys, TLS |
//!
//! [`Shared`] is the one value the data path and the control plane both hold: the snapshot
//! swap, the live rooms, discovery's reservations, the metrics, the tasks shutdown waits for, and the connection slots.
//! The data path only reads the snapshot; the control plane (`control::Runtime`) publishes new
//! ones and resizes the slots.

pub mod backend;
pub mod buffers;
pub mod events;
pub mod fds;
pub mod health;
pub mod registry;
pub mod reservations;
pub mod rooms;
pub mod snapshot;
pub mod turn;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::state::reservations::Reservations;
use crate::state::rooms::LiveRooms;
use crate::state::snapshot::Snapshot;
use crate::state::turn::AuthCache;

/// The state both planes share.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    pub rooms: Arc<LiveRooms>,
    pub reservations: Reservations,
    /// The forward-auth service's recent answers (TURN credentials).
    pub turn_auth: AuthCache,
    pub metrics: Arc<Metrics>,
    /// Client connections and the tunnels they became, which shutdown waits for.
    pub tasks: TaskTracker,
    /// Slots under `max_connections`: a client connection holds one for its whole life.
    pub connection_slots: Arc<Semaphore>,
    /// Set when shutdown begins: `/ready` answers 503 from then on.
    pub stopping: std::sync::atomic::AtomicBool,
    /// Cancelled when the listeners close (after `shutdown_delay`): the admin listener closes
    /// with the others, so a replacement instance can bind every address at once.
    pub closing: tokio_util::sync::CancellationToken,
    /// The client connections holding the most for their clients (`[limits] buffer_budget`).
    pub buffers: buffers::Buffers,
    /// The last events, for `/status` and the status page.
    pub events: Arc<events::Events>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// State around a first snapshot, with as many connection slots as it allows.
    pub fn new(snapshot: Snapshot, metrics: Arc<Metrics>) -> Shared {
        let slots = snapshot.config.limits.max_connections;
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            rooms: Arc::default(),
            reservations: Reservations::default(),
            turn_auth: AuthCache::default(),
            metrics,
            tasks: TaskTracker::new(),
            connection_slots: Arc::new(Semaphore::new(slots)),
            stopping: std::sync::atomic::AtomicBool::new(false),
            closing: tokio_util::sync::CancellationToken::new(),
            buffers: buffers::Buffers::default(),
            events: Arc::default(),
        }
    }

    /// The current snapshot, for a short synchronous look; never hold it across an `.await`.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The current snapshot, to keep.
    pub fn snapshot_full(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Makes `snap` the one new requests read.
    pub fn publish(&self, snap: Arc<Snapshot>) {
        self.snapshot.store(snap);
    }
}

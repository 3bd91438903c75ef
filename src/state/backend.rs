//! Backend runtime state, and the registry that keeps it across reloads.
//!
//! A [`Backend`] is shared (`Arc`) by every snapshot that lists it and by every request and
//! tunnel using it, so health, admin state and counters survive a reload. The registry is keyed
//! by (pool, backend id, address): a backend whose address changes is a new backend. Placement
//! reads these counters (`balance.rs`); nothing here decides where a request goes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::metrics::{BackendMetrics, Metrics};

/// What an operator has asked of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AdminState {
    Enabled = 0,
    /// Keeps its pinned users and tunnels, takes no new pins.
    Draining = 1,
    /// Takes no traffic at all.
    Maint = 2,
}

/// One backend server's runtime state.
#[derive(Debug)]
pub struct Backend {
    pub pool: Arc<str>,
    pub id: Arc<str>,
    pub addr: SocketAddr,
    /// Its metric handles, resolved once.
    pub metrics: BackendMetrics,
    up: AtomicBool,
    admin: AtomicU8,
    /// Open tunnels.
    sessions: AtomicU32,
    /// Requests between placement and the end of their response body.
    inflight: AtomicU32,
    /// Consecutive passing and failing checks (active probes and passive failures alike).
    passes: AtomicU32,
    fails: AtomicU32,
    /// The last active check, for `/status`.
    last_check: Mutex<Option<CheckRecord>>,
    /// Cancelled to close every open tunnel (drain timeout); replaced after use.
    tunnels_stop: Mutex<CancellationToken>,
    /// Bumped whenever the admin state changes, so a pending drain timer can tell it is stale.
    admin_generation: AtomicU64,
    /// No longer in the configuration: draining until its pool's `drain_timeout`.
    removed: AtomicBool,
}

/// The outcome of one active health check.
#[derive(Debug, Clone)]
pub struct CheckRecord {
    pub at: SystemTime,
    pub passed: bool,
    /// What the probe saw: a status line, or the error.
    pub detail: String,
}

impl Backend {
    pub fn new(pool: &str, id: &str, addr: SocketAddr, metrics: &Metrics) -> Arc<Backend> {
        Arc::new(Backend {
            pool: pool.into(),
            id: id.into(),
            addr,
            metrics: metrics.backend(pool, id),
            // Optimistic start, as HAProxy does: the first health check runs at once.
            up: AtomicBool::new(true),
            admin: AtomicU8::new(AdminState::Enabled as u8),
            sessions: AtomicU32::new(0),
            inflight: AtomicU32::new(0),
            passes: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            last_check: Mutex::new(None),
            tunnels_stop: Mutex::new(CancellationToken::new()),
            admin_generation: AtomicU64::new(0),
            removed: AtomicBool::new(false),
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    pub fn admin(&self) -> AdminState {
        match self.admin.load(Ordering::Relaxed) {
            1 => AdminState::Draining,
            2 => AdminState::Maint,
            _ => AdminState::Enabled,
        }
    }

    /// Sets the admin state; returns the new admin generation (see [`Backend::admin_generation`]).
    pub fn set_admin(&self, state: AdminState) -> u64 {
        self.admin.store(state as u8, Ordering::Relaxed);
        self.admin_generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Changes with every admin state change.
    pub fn admin_generation(&self) -> u64 {
        self.admin_generation.load(Ordering::Relaxed)
    }

    /// Whether the configuration no longer lists this backend (it is draining out).
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// Draining with nothing left on it: no tunnel, no request in flight.
    pub fn drained(&self) -> bool {
        self.admin() == AdminState::Draining && self.load() == 0
    }

    /// Counts one check result toward `rise` or `fall`; returns the new health when it flipped.
    pub fn record_check(&self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
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

    /// A token cancelled when this backend's tunnels are to be closed.
    pub fn tunnels_stop(&self) -> CancellationToken {
        self.tunnels_stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Closes every open tunnel; tunnels opened afterwards are not affected.
    pub fn close_tunnels(&self) {
        let old = std::mem::take(&mut *self.tunnels_stop.lock().unwrap_or_else(|e| e.into_inner()));
        old.cancel();
    }

    pub fn sessions(&self) -> u32 {
        self.sessions.load(Ordering::Relaxed)
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Sessions plus in-flight requests.
    pub fn load(&self) -> u32 {
        self.sessions().saturating_add(self.inflight())
    }

    /// Counts one in-flight request until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Counts one session (an open tunnel) until the guard drops.
    pub fn open_session(self: &Arc<Self>) -> Session {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        Session(self.clone())
    }
}

/// An in-flight request on a backend; dropping it ends the count.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open session (tunnel) on a backend; dropping it ends the count, however the tunnel ended.
#[derive(Debug)]
pub struct Session(Arc<Backend>);

impl Drop for Session {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Rooms with open tunnels in this instance, and where they are: a room stays on its backend
/// while it has tunnels there, whatever the load its own sessions add.
#[derive(Debug, Default)]
pub struct LiveRooms {
    pools: Mutex<HashMap<Arc<str>, RoomsOfPool>>,
}

/// Room name → (backend id, open tunnels).
type RoomsOfPool = HashMap<String, (Arc<str>, u32)>;

impl LiveRooms {
    /// The backend holding `room`'s tunnels, if it has any open.
    pub fn backend_of(&self, pool: &str, room: &str) -> Option<Arc<str>> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.get(pool)?.get(room).map(|(id, _)| id.clone())
    }

    /// Counts one tunnel of `room` on `backend` until the guard drops.
    pub fn enter(self: &Arc<Self>, backend: &Backend, room: &str) -> RoomTunnel {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let rooms = pools.entry(backend.pool.clone()).or_default();
        let entry = rooms
            .entry(room.to_string())
            .or_insert_with(|| (backend.id.clone(), 0));
        // A room that moved (its backend failed) follows its newest tunnel.
        if entry.0 != backend.id {
            *entry = (backend.id.clone(), 0);
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
            if entry.0 == self.backend {
                entry.1 = entry.1.saturating_sub(1);
                if entry.1 == 0 {
                    rooms.remove(&self.room);
                }
            }
        }
        if rooms.is_empty() {
            pools.remove(&*self.pool);
        }
    }
}

type Key = (String, String, SocketAddr);

/// What a snapshot needs to list a backend.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub pool: &'a str,
    pub id: &'a str,
    pub addr: SocketAddr,
    pub weight: u32,
    pub max_sessions: u32,
    /// Its pool's `drain_timeout`, should it leave later.
    pub drain_timeout: Duration,
}

/// A backend the configuration no longer lists: it drains (its pinned users and tunnels keep
/// working, it takes no new pins) until `until`, then its tunnels are closed and it is gone.
#[derive(Debug, Clone)]
pub struct Leaving {
    pub backend: Arc<Backend>,
    pub weight: u32,
    pub max_sessions: u32,
    pub until: Instant,
}

struct Kept {
    backend: Arc<Backend>,
    weight: u32,
    max_sessions: u32,
    drain_timeout: Duration,
}

#[derive(Default)]
struct Backends {
    live: HashMap<Key, Kept>,
    leaving: HashMap<Key, Leaving>,
}

/// Backends by (pool, id, address), outliving snapshots, and the metrics they report to.
pub struct Registry {
    backends: Mutex<Backends>,
    metrics: Arc<Metrics>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(Arc::new(Metrics::new()))
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Registry {
        Registry {
            backends: Mutex::new(Backends::default()),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Makes the registry list exactly `wanted`, reusing the state of backends that stay (or
    /// come back while still leaving). Backends no longer wanted start leaving. Returns the
    /// wanted backends in order, and every backend still leaving.
    pub fn update(&self, wanted: &[Wanted<'_>]) -> (Vec<Arc<Backend>>, Vec<Leaving>) {
        let mut all = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        let mut live = HashMap::with_capacity(wanted.len());
        let mut kept = Vec::with_capacity(wanted.len());
        for w in wanted {
            let key = (w.pool.to_string(), w.id.to_string(), w.addr);
            let backend = match all.live.remove(&key) {
                Some(k) => k.backend,
                None => match all.leaving.remove(&key) {
                    Some(back) => {
                        tracing::info!(pool = %w.pool, backend = %w.id, "backend listed again: it stops leaving");
                        back.backend.removed.store(false, Ordering::Relaxed);
                        if back.backend.admin() == AdminState::Draining {
                            back.backend.set_admin(AdminState::Enabled);
                        }
                        back.backend
                    }
                    None => Backend::new(w.pool, w.id, w.addr, &self.metrics),
                },
            };
            kept.push(backend.clone());
            let k = Kept {
                backend,
                weight: w.weight,
                max_sessions: w.max_sessions,
                drain_timeout: w.drain_timeout,
            };
            live.insert(key, k);
        }
        let now = Instant::now();
        for (key, gone) in std::mem::replace(&mut all.live, live) {
            let b = &gone.backend;
            tracing::info!(pool = %b.pool, backend = %b.id, addr = %b.addr, drain_timeout = ?gone.drain_timeout, "backend removed: draining");
            b.removed.store(true, Ordering::Relaxed);
            // A backend in maintenance stays out of traffic; any other drains.
            if b.admin() != AdminState::Maint {
                b.set_admin(AdminState::Draining);
            }
            all.leaving.insert(
                key,
                Leaving {
                    backend: gone.backend,
                    weight: gone.weight,
                    max_sessions: gone.max_sessions,
                    until: now + gone.drain_timeout,
                },
            );
        }
        (kept, all.leaving.values().cloned().collect())
    }

    /// Ends the drain of leaving backends whose time is up: closes their tunnels and removes
    /// their metric series. Returns how many went.
    pub fn expire(&self, now: Instant) -> usize {
        let mut all = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        let before = all.leaving.len();
        let Backends { live, leaving } = &mut *all;
        leaving.retain(|_, l| {
            if l.until > now {
                return true;
            }
            let b = &l.backend;
            tracing::info!(pool = %b.pool, backend = %b.id, sessions = b.sessions(), "removed backend's drain is over");
            b.close_tunnels();
            // A backend listed again under the same id (a new address) shares the series.
            let shared = live.keys().any(|(p, i, _)| **p == *b.pool && **i == *b.id);
            if !shared {
                self.metrics.remove_backend(&b.metrics);
            }
            false
        });
        before - all.leaving.len()
    }
}

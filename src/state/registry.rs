//! The registry: every backend's runtime state by (pool, id, address), outliving snapshots.
//!
//! A reload hands it the backends the new configuration lists ([`Registry::update`]); those
//! that stay keep their `Arc<Backend>` (health, admin state, counters, tunnels, metric series),
//! new ones are created, and those no longer listed start leaving: they drain until their
//! pool's `drain_timeout`, then [`Registry::expire`] closes their tunnels and removes their
//! series. Keyed by the stable id, never a list position: reordering the config moves nothing.
//! A backend whose address changes is a new backend.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::TurnUrl;
use crate::metrics::{Metrics, TunnelEnd};
use crate::state::backend::Backend;
use crate::state::turn::TurnServer;

type Key = (String, String, SocketAddr);

/// What a snapshot needs to list a backend.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub pool: &'a str,
    pub id: &'a str,
    pub addr: SocketAddr,
    /// Where its health is checked.
    pub check_addr: SocketAddr,
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
    pub check_addr: SocketAddr,
    pub weight: u32,
    pub max_sessions: u32,
    pub until: Instant,
    /// Removed as soon as nothing is left on it (deleted through the admin API), not only at
    /// `until`.
    pub at_zero: bool,
}

struct Kept {
    backend: Arc<Backend>,
    check_addr: SocketAddr,
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
    /// TURN servers by URL.
    turn: Mutex<HashMap<String, Arc<TurnServer>>>,
    /// The first configuration was applied: backends added from now on slow-start.
    started: std::sync::atomic::AtomicBool,
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
            turn: Mutex::default(),
            started: std::sync::atomic::AtomicBool::new(false),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The TURN servers of `urls`, in order: those already known keep their health; the
    /// others are new, and servers no longer listed are forgotten.
    pub fn turn_servers(&self, urls: &[TurnUrl]) -> Vec<Arc<TurnServer>> {
        let mut known = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        let servers: Vec<Arc<TurnServer>> = urls
            .iter()
            .map(|u| match known.get(&u.url) {
                Some(s) if s.url == *u => s.clone(),
                _ => Arc::new(TurnServer::new(u.clone())),
            })
            .collect();
        *known = servers
            .iter()
            .map(|s| (s.url.url.clone(), s.clone()))
            .collect();
        servers
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
                        back.backend.listed_again();
                        back.backend
                    }
                    None => {
                        let b = Backend::new(w.pool, w.id, w.addr, &self.metrics);
                        if self.started.load(std::sync::atomic::Ordering::Relaxed) {
                            b.came_up_at(Instant::now());
                        }
                        b
                    }
                },
            };
            kept.push(backend.clone());
            let k = Kept {
                backend,
                check_addr: w.check_addr,
                weight: w.weight,
                max_sessions: w.max_sessions,
                drain_timeout: w.drain_timeout,
            };
            live.insert(key, k);
        }
        self.started
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        for (key, gone) in std::mem::replace(&mut all.live, live) {
            let b = &gone.backend;
            tracing::info!(pool = %b.pool, backend = %b.id, addr = %b.addr, drain_timeout = ?gone.drain_timeout, "backend removed: draining");
            // A backend in maintenance stays out of traffic, a drained one stays drained; an
            // enabled one drains.
            b.drain_for_removal();
            all.leaving.insert(
                key,
                Leaving {
                    backend: gone.backend,
                    check_addr: gone.check_addr,
                    weight: gone.weight,
                    max_sessions: gone.max_sessions,
                    until: now + gone.drain_timeout,
                    at_zero: false,
                },
            );
        }
        (kept, all.leaving.values().cloned().collect())
    }

    /// Marks leaving backend `id` of `pool` to be removed as soon as nothing is left on it.
    pub fn remove_when_drained(&self, pool: &str, id: &str) {
        let mut all = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        for ((p, i, _), l) in all.leaving.iter_mut() {
            if p == pool && i == id {
                l.at_zero = true;
            }
        }
    }

    /// Ends the drain of leaving backends whose time is up: closes their tunnels and removes
    /// their metric series. Returns how many went.
    pub fn expire(&self, now: Instant) -> usize {
        let mut all = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        let before = all.leaving.len();
        let Backends { live, leaving } = &mut *all;
        leaving.retain(|_, l| {
            let empty = l.at_zero && l.backend.load() == 0;
            if l.until > now && !empty {
                return true;
            }
            let b = &l.backend;
            tracing::info!(pool = %b.pool, backend = %b.id, sessions = b.sessions(), "removed backend's drain is over");
            b.close_tunnels(TunnelEnd::Drain);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::backend::AdminState;

    fn wanted<'a>(pool: &'a str, id: &'a str, addr: &str) -> Wanted<'a> {
        let addr = addr.parse().expect("address");
        Wanted {
            pool,
            id,
            addr,
            check_addr: addr,
            weight: 1,
            max_sessions: 500,
            drain_timeout: Duration::from_secs(60),
        }
    }

    fn ids(backends: &[Arc<Backend>]) -> Vec<&str> {
        backends.iter().map(|b| &*b.id).collect()
    }

    /// A reload that reorders the backends keeps each one's state: the same `Arc`, so its
    /// health, counters and tunnels, found by id and address, not by place in the list.
    #[test]
    fn reordered_backends_keep_their_state() {
        let registry = Registry::default();
        let (first, leaving) = registry.update(&[
            wanted("media", "a", "127.0.0.1:1"),
            wanted("media", "b", "127.0.0.1:2"),
        ]);
        assert!(leaving.is_empty());
        let session = first[1].open_session();
        first[1].set_up(false);
        let (second, leaving) = registry.update(&[
            wanted("media", "b", "127.0.0.1:2"),
            wanted("media", "a", "127.0.0.1:1"),
        ]);
        assert!(leaving.is_empty());
        assert_eq!(ids(&second), ["b", "a"]);
        assert!(Arc::ptr_eq(&second[0], &first[1]), "b kept its state");
        assert!(Arc::ptr_eq(&second[1], &first[0]), "a kept its state");
        assert_eq!(second[0].sessions(), 1);
        assert!(!second[0].is_up());
        drop(session);
    }

    /// The same id in another pool, or at another address, is another backend.
    #[test]
    fn the_key_is_pool_id_and_address() {
        let registry = Registry::default();
        let (first, _) = registry.update(&[wanted("media", "a", "127.0.0.1:1")]);
        let (moved, leaving) = registry.update(&[
            wanted("media", "a", "127.0.0.1:9"),
            wanted("other", "a", "127.0.0.1:1"),
        ]);
        assert!(
            !Arc::ptr_eq(&moved[0], &first[0]),
            "a new address is a new backend"
        );
        assert!(
            !Arc::ptr_eq(&moved[1], &first[0]),
            "a new pool is a new backend"
        );
        assert_eq!(leaving.len(), 1, "the old a drains");
        assert!(Arc::ptr_eq(&leaving[0].backend, &first[0]));
    }

    /// A removed backend drains until its pool's drain timeout; listed again before that, it
    /// comes back with its state and enabled; past it, it is gone and its tunnels closed.
    #[test]
    fn removed_backends_drain_come_back_or_expire() {
        let registry = Registry::default();
        let (first, _) = registry.update(&[
            wanted("media", "a", "127.0.0.1:1"),
            wanted("media", "b", "127.0.0.1:2"),
        ]);
        let (_, leaving) = registry.update(&[wanted("media", "a", "127.0.0.1:1")]);
        assert_eq!(leaving.len(), 1);
        let b = &first[1];
        assert!(b.is_removed());
        assert_eq!(b.admin(), AdminState::Draining);

        let (back, leaving) = registry.update(&[
            wanted("media", "a", "127.0.0.1:1"),
            wanted("media", "b", "127.0.0.1:2"),
        ]);
        assert!(leaving.is_empty());
        assert!(Arc::ptr_eq(&back[1], b), "b came back with its state");
        assert!(!b.is_removed());
        assert_eq!(b.admin(), AdminState::Enabled);

        let (_, leaving) = registry.update(&[wanted("media", "a", "127.0.0.1:1")]);
        let stop = b.tunnels_stop();
        assert_eq!(registry.expire(Instant::now()), 0, "still within its drain");
        assert!(!stop.has_fired());
        assert_eq!(registry.expire(leaving[0].until), 1, "its drain is over");
        assert!(stop.has_fired(), "its tunnels are closed");
        assert_eq!(stop.why(), TunnelEnd::Drain);
        let (_, leaving) = registry.update(&[wanted("media", "a", "127.0.0.1:1")]);
        assert!(leaving.is_empty(), "gone for good");
    }

    /// An operator's drain outlives a removal and a listing again: only a drain the removal
    /// itself started ends when the backend is listed again.
    #[test]
    fn a_drained_backend_removed_and_listed_again_stays_drained() {
        let registry = Registry::default();
        let (first, _) = registry.update(&[wanted("media", "a", "127.0.0.1:1")]);
        first[0].set_admin(AdminState::Draining);
        registry.update(&[]);
        let (again, _) = registry.update(&[wanted("media", "a", "127.0.0.1:1")]);
        assert!(Arc::ptr_eq(&again[0], &first[0]));
        assert!(!again[0].is_removed());
        assert_eq!(
            again[0].admin(),
            AdminState::Draining,
            "the operator's drain stays"
        );
    }

    /// Slow start applies to backends a reload adds, not to those of the first configuration
    /// (HAProxy's slowstart does not apply at start either).
    #[test]
    fn backends_added_by_a_reload_slow_start_and_the_first_ones_do_not() {
        let slow = Duration::from_secs(60);
        let registry = Registry::default();
        let (first, _) = registry.update(&[wanted("media", "a", "127.0.0.1:1")]);
        assert_eq!(
            first[0].ramp(slow),
            1000,
            "a backend of the first configuration"
        );
        let (next, _) = registry.update(&[
            wanted("media", "a", "127.0.0.1:1"),
            wanted("media", "b", "127.0.0.1:2"),
        ]);
        assert_eq!(next[0].ramp(slow), 1000, "a backend that stayed");
        assert!(next[1].ramp(slow) < 10, "an added backend starts slow");
    }

    /// A backend in maintenance when it is removed stays out of traffic instead of draining.
    #[test]
    fn a_removed_backend_in_maintenance_stays_there() {
        let registry = Registry::default();
        let (first, _) = registry.update(&[wanted("media", "a", "127.0.0.1:1")]);
        first[0].set_admin(AdminState::Maint);
        registry.update(&[]);
        assert_eq!(first[0].admin(), AdminState::Maint);
        assert!(first[0].is_removed());
    }
}

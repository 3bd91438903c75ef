//! One backend server's runtime state: health, admin state, the counters placement reads, and
//! the guards that keep those counters exact.
//!
//! A [`Backend`] is shared (`Arc`) by every snapshot that lists it and by every request and
//! tunnel using it, so health, admin state and counters survive a reload (the registry,
//! `registry.rs`, keeps it). Every health result, from an active probe or a failure the data
//! path saw, is recorded here by [`Backend::record_health`], which also logs the transitions.
//! Placement reads these counters (`balance.rs`); nothing here decides where a request goes.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::OnDown;
use crate::metrics::{BackendMetrics, Metrics, TunnelEnd};
use crate::state::events::Events;
pub use crate::state::health::CheckRecord;
use crate::state::health::RiseFall;

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
    health: RiseFall,
    admin: AtomicU8,
    /// Open tunnels.
    sessions: AtomicU32,
    /// Requests between placement and the end of their response body.
    inflight: AtomicU32,
    /// Slots handed out by discovery whose client has not arrived (`reservations.rs` holds
    /// them).
    reserved: AtomicU32,
    /// Live rooms in this instance: rooms with a tunnel (or a reservation) on it.
    rooms: AtomicU32,
    /// The backend's own report of its sessions and rooms across every instance
    /// (`X-Rtcgate-Agent`), `NO_REPORT` until it sends one; and the sessions and rooms this
    /// instance placed on it since, and the sessions it saw end since.
    reported_sessions: AtomicU32,
    reported_rooms: AtomicU32,
    opened_since_report: AtomicU32,
    closed_since_report: AtomicU32,
    rooms_since_report: AtomicU32,
    /// The agent's share of its configured weight, in percent (HAProxy's `NN%`).
    agent_weight: AtomicU32,
    /// Its admin state was set by its agent (`drain`/`maint`), not by an operator.
    admin_by_agent: AtomicBool,
    /// Fired to close every open tunnel; replaced after use.
    tunnels_stop: Mutex<Arc<TunnelsStop>>,
    /// Bumped whenever the admin state changes, so a pending drain timer can tell it is stale.
    admin_generation: AtomicU64,
    /// No longer in the configuration: draining until its pool's `drain_timeout`.
    removed: AtomicBool,
    /// Its drain reached its deadline: pins to it are no longer honoured.
    drain_over: AtomicBool,
    /// It drains because the configuration no longer lists it, not by an operator's call.
    draining_for_removal: AtomicBool,
    /// When it last came up (added by a reload, recovered, enabled), in nanoseconds since
    /// [`epoch`]: slow start ramps its share of new users from then. Backends of the first
    /// configuration count as up for long (as HAProxy's slowstart does not apply at start).
    up_since: AtomicU64,
}

/// "No report": the backend's agent has not reported this count.
const NO_REPORT: u32 = u32::MAX;

/// The instant backends' times are counted from (the first use).
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    // An hour before the first use, so that an instant a little in the past (a test's "came
    // up 10 s ago") still counts.
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    })
}

/// `at` as nanoseconds since [`epoch`] (0 for earlier instants).
fn since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// The signal that closes a backend's tunnels, and why it fired.
#[derive(Debug, Default)]
pub struct TunnelsStop {
    token: CancellationToken,
    why: std::sync::OnceLock<TunnelEnd>,
}

impl TunnelsStop {
    /// Waits until this backend's tunnels are to be closed; returns why.
    pub async fn fired(&self) -> TunnelEnd {
        self.token.cancelled().await;
        self.why()
    }

    /// Whether it fired.
    pub fn has_fired(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Why it fired (`Drain` until it has).
    pub fn why(&self) -> TunnelEnd {
        self.why.get().copied().unwrap_or(TunnelEnd::Drain)
    }
}

/// One health result.
pub enum Check<'a> {
    /// An active probe's, with what it saw (a status line, or the error).
    Probe { passed: bool, detail: String },
    /// A request's connect or exchange failed (a passive check).
    Failed(&'a dyn fmt::Display),
}

impl Backend {
    pub fn new(pool: &str, id: &str, addr: SocketAddr, metrics: &Metrics) -> Arc<Backend> {
        Arc::new(Backend {
            pool: pool.into(),
            id: id.into(),
            addr,
            metrics: metrics.backend(pool, id),
            // Optimistic start, as HAProxy does: the first health check runs at once.
            health: RiseFall::new(true),
            admin: AtomicU8::new(AdminState::Enabled as u8),
            sessions: AtomicU32::new(0),
            inflight: AtomicU32::new(0),
            reserved: AtomicU32::new(0),
            rooms: AtomicU32::new(0),
            reported_sessions: AtomicU32::new(NO_REPORT),
            reported_rooms: AtomicU32::new(NO_REPORT),
            opened_since_report: AtomicU32::new(0),
            closed_since_report: AtomicU32::new(0),
            rooms_since_report: AtomicU32::new(0),
            agent_weight: AtomicU32::new(100),
            admin_by_agent: AtomicBool::new(false),
            tunnels_stop: Mutex::default(),
            admin_generation: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            drain_over: AtomicBool::new(false),
            draining_for_removal: AtomicBool::new(false),
            up_since: AtomicU64::new(0),
        })
    }

    pub fn is_up(&self) -> bool {
        self.health.is_up()
    }

    pub fn set_up(&self, up: bool) {
        self.health.set_up(up);
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
        if state == AdminState::Enabled && self.admin() != AdminState::Enabled {
            self.came_up_at(Instant::now());
        }
        self.admin.store(state as u8, Ordering::Relaxed);
        // An operator's word (the agent's own calls mark theirs again after this).
        self.admin_by_agent.store(false, Ordering::Relaxed);
        self.drain_over.store(false, Ordering::Relaxed);
        self.draining_for_removal.store(false, Ordering::Relaxed);
        self.admin_generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Notes that it came up at `at` (slow start counts from there).
    pub fn came_up_at(&self, at: Instant) {
        self.up_since.store(since_epoch(at), Ordering::Relaxed);
    }

    /// Its share of its weight under slow start, in thousandths: from 1 when it just came up
    /// to 1000 once `slow_start` has passed since.
    pub fn ramp(&self, slow_start: Duration) -> u64 {
        let up = self.up_since.load(Ordering::Relaxed);
        let elapsed = since_epoch(Instant::now()).saturating_sub(up);
        let full = u64::try_from(slow_start.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        (u128::from(elapsed) * 1000 / u128::from(full)).clamp(1, 1000) as u64
    }

    /// Ends a drain at its deadline: pins to it are no longer honoured (its users are placed
    /// afresh, as for maintenance) and its tunnels are closed, so the drain reaches zero.
    pub fn end_drain(&self) {
        self.drain_over.store(true, Ordering::Relaxed);
        self.close_tunnels(TunnelEnd::Drain);
    }

    /// Whether users pinned to it may still use it: not in maintenance, and not past the
    /// deadline of its drain. (Health is the caller's to weigh.)
    pub fn takes_pinned(&self) -> bool {
        self.admin() != AdminState::Maint && !self.drain_over.load(Ordering::Relaxed)
    }

    /// Starts the drain of a backend the configuration no longer lists (unless it is in
    /// maintenance, or an operator drained it already: then it keeps that state).
    pub fn drain_for_removal(&self) {
        self.set_removed(true);
        if self.admin() == AdminState::Enabled {
            self.set_admin(AdminState::Draining);
            self.draining_for_removal.store(true, Ordering::Relaxed);
        }
    }

    /// A removed backend listed again: it stops leaving, and takes users again if only its
    /// removal was draining it; an operator's drain or maintenance stays.
    pub fn listed_again(&self) {
        self.set_removed(false);
        if self.draining_for_removal.load(Ordering::Relaxed) {
            self.set_admin(AdminState::Enabled);
        }
    }

    /// Changes with every admin state change.
    pub fn admin_generation(&self) -> u64 {
        self.admin_generation.load(Ordering::Relaxed)
    }

    /// Whether the configuration no longer lists this backend (it is draining out).
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// Marks it as no longer listed (draining out), or listed again.
    pub fn set_removed(&self, removed: bool) {
        self.removed.store(removed, Ordering::Relaxed);
    }

    /// Draining with nothing left on it: no tunnel, no request in flight.
    pub fn drained(&self) -> bool {
        self.admin() == AdminState::Draining && self.load() == 0
    }

    /// Records one health result toward `rise` or `fall`, and logs the transition when the
    /// backend's health flips; a backend that goes down has its tunnels closed unless `on_down`
    /// keeps them. Returns the new health when it flipped.
    pub fn record_health(
        &self,
        check: Check<'_>,
        rise: u32,
        fall: u32,
        on_down: OnDown,
        events: &Events,
    ) -> Option<bool> {
        let passed = match &check {
            Check::Probe { passed, .. } => *passed,
            Check::Failed(_) => false,
        };
        let flipped = self.count(passed, rise, fall);
        let (pool, id) = (&*self.pool, &*self.id);
        match (&check, flipped) {
            (Check::Probe { detail, .. }, Some(true)) => {
                tracing::info!(event = "backend_up", %pool, backend = %id, %detail, "backend is up");
                events.push("backend_up", pool, id, detail.as_str());
            }
            (Check::Probe { detail, .. }, Some(false)) => {
                tracing::warn!(event = "backend_down", %pool, backend = %id, %detail, "backend is down");
                events.push("backend_down", pool, id, detail.as_str());
            }
            (Check::Failed(error), Some(false)) => {
                tracing::warn!(event = "backend_down", %pool, backend = %id, %error, "backend is down (passive check)");
                events.push("backend_down", pool, id, format!("passive check: {error}"));
            }
            _ => {}
        }
        if flipped == Some(false) && on_down == OnDown::Close && self.sessions() > 0 {
            tracing::info!(%pool, backend = %id, sessions = self.sessions(), "closing the down backend's tunnels");
            self.close_tunnels(TunnelEnd::Down);
        }
        if let Check::Probe { passed, detail } = check {
            if passed {
                self.metrics.checks_pass.inc();
            } else {
                self.metrics.checks_fail.inc();
            }
            self.set_last_check(CheckRecord {
                at: SystemTime::now(),
                passed,
                detail,
            });
        }
        flipped
    }

    /// Counts one result (active probes and passive failures alike); returns the new health
    /// when it flipped.
    fn count(&self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        let flipped = self.health.count(passed, rise, fall);
        if flipped == Some(true) {
            self.came_up_at(Instant::now());
        }
        flipped
    }

    /// Its state as `/status` and the metrics name it: maintenance, else health, else draining.
    pub fn state_name(&self) -> &'static str {
        match (self.admin(), self.is_up()) {
            (AdminState::Maint, _) => "maint",
            (_, false) => "down",
            (AdminState::Draining, true) => "draining",
            (AdminState::Enabled, true) => "up",
        }
    }

    fn set_last_check(&self, record: CheckRecord) {
        self.health.set_last_check(record);
    }

    pub fn last_check(&self) -> Option<CheckRecord> {
        self.health.last_check()
    }

    /// What a new tunnel of this backend waits on: it fires, with a reason, when this
    /// backend's tunnels are to be closed.
    pub fn tunnels_stop(&self) -> Arc<TunnelsStop> {
        self.tunnels_stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Closes every open tunnel for `why`; tunnels opened afterwards are not affected.
    pub fn close_tunnels(&self, why: TunnelEnd) {
        let old = std::mem::take(&mut *self.tunnels_stop.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = old.why.set(why);
        old.token.cancel();
    }

    pub fn sessions(&self) -> u32 {
        self.sessions.load(Ordering::Relaxed)
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// The sessions placement counts: its open tunnels, or, where the backend reports its own
    /// count (across every instance), that report plus what this instance placed since, less
    /// the sessions this instance saw end since, if more. A tunnel is one session on its
    /// backend wherever it was counted, so one that ends here frees its place at once, not a
    /// health interval later. (Rooms are not counted down so: a room that empties here may
    /// still live through another instance.)
    pub fn counted_sessions(&self) -> u32 {
        let own = self.sessions();
        match self.reported_sessions.load(Ordering::Relaxed) {
            NO_REPORT => own,
            r => own.max(
                r.saturating_add(self.opened_since_report.load(Ordering::Relaxed))
                    .saturating_sub(self.closed_since_report.load(Ordering::Relaxed)),
            ),
        }
    }

    /// Counted sessions plus in-flight requests plus unexpired reservations.
    pub fn load(&self) -> u32 {
        self.counted_sessions()
            .saturating_add(self.inflight())
            .saturating_add(self.reserved())
    }

    /// Counted sessions plus the slots reserved for clients on their way: what counts against
    /// `max_sessions`.
    pub fn claimed(&self) -> u32 {
        self.counted_sessions().saturating_add(self.reserved())
    }

    /// Its live rooms in this instance, or its own report of them plus the rooms this instance
    /// opened on it since, if more: what counts against `max_rooms`.
    pub fn rooms(&self) -> u32 {
        let own = self.rooms.load(Ordering::Relaxed);
        match self.reported_rooms.load(Ordering::Relaxed) {
            NO_REPORT => own,
            r => own.max(r.saturating_add(self.rooms_since_report.load(Ordering::Relaxed))),
        }
    }

    /// A room came to live on it (`rooms.rs`).
    pub fn room_opened(&self) {
        self.rooms.fetch_add(1, Ordering::Relaxed);
        self.rooms_since_report.fetch_add(1, Ordering::Relaxed);
    }

    /// A room left it.
    pub fn room_closed(&self) {
        let _ = self
            .rooms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Records its agent's report of its own sessions and rooms; counting since starts anew.
    pub fn record_report(&self, sessions: Option<u32>, rooms: Option<u32>) {
        if let Some(n) = sessions {
            self.reported_sessions
                .store(n.min(NO_REPORT - 1), Ordering::Relaxed);
            self.opened_since_report.store(0, Ordering::Relaxed);
            self.closed_since_report.store(0, Ordering::Relaxed);
        }
        if let Some(n) = rooms {
            self.reported_rooms
                .store(n.min(NO_REPORT - 1), Ordering::Relaxed);
            self.rooms_since_report.store(0, Ordering::Relaxed);
        }
    }

    /// Its last reported sessions and rooms, if it reports them.
    pub fn report(&self) -> (Option<u32>, Option<u32>) {
        let get = |a: &AtomicU32| Some(a.load(Ordering::Relaxed)).filter(|n| *n != NO_REPORT);
        (get(&self.reported_sessions), get(&self.reported_rooms))
    }

    /// The agent's share of its weight, in percent.
    pub fn agent_weight(&self) -> u32 {
        self.agent_weight.load(Ordering::Relaxed)
    }

    pub fn set_agent_weight(&self, percent: u32) {
        self.agent_weight.store(percent.min(256), Ordering::Relaxed);
    }

    /// Sets the admin state its agent asks for: `drain` and `maint` as the admin API would
    /// (maintenance closes its tunnels where `on_down` says so); `up` (`ready`) ends only a
    /// state the agent set, never an operator's. Returns whether the state changed.
    pub fn agent_admin(&self, wanted: AdminState, on_down: OnDown, events: &Events) -> bool {
        let by_agent = self.admin_by_agent.load(Ordering::Relaxed);
        let current = self.admin();
        if wanted == current || (wanted == AdminState::Enabled && !by_agent) {
            return false;
        }
        if current != AdminState::Enabled && !by_agent {
            // An operator's drain or maintenance stands.
            return false;
        }
        self.set_admin(wanted);
        self.admin_by_agent
            .store(wanted != AdminState::Enabled, Ordering::Relaxed);
        tracing::info!(event = "admin_state", pool = %self.pool, backend = %self.id, state = self.state_name(), "admin state set by the backend's agent");
        events.push(
            "admin_state",
            &self.pool,
            &self.id,
            format!("{} (set by its agent)", self.state_name()),
        );
        if wanted == AdminState::Maint && on_down == OnDown::Close {
            self.close_tunnels(TunnelEnd::Maint);
        }
        true
    }

    /// Whether its admin state is its agent's doing.
    pub fn admin_by_agent(&self) -> bool {
        self.admin_by_agent.load(Ordering::Relaxed)
    }

    /// Slots handed out by discovery whose client has not arrived yet and that have not lapsed.
    pub fn reserved(&self) -> u32 {
        self.reserved.load(Ordering::Relaxed)
    }

    /// Holds a slot for a client that discovery sends here, while its open sessions and
    /// reservations are below `cap` (`None`: no cap, for a user already pinned here). Check
    /// and count are one step, so concurrent calls cannot overshoot `cap`.
    pub fn reserve(self: &Arc<Self>, cap: Option<u32>) -> Option<Reserved> {
        self.reserved
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| match cap {
                Some(cap) if self.sessions().saturating_add(n) >= cap => None,
                _ => Some(n + 1),
            })
            .ok()?;
        Some(Reserved(self.clone()))
    }

    /// Counts one in-flight request until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Counts one session (an open tunnel) until the guard drops.
    pub fn open_session(self: &Arc<Self>) -> Session {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.opened_since_report.fetch_add(1, Ordering::Relaxed);
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

/// A slot reserved on a backend for a client on its way; dropping it ends the count.
#[derive(Debug)]
pub struct Reserved(Arc<Backend>);

impl Reserved {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.0.reserved.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open session (tunnel) on a backend; dropping it ends the count, however the tunnel ended.
#[derive(Debug)]
pub struct Session(Arc<Backend>);

impl Drop for Session {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
        self.0.closed_since_report.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Arc<Backend> {
        Backend::new(
            "media",
            "b1",
            ([127, 0, 0, 1], 9000).into(),
            &Metrics::new(),
        )
    }

    #[test]
    fn a_reported_count_rises_with_this_instances_placements_and_falls_with_its_closes() {
        let b = backend();
        let before: Vec<Session> = (0..3).map(|_| b.open_session()).collect();
        assert_eq!(b.counted_sessions(), 3, "no report: its own count");
        // The backend counts 500 across every instance, these three among them.
        b.record_report(Some(500), None);
        assert_eq!(b.counted_sessions(), 500);
        let placed: Vec<Session> = (0..2).map(|_| b.open_session()).collect();
        assert_eq!(b.counted_sessions(), 502, "placed since the report");
        drop(before);
        assert_eq!(
            b.counted_sessions(),
            499,
            "three that were in the report ended"
        );
        drop(placed);
        assert_eq!(b.counted_sessions(), 497, "two placed since ended");
        b.record_report(Some(10), None);
        assert_eq!(
            b.counted_sessions(),
            10,
            "a new report starts the counts anew"
        );
        let mut held: Vec<Session> = (0..20).map(|_| b.open_session()).collect();
        drop(held.split_off(5));
        assert_eq!(b.counted_sessions(), 15, "10 + 20 placed - 15 ended");
    }

    #[test]
    fn its_own_open_tunnels_are_the_floor_whatever_the_report_says() {
        let b = backend();
        let _open: Vec<Session> = (0..5).map(|_| b.open_session()).collect();
        b.record_report(Some(0), None);
        assert_eq!(b.counted_sessions(), 5);
        let gone: Vec<Session> = (0..4).map(|_| b.open_session()).collect();
        drop(gone);
        assert_eq!(
            b.counted_sessions(),
            5,
            "no lower than its own, never negative"
        );
    }
}

//! Placement over a snapshot's pool: which backend a request goes to. No I/O, no clocks.
//!
//! In order: a request naming a room goes to the room's backend (rendezvous hashing over the
//! eligible backends, skipping overloaded ones), and the cookie follows the room; a verified pin
//! to a serving backend is honoured, even when that backend is full or draining; everyone else
//! goes to the eligible backend with the least load per weight, ties rotating. Because rooms
//! hash on names and ids and pins travel in the cookie, two rtcgate instances with the same
//! config decide alike without talking to each other.

use std::sync::atomic::Ordering;

use crate::config::WhenDown;
use crate::state::backend::AdminState;
use crate::state::snapshot::{Member, Pool};
use crate::sticky::CookiePin;

/// The two verdicts of placement are also label values of the metrics contract, so they are
/// declared with the metric names (`metrics.rs`).
pub use crate::metrics::{Outcome, Rejection};

/// Where a request goes, and whether the client needs a new cookie for it.
#[derive(Debug)]
pub struct Placement<'a> {
    pub member: &'a Member,
    pub outcome: Outcome,
    /// Issue `Set-Cookie`: the pin is new or changed, or due for a refresh.
    pub set_cookie: bool,
}

/// Whether a backend takes traffic from users already pinned to it: up and not in maintenance
/// (draining backends keep their users).
pub fn serving(m: &Member) -> bool {
    m.backend.is_up() && m.backend.takes_pinned()
}

/// Whether a backend can take a new pin: up, enabled, and its sessions and reservations below
/// its session cap.
pub fn eligible(m: &Member) -> bool {
    eligible_in(m, false)
}

/// [`eligible`], ignoring health when `fail_open`.
fn eligible_in(m: &Member, fail_open: bool) -> bool {
    let b = &m.backend;
    (fail_open || b.is_up()) && b.admin() == AdminState::Enabled && !full(m) && b.agent_weight() > 0
}

/// Whether a backend's sessions and reservations are at its session cap.
fn full(m: &Member) -> bool {
    m.backend.claimed() >= m.max_sessions
}

/// Whether a backend can take a room it does not hold yet: below its `max_rooms`, if any.
pub fn takes_new_room(m: &Member) -> bool {
    m.max_rooms == 0 || m.backend.rooms() < m.max_rooms
}

/// Whether every backend not in maintenance is failing its health checks. Placement then fails
/// open, as Envoy's panic threshold does: health checks can be what is broken (a bad path, a
/// partition of the check port), and trying the backends costs little: a refused connect is
/// retried once elsewhere and, when none answers, the client gets a 502 at once.
pub fn all_down(pool: &Pool) -> bool {
    !pool
        .members
        .iter()
        .any(|m| m.backend.is_up() && m.backend.takes_pinned())
}

/// A room named by a request.
#[derive(Debug, Clone, Copy)]
pub struct Room<'r> {
    pub name: &'r str,
    /// The backend holding this room's open tunnels in this instance, if any.
    pub live_on: Option<&'r str>,
}

/// Places a request on `pool`, given its cookie's pin and the room it names.
pub fn place<'a>(
    pool: &'a Pool,
    pin: CookiePin<'_>,
    room: Option<Room<'_>>,
    when_down: WhenDown,
) -> Result<Placement<'a>, Rejection> {
    let (pinned, refresh) = match pin {
        CookiePin::Valid { backend, refresh } => (pool.member(backend), refresh),
        _ => (None, false),
    };
    // A pin to a backend the pool does not know is as good as no pin, but counts as invalid.
    let afresh = match (pin, pinned) {
        (CookiePin::None, _) => Outcome::New,
        (CookiePin::Valid { .. }, Some(_)) => Outcome::Repinned,
        _ => Outcome::Invalid,
    };
    if let Some(room) = room {
        // A room with open tunnels stays where it is while its backend can take the user: a
        // room's own sessions must not count as the load that pushes it elsewhere.
        let live = room.live_on.and_then(|id| pool.member(id));
        let member = match live {
            Some(m) if eligible(m) || pinned.is_some_and(|p| std::ptr::eq(p, m) && serving(m)) => m,
            // Its backend is serving and enabled but at its session cap: the user waits rather
            // than split the room over two servers, whose participants could not meet.
            Some(m) if serving(m) && m.backend.admin() == AdminState::Enabled && full(m) => {
                return Err(Rejection::Full)
            }
            _ => room_backend(pool, room.name, pinned, None)?,
        };
        let same = pinned.is_some_and(|p| std::ptr::eq(p, member));
        return Ok(Placement {
            member,
            outcome: if same { Outcome::Hit } else { afresh },
            set_cookie: !same || refresh,
        });
    }
    let pin_serves = |m: &Member| serving(m) || (m.backend.takes_pinned() && all_down(pool));
    match pinned {
        Some(m) if pin_serves(m) => Ok(Placement {
            member: m,
            outcome: Outcome::Hit,
            set_cookie: refresh,
        }),
        Some(_) if when_down == WhenDown::Reject => Err(Rejection::Down),
        _ => Ok(Placement {
            member: least_loaded(pool, None)?,
            outcome: afresh,
            set_cookie: true,
        }),
    }
}

/// Places a request that names a backend (a machine pin), which wins over its cookie and its
/// room. A user pinned there already is admitted as by its cookie; anyone else when the
/// backend can take a new pin. A machine that is serving but full (or draining) refuses with
/// `Full`; one that is down or in maintenance follows `when_down`: `Down`, or the least loaded
/// backend with a new cookie.
pub fn place_on<'a>(
    pool: &'a Pool,
    machine: &'a Member,
    pin: CookiePin<'_>,
    when_down: WhenDown,
) -> Result<Placement<'a>, Rejection> {
    let (pinned_here, refresh) = match pin {
        CookiePin::Valid { backend, refresh } => (backend == &*machine.backend.id, refresh),
        _ => (false, false),
    };
    let afresh = match pin {
        CookiePin::None => Outcome::New,
        CookiePin::Valid { backend, .. } if pool.member(backend).is_some() => Outcome::Repinned,
        _ => Outcome::Invalid,
    };
    if pinned_here && serving(machine) {
        return Ok(Placement {
            member: machine,
            outcome: Outcome::Hit,
            set_cookie: refresh,
        });
    }
    if eligible(machine) {
        return Ok(Placement {
            member: machine,
            outcome: afresh,
            set_cookie: true,
        });
    }
    if serving(machine) {
        return Err(Rejection::Full);
    }
    match when_down {
        WhenDown::Reject => Err(Rejection::Down),
        WhenDown::Repin => Ok(Placement {
            member: least_loaded(pool, Some(&machine.backend.id))?,
            outcome: Outcome::Repinned,
            set_cookie: true,
        }),
    }
}

/// Places a user afresh after `failed` refused the connection, never on `failed`: where its
/// room lives now, when another participant already moved it to a backend that can take the
/// user (so a room's participants reconnecting together after its backend died stay whole);
/// else the room's next backend, or the least loaded one.
pub fn place_elsewhere<'a>(
    pool: &'a Pool,
    room: Option<Room<'_>>,
    failed: &str,
) -> Result<&'a Member, Rejection> {
    match room {
        Some(room) => {
            let moved = room
                .live_on
                .filter(|id| *id != failed)
                .and_then(|id| pool.member(id))
                .filter(|m| eligible(m));
            match moved {
                Some(m) => Ok(m),
                None => room_backend(pool, room.name, None, Some(failed)),
            }
        }
        None => least_loaded(pool, Some(failed)),
    }
}

/// The eligible member with the least load per weight, other than `skip`; ties go to the first
/// at or after a rotating start, so idle backends share new users.
pub fn least_loaded<'a>(pool: &'a Pool, skip: Option<&str>) -> Result<&'a Member, Rejection> {
    let found = least_loaded_in(pool, skip, false);
    match found {
        None if all_down(pool) => least_loaded_in(pool, skip, true),
        found => found,
    }
    .ok_or_else(|| no_room_reason(pool))
}

fn least_loaded_in<'a>(pool: &'a Pool, skip: Option<&str>, fail_open: bool) -> Option<&'a Member> {
    let members = &pool.members;
    let n = members.len();
    if n == 0 {
        return None;
    }
    let start = pool.rotor.fetch_add(1, Ordering::Relaxed) % n;
    // Slow start: a backend that came up lately counts with a share of its weight that grows
    // over `slow_start` (in thousandths; the clock is read only when slow start is on).
    let slow_start = pool.config.slow_start;
    // The backend's agent may report a share of its weight (HAProxy's `NN%`).
    let weight = |m: &Member| {
        let ramp = if slow_start.is_zero() {
            1000
        } else {
            m.backend.ramp(slow_start)
        };
        u64::from(m.weight) * ramp * u64::from(m.backend.agent_weight())
    };
    let mut best: Option<(&Member, u64, u64)> = None;
    for i in 0..n {
        let m = &members[(start + i) % n];
        if !eligible_in(m, fail_open) || skip.is_some_and(|s| *m.backend.id == *s) {
            continue;
        }
        let (load, w) = (u64::from(m.backend.load()), weight(m));
        // load / weight < best_load / best_weight, in integers.
        let better = best.is_none_or(|(_, bl, bw)| load * bw < bl * w);
        if better {
            best = Some((m, load, w));
        }
    }
    best.map(|(m, _, _)| m)
}

/// How much of a pool is free, over the backends that take new users (up, enabled, not
/// weighted to nothing by their agent).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Headroom {
    /// Their sessions at most, and counted.
    pub capacity: u64,
    pub sessions: u64,
    /// Their rooms at most, where every one caps rooms, and live.
    pub room_capacity: Option<u64>,
    pub rooms: u64,
    /// The free share of sessions, or of rooms where rooms are capped, whichever is less:
    /// 0 when nothing takes new users.
    pub share: f64,
}

pub fn headroom(pool: &Pool) -> Headroom {
    let taking = pool.members.iter().filter(|m| {
        let b = &m.backend;
        b.is_up() && b.admin() == AdminState::Enabled && b.agent_weight() > 0
    });
    let (mut capacity, mut sessions, mut room_capacity, mut rooms, mut all_capped) =
        (0u64, 0u64, 0u64, 0u64, true);
    for m in taking {
        capacity += u64::from(m.max_sessions);
        sessions += u64::from(m.backend.claimed().min(m.max_sessions));
        all_capped &= m.max_rooms > 0;
        room_capacity += u64::from(m.max_rooms);
        rooms += u64::from(m.backend.rooms().min(m.max_rooms));
    }
    let free = |cap: u64, used: u64| match cap {
        0 => 0.0,
        cap => (cap - used.min(cap)) as f64 / cap as f64,
    };
    let room_capacity = (all_capped && capacity > 0).then_some(room_capacity);
    let mut share = free(capacity, sessions);
    if let Some(rc) = room_capacity {
        share = share.min(free(rc, rooms));
    }
    Headroom {
        capacity,
        sessions,
        room_capacity,
        rooms,
        share,
    }
}

/// Full when backends are serving but none can take a new pin; otherwise nothing is up.
fn no_room_reason(pool: &Pool) -> Rejection {
    if pool
        .members
        .iter()
        .any(|m| m.backend.is_up() && m.backend.admin() == AdminState::Enabled)
    {
        Rejection::Full
    } else {
        Rejection::NoBackend
    }
}

/// The backend of `room`: members ranked by rendezvous score, the first that can take the user.
/// A member can if it is eligible and not overloaded, or if it is the user's own serving pin.
/// Overloaded follows HAProxy's `hash-balance-factor`: load at or over
/// `ceil(factor × (total load + 1) × weight / total weight)` over the eligible members.
fn room_backend<'a>(
    pool: &'a Pool,
    room: &str,
    pinned: Option<&Member>,
    skip: Option<&str>,
) -> Result<&'a Member, Rejection> {
    match room_backend_in(pool, room, pinned, skip, false) {
        None if all_down(pool) => room_backend_in(pool, room, pinned, skip, true),
        found => found,
    }
    .ok_or_else(|| {
        // Backends that could take a user, every one at its room cap: the rooms are full.
        let could = |m: &&Member| eligible(m) && skip.is_none_or(|s| *m.backend.id != *s);
        let mut could_take = pool.members.iter().filter(could).peekable();
        if could_take.peek().is_some() && could_take.all(|m| !takes_new_room(m)) {
            Rejection::RoomsFull
        } else {
            no_room_reason(pool)
        }
    })
}

fn room_backend_in<'a>(
    pool: &'a Pool,
    room: &str,
    pinned: Option<&Member>,
    skip: Option<&str>,
    fail_open: bool,
) -> Option<&'a Member> {
    // A new room goes only where rooms are not at their cap, the user's own pin included.
    let eligible = |m: &Member| {
        eligible_in(m, fail_open) && skip.is_none_or(|s| *m.backend.id != *s) && takes_new_room(m)
    };
    let (mut total_load, mut total_weight) = (0u64, 0u64);
    for m in pool.members.iter().filter(|m| eligible(m)) {
        total_load += u64::from(m.backend.load());
        total_weight += u64::from(m.weight);
    }
    let factor = pool.config.room_balance_factor;
    let can_take = |m: &Member| {
        if pinned.is_some_and(|p| std::ptr::eq(p, m)) && serving(m) && takes_new_room(m) {
            return true;
        }
        if !eligible(m) {
            return false;
        }
        if factor == 0.0 {
            // The bounded-load rule is off: a room goes to its first backend that has space.
            return true;
        }
        let share = u64::from(m.weight) as f64 / total_weight as f64;
        let slots = (factor * (total_load + 1) as f64 * share).ceil();
        (m.backend.load() as f64) < slots
    };
    let room_hash = xxhash_rust::xxh3::xxh3_64(room.as_bytes());
    let score = |m: &Member| -> f64 {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(&room_hash.to_le_bytes(), m.id_hash);
        if pool.uniform_weight {
            return h as f64;
        }
        // Weighted rendezvous: -w / ln(u), u uniform in (0, 1).
        let u = (h as f64 + 0.5) / 18_446_744_073_709_551_616.0;
        -f64::from(m.weight) / u.ln()
    };
    let mut ranked: Vec<(f64, &Member)> = pool.members.iter().map(|m| (score(m), m)).collect();
    ranked.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    ranked.iter().map(|&(_, m)| m).find(|m| can_take(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HealthConfig, PoolConfig};
    use crate::state::backend::Backend;
    use std::time::Duration;

    fn pool(n: usize) -> Pool {
        pool_with(n, 2, Duration::ZERO)
    }

    fn pool_with(n: usize, max_sessions: u32, slow_start: Duration) -> Pool {
        let members = (0..n)
            .map(|i| {
                let b = Backend::new(
                    "media",
                    &format!("m{i}"),
                    ([127, 0, 0, 1], 9000 + i as u16).into(),
                    &crate::metrics::Metrics::new(),
                );
                Member::new(b, 1, max_sessions)
            })
            .collect();
        let config = PoolConfig {
            name: "media".into(),
            hosts: vec![],
            room_param: Some("room".into()),
            machine_param: Some("machine".into()),
            room_balance_factor: 1.25,
            hard_cap: 2.0,
            max_sessions,
            max_rooms: 0,
            scale: None,
            drain_timeout: Duration::from_secs(1),
            on_down: crate::config::OnDown::Close,
            slow_start,
            health: HealthConfig {
                path: None,
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                rise: 1,
                fall: 1,
                port: 0,
            },
            backends: vec![],
            dns_backends: vec![],
        };
        Pool::new(
            config,
            members,
            crate::metrics::Metrics::new().pool("media"),
        )
    }

    fn valid(id: &str) -> CookiePin<'_> {
        CookiePin::Valid {
            backend: id,
            refresh: false,
        }
    }

    #[test]
    fn a_pin_to_a_full_or_draining_backend_is_honoured() {
        let p = pool(3);
        let m1 = &p.members[1].backend;
        let _s: Vec<_> = (0..2).map(|_| m1.open_session()).collect();
        let got = place(&p, valid("m1"), None, WhenDown::Repin).expect("placed");
        assert_eq!(
            (&*got.member.backend.id, got.outcome, got.set_cookie),
            ("m1", Outcome::Hit, false)
        );
        m1.set_admin(AdminState::Draining);
        assert_eq!(
            place(&p, valid("m1"), None, WhenDown::Repin)
                .expect("placed")
                .outcome,
            Outcome::Hit
        );
        // New users avoid it.
        for _ in 0..6 {
            assert_ne!(
                &*place(&p, CookiePin::None, None, WhenDown::Repin)
                    .expect("placed")
                    .member
                    .backend
                    .id,
                "m1"
            );
        }
    }

    #[test]
    fn a_pin_to_a_down_backend_repins_or_rejects() {
        let p = pool(3);
        p.members[0].backend.set_up(false);
        let got = place(&p, valid("m0"), None, WhenDown::Repin).expect("placed");
        assert_ne!(&*got.member.backend.id, "m0");
        assert_eq!((got.outcome, got.set_cookie), (Outcome::Repinned, true));
        assert_eq!(
            place(&p, valid("m0"), None, WhenDown::Reject).err(),
            Some(Rejection::Down)
        );
        p.members[1].backend.set_admin(AdminState::Maint);
        assert_eq!(
            place(&p, valid("m1"), None, WhenDown::Reject).err(),
            Some(Rejection::Down)
        );
    }

    #[test]
    fn unknown_backend_and_invalid_cookies_are_placed_afresh() {
        let p = pool(2);
        assert_eq!(
            place(&p, valid("gone"), None, WhenDown::Reject)
                .expect("placed")
                .outcome,
            Outcome::Invalid
        );
        assert_eq!(
            place(&p, CookiePin::Invalid, None, WhenDown::Reject)
                .expect("placed")
                .outcome,
            Outcome::Invalid
        );
    }

    #[test]
    fn full_and_no_backend_are_told_apart() {
        let p = pool(2);
        let _s: Vec<_> = p
            .members
            .iter()
            .flat_map(|m| [m.backend.open_session(), m.backend.open_session()])
            .collect();
        assert_eq!(
            place(&p, CookiePin::None, None, WhenDown::Repin).err(),
            Some(Rejection::Full)
        );
        for m in &p.members {
            m.backend.set_up(false);
        }
        assert_eq!(
            place(&p, CookiePin::None, None, WhenDown::Repin).err(),
            Some(Rejection::NoBackend)
        );
    }

    #[test]
    fn a_room_decides_over_the_cookie_and_is_stable() {
        let p = pool(3);
        let home = place(
            &p,
            CookiePin::None,
            Some(Room {
                name: "standup",
                live_on: None,
            }),
            WhenDown::Repin,
        )
        .expect("placed")
        .member
        .backend
        .id
        .clone();
        for _ in 0..10 {
            assert_eq!(
                place(
                    &p,
                    CookiePin::None,
                    Some(Room {
                        name: "standup",
                        live_on: None
                    }),
                    WhenDown::Repin
                )
                .expect("placed")
                .member
                .backend
                .id,
                home
            );
        }
        let other = p
            .members
            .iter()
            .find(|m| m.backend.id != home)
            .expect("other");
        let got = place(
            &p,
            valid(&other.backend.id),
            Some(Room {
                name: "standup",
                live_on: None,
            }),
            WhenDown::Repin,
        )
        .expect("placed");
        assert_eq!(
            (got.member.backend.id.clone(), got.outcome, got.set_cookie),
            (home.clone(), Outcome::Repinned, true)
        );
        let got = place(
            &p,
            valid(&home),
            Some(Room {
                name: "standup",
                live_on: None,
            }),
            WhenDown::Repin,
        )
        .expect("placed");
        assert_eq!((got.outcome, got.set_cookie), (Outcome::Hit, false));
    }

    #[test]
    fn a_live_room_on_a_full_backend_waits_rather_than_splits() {
        let p = pool_with(3, 2, Duration::ZERO);
        let room = |live_on| {
            Some(Room {
                name: "call",
                live_on,
            })
        };
        let home = place(&p, CookiePin::None, room(None), WhenDown::Repin)
            .expect("placed")
            .member;
        let held: Vec<_> = (0..2)
            .filter_map(|_| home.backend.reserve(Some(2)))
            .collect();
        assert_eq!(held.len(), 2, "filled");
        let got = place(
            &p,
            CookiePin::None,
            room(Some(&home.backend.id)),
            WhenDown::Repin,
        );
        assert_eq!(got.err(), Some(Rejection::Full), "the room stays whole");
        let other = place(&p, CookiePin::None, room(None), WhenDown::Repin)
            .expect("a room not live here is placed afresh")
            .member;
        assert!(!std::ptr::eq(home, other));
    }

    #[test]
    fn with_the_balance_factor_off_a_room_goes_to_its_first_backend_however_loaded() {
        let mut p = pool(3);
        p.config.room_balance_factor = 0.0;
        let room = Some(Room {
            name: "big",
            live_on: None,
        });
        let first = place(&p, CookiePin::None, room, WhenDown::Repin)
            .expect("placed")
            .member;
        let _busy: Vec<_> = (0..50).map(|_| first.backend.start_request()).collect();
        let again = place(&p, CookiePin::None, room, WhenDown::Repin)
            .expect("placed")
            .member;
        assert!(std::ptr::eq(first, again), "no bounded-load spill");
    }

    #[test]
    fn a_live_room_stays_on_its_backend_however_loaded() {
        let p = pool(3);
        let room = Some(Room {
            name: "big",
            live_on: None,
        });
        let home = place(&p, CookiePin::None, room, WhenDown::Repin)
            .expect("placed")
            .member;
        let _busy: Vec<_> = (0..10).map(|_| home.backend.start_request()).collect();
        let live = Some(Room {
            name: "big",
            live_on: Some(&home.backend.id),
        });
        let got = place(&p, CookiePin::None, live, WhenDown::Repin)
            .expect("placed")
            .member;
        assert!(std::ptr::eq(home, got));
    }

    #[test]
    fn a_room_skips_an_overloaded_backend() {
        let p = pool(3);
        let home = place(
            &p,
            CookiePin::None,
            Some(Room {
                name: "big",
                live_on: None,
            }),
            WhenDown::Repin,
        )
        .expect("placed")
        .member;
        let _busy: Vec<_> = (0..10).map(|_| home.backend.start_request()).collect();
        let moved = place(
            &p,
            CookiePin::None,
            Some(Room {
                name: "big",
                live_on: None,
            }),
            WhenDown::Repin,
        )
        .expect("placed")
        .member;
        assert!(
            !std::ptr::eq(home, moved),
            "an overloaded room backend should be skipped"
        );
    }

    /// Slow start: a backend that came up a tenth of `slow_start` ago takes about a tenth of
    /// the new users an established one takes; once `slow_start` has passed, they even out.
    #[test]
    fn slow_start_ramps_a_backend_that_came_up() {
        let slow = Duration::from_secs(100);
        let p = pool_with(2, 10_000, slow);
        let now = std::time::Instant::now();
        p.members[0]
            .backend
            .came_up_at(now - Duration::from_secs(500));
        p.members[1]
            .backend
            .came_up_at(now - Duration::from_secs(10));
        let mut held = Vec::new();
        for _ in 0..220 {
            let m = least_loaded(&p, None).expect("placed");
            held.push(m.backend.open_session());
        }
        let fresh = p.members[1].backend.sessions();
        assert!(
            (15..=25).contains(&fresh),
            "the new backend took {fresh} of 220"
        );
        p.members[1]
            .backend
            .came_up_at(now - Duration::from_secs(500));
        for _ in 0..200 {
            let m = least_loaded(&p, None).expect("placed");
            held.push(m.backend.open_session());
        }
        let (a, b) = (
            p.members[0].backend.sessions(),
            p.members[1].backend.sessions(),
        );
        assert!(a.abs_diff(b) <= 1, "after the ramp: {a} and {b}");
    }
}

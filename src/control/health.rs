//! Active health checks: one task per backend, probing at once and then every `interval` (with a
//! little jitter so a pool's checks do not beat in step), each probe under `timeout`. Results are
//! recorded by [`Backend::record_health`], the one place that also records the failures the
//! data path sees (passive checks) and logs the transitions. Checks go on for draining and
//! maintenance backends, so their health is known before they are enabled again.
//!
//! [`HealthCheckers::sync`] makes the running checkers match a snapshot: a backend that stays
//! with the same settings keeps its checker (and its counters); one that leaves loses it.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::{HealthConfig, OnDown};
use crate::state::backend::{AdminState, Backend, Check};
use crate::state::events::Events;
use crate::state::snapshot::Snapshot;

/// Checker tasks by key, each with the settings it was started with: [`Checkers::sync`] keeps
/// a checker whose settings stay, restarts one whose settings changed, starts new ones and
/// stops those no longer wanted. Backends' and TURN servers' checkers alike.
pub struct Checkers<K, S> {
    running: Mutex<HashMap<K, (S, CancellationToken)>>,
}

impl<K, S> Default for Checkers<K, S> {
    fn default() -> Self {
        Checkers {
            running: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, S: PartialEq> Checkers<K, S> {
    /// Makes the running checkers exactly `wanted`: (key, settings, what `start` needs).
    /// `start` spawns a checker that stops when its token is cancelled. Must be called from
    /// within a tokio runtime.
    pub fn sync<T>(
        &self,
        wanted: impl IntoIterator<Item = (K, S, T)>,
        start: impl Fn(T, &S, CancellationToken),
    ) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::new();
        for (key, settings, target) in wanted {
            match running.remove(&key) {
                Some((s, stop)) if s == settings => {
                    next.insert(key, (s, stop));
                }
                old => {
                    if let Some((_, stop)) = old {
                        stop.cancel();
                    }
                    let stop = CancellationToken::new();
                    start(target, &settings, stop.clone());
                    next.insert(key, (settings, stop));
                }
            }
        }
        for (_, (_, gone)) in running.drain() {
            gone.cancel();
        }
        *running = next;
    }

    /// Stops every checker.
    pub fn stop_all(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for (_, (_, stop)) in running.drain() {
            stop.cancel();
        }
    }
}

/// A backend checker's settings: its pool's health settings, where it checks, `on_down`.
type BackendCheck = (HealthConfig, SocketAddr, OnDown);

/// The checker tasks, one per backend of the current snapshot.
pub struct HealthCheckers {
    checkers: Checkers<(Arc<str>, Arc<str>, SocketAddr), BackendCheck>,
    /// Where the checkers record what they see happen (a backend down or up, its agent's drain).
    events: Arc<Events>,
}

impl HealthCheckers {
    pub fn new(events: Arc<Events>) -> HealthCheckers {
        HealthCheckers {
            checkers: Checkers::default(),
            events,
        }
    }

    /// Starts, keeps or stops checkers so that exactly the members of `snap` are checked, each
    /// with its pool's settings. Must be called from within a tokio runtime.
    pub fn sync(&self, snap: &Snapshot) {
        let wanted = snap.pools.iter().flat_map(|pool| {
            pool.members.iter().map(|m| {
                let b = &m.backend;
                let settings = (
                    pool.config.health.clone(),
                    m.check_addr,
                    pool.config.on_down,
                );
                ((b.pool.clone(), b.id.clone(), b.addr), settings, b.clone())
            })
        });
        self.checkers
            .sync(wanted, |backend, (config, addr, on_down), stop| {
                let events = self.events.clone();
                tokio::spawn(check_loop(
                    backend,
                    *addr,
                    config.clone(),
                    *on_down,
                    events,
                    stop,
                ));
            });
    }

    /// Stops every checker.
    pub fn stop_all(&self) {
        self.checkers.stop_all();
    }
}

async fn check_loop(
    backend: Arc<Backend>,
    addr: SocketAddr,
    config: HealthConfig,
    on_down: OnDown,
    events: Arc<Events>,
    stop: CancellationToken,
) {
    loop {
        let result = tokio::select! {
            r = probe(addr, &config) => r,
            _ = stop.cancelled() => return,
        };
        let (result, agent) = result;
        crate::state::fds::reserve().refill();
        let result = match result {
            Probed::Seen(r) => r,
            // rtcgate had no descriptor to check with: that says nothing about the backend.
            Probed::NoFds => {
                tokio::select! {
                    _ = tokio::time::sleep(jittered(config.interval)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        // The backend's agent may say it is down, whatever the status line said.
        let result = match (&agent, result) {
            (Some(a), Ok(detail)) if a.down => Err(format!("{detail}; its agent says down")),
            (_, r) => r,
        };
        let check = match result {
            Ok(detail) => Check::Probe {
                passed: true,
                detail,
            },
            Err(detail) => Check::Probe {
                passed: false,
                detail,
            },
        };
        backend.record_health(check, config.rise, config.fall, on_down, &events);
        if let Some(a) = agent {
            backend.record_report(a.sessions, a.rooms);
            if let Some(w) = a.weight {
                backend.set_agent_weight(w);
            }
            if let Some(state) = a.admin {
                backend.agent_admin(state, on_down, &events);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(jittered(config.interval)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// `interval` ± 10 %.
pub(super) fn jittered(interval: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_or(0.5, |_| {
            f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX)
        });
    interval.mul_f64(0.9 + 0.2 * r)
}

/// What a backend's agent said in `X-Rtcgate-Agent`: HAProxy agent-check words (`up`/`ready`,
/// `drain`, `maint`, `down`, `NN%`) and its own counts across every instance (`sessions=N`,
/// `rooms=N`), separated by spaces or commas. Unknown words are ignored.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Agent {
    pub admin: Option<AdminState>,
    pub down: bool,
    pub weight: Option<u32>,
    pub sessions: Option<u32>,
    pub rooms: Option<u32>,
}

pub const AGENT_HEADER: &str = "x-rtcgate-agent";

impl Agent {
    pub fn parse(s: &str) -> Agent {
        let mut a = Agent::default();
        for word in s
            .split(|c: char| c.is_ascii_whitespace() || c == ',')
            .filter(|w| !w.is_empty())
        {
            let w = word.to_ascii_lowercase();
            match w.as_str() {
                "up" | "ready" => a.admin = Some(AdminState::Enabled),
                "drain" => a.admin = Some(AdminState::Draining),
                "maint" => a.admin = Some(AdminState::Maint),
                "down" | "fail" | "failed" | "stopped" => a.down = true,
                _ => {
                    if let Some(p) = w.strip_suffix('%') {
                        a.weight = p.parse().ok().or(a.weight);
                    } else if let Some(n) = w.strip_prefix("sessions=") {
                        a.sessions = n.parse().ok().or(a.sessions);
                    } else if let Some(n) = w.strip_prefix("rooms=") {
                        a.rooms = n.parse().ok().or(a.rooms);
                    }
                }
            }
        }
        a
    }
}

/// What a probe found: what the backend did (`Ok` and `Err` both say what was seen), or that
/// rtcgate itself was out of file descriptors, reserve included.
enum Probed {
    Seen(Result<String, String>),
    NoFds,
}

/// One probe: a TCP connect, or an HTTP GET whose 2xx passes; an HTTP answer may carry the
/// backend agent's word. A connect that meets EMFILE takes a descriptor from the reserve and
/// tries again.
async fn probe(addr: SocketAddr, config: &HealthConfig) -> (Probed, Option<Agent>) {
    use crate::state::fds::{out_of_fds, reserve};
    let mut agent = None;
    let mut no_fds = false;
    let attempt = async {
        let connected = match TcpStream::connect(addr).await {
            Err(e) if out_of_fds(&e) && reserve().release("health check", &e) => {
                TcpStream::connect(addr).await
            }
            r => r,
        };
        let stream = connected.map_err(|e| {
            no_fds = out_of_fds(&e);
            format!("connect: {e}")
        })?;
        let Some(path) = &config.path else {
            return Ok("TCP connect".to_string());
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let req = Request::get(path.as_str())
            .header(header::HOST, addr.to_string())
            .header(header::USER_AGENT, "rtcgate-health")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = resp.status();
        agent = resp
            .headers()
            .get(AGENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(Agent::parse);
        let seen = format!("GET {path}: {}", status.as_u16());
        if status.is_success() {
            Ok(seen)
        } else {
            Err(seen)
        }
    };
    let result = tokio::time::timeout(config.timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", config.timeout)));
    if no_fds {
        return (Probed::NoFds, None);
    }
    (Probed::Seen(result), agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_words_are_read_as_haproxy_and_rtcgate_write_them() {
        assert_eq!(
            Agent::parse("up 75%, sessions=499 rooms=7"),
            Agent {
                admin: Some(AdminState::Enabled),
                down: false,
                weight: Some(75),
                sessions: Some(499),
                rooms: Some(7),
            }
        );
        assert_eq!(Agent::parse("DRAIN").admin, Some(AdminState::Draining));
        assert_eq!(Agent::parse("maint").admin, Some(AdminState::Maint));
        assert!(Agent::parse("down").down);
        assert_eq!(Agent::parse("sessions=lots x=1 %"), Agent::default());
    }
}

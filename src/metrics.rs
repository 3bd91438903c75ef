//! The owned Prometheus registry and every metric handle; all metric names live here.
//!
//! Hot-path handles are resolved ahead of time: per backend when the backend is created
//! ([`BackendMetrics`]), per pool when a snapshot is built ([`PoolMetrics`]). A request then
//! costs a few atomic adds. Gauges that mirror runtime state (up, sessions, state) are set from
//! that state at scrape time, so they are exact and cost nothing per request. Series of removed
//! backends are removed.

use std::sync::{Mutex, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::balance::{Outcome, Rejection};
use crate::pool::{AdminState, Backend};
use crate::snapshot::Snapshot;

/// Every rtcgate metric.
pub struct Metrics {
    registry: Registry,
    /// Serialises scrapes: gauges are reset and refilled from runtime state on each.
    render: Mutex<()>,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    backend_up: IntGaugeVec,
    backend_sessions: IntGaugeVec,
    backend_inflight: IntGaugeVec,
    backend_state: IntGaugeVec,
    tunnels: IntCounterVec,
    tunnel_duration: HistogramVec,
    sticky: IntCounterVec,
    rejected: IntCounterVec,
    health_checks: IntCounterVec,
    upstream_connect_errors: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub client_connections: IntGauge,
    pub client_connections_total: IntCounterVec,
    pub tls_handshake_failures: IntCounter,
    /// Client connections (and the tunnels they became) each worker thread serves; the
    /// accept loops balance on it.
    pub worker_connections: IntGaugeVec,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric definition");
    r.register(Box::new(v.clone()))
        .expect("each metric registered once");
    v
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let v = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric definition");
    r.register(Box::new(v.clone()))
        .expect("each metric registered once");
    v
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let v = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("a valid metric definition");
    r.register(Box::new(v.clone()))
        .expect("each metric registered once");
    v
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let pb = &["pool", "backend"];
        let client_connections =
            IntGauge::new("rtcgate_client_connections", "Client connections open now.")
                .expect("a valid metric definition");
        r.register(Box::new(client_connections.clone()))
            .expect("each metric registered once");
        let tls_handshake_failures = IntCounter::new(
            "rtcgate_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out.",
        )
        .expect("a valid metric definition");
        r.register(Box::new(tls_handshake_failures.clone()))
            .expect("each metric registered once");
        Metrics {
            requests: counter_vec(&r, "rtcgate_requests_total", "Requests answered, by backend and status code (backend \"\" when none was chosen).", &["pool", "backend", "code"]),
            request_duration: histogram_vec(&r, "rtcgate_request_duration_seconds", "Time from request to response head.", &["pool"], prometheus::DEFAULT_BUCKETS.to_vec()),
            backend_up: gauge_vec(&r, "rtcgate_backend_up", "1 when the backend passes its health checks.", pb),
            backend_sessions: gauge_vec(&r, "rtcgate_backend_sessions", "Open WebSocket tunnels.", pb),
            backend_inflight: gauge_vec(&r, "rtcgate_backend_inflight_requests", "Requests in flight.", pb),
            backend_state: gauge_vec(&r, "rtcgate_backend_state", "1 for the backend's current state (up, down, draining, maint).", &["pool", "backend", "state"]),
            tunnels: counter_vec(&r, "rtcgate_websocket_tunnels_total", "WebSocket tunnels opened.", pb),
            tunnel_duration: histogram_vec(&r, "rtcgate_websocket_tunnel_duration_seconds", "How long tunnels stayed open.", &["pool"], vec![1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0]),
            sticky: counter_vec(&r, "rtcgate_sticky_total", "What became of requests' pins.", &["pool", "outcome"]),
            rejected: counter_vec(&r, "rtcgate_rejected_total", "Requests turned away with 503.", &["pool", "reason"]),
            health_checks: counter_vec(&r, "rtcgate_health_checks_total", "Active health checks, by result.", &["pool", "backend", "result"]),
            upstream_connect_errors: counter_vec(&r, "rtcgate_upstream_connect_errors_total", "Failed TCP connects to a backend.", pb),
            config_reloads: counter_vec(&r, "rtcgate_config_reloads_total", "Configuration reloads, by result.", &["result"]),
            client_connections,
            client_connections_total: counter_vec(&r, "rtcgate_client_connections_total", "Client connections accepted, by listener.", &["listener"]),
            tls_handshake_failures,
            worker_connections: gauge_vec(&r, "rtcgate_worker_connections", "Client connections and tunnels each worker thread serves now.", &["worker"]),
            render: Mutex::new(()),
            registry: r,
        }
    }

    /// The handles of one backend, resolved once.
    pub fn backend(&self, pool: &str, id: &str) -> BackendMetrics {
        BackendMetrics {
            pool: pool.to_string(),
            id: id.to_string(),
            by_code: std::iter::repeat_with(OnceLock::new).take(CODES).collect(),
            requests: self.requests.clone(),
            tunnels: self.tunnels.with_label_values(&[pool, id]),
            connect_errors: self.upstream_connect_errors.with_label_values(&[pool, id]),
            checks_pass: self.health_checks.with_label_values(&[pool, id, "pass"]),
            checks_fail: self.health_checks.with_label_values(&[pool, id, "fail"]),
        }
    }

    /// The handles of one pool, resolved once per snapshot.
    pub fn pool(&self, pool: &str) -> PoolMetrics {
        PoolMetrics {
            name: pool.to_string(),
            duration: self.request_duration.with_label_values(&[pool]),
            tunnel_duration: self.tunnel_duration.with_label_values(&[pool]),
            sticky: [
                Outcome::New,
                Outcome::Hit,
                Outcome::Repinned,
                Outcome::Invalid,
            ]
            .map(|o| self.sticky.with_label_values(&[pool, o.as_str()])),
            rejected: [Rejection::Full, Rejection::NoBackend, Rejection::Down]
                .map(|r| self.rejected.with_label_values(&[pool, r.as_str()])),
            requests: self.requests.clone(),
        }
    }

    /// Removes every series of a backend that left the configuration.
    pub fn remove_backend(&self, m: &BackendMetrics) {
        let (pool, id) = (m.pool.as_str(), m.id.as_str());
        for (i, c) in m.by_code.iter().enumerate() {
            if c.get().is_some() {
                let code = (FIRST_CODE + i as u16).to_string();
                let _ = self.requests.remove_label_values(&[pool, id, &code]);
            }
        }
        for v in [&self.tunnels, &self.upstream_connect_errors] {
            let _ = v.remove_label_values(&[pool, id]);
        }
        for result in ["pass", "fail"] {
            let _ = self.health_checks.remove_label_values(&[pool, id, result]);
        }
    }

    /// The Prometheus text exposition of everything, with state gauges read from `snap`.
    pub fn render(&self, snap: &Snapshot) -> String {
        let _one_at_a_time = self.render.lock().unwrap_or_else(|e| e.into_inner());
        for g in [
            &self.backend_up,
            &self.backend_sessions,
            &self.backend_inflight,
            &self.backend_state,
        ] {
            g.reset();
        }
        for pool in &snap.pools {
            for m in &pool.members {
                let b = &m.backend;
                let labels = [&*b.pool, &*b.id];
                self.backend_up
                    .with_label_values(&labels)
                    .set(i64::from(b.is_up()));
                self.backend_sessions
                    .with_label_values(&labels)
                    .set(i64::from(b.sessions()));
                self.backend_inflight
                    .with_label_values(&labels)
                    .set(i64::from(b.inflight()));
                for state in ["up", "down", "draining", "maint"] {
                    let v = i64::from(state_name(b) == state);
                    self.backend_state
                        .with_label_values(&[&b.pool, &b.id, state])
                        .set(v);
                }
            }
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail but for metric families the registry itself built.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A backend's state as `/status` and the metrics name it: maintenance, else health, else
/// draining.
pub fn state_name(b: &Backend) -> &'static str {
    match (b.admin(), b.is_up()) {
        (AdminState::Maint, _) => "maint",
        (_, false) => "down",
        (AdminState::Draining, true) => "draining",
        (AdminState::Enabled, true) => "up",
    }
}

/// Status codes 100–599 get a lazily resolved handle each.
const FIRST_CODE: u16 = 100;
const CODES: usize = 500;

/// One backend's metric handles.
pub struct BackendMetrics {
    pool: String,
    id: String,
    /// `rtcgate_requests_total` by status code, resolved on a code's first use.
    by_code: Vec<OnceLock<IntCounter>>,
    requests: IntCounterVec,
    pub tunnels: IntCounter,
    pub connect_errors: IntCounter,
    pub checks_pass: IntCounter,
    pub checks_fail: IntCounter,
}

impl std::fmt::Debug for BackendMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendMetrics")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl BackendMetrics {
    /// Counts one answered request.
    pub fn answered(&self, code: u16) {
        let Some(slot) = code
            .checked_sub(FIRST_CODE)
            .and_then(|i| self.by_code.get(usize::from(i)))
        else {
            return;
        };
        slot.get_or_init(|| {
            self.requests
                .with_label_values(&[&self.pool, &self.id, &code.to_string()])
        })
        .inc();
    }
}

/// One pool's metric handles.
pub struct PoolMetrics {
    name: String,
    pub duration: Histogram,
    pub tunnel_duration: Histogram,
    sticky: [IntCounter; 4],
    rejected: [IntCounter; 3],
    requests: IntCounterVec,
}

impl std::fmt::Debug for PoolMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolMetrics")
            .field("pool", &self.name)
            .finish_non_exhaustive()
    }
}

impl PoolMetrics {
    pub fn sticky(&self, outcome: Outcome) {
        let i = match outcome {
            Outcome::New => 0,
            Outcome::Hit => 1,
            Outcome::Repinned => 2,
            Outcome::Invalid => 3,
        };
        self.sticky[i].inc();
    }

    pub fn rejected(&self, reason: Rejection) {
        let i = match reason {
            Rejection::Full => 0,
            Rejection::NoBackend => 1,
            Rejection::Down => 2,
        };
        self.rejected[i].inc();
    }

    /// Counts a request answered without a backend (rejected, malformed).
    pub fn answered_without_backend(&self, code: u16) {
        self.requests
            .with_label_values(&[&self.name, "", &code.to_string()])
            .inc();
    }
}

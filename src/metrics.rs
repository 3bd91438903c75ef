//! The owned Prometheus registry and every metric handle; all metric names, and the label values
//! of the contract (`outcome`, `reason`, `state`), live here. It imports no other module of
//! rtcgate: the layers above hand it plain values.
//!
//! Hot-path handles are resolved ahead of time: per backend when the backend is created
//! ([`BackendMetrics`]), per pool when a snapshot is built ([`PoolMetrics`]). A request then
//! costs a few atomic adds. Gauges that mirror runtime state (up, sessions, state) are set from
//! that state at scrape time ([`Metrics::render`] takes it as [`BackendGauges`]), so they are
//! exact and cost nothing per request. Series of removed backends are removed.

use std::sync::{Mutex, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Why no backend could take a request: the `reason` label of `rtcgate_rejected_total`.
/// Placement (`balance.rs`) decides it; the handler maps it to the client's 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Backends are up, but every one is at its `max_sessions`.
    Full,
    /// No backend is up and enabled.
    NoBackend,
    /// The pinned backend is down and `when_down = "reject"`.
    Down,
    /// A new room, and every backend that could take it holds `max_rooms` rooms.
    RoomsFull,
}

impl Rejection {
    const ALL: [Rejection; 4] = [
        Rejection::Full,
        Rejection::NoBackend,
        Rejection::Down,
        Rejection::RoomsFull,
    ];

    /// The `reason` label of `rtcgate_rejected_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Full => "full",
            Rejection::NoBackend => "no_backend",
            Rejection::Down => "down",
            Rejection::RoomsFull => "rooms_full",
        }
    }
}

/// What happened to a request's pin: the `outcome` label of `rtcgate_sticky_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No cookie: placed afresh.
    New,
    /// The cookie's backend took the request.
    Hit,
    /// A valid pin moved: its backend was down, or the room lives elsewhere.
    Repinned,
    /// A cookie that did not verify, or named no backend of the pool: placed afresh.
    Invalid,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::New,
        Outcome::Hit,
        Outcome::Repinned,
        Outcome::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::New => "new",
            Outcome::Hit => "hit",
            Outcome::Repinned => "repinned",
            Outcome::Invalid => "invalid",
        }
    }
}

/// Why a tunnel ended: the `reason` label of `rtcgate_tunnels_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// The client closed it, or its connection failed.
    Client,
    /// The backend closed it, or its connection failed.
    Backend,
    /// Nothing moved for `tunnel_idle_timeout`.
    Idle,
    /// rtcgate closed it: the backend was drained past its deadline, or removed and past it.
    Drain,
    /// rtcgate closed it: health checks marked the backend down.
    Down,
    /// rtcgate closed it: the backend was put in maintenance.
    Maint,
    /// rtcgate closed it: rtcgate is shutting down.
    Shutdown,
}

impl TunnelEnd {
    const ALL: [TunnelEnd; 7] = [
        TunnelEnd::Client,
        TunnelEnd::Backend,
        TunnelEnd::Idle,
        TunnelEnd::Drain,
        TunnelEnd::Down,
        TunnelEnd::Maint,
        TunnelEnd::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TunnelEnd::Client => "client",
            TunnelEnd::Backend => "backend",
            TunnelEnd::Idle => "idle",
            TunnelEnd::Drain => "drain",
            TunnelEnd::Down => "down",
            TunnelEnd::Maint => "maint",
            TunnelEnd::Shutdown => "shutdown",
        }
    }
}

/// The `state` label values of `rtcgate_backend_state`.
pub const BACKEND_STATES: [&str; 4] = ["up", "down", "draining", "maint"];

/// One pool's capacity as the scrape-time gauges show it.
#[derive(Debug, Clone, Copy)]
pub struct PoolGauges<'a> {
    pub pool: &'a str,
    /// Sessions the backends taking new users hold at most.
    pub capacity: u64,
    /// The free share of sessions, or of rooms where rooms are capped, whichever is less.
    pub headroom: f64,
}

/// One backend's runtime state as the scrape-time gauges show it.
#[derive(Debug, Clone, Copy)]
pub struct BackendGauges<'a> {
    pub pool: &'a str,
    pub id: &'a str,
    pub up: bool,
    pub sessions: u32,
    pub inflight: u32,
    /// One of [`BACKEND_STATES`].
    pub state: &'static str,
    pub max_sessions: u32,
    pub rooms: u32,
}

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
    backend_max_sessions: IntGaugeVec,
    backend_rooms: IntGaugeVec,
    pool_capacity: IntGaugeVec,
    pool_headroom: prometheus::GaugeVec,
    tunnels: IntCounterVec,
    tunnel_duration: HistogramVec,
    tunnels_closed: IntCounterVec,
    sticky: IntCounterVec,
    rejected: IntCounterVec,
    health_checks: IntCounterVec,
    upstream_connect_errors: IntCounterVec,
    discovery: IntCounterVec,
    /// `rtcgate_turn_credentials_total`: issued, denied.
    pub turn_credentials: [IntCounter; 2],
    turn_server_up: IntGaugeVec,
    /// `rtcgate_scale_events_total{pool, direction}`: hooks run and backends scaled down.
    pub scale_events: IntCounterVec,
    /// `rtcgate_scale_hook_failures_total{pool, direction}`: hooks that could not start, timed
    /// out or exited non-zero.
    pub scale_hook_failures: IntCounterVec,
    /// `rtcgate_dns_lookups_total{pool, result}`: lookups of backends named by DNS.
    pub dns_lookups: IntCounterVec,
    /// `rtcgate_conflicting_framing_total{from}`: messages with both Transfer-Encoding and
    /// Content-Length, passed on framed by the first.
    conflicting_framing: IntCounterVec,
    pub config_reloads: IntCounterVec,
    client_connections: IntGauge,
    client_connections_total: IntCounterVec,
    pub tls_handshake_failures: IntCounter,
    /// `rtcgate_h2_floods_total`: HTTP/2 connections closed for a control-frame flood.
    pub h2_floods: IntCounter,
    /// `rtcgate_buffer_budget_cuts_total`: connections closed because the budget was spent.
    pub buffer_budget_cuts: IntCounter,
    /// `rtcgate_client_queued_bytes`: what the heavy client connections hold, each second.
    pub client_queued_bytes: IntGauge,
    /// Client connections (and the tunnels they became) each worker thread serves; the
    /// accept loops balance on it.
    pub worker_connections: IntGaugeVec,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("a valid metric definition");
    r.register(Box::new(c.clone()))
        .expect("each metric registered once");
    c
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
        let tls_handshake_failures = counter(
            &r,
            "rtcgate_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out.",
        );
        let h2_floods = counter(
            &r,
            "rtcgate_h2_floods_total",
            "HTTP/2 connections sent a GOAWAY (ENHANCE_YOUR_CALM) and closed for sending more control frames than [limits] h2_control_frames_per_second allows.",
        );
        let buffer_budget_cuts = counter(
            &r,
            "rtcgate_buffer_budget_cuts_total",
            "Client connections closed because [limits] buffer_budget was spent and they held the most for their clients.",
        );
        let client_queued_bytes = IntGauge::new(
            "rtcgate_client_queued_bytes",
            "Response bytes queued for clients that have not read them, over the connections holding 128 KiB or more (sampled each second).",
        )
        .expect("a valid metric definition");
        r.register(Box::new(client_queued_bytes.clone()))
            .expect("each metric registered once");
        let m = Metrics {
            requests: counter_vec(&r, "rtcgate_requests_total", "Requests answered, by backend and status code (backend \"\" when none was chosen).", &["pool", "backend", "code"]),
            request_duration: histogram_vec(&r, "rtcgate_request_duration_seconds", "Time from request to response head.", &["pool"], prometheus::DEFAULT_BUCKETS.to_vec()),
            backend_up: gauge_vec(&r, "rtcgate_backend_up", "1 when the backend passes its health checks.", pb),
            backend_sessions: gauge_vec(&r, "rtcgate_backend_sessions", "Open WebSocket tunnels.", pb),
            backend_inflight: gauge_vec(&r, "rtcgate_backend_inflight_requests", "Requests in flight.", pb),
            backend_state: gauge_vec(&r, "rtcgate_backend_state", "1 for the backend's current state (up, down, draining, maint).", &["pool", "backend", "state"]),
            backend_max_sessions: gauge_vec(&r, "rtcgate_backend_max_sessions", "The backend's session cap.", pb),
            backend_rooms: gauge_vec(&r, "rtcgate_backend_rooms", "Live rooms on the backend (its own report where it sends one, if more).", pb),
            pool_capacity: gauge_vec(&r, "rtcgate_pool_capacity_sessions", "Sessions the pool's backends that take new users hold at most.", &["pool"]),
            pool_headroom: {
                let v = prometheus::GaugeVec::new(Opts::new("rtcgate_pool_headroom", "The free share of the pool's sessions, or of its rooms where rooms are capped, whichever is less (0 to 1)."), &["pool"]).expect("a valid metric definition");
                r.register(Box::new(v.clone())).expect("each metric registered once");
                v
            },
            tunnels: counter_vec(&r, "rtcgate_websocket_tunnels_total", "WebSocket tunnels opened.", pb),
            tunnel_duration: histogram_vec(&r, "rtcgate_websocket_tunnel_duration_seconds", "How long tunnels stayed open.", &["pool"], vec![1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0]),
            tunnels_closed: counter_vec(&r, "rtcgate_tunnels_closed_total", "WebSocket tunnels closed, by why.", &["pool", "reason"]),
            sticky: counter_vec(&r, "rtcgate_sticky_total", "What became of requests' pins.", &["pool", "outcome"]),
            rejected: counter_vec(&r, "rtcgate_rejected_total", "Requests turned away with 503.", &["pool", "reason"]),
            health_checks: counter_vec(&r, "rtcgate_health_checks_total", "Active health checks, by result.", &["pool", "backend", "result"]),
            upstream_connect_errors: counter_vec(&r, "rtcgate_upstream_connect_errors_total", "Failed TCP connects to a backend.", pb),
            discovery: counter_vec(&r, "rtcgate_discovery_total", "Discovery answers, by pool (\"\" when none was named or routed) and result.", &["pool", "result"]),
            turn_credentials: {
                let v = counter_vec(&r, "rtcgate_turn_credentials_total", "TURN credentials asked for, by result.", &["result"]);
                ["issued", "denied"].map(|x| v.with_label_values(&[x]))
            },
            turn_server_up: gauge_vec(&r, "rtcgate_turn_server_up", "1 when the TURN server passes its checks.", &["url"]),
            conflicting_framing: counter_vec(&r, "rtcgate_conflicting_framing_total", "Messages that carried both Transfer-Encoding and Content-Length, by who sent them (client, backend): framed by Transfer-Encoding, the Content-Length dropped (RFC 9112 §6.3).", &["from"]),
            dns_lookups: counter_vec(&r, "rtcgate_dns_lookups_total", "Lookups of backends named by DNS: ok (addresses), empty (an answer with none: the name's backends drain), error (failed: the addresses stay).", &["pool", "result"]),
            scale_hook_failures: counter_vec(&r, "rtcgate_scale_hook_failures_total", "Scale hooks that could not start, were killed at their timeout or exited non-zero.", &["pool", "direction"]),
            scale_events: counter_vec(&r, "rtcgate_scale_events_total", "Scale decisions carried out: up (the up hook ran), down (an idle backend was drained out).", &["pool", "direction"]),
            config_reloads: counter_vec(&r, "rtcgate_config_reloads_total", "Configuration reloads, by result.", &["result"]),
            client_connections,
            client_connections_total: counter_vec(&r, "rtcgate_client_connections_total", "Client connections accepted, by listener.", &["listener"]),
            tls_handshake_failures,
            h2_floods,
            buffer_budget_cuts,
            client_queued_bytes,
            worker_connections: gauge_vec(&r, "rtcgate_worker_connections", "Client connections and tunnels each worker thread serves now.", &["worker"]),
            render: Mutex::new(()),
            registry: r,
        };
        // At 0 from the start, so that `increase()` sees the first reload and the first
        // framing repair (a series born at 1 has no increase).
        for result in ["ok", "error"] {
            m.config_reloads.with_label_values(&[result]);
        }
        for from in ["client", "backend"] {
            m.conflicting_framing.with_label_values(&[from]);
        }
        m
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
        // Series that count rare events exist at 0 from the start, so that `increase()` sees
        // their first event (a series born at 1 has no increase).
        for direction in ["up", "down"] {
            self.scale_events.with_label_values(&[pool, direction]);
            self.scale_hook_failures
                .with_label_values(&[pool, direction]);
        }
        for result in ["ok", "empty", "error"] {
            self.dns_lookups.with_label_values(&[pool, result]);
        }
        PoolMetrics {
            name: pool.to_string(),
            duration: self.request_duration.with_label_values(&[pool]),
            tunnel_duration: self.tunnel_duration.with_label_values(&[pool]),
            sticky: Outcome::ALL.map(|o| self.sticky.with_label_values(&[pool, o.as_str()])),
            rejected: Rejection::ALL.map(|r| self.rejected.with_label_values(&[pool, r.as_str()])),
            tunnels_closed: TunnelEnd::ALL
                .map(|e| self.tunnels_closed.with_label_values(&[pool, e.as_str()])),
            discovery: ["ok", "error"].map(|r| self.discovery.with_label_values(&[pool, r])),
            requests: self.requests.clone(),
        }
    }

    /// Counts a message with both Transfer-Encoding and Content-Length, from a client or not.
    pub fn conflicting_framing(&self, from_client: bool) {
        let from = if from_client { "client" } else { "backend" };
        self.conflicting_framing.with_label_values(&[from]).inc();
    }

    /// Counts a discovery call that named no pool rtcgate has (and came for no host it routes).
    pub fn discovery_without_pool(&self) {
        self.discovery.with_label_values(&["", "error"]).inc();
    }

    /// Counts a client connection accepted on `listener` ("https" or "http"), and holds it in
    /// `rtcgate_client_connections` until the guard drops.
    pub fn open_connection(&self, listener: &str) -> GaugeGuard {
        self.client_connections_total
            .with_label_values(&[listener])
            .inc();
        GaugeGuard::hold(&self.client_connections)
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

    /// The Prometheus text exposition of everything, with the state gauges set from `backends`
    /// (every backend the current snapshot lists) and `turn` (each TURN URL, and whether up).
    pub fn render<'a>(
        &self,
        backends: impl IntoIterator<Item = BackendGauges<'a>>,
        pools: impl IntoIterator<Item = PoolGauges<'a>>,
        turn: impl IntoIterator<Item = (&'a str, bool)>,
    ) -> String {
        let _one_at_a_time = self.render.lock().unwrap_or_else(|e| e.into_inner());
        for g in [
            &self.backend_up,
            &self.backend_sessions,
            &self.backend_inflight,
            &self.backend_state,
            &self.backend_max_sessions,
            &self.backend_rooms,
            &self.pool_capacity,
            &self.turn_server_up,
        ] {
            g.reset();
        }
        self.pool_headroom.reset();
        for p in pools {
            self.pool_capacity
                .with_label_values(&[p.pool])
                .set(i64::try_from(p.capacity).unwrap_or(i64::MAX));
            self.pool_headroom
                .with_label_values(&[p.pool])
                .set(p.headroom);
        }
        for (url, up) in turn {
            self.turn_server_up
                .with_label_values(&[url])
                .set(i64::from(up));
        }
        for b in backends {
            let labels = [b.pool, b.id];
            self.backend_up
                .with_label_values(&labels)
                .set(i64::from(b.up));
            self.backend_sessions
                .with_label_values(&labels)
                .set(i64::from(b.sessions));
            self.backend_inflight
                .with_label_values(&labels)
                .set(i64::from(b.inflight));
            self.backend_max_sessions
                .with_label_values(&labels)
                .set(i64::from(b.max_sessions));
            self.backend_rooms
                .with_label_values(&labels)
                .set(i64::from(b.rooms));
            for state in BACKEND_STATES {
                self.backend_state
                    .with_label_values(&[b.pool, b.id, state])
                    .set(i64::from(b.state == state));
            }
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail but for metric families the registry itself built.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A gauge counted up while the guard lives: an open connection, a worker's load.
#[derive(Debug)]
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn hold(gauge: &IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
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
    rejected: [IntCounter; 4],
    tunnels_closed: [IntCounter; 7],
    /// `rtcgate_discovery_total`: ok, error.
    discovery: [IntCounter; 2],
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
    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn sticky(&self, outcome: Outcome) {
        self.sticky[outcome as usize].inc();
    }

    pub fn rejected(&self, reason: Rejection) {
        self.rejected[reason as usize].inc();
    }

    /// Counts a discovery answer: a connection string, or an `ERROR:`.
    pub fn discovery(&self, ok: bool) {
        self.discovery[usize::from(!ok)].inc();
    }

    pub fn tunnel_closed(&self, why: TunnelEnd) {
        self.tunnels_closed[why as usize].inc();
    }

    /// Counts a request answered without a backend (rejected, malformed).
    pub fn answered_without_backend(&self, code: u16) {
        self.requests
            .with_label_values(&[&self.name, "", &code.to_string()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each outcome and reason counts in the series with its own label (the recorders index
    /// arrays by the enums' order).
    #[test]
    fn each_label_value_counts_in_its_own_series() {
        let m = Metrics::new();
        let pool = m.pool("media");
        for (n, o) in Outcome::ALL.into_iter().enumerate() {
            for _ in 0..=n {
                pool.sticky(o);
            }
        }
        for (n, r) in Rejection::ALL.into_iter().enumerate() {
            for _ in 0..=n {
                pool.rejected(r);
            }
        }
        let text = m.render([], [], []);
        for (n, o) in Outcome::ALL.into_iter().enumerate() {
            let line = format!(
                "rtcgate_sticky_total{{outcome=\"{}\",pool=\"media\"}} {}",
                o.as_str(),
                n + 1
            );
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        for (n, r) in Rejection::ALL.into_iter().enumerate() {
            let line = format!(
                "rtcgate_rejected_total{{pool=\"media\",reason=\"{}\"}} {}",
                r.as_str(),
                n + 1
            );
            assert!(text.contains(&line), "{line} in\n{text}");
        }
    }

    /// The state gauges show what they are handed, one state at 1, and nothing of a backend
    /// no longer handed in.
    #[test]
    fn state_gauges_follow_what_each_scrape_is_given() {
        let m = Metrics::new();
        let b = BackendGauges {
            pool: "media",
            id: "m1",
            up: false,
            sessions: 3,
            inflight: 1,
            state: "down",
            max_sessions: 500,
            rooms: 2,
        };
        let text = m.render([b], [], []);
        for line in [
            "rtcgate_backend_up{backend=\"m1\",pool=\"media\"} 0",
            "rtcgate_backend_sessions{backend=\"m1\",pool=\"media\"} 3",
            "rtcgate_backend_state{backend=\"m1\",pool=\"media\",state=\"down\"} 1",
            "rtcgate_backend_state{backend=\"m1\",pool=\"media\",state=\"up\"} 0",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        let text = m.render([], [], []);
        assert!(!text.contains("backend=\"m1\""), "{text}");
    }
}

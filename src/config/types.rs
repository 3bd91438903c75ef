//! The typed configuration that the rest of rtcgate reads, and [`ConfigError`]. Values here
//! are valid by construction: only `validate.rs` makes them from the file.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A configuration error: the file, the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {msg}")]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub msg: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from; relative paths inside it are resolved against its folder.
    pub source: PathBuf,
    pub listen: Listen,
    pub tls: Option<TlsFiles>,
    pub sticky: Sticky,
    pub admin: AdminConfig,
    pub limits: Limits,
    pub log: LogConfig,
    /// The connection-string endpoint; `None` when off.
    pub discovery: Option<Discovery>,
    /// TURN credentials; `None` when off.
    pub turn: Option<Turn>,
    /// How backends named by DNS are resolved.
    pub dns: DnsConfig,
    /// Pools in name order.
    pub pools: Vec<PoolConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// Listeners whose connections start with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: ProxyProtocol,
    /// Networks whose `X-Forwarded-For`/`Forwarded` are kept (appended to); everyone else's
    /// are replaced.
    pub trusted_forwarders: Vec<ipnet::IpNet>,
}

impl Listen {
    /// Whether `client`'s forwarding headers are to be kept.
    pub fn trusts(&self, client: std::net::IpAddr) -> bool {
        let client = client.to_canonical();
        self.trusted_forwarders.iter().any(|n| n.contains(&client))
    }
}

/// Which public listeners expect a PROXY protocol header (`listen.proxy_protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyProtocol {
    pub https: bool,
    pub http: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Served when no SNI entry matches (or the client sends no SNI).
    pub default: CertFiles,
    /// Extra certificates chosen by SNI server name.
    pub sni: Vec<SniCert>,
    /// A file of session-ticket keys shared by several instances; `None`: the process's own.
    pub ticket_keys: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCert {
    /// Lower-case server names; `*.example.com` matches one label.
    pub names: Vec<String>,
    pub files: CertFiles,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Secure {
    Auto,
    Always,
    Never,
}

/// Whether each worker thread is bound to a CPU of its own (`limits.pin_workers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinWorkers {
    /// When there is one worker per CPU the process may run on.
    Auto,
    /// Always, round-robin over those CPUs.
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenDown {
    Repin,
    Reject,
}

/// What becomes of a backend's tunnels when it goes down or into maintenance (`on_down`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDown {
    /// Closed at once, with close frame 1012, so its users reconnect elsewhere.
    Close,
    /// Left open until they end by themselves.
    Keep,
}

#[derive(Clone, PartialEq, Eq)]
pub struct StickyKey {
    pub id: String,
    pub secret: Vec<u8>,
}

impl fmt::Debug for StickyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret, not even in debug logs.
        f.debug_struct("StickyKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    pub cookie: String,
    /// The first key signs; all keys verify.
    pub keys: Vec<StickyKey>,
    /// Zero means a session cookie.
    pub max_age: Duration,
    pub same_site: SameSite,
    pub secure: Secure,
    pub when_down: WhenDown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// When set, mutating admin calls need `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Reads (`/status`, `/metrics`, the page, a backend's GET) need the token too; the probes
    /// `/live` and `/ready` never do.
    pub token_for_reads: bool,
    /// Where backends added through the admin API are kept across restarts.
    pub state_file: Option<PathBuf>,
    /// Names the admin listener answers to in `Host`, besides IP literals and `localhost`
    /// (lower case, without port).
    pub hosts: Vec<String>,
}

/// A backend as the admin API adds it (`PUT /pools/{pool}/backends/{id}`), and as the state
/// file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiBackend {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rooms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

/// Connection and request limits. Every one has a key under `[limits]` and a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Worker threads serving connections; 0 means one per CPU core.
    pub workers: usize,
    /// Whether each worker is bound to a CPU of its own.
    pub pin_workers: PinWorkers,
    /// Client connections served at once; further connections wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time allowed for a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time allowed to receive a whole request head. On HTTP/1.1 keep-alive connections it also
    /// bounds the wait for the next request (as HAProxy's `timeout http-request` does).
    pub header_read_timeout: Duration,
    /// Largest request head accepted (HTTP/1.1 head bytes, HTTP/2 header list).
    pub max_header_size: usize,
    /// A client connection with no bytes moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed to open a TCP connection to a backend.
    pub connect_timeout: Duration,
    /// Time allowed for a backend to send its response head.
    pub response_timeout: Duration,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// After SIGTERM/SIGINT, time spent still accepting and serving while `/ready` answers 503,
    /// so that balancers stop sending new connections before the listeners close.
    pub shutdown_delay: Duration,
    /// A WebSocket tunnel with no bytes moving either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Idle keep-alive connections kept per backend.
    pub upstream_idle_per_backend: usize,
    /// How long an idle upstream connection is kept.
    pub upstream_idle_timeout: Duration,
    /// Frames that do no work (PING, SETTINGS, PRIORITY, RST_STREAM, WINDOW_UPDATE, empty DATA,
    /// unknown types) one HTTP/2 connection may send a second; 0 means no limit.
    pub h2_control_frames_per_second: u32,
    /// Bytes all client connections together may have queued for clients that do not read;
    /// past it, the connections holding the most are closed. 0 means no budget.
    pub buffer_budget: u64,
}

/// What the discovery endpoint hands out (`discovery.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryMode {
    /// A URL through rtcgate carrying a signed pin token.
    Proxy,
    /// The chosen backend's own `public_url`.
    Direct,
}

/// The connection-string endpoint (`[discovery]`, Voice Elements' `rtcloadbalance`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// Where it answers on the public listeners.
    pub path: String,
    pub mode: DiscoveryMode,
    /// The path of the WebSocket URL handed out in proxy mode.
    pub ws_path: String,
    /// `host[:port]` of URLs handed out in proxy mode; `None`: the request's own host.
    pub public_host: Option<String>,
    /// A handed-out slot counts in its backend's load until the client arrives or this passes.
    pub reservation: Duration,
    /// How long a pin token handed out in proxy mode is honoured.
    pub token_ttl: Duration,
    /// The query parameter carrying the pin token.
    pub token_param: String,
    /// Origins whose pages may call the endpoint (CORS); `*` for any.
    pub cors_origins: Vec<String>,
}

/// Who gets TURN credentials (`turn.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnAuth {
    /// A client holding a valid pin of the pool its host routes to.
    Session,
    /// A client whom `auth_url` answers with a 2xx.
    Forward,
    /// Anyone (for testing).
    None,
}

/// One `turn:`, `turns:` or `stun:` URL, and where it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnUrl {
    /// As configured, as handed to clients.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Reached over TCP (`turns:`, or `?transport=tcp`): checked by a connect, not by STUN.
    pub tcp: bool,
}

/// TURN REST credentials minted at the front door (`[turn]`).
#[derive(Clone, PartialEq, Eq)]
pub struct Turn {
    pub path: String,
    /// coturn's `static-auth-secret`.
    pub secret: Vec<u8>,
    pub urls: Vec<TurnUrl>,
    pub ttl: Duration,
    pub auth: TurnAuth,
    /// Forward auth: asked with the client's `Cookie` and `Authorization`.
    pub auth_url: Option<http::Uri>,
    /// The header of the auth service's answer naming the user.
    pub auth_user_header: http::HeaderName,
    /// How long an auth answer is reused for the same client credentials.
    pub auth_cache: Duration,
    /// Time the auth service has to answer.
    pub auth_timeout: Duration,
    /// Checks of the TURN servers (`path` unused: STUN or a TCP connect).
    pub health: HealthConfig,
}

impl fmt::Debug for Turn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("Turn")
            .field("path", &self.path)
            .field("urls", &self.urls)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A line per request at target `rtcgate::access`.
    pub access: bool,
    /// How lines are written (read at start: a reload does not change it).
    pub format: LogFormat,
}

/// How log lines are written (`[log] format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people: `tracing`'s text lines.
    #[default]
    Text,
    /// For collectors: one JSON object per line, the event's fields at the top level.
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    /// Query parameter naming a room; `None` when rooms are off for this pool.
    pub room_param: Option<String>,
    /// Query parameter naming a backend id (a machine pin); `None` when off.
    pub machine_param: Option<String>,
    pub room_balance_factor: f64,
    pub max_sessions: u32,
    /// No backend takes more than this multiple of its `max_sessions`, pinned users included.
    pub hard_cap: f64,
    /// Default cap of live rooms per backend (0: none).
    pub max_rooms: u32,
    pub drain_timeout: Duration,
    /// Tunnels of a backend that goes down or into maintenance.
    pub on_down: OnDown,
    /// A backend that comes up takes a share of new users that grows over this (0: off).
    pub slow_start: Duration,
    pub health: HealthConfig,
    pub backends: Vec<BackendConfig>,
    /// Backends named by DNS: each becomes one backend per address it resolves to.
    pub dns_backends: Vec<DnsBackend>,
    /// Scale hooks; `None` when off.
    pub scale: Option<ScaleConfig>,
}

/// When to ask for more servers and give idle ones back (`[pools.NAME.scale]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleConfig {
    /// Headroom below this for `sustain` runs `up_command` (0: never).
    pub min_headroom: f64,
    pub sustain: Duration,
    /// An argv, never a shell string; empty: none.
    pub up_command: Vec<String>,
    /// `up_command` runs at most once per this.
    pub cooldown: Duration,
    /// A hook running longer is killed.
    pub timeout: Duration,
    pub down_command: Vec<String>,
    /// A backend with no sessions for this long is drained and removed (0: never).
    pub idle_after: Duration,
    /// Backends never scaled below (at least 1).
    pub min_backends: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// `None`: a TCP connect check.
    pub path: Option<String>,
    /// The port checked instead of each backend's own (HAProxy's `check port`); 0: its own.
    pub port: u16,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Stable id: cookies name this, never a list position.
    pub id: String,
    pub address: SocketAddr,
    /// Where its health is checked: `address`, with the port of its `health_port` or of the
    /// pool's `health.port` when either is set (Janus, say, answers HTTP checks on a port of
    /// its own, not on its WebSocket port).
    pub check_address: SocketAddr,
    pub max_sessions: u32,
    /// Live rooms it takes at most (0: no cap).
    pub max_rooms: u32,
    pub weight: u32,
    /// The `ws://` or `wss://` URL clients reach it at directly (discovery's direct mode).
    pub public_url: Option<String>,
}

/// How backends named by DNS are resolved (`[dns]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers asked; empty: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// Every name is resolved again this often.
    pub interval: Duration,
    /// A lookup taking longer has failed (and the addresses it had stay).
    pub timeout: Duration,
}

/// What a backend named by DNS asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsLookup {
    /// `name:port`: the name's A and AAAA records, each at `port`.
    Host { name: String, port: u16 },
    /// `_service._proto.name`: its SRV records, each target's addresses at the record's port
    /// (HAProxy's convention: a name starting with `_` is an SRV query).
    Srv(String),
}

impl fmt::Display for DnsLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsLookup::Host { name, port } => write!(f, "{name}:{port}"),
            DnsLookup::Srv(name) => f.write_str(name),
        }
    }
}

/// A backend whose `address` is a DNS name: one backend per address the name resolves to,
/// each with these settings and an id of its own that stays the same for the same address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsBackend {
    /// The entry's id; its backends are `{id}-{ip}-{port}`.
    pub id: String,
    pub lookup: DnsLookup,
    /// The port health is checked on (0: each address's own).
    pub health_port: u16,
    pub max_sessions: u32,
    pub max_rooms: u32,
    pub weight: u32,
}

impl DnsBackend {
    /// The backend at `address`, one of the name's.
    pub fn at(&self, address: SocketAddr) -> BackendConfig {
        let ip = address.ip().to_canonical();
        let address = SocketAddr::new(ip, address.port());
        let mut check_address = address;
        if self.health_port != 0 {
            check_address.set_port(self.health_port);
        }
        BackendConfig {
            // Dots and dashes are allowed in ids, colons are not (the pin token uses them).
            id: format!(
                "{}-{}-{}",
                self.id,
                ip.to_string().replace(':', "-"),
                address.port()
            ),
            address,
            check_address,
            max_sessions: self.max_sessions,
            max_rooms: self.max_rooms,
            weight: self.weight,
            public_url: None,
        }
    }
}

/// A `Host` pattern: `*` (any), `*.example.com` (one or more labels), or an exact name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    /// The suffix including its leading dot: `.example.com`.
    Suffix(String),
    Exact(String),
}

impl HostPattern {
    pub(super) fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if s == "*" {
            return Ok(HostPattern::Any);
        }
        let (wild, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(format!(
                "{s:?} is not a host pattern (\"*\", \"*.example.com\" or \"rtc.example.com\")"
            ));
        }
        Ok(if wild {
            HostPattern::Suffix(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }
}

/// Shortest secret accepted for a sticky key: 32 bytes of HMAC-SHA256 key material.
pub const MIN_SECRET_LEN: usize = 32;

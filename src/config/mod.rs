//! `proxy.toml`: raw serde structs (unknown keys rejected) validated into a typed [`Config`].
//!
//! Owns parsing and validation only. Every error names the file and the key (`pools.media.
//! backends[1].address`), so an operator can fix it without reading code. Nothing here opens a
//! socket; certificate files are checked for existence here and parsed by `tls.rs`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
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
    /// Pools in name order.
    pub pools: Vec<PoolConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
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
    /// A WebSocket tunnel with no bytes moving either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Idle keep-alive connections kept per backend.
    pub upstream_idle_per_backend: usize,
    /// How long an idle upstream connection is kept.
    pub upstream_idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A line per request at target `rtcgate::access`.
    pub access: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    /// Query parameter naming a room; `None` when rooms are off for this pool.
    pub room_param: Option<String>,
    pub room_balance_factor: f64,
    pub max_sessions: u32,
    pub drain_timeout: Duration,
    pub health: HealthConfig,
    pub backends: Vec<BackendConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// `None`: a TCP connect check.
    pub path: Option<String>,
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
    pub max_sessions: u32,
    pub weight: u32,
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
    fn parse(s: &str) -> Result<Self, String> {
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

// ---- raw, as written in the file ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: RawListen,
    tls: Option<RawTls>,
    sticky: RawSticky,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    pools: BTreeMap<String, RawPool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    https: Option<String>,
    http: Option<String>,
    admin: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
    #[serde(default)]
    sni: Vec<RawSni>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSni {
    names: Vec<String>,
    cert: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSticky {
    #[serde(default = "default_cookie")]
    cookie: String,
    keys: Vec<String>,
    #[serde(default = "zero_duration")]
    max_age: String,
    #[serde(default = "default_same_site")]
    same_site: SameSite,
    #[serde(default = "default_secure")]
    secure: Secure,
    #[serde(default = "default_when_down")]
    when_down: WhenDown,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default)]
    token: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    workers: Option<usize>,
    pin_workers: Option<PinWorkers>,
    max_connections: Option<usize>,
    tls_handshake_timeout: Option<String>,
    header_read_timeout: Option<String>,
    max_header_size: Option<usize>,
    idle_timeout: Option<String>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    shutdown_grace: Option<String>,
    tunnel_idle_timeout: Option<String>,
    upstream_idle_per_backend: Option<usize>,
    upstream_idle_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    access: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    #[serde(default = "default_hosts")]
    hosts: Vec<String>,
    #[serde(default)]
    room_param: String,
    #[serde(default = "default_room_balance_factor")]
    room_balance_factor: f64,
    #[serde(default = "default_max_sessions")]
    max_sessions: u32,
    #[serde(default = "default_drain_timeout")]
    drain_timeout: String,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    backends: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default = "default_health_path")]
    path: String,
    #[serde(default = "default_health_interval")]
    interval: String,
    #[serde(default = "default_health_timeout")]
    timeout: String,
    #[serde(default = "default_rise_fall")]
    rise: u32,
    #[serde(default = "default_rise_fall")]
    fall: u32,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            path: default_health_path(),
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            rise: default_rise_fall(),
            fall: default_rise_fall(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    id: String,
    address: String,
    max_sessions: Option<u32>,
    #[serde(default = "default_weight")]
    weight: u32,
}

/// Whether listeners on `a` and `b` would take the same connections: one port (not 0, which
/// picks a free one) and the same address (an IPv4-mapped IPv6 one counts as its IPv4), or a
/// wildcard covering the other: `0.0.0.0` covers IPv4, `[::]` everything (dual stack).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (a, b) = (a.ip().to_canonical(), b.ip().to_canonical());
    let covers =
        |wild: IpAddr, other: IpAddr| wild.is_unspecified() && (wild.is_ipv6() || other.is_ipv4());
    a == b || covers(a, b) || covers(b, a)
}

fn default_cookie() -> String {
    "rtcgate".into()
}
fn zero_duration() -> String {
    "0s".into()
}
fn default_same_site() -> SameSite {
    SameSite::Lax
}
fn default_secure() -> Secure {
    Secure::Auto
}
fn default_when_down() -> WhenDown {
    WhenDown::Repin
}
fn default_hosts() -> Vec<String> {
    vec!["*".into()]
}
fn default_room_balance_factor() -> f64 {
    1.25
}
fn default_max_sessions() -> u32 {
    500
}
fn default_drain_timeout() -> String {
    "1h".into()
}
fn default_health_path() -> String {
    "/health".into()
}
fn default_health_interval() -> String {
    "2s".into()
}
fn default_health_timeout() -> String {
    "1s".into()
}
fn default_rise_fall() -> u32 {
    2
}
fn default_weight() -> u32 {
    1
}

/// Shortest secret accepted for a sticky key: 32 bytes of HMAC-SHA256 key material.
pub const MIN_SECRET_LEN: usize = 32;

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: "(file)".into(),
            msg: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text` as if read from `path` (relative files resolve against its
    /// folder, and must exist).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let v = Validator { file: path };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| key_at(text, s.start))
                .unwrap_or_else(|| "(document)".into());
            v.err(key, e.message().to_string())
        })?;
        v.config(raw)
    }
}

/// The text of the line holding byte `at`, trimmed: the key toml complained about, in context.
fn key_at(text: &str, at: usize) -> String {
    let start = text[..at.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line_no = text[..start].matches('\n').count() + 1;
    format!("line {line_no} `{}`", text[start..end].trim())
}

struct Validator<'a> {
    file: &'a Path,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            msg: msg.into(),
        }
    }

    fn duration(&self, key: &str, s: &str) -> Result<Duration, ConfigError> {
        humantime::parse_duration(s.trim()).map_err(|e| {
            self.err(
                key,
                format!("{s:?} is not a duration ({e}); write e.g. \"500ms\", \"2s\", \"1h\""),
            )
        })
    }

    fn opt_duration(
        &self,
        key: &str,
        s: &Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match s {
            Some(s) => self.duration(key, s),
            None => Ok(default),
        }
    }

    fn addr(&self, key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
        s.trim().parse().map_err(|_| {
            self.err(key, format!("{s:?} is not an address; write IP:port, e.g. \"127.0.0.1:9001\" or \"[::1]:9001\""))
        })
    }

    fn file(&self, key: &str, s: &str) -> Result<PathBuf, ConfigError> {
        let p = Path::new(s);
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or(Path::new(".")).join(p)
        };
        if !p.is_file() {
            return Err(self.err(key, format!("file {} does not exist", p.display())));
        }
        Ok(p)
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = Listen {
            https: raw
                .listen
                .https
                .as_deref()
                .map(|s| self.addr("listen.https", s))
                .transpose()?,
            http: raw
                .listen
                .http
                .as_deref()
                .map(|s| self.addr("listen.http", s))
                .transpose()?,
            admin: raw
                .listen
                .admin
                .as_deref()
                .map(|s| self.addr("listen.admin", s))
                .transpose()?,
        };
        if listen.https.is_none() && listen.http.is_none() {
            return Err(self.err("listen", "set at least one of listen.https and listen.http"));
        }
        // The listeners use SO_REUSEPORT, so the kernel would let two of them share a port and
        // split its connections between them rather than refuse the second.
        let keyed = [
            ("listen.https", listen.https),
            ("listen.http", listen.http),
            ("listen.admin", listen.admin),
        ];
        for (i, (key, addr)) in keyed.iter().enumerate() {
            for (other, other_addr) in &keyed[..i] {
                if let (Some(a), Some(b)) = (addr, other_addr) {
                    if overlap(*a, *b) {
                        return Err(self.err(*key, format!("{a} overlaps {other} ({b})")));
                    }
                }
            }
        }
        let tls = raw.tls.map(|t| self.tls(t)).transpose()?;
        if listen.https.is_some() && tls.is_none() {
            return Err(self.err(
                "tls",
                "listen.https is set, so [tls] with cert and key is required",
            ));
        }
        let sticky = self.sticky(raw.sticky)?;
        let admin = AdminConfig {
            token: Some(raw.admin.token).filter(|t| !t.is_empty()),
        };
        let limits = self.limits(raw.limits)?;
        let mut pools = Vec::with_capacity(raw.pools.len());
        for (name, p) in raw.pools {
            pools.push(self.pool(name, p)?);
        }
        self.check_hosts(&pools)?;
        Ok(Config {
            source: self.file.to_path_buf(),
            listen,
            tls,
            sticky,
            admin,
            limits,
            log: LogConfig {
                access: raw.log.access,
            },
            pools,
        })
    }

    fn tls(&self, t: RawTls) -> Result<TlsFiles, ConfigError> {
        let default = CertFiles {
            cert: self.file("tls.cert", &t.cert)?,
            key: self.file("tls.key", &t.key)?,
        };
        let mut sni = Vec::with_capacity(t.sni.len());
        for (i, s) in t.sni.into_iter().enumerate() {
            let key = format!("tls.sni[{i}]");
            if s.names.is_empty() {
                return Err(self.err(format!("{key}.names"), "list at least one server name"));
            }
            let mut names = Vec::with_capacity(s.names.len());
            for n in &s.names {
                match HostPattern::parse(n) {
                    Ok(HostPattern::Exact(n)) => names.push(n),
                    Ok(HostPattern::Suffix(n)) => names.push(format!("*{n}")),
                    _ => {
                        return Err(self.err(
                            format!("{key}.names"),
                            format!("{n:?} is not a server name"),
                        ))
                    }
                }
            }
            sni.push(SniCert {
                names,
                files: CertFiles {
                    cert: self.file(&format!("{key}.cert"), &s.cert)?,
                    key: self.file(&format!("{key}.key"), &s.key)?,
                },
            });
        }
        Ok(TlsFiles { default, sni })
    }

    fn sticky(&self, s: RawSticky) -> Result<Sticky, ConfigError> {
        let cookie_ok = !s.cookie.is_empty()
            && s.cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !cookie_ok {
            return Err(self.err(
                "sticky.cookie",
                format!("{:?} is not a valid cookie name", s.cookie),
            ));
        }
        if s.keys.is_empty() {
            return Err(self.err("sticky.keys", "list at least one \"id:secret\" key"));
        }
        let mut keys = Vec::with_capacity(s.keys.len());
        let mut seen = HashSet::new();
        for (i, k) in s.keys.iter().enumerate() {
            let key = format!("sticky.keys[{i}]");
            let Some((id, secret)) = k.split_once(':') else {
                return Err(self.err(key, "write a key as \"id:secret\""));
            };
            if id.is_empty()
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(self.err(
                    key,
                    format!("key id {id:?} must be letters, digits, '-' or '_'"),
                ));
            }
            if secret.len() < MIN_SECRET_LEN {
                return Err(self.err(
                    key,
                    format!("the secret of key {id:?} has {} characters; at least {MIN_SECRET_LEN} are required", secret.len()),
                ));
            }
            if !seen.insert(id) {
                return Err(self.err(key, format!("key id {id:?} is listed twice")));
            }
            keys.push(StickyKey {
                id: id.to_string(),
                secret: secret.as_bytes().to_vec(),
            });
        }
        Ok(Sticky {
            cookie: s.cookie,
            keys,
            max_age: self.duration("sticky.max_age", &s.max_age)?,
            same_site: s.same_site,
            secure: s.secure,
            when_down: s.when_down,
        })
    }

    fn limits(&self, l: RawLimits) -> Result<Limits, ConfigError> {
        let limits = Limits {
            workers: l.workers.unwrap_or(0),
            pin_workers: l.pin_workers.unwrap_or(PinWorkers::Auto),
            max_connections: l.max_connections.unwrap_or(10_000),
            tls_handshake_timeout: self.opt_duration(
                "limits.tls_handshake_timeout",
                &l.tls_handshake_timeout,
                Duration::from_secs(10),
            )?,
            header_read_timeout: self.opt_duration(
                "limits.header_read_timeout",
                &l.header_read_timeout,
                Duration::from_secs(10),
            )?,
            max_header_size: l.max_header_size.unwrap_or(64 * 1024),
            idle_timeout: self.opt_duration(
                "limits.idle_timeout",
                &l.idle_timeout,
                Duration::from_secs(60),
            )?,
            connect_timeout: self.opt_duration(
                "limits.connect_timeout",
                &l.connect_timeout,
                Duration::from_secs(5),
            )?,
            response_timeout: self.opt_duration(
                "limits.response_timeout",
                &l.response_timeout,
                Duration::from_secs(60),
            )?,
            shutdown_grace: self.opt_duration(
                "limits.shutdown_grace",
                &l.shutdown_grace,
                Duration::from_secs(30),
            )?,
            tunnel_idle_timeout: self.opt_duration(
                "limits.tunnel_idle_timeout",
                &l.tunnel_idle_timeout,
                Duration::from_secs(3600),
            )?,
            upstream_idle_per_backend: l.upstream_idle_per_backend.unwrap_or(256),
            upstream_idle_timeout: self.opt_duration(
                "limits.upstream_idle_timeout",
                &l.upstream_idle_timeout,
                Duration::from_secs(30),
            )?,
        };
        if !(1..=1_000_000).contains(&limits.max_connections) {
            return Err(self.err("limits.max_connections", "must be from 1 to 1000000"));
        }
        if limits.workers > 1024 {
            return Err(self.err("limits.workers", "must be from 0 (one per core) to 1024"));
        }
        if limits.max_header_size > 16 * 1024 * 1024 {
            return Err(self.err("limits.max_header_size", "must be at most 16 MiB"));
        }
        if limits.idle_timeout < Duration::from_millis(100) {
            return Err(self.err("limits.idle_timeout", "must be at least 100ms"));
        }
        // hyper refuses head buffers under 8 KiB; a smaller cap would be silently raised.
        if limits.max_header_size < 8192 {
            return Err(self.err("limits.max_header_size", "must be at least 8192 bytes"));
        }
        let nonzero = [
            ("limits.tls_handshake_timeout", limits.tls_handshake_timeout),
            ("limits.header_read_timeout", limits.header_read_timeout),
            ("limits.idle_timeout", limits.idle_timeout),
            ("limits.connect_timeout", limits.connect_timeout),
            ("limits.response_timeout", limits.response_timeout),
            ("limits.tunnel_idle_timeout", limits.tunnel_idle_timeout),
        ];
        for (key, d) in nonzero {
            if d.is_zero() {
                return Err(self.err(key, "must be greater than zero"));
            }
        }
        Ok(limits)
    }

    fn pool(&self, name: String, p: RawPool) -> Result<PoolConfig, ConfigError> {
        let at = format!("pools.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(self.err(at, "a pool name must be letters, digits, '-' or '_'"));
        }
        if p.hosts.is_empty() {
            return Err(self.err(
                format!("{at}.hosts"),
                "list at least one host pattern (\"*\" for any)",
            ));
        }
        let hosts = p
            .hosts
            .iter()
            .map(|h| HostPattern::parse(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| self.err(format!("{at}.hosts"), m))?;
        if !(p.room_balance_factor >= 1.0 && p.room_balance_factor.is_finite()) {
            return Err(self.err(
                format!("{at}.room_balance_factor"),
                "must be a number of at least 1.0",
            ));
        }
        if p.max_sessions == 0 {
            return Err(self.err(format!("{at}.max_sessions"), "must be at least 1"));
        }
        let room_param = Some(p.room_param.trim().to_string()).filter(|r| !r.is_empty());
        let health = self.health(&at, p.health)?;
        let mut backends = Vec::with_capacity(p.backends.len());
        let mut ids = HashSet::new();
        for (i, b) in p.backends.into_iter().enumerate() {
            let key = format!("{at}.backends[{i}]");
            if b.id.is_empty()
                || !b
                    .id
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
            {
                return Err(self.err(
                    format!("{key}.id"),
                    format!("{:?}: an id must be letters, digits, '-', '_' or '.'", b.id),
                ));
            }
            if !ids.insert(b.id.clone()) {
                return Err(self.err(
                    format!("{key}.id"),
                    format!("{:?} is used twice in pool {name}", b.id),
                ));
            }
            let max_sessions = b.max_sessions.unwrap_or(p.max_sessions);
            if max_sessions == 0 {
                return Err(self.err(format!("{key}.max_sessions"), "must be at least 1"));
            }
            if !(1..=1000).contains(&b.weight) {
                return Err(self.err(format!("{key}.weight"), "must be from 1 to 1000"));
            }
            backends.push(BackendConfig {
                address: self.addr(&format!("{key}.address"), &b.address)?,
                id: b.id,
                max_sessions,
                weight: b.weight,
            });
        }
        Ok(PoolConfig {
            hosts,
            room_param,
            room_balance_factor: p.room_balance_factor,
            max_sessions: p.max_sessions,
            drain_timeout: self.duration(&format!("{at}.drain_timeout"), &p.drain_timeout)?,
            health,
            backends,
            name,
        })
    }

    fn health(&self, at: &str, h: RawHealth) -> Result<HealthConfig, ConfigError> {
        let path = match h.path.trim() {
            "" => None,
            p if p.starts_with('/') => Some(p.to_string()),
            p => {
                return Err(self.err(
                    format!("{at}.health.path"),
                    format!("{p:?} must start with '/' (or be \"\" for a TCP check)"),
                ))
            }
        };
        let interval = self.duration(&format!("{at}.health.interval"), &h.interval)?;
        let timeout = self.duration(&format!("{at}.health.timeout"), &h.timeout)?;
        if interval.is_zero() {
            return Err(self.err(format!("{at}.health.interval"), "must be greater than zero"));
        }
        if timeout.is_zero() || timeout > interval {
            return Err(self.err(
                format!("{at}.health.timeout"),
                "must be greater than zero and at most health.interval",
            ));
        }
        if h.rise == 0 {
            return Err(self.err(format!("{at}.health.rise"), "must be at least 1"));
        }
        if h.fall == 0 {
            return Err(self.err(format!("{at}.health.fall"), "must be at least 1"));
        }
        Ok(HealthConfig {
            path,
            interval,
            timeout,
            rise: h.rise,
            fall: h.fall,
        })
    }

    /// An exact host or wildcard claimed by two pools would make routing depend on table order.
    fn check_hosts(&self, pools: &[PoolConfig]) -> Result<(), ConfigError> {
        let mut seen: Vec<(&HostPattern, &str)> = Vec::new();
        for p in pools {
            for h in &p.hosts {
                if let Some((_, other)) = seen.iter().find(|(s, _)| *s == h) {
                    return Err(self.err(
                        format!("pools.{}.hosts", p.name),
                        format!("{h:?} is already routed to pool {other}"),
                    ));
                }
                seen.push((h, &p.name));
            }
        }
        Ok(())
    }
}

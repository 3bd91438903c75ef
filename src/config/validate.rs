//! Raw → typed: every value checked, durations and addresses parsed, files resolved against
//! the config's folder, cross-key rules (no two listeners on one port, host patterns unique
//! across pools). Each error names the file and the key, with the value.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::*;
use super::types::*;

pub(super) struct Validator<'a> {
    pub(super) file: &'a Path,
}

/// A backend as validated: at a fixed address, or named by DNS.
pub(super) enum Member {
    Fixed(BackendConfig),
    Dns(DnsBackend),
}

enum Address {
    Ip(SocketAddr),
    Dns(DnsLookup),
}

/// What a pool gives each of its backends unless the backend says otherwise.
pub(super) struct BackendDefaults {
    pub(super) max_sessions: u32,
    pub(super) max_rooms: u32,
    pub(super) health_port: u16,
}

impl Validator<'_> {
    pub(super) fn err(&self, key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
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

    pub(super) fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
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
            proxy_protocol: ProxyProtocol::default(),
            trusted_forwarders: Vec::with_capacity(raw.listen.trusted_forwarders.len()),
        };
        let mut listen = listen;
        for (i, net) in raw.listen.trusted_forwarders.iter().enumerate() {
            let t = net.trim();
            let parsed = t
                .parse::<ipnet::IpNet>()
                .or_else(|_| t.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    self.err(
                        format!("listen.trusted_forwarders[{i}]"),
                        format!(
                            "{t:?} is not a network; write e.g. \"10.0.0.0/8\" or \"192.0.2.7\""
                        ),
                    )
                })?;
            listen.trusted_forwarders.push(parsed.trunc());
        }
        for (i, name) in raw.listen.proxy_protocol.iter().enumerate() {
            let key = format!("listen.proxy_protocol[{i}]");
            match name.trim() {
                "https" if listen.https.is_some() => listen.proxy_protocol.https = true,
                "http" if listen.http.is_some() => listen.proxy_protocol.http = true,
                "https" | "http" => {
                    return Err(self.err(
                        key,
                        format!("{name:?} names a listener that is not configured"),
                    ))
                }
                _ => {
                    return Err(self.err(
                        key,
                        format!("{name:?}: name a public listener, \"https\" or \"http\""),
                    ))
                }
            }
        }
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
        let mut admin_hosts = Vec::with_capacity(raw.admin.hosts.len());
        for (i, h) in raw.admin.hosts.iter().enumerate() {
            match HostPattern::parse(h) {
                Ok(HostPattern::Exact(name)) => admin_hosts.push(name),
                _ => {
                    return Err(self.err(
                        format!("admin.hosts[{i}]"),
                        format!("{h:?} is not a host name; write e.g. \"rtcgate-admin.rtc.svc\""),
                    ))
                }
            }
        }
        let admin = AdminConfig {
            hosts: admin_hosts,
            token: Some(raw.admin.token).filter(|t| !t.is_empty()),
            token_for_reads: raw.admin.token_for_reads,
            state_file: match raw.admin.state_file.trim() {
                "" => None,
                f => {
                    let p = Path::new(f);
                    Some(if p.is_absolute() {
                        p.to_path_buf()
                    } else {
                        self.file.parent().unwrap_or(Path::new(".")).join(p)
                    })
                }
            },
        };
        let limits = self.limits(raw.limits)?;
        let mut pools = Vec::with_capacity(raw.pools.len());
        for (name, p) in raw.pools {
            pools.push(self.pool(name, p)?);
        }
        self.check_hosts(&pools)?;
        let discovery = self.discovery(raw.discovery, &pools)?;
        let turn = self.turn(raw.turn)?;
        let dns = self.dns(raw.dns)?;
        Ok(Config {
            source: self.file.to_path_buf(),
            listen,
            tls,
            sticky,
            admin,
            limits,
            log: LogConfig {
                access: raw.log.access,
                format: raw.log.format,
            },
            discovery,
            turn,
            dns,
            pools,
        })
    }

    fn dns(&self, d: RawDns) -> Result<DnsConfig, ConfigError> {
        let mut nameservers = Vec::with_capacity(d.nameservers.len());
        for (i, ns) in d.nameservers.iter().enumerate() {
            let t = ns.trim();
            let parsed = t
                .parse::<SocketAddr>()
                .or_else(|_| t.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    self.err(
                        format!("dns.nameservers[{i}]"),
                        format!("{t:?} is not a name server; write an IP (port 53) or IP:port, e.g. \"10.96.0.10\" or \"127.0.0.1:8600\""),
                    )
                })?;
            nameservers.push(parsed);
        }
        let interval = self.duration("dns.interval", &d.interval)?;
        let timeout = self.duration("dns.timeout", &d.timeout)?;
        if interval < Duration::from_millis(100) {
            return Err(self.err("dns.interval", "must be at least 100ms"));
        }
        if timeout.is_zero() || timeout > interval {
            return Err(self.err(
                "dns.timeout",
                "must be greater than zero and at most dns.interval",
            ));
        }
        Ok(DnsConfig {
            nameservers,
            interval,
            timeout,
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
        let ticket_keys = match t.ticket_keys.trim() {
            "" => None,
            f => Some(self.file("tls.ticket_keys", f)?),
        };
        Ok(TlsFiles {
            default,
            sni,
            ticket_keys,
        })
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
            shutdown_delay: self.opt_duration(
                "limits.shutdown_delay",
                &l.shutdown_delay,
                Duration::ZERO,
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
            h2_control_frames_per_second: l.h2_control_frames_per_second.unwrap_or(1000),
            buffer_budget: l.buffer_budget.unwrap_or(256 << 20),
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
        if !((p.room_balance_factor >= 1.0 || p.room_balance_factor == 0.0)
            && p.room_balance_factor.is_finite())
        {
            return Err(self.err(
                format!("{at}.room_balance_factor"),
                "must be a number of at least 1.0, or 0 (off)",
            ));
        }
        if p.max_sessions == 0 {
            return Err(self.err(format!("{at}.max_sessions"), "must be at least 1"));
        }
        if !(p.hard_cap >= 1.0 && p.hard_cap.is_finite()) {
            return Err(self.err(
                format!("{at}.hard_cap"),
                "must be a number of at least 1.0 (a multiple of max_sessions)",
            ));
        }
        let room_param = Some(p.room_param.trim().to_string()).filter(|r| !r.is_empty());
        let machine_param = Some(p.machine_param.trim().to_string()).filter(|m| !m.is_empty());
        let health = self.health(&at, p.health)?;
        let mut backends = Vec::with_capacity(p.backends.len());
        let mut dns_backends = Vec::new();
        let mut ids = HashSet::new();
        let defaults = BackendDefaults {
            max_sessions: p.max_sessions,
            max_rooms: p.max_rooms,
            health_port: health.port,
        };
        for (i, b) in p.backends.into_iter().enumerate() {
            let key = format!("{at}.backends[{i}]");
            if !ids.insert(b.id.clone()) {
                return Err(self.err(
                    format!("{key}.id"),
                    format!("{:?} is used twice in pool {name}", b.id),
                ));
            }
            match self.backend(&key, &defaults, b)? {
                Member::Fixed(b) => backends.push(b),
                Member::Dns(b) => dns_backends.push(b),
            }
        }
        let scale = p.scale.map(|sc| self.scale(&at, sc)).transpose()?;
        Ok(PoolConfig {
            scale,
            hosts,
            room_param,
            machine_param,
            room_balance_factor: p.room_balance_factor,
            max_sessions: p.max_sessions,
            hard_cap: p.hard_cap,
            max_rooms: p.max_rooms,
            drain_timeout: self.duration(&format!("{at}.drain_timeout"), &p.drain_timeout)?,
            on_down: p.on_down,
            slow_start: self.duration(&format!("{at}.slow_start"), &p.slow_start)?,
            health,
            backends,
            dns_backends,
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
            port: h.port,
        })
    }

    fn scale(&self, at: &str, s: RawScale) -> Result<ScaleConfig, ConfigError> {
        let key = |k: &str| format!("{at}.scale.{k}");
        if !(0.0..=1.0).contains(&s.min_headroom) {
            return Err(self.err(key("min_headroom"), "must be a share from 0.0 to 1.0"));
        }
        if s.min_headroom > 0.0 && s.up_command.is_empty() {
            return Err(self.err(
                key("up_command"),
                "min_headroom is set: give the command to run, as an argv list",
            ));
        }
        for (k, argv) in [
            ("up_command", &s.up_command),
            ("down_command", &s.down_command),
        ] {
            if argv.first().is_some_and(|c| c.trim().is_empty()) {
                return Err(self.err(key(k), "the program (first item) is empty"));
            }
        }
        if s.min_backends == 0 {
            return Err(self.err(
                key("min_backends"),
                "must be at least 1: the last backend is never scaled down",
            ));
        }
        let timeout = self.duration(&key("timeout"), &s.timeout)?;
        if timeout.is_zero() {
            return Err(self.err(key("timeout"), "must be greater than zero"));
        }
        Ok(ScaleConfig {
            min_headroom: s.min_headroom,
            sustain: self.duration(&key("sustain"), &s.sustain)?,
            up_command: s.up_command,
            cooldown: self.duration(&key("cooldown"), &s.cooldown)?,
            timeout,
            down_command: s.down_command,
            idle_after: self.duration(&key("idle_after"), &s.idle_after)?,
            min_backends: s.min_backends,
        })
    }

    /// One backend of a pool, from the file or from the admin API.
    pub(super) fn backend(
        &self,
        key: &str,
        defaults: &BackendDefaults,
        b: RawBackend,
    ) -> Result<Member, ConfigError> {
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
        let max_sessions = b.max_sessions.unwrap_or(defaults.max_sessions);
        if max_sessions == 0 {
            return Err(self.err(format!("{key}.max_sessions"), "must be at least 1"));
        }
        if !(1..=1000).contains(&b.weight) {
            return Err(self.err(format!("{key}.weight"), "must be from 1 to 1000"));
        }
        let health_port = match b.health_port {
            0 => defaults.health_port,
            port => port,
        };
        let address = match self.backend_address(&format!("{key}.address"), &b.address)? {
            Address::Ip(address) => address,
            Address::Dns(lookup) => {
                if !b.public_url.trim().is_empty() {
                    return Err(self.err(
                        format!("{key}.public_url"),
                        "a backend named by DNS stands for several servers, and one URL cannot name each of them; leave public_url out",
                    ));
                }
                return Ok(Member::Dns(DnsBackend {
                    id: b.id,
                    lookup,
                    health_port,
                    max_sessions,
                    max_rooms: b.max_rooms.unwrap_or(defaults.max_rooms),
                    weight: b.weight,
                }));
            }
        };
        let mut check_address = address;
        if health_port != 0 {
            check_address.set_port(health_port);
        }
        let public_url = match b.public_url.trim() {
            "" => None,
            url => Some(self.ws_url(&format!("{key}.public_url"), url)?),
        };
        Ok(Member::Fixed(BackendConfig {
            address,
            check_address,
            id: b.id,
            max_sessions,
            max_rooms: b.max_rooms.unwrap_or(defaults.max_rooms),
            weight: b.weight,
            public_url,
        }))
    }

    /// A backend's address: `IP:port`, `name:port` (its A and AAAA records) or
    /// `_service._proto.name` (its SRV records).
    fn backend_address(&self, key: &str, s: &str) -> Result<Address, ConfigError> {
        let s = s.trim();
        if let Ok(address) = s.parse() {
            return Ok(Address::Ip(address));
        }
        let bad = || {
            self.err(
                key,
                format!("{s:?} is not an address; write IP:port (\"127.0.0.1:9001\", \"[::1]:9001\"), a DNS name and port (\"media.example.internal:8188\") or an SRV name (\"_janus._tcp.media.example.internal\")"),
            )
        };
        let name = |n: &str| {
            let n = n.strip_suffix('.').unwrap_or(n);
            let ok = !n.is_empty()
                && n.len() <= 253
                && n.parse::<IpAddr>().is_err()
                && n.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes()
                            .all(|c| c.is_ascii_alphanumeric() || b"-_".contains(&c))
                });
            ok.then(|| n.to_ascii_lowercase())
        };
        if s.starts_with('_') {
            return name(s)
                .map(|n| Address::Dns(DnsLookup::Srv(n)))
                .ok_or_else(bad);
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(bad)?;
        let name = name(host).ok_or_else(bad)?;
        Ok(Address::Dns(DnsLookup::Host { name, port }))
    }

    /// A `ws://` or `wss://` URL with a host.
    fn ws_url(&self, key: &str, url: &str) -> Result<String, ConfigError> {
        let ok = url
            .parse::<http::Uri>()
            .ok()
            .filter(|u| matches!(u.scheme_str(), Some("ws" | "wss")))
            .is_some_and(|u| u.host().is_some_and(|h| !h.is_empty()));
        if !ok {
            return Err(self.err(
                key,
                format!("{url:?} is not a WebSocket URL; write e.g. \"wss://media-1.example.com:8989/\""),
            ));
        }
        Ok(url.to_string())
    }

    fn discovery(
        &self,
        d: RawDiscovery,
        pools: &[PoolConfig],
    ) -> Result<Option<Discovery>, ConfigError> {
        let path = d.path.trim();
        if path.is_empty() {
            return Ok(None);
        }
        let path_ok = |p: &str| {
            p.starts_with('/')
                && p.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
        };
        if !path_ok(path) {
            return Err(self.err(
                "discovery.path",
                format!("{path:?} must be a path starting with '/', without '?' or '#' (or \"\" for off)"),
            ));
        }
        let ws_path = d.ws_path.trim();
        if !path_ok(ws_path) {
            return Err(self.err(
                "discovery.ws_path",
                format!("{ws_path:?} must be a path starting with '/', without '?' or '#'"),
            ));
        }
        let public_host = match d.public_host.trim() {
            "" => None,
            h => match h.parse::<http::uri::Authority>() {
                Ok(a) if !a.host().is_empty() && !a.as_str().contains('@') => Some(h.to_string()),
                _ => {
                    return Err(self.err(
                        "discovery.public_host",
                        format!("{h:?} is not a host; write e.g. \"rtc.example.com\" or \"rtc.example.com:8443\""),
                    ))
                }
            },
        };
        let token_param = d.token_param.trim();
        if token_param.is_empty()
            || !token_param
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(self.err(
                "discovery.token_param",
                format!("{token_param:?} must be letters, digits, '-', '_' or '.'"),
            ));
        }
        let token_ttl = self.duration("discovery.token_ttl", &d.token_ttl)?;
        if token_ttl.is_zero() {
            return Err(self.err("discovery.token_ttl", "must be greater than zero"));
        }
        let mut cors_origins = Vec::with_capacity(d.cors_origins.len());
        for (i, o) in d.cors_origins.iter().enumerate() {
            let o = o.trim().trim_end_matches('/');
            let origin_ok = o == "*"
                || o.parse::<http::Uri>().is_ok_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https"))
                        && u.host().is_some_and(|h| !h.is_empty())
                        && u.path_and_query().is_none_or(|p| p.as_str() == "/")
                        && !o.contains('@')
                });
            if !origin_ok {
                return Err(self.err(
                    format!("discovery.cors_origins[{i}]"),
                    format!(
                        "{o:?} is not an origin; write e.g. \"https://app.example.com\" or \"*\""
                    ),
                ));
            }
            cors_origins.push(o.to_ascii_lowercase());
        }
        if d.mode == DiscoveryMode::Direct {
            for p in pools {
                if let Some(b) = p.dns_backends.first() {
                    return Err(self.err(
                        format!("pools.{}.backends", p.name),
                        format!("discovery.mode is \"direct\", which hands out each backend's own public_url; backend {:?} is named by DNS and its addresses have none", b.id),
                    ));
                }
                if let Some(b) = p.backends.iter().find(|b| b.public_url.is_none()) {
                    return Err(self.err(
                        format!("pools.{}.backends", p.name),
                        format!(
                            "discovery.mode is \"direct\", so backend {:?} needs a public_url",
                            b.id
                        ),
                    ));
                }
            }
        }
        Ok(Some(Discovery {
            path: path.to_string(),
            mode: d.mode,
            ws_path: ws_path.to_string(),
            public_host,
            reservation: self.duration("discovery.reservation", &d.reservation)?,
            token_ttl,
            token_param: token_param.to_string(),
            cors_origins,
        }))
    }

    fn turn(&self, t: RawTurn) -> Result<Option<Turn>, ConfigError> {
        let path = t.path.trim();
        if path.is_empty() {
            return Ok(None);
        }
        if !path.starts_with('/') || path.contains(['?', '#']) {
            return Err(self.err(
                "turn.path",
                format!("{path:?} must be a path starting with '/' (or \"\" for off)"),
            ));
        }
        if t.secret.len() < 16 {
            return Err(self.err(
                "turn.secret",
                "set coturn's static-auth-secret, at least 16 characters",
            ));
        }
        if t.urls.is_empty() {
            return Err(self.err(
                "turn.urls",
                "list at least one \"turn:host:port?transport=udp\", \"turns:…\" or \"stun:…\" URL",
            ));
        }
        let mut urls = Vec::with_capacity(t.urls.len());
        for (i, u) in t.urls.iter().enumerate() {
            let parsed = turn_url(u.trim()).ok_or_else(|| {
                self.err(
                    format!("turn.urls[{i}]"),
                    format!("{u:?} is not a TURN or STUN URL; write e.g. \"turn:turn.example.com:3478?transport=udp\""),
                )
            })?;
            urls.push(parsed);
        }
        let auth_url = match (t.auth, t.auth_url.trim()) {
            (TurnAuth::Forward, "") => {
                return Err(self.err("turn.auth_url", "auth = \"forward\" needs an auth_url"))
            }
            (_, "") => None,
            (_, u) => {
                let uri: http::Uri = u
                    .parse()
                    .map_err(|_| self.err("turn.auth_url", format!("{u:?} is not a URL")))?;
                let plain = uri.scheme_str() == Some("http")
                    && uri.authority().is_some_and(|a| !a.as_str().contains('@'));
                if !plain {
                    return Err(self.err(
                        "turn.auth_url",
                        format!("{u:?}: write an http:// URL of the auth service, e.g. \"http://127.0.0.1:8000/auth\""),
                    ));
                }
                Some(uri)
            }
        };
        let auth_user_header = http::HeaderName::from_bytes(t.auth_user_header.trim().as_bytes())
            .map_err(|_| {
            self.err(
                "turn.auth_user_header",
                format!("{:?} is not a header name", t.auth_user_header),
            )
        })?;
        let auth_timeout = self.duration("turn.auth_timeout", &t.auth_timeout)?;
        if auth_timeout.is_zero() {
            return Err(self.err("turn.auth_timeout", "must be greater than zero"));
        }
        let ttl = self.duration("turn.ttl", &t.ttl)?;
        if ttl < Duration::from_secs(60) {
            return Err(self.err("turn.ttl", "must be at least 60s"));
        }
        let health = self.health(
            "turn",
            RawHealth {
                path: String::new(),
                interval: t.health.interval,
                timeout: t.health.timeout,
                rise: t.health.rise,
                fall: t.health.fall,
                port: 0,
            },
        )?;
        Ok(Some(Turn {
            path: path.to_string(),
            secret: t.secret.into_bytes(),
            urls,
            ttl,
            auth: t.auth,
            auth_url,
            auth_user_header,
            auth_cache: self.duration("turn.auth_cache", &t.auth_cache)?,
            auth_timeout,
            health,
        }))
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

/// `turn:host[:port][?transport=udp|tcp]`, `turns:…` or `stun:…` (RFC 7064, RFC 7065), with
/// the default ports 3478 and 5349 (`turns:`).
fn turn_url(url: &str) -> Option<TurnUrl> {
    let (scheme, rest) = url.split_once(':')?;
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    let tls = match scheme {
        "turn" | "stun" => false,
        "turns" | "stuns" => true,
        _ => return None,
    };
    let transport = match query {
        None => None,
        Some(q) => match q.strip_prefix("transport=")? {
            "udp" if !tls => Some("udp"),
            "tcp" => Some("tcp"),
            _ => return None,
        },
    };
    if scheme.starts_with("stun") && transport.is_some() {
        return None;
    }
    let default_port = if tls { 5349 } else { 3478 };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (hostport.to_string(), default_port),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
    if !host_ok || port == 0 {
        return None;
    }
    Some(TurnUrl {
        url: url.to_string(),
        host,
        port,
        tcp: tls || transport == Some("tcp"),
    })
}

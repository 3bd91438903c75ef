//! The immutable, config-derived view of the world that each request reads once: pools, their
//! members, routing by `Host`, and the TLS config.
//!
//! A snapshot is built whole from a validated config and swapped whole (`arc_swap`, in
//! [`Shared`](crate::state::Shared)), so a request never sees half of a reload. Backend runtime
//! state is not owned here but borrowed from the registry (`registry.rs`), which is what lets it
//! survive the swap. Deciding which member takes a request is `balance.rs`'s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use rustls::ServerConfig;

use crate::config::{Config, ConfigError, HostPattern, PoolConfig};
use crate::metrics::PoolMetrics;
use crate::settings::http::HttpBuilders;
use crate::state::backend::Backend;
use crate::state::registry::{Registry, Wanted};
use crate::state::turn::TurnServer;
use crate::sticky::{PinCache, StickyCookie};

/// A backend as one snapshot lists it: shared runtime state plus this config's settings for it.
#[derive(Debug)]
pub struct Member {
    pub backend: Arc<Backend>,
    /// Where its health is checked (its own address unless the config names a check port).
    pub check_addr: SocketAddr,
    pub weight: u32,
    pub max_sessions: u32,
    /// Live rooms it takes at most (0: no cap).
    pub max_rooms: u32,
    /// Hash of the backend's id, the per-backend half of a room's rendezvous score.
    pub id_hash: u64,
    /// Its session-cookie token, when cookies carry no expiry.
    pub pin_cache: Option<PinCache>,
}

impl Member {
    pub fn new(backend: Arc<Backend>, weight: u32, max_sessions: u32) -> Member {
        Member {
            id_hash: xxhash_rust::xxh3::xxh3_64(backend.id.as_bytes()),
            check_addr: backend.addr,
            backend,
            weight,
            max_sessions,
            max_rooms: 0,
            pin_cache: None,
        }
    }
}

#[derive(Debug)]
pub struct Pool {
    pub config: PoolConfig,
    pub members: Vec<Member>,
    /// Member index by backend id, for cookie lookups.
    by_id: HashMap<Arc<str>, usize>,
    /// Whether every member has the same weight (rendezvous can then skip the logarithm).
    pub uniform_weight: bool,
    /// Rotating tie-break for least-loaded placement.
    pub rotor: AtomicUsize,
    pub metrics: Arc<PoolMetrics>,
}

impl Pool {
    pub fn new(config: PoolConfig, members: Vec<Member>, metrics: PoolMetrics) -> Pool {
        let by_id = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.backend.id.clone(), i))
            .collect();
        let uniform_weight = members.windows(2).all(|w| w[0].weight == w[1].weight);
        Pool {
            config,
            members,
            by_id,
            uniform_weight,
            rotor: AtomicUsize::new(0),
            metrics: Arc::new(metrics),
        }
    }

    /// The member whose backend has this id.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.by_id.get(id).map(|&i| &self.members[i])
    }
}

#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub tls: Option<Arc<ServerConfig>>,
    /// HTTP server settings from `[limits]`, for new connections.
    pub http: Arc<HttpBuilders>,
    pub sticky: StickyCookie,
    /// The TURN servers of `[turn]`, when it is on.
    pub turn: Vec<Arc<TurnServer>>,
    pub pools: Vec<Pool>,
    router: Router,
}

impl Snapshot {
    /// Builds a snapshot of `config`, loading its certificates, and reusing the registry's
    /// state for backends that stay.
    pub fn build(config: Config, registry: &Registry) -> Result<Snapshot, ConfigError> {
        let tls = crate::settings::tls::server_config(&config)?;
        Ok(Snapshot::assemble(config, tls, registry))
    }

    /// The same configuration again, after the registry's leaving backends changed.
    pub fn rebuild(&self, registry: &Registry) -> Snapshot {
        Snapshot::assemble((*self.config).clone(), self.tls.clone(), registry)
    }

    /// Builds a snapshot of a validated `config` whose certificates are already loaded.
    pub fn assemble(
        config: Config,
        tls: Option<Arc<ServerConfig>>,
        registry: &Registry,
    ) -> Snapshot {
        let wanted: Vec<Wanted<'_>> = config
            .pools
            .iter()
            .flat_map(|p| {
                p.backends.iter().map(move |b| Wanted {
                    pool: &p.name,
                    id: &b.id,
                    addr: b.address,
                    check_addr: b.check_address,
                    weight: b.weight,
                    max_sessions: b.max_sessions,
                    drain_timeout: p.drain_timeout,
                })
            })
            .collect();
        let (states, leaving) = registry.update(&wanted);
        let mut states = states.into_iter();
        let sticky = StickyCookie::new(&config.sticky);
        let pools = config
            .pools
            .iter()
            .map(|p| {
                let mut members: Vec<Member> = p
                    .backends
                    .iter()
                    .zip(states.by_ref())
                    .map(|(b, backend)| Member {
                        pin_cache: sticky.cache_for(&p.name, &b.id),
                        check_addr: b.check_address,
                        max_rooms: b.max_rooms,
                        ..Member::new(backend, b.weight, b.max_sessions)
                    })
                    .collect();
                // Leaving backends stay listed, draining, so their pinned users keep working;
                // a listed backend with the same id (a new address) takes precedence.
                for l in leaving.iter().filter(|l| *l.backend.pool == *p.name) {
                    if !members.iter().any(|m| m.backend.id == l.backend.id) {
                        members.push(Member {
                            pin_cache: sticky.cache_for(&p.name, &l.backend.id),
                            check_addr: l.check_addr,
                            ..Member::new(l.backend.clone(), l.weight, l.max_sessions)
                        });
                    }
                }
                Pool::new(p.clone(), members, registry.metrics().pool(&p.name))
            })
            .collect();
        let router = Router::new(&config.pools);
        let turn = registry.turn_servers(config.turn.as_ref().map_or(&[][..], |t| &t.urls));
        Snapshot {
            turn,
            http: Arc::new(HttpBuilders::new(&config.limits)),
            sticky,
            config: Arc::new(config),
            tls,
            pools,
            router,
        }
    }

    /// The pool serving `host` (no port, any case), if any.
    pub fn route(&self, host: &str) -> Option<&Pool> {
        self.router.route(host).map(|i| &self.pools[i])
    }

    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.config.name == name)
    }
}

/// Host → pool index: exact names, then the longest matching `*.suffix`, then `*`.
#[derive(Debug, Default)]
struct Router {
    exact: HashMap<String, usize>,
    /// Longest suffix first.
    suffixes: Vec<(String, usize)>,
    any: Option<usize>,
}

impl Router {
    fn new(pools: &[PoolConfig]) -> Router {
        let mut r = Router::default();
        for (i, p) in pools.iter().enumerate() {
            for h in &p.hosts {
                match h {
                    HostPattern::Any => r.any = Some(i),
                    HostPattern::Suffix(s) => r.suffixes.push((s.clone(), i)),
                    HostPattern::Exact(e) => {
                        r.exact.insert(e.clone(), i);
                    }
                }
            }
        }
        r.suffixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        r
    }

    fn route(&self, host: &str) -> Option<usize> {
        if !self.exact.is_empty() || !self.suffixes.is_empty() {
            let host = host.to_ascii_lowercase();
            if let Some(&i) = self.exact.get(&host) {
                return Some(i);
            }
            if let Some((_, i)) = self
                .suffixes
                .iter()
                .find(|(s, _)| host.ends_with(s.as_str()))
            {
                return Some(*i);
            }
        }
        self.any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(hosts: &[&[&str]]) -> Router {
        let pools: Vec<PoolConfig> = hosts
            .iter()
            .enumerate()
            .map(|(i, hosts)| {
                let mut toml = String::from(
                    "[listen]\nhttp = \"127.0.0.1:0\"\n[sticky]\nkeys = [\"k:0123456789abcdef0123456789abcdef\"]\n",
                );
                toml.push_str(&format!("[pools.p{i}]\nhosts = {hosts:?}\n"));
                Config::parse(&toml, std::path::Path::new("proxy.toml"))
                    .expect("config")
                    .pools
                    .remove(0)
            })
            .collect();
        Router::new(&pools)
    }

    /// Exact names first, then the longest `*.suffix`, then `*`; any case, no port.
    #[test]
    fn hosts_route_exact_then_longest_suffix_then_any() {
        let r = router(&[
            &["*"],
            &["*.example.com"],
            &["*.eu.example.com"],
            &["rtc.eu.example.com", "Media.Example.org"],
        ]);
        assert_eq!(r.route("rtc.eu.example.com"), Some(3));
        assert_eq!(
            r.route("RTC.EU.Example.COM"),
            Some(3),
            "names match in any case"
        );
        assert_eq!(r.route("media.example.org"), Some(3));
        assert_eq!(
            r.route("sfu.eu.example.com"),
            Some(2),
            "the longest suffix wins"
        );
        assert_eq!(
            r.route("a.b.example.com"),
            Some(1),
            "a suffix covers several labels"
        );
        assert_eq!(
            r.route("example.com"),
            Some(0),
            "*.example.com needs a label before it"
        );
        assert_eq!(r.route("elsewhere.net"), Some(0));
    }

    /// Without `*`, a host no pattern covers has no pool (the client gets a 404).
    #[test]
    fn without_a_catch_all_an_unknown_host_has_no_pool() {
        let r = router(&[&["rtc.example.com"], &["*.example.net"]]);
        assert_eq!(r.route("rtc.example.com"), Some(0));
        assert_eq!(r.route("x.example.net"), Some(1));
        assert_eq!(r.route("example.net"), None);
        assert_eq!(r.route("other.example.com"), None);
    }
}

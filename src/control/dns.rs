//! Backends named by DNS (`address = "media.example.internal:8188"`, or an SRV name such as
//! `"_janus._tcp.media.example.internal"`): a Kubernetes headless service, Consul, a cloud's
//! instance-group DNS. Each name becomes one backend per address it resolves to, named
//! `{id}-{ip}-{port}` so that an address keeps its id (and its users' pins) from one lookup to
//! the next.
//!
//! Every name is looked up when rtcgate starts, after a reload, and every `[dns] interval`. When
//! the addresses change the snapshot is rebuilt: new addresses take users at once (after their
//! health checks, like any new backend), vanished ones drain and are removed once nothing is
//! left on them. A lookup that fails (a timeout, a server failure) keeps the addresses the name
//! had; an answer with no records (NXDOMAIN, or no data) is an answer, and the name has no
//! backends until it has addresses again. Names are absolute: no search domains are tried.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::members::Resolved;
use crate::config::{Config, DnsConfig, DnsLookup};
use crate::control::runtime::Runtime;

/// The names' latest addresses and lookups.
pub struct Dns {
    resolved: Mutex<Resolved>,
    outcomes: Mutex<BTreeMap<(String, String), Outcome>>,
    /// Asks the resolver task for a round now (after a reload).
    kick: Notify,
    /// Rounds finished so far.
    rounds: tokio::sync::watch::Sender<u64>,
}

/// The last lookup of one name, for `/status`.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub at: SystemTime,
    /// Why it failed; `None` when it was answered.
    pub error: Option<String>,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            resolved: Mutex::default(),
            outcomes: Mutex::default(),
            kick: Notify::new(),
            rounds: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Dns {
    /// Waits (at most `limit`) until the first round of lookups is over, so that the first
    /// requests find the names' backends.
    pub async fn first_round(&self, limit: std::time::Duration) {
        let mut rounds = self.rounds.subscribe();
        let _ = tokio::time::timeout(limit, rounds.wait_for(|n| *n > 0)).await;
    }

    /// The addresses each name resolved to last.
    pub fn resolved(&self) -> Resolved {
        self.resolved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The last lookup of entry `id` of `pool`.
    pub fn outcome(&self, pool: &str, id: &str) -> Option<Outcome> {
        self.outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(pool.to_string(), id.to_string()))
            .cloned()
    }

    /// Asks for a round of lookups now.
    pub fn kick(&self) {
        self.kick.notify_one();
    }
}

/// Looks the file's DNS names up now and every `[dns] interval` (or at once when kicked),
/// until `stop`.
pub(super) async fn run(runtime: Arc<Runtime>, stop: CancellationToken) {
    let mut resolver: Option<(DnsConfig, TokioResolver)> = None;
    loop {
        let config = runtime.file_config();
        let interval = config.dns.interval;
        if config.pools.iter().any(|p| !p.dns_backends.is_empty()) {
            if resolver.as_ref().is_none_or(|(c, _)| *c != config.dns) {
                resolver = match build(&config.dns) {
                    Ok(r) => Some((config.dns.clone(), r)),
                    Err(e) => {
                        tracing::error!(error = %e, "no DNS resolver: the system's configuration cannot be read; backends named by DNS keep their addresses");
                        None
                    }
                };
            }
            if let Some((_, r)) = &resolver {
                round(&runtime, &config, r).await;
            }
        }
        runtime.dns.rounds.send_modify(|n| *n += 1);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = runtime.dns.kick.notified() => {}
        }
    }
}

fn build(c: &DnsConfig) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if c.nameservers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| e.to_string())?
    } else {
        let servers = c
            .nameservers
            .iter()
            .map(|a| {
                let connection = |mut cc: ConnectionConfig| {
                    cc.port = a.port();
                    cc
                };
                NameServerConfig::new(
                    a.ip(),
                    true,
                    vec![
                        connection(ConnectionConfig::udp()),
                        connection(ConnectionConfig::tcp()),
                    ],
                )
            })
            .collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
    };
    let opts = builder.options_mut();
    opts.timeout = c.timeout;
    opts.attempts = 1;
    // Every round asks the servers: the interval, not the records' TTLs, says how stale an
    // address may be (Envoy's strict DNS does the same by default).
    opts.cache_size = 0;
    opts.positive_max_ttl = Some(std::time::Duration::ZERO);
    opts.negative_max_ttl = Some(std::time::Duration::ZERO);
    builder.build().map_err(|e| e.to_string())
}

/// One lookup of every name of `config`; what changed is applied.
async fn round(runtime: &Runtime, config: &Config, resolver: &TokioResolver) {
    let entries: Vec<(String, String, DnsLookup)> = config
        .pools
        .iter()
        .flat_map(|p| {
            p.dns_backends
                .iter()
                .map(|d| (p.name.clone(), d.id.clone(), d.lookup.clone()))
        })
        .collect();
    let lookups = entries.iter().map(|(_, _, l)| async {
        tokio::time::timeout(config.dns.timeout * 2, lookup(resolver, l))
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
    });
    let answers = futures_util::future::join_all(lookups).await;
    let mut wanted = Resolved::new();
    let before = runtime.dns.resolved();
    let mut outcomes = BTreeMap::new();
    for ((pool, id, l), answer) in entries.into_iter().zip(answers) {
        let key = (pool, id);
        let m = runtime.metrics();
        match answer {
            Ok(addresses) => {
                m.dns_lookups
                    .with_label_values(&[
                        key.0.as_str(),
                        if addresses.is_empty() { "empty" } else { "ok" },
                    ])
                    .inc();
                if addresses.is_empty() && before.get(&key).is_some_and(|a| !a.is_empty()) {
                    tracing::warn!(pool = %key.0, backend = %key.1, name = %l, "the name has no addresses now: its backends drain");
                }
                outcomes.insert(
                    key.clone(),
                    Outcome {
                        at: SystemTime::now(),
                        error: None,
                    },
                );
                wanted.insert(key, addresses);
            }
            Err(e) => {
                m.dns_lookups
                    .with_label_values(&[key.0.as_str(), "error"])
                    .inc();
                let again = runtime
                    .dns
                    .outcome(&key.0, &key.1)
                    .and_then(|o| o.error)
                    .is_some_and(|was| was == e);
                if !again {
                    tracing::warn!(pool = %key.0, backend = %key.1, name = %l, error = %e, "DNS lookup failed; the name keeps the addresses it had");
                }
                outcomes.insert(
                    key.clone(),
                    Outcome {
                        at: SystemTime::now(),
                        error: Some(e),
                    },
                );
                if let Some(kept) = before.get(&key) {
                    wanted.insert(key, kept.clone());
                }
            }
        }
    }
    *runtime
        .dns
        .outcomes
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = outcomes;
    if wanted != before {
        runtime.apply_resolved(wanted);
    }
}

/// The addresses `l` names, sorted and without duplicates; empty when the answer has none.
async fn lookup(resolver: &TokioResolver, l: &DnsLookup) -> Result<Vec<SocketAddr>, String> {
    let absolute = |n: &str| {
        Name::from_ascii(n)
            .map(|mut n| {
                n.set_fqdn(true);
                n
            })
            .map_err(|e| e.to_string())
    };
    let mut out = Vec::new();
    match l {
        DnsLookup::Host { name, port } => match resolver.lookup_ip(absolute(name)?).await {
            Ok(ips) => out.extend(ips.iter().map(|ip| SocketAddr::new(ip, *port))),
            Err(e) if e.is_no_records_found() => {}
            Err(e) => return Err(e.to_string()),
        },
        DnsLookup::Srv(name) => {
            let srv = match resolver.srv_lookup(absolute(name)?).await {
                Ok(srv) => srv,
                Err(e) if e.is_no_records_found() => return Ok(out),
                Err(e) => return Err(e.to_string()),
            };
            for record in srv.answers() {
                let RData::SRV(s) = &record.data else {
                    continue;
                };
                // The targets' addresses usually come with the answer; otherwise, ask.
                let given: Vec<_> = srv
                    .additionals()
                    .iter()
                    .filter(|a| a.name == s.target)
                    .filter_map(|a| match &a.data {
                        RData::A(ip) => Some(std::net::IpAddr::V4(ip.0)),
                        RData::AAAA(ip) => Some(std::net::IpAddr::V6(ip.0)),
                        _ => None,
                    })
                    .collect();
                if !given.is_empty() {
                    out.extend(given.into_iter().map(|ip| SocketAddr::new(ip, s.port)));
                    continue;
                }
                match resolver.lookup_ip(s.target.clone()).await {
                    Ok(ips) => out.extend(ips.iter().map(|ip| SocketAddr::new(ip, s.port))),
                    Err(e) if e.is_no_records_found() => {}
                    Err(e) => return Err(format!("{}: {e}", s.target)),
                }
            }
        }
    }
    for a in &mut out {
        a.set_ip(a.ip().to_canonical());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

impl Runtime {
    /// Makes `resolved` the names' addresses: the snapshot is rebuilt with them, and the
    /// backends of addresses that vanished drain out and are removed at zero.
    fn apply_resolved(&self, resolved: Resolved) {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let file = self.file_config();
        let ids = |r: &Resolved| -> Vec<(String, String)> {
            file.pools
                .iter()
                .flat_map(|p| {
                    p.dns_backends.iter().flat_map(move |d| {
                        r.get(&(p.name.clone(), d.id.clone()))
                            .into_iter()
                            .flatten()
                            .map(move |a| (p.name.clone(), d.at(*a).id))
                    })
                })
                .collect()
        };
        let before = ids(&self.dns.resolved());
        let after = ids(&resolved);
        for (pool, id) in after.iter().filter(|k| !before.contains(k)) {
            tracing::info!(%pool, backend = %id, "a DNS name's new address joins the pool");
        }
        *self.dns.resolved.lock().unwrap_or_else(|e| e.into_inner()) = resolved;
        self.rebuild(&file, &self.api_backends());
        for (pool, id) in before.iter().filter(|k| !after.contains(k)) {
            tracing::info!(%pool, backend = %id, "a DNS name's address vanished: draining out");
            self.registry.remove_when_drained(pool, id);
        }
    }
}

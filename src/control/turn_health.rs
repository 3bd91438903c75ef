//! TURN servers' health: a STUN Binding request over UDP to each `turn:`/`stun:` URL (a TCP
//! connect for `turns:` and `?transport=tcp` ones) every `[turn.health] interval`, counted by
//! rise and fall as backends are. Only servers that are up are handed to clients (`proxy::turn`).
//!
//! [`TurnCheckers::sync`] makes the running checkers match a snapshot, one per URL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::config::{HealthConfig, TurnUrl};
use crate::control::health::{jittered, Checkers};
use crate::state::health::CheckRecord;
use crate::state::snapshot::Snapshot;
use crate::state::turn::TurnServer;

/// STUN's magic cookie (RFC 5389 §6).
const MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];

/// One checker task per TURN URL of the current snapshot.
#[derive(Default)]
pub struct TurnCheckers {
    checkers: Checkers<String, (TurnUrl, HealthConfig)>,
}

impl TurnCheckers {
    /// Starts, keeps or stops checkers so that exactly the TURN servers of `snap` are checked.
    pub fn sync(&self, snap: &Snapshot) {
        let config = snap.config.turn.as_ref().map(|t| &t.health);
        let wanted = config.into_iter().flat_map(|config| {
            snap.turn.iter().map(move |server| {
                let settings = (server.url.clone(), config.clone());
                (server.url.url.clone(), settings, server.clone())
            })
        });
        self.checkers.sync(wanted, |server, (_, config), stop| {
            tokio::spawn(check_loop(server, config.clone(), stop));
        });
    }

    /// Stops every checker.
    pub fn stop_all(&self) {
        self.checkers.stop_all();
    }
}

async fn check_loop(server: Arc<TurnServer>, config: HealthConfig, stop: CancellationToken) {
    loop {
        let result = tokio::select! {
            r = tokio::time::timeout(config.timeout, probe(&server.url)) => {
                r.unwrap_or_else(|_| Err(Failed::Server(format!("no answer within {:?}", config.timeout))))
            }
            _ = stop.cancelled() => return,
        };
        crate::state::fds::reserve().refill();
        let result = match result {
            Ok(detail) => Ok(detail),
            Err(Failed::Server(detail)) => Err(detail),
            // rtcgate had no descriptor to check with: that says nothing about the server.
            Err(Failed::NoFds) => {
                tokio::select! {
                    _ = tokio::time::sleep(jittered(config.interval)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        let passed = result.is_ok();
        let detail = result.unwrap_or_else(|e| e);
        match server.health.count(passed, config.rise, config.fall) {
            Some(true) => tracing::info!(url = %server.url.url, %detail, "TURN server is up"),
            Some(false) => tracing::warn!(url = %server.url.url, %detail, "TURN server is down"),
            None => {}
        }
        server.health.set_last_check(CheckRecord {
            at: SystemTime::now(),
            passed,
            detail,
        });
        tokio::select! {
            _ = tokio::time::sleep(jittered(config.interval)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Why a probe failed: what the server did, or that rtcgate had no descriptor to ask with
/// (its reserve included).
enum Failed {
    Server(String),
    NoFds,
}

impl From<String> for Failed {
    fn from(s: String) -> Failed {
        Failed::Server(s)
    }
}

/// `what`'s socket call, `f`, tried again with a descriptor from the reserve if it met EMFILE.
async fn with_reserve<T, Fut>(what: &str, f: impl Fn() -> Fut) -> Result<T, Failed>
where
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    use crate::state::fds::{out_of_fds, reserve};
    let r = match f().await {
        Err(e) if out_of_fds(&e) && reserve().release("TURN check", &e) => f().await,
        r => r,
    };
    r.map_err(|e| {
        if out_of_fds(&e) {
            reserve().note("TURN check", &e);
            Failed::NoFds
        } else {
            Failed::Server(format!("{what}: {e}"))
        }
    })
}

/// One probe: `Ok` and `Err` both say what was seen.
async fn probe(url: &TurnUrl) -> Result<String, Failed> {
    let addr: SocketAddr = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("resolve {}: {e}", url.host))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", url.host))?;
    if url.tcp {
        with_reserve("connect", || TcpStream::connect(addr)).await?;
        return Ok("TCP connect".into());
    }
    stun_binding(addr).await
}

/// A STUN Binding request to `addr`, answered by a Binding success with its transaction id.
async fn stun_binding(addr: SocketAddr) -> Result<String, Failed> {
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = with_reserve("bind", || UdpSocket::bind(local)).await?;
    socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut request = [0u8; 20];
    request[..2].copy_from_slice(&BINDING_REQUEST);
    request[4..8].copy_from_slice(&MAGIC);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut request[8..20])
        .map_err(|_| "no random transaction id".to_string())?;
    socket
        .send(&request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 548];
    // Bounded by the caller's timeout; a stray datagram is skipped.
    loop {
        let n = socket
            .recv(&mut buf)
            .await
            .map_err(|e| format!("STUN: {e}"))?;
        if n >= 20 && buf[4..20] == request[4..20] {
            return if buf[..2] == BINDING_SUCCESS {
                Ok("STUN Binding success".into())
            } else {
                Err(format!("STUN answer type {:02x}{:02x}", buf[0], buf[1]).into())
            };
        }
    }
}

//! A real TURN server for the tests: coturn (Debian's `coturn`) on loopback with the TURN REST
//! scheme (`use-auth-secret`), and a check that an allocation succeeds with given credentials,
//! made by coturn's own client, `turnutils_uclient`.
//!
//! Loopback needs `allow-loopback-peers`; the listening port is chosen free for both UDP and
//! TCP at run time, the relay ports from a range above a UDP port that was free. The server is
//! ready when it answers a STUN binding request (`turnutils_stunclient`), and is killed when
//! dropped.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::*;

/// How long coturn may take to answer its first STUN request.
pub const COTURN_START: Duration = Duration::from_secs(20);

/// How long one allocation check may take: `turnutils_uclient` paces itself, about 5 s here.
pub const ALLOCATION: Duration = Duration::from_secs(30);

/// A running coturn.
pub struct Coturn {
    /// Where it listens, UDP and TCP.
    pub addr: SocketAddr,
    /// Its `static-auth-secret`.
    pub secret: String,
    /// The ports of its relayed addresses (on 127.0.0.1, its relay ip).
    pub relay: RangeInclusive<u16>,
    child: Child,
    dir: tempfile::TempDir,
}

/// A loopback port free for both TCP and UDP now.
fn free_tcp_and_udp_port() -> u16 {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP in 100 tries");
}

impl Coturn {
    /// Starts coturn with a fresh secret; `None` when it is not installed (which fails the
    /// test under `CI=true`, where `.ci/run` installs it).
    pub async fn start() -> Option<Coturn> {
        if !installed("turnserver") || !installed("turnutils_uclient") {
            required_in_ci("coturn");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_tcp_and_udp_port();
        let relay = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("udp")
            .port()
            .min(65_000);
        let secret = format!("test-turn-secret-{port}-{relay}");
        let log = std::fs::File::create(dir.path().join("turnserver.log")).expect("log");
        let child = Command::new("turnserver")
            .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--simple-log"])
            .args(["--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .arg(format!("--min-port={relay}"))
            .arg(format!("--max-port={}", relay + 100))
            .args(["--use-auth-secret", "--allow-loopback-peers"])
            .arg(format!("--static-auth-secret={secret}"))
            .arg("--realm=rtcgate.test")
            .arg(format!("--pidfile={}", dir.path().join("pid").display()))
            .args(["--log-file=stdout"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start turnserver");
        let mut coturn = Coturn {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            secret,
            relay: relay..=relay + 100,
            child,
            dir,
        };
        coturn.wait_ready().await;
        Some(coturn)
    }

    /// Waits until it answers a STUN binding request.
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + COTURN_START;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "turnserver exited during start-up ({status}):\n{}",
                    self.log()
                );
            }
            let probe = tokio::process::Command::new("turnutils_stunclient")
                .arg("-p")
                .arg(self.addr.port().to_string())
                .arg("127.0.0.1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status();
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), probe).await {
                if s.success() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "turnserver did not answer STUN within {COTURN_START:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("turnserver.log")).unwrap_or_default()
    }

    /// Credentials of the TURN REST scheme for `user`, valid for `ttl` from now (a negative
    /// `ttl` gives expired ones): `<expiry>:<user>`, and base64(HMAC-SHA1(secret, username)).
    pub fn credentials(&self, user: &str, ttl: i64) -> (String, String) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let username = format!("{}:{user}", now + ttl);
        let key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            self.secret.as_bytes(),
        );
        let tag = ring::hmac::sign(&key, username.as_bytes());
        (username, STANDARD.encode(tag.as_ref()))
    }

    /// Makes an allocation with `username` and `password` and relays a message through it
    /// (two clients, each through its own allocation): `Ok` when coturn allowed it, `Err`
    /// with the client's output when not.
    pub async fn allocate(&self, username: &str, password: &str) -> Result<(), String> {
        let run = tokio::process::Command::new("turnutils_uclient")
            .args(["-y", "-c", "-n", "1", "-m", "1"])
            .arg("-u")
            .arg(username)
            .arg("-w")
            .arg(password)
            .arg("-p")
            .arg(self.addr.port().to_string())
            .arg("127.0.0.1")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(ALLOCATION, run)
            .await
            .unwrap_or_else(|_| panic!("turnutils_uclient: no result within {ALLOCATION:?}"))
            .expect("turnutils_uclient");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let relayed = text.contains("tot_recv_msgs=2");
        if out.status.success() && relayed {
            Ok(())
        } else {
            Err(text)
        }
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `tool` is on the PATH.
pub fn installed(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
}

//! A Janus pool for the tests: real Janus gateways (Debian's `janus`) on loopback, each from a
//! config folder of its own, and a client of the Janus WebSocket API.
//!
//! Each instance gets its own `server_name` (the rtcgate backend id, so `info` names it), its own
//! WebSocket and HTTP transport ports (chosen free at run time), its own RTP port range, and
//! only what the tests use: the WebSocket and HTTP transports and the echotest plugin, linked
//! from the system's folders. rtcgate checks it with `GET /janus/info` on the HTTP transport's
//! port (`health_port`): on its WebSocket port Janus answers a plain GET with 403. Janus starts
//! in well under a second here; [`JANUS_START`] bounds it with a wide margin. An instance is
//! killed when dropped.
//!
//! ICE on loopback: Janus skips loopback interfaces when it gathers candidates, so it runs with
//! `loopback_ifaddrs.c` preloaded (built here with `cc`), which shows it 127.0.0.1 as its only,
//! ordinary interface, and with `--interface 127.0.0.1` for its SDP. Its media then stays on
//! 127.0.0.1 like everything else in the tests. [`echo_media`] runs `janus_echo.py` (aiortc)
//! against it.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::*;

/// How long a Janus instance may take to answer `/janus/info` after it is started.
pub const JANUS_START: Duration = Duration::from_secs(20);

/// One running Janus gateway.
pub struct Janus {
    pub name: String,
    /// The WebSocket transport (the Janus API, subprotocol `janus-protocol`).
    pub ws: SocketAddr,
    /// The HTTP transport: `/janus/info` answers 200.
    pub http: SocketAddr,
    /// Its RTP (and ICE) ports.
    pub rtp: RangeInclusive<u16>,
    child: Child,
    dir: tempfile::TempDir,
}

/// The folder holding Janus's plugins and transports (`/usr/lib/<triplet>/janus`), when Janus
/// is installed.
fn janus_lib() -> Option<PathBuf> {
    if !installed("janus") {
        return None;
    }
    std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("janus"))
        .find(|p| p.join("plugins").join("libjanus_echotest.so").exists())
}

/// Builds `loopback_ifaddrs.c` into `dir`; returns the library's path.
fn build_loopback_shim(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/loopback_ifaddrs.c");
    let lib = dir.join("loopback_ifaddrs.so");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&source)
        .arg("-ldl")
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc {}: {}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

/// A loopback TCP port nothing listens on now (bound, then released for Janus to take).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Janus {
    /// Starts `n` instances named `janus-1`, `janus-2`, …; `None` when Janus is not installed
    /// (which fails the test under `CI=true`, where `.ci/run` installs it).
    pub async fn pool(n: usize) -> Option<Vec<Janus>> {
        let Some(lib) = janus_lib() else {
            required_in_ci("janus");
            return None;
        };
        let mut pool = Vec::with_capacity(n);
        for i in 1..=n {
            pool.push(Janus::start(&format!("janus-{i}"), &lib).await);
        }
        Some(pool)
    }

    async fn start(name: &str, lib: &Path) -> Janus {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for (folder, files) in [
            ("plugins", &["libjanus_echotest.so"][..]),
            (
                "transports",
                &["libjanus_websockets.so", "libjanus_http.so"][..],
            ),
            ("events", &[][..]),
            ("loggers", &[][..]),
        ] {
            std::fs::create_dir(root.join(folder)).expect("folder");
            for f in files {
                std::os::unix::fs::symlink(lib.join(folder).join(f), root.join(folder).join(f))
                    .expect("link");
            }
        }
        let (ws_port, http_port) = (free_port(), free_port());
        // RTP ports of its own: a range from a UDP port that was free.
        let rtp = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("udp")
            .port()
            .min(65_000);
        let conf = |file: &str, text: String| {
            std::fs::write(root.join(file), text).expect("write config");
        };
        conf(
            "janus.jcfg",
            format!(
                "general: {{\n configs_folder = \"{r}\"\n plugins_folder = \"{r}/plugins\"\n \
                 transports_folder = \"{r}/transports\"\n events_folder = \"{r}/events\"\n \
                 loggers_folder = \"{r}/loggers\"\n debug_level = 4\n server_name = \"{name}\"\n}}\n\
                 media: {{ rtp_port_range = \"{rtp}-{}\" }}\nnat: {{ ice_ignore_list = \"vmnet\" }}\n",
                rtp + 100,
                r = root.display()
            ),
        );
        conf(
            "janus.transport.websockets.jcfg",
            format!(
                "general: {{ json = \"plain\", ws = true, ws_port = {ws_port}, ws_ip = \"127.0.0.1\", wss = false }}\n\
                 admin: {{ admin_ws = false, admin_wss = false }}\n"
            ),
        );
        conf(
            "janus.transport.http.jcfg",
            format!(
                "general: {{ json = \"plain\", base_path = \"/janus\", http = true, port = {http_port}, ip = \"127.0.0.1\", https = false }}\n\
                 admin: {{ admin_http = false, admin_https = false }}\n"
            ),
        );
        conf("janus.plugin.echotest.jcfg", "general: { }\n".to_string());
        let shim = build_loopback_shim(root);
        let log = std::fs::File::create(root.join("janus.log")).expect("log");
        let child = Command::new("janus")
            .arg("-F")
            .arg(root)
            .arg("-C")
            .arg(root.join("janus.jcfg"))
            .arg("--disable-colors")
            .args(["--interface", "127.0.0.1"])
            .env("LD_PRELOAD", &shim)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start janus");
        let mut janus = Janus {
            name: name.to_string(),
            ws: SocketAddr::from(([127, 0, 0, 1], ws_port)),
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            rtp: rtp..=rtp + 100,
            child,
            dir,
        };
        janus.wait_ready().await;
        janus
    }

    /// Waits until `/janus/info` answers with this instance's name.
    async fn wait_ready(&mut self) {
        let (http, name) = (self.http, self.name.clone());
        let deadline = tokio::time::Instant::now() + JANUS_START;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited during start-up ({status}):\n{}",
                    self.name,
                    self.log()
                );
            }
            if let Ok(Ok(tcp)) =
                tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(http)).await
            {
                // A Janus still starting may accept and then close without an answer: that is
                // "not yet", not a failure.
                let mut c = HttpClient::h1(tcp, http.to_string(), "http").await;
                let req = c
                    .request("GET", "/janus/info")
                    .body(empty())
                    .expect("request");
                if let Ok(resp) = c.send(req).await {
                    let ok = resp.status() == http::StatusCode::OK;
                    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
                    let named = body.ok().is_some_and(|b| {
                        serde_json::from_slice::<serde_json::Value>(&b.to_bytes())
                            .is_ok_and(|j| j["server-name"] == name)
                    });
                    if ok && named {
                        return;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not answer within {JANUS_START:?}:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("janus.log")).unwrap_or_default()
    }

    /// Freezes it (SIGSTOP), as a hung server: the kernel still accepts connections for it,
    /// and nothing answers. `resume` undoes it; dropping it kills it either way.
    pub fn hang(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {}", self.name);
    }

    /// Kills it at once (SIGKILL), as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// This instance as a backend in proxy.toml, checked on its HTTP transport.
    pub fn backend_toml(&self) -> String {
        format!(
            "\n[[pools.media.backends]]\nid = \"{}\"\naddress = \"{}\"\nhealth_port = {}\n",
            self.name,
            self.ws,
            self.http.port()
        )
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A proxy.toml for a pool of Janus instances: rooms named by `?room=`, checked quickly.
pub fn janus_config(pool: &[Janus]) -> String {
    let mut toml = config_toml(
        &[],
        "",
        "room_param = \"room\"\n\n[pools.media.health]\npath = \"/janus/info\"\n\
         interval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2\n",
    );
    for j in pool {
        toml.push_str(&j.backend_toml());
    }
    toml
}

/// A client of the Janus WebSocket API over any stream.
pub struct JanusClient<S> {
    pub ws: Ws<S>,
    next: u64,
}

impl<S> JanusClient<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    pub fn new(ws: Ws<S>) -> Self {
        JanusClient { ws, next: 0 }
    }

    /// Sends `request` with a transaction of its own and returns Janus's answer to it (acks
    /// and events of other transactions are passed over).
    pub async fn call(&mut self, mut request: Value) -> Value {
        self.next += 1;
        let transaction = format!("t{}", self.next);
        request["transaction"] = json!(transaction);
        within(
            "janus send",
            self.ws.send(Message::text(request.to_string())),
        )
        .await
        .expect("send");
        loop {
            let msg = within("janus answer", self.ws.next()).await;
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("no answer to {request}: {other:?}"),
            };
            let answer: Value = serde_json::from_str(text.as_str()).expect("JSON");
            if answer["transaction"] == transaction && answer["janus"] != "ack" {
                return answer;
            }
        }
    }

    /// `info`: the instance's `server-name`.
    pub async fn server_name(&mut self) -> String {
        let info = self.call(json!({ "janus": "info" })).await;
        info["server-name"]
            .as_str()
            .unwrap_or_else(|| panic!("no server-name in {info}"))
            .to_string()
    }

    /// `create` and `attach` to the echotest plugin: the session and handle ids.
    pub async fn session_with_echotest(&mut self) -> (u64, u64) {
        let created = self.call(json!({ "janus": "create" })).await;
        assert_eq!(created["janus"], "success", "{created}");
        let session = created["data"]["id"].as_u64().expect("session id");
        let attached = self
            .call(json!({ "janus": "attach", "session_id": session, "plugin": "janus.plugin.echotest" }))
            .await;
        assert_eq!(attached["janus"], "success", "{attached}");
        let handle = attached["data"]["id"].as_u64().expect("handle id");
        (session, handle)
    }
}

/// How long the aiortc client may take: start, negotiate, and receive its frames.
pub const ECHO_MEDIA: Duration = Duration::from_secs(60);

/// How long the aiortc client waits for Janus's answer, and then for its frames, before it
/// gives up.
pub const ECHO_TIMEOUT: Duration = Duration::from_secs(15);

/// What `janus_echo.py` saw when ICE connected: the echoed frames, the instance, the types of
/// the local candidates it offered, and the ICE pair media used, with the type of each
/// candidate (`host`, `srflx`, `prflx` or `relay`).
#[derive(Debug)]
pub struct EchoedMedia {
    pub frames: u64,
    pub server: String,
    pub gathered: Vec<String>,
    pub protocol: String,
    pub local: SocketAddr,
    pub local_type: String,
    pub remote: SocketAddr,
    pub remote_type: String,
}

/// What `janus_echo.py` saw when ICE nominated no pair: no media went anywhere. `gathered` are
/// the types of the local candidates it offered (none when a relay-only peer got no TURN
/// allocation: then the script gives up at once), `state` the peer connection's state at the
/// end (`failed`, `connecting` at its timeout, `new` when there was no candidate); `output` is
/// the script's stdout and stderr, for messages.
#[derive(Debug)]
pub struct NoMedia {
    pub frames: u64,
    pub server: String,
    pub gathered: Vec<String>,
    pub state: String,
    pub output: String,
}

/// Runs the aiortc client of `janus_echo.py` against `url` (a WebSocket URL through rtcgate,
/// TLS checked against `ca` for the name `localhost`), asking for `frames` echoed frames.
/// `None` when aiortc is not installed (which fails the test under `CI=true`); panics when
/// ICE connected no pair (see [`echo_media_with`] to expect that).
pub async fn echo_media(url: &str, ca: &Path, frames: u32) -> Option<EchoedMedia> {
    let seen = echo_media_with(url, ca, frames, None, false).await?;
    Some(seen.unwrap_or_else(|no| panic!("janus_echo.py: no ICE pair: {no:?}")))
}

/// [`echo_media`] with `ice_servers` for the peer connection (a JSON list of RTCPeerConnection
/// iceServers, `{"urls": [...], "username": ..., "credential": ...}`, as a browser gets them)
/// and, with `relay_only`, iceTransportPolicy `relay`: only relayed (TURN) candidates. `Err`
/// when ICE nominated no pair: the script gives up at once when it has no local candidate or
/// the connection fails, and [`ECHO_TIMEOUT`] after Janus's answer at the latest.
pub async fn echo_media_with(
    url: &str,
    ca: &Path,
    frames: u32,
    ice_servers: Option<&Value>,
    relay_only: bool,
) -> Option<Result<EchoedMedia, NoMedia>> {
    let has_aiortc = tokio::process::Command::new("python3")
        .args(["-c", "import aiortc, websockets"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .is_ok_and(|s| s.success());
    if !has_aiortc {
        required_in_ci("aiortc");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/janus_echo.py");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(&script)
        .arg(url)
        .arg("--ca")
        .arg(ca)
        .args(["--server-name", "localhost"])
        .arg("--frames")
        .arg(frames.to_string())
        .arg("--timeout")
        .arg(ECHO_TIMEOUT.as_secs().to_string());
    if let Some(servers) = ice_servers {
        cmd.arg("--ice-servers").arg(servers.to_string());
    }
    if relay_only {
        cmd.arg("--relay-only");
    }
    let run = cmd.stdin(Stdio::null()).kill_on_drop(true).output();
    let out = tokio::time::timeout(ECHO_MEDIA, run)
        .await
        .unwrap_or_else(|_| panic!("janus_echo.py: no result within {ECHO_MEDIA:?}"))
        .expect("run janus_echo.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let output = format!(
        "{} ({}):\n{stdout}\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    let seen: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("no JSON line: {e}\n{output}"));
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let (frames, server) = (seen["frames"].as_u64().unwrap_or(0), text(&seen["server"]));
    let gathered = seen["gathered"]
        .as_array()
        .map(|types| types.iter().map(text).collect())
        .unwrap_or_default();
    let pair = &seen["pair"];
    if pair.is_null() {
        return Some(Err(NoMedia {
            frames,
            server,
            gathered,
            state: text(&seen["state"]),
            output,
        }));
    }
    let addr = |v: &Value| -> SocketAddr {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no address in the ICE pair {pair}\n{output}"))
    };
    Some(Ok(EchoedMedia {
        frames,
        server,
        gathered,
        protocol: text(&pair["protocol"]),
        local: addr(&pair["local"]),
        local_type: text(&pair["local_type"]),
        remote: addr(&pair["remote"]),
        remote_type: text(&pair["remote_type"]),
    }))
}

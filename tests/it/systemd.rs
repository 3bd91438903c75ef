//! rtcgate under systemd: the shipped unit (`examples/systemd/rtcgate.service`) verifies and is
//! hardened, and the binary tells systemd when it is ready and when it is stopping
//! (`Type=notify`, `sd_notify(3)`), through a notify socket the test holds.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

const UNIT: &str = "examples/systemd/rtcgate.service";

/// The shipped unit with its ExecStart pointing at the binary under test (`systemd-analyze
/// verify` checks that the command exists), written into `dir`.
fn unit_for_test(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(UNIT))
        .expect("the unit file");
    let path = dir.join("rtcgate.service");
    std::fs::write(
        &path,
        text.replace("/usr/local/bin/rtcgate", env!("CARGO_BIN_EXE_rtcgate")),
    )
    .expect("write");
    path
}

#[test]
fn the_shipped_unit_verifies_and_is_hardened() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        required_in_ci("systemd-analyze");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_for_test(dir.path());
    // `--man=no`: the man page (rtcgate(1)) need not be installed for the unit to be right.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze verify");
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "verify: {said}"
    );

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for rtcgate.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    // systemd rates 0–10; under 2 is "OK" (a service with no hardening rates 9.6).
    assert!(exposure < 2.0, "exposure {exposure}:\n{text}");

    let unit_text = std::fs::read_to_string(&unit).expect("unit");
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "DynamicUser=yes",
    ] {
        assert!(unit_text.lines().any(|l| l == line), "{line} in the unit");
    }
    // Room for the default max_connections' two descriptors each, and the reserve.
    let nofile: u64 = unit_text
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .and_then(|n| n.parse().ok())
        .expect("LimitNOFILE");
    assert!(nofile >= 2 * 10_000 + 16, "LimitNOFILE={nofile}");
}

/// What rtcgate sent to the notify socket within [`STEP`], until a datagram containing `want`.
fn notified_until(socket: &UnixDatagram, want: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + STEP;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        let Ok(n) = socket.recv(&mut buf) else {
            break;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = text.lines().any(|l| l == want);
        got.push(text);
        if done {
            return got;
        }
    }
    panic!("no {want} from rtcgate; it sent {got:?}");
}

#[tokio::test]
async fn rtcgate_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let backends = spawn_backends(1).await;
    let certs = make_certs();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    let config = certs.dir.path().join("proxy.toml");
    std::fs::write(&config, config_for(&backends, "shutdown_grace = \"1s\"")).expect("write");
    let child = Command::new(env!("CARGO_BIN_EXE_rtcgate"))
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rtcgate");
    let mut child = KillOnDrop(child);
    let ready = notified_until(&socket, "READY=1");
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let stopping = notified_until(&socket, "STOPPING=1");
    let exited = child.0.wait().expect("wait");
    assert!(exited.success(), "rtcgate exits 0 after SIGTERM: {exited}");
    assert!(
        ready.iter().any(|d| d.contains("STATUS=serving")),
        "{ready:?}"
    );
    assert!(
        stopping.iter().any(|d| d.contains("STATUS=draining")),
        "{stopping:?}"
    );
}

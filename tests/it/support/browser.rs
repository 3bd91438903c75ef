//! Headless Chromium (Debian's `chromium`) for the tests, with the flags it needs on a closed
//! machine: no sandbox (root), no GPU, no crash reporter, and none of the background traffic to
//! Google's hosts that this machine's network refuses. It runs in a process group of its own,
//! killed whole when the [`Browser`] drops, so a test that fails or times out leaves no
//! renderer or helper behind.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::*;

/// How long headless Chromium may take to start and load a page. A first start on a fresh
/// machine, beside the other tests of this binary, has taken over 10 s (issue 17); later
/// starts take 1-2 s.
pub const BROWSER_START: Duration = Duration::from_secs(60);

/// A running Chromium and its process group.
pub struct Browser {
    child: Option<Child>,
}

impl Browser {
    /// Waits for it to exit by itself (`--dump-dom`, say) and returns what it printed.
    pub async fn output(mut self) -> std::io::Result<std::process::Output> {
        let child = self.child.take().expect("not yet waited for");
        let pid = child.id();
        let out = child.wait_with_output().await;
        kill_group(pid);
        out
    }

    /// Whether it exited already, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            kill_group(child.id());
        }
    }
}

/// SIGKILL to the process group led by `pid` (Chromium, its renderers and helpers).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    }
}

/// `chromium --headless` with the base flags, `profile` as its user-data folder, then `args`;
/// `None` when Chromium is not installed (which fails the test under `CI=true`).
pub fn chromium(profile: &Path, args: &[&str]) -> Option<Browser> {
    if !installed("chromium") {
        required_in_ci("chromium");
        return None;
    }
    let child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-crash-reporter",
            "--disable-breakpad",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    Some(Browser { child: Some(child) })
}

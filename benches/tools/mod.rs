//! What the WebSocket load tools (`ws_tunnels`, `storm`) share.

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// tungstenite's default read buffer is 128 KiB, allocated (by mmap, at that size) for every
/// socket and zeroed up to that length before every read: CPU the tool takes from the cores the
/// proxy under test shares (9000 `storm` clients: 6.2-7.2 s of the tool's CPU with it, 4.7-5.0 s
/// with 4 KiB, its system time halved). 4 KiB is what tungstenite suggests for many connections;
/// longer messages still arrive whole.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

/// The soft RLIMIT_NOFILE of this process, from /proc/self/limits (no libc needed).
pub fn nofile_soft_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
